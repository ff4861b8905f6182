//! Image preprocessing of one section (SPEC §3): per-channel max normalisation, area
//! downscaling by `scale_rate`, image type detection, the tissue mask and its crop, and the
//! feasible domain for pseudo spots. The full-resolution image is never held: the 1/16
//! thumbnail and the scaled image are both computed from rows streamed out of the cache,
//! and the tissue threshold is applied to exact scaled values while they are produced.

use rayon::prelude::*;
use serde::Serialize;

use super::image_type::{classify, ImageType};
use super::morphology::{close, open, Mask};
use super::otsu::threshold_otsu;
use super::resize::area_resize_rows;
use crate::error::{Error, Result};
use crate::io::image::{ImageCache, ImageInfo, SampleType};

/// Settings of the image stage (SPEC §1, §3).
#[derive(Debug, Clone)]
pub struct TissueSettings {
    pub scale_rate: f64,
    /// spot radius in original pixels
    pub radius: f64,
    pub create_mask: bool,
    /// None: detect
    pub image_type: Option<ImageType>,
    /// Reinhard colour normalisation (H&E only)
    pub color_norm: bool,
}

/// The preprocessed image of a section.
pub struct PreparedImage {
    /// max-normalised, scaled image (samples quantised to the source's depth)
    pub image: ImageCache,
    pub image_type: ImageType,
    /// spot radius in scaled pixels: round(radius / scale_rate)
    pub radius: usize,
    /// spot centres (row, col) in scaled pixels: coord / scale_rate − 1
    pub spots: Vec<[f64; 2]>,
    /// tissue mask over the whole scaled image (before cropping)
    pub full_mask: Mask,
    /// [start, end) rows and columns of the crop: the mask's first and last set index, as
    /// the reference slices them (the last row and column are left out)
    pub row_range: (usize, usize),
    pub col_range: (usize, usize),
    pub channel_max: Vec<f32>,
    pub background: Vec<f32>,
    pub otsu_threshold: f32,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PreparedSummary {
    pub height: usize,
    pub width: usize,
    pub image_type: ImageType,
    pub radius: usize,
    pub row_range: (usize, usize),
    pub col_range: (usize, usize),
}

impl PreparedImage {
    /// The cropped mask (rows row_range, cols col_range).
    pub fn mask(&self) -> Mask {
        self.full_mask.crop(self.row_range.0, self.row_range.1, self.col_range.0, self.col_range.1)
    }

