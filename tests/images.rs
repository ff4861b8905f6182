//! Image decoding into the cache: every layout, compression and depth against known pixels.
mod common;

use std::path::Path;

use common::{fixture, read_npy, shared};
use spahdmap::io::image::{decode_bands, probe, ImageCache, SampleType};
use tiff::encoder::compression::DeflateLevel;
use tiff::encoder::{colortype, Compression, TiffEncoder};

fn decode_all(p: &Path) -> (spahdmap::io::image::ImageInfo, Vec<u8>) {
    let mut buf = Vec::new();
    let info = decode_bands(p, &mut |b| {
        buf.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(buf.len() as u64, info.total_bytes());
    (info, buf)
}

fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn lossless_tiff_layouts_are_exact() {
    let (_, want) = read_npy::<u8>(&fixture("readers/rgb.npy"));
    for f in ["tiled_lzw.tif", "planar_deflate.tif", "big_packbits.tif"] {
        let (info, got) = decode_all(&fixture(&format!("readers/{f}")));
        assert_eq!((info.height, info.width, info.channels), (70, 90, 3), "{f}");
        assert_eq!(got, want, "{f}");
    }
    assert!(probe(&fixture("readers/big_packbits.tif")).unwrap().format.starts_with("BigTIFF"));
}

#[test]
fn jpeg_tiled_tiff_rgb_and_ycbcr() {
    for f in ["tiled_jpeg", "tiled_jpeg_ycbcr"] {
        let (_, want) = read_npy::<u8>(&fixture(&format!("readers/{f}.npy")));
        let (info, got) = decode_all(&fixture(&format!("readers/{f}.tif")));
        assert_eq!(info.channels, 3);
        // different JPEG decoders round the IDCT / upsampling differently
        assert!(max_abs_diff(&got, &want) <= 6, "{f}: {}", max_abs_diff(&got, &want));
    }
}

#[test]
fn immunofluorescence_page_stack_16_bit() {
    let (shape, want) = read_npy::<u16>(&fixture("readers/fluo.npy"));
    let (info, got) = decode_all(&fixture("readers/if_pages_u16.tif"));
    assert_eq!((info.height as u64, info.width as u64, info.channels as u64), (shape[0], shape[1], shape[2]));
    assert_eq!(info.sample, SampleType::U16);
    let got: Vec<u16> = got.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(got, want);
}

fn pattern(h: usize, w: usize, c: usize) -> Vec<u8> {
    (0..h * w * c).map(|i| ((i * 7919) % 251) as u8 ^ ((i / (w * c)) as u8)).collect()
}

#[test]
fn tiff_written_with_each_compression_and_depth() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = (37, 53);
    let rgb = pattern(h, w, 3);
    let gray16: Vec<u16> = (0..h * w).map(|i| (i * 977 % 65521) as u16).collect();
    for (name, comp) in [
        ("none", Compression::Uncompressed),
        ("lzw", Compression::Lzw),
        ("deflate", Compression::Deflate(DeflateLevel::Balanced)),
        ("packbits", Compression::Packbits),
    ] {
        let p = dir.path().join(format!("{name}.tif"));
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap()).unwrap().with_compression(comp);
        e.write_image::<colortype::RGB8>(w as u32, h as u32, &rgb).unwrap();
        let (info, got) = decode_all(&p);
        assert_eq!((info.height, info.width, info.channels), (h, w, 3));
        assert_eq!(got, rgb, "{name}");
        let p16 = dir.path().join(format!("{name}16.tif"));
        let mut e = TiffEncoder::new_big(std::fs::File::create(&p16).unwrap()).unwrap().with_compression(comp);
        e.write_image::<colortype::Gray16>(w as u32, h as u32, &gray16).unwrap();
        let (info, got) = decode_all(&p16);
        assert_eq!((info.channels, info.sample), (1, SampleType::U16));
        let got: Vec<u16> = got.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(got, gray16, "{name} 16-bit");
    }
    // RGBA: alpha dropped
    let p = dir.path().join("rgba.tif");
    let rgba = pattern(h, w, 4);
    TiffEncoder::new(std::fs::File::create(&p).unwrap())
        .unwrap()
        .write_image::<colortype::RGBA8>(w as u32, h as u32, &rgba)
        .unwrap();
    let (info, got) = decode_all(&p);
    assert_eq!(info.channels, 3);
    let want: Vec<u8> = rgba.chunks_exact(4).flat_map(|px| [px[0], px[1], px[2]]).collect();
    assert_eq!(got, want);
}

