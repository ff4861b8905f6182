//! Score maps as pyramidal OME-TIFF (SPEC §12: `SECTION/SpaHDmap_score.ome.tif`), the layout
//! napari (via tifffile) and QuPath (via Bio-Formats) open: BigTIFF, one page per component
//! (8-bit, score × 255), 256 × 256 deflate tiles, each page with its 2×-reduced levels as
//! SubIFDs down to one tile, OME-XML in the first page's ImageDescription. Tiles are computed
//! from the memory-mapped map a tile row at a time (reduced levels as block means of the full
//! map), so nothing holds a whole plane.

use std::io::Write as _;
use std::path::Path;

use rayon::prelude::*;
use tiff::encoder::{Ifd8, TiffEncoder};
use tiff::tags::Tag;

use crate::error::{Error, Result};
use crate::util::write_atomically;

const TILE: usize = 256;

fn err(path: &Path) -> impl Fn(tiff::TiffError) -> Error + '_ {
    move |e| Error::format(path, "OME-TIFF", e.to_string())
}

/// Sizes of the pyramid: full size, then halved (rounded up) until it fits one tile.
fn levels(h: usize, w: usize) -> Vec<(usize, usize)> {
    let mut v = vec![(h, w)];
    while v.len() < 12 {
        let (ph, pw) = *v.last().unwrap();
        if ph <= TILE && pw <= TILE {
            break;
        }
        v.push((ph.div_ceil(2), pw.div_ceil(2)));
    }
    v
}

fn ome_xml(h: usize, w: usize, names: &[String]) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('"', "&quot;");
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
xsi:schemaLocation=\"http://www.openmicroscopy.org/Schemas/OME/2016-06 \
http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd\" Creator=\"spahdmap\">",
    );
    x.push_str(&format!(
        "<Image ID=\"Image:0\" Name=\"SpaHDmap score\"><Pixels ID=\"Pixels:0\" DimensionOrder=\"XYZCT\" \
Type=\"uint8\" SizeX=\"{w}\" SizeY=\"{h}\" SizeZ=\"1\" SizeC=\"{}\" SizeT=\"1\" BigEndian=\"false\" \
Interleaved=\"false\">",
        names.len()
    ));
    for (k, n) in names.iter().enumerate() {
        x.push_str(&format!("<Channel ID=\"Channel:0:{k}\" Name=\"{}\" SamplesPerPixel=\"1\"/>", esc(n)));
    }
    x.push_str(&format!("<TiffData IFD=\"0\" PlaneCount=\"{}\"/></Pixels></Image></OME>", names.len()));
    x
}

