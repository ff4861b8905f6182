//! `spahdmap run --to preprocess` end to end on generated sections, and its bad input.
mod common;

use std::path::Path;

use common::{assert_clean_error, read_npy, run, stderr};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn simulate(dir: &Path, args: &[&str]) -> std::path::PathBuf {
    let out = dir.join("sec");
    let mut a = vec!["simulate", "--out", s(&out)];
    a.extend_from_slice(args);
    let o = run(&a, &dir.join("cache"));
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn preprocess_writes_results_resumes_and_finds_the_tissue() {
    let d = tempfile::tempdir().unwrap();
    let sec =
        simulate(d.path(), &["--height", "1400", "--width", "1600", "--radius", "16", "--genes", "120", "--seed", "2"]);
    let out = d.path().join("res");
    let args = [
        "run",
        "--visium",
        s(&sec),
        "--out",
        s(&out),
        "--scale-rate",
        "2",
        "--n-top-genes",
        "80",
        "--to",
        "preprocess",
    ];
    let o = run(&args, &d.path().join("cache"));
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("section/meta.json")).unwrap()).unwrap();
    let (h, w) = (meta["height"].as_u64().unwrap(), meta["width"].as_u64().unwrap());
    let (r0, c0) = (meta["row0"].as_u64().unwrap() as usize, meta["col0"].as_u64().unwrap() as usize);
    assert_eq!(meta["radius"], 8);
    assert_eq!(meta["genes"], 80);
    assert!(!meta["tiles"].as_array().unwrap().is_empty());
    let (shape, mask) = read_npy::<bool>(&out.join("section/mask.npy"));
    assert_eq!(shape, vec![h, w]);
    // the mask agrees with the simulated tissue (truth at full resolution, sampled at scale 2)
    let (tshape, truth) = read_npy::<u8>(&sec.join("truth/domains.npy"));
    let tw = tshape[1] as usize;
    let (mut inter, mut union) = (0usize, 0usize);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let (ty, tx) = ((2 * (y + r0) + 2).min(tshape[0] as usize - 1), (2 * (x + c0) + 2).min(tw - 1));
            let (a, b) = (mask[y * w as usize + x], truth[ty * tw + tx] != 0);
            inter += (a && b) as usize;
            union += (a || b) as usize;
        }
    }
    let iou = inter as f64 / union as f64;
    assert!(iou > 0.9, "tissue IoU {iou}");
    // pseudo spots lie on the mask, away from sequenced spots
    let (_, ps) = read_npy::<f64>(&out.join("section/pseudo_spots.npy"));
    let (_, sp) = read_npy::<f64>(&out.join("section/spots.npy"));
    assert_eq!(ps.len() / 2, meta["pseudo_spots"].as_u64().unwrap() as usize);
    for p in ps.chunks(2) {
        let (y, x) = (p[0] as usize - r0, p[1] as usize - c0);
        // the crop leaves out the mask's last row and column (as the reference slices it)
        if y < h as usize && x < w as usize {
            assert!(mask[y * w as usize + x]);
        } else {
            assert!(y <= h as usize && x <= w as usize);
        }
        for q in sp.chunks(2) {
            assert!((p[0] - q[0].round_ties_even()).abs() > 8.0 || (p[1] - q[1].round_ties_even()).abs() > 8.0);
        }
    }
    // rerun: resumes; --from redoes with identical results for the same seed
    let before = std::fs::read(out.join("section/pseudo_spots.npy")).unwrap();
    let o = run(&args, &d.path().join("cache"));
    assert!(stderr(&o).contains("kept"), "{}", stderr(&o));
    let mut redo = args.to_vec();
    redo.extend_from_slice(&["--from", "preprocess"]);
    let o = run(&redo, &d.path().join("cache"));
    assert!(o.status.success() && !stderr(&o).contains("kept"));
    assert_eq!(before, std::fs::read(out.join("section/pseudo_spots.npy")).unwrap());
    let runj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(runj["finished_through"], "preprocess");
}