#[test]
fn png_16_bit_and_rgba() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = (21, 34);
    let p = dir.path().join("a.png");
    let data: Vec<u8> = pattern(h, w, 8);
    let mut e = png::Encoder::new(std::fs::File::create(&p).unwrap(), w as u32, h as u32);
    e.set_color(png::ColorType::Rgba);
    e.set_depth(png::BitDepth::Sixteen);
    let mut wr = e.write_header().unwrap();
    wr.write_image_data(&data).unwrap();
    wr.finish().unwrap();
    let (info, got) = decode_all(&p);
    assert_eq!((info.channels, info.sample), (3, SampleType::U16));
    // big-endian RGBA16 → little-endian RGB16
    let want: Vec<u8> = data.chunks_exact(8).flat_map(|px| [px[1], px[0], px[3], px[2], px[5], px[4]]).collect();
    assert_eq!(got, want);
}

#[test]
fn svs_first_page_and_her2st_jpeg() {
    if let Some(svs) = shared("wsi/cmu_small_region.svs") {
        let info = probe(&svs).unwrap();
        assert_eq!((info.height, info.width, info.channels), (2967, 2220, 3));
        assert!(info.format.contains("tiled 240x240 JPEG"), "{}", info.format);
        let (_, px) = decode_all(&svs);
        let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64;
        assert!(mean > 100.0 && mean < 250.0, "mean {mean}");
    }
    if let Some(jpg) = shared("visium_mouse_brain_crop/test_img.jpg") {
        let info = probe(&jpg).unwrap();
        assert_eq!((info.height, info.width, info.channels), (1717, 950, 3));
    }
}

#[test]
fn cache_is_reused_until_the_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("img.tif");
    let cache = dir.path().join("cache");
    std::fs::copy(fixture("readers/tiled_lzw.tif"), &src).unwrap();
    let a = ImageCache::open(&src, &cache).unwrap();
    assert!(a.built);
    let (_, want) = read_npy::<u8>(&fixture("readers/rgb.npy"));
    assert_eq!(a.bytes(), &want[..]);
    let region = a.region_f32(-1, 88, 2, 3);
    assert_eq!(region[0], 0.0); // outside
    assert_eq!(region[3 * 3], want[88 * 3] as f32); // row 0, col 88, channel 0
    let b = ImageCache::open(&src, &cache).unwrap();
    assert!(!b.built, "unchanged source must reuse the cache");
    // a different image at the same path (size and mtime change) is decoded again
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(fixture("readers/big_packbits.tif"), &src).unwrap();
    let c = ImageCache::open(&src, &cache).unwrap();
    assert!(c.built);
    assert_eq!(c.bytes(), &want[..]);
    // no partial files left behind
    assert!(std::fs::read_dir(&cache).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")));
}

#[test]
fn aperio_svs_rgb_jpeg_tiles_are_not_colour_converted() {
    let Some(svs) = shared("wsi/cmu_small_region.svs") else { return };
    let (shape, want) = read_npy::<u8>(&fixture("readers/svs_corner.npy")); // tifffile's decode
    let (info, got) = decode_all(&svs);
    let (h, w) = (shape[0] as usize, shape[1] as usize);
    let mut worst = 0u8;
    for y in 0..h {
        for x in 0..w * 3 {
            worst = worst.max(got[y * info.width * 3 + x].abs_diff(want[y * w * 3 + x]));
        }
    }
    assert!(worst <= 2, "max difference {worst} from tifffile");
}

#[test]
fn baseline_jpeg_matches_pillow() {
    let Some(jpg) = shared("visium_mouse_brain_crop/test_img.jpg") else { return };
    let (shape, want) = read_npy::<u8>(&fixture("readers/jpg_corner.npy")); // Pillow's decode
    let (info, got) = decode_all(&jpg);
    let (h, w) = (shape[0] as usize, shape[1] as usize);
    let (mut worst, mut sum) = (0u8, 0f64);
    for y in 0..h {
        for x in 0..w * 3 {
            let d = got[y * info.width * 3 + x].abs_diff(want[y * w * 3 + x]);
            worst = worst.max(d);
            sum += d as f64;
        }
    }
    let mean = sum / (h * w * 3) as f64;
    // IDCT and chroma upsampling round differently between decoders
    assert!(worst <= 8 && mean < 1.0, "max {worst}, mean {mean}");
}
