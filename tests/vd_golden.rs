//! The Voronoi score against the package's own smoothing (tests/fixtures/vd, tools/make_vd_fixtures.py).
mod common;

use common::{fixture, read_npy};
use spahdmap::preprocess::morphology::Mask;
use spahdmap::preprocess::nearest::SpotIndex;
use spahdmap::stages::voronoi::vd_score;

#[test]
fn nearest_fill_and_smoothing_match_the_reference() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("preprocess/reference.json")).unwrap()).unwrap();
    let (ms, mask) = read_npy::<u8>(&fixture("preprocess/mask.npy"));
    let mask = Mask::from_bytes(ms[0] as usize, ms[1] as usize, &mask);
    let (_, spots) = read_npy::<f64>(&fixture("preprocess/spot_coord.npy"));
    let spots: Vec<[f64; 2]> = spots.chunks(2).map(|p| [p[0], p[1]]).collect();
    let rr = [r["row_range"][0].as_u64().unwrap() as usize, r["row_range"][1].as_u64().unwrap() as usize];
    let cr = [r["col_range"][0].as_u64().unwrap() as usize, r["col_range"][1].as_u64().unwrap() as usize];

    // nearest-spot map: same distances as scipy's KD-tree everywhere
    let ours = SpotIndex::new(&spots).nearest_map(rr[0], rr[1], cr[0], cr[1]);
    let (_, theirs) = read_npy::<i32>(&fixture("vd/nearest.npy"));
    let w = cr[1] - cr[0];
    let mut ties = 0;
    for (k, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
        if a as i32 != b {
            let (y, x) = ((rr[0] + k / w) as f64, (cr[0] + k % w) as f64);
            let d = |s: usize| (spots[s][0] - y).powi(2) + (spots[s][1] - x).powi(2);
            assert!((d(a as usize) - d(b as usize)).abs() < 1e-9, "pixel {k}: {a} vs {b}");
            ties += 1;
        }
    }
    eprintln!("nearest-spot map: {} pixels, {ties} equidistant ties resolved differently", ours.len());

    // VD score from the reference's own nearest map, so only the smoothing is compared
    let (_, scores) = read_npy::<f32>(&fixture("vd/scores.npy"));
    let nearest: Vec<u32> = theirs.iter().map(|&v| v as u32).collect();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("vd/reference.json")).unwrap()).unwrap();
    let k = cfg["kernel_size"].as_u64().unwrap() as usize;
    let got = vd_score(&scores, 3, &nearest, &mask, k, 0.01);
    let (shape, bits) = read_npy::<u16>(&fixture("vd/vd_f16_bits.npy"));
    let want: Vec<f32> = bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
    let plane = (shape[1] * shape[2]) as usize;
    let mut worst = 0f32;
    for t in 0..3 {
        for i in 0..plane {
            worst = worst.max((got[t][i] - want[t * plane + i]).abs());
        }
    }
    eprintln!("VD score max abs difference {worst:e}");
    // one half-precision step at 1.0 is 4.9e-4
    assert!(worst <= 1e-3, "{worst}");
}