/// One compressed tile row of `plane` at `level` (factor 2^level): the tiles' deflate streams.
fn tile_row(
    get: &(impl Fn(usize, usize) -> f32 + Sync),
    h: usize,
    w: usize,
    f: usize,
    ty: usize,
    tiles_x: usize,
) -> Vec<Vec<u8>> {
    (0..tiles_x)
        .into_par_iter()
        .map(|tx| {
            let mut px = vec![0u8; TILE * TILE];
            for y in 0..TILE {
                let ly = ty * TILE + y;
                let (y0, y1) = (ly * f, ((ly + 1) * f).min(h));
                if y0 >= h {
                    break;
                }
                for x in 0..TILE {
                    let lx = tx * TILE + x;
                    let (x0, x1) = (lx * f, ((lx + 1) * f).min(w));
                    if x0 >= w {
                        break;
                    }
                    let mut s = 0f64;
                    for yy in y0..y1 {
                        for xx in x0..x1 {
                            s += get(yy, xx) as f64;
                        }
                    }
                    let v = s / ((y1 - y0) * (x1 - x0)) as f64;
                    px[y * TILE + x] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(&px).expect("in memory");
            e.finish().expect("in memory")
        })
        .collect()
}

/// Write `rank` planes of `h` × `w` values in [0, 1], read through `get(k, y, x)`.
pub fn write_ome_tiff(
    path: &Path,
    h: usize,
    w: usize,
    names: &[String],
    get: impl Fn(usize, usize, usize) -> f32 + Sync,
) -> Result<()> {
    let lv = levels(h, w);
    write_atomically(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut enc = TiffEncoder::new_big(std::io::BufWriter::with_capacity(1 << 20, file)).map_err(err(tmp))?;
        for k in 0..names.len() {
            let plane = |y: usize, x: usize| get(k, y, x);
            // reduced levels first: their IFDs are referenced by the full-resolution page
            let mut subs = Vec::new();
            for (l, &(lh, lw)) in lv.iter().enumerate().skip(1) {
                let mut dir = enc.extra_directory().map_err(err(tmp))?;
                let (offsets, counts) = write_level(&mut |d: &[u8]| dir.write_data(d), &plane, h, w, 1 << l, lh, lw)?;
                put_tags(&mut dir, lh, lw, &offsets, &counts, 1).map_err(err(tmp))?;
                subs.push(Ifd8(dir.finish_with_offsets().map_err(err(tmp))?.pointer.0));
            }
            let mut dir = enc.image_directory().map_err(err(tmp))?;
            let (offsets, counts) = write_level(&mut |d: &[u8]| dir.write_data(d), &plane, h, w, 1, h, w)?;
            put_tags(&mut dir, h, w, &offsets, &counts, 0).map_err(err(tmp))?;
            if !subs.is_empty() {
                dir.write_tag(Tag::SubIfd, &subs[..]).map_err(err(tmp))?;
            }
            if k == 0 {
                dir.write_tag(Tag::ImageDescription, ome_xml(h, w, names).as_str()).map_err(err(tmp))?;
            }
            dir.finish().map_err(err(tmp))?;
        }
        drop(enc);
        Ok(())
    })
}

type Offsets = (Vec<u64>, Vec<u64>);

fn write_level(
    write: &mut impl FnMut(&[u8]) -> tiff::TiffResult<u64>,
    plane: &(impl Fn(usize, usize) -> f32 + Sync),
    h: usize,
    w: usize,
    f: usize,
    lh: usize,
    lw: usize,
) -> Result<Offsets> {
    let (ty_n, tx_n) = (lh.div_ceil(TILE), lw.div_ceil(TILE));
    let (mut offsets, mut counts) = (Vec::new(), Vec::new());
    for ty in 0..ty_n {
        for t in tile_row(plane, h, w, f, ty, tx_n) {
            let at = write(&t).map_err(|e| Error::Other(format!("OME-TIFF: {e}")))?;
            offsets.push(at);
            counts.push(t.len() as u64);
        }
    }
    Ok((offsets, counts))
}

fn put_tags<W: std::io::Write + std::io::Seek, K: tiff::encoder::TiffKind>(
    dir: &mut tiff::encoder::DirectoryEncoder<'_, W, K>,
    h: usize,
    w: usize,
    offsets: &[u64],
    counts: &[u64],
    subfile: u32,
) -> tiff::TiffResult<()> {
    dir.write_tag(Tag::NewSubfileType, subfile)?;
    dir.write_tag(Tag::ImageWidth, w as u32)?;
    dir.write_tag(Tag::ImageLength, h as u32)?;
    dir.write_tag(Tag::BitsPerSample, 8u16)?;
    dir.write_tag(Tag::Compression, 8u16)?; // deflate (zlib)
    dir.write_tag(Tag::PhotometricInterpretation, 1u16)?; // black is zero
    dir.write_tag(Tag::SamplesPerPixel, 1u16)?;
    dir.write_tag(Tag::PlanarConfiguration, 1u16)?;
    dir.write_tag(Tag::TileWidth, TILE as u32)?;
    dir.write_tag(Tag::TileLength, TILE as u32)?;
    dir.write_tag(Tag::TileOffsets, offsets)?;
    dir.write_tag(Tag::TileByteCounts, counts)?;
    dir.write_tag(Tag::SampleFormat, 1u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_levels_halve_to_one_tile() {
        assert_eq!(levels(1000, 600), vec![(1000, 600), (500, 300), (250, 150)]);
        assert_eq!(levels(100, 100), vec![(100, 100)]);
    }

    #[test]
    fn pages_read_back_with_the_tiff_decoder() {
        let (h, w) = (300usize, 520usize);
        let val = |k: usize, y: usize, x: usize| ((y * 3 + x * 7 + k * 50) % 256) as f32 / 255.0;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.ome.tif");
        write_ome_tiff(&p, h, w, &["Embedding_1".into(), "Embedding_2".into()], val).unwrap();
        let mut d = tiff::decoder::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap())).unwrap();
        let desc = d.get_tag_ascii_string(Tag::ImageDescription).unwrap();
        assert!(desc.contains("SizeC=\"2\"") && desc.contains("Embedding_2"));
        for k in 0..2 {
            assert_eq!(d.dimensions().unwrap(), (w as u32, h as u32));
            let tiff::decoder::DecodingResult::U8(px) = d.read_image().unwrap() else { panic!("u8 expected") };
            for (i, &v) in px.iter().enumerate().step_by(97) {
                assert_eq!(v, (val(k, i / w, i % w) * 255.0).round() as u8, "page {k} pixel {i}");
            }
            if k == 0 {
                let subs = d.get_tag_u64_vec(Tag::SubIfd).unwrap();
                assert_eq!(subs.len(), 2, "levels 1/2 and 1/4");
                d.next_image().unwrap();
            }
        }
        assert!(!d.more_images());
    }
}
