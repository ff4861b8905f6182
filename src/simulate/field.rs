//! The simulated section as pure functions of pixel position: tissue outline, domains,
//! gradient programs and nuclei. Everything derives from the seed through hashing, so any
//! band of rows can be rendered alone (streaming) and the same seed gives the same section.

/// SplitMix64 finaliser: a strong 64-bit mix used as a stateless random source.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

#[inline]
pub fn hash3(seed: u64, a: i64, b: i64) -> u64 {
    mix(seed ^ mix((a as u64).wrapping_mul(0x632BE59BD9B4E019) ^ mix(b as u64)))
}

/// Uniform in [0, 1) from a hash.
#[inline]
pub fn unit(h: u64) -> f32 {
    (h >> 40) as f32 / (1u64 << 24) as f32
}

#[inline]
fn fade(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

/// Value noise in [-1, 1] with smooth interpolation; `x`, `y` in lattice units.
pub fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (xi, yi) = (x.floor(), y.floor());
    let (tx, ty) = (fade(x - xi), fade(y - yi));
    let (xi, yi) = (xi as i64, yi as i64);
    let v = |a: i64, b: i64| unit(hash3(seed, a, b)) * 2.0 - 1.0;
    let top = v(xi, yi) + (v(xi + 1, yi) - v(xi, yi)) * tx;
    let bot = v(xi, yi + 1) + (v(xi + 1, yi + 1) - v(xi, yi + 1)) * tx;
    top + (bot - top) * ty
}

/// Three octaves of value noise, roughly in [-1, 1].
pub fn fractal(seed: u64, x: f32, y: f32) -> f32 {
    0.57 * value_noise(seed, x, y)
        + 0.29 * value_noise(seed ^ 1, 2.03 * x, 2.03 * y)
        + 0.14 * value_noise(seed ^ 2, 4.1 * x, 4.1 * y)
}

/// Per-domain look and composition.
#[derive(Debug, Clone)]
pub struct DomainStyle {
    /// stroma colour (RGB 0–255)
    pub stroma: [f32; 3],
    /// nucleus colour
    pub nucleus: [f32; 3],
    /// probability that a nucleus grid cell holds a nucleus
    pub density: f32,
    /// nucleus radius in pixels
    pub nucleus_radius: f32,
}

/// The whole simulated section.
#[derive(Debug, Clone)]
pub struct Section {
    pub seed: u64,
    pub height: usize,
    pub width: usize,
    pub spot_radius: f32,
    /// spacing of the warp lattice, pixels
    grid: f32,
    /// domain seeds in normalised coordinates (all but the thin band domain)
    seeds: Vec<[f32; 2]>,
    /// the thin band: y = c + amp·sin(freq·x + phase), half width in normalised units
    band: Option<(f32, f32, f32, f32, f32)>,
    pub styles: Vec<DomainStyle>,
    /// nucleus grid cell size in pixels
    pub cell: f32,
    scale: f32,
}

