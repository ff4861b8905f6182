//! Accuracy of a finished run on a generated section against its ground truth (issue 6, §8):
//! adjusted Rand index against the true domains of
//! - pixel clusters from the SpaHDmap score (the downstream stage's `clusters_pixel.npy`),
//! - pixel clusters from the VD score (the same procedure on the VD map: spot medians,
//!   Louvain, k-means on the 1/4 map from the cluster means),
//! - spot-level NMF clusters (Louvain on `NMF_score.npy`) painted onto each pixel's nearest
//!   spot;
//!
//! and the Pearson correlation of recovered pixel expression (score · metagene row) of each
//! domain's marker genes with the truth (the domain's rate at that pixel). All on the tissue
//! pixels of the 1/4 grid inside the score mask.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::npy::read_npy;
use crate::preprocess::nearest::SpotIndex;
use crate::stages::cluster::{adjusted_rand_index, cluster_means, cluster_spots, kmeans, resize_linear_with};
use crate::stages::results::{read_metagenes, ScoreMap, SectionDir};
use crate::stages::score::spot_medians;

#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub pixels: usize,
    pub ari_spahdmap_pixels: f64,
    pub ari_vd_pixels: f64,
    pub ari_nmf_spots_painted: f64,
    pub spahdmap_clusters: usize,
    pub vd_clusters: usize,
    pub nmf_clusters: usize,
    pub markers: usize,
    pub marker_correlation_mean: f64,
    pub marker_correlation_min: f64,
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Compact labels to 0..k in order of first appearance.
fn compact(l: &[usize]) -> Vec<usize> {
    let mut map = std::collections::HashMap::new();
    l.iter()
        .map(|&v| {
            let n = map.len();
            *map.entry(v).or_insert(n)
        })
        .collect()
}

