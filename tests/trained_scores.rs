//! Does the trained model say something sensible? On a generated section with known domains,
//! a short (quick-preset) run through `score` must keep what the Voronoi prior already knows:
//! nearest-centroid classification of pixels by their score vector (centroids from the true
//! domains) must be nearly as accurate with the SpaHDmap score as with the VD score. An
//! untrained network falls far behind: on this section VD 0.961, after 2 iterations 0.583,
//! after 60 0.857, after 150 batches of 4 tiles (this test) 0.913 (150 single-tile steps: 0.837).
mod common;

use std::path::Path;

use common::{bin, read_npy, run, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_f16(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize + 10;
    b[hl..].chunks(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
}

/// Accuracy of assigning each tissue pixel to the domain whose mean score vector is nearest.
fn nearest_centroid_accuracy(map: &[f32], rank: usize, labels: &[u8], mask: &[bool]) -> f64 {
    let px = labels.len();
    let k = *labels.iter().max().unwrap() as usize + 1;
    let (mut cent, mut n) = (vec![0f64; k * rank], vec![0usize; k]);
    for i in (0..px).filter(|&i| mask[i]) {
        let l = labels[i] as usize;
        n[l] += 1;
        for c in 0..rank {
            cent[l * rank + c] += map[c * px + i] as f64;
        }
    }
    for l in 0..k {
        for c in 0..rank {
            cent[l * rank + c] /= n[l].max(1) as f64;
        }
    }
    let (mut right, mut total) = (0usize, 0usize);
    for i in (0..px).filter(|&i| mask[i]) {
        let best = (0..k)
            .filter(|&l| n[l] > 0)
            .min_by(|&a, &b| {
                let d =
                    |l: usize| (0..rank).map(|c| (map[c * px + i] as f64 - cent[l * rank + c]).powi(2)).sum::<f64>();
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        right += (best == labels[i] as usize) as usize;
        total += 1;
    }
    right as f64 / total as f64
}

#[test]
fn a_short_training_run_keeps_the_domain_structure_of_the_prior() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let sec = d.path().join("sec");
    let o = run(
        &["simulate", "--out", s(&sec), "--height", "1600", "--width", "1600", "--radius", "16", "--seed", "5"],
        &cache,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("out");
    let mut c = bin();
    c.args(["run", "--visium", s(&sec), "--out", s(&out), "--scale-rate", "2", "--rank", "6", "--n-top-genes", "100"]);
    c.args(["--preset", "quick", "--split-size", "64", "--train-iterations", "150", "--fix-iterations", "30"]);
    c.args(["--batch-size", "4"]);
    // scripts/gpu-check runs this test again with SPAHDMAP_TEST_DEVICE=cuda (TF32 tensor cores)
    let device = std::env::var("SPAHDMAP_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    c.args(["--device", &device]);
    c.env("SPAHDMAP_CACHE_DIR", &cache);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // the stage table (times, memory) for the record
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(14)..].join("\n"));
    // pre-training scales its loss exactly where the convolutions take f16 operands
    // (SPAHDMAP_GPU_CONV=f16w on a GPU) or it keeps f16 activations (the default; SPAHDMAP_GPU_HALF=0 or 1 turns that off);
    // no scaler on the CPU or with TF32 on f32 storage
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let pretrain = run_json["stages"].as_array().unwrap().iter().find(|r| r["stage"] == "pretrain").unwrap();
    let half = device.starts_with("cuda")
        && (std::env::var("SPAHDMAP_GPU_CONV").is_ok_and(|v| v == "f16w")
            || spahdmap::backend::cuda::half_from_env().1);
    let scaler = &pretrain["detail"]["loss_scaler"];
    eprintln!("pretrain loss scaler: {scaler}");
    assert_eq!(!scaler.is_null(), half, "{scaler}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("section/meta.json")).unwrap()).unwrap();
    let g = |k: &str| meta[k].as_u64().unwrap() as usize;
    let (h, w, row0, col0, rank) = (g("height"), g("width"), g("row0"), g("col0"), g("rank"));
    // truth at full resolution; the crop is at 1/2: pixel (y, x) ↔ (2(y + row0), 2(x + col0))
    let (ts, truth) = read_npy::<u8>(&sec.join("truth/domains.npy"));
    let tw = ts[1] as usize;
    let labels: Vec<u8> = (0..h * w)
        .map(|i| {
            let (y, x) = (2 * (i / w + row0), 2 * (i % w + col0));
            truth.get(y * tw + x).copied().unwrap_or(0)
        })
        .collect();
    let (_, m) = read_npy::<bool>(&out.join("section/mask.npy"));
    let mask: Vec<bool> = m.iter().zip(&labels).map(|(&m, &l)| m && l > 0).collect();
    let vd = nearest_centroid_accuracy(&read_f16(&out.join("section/VD_score.npy")), rank, &labels, &mask);
    let hd = nearest_centroid_accuracy(&read_f16(&out.join("section/SpaHDmap_score.npy")), rank, &labels, &mask);
    eprintln!("nearest-centroid accuracy: VD {vd:.3}, SpaHDmap {hd:.3}");
    assert!(vd > 0.6, "the prior itself should separate the domains ({vd})");
    assert!(hd >= 0.9 * vd, "SpaHDmap {hd} vs VD {vd}");
}
