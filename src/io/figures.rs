//! Figures as PNG (SPEC §11): score maps through a blue→red colour map and in gray, label
//! maps in a qualitative palette, the background in mid gray. Written atomically.

use std::path::Path;

use crate::error::{Error, Result};
use crate::util::write_atomically;

/// Anchors of our blue→red map (deep blue, cyan-blue, pale yellow, orange, deep red),
/// interpolated linearly in RGB over 256 entries.
const BLUE_RED: [[f32; 3]; 5] =
    [[36.0, 38.0, 120.0], [60.0, 140.0, 200.0], [250.0, 240.0, 190.0], [245.0, 140.0, 60.0], [165.0, 20.0, 35.0]];

pub const BACKGROUND: [u8; 3] = [128, 128, 128];

/// Colour of a value in [0, 1].
pub fn blue_red(v: f32) -> [u8; 3] {
    let t = v.clamp(0.0, 1.0) * (BLUE_RED.len() - 1) as f32;
    let i = (t.floor() as usize).min(BLUE_RED.len() - 2);
    let f = t - i as f32;
    let (a, b) = (BLUE_RED[i], BLUE_RED[i + 1]);
    [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * f).round() as u8)
}

/// A qualitative palette for cluster labels (distinct hues, then lighter and darker turns).
pub fn label_colour(l: usize) -> [u8; 3] {
    const BASE: [[u8; 3]; 12] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [188, 189, 34],
        [23, 190, 207],
        [127, 127, 127],
        [255, 187, 120],
        [152, 223, 138],
    ];
    let c = BASE[l % BASE.len()];
    match (l / BASE.len()) % 3 {
        0 => c,
        1 => c.map(|v| ((v as u16 + 255) / 2) as u8),
        _ => c.map(|v| (v as u16 * 2 / 3) as u8),
    }
}

/// Write an RGB (3 × u8 per pixel) or gray (1 × u8) image as PNG.
pub fn write_png(path: &Path, width: usize, height: usize, channels: usize, pixels: &[u8]) -> Result<()> {
    assert_eq!(pixels.len(), width * height * channels);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    write_atomically(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut e = png::Encoder::new(std::io::BufWriter::new(f), width as u32, height as u32);
        e.set_color(if channels == 3 { png::ColorType::Rgb } else { png::ColorType::Grayscale });
        e.set_depth(png::BitDepth::Eight);
        let mut w = e.write_header().map_err(|err| Error::format(tmp, "png", err.to_string()))?;
        w.write_image_data(pixels).map_err(|err| Error::format(tmp, "png", err.to_string()))?;
        w.finish().map_err(|err| Error::format(tmp, "png", err.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_maps_run_blue_to_red_and_png_round_trips() {
        let (lo, hi) = (blue_red(0.0), blue_red(1.0));
        assert!(lo[2] > lo[0] && hi[0] > hi[2]);
        assert_eq!(blue_red(-1.0), lo);
        assert_ne!(label_colour(0), label_colour(12));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f/a.png");
        let px: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        write_png(&p, 3, 2, 3, &px).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..18], &px[..]);
    }
}
