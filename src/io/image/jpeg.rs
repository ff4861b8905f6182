//! Baseline/progressive JPEG. The format has no random access, so the decoded image is
//! held once (the her2st slides: ~275 MB) and handed on in bands.

use std::path::Path;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::{BandSink, ImageInfo, SampleType};
use crate::error::{Error, Result};

fn decoder(bytes: &[u8]) -> JpegDecoder<ZCursor<&[u8]>> {
    let opts = DecoderOptions::default().set_max_width(1 << 16).set_max_height(1 << 16).set_strict_mode(false);
    JpegDecoder::new_with_options(ZCursor::new(bytes), opts)
}

fn info_of(path: &Path, d: &mut JpegDecoder<ZCursor<&[u8]>>) -> Result<(ImageInfo, ColorSpace)> {
    d.decode_headers().map_err(|e| Error::format(path, "JPEG header", e.to_string()))?;
    let (w, h) = d.dimensions().ok_or_else(|| Error::format(path, "JPEG header", "no dimensions"))?;
    let gray = matches!(d.input_colorspace(), Some(ColorSpace::Luma));
    let out = if gray { ColorSpace::Luma } else { ColorSpace::RGB };
    let info = ImageInfo {
        height: h,
        width: w,
        channels: if gray { 1 } else { 3 },
        sample: SampleType::U8,
        format: "JPEG".into(),
    };
    Ok((info, out))
}

pub fn probe(path: &Path) -> Result<ImageInfo> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(info_of(path, &mut decoder(&bytes))?.0)
}

pub fn decode(path: &Path, sink: &mut BandSink) -> Result<ImageInfo> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (info, cs) = info_of(path, &mut decoder(&bytes))?;
    let opts = DecoderOptions::default()
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .set_strict_mode(false)
        .jpeg_set_out_colorspace(cs);
    let mut d = JpegDecoder::new_with_options(ZCursor::new(&bytes[..]), opts);
    let pixels = d.decode().map_err(|e| Error::format(path, "JPEG data", e.to_string()))?;
    if pixels.len() != info.total_bytes() as usize {
        return Err(Error::format(path, "JPEG data", "decoded size does not match the header"));
    }
    for band in pixels.chunks(info.row_bytes() * 256) {
        sink(band)?;
    }
    Ok(info)
}
