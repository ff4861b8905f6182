//! TIFF and BigTIFF, stripped or tiled, chunky or planar, 8/16-bit, any compression the
//! `tiff` crate decodes (none, LZW, Deflate, JPEG, PackBits). Decoded one row of chunks at a
//! time. A stack of same-sized single-channel pages (OME-TIFF immunofluorescence) becomes
//! one multi-channel image; otherwise only the first page is read (SVS: the full-resolution
//! level).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ::tiff::decoder::{Decoder, DecodingResult, Limits};
use ::tiff::tags::Tag;
use ::tiff::ColorType;

use super::{BandSink, ImageInfo, SampleType};
use crate::error::{Error, Result};

type Dec = Decoder<BufReader<File>>;

fn compression_name(code: u32) -> String {
    match code {
        1 => "none".into(),
        5 => "LZW".into(),
        6 | 7 => "JPEG".into(),
        8 | 32946 => "Deflate".into(),
        32773 => "PackBits".into(),
        33003 | 33005 => format!("JPEG 2000 ({code})"),
        34887 => "LERC".into(),
        50000 => "Zstd".into(),
        other => format!("code {other}"),
    }
}

const SUPPORTED_COMPRESSION: [u32; 7] = [1, 5, 6, 7, 8, 32946, 32773];

/// Layout of one page.
struct Page {
    dec: Dec,
    width: usize,
    height: usize,
    /// samples per pixel stored in a chunk (1 when planar)
    chunk_samples: usize,
    /// samples per pixel of the page
    samples: usize,
    planes: usize,
    sample: SampleType,
    chunk_w: usize,
    chunk_h: usize,
    across: usize,
    down: usize,
    color: ColorType,
    layout: String,
}

fn open_decoder(path: &Path) -> Result<Dec> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    Decoder::new(BufReader::with_capacity(1 << 20, f))
        .map(|d| d.with_limits(Limits::unlimited()))
        .map_err(|e| Error::format(path, "TIFF header", e.to_string()))
}

fn page(path: &Path, mut dec: Dec, index: usize) -> Result<Page> {
    let field = |f: &str| if index == 0 { f.to_string() } else { format!("page {index}: {f}") };
    let (w, h) = dec.dimensions().map_err(|e| Error::format(path, field("ImageWidth"), e.to_string()))?;
    let compression = dec.find_tag_unsigned::<u32>(Tag::Compression).ok().flatten().unwrap_or(1);
    if !SUPPORTED_COMPRESSION.contains(&compression) {
        return Err(Error::format(path, field("Compression"), format!("{} is not supported (supported: none, LZW, Deflate, JPEG, PackBits)", compression_name(compression))));
    }
    let color = dec.colortype().map_err(|e| Error::format(path, field("PhotometricInterpretation"), e.to_string()))?;
    let sample = match color.bit_depth() {
        8 => SampleType::U8,
        16 => SampleType::U16,
        b => return Err(Error::format(path, field("BitsPerSample"), format!("{b}-bit samples are not supported (8 or 16)"))),
    };
    let samples = color.num_samples() as usize;
    let planar = dec.find_tag_unsigned::<u16>(Tag::PlanarConfiguration).ok().flatten() == Some(2);
    let (cw, ch) = dec.chunk_dimensions();
    let tiled = matches!(dec.get_chunk_type(), ::tiff::decoder::ChunkType::Tile);
    let (cw, ch) = (cw as usize, ch as usize);
    let layout = format!(
        "{} {}{}",
        if tiled { format!("tiled {cw}x{ch}") } else { format!("stripped {ch} rows/strip") },
        compression_name(compression),
        if planar { " planar" } else { "" }
    );
    Ok(Page {
        dec,
        width: w as usize,
        height: h as usize,
        chunk_samples: if planar { 1 } else { samples },
        samples,
        planes: if planar { samples } else { 1 },
        sample,
        chunk_w: if tiled { cw } else { w as usize },
        chunk_h: ch.min(h as usize).max(1),
        across: if tiled { (w as usize).div_ceil(cw) } else { 1 },
        down: (h as usize).div_ceil(ch.min(h as usize).max(1)),
        color,
        layout,
    })
}

/// The pages that form the image: the first, plus following single-channel pages of the
/// same size when the first is single-channel (channel stacks).
fn pages(path: &Path) -> Result<(Vec<Page>, bool)> {
    let first = page(path, open_decoder(path)?, 0)?;
    let mut out = vec![first];
    if out[0].samples == 1 {
        let mut k = 1;
        loop {
            let mut d = open_decoder(path)?;
            if d.seek_to_image(k).is_err() {
                break;
            }
            let Ok(p) = page(path, d, k) else { break };
            if p.width != out[0].width || p.height != out[0].height || p.samples != 1 || p.sample != out[0].sample {
                break;
            }
            if p.chunk_h != out[0].chunk_h {
                return Err(Error::format(path, format!("page {k}: RowsPerStrip/TileLength"), "channel pages with different chunk heights are not supported"));
            }
            out.push(p);
            k += 1;
        }
    }
    let big = {
        use std::io::Read;
        let mut b = [0u8; 4];
        File::open(path).and_then(|mut f| f.read_exact(&mut b)).map_err(|e| Error::io(path, e))?;
        b[2] == 43 || b[3] == 43
    };
    Ok((out, big))
}