pub fn evaluate(results: &Path, truth: &Path, section: &str) -> Result<Accuracy> {
    let sd = SectionDir::open(results, section)?;
    let m = &sd.meta;
    let (h, w, rank) = (m.height, m.width, m.rank);
    let (ts, domains) = read_npy::<u8>(&truth.join("domains.npy"))?;
    let (th, tw) = (ts[0] as usize, ts[1] as usize);
    let (ps, pixel_labels) = read_npy::<i32>(&sd.path("clusters_pixel.npy"))?;
    let (oh, ow) = (ps[0] as usize, ps[1] as usize);
    // the evaluated pixels: tissue in the truth, inside the score mask
    let mut idx = Vec::new();
    let mut truth_l = Vec::new();
    let mut crop_px = Vec::new();
    for yo in 0..oh {
        let cy = (((yo as f64 + 0.5) * h as f64 / oh as f64) as usize).min(h - 1);
        for xo in 0..ow {
            let i = yo * ow + xo;
            if pixel_labels[i] < 0 {
                continue;
            }
            let cx = (((xo as f64 + 0.5) * w as f64 / ow as f64) as usize).min(w - 1);
            let (y0, x0) =
                (((cy + m.row0) as f64 * m.scale_rate) as usize, ((cx + m.col0) as f64 * m.scale_rate) as usize);
            if y0 >= th || x0 >= tw || domains[y0 * tw + x0] == 0 {
                continue;
            }
            idx.push(i);
            truth_l.push(domains[y0 * tw + x0] as usize);
            crop_px.push([cy as f64, cx as f64]);
        }
    }
    if idx.is_empty() {
        return Err(Error::setting("truth", "no tissue pixel of the truth falls inside the score mask"));
    }
    let hd: Vec<usize> = idx.iter().map(|&i| pixel_labels[i] as usize).collect();
    let (spots, n) = sd.all_spots()?;
    let crop: Vec<[f64; 2]> = spots[..n].iter().map(|q| [q[0] - m.row0 as f64, q[1] - m.col0 as f64]).collect();

    // VD: the downstream procedure on the VD map
    let vd_map = ScoreMap::open(&sd.path("VD_score.npy"), rank, h, w)?;
    let vd_spot = spot_medians(&vd_map, &crop, m.radius as f64);
    let vd_spot_l = cluster_spots(&vd_spot, n, rank, 50, 0.8);
    let (_, init) = cluster_means(&vd_spot, rank, &vd_spot_l);
    let planes: Vec<Vec<f32>> =
        (0..rank).map(|k| resize_linear_with(|y, x| vd_map.get(k, y, x), h, w, oh, ow)).collect();
    // k-means on every masked pixel (as downstream does), evaluated on the truth's tissue
    let masked: Vec<usize> = (0..oh * ow).filter(|&i| pixel_labels[i] >= 0).collect();
    let feats: Vec<f64> = masked.iter().flat_map(|&i| planes.iter().map(move |p| p[i] as f64)).collect();
    let vd_all = kmeans(&feats, rank, &init, 500);
    let mut vd_px = vec![usize::MAX; oh * ow];
    for (&i, &l) in masked.iter().zip(&vd_all) {
        vd_px[i] = l;
    }
    let vd: Vec<usize> = idx.iter().map(|&i| vd_px[i]).collect();

    // NMF spot clusters on each pixel's nearest spot
    let (ns, nmf) = read_npy::<f32>(&sd.path("NMF_score.npy"))?;
    let nmf: Vec<f64> = nmf.iter().map(|&v| v as f64).collect();
    let nmf_l = cluster_spots(&nmf, ns[0] as usize, ns[1] as usize, 50, 0.8);
    let index = SpotIndex::new(&crop);
    let mut near = Vec::new();
    let nmf_px: Vec<usize> = crop_px
        .iter()
        .map(|&p| {
            index.nearest_k(p, 1, &mut near);
            nmf_l[near[0].1 as usize]
        })
        .collect();

    // marker genes: recovered expression vs the domain's rate
    let (genes, metagene, _) = read_metagenes(&results.join("metagene.csv"))?;
    let programs = std::fs::read_to_string(truth.join("programs.csv")).map_err(|e| Error::io(truth, e))?;
    let score = ScoreMap::open(&sd.path("SpaHDmap_score.npy"), rank, h, w)?;
    let px_scores: Vec<Vec<f64>> = crop_px
        .iter()
        .map(|p| (0..rank).map(|k| score.get(k, p[0] as usize, p[1] as usize) as f64).collect())
        .collect();
    let mut cors = Vec::new();
    for line in programs.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 || !f[1].starts_with("marker") {
            continue;
        }
        let Some(g) = genes.iter().position(|x| x == f[0]) else { continue };
        let rates: Vec<f64> = f[2..].iter().map(|v| v.parse().unwrap_or(0.0)).collect();
        let truth_v: Vec<f64> = truth_l.iter().map(|&d| rates.get(d - 1).copied().unwrap_or(0.0)).collect();
        let rec: Vec<f64> =
            px_scores.iter().map(|s| s.iter().enumerate().map(|(k, v)| v * metagene[g * rank + k]).sum()).collect();
        cors.push(pearson(&rec, &truth_v));
    }
    let count = |l: &[usize]| {
        let mut v = l.to_vec();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    Ok(Accuracy {
        pixels: idx.len(),
        ari_spahdmap_pixels: adjusted_rand_index(&compact(&hd), &compact(&truth_l)),
        ari_vd_pixels: adjusted_rand_index(&compact(&vd), &compact(&truth_l)),
        ari_nmf_spots_painted: adjusted_rand_index(&compact(&nmf_px), &compact(&truth_l)),
        spahdmap_clusters: count(&hd),
        vd_clusters: count(&vd),
        nmf_clusters: count(&nmf_px),
        markers: cors.len(),
        marker_correlation_mean: if cors.is_empty() { f64::NAN } else { cors.iter().sum::<f64>() / cors.len() as f64 },
        marker_correlation_min: cors.iter().copied().fold(f64::INFINITY, f64::min),
    })
}
