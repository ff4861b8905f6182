//! Downstream clustering against the published package's `cluster_score` (scikit-learn's
//! kNN graph, scikit-network's Louvain, OpenCV resizes, scikit-learn's KMeans), run by
//! tools/make_cluster_fixtures.py on generated spot scores and a 6 × 90 × 110 score map.
mod common;

use common::{fixture, read_npy};
use spahdmap::stages::cluster::{adjusted_rand_index, cluster_spots, kmeans, knn, louvain, resize_linear};

fn spot_scores() -> (Vec<f64>, usize, usize) {
    let (s, v) = read_npy::<f64>(&fixture("cluster/spot_scores.npy"));
    (v, s[0] as usize, s[1] as usize)
}

#[test]
fn louvain_and_the_neighbour_majority_match_the_reference() {
    let (x, n, d) = spot_scores();
    let g = knn(&x, n, d, 50);
    let got = louvain(&g, 0.8);
    let want: Vec<usize> =
        read_npy::<i64>(&fixture("cluster/louvain_labels.npy")).1.iter().map(|&v| v as usize).collect();
    let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    eprintln!("Louvain: {same} of {n} labels equal, ARI {}", adjusted_rand_index(&got, &want));
    assert_eq!(got, want);
    let spot = cluster_spots(&x, n, d, 50, 0.8);
    let want: Vec<usize> = read_npy::<i64>(&fixture("cluster/spot_labels.npy")).1.iter().map(|&v| v as usize).collect();
    assert_eq!(spot, want);
}

#[test]
fn pixel_extension_matches_the_reference() {
    let (ss, score) = read_npy::<f32>(&fixture("cluster/score_f32.npy"));
    let (r, h, w) = (ss[0] as usize, ss[1] as usize, ss[2] as usize);
    let (oh, ow) = (h / 4, w / 4);
    let (_, want_shrunk) = read_npy::<f32>(&fixture("cluster/shrunk.npy"));
    let mut shrunk = Vec::new();
    for k in 0..r {
        shrunk.extend(resize_linear(&score[k * h * w..(k + 1) * h * w], h, w, oh, ow));
    }
    let err = shrunk.iter().zip(&want_shrunk).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-6, "shrunk score differs by {err}");
    let (_, mask) = read_npy::<bool>(&fixture("cluster/mask.npy"));
    let mf: Vec<f32> = mask.iter().map(|&b| b as u8 as f32).collect();
    let small: Vec<bool> = resize_linear(&mf, h, w, oh, ow).iter().map(|&v| v >= 0.5).collect();
    let (_, want_small) = read_npy::<bool>(&fixture("cluster/mask_small.npy"));
    // OpenCV's 8-bit fixed-point linear resize rounds differently at the rim (we take the
    // float average ≥ 0.5): a few border pixels of the 1/4 mask differ
    let differ = small.iter().zip(&want_small).filter(|(a, b)| a != b).count();
    eprintln!("shrunk mask: {differ} of {} pixels differ", small.len());
    assert!(differ * 50 <= want_small.iter().filter(|&&v| v).count(), "{differ} mask pixels differ");
    let small = want_small;
    let (x, n, d) = spot_scores();
    let labels = cluster_spots(&x, n, d, 50, 0.8);
    let k = labels.iter().max().unwrap() + 1;
    let mut init = vec![0f64; k * d];
    for c in 0..k {
        let m: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
        for &i in &m {
            for t in 0..d {
                init[c * d + t] += x[i * d + t] / m.len() as f64;
            }
        }
    }
    let px = oh * ow;
    let mut feats = Vec::new();
    for i in (0..px).filter(|&i| small[i]) {
        feats.extend((0..r).map(|t| want_shrunk[t * px + i] as f64));
    }
    let got = kmeans(&feats, r, &init, 500);
    let (_, want) = read_npy::<i64>(&fixture("cluster/pixel_labels.npy"));
    let want: Vec<usize> = (0..px).filter(|&i| small[i]).map(|i| want[i] as usize).collect();
    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    eprintln!("pixels: {differ} of {} labels differ", got.len());
    assert_eq!(got, want);
}
