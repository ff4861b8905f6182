//! Image decode throughput (MB/s of pixels) on generated TIFFs, median of 5 runs.
//! `cargo bench --bench decode`; for real files use `spahdmap bench decode FILE`.

use std::time::Instant;

use spahdmap::io::image::decode_bands;
use tiff::encoder::compression::DeflateLevel;
use tiff::encoder::{colortype, Compression, TiffEncoder};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = (3000usize, 3000usize);
    let img: Vec<u8> =
        (0..h * w * 3).map(|i| ((i / 3 % w) as u32 * 255 / w as u32) as u8 ^ ((i * 31) % 17) as u8).collect();
    for (name, comp) in [
        ("none", Compression::Uncompressed),
        ("lzw", Compression::Lzw),
        ("deflate", Compression::Deflate(DeflateLevel::Fast)),
    ] {
        let p = dir.path().join(format!("{name}.tif"));
        TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(comp)
            .write_image::<colortype::RGB8>(w as u32, h as u32, &img)
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mut n = 0usize;
            decode_bands(&p, &mut |b| {
                n += b.len();
                Ok(())
            })
            .unwrap();
            assert_eq!(n, img.len());
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let m = times[2];
        println!("decode {name:8} {h}x{w} RGB: median {:.3} s, {:.0} MB/s", m, img.len() as f64 / 1e6 / m);
    }
}
