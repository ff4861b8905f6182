//! Figures (SPEC §11): score maps through a blue→red colour map and in gray, label maps in a
//! qualitative palette, the background in mid gray. PNG holds the map pixel for pixel; PDF adds
//! a title and the key (colour bar or legend). Written atomically.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::pdf::{figure_pdf, Key};
use crate::util::{atomic_write, write_atomically};

/// Which files a figure is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FigureFormat {
    Png,
    Pdf,
    Both,
}

/// One map to draw: `channels` is 3 (RGB) or 1 (gray), rows top to bottom.
pub struct Figure<'a> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: &'a [u8],
    pub title: &'a str,
    pub key: Key<'a>,
}

/// Write `fig` as `STEM.png` and/or `STEM.pdf` (the stem may contain dots: gene names do).
pub fn write_figure(stem: &Path, fig: &Figure, format: FigureFormat) -> Result<()> {
    let with = |ext: &str| {
        let mut s = stem.as_os_str().to_owned();
        s.push(ext);
        std::path::PathBuf::from(s)
    };
    if format != FigureFormat::Pdf {
        write_png(&with(".png"), fig.width, fig.height, fig.channels, fig.pixels)?;
    }
    if format != FigureFormat::Png {
        let p = with(".pdf");
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        atomic_write(&p, &figure_pdf(fig.width, fig.height, fig.channels, fig.pixels, fig.title, &fig.key))?;
    }
    Ok(())
}

/// The gray ramp of the gray figures' colour bar.
pub fn gray(v: f32) -> [u8; 3] {
    [(v.clamp(0.0, 1.0) * 255.0) as u8; 3]
}

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

    #[test]
    fn figure_formats_write_the_files_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let px = [9u8; 12];
        let fig = Figure { width: 2, height: 2, channels: 3, pixels: &px, title: "t", key: Key::None };
        write_figure(&dir.path().join("a/gene_RP11-1.2"), &fig, FigureFormat::Both).unwrap();
        assert!(dir.path().join("a/gene_RP11-1.2.png").exists());
        let pdf = std::fs::read(dir.path().join("a/gene_RP11-1.2.pdf")).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        write_figure(&dir.path().join("b"), &fig, FigureFormat::Pdf).unwrap();
        assert!(dir.path().join("b.pdf").exists() && !dir.path().join("b.png").exists());
        write_figure(&dir.path().join("c"), &fig, FigureFormat::Png).unwrap();
        assert!(dir.path().join("c.png").exists() && !dir.path().join("c.pdf").exists());
    }
}