impl Section {
    pub fn new(seed: u64, height: usize, width: usize, spot_radius: f32, domains: usize) -> Section {
        let scale = height.min(width) as f32;
        let mut k = 0u64;
        let mut next = || {
            k += 1;
            unit(mix(seed ^ 0xD0_0000 ^ k))
        };
        let (cx, cy) = (0.5 * width as f32 / scale, 0.5 * height as f32 / scale);
        let (ax, ay) = (0.3 * width as f32 / scale, 0.3 * height as f32 / scale);
        let n_blobs = if domains >= 3 { domains - 1 } else { domains };
        // Seeds on a jittered ring plus the centre spread the blob domains over the tissue.
        let seeds: Vec<[f32; 2]> = (0..n_blobs)
            .map(|i| {
                let a = i as f32 / n_blobs as f32 * std::f32::consts::TAU + 0.6 * next();
                let rr = if i == 0 && n_blobs > 3 { 0.0 } else { 0.55 + 0.4 * next() };
                [cx + ax * rr * a.cos(), cy + ay * rr * a.sin()]
            })
            .collect();
        let band = (domains >= 3).then(|| {
            let c = cy + (next() - 0.5) * 0.4 * ay;
            let half = 0.6 * spot_radius / scale; // 1.2 radii wide: thinner than a spot
            (c, 0.25 * ay, 4.0 + 3.0 * next(), next() * std::f32::consts::TAU, half)
        });
        let nucleus_base = (0.2 * spot_radius).max(2.0);
        let styles = (0..domains)
            .map(|d| {
                let t = if domains > 1 { d as f32 / (domains - 1) as f32 } else { 0.5 };
                let j = next();
                DomainStyle {
                    // from pale pink through rose to violet-pink
                    stroma: [
                        236.0 - 18.0 * t + 6.0 * j,
                        168.0 - 40.0 * t + 20.0 * (j - 0.5),
                        196.0 + 10.0 * t - 8.0 * j,
                    ],
                    nucleus: [92.0 - 30.0 * t, 58.0 + 10.0 * (j - 0.5), 138.0 - 10.0 * t],
                    density: 0.18 + 0.7 * ((d * 7 % domains) as f32 / domains.max(1) as f32) * 0.9 + 0.05 * j,
                    nucleus_radius: nucleus_base * (0.75 + 0.7 * ((d * 3 % domains) as f32 / domains.max(1) as f32)),
                }
            })
            .collect::<Vec<_>>();
        let max_r = styles.iter().map(|s| s.nucleus_radius).fold(0.0, f32::max);
        Section {
            seed,
            height,
            width,
            spot_radius,
            grid: 8.0,
            seeds,
            band,
            styles,
            cell: (2.6 * max_r * 1.2).ceil(),
            scale,
        }
    }

    pub fn domains(&self) -> usize {
        self.styles.len()
    }

    /// Warp displacement at a lattice node (normalised units).
    fn warp_node(&self, i: i64, j: i64) -> [f32; 2] {
        let (x, y) = (j as f32 * self.grid / self.scale, i as f32 * self.grid / self.scale);
        [0.07 * fractal(self.seed ^ 0x11, 3.0 * x, 3.0 * y), 0.07 * fractal(self.seed ^ 0x22, 3.0 * x, 3.0 * y)]
    }

    /// Warped normalised coordinates of a pixel: bilinear in the warp lattice.
    pub fn warped(&self, row: f32, col: f32, lattice: Option<&WarpLattice>) -> [f32; 2] {
        let (gi, gj) = (row / self.grid, col / self.grid);
        let (i0, j0) = (gi.floor() as i64, gj.floor() as i64);
        let (ti, tj) = (gi - i0 as f32, gj - j0 as f32);
        let node = |i: i64, j: i64| match lattice {
            Some(l) => l.get(i, j),
            None => self.warp_node(i, j),
        };
        let (a, b, c, d) = (node(i0, j0), node(i0, j0 + 1), node(i0 + 1, j0), node(i0 + 1, j0 + 1));
        let w = |k: usize| (a[k] * (1.0 - tj) + b[k] * tj) * (1.0 - ti) + (c[k] * (1.0 - tj) + d[k] * tj) * ti;
        [col / self.scale + w(0), row / self.scale + w(1)]
    }

    /// Inside the irregular tissue outline?
    pub fn in_tissue(&self, p: [f32; 2]) -> bool {
        let (cx, cy) = (0.5 * self.width as f32 / self.scale, 0.5 * self.height as f32 / self.scale);
        let (ax, ay) = (0.43 * self.width as f32 / self.scale, 0.43 * self.height as f32 / self.scale);
        let (dx, dy) = ((p[0] - cx) / ax, (p[1] - cy) / ay);
        (dx * dx + dy * dy).sqrt() + 0.16 * fractal(self.seed ^ 0x33, 2.5 * p[0], 2.5 * p[1]) < 0.97
    }