#[test]
fn bad_settings_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let sec = simulate(d.path(), &["--height", "700", "--width", "700", "--radius", "10", "--genes", "60"]);
    let out = d.path().join("res");
    let c = d.path().join("cache");
    assert_clean_error(
        &run(&["run", "--visium", s(&sec), "--out", s(&out), "--radius", "0.5"], &c),
        "invalid setting",
        "radius",
    );
    assert_clean_error(
        &run(&["run", "--visium", s(&sec), "--out", s(&out), "--scale-rate=0"], &c),
        "invalid setting",
        "scale_rate",
    );
    assert_clean_error(
        &run(&["run", "--visium", s(&sec), "--out", s(&out), "--device", "cuda:7"], &c),
        "invalid setting",
        "--device",
    );
    assert_clean_error(&run(&["run", "--visium", s(&sec), "--out", s(&out), "--device", "tpu"], &c), "tpu", "--device");
    assert!(!out.join("section/meta.json").exists());
}

#[test]
fn no_spots_or_genes_left_after_filtering() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("coords.csv");
    std::fs::write(&c, "id,x,y\nA,10,10\nB,20,20\nC,30,30\nD,40,40\n").unwrap();
    // raw counts (max ≥ 20) but every spot has fewer than 3 genes
    let e = d.path().join("few_genes.csv");
    std::fs::write(&e, ",G1,G2,G3\nA,25,0,0\nB,30,1,0\nC,0,0,40\nD,5,0,0\n").unwrap();
    let img = common::fixture("readers/tiled_lzw.tif");
    let out = d.path().join("res");
    let o = run(
        &["run", "--coords", s(&c), "--expression", s(&e), "--image", s(&img), "--out", s(&out), "--radius", "5"],
        d.path(),
    );
    assert_clean_error(&o, "few_genes.csv", "spots");
    // spots pass, but no gene is seen in 3 spots
    let e2 = d.path().join("rare_genes.csv");
    std::fs::write(&e2, ",G1,G2,G3,G4,G5\nA,25,1,1,0,0\nB,30,1,0,2,0\nC,0,0,40,1,3\nD,5,0,0,0,9\n").unwrap();
    let o = run(
        &["run", "--coords", s(&c), "--expression", s(&e2), "--image", s(&img), "--out", s(&out), "--radius", "5"],
        d.path(),
    );
    assert_clean_error(&o, "rare_genes.csv", "genes");
}

#[test]
fn blank_image_falls_back_to_the_spot_box_and_small_image_gets_one_tile() {
    let d = tempfile::tempdir().unwrap();
    let sec =
        simulate(d.path(), &["--height", "600", "--width", "600", "--radius", "10", "--genes", "60", "--seed", "4"]);
    // an all-background (uniform) image of the same size
    let blank = d.path().join("blank.png");
    let px = vec![240u8; 600 * 600 * 3];
    let mut enc = png::Encoder::new(std::fs::File::create(&blank).unwrap(), 600, 600);
    enc.set_color(png::ColorType::Rgb);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&px).unwrap();
    wr.finish().unwrap();
    let out = d.path().join("res");
    let o = run(
        &[
            "run",
            "--visium",
            s(&sec),
            "--image",
            s(&blank),
            "--out",
            s(&out),
            "--scale-rate",
            "3",
            "--n-top-genes",
            "0",
            "--to",
            "preprocess",
        ],
        &d.path().join("cache"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("mask is empty"), "{}", stderr(&o));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("section/meta.json")).unwrap()).unwrap();
    // 200 × 200 scaled image: smaller than a 256 tile, one window flush with the end
    let tiles = meta["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), 1, "{tiles:?}");
    assert_eq!(tiles[0]["r1"].as_i64().unwrap() - tiles[0]["r0"].as_i64().unwrap(), 256);
}

