//! The Voronoi score (SPEC §8): every pixel of the crop takes the score of its nearest spot;
//! each component is then box-blurred (kernel radius//2·2+1, OpenCV's `blur`: normalised
//! box, reflect-101 border) until the mean absolute change of the changed pixels drops below
//! the threshold (at most 10 passes), rescaled to keep the mean over the pixels that were
//! non-zero before blurring, clipped to [0, 1], rounded to half precision and masked.
//! The blur uses running sums, so a pass costs O(1) per pixel whatever the kernel size.
//! This is the in-memory form for a crop; the streamed whole-slide form builds on it.

use half::f16;
use rayon::prelude::*;

use crate::preprocess::morphology::Mask;

/// OpenCV's BORDER_REFLECT_101 (`gfedcb|abcdefgh|gfedcba`), repeated for wide kernels.
fn reflect101(mut i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * n - 2 - i;
        } else {
            return i as usize;
        }
    }
}

/// `cv2.blur(src, (k, k))` for an h × w f32 plane: sums in f64, as OpenCV accumulates
/// float data in double, then scaled and rounded to f32.
pub fn box_blur(src: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
    let a = (k / 2) as i64;
    let mut rows = vec![0f64; h * w];
    rows.par_chunks_mut(w).zip(src.par_chunks(w)).for_each(|(out, row)| {
        let mut s: f64 = (-a..=a).map(|d| row[reflect101(d, w as i64)] as f64).sum();
        for x in 0..w {
            out[x] = s;
            let (add, sub) = (x as i64 + a + 1, x as i64 - a);
            s += row[reflect101(add, w as i64)] as f64 - row[reflect101(sub, w as i64)] as f64;
        }
    });
    let scale = 1.0 / (k * k) as f64;
    let mut out = vec![0f32; h * w];
    // columns in stripes: a running sum per column while sweeping down
    let stripe = 1024usize;
    let cols: Vec<(usize, Vec<f32>)> = (0..w.div_ceil(stripe))
        .into_par_iter()
        .map(|si| {
            let (c0, c1) = (si * stripe, ((si + 1) * stripe).min(w));
            let sw = c1 - c0;
            let mut s = vec![0f64; sw];
            for d in -a..=a {
                let r = reflect101(d, h as i64);
                for (j, v) in s.iter_mut().enumerate() {
                    *v += rows[r * w + c0 + j];
                }
            }
            let mut o = vec![0f32; h * sw];
            for y in 0..h {
                for j in 0..sw {
                    o[y * sw + j] = (s[j] * scale) as f32;
                }
                let (add, sub) = (reflect101(y as i64 + a + 1, h as i64), reflect101(y as i64 - a, h as i64));
                for (j, v) in s.iter_mut().enumerate() {
                    *v += rows[add * w + c0 + j] - rows[sub * w + c0 + j];
                }
            }
            (c0, o)
        })
        .collect();
    for (c0, o) in cols {
        let sw = o.len() / h.max(1);
        for y in 0..h {
            out[y * w + c0..y * w + c0 + sw].copy_from_slice(&o[y * sw..(y + 1) * sw]);
        }
    }
    out
}

/// The reference's smoothing of one component (see the module comment); returns the
/// number of blur passes.
pub fn smooth_component(plane: &mut [f32], h: usize, w: usize, k: usize, threshold: f32) -> usize {
    let nonzero: Vec<usize> = (0..plane.len()).filter(|&i| plane[i] != 0.0).collect();
    if nonzero.is_empty() {
        return 0;
    }
    let mean_at = |p: &[f32]| (nonzero.iter().map(|&i| p[i] as f64).sum::<f64>() / nonzero.len() as f64) as f32;
    let mean_in = mean_at(plane);
    let mut cur = plane.to_vec();
    let mut passes = 0;
    for _ in 0..10 {
        let out = box_blur(&cur, h, w, k);
        passes += 1;
        let (sum, n) = cur
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .filter(|&d| d != 0.0)
            .fold((0f64, 0usize), |(s, n), d| (s + d as f64, n + 1));
        cur = out;
        // no changed pixel: numpy's mean of nothing is NaN, which never stops the loop
        if n > 0 && ((sum / n as f64) as f32) < threshold {
            break;
        }
    }
    let mut mean_out = mean_at(&cur);
    if mean_out < 0.01 {
        mean_out = mean_in;
    }
    for (p, &v) in plane.iter_mut().zip(&cur) {
        let v = if mean_out > 0.0 { (v / mean_out * mean_in).clamp(0.0, 1.0) } else { v };
        *p = f16::from_f32(v).to_f32();
    }
    passes
}

/// VD scores of a crop: `scores` N × R (row-major), `nearest` the crop's nearest-spot map
/// (rows × cols), `mask` the cropped tissue mask. Returns R planes, half-precision values.
pub fn vd_score(scores: &[f32], r: usize, nearest: &[u32], mask: &Mask, k: usize, threshold: f32) -> Vec<Vec<f32>> {
    let (h, w) = (mask.height, mask.width);
    (0..r)
        .map(|t| {
            // the spot scores enter in half precision, as the reference casts them
            let mut plane: Vec<f32> =
                nearest.iter().map(|&s| f16::from_f32(scores[s as usize * r + t]).to_f32()).collect();
            smooth_component(&mut plane, h, w, k, threshold);
            for y in 0..h {
                for x in 0..w {
                    if !mask.get(y, x) {
                        plane[y * w + x] = 0.0;
                    }
                }
            }
            plane
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_matches_a_direct_reflect101_box() {
        let (h, w) = (9, 13);
        let src: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
        for k in [1, 3, 5, 11, 19] {
            let got = box_blur(&src, h, w, k);
            let a = (k / 2) as i64;
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let mut s = 0f64;
                    for dy in -a..=a {
                        for dx in -a..=a {
                            s += src[reflect101(y + dy, h as i64) * w + reflect101(x + dx, w as i64)] as f64;
                        }
                    }
                    let want = (s / (k * k) as f64) as f32;
                    assert!((got[y as usize * w + x as usize] - want).abs() < 1e-6, "k={k} ({y},{x})");
                }
            }
        }
        assert_eq!(reflect101(-1, 5), 1);
        assert_eq!(reflect101(5, 5), 3);
        assert_eq!(reflect101(-7, 5), 1);
    }
}