    /// Domain label 1..=K at warped position, 0 outside tissue.
    pub fn label_at(&self, p: [f32; 2]) -> u8 {
        if !self.in_tissue(p) {
            return 0;
        }
        if let Some((c, amp, freq, phase, half)) = self.band {
            if (p[1] - (c + amp * (freq * p[0] + phase).sin())).abs() < half {
                return self.domains() as u8;
            }
        }
        let mut best = (f32::MAX, 0usize);
        for (i, s) in self.seeds.iter().enumerate() {
            let d = (p[0] - s[0]).powi(2) + (p[1] - s[1]).powi(2);
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1 as u8 + 1
    }

    /// Smooth gradient programs in [0, 1]: left→right and centre→edge.
    pub fn gradients(&self, p: [f32; 2]) -> [f32; 2] {
        let w = self.width as f32 / self.scale;
        let (cx, cy) = (0.5 * w, 0.5 * self.height as f32 / self.scale);
        let g0 = (p[0] / w).clamp(0.0, 1.0);
        let r = ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt() / (0.5 * w.max(self.height as f32 / self.scale));
        [g0, r.clamp(0.0, 1.0)]
    }

    /// Label of a pixel, evaluated alone.
    pub fn label(&self, row: usize, col: usize) -> u8 {
        self.label_at(self.warped(row as f32, col as f32, None))
    }

    /// Nucleus coverage of a pixel in [0, 1] given its domain (soft edge).
    pub fn nucleus(&self, row: usize, col: usize, label: u8) -> f32 {
        let st = &self.styles[label as usize - 1];
        let (ci, cj) = ((row as f32 / self.cell) as i64, (col as f32 / self.cell) as i64);
        let mut cover = 0f32;
        for i in ci - 1..=ci + 1 {
            for j in cj - 1..=cj + 1 {
                let h = hash3(self.seed ^ 0x4E55, i, j);
                if unit(h) >= st.density {
                    continue;
                }
                let h2 = mix(h);
                let cy = (i as f32 + 0.2 + 0.6 * unit(h2)) * self.cell;
                let cx = (j as f32 + 0.2 + 0.6 * unit(mix(h2))) * self.cell;
                let rad = st.nucleus_radius * (0.8 + 0.4 * unit(mix(h2 ^ 7)));
                let elong = 1.0 + 0.5 * unit(mix(h2 ^ 9));
                let ang = unit(mix(h2 ^ 11)) * std::f32::consts::PI;
                let (dy, dx) = (row as f32 - cy, col as f32 - cx);
                let (u, v) = (dx * ang.cos() + dy * ang.sin(), -dx * ang.sin() + dy * ang.cos());
                let d = ((u / elong).powi(2) + (v * elong.sqrt()).powi(2)).sqrt() / rad;
                cover = cover.max(((1.0 - d) / 0.25).clamp(0.0, 1.0));
            }
        }
        cover
    }

    /// A warp lattice covering rows [r0, r1) for fast band rendering.
    pub fn lattice(&self, r0: usize, r1: usize) -> WarpLattice {
        let i0 = (r0 as f32 / self.grid).floor() as i64;
        let i1 = (r1 as f32 / self.grid).floor() as i64 + 1;
        let cols = (self.width as f32 / self.grid).floor() as i64 + 2;
        let mut nodes = Vec::with_capacity(((i1 - i0 + 1) * cols) as usize);
        for i in i0..=i1 {
            for j in 0..cols {
                nodes.push(self.warp_node(i, j));
            }
        }
        WarpLattice { i0, cols, nodes }
    }
}

/// Warp displacements at the lattice nodes of a band, computed once.
pub struct WarpLattice {
    i0: i64,
    cols: i64,
    nodes: Vec<[f32; 2]>,
}

impl WarpLattice {
    #[inline]
    fn get(&self, i: i64, j: i64) -> [f32; 2] {
        self.nodes[((i - self.i0) * self.cols + j) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lattice_and_pointwise_labels_agree() {
        let s = Section::new(7, 600, 800, 20.0, 5);
        let lat = s.lattice(100, 164);
        for r in (100..164).step_by(7) {
            for c in (0..800).step_by(13) {
                let a = s.label_at(s.warped(r as f32, c as f32, Some(&lat)));
                assert_eq!(a, s.label(r, c));
            }
        }
    }

    #[test]
    fn every_domain_present_and_background_exists() {
        let s = Section::new(3, 1000, 1000, 25.0, 5);
        let mut seen = [0usize; 6];
        for r in (0..1000).step_by(4) {
            for c in (0..1000).step_by(4) {
                seen[s.label(r, c) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }
}
