//! Nearest-spot maps (SPEC §4): for every pixel of the crop, the index of the nearest spot.
//! Exact (ties go to the lower index), computed in blocks of pixels: a block only tests the
//! spots that can be nearest for some pixel in it, found through a bucket grid, so the cost
//! per pixel stays a handful of distance tests however many spots there are.

use rayon::prelude::*;

const BLOCK: usize = 16;

/// Spatial bucket grid over spot centres (row, col).
pub struct SpotIndex {
    spots: Vec<[f64; 2]>,
    cell: f64,
    origin: [f64; 2],
    dims: [usize; 2],
    buckets: Vec<Vec<u32>>,
}

impl SpotIndex {
    pub fn new(spots: &[[f64; 2]]) -> SpotIndex {
        assert!(!spots.is_empty(), "no spots");
        let lo = [0, 1].map(|a| spots.iter().map(|s| s[a]).fold(f64::INFINITY, f64::min));
        let hi = [0, 1].map(|a| spots.iter().map(|s| s[a]).fold(f64::NEG_INFINITY, f64::max));
        let area = ((hi[0] - lo[0]).max(1.0)) * ((hi[1] - lo[1]).max(1.0));
        // about two spots per cell
        let cell = (2.0 * area / spots.len() as f64).sqrt().max(1.0);
        let dims = [0, 1].map(|a| ((hi[a] - lo[a]) / cell) as usize + 1);
        let mut buckets = vec![Vec::new(); dims[0] * dims[1]];
        for (i, s) in spots.iter().enumerate() {
            let (br, bc) = (((s[0] - lo[0]) / cell) as usize, ((s[1] - lo[1]) / cell) as usize);
            buckets[br * dims[1] + bc].push(i as u32);
        }
        SpotIndex { spots: spots.to_vec(), cell, origin: lo, dims, buckets }
    }

    /// Spots that can be nearest to some point of the rectangle [r0, r1] × [c0, c1].
    fn candidates(&self, r0: f64, r1: f64, c0: f64, c1: f64, out: &mut Vec<u32>) {
        out.clear();
        let d2_rect = |s: &[f64; 2], far: bool| {
            let f = |v: f64, a: f64, b: f64| {
                if far {
                    (v - a).abs().max((v - b).abs())
                } else {
                    (a - v).max(v - b).max(0.0)
                }
            };
            f(s[0], r0, r1).powi(2) + f(s[1], c0, c1).powi(2)
        };
        // grow a ring of buckets until it holds a spot, then cover every bucket that can
        // hold a spot within that spot's farthest distance to the rectangle
        let to_cell = |v: f64, a: usize| ((v - self.origin[a]) / self.cell).floor() as i64;
        let (br0, br1, bc0, bc1) = (to_cell(r0, 0), to_cell(r1, 0), to_cell(c0, 1), to_cell(c1, 1));
        let mut ring = 0i64;
        let mut bound = f64::INFINITY;
        loop {
            let mut found = false;
            for br in (br0 - ring).max(0)..=(br1 + ring).min(self.dims[0] as i64 - 1) {
                for bc in (bc0 - ring).max(0)..=(bc1 + ring).min(self.dims[1] as i64 - 1) {
                    for &i in &self.buckets[br as usize * self.dims[1] + bc as usize] {
                        bound = bound.min(d2_rect(&self.spots[i as usize], true));
                        found = true;
                    }
                }
            }
            let covers_all = br0 - ring <= 0
                && bc0 - ring <= 0
                && br1 + ring >= self.dims[0] as i64 - 1
                && bc1 + ring >= self.dims[1] as i64 - 1;
            if found || covers_all {
                break;
            }
            ring += 1;
        }
        let reach = (bound.sqrt() / self.cell).ceil() as i64 + 1;
        for br in (br0 - reach).max(0)..=(br1 + reach).min(self.dims[0] as i64 - 1) {
            for bc in (bc0 - reach).max(0)..=(bc1 + reach).min(self.dims[1] as i64 - 1) {
                for &i in &self.buckets[br as usize * self.dims[1] + bc as usize] {
                    if d2_rect(&self.spots[i as usize], false) <= bound {
                        out.push(i);
                    }
                }
            }
        }
        out.sort_unstable();
    }

