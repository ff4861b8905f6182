//! Band-by-band rendering of the H&E-like image, the truth label map and the thumbnails.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use npyz::WriterBuilder;
use rayon::prelude::*;
use tiff::encoder::{colortype, TiffEncoder, TiffKind};

use super::field::{hash3, unit, Section};
use crate::error::{Error, Result};
use crate::util::progress_count;

const BAND: usize = 64;
const BACKGROUND: [f32; 3] = [243.0, 241.0, 246.0];

/// Render rows [r0, r0 + n) into RGB bytes and labels.
fn render_band(s: &Section, r0: usize, n: usize, rgb: &mut [u8], labels: &mut [u8]) {
    let w = s.width;
    let lattice = s.lattice(r0, r0 + n);
    rgb.par_chunks_mut(w * 3).zip(labels.par_chunks_mut(w)).enumerate().for_each(|(y, (rgb_row, lab_row))| {
        let row = r0 + y;
        for col in 0..w {
            let p = s.warped(row as f32, col as f32, Some(&lattice));
            let lab = s.label_at(p);
            lab_row[col] = lab;
            let h = hash3(s.seed ^ 0x5EED, row as i64, col as i64);
            let noise = |k: u32| (unit(h.rotate_left(k * 21)) - 0.5) * 7.0;
            let px = if lab == 0 {
                [BACKGROUND[0] + noise(0), BACKGROUND[1] + noise(1), BACKGROUND[2] + noise(2)]
            } else {
                let st = &s.styles[lab as usize - 1];
                // fibrous shading from the local warp, plus a nucleus if one covers the pixel
                let shade = 1.0 + 0.9 * ((p[0] - col as f32 / s.height.min(s.width) as f32) * 55.0).sin() * 0.06;
                let cover = s.nucleus(row, col, lab);
                let mut c = [0f32; 3];
                for k in 0..3 {
                    let base = st.stroma[k] * shade;
                    c[k] = base * (1.0 - cover) + st.nucleus[k] * cover + noise(k as u32) * 1.4;
                }
                c
            };
            for k in 0..3 {
                rgb_row[col * 3 + k] = px[k].round().clamp(0.0, 255.0) as u8;
            }
        }
    });
}

/// Box-average thumbnail accumulated band by band (the Space Ranger low/high-res PNGs).
struct Thumb {
    h: usize,
    w: usize,
    scale: f64,
    sum: Vec<u32>,
    cnt: Vec<u32>,
}

impl Thumb {
    fn new(height: usize, width: usize, max_side: usize) -> Thumb {
        let scale = thumb_scale(height, width, max_side);
        let (h, w) =
            (((height as f64 * scale).round() as usize).max(1), ((width as f64 * scale).round() as usize).max(1));
        Thumb { h, w, scale, sum: vec![0; h * w * 3], cnt: vec![0; h * w] }
    }
    fn add(&mut self, r0: usize, rgb: &[u8], width: usize) {
        let rows = rgb.len() / (width * 3);
        let cols: Vec<usize> = (0..width).map(|c| ((c as f64 * self.scale) as usize).min(self.w - 1)).collect();
        for y in 0..rows {
            let ty = (((r0 + y) as f64 * self.scale) as usize).min(self.h - 1);
            for (c, &tx) in cols.iter().enumerate() {
                let o = ty * self.w + tx;
                self.cnt[o] += 1;
                for k in 0..3 {
                    self.sum[o * 3 + k] += rgb[(y * width + c) * 3 + k] as u32;
                }
            }
        }
    }
    fn write_png(&self, path: &Path) -> Result<()> {
        let data: Vec<u8> = (0..self.h * self.w * 3)
            .map(|i| (self.sum[i] as f64 / self.cnt[i / 3].max(1) as f64).round() as u8)
            .collect();
        write_png_rgb(path, self.h, self.w, &data)
    }
}

/// Scale factor of a thumbnail whose longer side is at most `max_side`.
pub fn thumb_scale(height: usize, width: usize, max_side: usize) -> f64 {
    (max_side as f64 / height.max(width) as f64).min(1.0)
}

pub fn write_png_rgb(path: &Path, h: usize, w: usize, data: &[u8]) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(f), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(|e| Error::format(path, "PNG", e.to_string()))?;
    wr.write_image_data(data).map_err(|e| Error::format(path, "PNG", e.to_string()))?;
    wr.finish().map_err(|e| Error::format(path, "PNG", e.to_string()))
}

fn render_into<W: Write + Seek, K: TiffKind>(
    s: &Section,
    dir: &Path,
    mut enc: TiffEncoder<W, K>,
) -> Result<(Thumb, Thumb)> {
    let tif = dir.join("image.tif");
    let terr = |e: tiff::TiffError| Error::format(&tif, "TIFF", e.to_string());
    let mut img = enc.new_image::<colortype::RGB8>(s.width as u32, s.height as u32).map_err(terr)?;
    img.rows_per_strip(BAND as u32).map_err(terr)?;
    let lab_path = dir.join("truth/domains.npy");
    let lab_file = File::create(&lab_path).map_err(|e| Error::io(&lab_path, e))?;
    let mut lab_writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[s.height as u64, s.width as u64])
        .writer(BufWriter::with_capacity(1 << 20, lab_file))
        .begin_nd()
        .map_err(|e| Error::io(&lab_path, e))?;
    let (mut hires, mut lowres) = (Thumb::new(s.height, s.width, 2000), Thumb::new(s.height, s.width, 600));
    let mut rgb = vec![0u8; BAND * s.width * 3];
    let mut labels = vec![0u8; BAND * s.width];
    let bands = s.height.div_ceil(BAND);
    let bar = progress_count(bands as u64, "rendering image bands");
    for b in 0..bands {
        let r0 = b * BAND;
        let n = BAND.min(s.height - r0);
        let (rgb, labels) = (&mut rgb[..n * s.width * 3], &mut labels[..n * s.width]);
        render_band(s, r0, n, rgb, labels);
        img.write_strip(rgb).map_err(terr)?;
        lab_writer.extend(labels.iter().copied()).map_err(|e| Error::io(&lab_path, e))?;
        hires.add(r0, rgb, s.width);
        lowres.add(r0, rgb, s.width);
        bar.inc(1);
    }
    bar.finish_and_clear();
    img.finish().map_err(terr)?;
    lab_writer.finish().map_err(|e| Error::io(&lab_path, e))?;
    Ok((hires, lowres))
}

/// Render the image (`image.tif`), `truth/domains.npy` and the spatial/ thumbnails.
pub fn render(s: &Section, dir: &Path) -> Result<()> {
    let tif = dir.join("image.tif");
    let file = File::create(&tif).map_err(|e| Error::io(&tif, e))?;
    let w = BufWriter::with_capacity(4 << 20, file);
    // Uncompressed: the `tiff` encoder (0.11) compresses only whole images written at once,
    // not strips written one by one, and streaming matters more here than file size.
    // Classic TIFF offsets are 32-bit, so anything near 4 GiB goes to BigTIFF.
    let big = (s.height as u64 * s.width as u64 * 3) > (7u64 << 29);
    let (hires, lowres) = if big {
        render_into(s, dir, TiffEncoder::new_big(w).map_err(|e| Error::format(&tif, "TIFF", e.to_string()))?)?
    } else {
        render_into(s, dir, TiffEncoder::new(w).map_err(|e| Error::format(&tif, "TIFF", e.to_string()))?)?
    };
    hires.write_png(&dir.join("spatial/tissue_hires_image.png"))?;
    lowres.write_png(&dir.join("spatial/tissue_lowres_image.png"))?;
    Ok(())
}
