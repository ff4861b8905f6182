//! Area interpolation as OpenCV's `resize(..., INTER_AREA)` computes it when shrinking
//! (SPEC §3): each destination pixel is the area-weighted mean of the source pixels its
//! footprint covers, with OpenCV's tap table (`computeResizeAreaTab`), so results match the
//! reference to float rounding. Works on rows streamed from the image cache.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::image::ImageCache;

/// Source indices and weights of one destination index along one axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Taps {
    pub first: usize,
    pub weights: Vec<f32>,
}

/// OpenCV's area taps for shrinking `src` samples to `dst` (`dst ≤ src`).
pub fn area_taps(src: usize, dst: usize) -> Vec<Taps> {
    assert!(dst > 0 && dst <= src, "area taps shrink only ({src} → {dst})");
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|dx| {
            let fsx1 = dx as f64 * scale;
            let fsx2 = fsx1 + scale;
            let cell = scale.min(src as f64 - fsx1);
            let mut sx2 = fsx2.floor() as i64;
            let mut sx1 = fsx1.ceil() as i64;
            sx2 = sx2.min(src as i64 - 1);
            sx1 = sx1.min(sx2);
            let mut first = sx1 as usize;
            let mut w = Vec::new();
            if sx1 as f64 - fsx1 > 1e-3 {
                first = (sx1 - 1) as usize;
                w.push(((sx1 as f64 - fsx1) / cell) as f32);
            }
            for _ in sx1..sx2 {
                w.push((1.0 / cell) as f32);
            }
            if fsx2 - sx2 as f64 > 1e-3 {
                w.push(((fsx2 - sx2 as f64).min(1.0).min(cell) / cell) as f32);
            }
            Taps { first, weights: w }
        })
        .collect()
}

/// Shrink the cached image to `dst_h × dst_w` by area interpolation; returns interleaved
/// f32 values in sample units (divide by the channel maxima to get the reference's
/// max-normalised image). Rows of the result are produced in parallel, each from the
/// source rows it covers, read with positioned reads.
pub fn area_resize(img: &ImageCache, dst_h: usize, dst_w: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; dst_h * dst_w * img.info.channels];
    area_resize_rows(img, dst_h, dst_w, 0, &mut out)?;
    Ok(out)
}

/// Destination rows [dy0, dy0 + out.len() / row) of an area resize to `dst_h × dst_w`.
pub fn area_resize_rows(img: &ImageCache, dst_h: usize, dst_w: usize, dy0: usize, out: &mut [f32]) -> Result<()> {
    let info = &img.info;
    if dst_h == 0 || dst_w == 0 || dst_h > info.height || dst_w > info.width {
        return Err(Error::setting(
            "resize",
            format!("cannot shrink {}×{} to {dst_h}×{dst_w} with area interpolation", info.height, info.width),
        ));
    }
    let ch = info.channels;
    let ytaps = area_taps(info.height, dst_h);
    let xtaps = area_taps(info.width, dst_w);
    debug_assert!(xtaps.iter().all(|t| !t.weights.is_empty()));
    let identity_x = dst_w == info.width;
    out.par_chunks_mut(dst_w * ch).enumerate().try_for_each_init(
        || (Vec::new(), Vec::new(), vec![0f32; dst_w * ch]),
        |(buf, src_f, hrow), (i, out_row)| -> Result<()> {
            let t = &ytaps[dy0 + i];
            img.read_rows(t.first, t.weights.len(), buf)?;
            out_row.iter_mut().for_each(|v| *v = 0.0);
            for (k, &beta) in t.weights.iter().enumerate() {
                let src = &buf[k * info.row_bytes()..(k + 1) * info.row_bytes()];
                // samples of the row as f32 once, then the horizontal taps
                src_f.clear();
                src_f.extend((0..info.width * ch).map(|q| img.sample(src, q)));
                let h: &[f32] = if identity_x {
                    src_f
                } else {
                    for (dx, xt) in xtaps.iter().enumerate() {
                        for c in 0..ch {
                            let mut s = 0f32;
                            for (j, &alpha) in xt.weights.iter().enumerate() {
                                s += src_f[(xt.first + j) * ch + c] * alpha;
                            }
                            hrow[dx * ch + c] = s;
                        }
                    }
                    hrow
                };
                for (o, v) in out_row.iter_mut().zip(h) {
                    *o += beta * v;
                }
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_factor_is_block_mean_and_weights_sum_to_one() {
        let t = area_taps(8, 4);
        assert!(t.iter().all(|x| x.weights == vec![0.5, 0.5]));
        assert_eq!(t[3].first, 6);
        for (s, d) in [(10, 3), (101, 50), (4000, 250), (7, 7), (1717, 108)] {
            for x in area_taps(s, d) {
                let sum: f32 = x.weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{s}->{d}: {sum}");
                assert!(x.first + x.weights.len() <= s);
            }
        }
    }
}
