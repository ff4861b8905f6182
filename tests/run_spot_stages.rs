//! `spahdmap run --to vd` end to end on a generated section: the spot-level results, resume,
//! `--from`, reproducibility, streamed smoothing and transfer.
mod common;

use std::path::{Path, PathBuf};

use common::{read_npy, run, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn simulate(dir: &Path) -> PathBuf {
    let out = dir.join("sec");
    let a = [
        "simulate",
        "--out",
        s(&out),
        "--height",
        "1400",
        "--width",
        "1600",
        "--radius",
        "16",
        "--genes",
        "120",
        "--seed",
        "4",
    ];
    let o = run(&a, &dir.join("cache"));
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn run_to(sec: &Path, out: &Path, cache: &Path, extra: &[&str]) -> String {
    let mut a =
        vec!["run", "--visium", s(sec), "--out", s(out), "--scale-rate", "2", "--n-top-genes", "80", "--rank", "5"];
    a.extend_from_slice(&[
        "--gcn-iterations",
        "60",
        "--preset",
        "quick",
        "--pretrain-iterations",
        "1",
        "--batch-size",
        "1",
        "--train-iterations",
        "2",
        "--fix-iterations",
        "1",
    ]);
    a.extend_from_slice(extra);
    let o = run(&a, cache);
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

fn f16_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(p).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize + 10;
    let header = String::from_utf8_lossy(&b[10..hl]).to_string();
    assert!(header.contains("'<f2'"), "{header}");
    let shape: Vec<usize> = header
        .split('(')
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    (shape, b[hl..].chunks(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect())
}

#[test]
fn spot_stages_write_their_results_resume_and_reproduce() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let sec = simulate(d.path());
    let out = d.path().join("res");
    let log = run_to(&sec, &out, &cache, &[]);
    assert!(log.contains("pretrain: ") && out.join("models/pretrained.safetensors").exists(), "{log}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("section/meta.json")).unwrap()).unwrap();
    let (h, w) = (meta["height"].as_u64().unwrap() as usize, meta["width"].as_u64().unwrap() as usize);
    let (n, p) = (meta["spots"].as_u64().unwrap() as usize, meta["pseudo_spots"].as_u64().unwrap() as usize);

    let (ns, nmf) = read_npy::<f32>(&out.join("section/NMF_score.npy"));
    assert_eq!(ns, vec![n as u64, 5]);
    for t in 0..5 {
        let m = (0..n).map(|i| nmf[i * 5 + t]).fold(0f32, f32::max);
        assert!((m - 1.0).abs() < 1e-6, "NMF column {t} max {m}");
    }
    let (gs, gcn) = read_npy::<f32>(&out.join("section/GCN_score.npy"));
    assert_eq!(gs, vec![(n + p) as u64, 5]);
    assert!(gcn.iter().all(|&v| v == 0.0 || (0.1..=1.0).contains(&v)));
    assert!(gcn.iter().any(|&v| v > 0.0));
    let (vs, vd) = f16_npy(&out.join("section/VD_score.npy"));
    assert_eq!(vs, vec![5, h, w]);
    assert!(vd.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let (_, mask) = read_npy::<bool>(&out.join("section/mask.npy"));
    for t in 0..5 {
        assert!(mask.iter().zip(&vd[t * h * w..(t + 1) * h * w]).all(|(&m, &v)| m || v == 0.0), "VD outside the mask");
    }
    for f in ["metagene_NMF.csv", "metagene_GCN.csv"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.starts_with(",Embedding_1,Embedding_2"), "{f}");
        assert_eq!(text.lines().count(), 81, "{f}: 80 genes and a header");
    }
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["finished_through"], "downstream");
    assert!(out.join("models/trained.safetensors").exists() && out.join("metagene.csv").exists());

    // rerun: everything kept; --from gcn redoes gcn and what follows, with the same result
    let log = run_to(&sec, &out, &cache, &[]);
    for st in ["preprocess", "nmf", "pretrain", "gcn", "vd", "train", "score", "downstream"] {
        assert!(log.contains(&format!("{st}: finished in an earlier run")), "{log}");
    }
    let before = std::fs::read(out.join("section/VD_score.npy")).unwrap();
    let log = run_to(&sec, &out, &cache, &["--from", "gcn"]);
    assert!(log.contains("nmf: finished in an earlier run") && !log.contains("vd: finished"), "{log}");
    assert_eq!(std::fs::read(out.join("section/VD_score.npy")).unwrap(), before, "same seed, same scores");

    // a fresh folder, the same seed and thread count: identical files; smoothing through
    // scratch files gives the in-memory result
    let out2 = d.path().join("res2");
    let mut c = common::bin();
    c.args([
        "run",
        "--visium",
        s(&sec),
        "--out",
        s(&out2),
        "--scale-rate",
        "2",
        "--n-top-genes",
        "80",
        "--rank",
        "5",
        "--gcn-iterations",
        "60",
        "--preset",
        "quick",
        "--pretrain-iterations",
        "1",
        "--batch-size",
        "1",
        "--train-iterations",
        "2",
        "--fix-iterations",
        "1",
    ]);
    let o = c.env("SPAHDMAP_CACHE_DIR", &cache).env("SPAHDMAP_STREAM_ABOVE_PIXELS", "1000").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["section/NMF_score.npy", "section/GCN_score.npy", "section/VD_score.npy", "metagene_GCN.csv"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(out2.join(f)).unwrap(), "{f}");
    }
    let vdrec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join(".stages/vd.json")).unwrap()).unwrap();
    assert_eq!(vdrec["detail"]["sections"][0]["streamed"], true);
    assert!(
        std::fs::read_dir(out2.join("section")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "no scratch or partial files left"
    );

    // transfer: scores against the first run's metagenes reproduce its NMF scores' pattern
    let out3 = d.path().join("res3");
    run_to(&sec, &out3, &cache, &["--to", "nmf", "--transfer-metagenes", s(&out.join("metagene_NMF.csv"))]);
    let (_, tr) = read_npy::<f32>(&out3.join("section/NMF_score.npy"));
    let num: f64 = tr.iter().zip(&nmf).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = nmf.iter().map(|b| (*b as f64).powi(2)).sum();
    assert!((num / den).sqrt() < 0.05, "transfer differs from the factorisation: {}", (num / den).sqrt());
    assert!(!out3.join("section/GCN_score.npy").exists());
}

#[test]
fn approximate_graph_mode_runs() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let sec = simulate(d.path());
    let out = d.path().join("res");
    run_to(&sec, &out, &cache, &["--to", "gcn", "--graph", "approximate", "--no-gmm-filter"]);
    let (_, g) = read_npy::<f32>(&out.join("section/GCN_score.npy"));
    assert!(g.iter().filter(|&&v| v > 0.0).count() > g.len() / 2, "without the mixture filter most scores stay");
    assert!(!out.join("section/VD_score.npy").exists());
}
