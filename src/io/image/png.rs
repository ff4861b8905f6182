//! PNG, decoded row by row (8 or 16 bit; palette and low bit depths expanded; alpha dropped).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::{drop_alpha, BandSink, ImageInfo, SampleType};
use crate::error::{Error, Result};

fn reader(path: &Path) -> Result<::png::Reader<BufReader<File>>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut d = ::png::Decoder::new(BufReader::new(f));
    d.set_transformations(::png::Transformations::EXPAND);
    d.read_info().map_err(|e| Error::format(path, "PNG header", e.to_string()))
}

fn info_of(path: &Path, r: &::png::Reader<BufReader<File>>) -> Result<(ImageInfo, usize)> {
    let (ct, depth) = r.output_color_type();
    let samples = ct.samples();
    let sample = match depth {
        ::png::BitDepth::Sixteen => SampleType::U16,
        ::png::BitDepth::Eight => SampleType::U8,
        d => return Err(Error::format(path, "PNG bit depth", format!("{d:?} is not supported"))),
    };
    let has_alpha = matches!(ct, ::png::ColorType::Rgba | ::png::ColorType::GrayscaleAlpha);
    let channels = samples - has_alpha as usize;
    let i = r.info();
    Ok((
        ImageInfo { height: i.height as usize, width: i.width as usize, channels, sample, format: "PNG".into() },
        samples,
    ))
}

pub fn probe(path: &Path) -> Result<ImageInfo> {
    let r = reader(path)?;
    Ok(info_of(path, &r)?.0)
}

pub fn decode(path: &Path, sink: &mut BandSink) -> Result<ImageInfo> {
    let mut r = reader(path)?;
    let (info, samples) = info_of(path, &r)?;
    let bps = info.sample.bytes();
    let band_rows = 64;
    let mut band = Vec::with_capacity(info.row_bytes() * band_rows);
    let mut rows = 0;
    for y in 0..info.height {
        let row = r
            .next_row()
            .map_err(|e| Error::format(path, format!("PNG row {y}"), e.to_string()))?
            .ok_or_else(|| Error::format(path, format!("PNG row {y}"), "missing (truncated file)"))?;
        let data = row.data();
        let mut native: Vec<u8> = if bps == 2 {
            // PNG stores 16-bit samples big-endian.
            data.chunks_exact(2).flat_map(|c| [c[1], c[0]]).collect()
        } else {
            data.to_vec()
        };
        if samples != info.channels {
            native = drop_alpha(&native, samples, bps);
        }
        band.extend_from_slice(&native);
        rows += 1;
        if rows == band_rows {
            sink(&band)?;
            band.clear();
            rows = 0;
        }
    }
    if rows > 0 {
        sink(&band)?;
    }
    Ok(info)
}
