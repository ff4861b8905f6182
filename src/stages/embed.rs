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

use crate::backend::{Backend, Shape};
use crate::error::Result;
use crate::io::image::ImageCache;
use crate::model::unet::{resize_bilinear_ac, Params, UNet};

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
    fn window(c: f64, half: usize, lo: usize, hi: usize) -> (usize, usize) {
        reference_window(c, half, lo, hi)
    }
}

/// The reference's spot window along one axis (`_extract_image`): 2·half + 1 pixels from
/// round(c) − half + 1, shifted to start at `lo` or to end on the crop's last pixel, as
/// [start, end).
pub fn reference_window(c: f64, half: usize, lo: usize, hi: usize) -> (usize, usize) {
    let (c, half, lo, last) =
        (c.round_ties_even() as i64 - lo as i64, half as i64, lo as i64, hi as i64 - 1 - lo as i64);
    let mut start = (c - half + 1).max(0);
    let mut end = (c + half + 1).min(last);
    if start == 0 {
        end = 2 * half;
    }
    if end == last {
        start = last - 2 * half;
    }
    let start = start.max(0);
    ((lo + start) as usize, (lo + end.min(last).max(start) + 1) as usize)
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
        // WindowStats samples the same windows as the encoder
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

/// The reference's embedding: each spot's (4r+1)² window upsampled (bilinear, align
/// corners) to the tile size and run through the pre-trained network's encoder; the third
/// down block's skip feature averaged over space (128 values). Only the layers feeding that
/// feature run (`UNet::embed`).
pub struct EncoderEmbedder<'a, B: Backend> {
    pub backend: &'a B,
    pub net: &'a UNet,
    pub params: &'a Params<B::Buf>,
    pub split_size: usize,
    pub batch: usize,
}

impl<B: Backend> SpotEmbedder for EncoderEmbedder<'_, B> {
    fn dim(&self) -> usize {
        4 * crate::model::unet::WIDTH
    }

    fn name(&self) -> &'static str {
        "U-Net encoder"
    }

    fn embed(&self, image: &ImageCache, spots: &[[f64; 2]], radius: usize, bounds: [usize; 4]) -> Result<Vec<f32>> {
        let (ch, d, ss) = (image.info.channels, self.dim(), self.split_size);
        let half = 2 * radius;
        let mut out = vec![0f32; spots.len() * d];
        let pb = crate::util::progress_count(spots.len() as u64, "spot embeddings");
        for (b, chunk) in (0..spots.len()).collect::<Vec<_>>().chunks(self.batch.max(1)).enumerate() {
            let windows: Vec<Vec<f32>> = chunk
                .par_iter()
                .map(|&i| -> Result<Vec<f32>> {
                    let (r0, r1) = reference_window(spots[i][0], half, bounds[0], bounds[1]);
                    let (c0, c1) = reference_window(spots[i][1], half, bounds[2], bounds[3]);
                    let win = image.read_region_unit(r0 as i64, c0 as i64, r1 - r0, c1 - c0)?;
                    Ok(resize_bilinear_ac(&win, r1 - r0, c1 - c0, ch, ss, ss))
                })
                .collect::<Result<_>>()?;
            let is = Shape { n: chunk.len(), h: ss, w: ss, c: ch };
            let b_ = self.backend;
            let x = b_.upload(&windows.concat());
            let e_buf = self.net.embed(b_, self.params, &x, is);
            let e = b_.download(&e_buf);
            b_.release(x);
            b_.release(e_buf);
            let first = b * self.batch.max(1);
            out[first * d..(first + chunk.len()) * d].copy_from_slice(&e);
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_reference_rule() {
        // centre 50, half 10: rows 41..=61
        assert_eq!(reference_window(50.0, 10, 0, 200), (41, 62));
        // near the start: 0..=20
        assert_eq!(reference_window(3.0, 10, 0, 200), (0, 21));
        // near the end: ends on the last row
        assert_eq!(reference_window(198.0, 10, 0, 200), (179, 200));
        // offset crops behave the same in their own frame
        assert_eq!(reference_window(150.0, 10, 100, 300), (141, 162));
    }

    #[test]
    fn encoder_embedder_runs_the_encoder_on_upsampled_windows() {
        // a 40 × 50 RGB image as a PNG, decoded into a cache
        let dir = tempfile::tempdir().unwrap();
        let (h, w) = (40usize, 50usize);
        let px: Vec<u8> = (0..h * w * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let png = dir.path().join("img.png");
        {
            let f = std::fs::File::create(&png).unwrap();
            let mut e = png::Encoder::new(std::io::BufWriter::new(f), w as u32, h as u32);
            e.set_color(png::ColorType::Rgb);
            e.set_depth(png::BitDepth::Eight);
            e.write_header().unwrap().write_image_data(&px).unwrap();
        }
        let img = ImageCache::open(&png, &dir.path().join("cache")).unwrap();
        let (net, params) = UNet::new(3, 1);
        let cpu = crate::backend::Cpu::new();
        let emb = EncoderEmbedder { backend: &cpu, net: &net, params: &params, split_size: 16, batch: 2 };
        let spots = [[10.0, 12.0], [30.0, 45.0], [2.0, 2.0]];
        let got = emb.embed(&img, &spots, 2, [0, h, 0, w]).unwrap();
        assert_eq!(got.len(), 3 * 128);
        // spot 1 by hand: rows 27..=35, cols 41..=49 (the window ends on the last column)
        let (r0, c0) = (27usize, 41usize);
        let mut win = Vec::new();
        for y in r0..r0 + 9 {
            for x in c0..c0 + 9 {
                win.extend((0..3).map(|k| px[(y * w + x) * 3 + k] as f32 / 255.0));
            }
        }
        let up = resize_bilinear_ac(&win, 9, 9, 3, 16, 16);
        let want = net.embed(&cpu, &params, &up, Shape { n: 1, h: 16, w: 16, c: 3 });
        for (a, b) in got[128..256].iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
