//! Image type detection (SPEC §3): on a 1/16 thumbnail of the per-channel max-normalised
//! image, immunofluorescence is mostly dark (> 50 % of values in the lowest tenth) with few
//! bright values (< 5 % in the highest tenth); everything else is H&E.

use rayon::prelude::*;

use crate::error::Result;
use crate::io::image::ImageCache;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageType {
    HE,
    Immunofluorescence,
}

impl ImageType {
    pub fn name(self) -> &'static str {
        match self {
            ImageType::HE => "HE",
            ImageType::Immunofluorescence => "Immunofluorescence",
        }
    }
}

/// Classify normalised values in [0, 1] with the reference's 1000-bin histogram rule.
pub fn classify(values: &[f32]) -> ImageType {
    if values.is_empty() {
        return ImageType::HE;
    }
    let bin = |v: f32| ((v * 1000.0) as i64).clamp(0, 999);
    let in_range = values.iter().filter(|v| (0.0..=1.0).contains(*v)).count().max(1) as f64;
    let low = values.iter().filter(|&&v| (0.0..=1.0).contains(&v) && bin(v) < 100).count() as f64 / in_range;
    let high = values.iter().filter(|&&v| (0.0..=1.0).contains(&v) && bin(v) >= 900).count() as f64 / in_range;
    if low > 0.5 && high < 0.05 {
        ImageType::Immunofluorescence
    } else {
        ImageType::HE
    }
}

/// Block means over `factor`×`factor` blocks (partial edge blocks averaged over what they
/// hold), each channel divided by its maximum; returns (values, rows, cols).
pub fn block_thumbnail(img: &ImageCache, factor: usize) -> Result<(Vec<f32>, usize, usize)> {
    let info = &img.info;
    let (th, tw, ch) = (info.height.div_ceil(factor), info.width.div_ceil(factor), info.channels);
    let mut out = vec![0f32; th * tw * ch];
    // block means in sample units, each strip reporting its per-channel maxima
    let maxes: Vec<Vec<f32>> = out
        .par_chunks_mut(tw * ch)
        .enumerate()
        .map(|(ty, out_row)| {
            let mut sums = vec![0f64; tw * ch];
            let mut maxes = vec![0f32; ch];
            let (r0, r1) = (ty * factor, ((ty + 1) * factor).min(info.height));
            let mut buf = Vec::new();
            img.read_rows(r0, r1 - r0, &mut buf)?;
            for row in buf.chunks_exact(info.row_bytes()) {
                for c in 0..info.width {
                    for k in 0..ch {
                        let v = img.sample(row, c * ch + k);
                        sums[(c / factor) * ch + k] += v as f64;
                        maxes[k] = maxes[k].max(v);
                    }
                }
            }
            for tx in 0..tw {
                let cols = (((tx + 1) * factor).min(info.width) - tx * factor) as f64;
                for k in 0..ch {
                    out_row[tx * ch + k] = (sums[tx * ch + k] / ((r1 - r0) as f64 * cols)) as f32;
                }
            }
            Ok(maxes)
        })
        .collect::<Result<_>>()?;
    let max: Vec<f32> = (0..ch).map(|k| maxes.iter().map(|m| m[k]).fold(0.0, f32::max)).collect();
    out.par_chunks_mut(ch).for_each(|px| {
        for k in 0..ch {
            if max[k] > 0.0 {
                px[k] /= max[k];
            }
        }
    });
    Ok((out, th, tw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dark_sparse_is_if_bright_is_he() {
        let mut dark = vec![0.02f32; 900];
        dark.extend(vec![0.5f32; 100]);
        assert_eq!(classify(&dark), ImageType::Immunofluorescence);
        let bright = vec![0.92f32; 1000];
        assert_eq!(classify(&bright), ImageType::HE);
        // dark but with many saturated pixels: not IF
        let mut sat = vec![0.02f32; 600];
        sat.extend(vec![0.99f32; 400]);
        assert_eq!(classify(&sat), ImageType::HE);
    }
}