#[test]
fn spatially_variable_genes_are_the_simulated_programs() {
    let d = tempfile::tempdir().unwrap();
    let sec =
        simulate(d.path(), &["--height", "1600", "--width", "1600", "--radius", "14", "--genes", "200", "--seed", "9"]);
    let programs = std::fs::read_to_string(sec.join("truth/programs.csv")).unwrap();
    let role: std::collections::HashMap<String, String> = programs
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect();
    for method in ["moran", "sparkx", "bsp"] {
        let out = d.path().join(format!("res-{method}"));
        let o = run(
            &[
                "run",
                "--visium",
                s(&sec),
                "--out",
                s(&out),
                "--scale-rate",
                "2",
                "--n-top-genes",
                "30",
                "--svg-method",
                method,
                "--to",
                "preprocess",
            ],
            &d.path().join("cache"),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let genes = std::fs::read_to_string(out.join("section/expression/genes.txt")).unwrap();
        let picked: Vec<&str> = genes.lines().collect();
        assert_eq!(picked.len(), 30);
        let programmed = picked.iter().filter(|g| role[**g] != "background").count();
        assert!(programmed >= 24, "{method}: {programmed} of 30 selected genes carry a spatial program");
    }
}

#[test]
fn gene_list_and_two_sections_from_a_config() {
    let d = tempfile::tempdir().unwrap();
    let a =
        simulate(d.path(), &["--height", "900", "--width", "900", "--radius", "12", "--genes", "80", "--seed", "1"]);
    let b = d.path().join("sec_b");
    let o = run(
        &[
            "simulate",
            "--out",
            s(&b),
            "--height",
            "900",
            "--width",
            "900",
            "--radius",
            "12",
            "--genes",
            "90",
            "--seed",
            "2",
        ],
        &d.path().join("cache"),
    );
    assert!(o.status.success());
    // two sections: genes common to both (the first 80), ranked by mean Moran's I
    let cfg = d.path().join("cfg.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "settings": {"root_path": ".", "project": "two"},
            "sections": [{"name": "A", "visium_path": a, "image_path": a.join("image.tif")},
                         {"name": "B", "visium_path": b, "image_path": b.join("image.tif")}],
            "paras": {"scale_rate": 2, "reference": {"B": "A"}}
        })
        .to_string(),
    )
    .unwrap();
    let out = d.path().join("res");
    // through the spot stages: joint NMF, the query section B shifted onto A
    let o = run(
        &[
            "run",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--n-top-genes",
            "20",
            "--rank",
            "4",
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
        ],
        &d.path().join("cache"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (gs, gamma) = read_npy::<f32>(&out.join("nmf_gamma.npy"));
    assert_eq!(gs, vec![1, 20]);
    assert!(gamma.iter().any(|&v| v != 0.0));
    for sec in ["A", "B"] {
        let (ns, _) = read_npy::<f32>(&out.join(format!("{sec}/NMF_score.npy")));
        assert_eq!(ns[1], 4);
        assert!(out.join(format!("{sec}/GCN_score.npy")).exists() && out.join(format!("{sec}/VD_score.npy")).exists());
    }
    assert_eq!(std::fs::read_to_string(out.join("metagene_GCN.csv")).unwrap().lines().count(), 21);
    // joint training with gamma for the query section, then both sections scored and
    // clustered together
    let m = std::fs::read(out.join("models/trained.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&m).unwrap();
    assert_eq!(st.tensor("gamma").unwrap().shape(), &[1, 20]);
    let mut labels = std::collections::BTreeSet::new();
    for sec in ["A", "B"] {
        assert!(out.join(format!("{sec}/SpaHDmap_score.npy")).exists());
        let c = std::fs::read_to_string(out.join(format!("{sec}/clusters.csv"))).unwrap();
        labels.extend(c.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().to_string()));
    }
    assert!(out.join("cluster_markers.csv").exists());
    assert!(!labels.is_empty());
    let ga = std::fs::read_to_string(out.join("A/expression/genes.txt")).unwrap();
    let gb = std::fs::read_to_string(out.join("B/expression/genes.txt")).unwrap();
    assert_eq!(ga, gb);
    assert_eq!(ga.lines().count(), 20);
    assert!(ga.lines().all(|g| g[4..].parse::<usize>().unwrap() <= 80), "{ga}");
    // a gene list: that order, absent genes added as zeros
    let list = d.path().join("genes.txt");
    std::fs::write(&list, "Gene00003\nNOT_A_GENE\nGene00001\n").unwrap();
    let out2 = d.path().join("res2");
    let o = run(
        &["run", "--visium", s(&a), "--out", s(&out2), "--gene-list", s(&list), "--to", "preprocess"],
        &d.path().join("cache"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out2.join("section/expression/genes.txt")).unwrap(),
        "Gene00003\nNOT_A_GENE\nGene00001\n"
    );
    let (_, indices) = read_npy::<u32>(&out2.join("section/expression/indices.npy"));
    assert!(!indices.contains(&1), "the absent gene must stay all zero");
    assert!(indices.contains(&0) && indices.contains(&2));
}
