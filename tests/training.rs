//! The `pretrain` and `train` stages: a run stopped after a checkpoint resumes and ends
//! bit-identical to an uninterrupted run; model files are safetensors state dicts with the
//! reference's names; the graph can use the pre-trained encoder.
mod common;

use std::path::Path;

use common::{bin, run, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pretrain(sec: &Path, out: &Path, cache: &Path, fail_after: Option<usize>) -> std::process::Output {
    pretrain_with(sec, out, cache, fail_after, &[])
}

fn pretrain_with(
    sec: &Path,
    out: &Path,
    cache: &Path,
    fail_after: Option<usize>,
    extra: &[&str],
) -> std::process::Output {
    let mut c = bin();
    c.args([
        "run",
        "--visium",
        s(sec),
        "--out",
        s(out),
        "--scale-rate",
        "2",
        "--n-top-genes",
        "40",
        "--to",
        "pretrain",
    ]);
    c.args(["--pretrain-iterations", "4", "--batch-size", "1", "--checkpoint-every", "2", "--preset", "quick"]);
    c.args(extra);
    c.env("SPAHDMAP_CACHE_DIR", cache);
    if let Some(n) = fail_after {
        c.env("SPAHDMAP_PRETRAIN_FAIL_AFTER", n.to_string());
    }
    c.output().unwrap()
}

#[test]
fn interrupted_pretraining_resumes_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let sec = d.path().join("sec");
    let o = run(
        &[
            "simulate",
            "--out",
            s(&sec),
            "--height",
            "1000",
            "--width",
            "1100",
            "--radius",
            "14",
            "--genes",
            "60",
            "--seed",
            "5",
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let o = pretrain(&sec, &a, &cache, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("pretrain: "), "{}", stderr(&o));
    // killed after iteration 3 (the last checkpoint was at 2), then the same command again;
    // this run scales its loss (a power of two changes no value, so the models still agree)
    let scaled = ["--loss-scale", "65536"];
    let o = pretrain_with(&sec, &b, &cache, Some(3), &scaled);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("stopped after iteration 3"), "{}", stderr(&o));
    assert!(b.join("models/pretrain.partial.safetensors").exists());
    assert!(!b.join("models/pretrained.safetensors").exists(), "no finished model from a failed run");
    let o = pretrain_with(&sec, &b, &cache, None, &scaled);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at iteration 2"), "{}", stderr(&o));
    assert!(!b.join("models/pretrain.partial.safetensors").exists());
    let (ma, mb) = (
        std::fs::read(a.join("models/pretrained.safetensors")).unwrap(),
        std::fs::read(b.join("models/pretrained.safetensors")).unwrap(),
    );
    let (sa, sb) =
        (safetensors::SafeTensors::deserialize(&ma).unwrap(), safetensors::SafeTensors::deserialize(&mb).unwrap());
    let mut names = sa.names();
    names.sort();
    let mut names_b = sb.names();
    names_b.sort();
    assert_eq!(names, names_b);
    for n in names {
        assert!(
            sa.tensor(n).unwrap().data() == sb.tensor(n).unwrap().data(),
            "{n}: resumed model differs from the uninterrupted one"
        );
    }
    let meta = |b: &[u8]| safetensors::SafeTensors::read_metadata(b).unwrap().1.metadata().clone().unwrap();
    let mut mb_meta = meta(&mb);
    // the scaler's state survived the restart: four clean steps since the scale last changed
    let sc: serde_json::Value = serde_json::from_str(&mb_meta.remove("loss_scaler").unwrap()).unwrap();
    assert_eq!(
        (sc["scale"].as_f64(), sc["growth_tracker"].as_u64(), sc["skipped"].as_u64()),
        (Some(65536.0), Some(4), Some(0))
    );
    assert_eq!(meta(&ma), mb_meta);
    let st = sa;
    assert_eq!(st.tensor("conv_init.weight").unwrap().shape(), &[32, 3, 3, 3]);
    assert_eq!(st.tensor("down_path.3.conv_2.weight").unwrap().shape(), &[256, 256, 3, 3]);
}

#[test]
fn the_spot_graph_uses_the_pretrained_encoder() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let sec = d.path().join("sec");
    let o = run(
        &[
            "simulate",
            "--out",
            s(&sec),
            "--height",
            "900",
            "--width",
            "900",
            "--radius",
            "12",
            "--genes",
            "60",
            "--seed",
            "6",
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("res");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["run", "--visium", s(&sec), "--out", s(&out), "--scale-rate", "2", "--n-top-genes", "40"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(
            [
                "--to",
                "gcn",
                "--split-size",
                "32",
                "--pretrain-iterations",
                "2",
                "--batch-size",
                "2",
                "--gcn-iterations",
                "20",
            ]
            .iter()
            .map(|x| x.to_string()),
        );
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let a = args(&["--embedding", "encoder", "--preset", "quick"]);
    let o = run(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &cache);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("U-Net encoder embeddings"), "{}", stderr(&o));
    // without the model: one clear line naming the file
    std::fs::remove_file(out.join("models/pretrained.safetensors")).unwrap();
    let a = args(&["--embedding", "encoder", "--preset", "quick", "--from", "gcn"]);
    let o = run(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &cache);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pretrained.safetensors is missing"), "{}", stderr(&o));
}

#[test]
fn interrupted_joint_training_resumes_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let sec = d.path().join("sec");
    let o = run(
        &[
            "simulate",
            "--out",
            s(&sec),
            "--height",
            "900",
            "--width",
            "1000",
            "--radius",
            "12",
            "--genes",
            "60",
            "--seed",
            "8",
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let go = |out: &Path, fail: Option<usize>| {
        let mut c = bin();
        c.args([
            "run",
            "--visium",
            s(&sec),
            "--out",
            s(out),
            "--scale-rate",
            "2",
            "--n-top-genes",
            "40",
            "--rank",
            "4",
        ]);
        c.args(["--preset", "quick", "--split-size", "64", "--pretrain-iterations", "2", "--batch-size", "2"]);
        c.args([
            "--gcn-iterations",
            "30",
            "--train-iterations",
            "6",
            "--fix-iterations",
            "3",
            "--checkpoint-every",
            "2",
        ]);
        c.env("SPAHDMAP_CACHE_DIR", &cache);
        if let Some(n) = fail {
            c.env("SPAHDMAP_TRAIN_FAIL_AFTER", n.to_string());
        }
        c.output().unwrap()
    };
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let o = go(&a, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("6 iterations (all parameters from 3)"), "{}", stderr(&o));
    // killed in the second phase (last checkpoint at 4), then the same command again
    let o = go(&b, Some(5));
    assert!(!o.status.success() && stderr(&o).contains("stopped after iteration 5"), "{}", stderr(&o));
    let o = go(&b, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at iteration 4"), "{}", stderr(&o));
    let (ma, mb) = (
        std::fs::read(a.join("models/trained.safetensors")).unwrap(),
        std::fs::read(b.join("models/trained.safetensors")).unwrap(),
    );
    let (sa, sb) =
        (safetensors::SafeTensors::deserialize(&ma).unwrap(), safetensors::SafeTensors::deserialize(&mb).unwrap());
    for n in sa.names() {
        assert!(sa.tensor(n).unwrap().data() == sb.tensor(n).unwrap().data(), "{n} differs after resuming");
    }
    assert_eq!(sa.tensor("nmf_decoder").unwrap().shape(), &[40, 4]);
    assert_eq!(sa.tensor("low_rank.conv_2.weight").unwrap().shape(), &[4, 4, 3, 3]);
    assert_eq!(std::fs::read(a.join("metagene.csv")).unwrap(), std::fs::read(b.join("metagene.csv")).unwrap());
    let text = std::fs::read_to_string(a.join("metagene.csv")).unwrap();
    assert_eq!(text.lines().count(), 41);
    // the decoder moved from its start (metagene_GCN) in the second phase
    assert_ne!(text, std::fs::read_to_string(a.join("metagene_GCN.csv")).unwrap());
    check_scores(&a, &b, 4);
    check_gene_outputs(&sec, &a, &cache);
}

/// `--genes` maps and tables; an unknown gene is a clear error.
fn check_gene_outputs(sec: &Path, out: &Path, cache: &Path) {
    let text = std::fs::read_to_string(out.join("metagene.csv")).unwrap();
    let gene = text.lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    let rerun = |genes: &str| {
        let mut c = bin();
        c.args(["run", "--visium", s(sec), "--out", s(out), "--scale-rate", "2", "--n-top-genes", "40", "--rank", "4"]);
        c.args(["--preset", "quick", "--split-size", "64", "--from", "downstream", "--genes", genes]);
        c.args(["--figure-format", "both"]);
        c.env("SPAHDMAP_CACHE_DIR", cache);
        c.output().unwrap()
    };
    let o = rerun(&gene);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = std::fs::read_to_string(out.join("section/gene_recovery.csv")).unwrap();
    assert_eq!(rec.lines().next().unwrap(), format!("barcode,{gene}"));
    // recovered = spot scores · the gene's metagene row
    let w: Vec<f64> = text.lines().nth(1).unwrap().split(',').skip(1).map(|v| v.parse().unwrap()).collect();
    let (_, sc) = common::read_npy::<f64>(&out.join("section/SpaHDmap_spot_score.npy"));
    let want: f64 = sc[..4].iter().zip(&w).map(|(a, b)| a * b).sum();
    let got: f64 = rec.lines().nth(1).unwrap().split(',').nth(1).unwrap().parse().unwrap();
    assert!((got - want).abs() < 1e-4 * want.abs().max(1e-3), "{got} vs {want}");
    assert!(out.join(format!("section/figures/gene_{gene}.png")).exists());
    // PDF figures beside the PNGs, each with its title and key (their layout: io::pdf's tests)
    for (f, title) in [
        (format!("gene_{gene}.pdf"), format!("({gene} \\(recovered\\) - section) Tj")),
        ("clusters.pdf".into(), "(Clusters - section) Tj".into()),
        ("SpaHDmap_4.pdf".into(), "(SpaHDmap embedding 4 - section) Tj".into()),
        ("gray/SpaHDmap_1.pdf".into(), "/DeviceGray".into()),
    ] {
        let pdf = std::fs::read(out.join("section/figures").join(&f)).unwrap();
        assert!(pdf.starts_with(b"%PDF-") && pdf.ends_with(b"%%EOF\n"), "{f}");
        assert!(String::from_utf8_lossy(&pdf).contains(&title), "{f}: no {title}");
    }
    let markers = std::fs::read_to_string(out.join("cluster_markers.csv")).unwrap();
    assert!(markers.starts_with("cluster,gene,z,log2_fold_change,p,p_adj\n") && markers.lines().count() > 1);
    let top = std::fs::read_to_string(out.join("metagene_top_genes.csv")).unwrap();
    assert_eq!(top.lines().count(), 1 + 4 * 20);
    assert!(std::fs::read_to_string(out.join("section/component_spots.csv"))
        .unwrap()
        .starts_with("component,barcode,score"));
    let o = rerun("NoSuchGene");
    common::assert_clean_error(&o, "--genes", "NoSuchGene");
}

/// Half floats of an R × H × W .npy, checked against its expected size.
fn read_f16_map(p: &Path, len: usize) -> Vec<f32> {
    let b = std::fs::read(p).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize + 10;
    assert!(String::from_utf8_lossy(&b[10..hl]).contains("'<f2'"));
    assert_eq!(b.len() - hl, 2 * len, "{}", p.display());
    b[hl..].chunks(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
}

/// The score stage's outputs: the same after the interrupted run, probabilities that vary,
/// spot scores that are the medians over each spot's disk of the map.
fn check_scores(a: &Path, b: &Path, rank: usize) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("section/meta.json")).unwrap()).unwrap();
    let (h, w) = (meta["height"].as_u64().unwrap() as usize, meta["width"].as_u64().unwrap() as usize);
    let (row0, col0) = (meta["row0"].as_f64().unwrap(), meta["col0"].as_f64().unwrap());
    let radius = meta["radius"].as_u64().unwrap() as i64;
    let map = read_f16_map(&a.join("section/SpaHDmap_score.npy"), rank * h * w);
    assert_eq!(
        std::fs::read(a.join("section/SpaHDmap_score.npy")).unwrap(),
        std::fs::read(b.join("section/SpaHDmap_score.npy")).unwrap()
    );
    assert!(map.iter().all(|v| (0.0..=1.0).contains(v)));
    let mean = map.iter().map(|&v| v as f64).sum::<f64>() / map.len() as f64;
    let var = map.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / map.len() as f64;
    assert!(var > 1e-4, "a flat score map (variance {var})");
    let (ss, spot_scores) = common::read_npy::<f64>(&a.join("section/SpaHDmap_spot_score.npy"));
    let (_, spots) = common::read_npy::<f64>(&a.join("section/spots.npy"));
    assert_eq!(ss, vec![spots.len() as u64 / 2, rank as u64]);
    for i in (0..spots.len() / 2).step_by(7) {
        let (r, c) = ((spots[2 * i] - row0) as i64, (spots[2 * i + 1] - col0) as i64);
        for k in 0..rank {
            let mut v = Vec::new();
            for y in (r - radius).max(0)..(r + radius + 1).min(h as i64) {
                for x in (c - radius).max(0)..(c + radius + 1).min(w as i64) {
                    if (y - r).pow(2) + (x - c).pow(2) <= radius * radius {
                        v.push(map[(k * h + y as usize) * w + x as usize]);
                    }
                }
            }
            v.sort_by(f32::total_cmp);
            let n = v.len();
            let want = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
            let got = spot_scores[i * rank + k];
            assert!(
                (got - want as f64).abs() <= 1e-3 * want.max(1e-3) as f64,
                "spot {i} component {k}: {got} vs {want}"
            );
        }
    }
    // the map's description: how its pixels map back to the original image
    let mm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("section/SpaHDmap_score.json")).unwrap()).unwrap();
    assert_eq!(mm["shape"], serde_json::json!([rank, h, w]));
    assert_eq!(mm["to_original_image"]["row0"], meta["row0"]);
    assert_eq!(mm["genes"].as_array().unwrap().len(), 40);
    // the pyramidal OME-TIFF of the same map (its layout is tested in io::ome_tiff)
    let ome = std::fs::read(a.join("section/SpaHDmap_score.ome.tif")).unwrap();
    assert_eq!(&ome[..4], b"II+\0", "BigTIFF");
    assert!(String::from_utf8_lossy(&ome).contains(&format!("SizeC=\"{rank}\"")));
    let (ms, _) = common::read_npy::<bool>(&a.join("section/SpaHDmap_mask.npy"));
    assert_eq!(ms, vec![h as u64, w as u64]);
    // spots.csv: barcode, row, col and the spot scores, one line per spot
    let spots_csv = std::fs::read_to_string(a.join("section/spots.csv")).unwrap();
    let mut lines = spots_csv.lines();
    assert_eq!(lines.next().unwrap().split(',').count(), 3 + rank);
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!((first[3].parse::<f64>().unwrap() - spot_scores[0]).abs() < 1e-6);
    assert_eq!(spots_csv.lines().count(), 1 + spots.len() / 2);
    // downstream: a cluster per spot, a pixel label map at 1/4, figures
    let clusters = std::fs::read_to_string(a.join("section/clusters.csv")).unwrap();
    assert_eq!(clusters.lines().count(), 1 + spots.len() / 2);
    let (ps, pl) = common::read_npy::<i32>(&a.join("section/clusters_pixel.npy"));
    assert_eq!(ps, vec![(h / 4) as u64, (w / 4) as u64]);
    assert!(pl.iter().any(|&v| v >= 0) && pl.contains(&-1));
    for f in ["clusters.png", "SpaHDmap_1.png", "gray/SpaHDmap_1.png"] {
        let p = a.join("section/figures").join(f);
        assert!(std::fs::metadata(&p).map(|m| m.len() > 100).unwrap_or(false), "{}", p.display());
    }
    assert_eq!(clusters, std::fs::read_to_string(b.join("section/clusters.csv")).unwrap());
    // the AnnData reads back (through our own h5ad reader) with every spot and gene
    let o = common::bin().args(["inspect", "--h5ad", s(&a.join("section/section.h5ad")), "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spots"].as_u64().unwrap() as usize, spots.len() / 2);
    assert_eq!(v["genes"], 40);
}
