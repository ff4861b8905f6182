//! Transfer (issue 6 §6): metagenes and trained models of one run applied to a new section —
//! the reference's `load_metagene` + loading `pretrained_model.pth` / `trained_model.pth`.
mod common;

use std::path::Path;

use common::{bin, run, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pipeline(sec: &Path, out: &Path, cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = bin();
    c.args(["run", "--visium", s(sec), "--out", s(out), "--scale-rate", "2", "--rank", "4"]);
    c.args(["--preset", "quick", "--split-size", "64", "--batch-size", "2", "--gcn-iterations", "100"]);
    c.args(["--pretrain-iterations", "3", "--train-iterations", "6", "--fix-iterations", "3"]);
    c.args(extra);
    c.env("SPAHDMAP_CACHE_DIR", cache);
    c.output().unwrap()
}

fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let b = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

#[test]
fn a_trained_model_and_its_metagenes_carry_over_to_a_new_section() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let (sa, sb) = (d.path().join("sec_a"), d.path().join("sec_b"));
    for (sec, seed) in [(&sa, "3"), (&sb, "4")] {
        let o = run(
            &[
                "simulate",
                "--out",
                s(sec),
                "--height",
                "900",
                "--width",
                "1000",
                "--radius",
                "12",
                "--genes",
                "60",
                "--seed",
                seed,
            ],
            &cache,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let o = pipeline(&sa, &a, &cache, &["--n-top-genes", "40"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let genes = a.join("section/expression/genes.txt");
    let (nmf, pre, tr) =
        (a.join("metagene_NMF.csv"), a.join("models/pretrained.safetensors"), a.join("models/trained.safetensors"));
    let extra = [
        "--gene-list",
        s(&genes),
        "--transfer-metagenes",
        s(&nmf),
        "--pretrained-model",
        s(&pre),
        "--trained-model",
        s(&tr),
    ];
    let o = pipeline(&sb, &b, &cache, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("pretrain: network taken from") && log.contains("train: joint network"), "{log}");
    assert_eq!(tensors(&a.join("models/trained.safetensors")), tensors(&b.join("models/trained.safetensors")));
    assert_eq!(tensors(&a.join("models/pretrained.safetensors")), tensors(&b.join("models/pretrained.safetensors")));
    for f in ["metagene.csv", "metagene_NMF.csv"] {
        assert_eq!(std::fs::read_to_string(a.join(f)).unwrap(), std::fs::read_to_string(b.join(f)).unwrap(), "{f}");
    }
    // the new section is scored and clustered with the carried-over model
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("section/meta.json")).unwrap()).unwrap();
    let (h, w) = (meta["height"].as_u64().unwrap(), meta["width"].as_u64().unwrap());
    let len = std::fs::metadata(b.join("section/SpaHDmap_score.npy")).unwrap().len();
    assert!(len >= 2 * 4 * h * w && len < 2 * 4 * h * w + 256);
    assert!(b.join("section/clusters.csv").exists());
    // a model of another shape is a clear error naming the file
    let c = d.path().join("c");
    let o = pipeline(
        &sb,
        &c,
        &cache,
        &["--n-top-genes", "30", "--trained-model", s(&a.join("models/trained.safetensors"))],
    );
    common::assert_clean_error(&o, "trained.safetensors", "nmf_decoder");
}
