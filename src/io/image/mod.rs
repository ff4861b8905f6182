//! Histology images: decoded once, band by band, into a memory-mapped cache (see `cache`),
//! from which later stages read tiles. No decoder here holds a whole slide unless the format
//! forces it (baseline JPEG).

pub mod cache;
mod jpeg;
mod png;
mod tiff;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use cache::ImageCache;

/// Storage type of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleType {
    U8,
    U16,
}

impl SampleType {
    pub fn bytes(self) -> usize {
        match self {
            SampleType::U8 => 1,
            SampleType::U16 => 2,
        }
    }
    pub fn max_value(self) -> f32 {
        match self {
            SampleType::U8 => 255.0,
            SampleType::U16 => 65535.0,
        }
    }
}

/// What a decoder learns from the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub sample: SampleType,
    /// Human-readable container and layout, e.g. "TIFF tiled 240x240 JPEG".
    pub format: String,
}

impl ImageInfo {
    pub fn row_bytes(&self) -> usize {
        self.width * self.channels * self.sample.bytes()
    }
    pub fn total_bytes(&self) -> u64 {
        self.row_bytes() as u64 * self.height as u64
    }
}

/// Receives consecutive full-width bands of rows, channels interleaved, samples in native
/// little-endian bytes.
pub type BandSink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Container {
    Tiff,
    Png,
    Jpeg,
}

fn sniff(path: &Path) -> Result<Container> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut m = [0u8; 8];
    let n = f.read(&mut m).map_err(|e| Error::io(path, e))?;
    let m = &m[..n];
    if m.starts_with(b"II*\0") || m.starts_with(b"MM\0*") || m.starts_with(b"II+\0") || m.starts_with(b"MM\0+") {
        Ok(Container::Tiff)
    } else if m.starts_with(&[0x89, b'P', b'N', b'G']) {
        Ok(Container::Png)
    } else if m.starts_with(&[0xFF, 0xD8]) {
        Ok(Container::Jpeg)
    } else {
        Err(Error::format(path, "header", "not a TIFF, PNG or JPEG image"))
    }
}

/// Read the header only.
pub fn probe(path: &Path) -> Result<ImageInfo> {
    match sniff(path)? {
        Container::Tiff => tiff::probe(path),
        Container::Png => png::probe(path),
        Container::Jpeg => jpeg::probe(path),
    }
}

/// Decode the whole image in row order, handing full-width bands to `sink`.
pub fn decode_bands(path: &Path, sink: &mut BandSink) -> Result<ImageInfo> {
    match sniff(path)? {
        Container::Tiff => tiff::decode(path, sink),
        Container::Png => png::decode(path, sink),
        Container::Jpeg => jpeg::decode(path, sink),
    }
}

/// Keep the colour channels of an interleaved buffer, dropping a trailing alpha.
pub(crate) fn drop_alpha(src: &[u8], samples_in: usize, bytes_per_sample: usize) -> Vec<u8> {
    let px_in = samples_in * bytes_per_sample;
    let px_out = (samples_in - 1) * bytes_per_sample;
    let mut out = Vec::with_capacity(src.len() / px_in * px_out);
    for px in src.chunks_exact(px_in) {
        out.extend_from_slice(&px[..px_out]);
    }
    out
}