    /// The k spots nearest to `p` (fewer if there are fewer spots), as (squared distance,
    /// index), nearest first; ties go to the lower index. Rings of buckets are searched
    /// until the k-th distance is within the searched radius.
    pub fn nearest_k(&self, p: [f64; 2], k: usize, out: &mut Vec<(f64, u32)>) {
        out.clear();
        let k = k.min(self.spots.len());
        if k == 0 {
            return;
        }
        let to_cell = |v: f64, a: usize| ((v - self.origin[a]) / self.cell).floor() as i64;
        let (cr, cc) = (to_cell(p[0], 0), to_cell(p[1], 1));
        let (dr, dc) = (self.dims[0] as i64, self.dims[1] as i64);
        // every bucket lies within this many rings of the query's cell
        let max_ring = [cr, dr - 1 - cr, cc, dc - 1 - cc].into_iter().map(i64::abs).max().unwrap_or(0) + 1;
        let mut ring = 0i64;
        loop {
            for br in cr - ring..=cr + ring {
                if br < 0 || br >= dr {
                    continue;
                }
                let edge_row = br == cr - ring || br == cr + ring;
                let mut bc = cc - ring;
                while bc <= cc + ring {
                    if bc >= 0 && bc < dc {
                        for &i in &self.buckets[br as usize * self.dims[1] + bc as usize] {
                            let s = &self.spots[i as usize];
                            out.push(((s[0] - p[0]).powi(2) + (s[1] - p[1]).powi(2), i));
                        }
                    }
                    // inner rows of the ring: only its two end columns
                    bc += if edge_row || ring == 0 { 1 } else { 2 * ring };
                }
            }
            if out.len() >= k {
                out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                // anything beyond this ring is at least `ring` cells away from p
                let reach = ring as f64 * self.cell;
                if out[k - 1].0 < reach * reach || ring >= max_ring {
                    out.truncate(k);
                    return;
                }
            } else if ring >= max_ring {
                out.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                return;
            }
            ring += 1;
        }
    }

    /// Nearest spot of every pixel in rows [r0, r1) × cols [c0, c1), row-major.
    pub fn nearest_map(&self, r0: usize, r1: usize, c0: usize, c1: usize) -> Vec<u32> {
        let (h, w) = (r1 - r0, c1 - c0);
        let mut out = vec![0u32; h * w];
        out.par_chunks_mut(w * BLOCK).enumerate().for_each(|(bi, band)| {
            let y0 = r0 + bi * BLOCK;
            let rows = band.len() / w;
            let mut cand = Vec::new();
            for x0 in (c0..c1).step_by(BLOCK) {
                let cols = BLOCK.min(c1 - x0);
                self.candidates(y0 as f64, (y0 + rows - 1) as f64, x0 as f64, (x0 + cols - 1) as f64, &mut cand);
                for y in 0..rows {
                    for x in 0..cols {
                        let (py, px) = ((y0 + y) as f64, (x0 + x) as f64);
                        let mut best = (f64::INFINITY, 0u32);
                        for &i in &cand {
                            let s = &self.spots[i as usize];
                            let d = (s[0] - py).powi(2) + (s[1] - px).powi(2);
                            if d < best.0 {
                                best = (d, i);
                            }
                        }
                        band[y * w + x0 - c0 + x] = best.1;
                    }
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_brute_force_including_clustered_and_sparse_spots() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut spots: Vec<[f64; 2]> =
            (0..300).map(|_| [rng.random_range(0.0..120.0), rng.random_range(0.0..200.0)]).collect();
        spots.extend((0..50).map(|_| [rng.random_range(0.0..5.0), rng.random_range(190.0..200.0)]));
        spots.push([400.0, -50.0]); // far outside the map
        let idx = SpotIndex::new(&spots);
        let (r0, r1, c0, c1) = (3, 140, 7, 230);
        let map = idx.nearest_map(r0, r1, c0, c1);
        for (k, &got) in map.iter().enumerate() {
            let (y, x) = ((r0 + k / (c1 - c0)) as f64, (c0 + k % (c1 - c0)) as f64);
            let d = |i: usize| (spots[i][0] - y).powi(2) + (spots[i][1] - x).powi(2);
            let best = (0..spots.len()).min_by(|&a, &b| d(a).partial_cmp(&d(b)).unwrap().then(a.cmp(&b))).unwrap();
            assert_eq!(got as usize, best, "pixel ({y}, {x})");
        }
    }

    #[test]
    fn nearest_k_matches_brute_force_with_ties() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // a lattice (many equal distances) plus random points and a far outlier
        let mut spots: Vec<[f64; 2]> = (0..400).map(|i| [(i / 20) as f64 * 3.0, (i % 20) as f64 * 3.0]).collect();
        spots.extend((0..200).map(|_| [rng.random_range(-10.0..70.0), rng.random_range(-10.0..70.0)]));
        spots.push([500.0, 500.0]);
        let idx = SpotIndex::new(&spots);
        let mut got = Vec::new();
        for q in 0..spots.len() + 30 {
            let p = if q < spots.len() {
                spots[q]
            } else {
                [rng.random_range(-50.0..600.0), rng.random_range(-50.0..100.0)]
            };
            for k in [1, 7, 50, 700] {
                idx.nearest_k(p, k, &mut got);
                let mut all: Vec<(f64, u32)> = spots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| ((s[0] - p[0]).powi(2) + (s[1] - p[1]).powi(2), i as u32))
                    .collect();
                all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                all.truncate(k);
                assert_eq!(got, all, "query {q} k {k}");
            }
        }
    }
}