/// Colour channels kept from a page's samples: alpha is dropped.
fn kept_samples(path: &Path, p: &Page) -> Result<usize> {
    match p.color {
        ColorType::Gray(_) | ColorType::RGB(_) | ColorType::Multiband { .. } => Ok(p.samples),
        // JPEG-compressed YCbCr is converted to RGB by the decoder.
        ColorType::YCbCr(_) => Ok(3),
        ColorType::RGBA(_) | ColorType::GrayA(_) => Ok(p.samples - 1),
        other => Err(Error::format(path, "PhotometricInterpretation", format!("{other:?} images are not supported"))),
    }
}

fn info_of(path: &Path, pages: &[Page], big: bool) -> Result<ImageInfo> {
    let p = &pages[0];
    let channels = if pages.len() > 1 { pages.len() } else { kept_samples(path, p)? };
    Ok(ImageInfo {
        height: p.height,
        width: p.width,
        channels,
        sample: p.sample,
        format: format!("{} {}{}", if big { "BigTIFF" } else { "TIFF" }, p.layout, if pages.len() > 1 { format!(", {} channel pages", pages.len()) } else { String::new() }),
    })
}

pub fn probe(path: &Path) -> Result<ImageInfo> {
    let (pages, big) = pages(path)?;
    info_of(path, &pages, big)
}

fn chunk_bytes(path: &Path, r: DecodingResult, chunk: u32) -> Result<Vec<u8>> {
    match r {
        DecodingResult::U8(v) => Ok(v),
        DecodingResult::U16(v) => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        _ => Err(Error::format(path, format!("chunk {chunk}"), "unsupported sample format")),
    }
}

/// Decode one row of chunks of a page into `band` (rows × width × page samples, chunky).
fn read_chunk_row(path: &Path, p: &mut Page, cr: usize, band: &mut Vec<u8>) -> Result<usize> {
    let bps = p.sample.bytes();
    let rows = (p.height - cr * p.chunk_h).min(p.chunk_h);
    let px = p.samples * bps;
    band.clear();
    band.resize(rows * p.width * px, 0);
    let per_plane = p.across * p.down;
    for plane in 0..p.planes {
        for cc in 0..p.across {
            let idx = (plane * per_plane + cr * p.across + cc) as u32;
            let (dw, dh) = p.dec.chunk_data_dimensions(idx);
            let (dw, dh) = (dw as usize, dh as usize);
            let data = p
                .dec
                .read_chunk(idx)
                .map_err(|e| Error::format(path, format!("chunk {idx} (rows {}..{})", cr * p.chunk_h, cr * p.chunk_h + rows), e.to_string()))?;
            let data = chunk_bytes(path, data, idx)?;
            let cpx = p.chunk_samples * bps;
            if data.len() < dw * dh.min(rows) * cpx {
                return Err(Error::format(path, format!("chunk {idx}"), "decoded chunk is shorter than its dimensions (truncated?)"));
            }
            let x0 = cc * p.chunk_w;
            for y in 0..dh.min(rows) {
                let src = &data[y * dw * cpx..(y + 1) * dw * cpx];
                let dst_row = &mut band[(y * p.width + x0) * px..(y * p.width + x0 + dw) * px];
                if p.planes == 1 {
                    dst_row.copy_from_slice(src);
                } else {
                    for x in 0..dw {
                        dst_row[x * px + plane * bps..x * px + (plane + 1) * bps].copy_from_slice(&src[x * bps..(x + 1) * bps]);
                    }
                }
            }
        }
    }
    Ok(rows)
}

pub fn decode(path: &Path, sink: &mut BandSink) -> Result<ImageInfo> {
    let (mut pages, big) = pages(path)?;
    let info = info_of(path, &pages, big)?;
    let bps = info.sample.bytes();
    let down = pages[0].down;
    let mut bands: Vec<Vec<u8>> = vec![Vec::new(); pages.len()];
    let mut out = Vec::new();
    for cr in 0..down {
        let mut rows = 0;
        for (p, band) in pages.iter_mut().zip(bands.iter_mut()) {
            rows = read_chunk_row(path, p, cr, band)?;
        }
        let stored = pages[0].samples;
        if pages.len() > 1 {
            // interleave single-channel pages
            out.clear();
            out.resize(rows * info.width * info.channels * bps, 0);
            for (c, band) in bands.iter().enumerate() {
                for (i, s) in band.chunks_exact(bps).enumerate() {
                    let o = (i * info.channels + c) * bps;
                    out[o..o + bps].copy_from_slice(s);
                }
            }
            sink(&out)?;
        } else if stored != info.channels {
            sink(&super::drop_alpha(&bands[0], stored, bps))?;
        } else {
            sink(&bands[0])?;
        }
    }
    Ok(info)
}
