//! Image embeddings of spots for the spot graph (SPEC §7): the seam between the image model
//! and the graph. The graph only needs one vector per spot whose correlations say which
//! spots look alike; `SpotEmbedder` is that contract.
//!
//! The reference embeds a (4r+1)² window around each spot with the pre-trained U-Net's
//! encoder (the trainer's job). Until a pre-trained model is present, `WindowStats` gives a
//! model-free embedding of the same window: per channel a 4×4 grid of means, the mean and
//! standard deviation, and an 8-bin intensity histogram. Windows are read in bands of rows
//! from the image cache, so memory stays bounded on whole slides.

use rayon::prelude::*;

use crate::error::Result;
use crate::io::image::ImageCache;

/// One vector per spot, `dim()` long, row-major in the result.
pub trait SpotEmbedder {
    fn dim(&self) -> usize;
    fn name(&self) -> &'static str;
    /// `spots` (row, col) in the image's pixel frame; windows stay inside `bounds`
    /// (row0, row1, col0, col1: the crop).
    fn embed(&self, image: &ImageCache, spots: &[[f64; 2]], radius: usize, bounds: [usize; 4]) -> Result<Vec<f32>>;
}

const GRID: usize = 4;
const BINS: usize = 8;
/// At most this many samples per window side.
const SAMPLES: usize = 64;

pub struct WindowStats {
    pub channels: usize,
}

impl WindowStats {
    /// The reference's window: (4r+1)² pixels around the rounded centre, shifted to stay
    /// inside the bounds.
    fn window(c: f64, half: usize, lo: usize, hi: usize) -> (usize, usize) {
        let size = 2 * half + 1;
        let start = (c.round_ties_even() as i64 - half as i64).max(lo as i64) as usize;
        let start = start.min(hi.saturating_sub(size).max(lo));
        (start, (start + size).min(hi))
    }
}

impl SpotEmbedder for WindowStats {
    fn dim(&self) -> usize {
        self.channels * (GRID * GRID + 2 + BINS)
    }

    fn name(&self) -> &'static str {
        "window statistics"
    }

    fn embed(&self, image: &ImageCache, spots: &[[f64; 2]], radius: usize, bounds: [usize; 4]) -> Result<Vec<f32>> {
        let (ch, d) = (image.info.channels, self.dim());
        let half = 2 * radius;
        let max_value = image.info.sample.max_value();
        let mut out = vec![0f32; spots.len() * d];
        let mut order: Vec<usize> = (0..spots.len()).collect();
        order.sort_by(|&a, &b| spots[a][0].total_cmp(&spots[b][0]));
        let band = 1024usize;
        let mut buf = Vec::new();
        let mut i = 0;
        while i < order.len() {
            // spots whose windows start within the next `band` rows
            let (r_first, _) = Self::window(spots[order[i]][0], half, bounds[0], bounds[1]);
            let mut j = i;
            let mut r_last = r_first;
            while j < order.len() {
                let (r0, r1) = Self::window(spots[order[j]][0], half, bounds[0], bounds[1]);
                if r0 >= r_first + band {
                    break;
                }
                r_last = r_last.max(r1);
                j += 1;
            }
            image.read_rows(r_first, r_last - r_first, &mut buf)?;
            let rb = image.info.row_bytes();
            let feats: Vec<(usize, Vec<f32>)> = order[i..j]
                .par_iter()
                .map(|&s| {
                    let (r0, r1) = Self::window(spots[s][0], half, bounds[0], bounds[1]);
                    let (c0, c1) = Self::window(spots[s][1], half, bounds[2], bounds[3]);
                    let (hh, ww) = (r1 - r0, c1 - c0);
                    let (sy, sx) = (hh.div_ceil(SAMPLES).max(1), ww.div_ceil(SAMPLES).max(1));
                    let mut f = vec![0f32; d];
                    let mut cell_n = [0usize; GRID * GRID];
                    let (mut sum, mut sq) = (vec![0f64; ch], vec![0f64; ch]);
                    let mut n = 0usize;
                    for y in (0..hh).step_by(sy) {
                        let row = &buf[(r0 + y - r_first) * rb..(r0 + y - r_first + 1) * rb];
                        for x in (0..ww).step_by(sx) {
                            let cell = (y * GRID / hh) * GRID + x * GRID / ww;
                            cell_n[cell] += 1;
                            n += 1;
                            for k in 0..ch {
                                let v = image.sample(row, (c0 + x) * ch + k) / max_value;
                                f[k * (GRID * GRID) + cell] += v;
                                sum[k] += v as f64;
                                sq[k] += (v * v) as f64;
                                let bin = ((v * BINS as f32) as usize).min(BINS - 1);
                                f[ch * (GRID * GRID + 2) + k * BINS + bin] += 1.0;
                            }
                        }
                    }
                    for k in 0..ch {
                        for c in 0..GRID * GRID {
                            f[k * GRID * GRID + c] /= cell_n[c].max(1) as f32;
                        }
                        let mean = sum[k] / n.max(1) as f64;
                        f[ch * GRID * GRID + 2 * k] = mean as f32;
                        f[ch * GRID * GRID + 2 * k + 1] =
                            (sq[k] / n.max(1) as f64 - mean * mean).max(0.0).sqrt() as f32;
                        for b in 0..BINS {
                            f[ch * (GRID * GRID + 2) + k * BINS + b] /= n.max(1) as f32;
                        }
                    }
                    (s, f)
                })
                .collect();
            for (s, f) in feats {
                out[s * d..(s + 1) * d].copy_from_slice(&f);
            }
            i = j;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_inside_and_keep_their_size() {
        assert_eq!(WindowStats::window(50.0, 10, 0, 200), (40, 61));
        assert_eq!(WindowStats::window(3.0, 10, 0, 200), (0, 21));
        assert_eq!(WindowStats::window(198.0, 10, 0, 200), (179, 200));
        assert_eq!(WindowStats::window(5.0, 10, 2, 12), (2, 12));
    }
}
