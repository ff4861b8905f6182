//! Reinhard colour normalisation of H&E images (SPEC §3), as the reference (after
//! HistomicsTK) does it: Ruderman LAB statistics of the tissue pixels are matched to fixed
//! H&E targets; background pixels keep their values; results are truncated to 8 bits and
//! divided by each channel's maximum. Three streaming passes over the scaled image:
//! statistics, output maxima, then the output rows.

use rayon::prelude::*;

use super::morphology::Mask;
use crate::error::{Error, Result};
use crate::io::image::{ImageCache, SampleType};

const RGB2LMS: [[f64; 3]; 3] = [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]];
const TARGET_MU: [f64; 3] = [8.74108109, -0.12440419, 0.0444982];
const TARGET_SIGMA: [f64; 3] = [0.6135447, 0.10989545, 0.0286032];

fn lms2lab() -> [[f64; 3]; 3] {
    let (a, b, c) = (1.0 / 3f64.sqrt(), 1.0 / 6f64.sqrt(), 1.0 / 2f64.sqrt());
    [[a, a, a], [b, b, -2.0 * b], [c, -c, 0.0]]
}

fn inv3(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let mut r = [[0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let (a, b) = ((j + 1) % 3, (j + 2) % 3);
            let (c, d) = ((i + 1) % 3, (i + 2) % 3);
            r[i][j] = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det;
        }
    }
    r
}

fn mul(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2])
}

fn to_lab(px: &[u8], l: &[[f64; 3]; 3]) -> [f64; 3] {
    let lms =
        mul(&RGB2LMS, [px[0] as f64, px[1] as f64, px[2] as f64]).map(|v| if v == 0.0 { f64::EPSILON } else { v });
    mul(l, lms.map(f64::ln))
}

/// Normalise the scaled 8-bit RGB image `img` with the tissue `mask` (same size) into a
/// new cache in `cache_dir`.
pub fn reinhard(img: &ImageCache, mask: &Mask, cache_dir: &std::path::Path) -> Result<ImageCache> {
    let info = img.info.clone();
    if info.channels != 3 || info.sample != SampleType::U8 {
        return Err(Error::setting("color_norm", "Reinhard normalisation needs an 8-bit RGB image"));
    }
    let (h, w) = (info.height, info.width);
    let l = lms2lab();
    let band = 256usize;
    // pass 1: LAB mean and standard deviation over tissue pixels
    let stats: [f64; 7] = (0..h.div_ceil(band))
        .into_par_iter()
        .map(|b| -> Result<[f64; 7]> {
            let (r0, r1) = (b * band, ((b + 1) * band).min(h));
            let mut buf = Vec::new();
            img.read_rows(r0, r1 - r0, &mut buf)?;
            let mut s = [0f64; 7];
            for y in r0..r1 {
                for x in 0..w {
                    if mask.get(y, x) {
                        let o = ((y - r0) * w + x) * 3;
                        let lab = to_lab(&buf[o..o + 3], &l);
                        for k in 0..3 {
                            s[k] += lab[k];
                            s[3 + k] += lab[k] * lab[k];
                        }
                        s[6] += 1.0;
                    }
                }
            }
            Ok(s)
        })
        .try_reduce(|| [0f64; 7], |a, b| Ok(std::array::from_fn(|i| a[i] + b[i])))?;
    if stats[6] == 0.0 {
        return Err(Error::setting("color_norm", "no tissue pixels to take colour statistics from"));
    }
    let n = stats[6];
    let mu: [f64; 3] = std::array::from_fn(|k| stats[k] / n);
    let sd: [f64; 3] = std::array::from_fn(|k| (stats[3 + k] / n - mu[k] * mu[k]).max(0.0).sqrt());
    let (lab2lms, lms2rgb) = (inv3(l), inv3(RGB2LMS));
    // rows [r0, r1) transformed in place (8-bit, truncated as astype(uint8))
    let transform = |r0: usize, r1: usize, buf: &mut Vec<u8>| -> Result<()> {
        img.read_rows(r0, r1 - r0, buf)?;
        buf.par_chunks_mut(w * 3).enumerate().for_each(|(dy, row)| {
            let y = r0 + dy;
            for x in 0..w {
                if !mask.get(y, x) {
                    continue; // background keeps its colour
                }
                let px = &mut row[x * 3..x * 3 + 3];
                let lab = to_lab(px, &l);
                let t: [f64; 3] = std::array::from_fn(|k| (lab[k] - mu[k]) / sd[k] * TARGET_SIGMA[k] + TARGET_MU[k]);
                let lms = mul(&lab2lms, t).map(|v| {
                    let e = v.exp();
                    if e == f64::EPSILON {
                        0.0
                    } else {
                        e
                    }
                });
                let rgb = mul(&lms2rgb, lms);
                for k in 0..3 {
                    px[k] = rgb[k].clamp(0.0, 255.0) as u8;
                }
            }
        });
        Ok(())
    };
    let maxima: [u8; 3] = (0..h.div_ceil(band))
        .into_par_iter()
        .map(|b| -> Result<[u8; 3]> {
            let mut buf = Vec::new();
            transform(b * band, ((b + 1) * band).min(h), &mut buf)?;
            let mut m = [0u8; 3];
            for px in buf.chunks_exact(3) {
                for k in 0..3 {
                    m[k] = m[k].max(px[k]);
                }
            }
            Ok(m)
        })
        .try_reduce(|| [0u8; 3], |a, b| Ok(std::array::from_fn(|k| a[k].max(b[k]))))?;
    let params = serde_json::json!({"op": "reinhard", "base": img.raw_path, "mu": mu, "sigma": sd});
    ImageCache::open_derived(img, cache_dir, params, &info, |sink| {
        let mut buf = Vec::new();
        for r0 in (0..h).step_by(band) {
            transform(r0, (r0 + band).min(h), &mut buf)?;
            // each channel divided by its maximum, stored on the 8-bit scale
            for px in buf.chunks_exact_mut(3) {
                for k in 0..3 {
                    let m = maxima[k].max(1) as f32;
                    px[k] = (px[k] as f32 / m * 255.0).round() as u8;
                }
            }
            sink(&buf)?;
        }
        Ok(info.clone())
    })
}