    /// Mask minus the ±radius square around each sequenced spot (SPEC §3).
    pub fn feasible_domain(&self) -> Mask {
        let mut f = self.full_mask.clone();
        let (h, w, r) = (f.height as i64, f.width as i64, self.radius as i64);
        for s in &self.spots {
            // Python's round: half to even
            let (row, col) = (s[0].round_ties_even() as i64, s[1].round_ties_even() as i64);
            for y in (row - r).max(0)..(row + r + 1).min(h) {
                let (x0, x1) = ((col - r).max(0), (col + r + 1).min(w));
                if x0 < x1 {
                    f.set_range(y as usize, x0 as usize, x1 as usize, false);
                }
            }
        }
        f
    }
}

/// Python's round() of a float: half to even.
fn py_round(v: f64) -> f64 {
    v.round_ties_even()
}

/// [max(0, min − r), min(limit, max + r + 1)) of spot coordinates truncated to integers, per axis.
fn scaled_bbox(spots: &[[f64; 2]], radius: i64, shape: (usize, usize)) -> [(i64, i64); 2] {
    let mut out = [(0, 0); 2];
    for (a, lim) in [shape.0, shape.1].into_iter().enumerate() {
        let lo = spots.iter().map(|s| s[a]).fold(f64::INFINITY, f64::min) as i64;
        let hi = spots.iter().map(|s| s[a]).fold(f64::NEG_INFINITY, f64::max) as i64;
        out[a] = ((lo - radius).max(0), (hi + radius + 1).min(lim as i64));
    }
    out
}

/// The reference's 1/16 thumbnail: INTER_AREA shrink to ceil(H/16) × ceil(W/16) of the
/// image divided by its channel maxima.
pub fn thumbnail16(img: &ImageCache, maxima: &[f32]) -> Result<Vec<f32>> {
    let (th, tw, ch) = (img.info.height.div_ceil(16), img.info.width.div_ceil(16), img.info.channels);
    let mut thumb = vec![0f32; th * tw * ch];
    area_resize_rows(img, th, tw, 0, &mut thumb)?;
    for px in thumb.chunks_exact_mut(ch) {
        for k in 0..ch {
            px[k] *= if maxima[k] > 0.0 { 1.0 / maxima[k] } else { 0.0 };
        }
    }
    Ok(thumb)
}

/// Per-channel maxima of the whole image.
pub fn channel_max(img: &ImageCache) -> Result<Vec<f32>> {
    let info = &img.info;
    let band = 256usize;
    let parts: Vec<Vec<f32>> = (0..info.height.div_ceil(band))
        .into_par_iter()
        .map(|b| {
            let (r0, r1) = (b * band, ((b + 1) * band).min(info.height));
            let mut buf = Vec::new();
            img.read_rows(r0, r1 - r0, &mut buf)?;
            let mut m = vec![0f32; info.channels];
            let n = (r1 - r0) * info.width;
            for i in 0..n {
                for k in 0..info.channels {
                    m[k] = m[k].max(img.sample(&buf, i * info.channels + k));
                }
            }
            Ok(m)
        })
        .collect::<Result<_>>()?;
    Ok((0..info.channels).map(|k| parts.iter().map(|p| p[k]).fold(0.0, f32::max)).collect())
}

fn gray(px: &[f32]) -> f32 {
    if px.len() == 3 {
        // OpenCV RGB2GRAY weights
        px[0] * 0.299 + px[1] * 0.587 + px[2] * 0.114
    } else {
        px.iter().sum::<f32>() / px.len() as f32
    }
}

/// numpy's median of a column of values (mean of the two middle ones for even counts).
fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        ((v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0) as f32
    }
}

fn variance(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n
}

/// Background colour from the thumbnail region outside the spots' box (SPEC §3): the Otsu
/// class of lower grey-level variance there, its per-channel median.
fn background_value(thumb: &[f32], ch: usize, binary: &[bool], outer: &[bool], warnings: &mut Vec<String>) -> Vec<f32> {
    let n = binary.len();
    let bg: Vec<usize> = (0..n).filter(|&i| outer[i] && binary[i]).collect();
    let fg: Vec<usize> = (0..n).filter(|&i| outer[i] && !binary[i]).collect();
    let med = |idx: &[usize]| -> Vec<f32> {
        (0..ch).map(|k| median(idx.iter().map(|&i| thumb[i * ch + k]).collect())).collect()
    };
    if bg.is_empty() && fg.is_empty() {
        warnings
            .push("no thumbnail pixels outside the spots' box: background taken as the whole image's median".into());
        return med(&(0..n).collect::<Vec<_>>());
    }
    if bg.is_empty() {
        return med(&fg);
    }
    if fg.is_empty() {
        return med(&bg);
    }
    let g = |idx: &[usize]| -> Vec<f32> { idx.iter().map(|&i| gray(&thumb[i * ch..(i + 1) * ch])).collect() };
    if variance(&g(&bg)) < variance(&g(&fg)) {
        med(&bg)
    } else {
        med(&fg)
    }
}

