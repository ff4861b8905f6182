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
use rayon::prelude::*;

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
        33003 | 33005 | 34712 => format!("JPEG 2000 ({code})"),
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
    /// JPEG-compressed chunks are decoded here, not by the `tiff` crate, whose colour
    /// handling of JPEG data in photometric-RGB files returns unconverted YCbCr.
    jpeg: Option<JpegChunks>,
    /// page number, for opening further decoders on other threads
    index: usize,
    /// compressed chunks are worth decoding on several threads
    compressed: bool,
}

struct JpegChunks {
    file: File,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    /// shared quantisation / Huffman tables (JPEGTables), an abbreviated JPEG stream
    tables: Option<Vec<u8>>,
    /// the page says RGB (not YCbCr)
    photometric_rgb: bool,
}

fn open_decoder(path: &Path) -> Result<Dec> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    Decoder::new(BufReader::with_capacity(1 << 20, f))
        .map(|d| d.with_limits(Limits::unlimited()))
        .map_err(|e| Error::format(path, "TIFF header", e.to_string()))
}

fn page(path: &Path, mut dec: Dec, index: usize) -> Result<Page> {
    let field = |f: &str| {
        if index == 0 {
            f.to_string()
        } else {
            format!("page {index}: {f}")
        }
    };
    let (w, h) = dec.dimensions().map_err(|e| Error::format(path, field("ImageWidth"), e.to_string()))?;
    let compression = dec.find_tag_unsigned::<u32>(Tag::Compression).ok().flatten().unwrap_or(1);
    if !SUPPORTED_COMPRESSION.contains(&compression) {
        return Err(Error::format(
            path,
            field("Compression"),
            format!(
                "{} is not supported (supported: none, LZW, Deflate, JPEG, PackBits)",
                compression_name(compression)
            ),
        ));
    }
    let color = dec.colortype().map_err(|e| Error::format(path, field("PhotometricInterpretation"), e.to_string()))?;
    let sample = match color.bit_depth() {
        8 => SampleType::U8,
        16 => SampleType::U16,
        b => {
            return Err(Error::format(
                path,
                field("BitsPerSample"),
                format!("{b}-bit samples are not supported (8 or 16)"),
            ))
        }
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
    let jpeg = if compression == 7 {
        let (otag, ctag) =
            if tiled { (Tag::TileOffsets, Tag::TileByteCounts) } else { (Tag::StripOffsets, Tag::StripByteCounts) };
        let offsets = dec
            .get_tag_u64_vec(otag)
            .map_err(|e| Error::format(path, field("TileOffsets/StripOffsets"), e.to_string()))?;
        let counts = dec
            .get_tag_u64_vec(ctag)
            .map_err(|e| Error::format(path, field("TileByteCounts/StripByteCounts"), e.to_string()))?;
        let tables = dec.get_tag_u8_vec(Tag::JPEGTables).ok();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Some(JpegChunks { file, offsets, counts, tables, photometric_rgb: matches!(color, ColorType::RGB(_)) })
    } else {
        None
    };
    Ok(Page {
        jpeg,
        index,
        compressed: compression != 1,
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
                return Err(Error::format(
                    path,
                    format!("page {k}: RowsPerStrip/TileLength"),
                    "channel pages with different chunk heights are not supported",
                ));
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
        format: format!(
            "{} {}{}",
            if big { "BigTIFF" } else { "TIFF" },
            p.layout,
            if pages.len() > 1 { format!(", {} channel pages", pages.len()) } else { String::new() }
        ),
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

/// For a page tagged RGB (see `jpeg_chunk`): true when the components hold RGB rather than
/// YCbCr — no JFIF marker, and no Adobe marker asking for the YCbCr transform.
fn jpeg_components_are_rgb(stream: &[u8]) -> bool {
    let (mut jfif, mut adobe) = (false, None);
    let mut i = 2; // after SOI
    while i + 4 <= stream.len() && stream[i] == 0xFF {
        let marker = stream[i + 1];
        if marker == 0xD8 || marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            i += 2;
            continue;
        }
        if marker == 0xD9 {
            i += 2; // EOI of a tables-only stream
            continue;
        }
        let len = u16::from_be_bytes([stream[i + 2], stream[i + 3]]) as usize;
        let payload = &stream[(i + 4).min(stream.len())..(i + 2 + len).min(stream.len())];
        match marker {
            0xE0 if payload.starts_with(b"JFIF\0") => jfif = true,
            0xEE if payload.starts_with(b"Adobe") && payload.len() > 11 => adobe = Some(payload[11]),
            0xDA => break,
            _ => {}
        }
        i += 2 + len;
    }
    if jfif {
        return false;
    }
    if let Some(t) = adobe {
        return t == 0;
    }
    true
}

/// Decode one JPEG chunk (tables spliced in front) and crop it to the chunk's data size.
fn jpeg_chunk(path: &Path, j: &JpegChunks, idx: u32, samples: usize, dw: usize, dh: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let field = || format!("chunk {idx}");
    let (off, len) = match (j.offsets.get(idx as usize), j.counts.get(idx as usize)) {
        (Some(&o), Some(&l)) => (o, l as usize),
        _ => return Err(Error::format(path, field(), "no offset / byte count for this chunk")),
    };
    let mut raw = vec![0u8; len];
    j.file
        .read_exact_at(&mut raw, off)
        .map_err(|e| Error::format(path, field(), format!("cannot read ({e}; truncated file?)")))?;
    let stream = match &j.tables {
        // tables end with EOI, the chunk starts with SOI: join without either
        Some(t) if t.len() >= 4 && raw.len() >= 2 => {
            let mut s = Vec::with_capacity(t.len() + raw.len());
            s.extend_from_slice(&t[..t.len() - 2]);
            s.extend_from_slice(&raw[2..]);
            s
        }
        _ => raw,
    };
    // Whether three components are YCbCr or already RGB is decided as tifffile (the
    // reference's reader) does: a YCbCr page converts; an RGB page holds RGB components
    // unless the stream carries a JFIF marker (then YCbCr) or an Adobe marker (its flag).
    // one decoder: read the headers, then choose the output colour space
    let mut d = zune_jpeg::JpegDecoder::new(ZCursor::new(&stream[..]));
    d.decode_headers().map_err(|e| Error::format(path, field(), format!("JPEG: {e}")))?;
    let out_cs = if samples == 1 {
        ColorSpace::Luma
    } else if j.photometric_rgb && jpeg_components_are_rgb(&stream) {
        // no conversion: the components are the RGB values
        d.input_colorspace().unwrap_or(ColorSpace::RGB)
    } else {
        ColorSpace::RGB
    };
    d.set_options(DecoderOptions::default().set_strict_mode(false).jpeg_set_out_colorspace(out_cs));
    let px = d.decode().map_err(|e| Error::format(path, field(), format!("JPEG: {e}")))?;
    let (w, h) = d.dimensions().ok_or_else(|| Error::format(path, field(), "JPEG without dimensions"))?;
    if w < dw || h < dh || px.len() < w * h * samples {
        return Err(Error::format(path, field(), format!("JPEG is {w}×{h}, chunk needs {dw}×{dh}")));
    }
    let mut out = Vec::with_capacity(dw * dh * samples);
    for y in 0..dh {
        out.extend_from_slice(&px[y * w * samples..(y * w + dw) * samples]);
    }
    Ok(out)
}

/// Decode chunk rows [cr0, cr0 + n) of a page into `band` (rows × width × page samples,
/// chunky); returns the number of image rows. JPEG chunks, which we decode ourselves, are
/// decoded in parallel.
fn read_chunk_rows(path: &Path, p: &mut Page, cr0: usize, n: usize, band: &mut Vec<u8>) -> Result<usize> {
    let bps = p.sample.bytes();
    let row0 = cr0 * p.chunk_h;
    let rows = (p.height - row0).min(n * p.chunk_h);
    let px = p.samples * bps;
    band.clear();
    band.resize(rows * p.width * px, 0);
    let per_plane = p.across * p.down;
    // (plane, chunk row, chunk column, index)
    let across = p.across;
    let mut chunks: Vec<(usize, usize, usize, u32)> = Vec::with_capacity(p.planes * n * across);
    for plane in 0..p.planes {
        for cr in cr0..cr0 + n {
            for cc in 0..across {
                chunks.push((plane, cr, cc, (plane * per_plane + cr * across + cc) as u32));
            }
        }
    }
    let dims: Vec<(usize, usize)> = chunks
        .iter()
        .map(|c| {
            let (w, h) = p.dec.chunk_data_dimensions(c.3);
            (w as usize, h as usize)
        })
        .collect();
    let decoded: Vec<Vec<u8>> = match &p.jpeg {
        Some(j) => {
            let cs = p.chunk_samples;
            chunks
                .par_iter()
                .zip(dims.par_iter())
                .map(|(c, &(dw, dh))| jpeg_chunk(path, j, c.3, cs, dw, dh))
                .collect::<Result<_>>()?
        }
        None => {
            let read = |dec: &mut Dec, c: &(usize, usize, usize, u32)| {
                let r = dec.read_chunk(c.3).map_err(|e| {
                    Error::format(path, format!("chunk {} (rows {}..)", c.3, c.1 * p.chunk_h), e.to_string())
                })?;
                chunk_bytes(path, r, c.3)
            };
            if p.compressed && chunks.len() > 1 {
                // the decoder is stateful: one per worker, each positioned on this page
                let index = p.index;
                let open = || -> Result<Dec> {
                    let mut d = open_decoder(path)?;
                    d.seek_to_image(index).map_err(|e| Error::format(path, format!("page {index}"), e.to_string()))?;
                    Ok(d)
                };
                chunks
                    .par_iter()
                    .map_init(open, |dec, c| match dec {
                        Ok(dec) => read(dec, c),
                        Err(e) => Err(Error::Other(e.to_string())),
                    })
                    .collect::<Result<_>>()?
            } else {
                chunks.iter().map(|c| read(&mut p.dec, c)).collect::<Result<_>>()?
            }
        }
    };
    let cpx = p.chunk_samples * bps;
    for ((&(plane, cr, cc, idx), &(dw, dh)), data) in chunks.iter().zip(&dims).zip(&decoded) {
        let y0 = cr * p.chunk_h - row0;
        let dh = dh.min(rows - y0);
        if data.len() < dw * dh * cpx {
            return Err(Error::format(
                path,
                format!("chunk {idx}"),
                "decoded chunk is shorter than its dimensions (truncated?)",
            ));
        }
        let x0 = cc * p.chunk_w;
        for y in 0..dh {
            let src = &data[y * dw * cpx..(y + 1) * dw * cpx];
            let o = ((y0 + y) * p.width + x0) * px;
            let dst_row = &mut band[o..o + dw * px];
            if p.planes == 1 {
                dst_row.copy_from_slice(src);
            } else {
                for x in 0..dw {
                    dst_row[x * px + plane * bps..x * px + (plane + 1) * bps]
                        .copy_from_slice(&src[x * bps..(x + 1) * bps]);
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
    // Enough chunks per step to keep every core busy on JPEG data, few rows otherwise.
    let group =
        if pages[0].jpeg.is_some() { (2 * rayon::current_num_threads()).div_ceil(pages[0].across).max(1) } else { 1 };
    for cr in (0..down).step_by(group) {
        let n = group.min(down - cr);
        let mut rows = 0;
        for (p, band) in pages.iter_mut().zip(bands.iter_mut()) {
            rows = read_chunk_rows(path, p, cr, n, band)?;
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