/// Run the image stage. `spots_xy` are the stored coordinates; `swap` turns (x, y) into
/// (row, col).
pub fn prepare_image(
    source: &ImageCache,
    cache_dir: &std::path::Path,
    spots_rc: &[[f64; 2]],
    s: &TissueSettings,
) -> Result<PreparedImage> {
    if !(s.scale_rate.is_finite() && s.scale_rate > 0.0) {
        return Err(Error::setting("scale_rate", format!("must be > 0, got {}", s.scale_rate)));
    }
    if !(s.radius.is_finite() && s.radius >= 1.0) {
        return Err(Error::setting("radius", format!("must be ≥ 1 pixel, got {}", s.radius)));
    }
    if spots_rc.is_empty() {
        return Err(Error::setting("spots", "no spots to place on the image"));
    }
    let info = &source.info;
    let (h, w, ch) = (info.height, info.width, info.channels);
    let hh = (h as f64 / s.scale_rate).ceil() as usize;
    let hw = (w as f64 / s.scale_rate).ceil() as usize;
    if s.scale_rate < 1.0 {
        return Err(Error::setting("scale_rate", format!("{} < 1 would enlarge the image; use ≥ 1", s.scale_rate)));
    }
    let mut warnings = Vec::new();
    let radius = py_round(s.radius / s.scale_rate).max(1.0) as usize;
    let spots: Vec<[f64; 2]> =
        spots_rc.iter().map(|p| [p[0] / s.scale_rate - 1.0, p[1] / s.scale_rate - 1.0]).collect();
    let maxima = channel_max(source)?;
    let inv: Vec<f32> = maxima.iter().map(|&m| if m > 0.0 { 1.0 / m } else { 0.0 }).collect();

    // 1/16 thumbnail: type detection and background estimate
    let (th, tw) = (h.div_ceil(16), w.div_ceil(16));
    let thumb = thumbnail16(source, &maxima)?;
    let image_type = s.image_type.unwrap_or_else(|| classify(&thumb));
    let gray_thumb: Vec<f32> = thumb.chunks_exact(ch).map(gray).collect();
    let otsu = threshold_otsu(&gray_thumb);
    let binary: Vec<bool> = gray_thumb.iter().map(|&g| g > otsu).collect();
    let orig: Vec<[f64; 2]> = spots_rc.iter().map(|p| [p[0] - 1.0, p[1] - 1.0]).collect();
    let [bgr, bgc] = scaled_bbox(&orig, s.radius as i64, (h, w));
    let mut outer = vec![true; th * tw];
    for r in (bgr.0 / 16) as usize..((bgr.1 / 16) as usize).min(th) {
        for c in (bgc.0 / 16) as usize..((bgc.1 / 16) as usize).min(tw) {
            outer[r * tw + c] = false;
        }
    }
    let background = background_value(&thumb, ch, &binary, &outer, &mut warnings);
    drop(thumb);
    let [tr, tc] = scaled_bbox(&spots, radius as i64, (hh, hw));

    // scaled, normalised image → cache; raw mask from the exact values on the way
    let sample = info.sample;
    let maxval = sample.max_value();
    let out_info =
        ImageInfo { height: hh, width: hw, channels: ch, sample, format: format!("scaled 1/{}", s.scale_rate) };
    if tr.0 >= tr.1 || tc.0 >= tc.1 {
        return Err(Error::setting(
            "spots",
            format!("no spot lies on the {h}×{w} image (check swap_coord, scale_rate and the image)"),
        ));
    }
    let (tr, tc) = ((tr.0 as usize, tr.1 as usize), (tc.0 as usize, tc.1 as usize));
    // the thresholded mask, already cut to the spots' box, packed band by band
    let mut raw_mask = Mask::new(hh, hw);
    let mut pack_band = |r0: usize, bytes: &mut [u8]| {
        let n = bytes.len() / hw;
        let (words, per_row) = raw_mask.band_mut(r0, r0 + n);
        words.par_chunks_mut(per_row).zip(bytes.par_chunks_mut(hw)).enumerate().for_each(|(i, (w, row))| {
            let r = r0 + i;
            if s.create_mask {
                if r < tr.0 || r >= tr.1 {
                    row.fill(0);
                } else {
                    row[..tc.0].fill(0);
                    row[tc.1..].fill(0);
                }
            }
            super::morphology::pack(row, w);
        });
    };
    let params = serde_json::json!({"op": "area_scale_max_normalise", "scale_rate": s.scale_rate});
    let band = 64usize;
    let compute_band = |r0: usize, n: usize, mask_rows: &mut [u8]| -> Result<Vec<f32>> {
        let mut vals = vec![0f32; n * hw * ch];
        area_resize_rows(source, hh, hw, r0, &mut vals)?;
        vals.par_chunks_mut(hw * ch).zip(mask_rows.par_chunks_mut(hw)).for_each(|(row, m)| {
            for (x, px) in row.chunks_exact_mut(ch).enumerate() {
                let mut d = 0f32;
                for k in 0..ch {
                    px[k] *= inv[k];
                    d += (px[k] - background[k]).abs();
                }
                m[x] = (d / ch as f32 > 0.075) as u8;
            }
        });
        Ok(vals)
    };
    let quantise = |vals: &[f32]| -> Vec<u8> {
        match sample {
            SampleType::U8 => vals.iter().map(|v| (v * maxval).round().clamp(0.0, maxval) as u8).collect(),
            SampleType::U16 => {
                vals.iter().flat_map(|v| ((v * maxval).round().clamp(0.0, maxval) as u16).to_le_bytes()).collect()
            }
        }
    };
    // At scale 1 with full-range channels the normalised image is the source itself: no copy.
    let identity = hh == h && hw == w && maxima.iter().all(|&m| m == maxval);
    let mut mask_done = false;
    let image = if identity {
        source.reopen()?
    } else {
        ImageCache::open_derived(source, cache_dir, params, &out_info, |sink| {
            let mut bytes = vec![0u8; band * hw];
            for r0 in (0..hh).step_by(band) {
                let n = band.min(hh - r0);
                let vals = compute_band(r0, n, &mut bytes[..n * hw])?;
                pack_band(r0, &mut bytes[..n * hw]);
                sink(&quantise(&vals))?;
            }
            mask_done = true;
            Ok(out_info.clone())
        })?
    };
    if !mask_done {
        // the scaled image came from the cache: recompute the mask only
        let mut bytes = vec![0u8; band * hw];
        for r0 in (0..hh).step_by(band) {
            let n = band.min(hh - r0);
            compute_band(r0, n, &mut bytes[..n * hw])?;
            pack_band(r0, &mut bytes[..n * hw]);
        }
    }

    let full_mask = if s.create_mask {
        let k_close = if image_type == ImageType::Immunofluorescence { radius * 4 } else { radius / 4 };
        let m = open(close(raw_mask, k_close), radius / 2);
        if m.count() == 0 {
            warnings.push("the tissue mask is empty after thresholding: using the spots' bounding box (check the image and scale_rate)".into());
            let mut box_mask = Mask::new(hh, hw);
            for r in tr.0..tr.1 {
                box_mask.set_range(r, tc.0, tc.1, true);
            }
            box_mask
        } else {
            m
        }
    } else {
        Mask::full(hh, hw)
    };
    let image = if s.color_norm
        && image_type == ImageType::HE
        && image.info.channels == 3
        && image.info.sample == SampleType::U8
    {
        super::color_norm::reinhard(&image, &full_mask, cache_dir)?
    } else {
        if s.color_norm {
            warnings.push("colour normalisation applies to 8-bit RGB H&E images only: skipped".into());
        }
        image
    };
    let (row_range, col_range) = if s.create_mask {
        // first and last set column of each row, in one row-major pass
        let spans: Vec<Option<(usize, usize)>> = (0..hh).into_par_iter().map(|r| full_mask.row_span(r)).collect();
        let rows: Vec<usize> = (0..hh).filter(|&r| spans[r].is_some()).collect();
        let c0 = spans.iter().flatten().map(|s| s.0).min().unwrap();
        let c1 = spans.iter().flatten().map(|s| s.1).max().unwrap();
        ((rows[0], *rows.last().unwrap()), (c0, c1))
    } else {
        ((0, hh), (0, hw))
    };
    Ok(PreparedImage {
        image,
        image_type,
        radius,
        spots,
        full_mask,
        row_range,
        col_range,
        channel_max: maxima,
        background,
        otsu_threshold: otsu,
        warnings,
    })
}
