//! Bad input: one line naming the file and the field, a non-zero exit, no panic, nothing
//! half-written.
mod common;

use std::path::{Path, PathBuf};

use common::{assert_clean_error, fixture, run, stderr};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to)
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn truncated(src: &Path, dst: &Path, keep: f64) -> PathBuf {
    let b = std::fs::read(src).unwrap();
    std::fs::write(dst, &b[..(b.len() as f64 * keep) as usize]).unwrap();
    dst.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_file() {
    let d = tmp();
    let p = d.path().join("nope.h5ad");
    assert_clean_error(&run(&["inspect", "--h5ad", s(&p)], d.path()), "nope.h5ad", "no such file");
}

#[test]
fn truncated_h5() {
    let d = tmp();
    let p = truncated(&fixture("readers/x_csr.h5ad"), &d.path().join("cut.h5ad"), 0.5);
    assert_clean_error(&run(&["inspect", "--h5ad", s(&p)], d.path()), "cut.h5ad", "HDF5");
}

#[test]
fn truncated_tiff_leaves_no_cache() {
    let d = tmp();
    let img = truncated(&fixture("readers/tiled_lzw.tif"), &d.path().join("cut.tif"), 0.6);
    let cache = d.path().join("cache");
    let o = run(&["inspect", "--h5ad", s(&fixture("readers/x_csr.h5ad")), "--image", s(&img)], &cache);
    assert_clean_error(&o, "cut.tif", "chunk");
    let left: Vec<_> =
        std::fs::read_dir(&cache).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "cache left behind: {left:?}");
}

#[test]
fn corrupt_gzip() {
    let d = tmp();
    let p = truncated(&fixture("readers/coords.tsv.gz"), &d.path().join("coords.tsv.gz"), 0.7);
    let o = run(&["inspect", "--coords", s(&p), "--expression", s(&fixture("readers/expression.csv"))], d.path());
    assert_clean_error(&o, "coords.tsv.gz", "content");
}

#[test]
fn counts_barcode_without_position() {
    let d = tmp();
    let v = d.path().join("visium");
    copy_dir(&fixture("readers/visium_mtx_plain"), &v);
    let pos = v.join("spatial/tissue_positions.csv");
    let text = std::fs::read_to_string(&pos).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("SPOT03")).collect();
    std::fs::write(&pos, kept.join("\n")).unwrap();
    assert_clean_error(&run(&["inspect", "--visium", s(&v)], d.path()), "tissue_positions.csv", "barcode");
}

#[test]
fn positions_without_counts_warn_and_no_overlap_fails() {
    let d = tmp();
    // extra coordinates: a warning, like the reference's intersection
    let c = d.path().join("coords.csv");
    let mut text = std::fs::read_to_string(fixture("readers/expression.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| format!("{},1,{}.0,7.0", l.split(',').next().unwrap(), 10))
        .collect::<Vec<_>>();
    text.insert(0, "id,note,x,y".into());
    text.push("EXTRA-1,1,5.0,5.0".into());
    std::fs::write(&c, text.join("\n")).unwrap();
    let o = run(
        &["inspect", "--coords", s(&c), "--expression", s(&fixture("readers/expression.csv")), "--json", "--no-decode"],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["warnings"].to_string().contains("have no expression"));
    // no spot in common: an error naming the coordinate file
    let c2 = d.path().join("other.csv");
    std::fs::write(&c2, "id,x,y\nA,1,2\nB,3,4\n").unwrap();
    assert_clean_error(
        &run(&["inspect", "--coords", s(&c2), "--expression", s(&fixture("readers/expression.csv"))], d.path()),
        "other.csv",
        "spot id",
    );
}

#[test]
fn spots_outside_image_and_swapped_axes_warn() {
    let d = tmp();
    let o = run(
        &[
            "inspect",
            "--h5ad",
            s(&fixture("readers/x_csr.h5ad")),
            "--image",
            s(&fixture("readers/rgb.npy").with_file_name("tiled_lzw.tif")),
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["warnings"].to_string().contains("outside the 70×90 image"), "{v}");
    assert_eq!(v["image"]["height"], 70);
    // swapped: coordinates fit only the other way round
    let c = d.path().join("c.csv");
    std::fs::write(&c, "id,x,y\nS1,10,80\nS2,20,85\n").unwrap();
    let e = d.path().join("e.csv");
    std::fs::write(&e, ",G1,G2\nS1,1,25\nS2,3,4\n").unwrap();
    let o = run(
        &[
            "inspect",
            "--coords",
            s(&c),
            "--expression",
            s(&e),
            "--image",
            s(&fixture("readers/tiled_lzw.tif")),
            "--json",
            "--no-decode",
        ],
        d.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["warnings"].to_string().contains("swapped"), "{v}");
}

fn expression_with(d: &Path, value: &str) -> PathBuf {
    let p = d.join("expr.csv");
    std::fs::write(&p, format!(",G1,G2\nS1,1,{value}\nS2,3,4\n")).unwrap();
    p
}

#[test]
fn nan_and_negative_counts() {
    let d = tmp();
    let c = d.path().join("c.csv");
    std::fs::write(&c, "id,x,y\nS1,1,2\nS2,3,4\n").unwrap();
    for v in ["nan", "-2"] {
        let e = expression_with(d.path(), v);
        assert_clean_error(
            &run(&["inspect", "--coords", s(&c), "--expression", s(&e)], d.path()),
            "expr.csv",
            "spot S1 gene G2",
        );
    }
}

#[test]
fn empty_matrix() {
    let d = tmp();
    let c = d.path().join("c.csv");
    std::fs::write(&c, "id,x,y\nS1,1,2\n").unwrap();
    let e = d.path().join("e.csv");
    std::fs::write(&e, ",G1,G2\n").unwrap();
    assert_clean_error(&run(&["inspect", "--coords", s(&c), "--expression", s(&e)], d.path()), "e.csv", "spots");
}

#[test]
fn unsupported_compression() {
    let d = tmp();
    let o = run(
        &["inspect", "--h5ad", s(&fixture("readers/x_csr.h5ad")), "--image", s(&fixture("readers/jp2k.tif"))],
        d.path(),
    );
    assert_clean_error(&o, "jp2k.tif", "Compression");
    assert!(stderr(&o).contains("JPEG 2000"));
}

#[test]
fn config_field_of_wrong_type_and_download_id() {
    let d = tmp();
    let cfg = d.path().join("c.json");
    let a = fixture("readers/x_csr.h5ad");
    std::fs::write(
        &cfg,
        serde_json::json!({"sections": [{"name": "A", "adata_path": a}], "paras": {"scale_rate": "two"}}).to_string(),
    )
    .unwrap();
    assert_clean_error(&run(&["inspect", "--config", s(&cfg)], d.path()), "c.json", "paras.scale_rate");
    std::fs::write(&cfg, serde_json::json!({"sections": [{"name": "A", "id": "V1_Mouse_Brain"}]}).to_string()).unwrap();
    assert_clean_error(&run(&["inspect", "--config", s(&cfg)], d.path()), "c.json", "sections[0].id");
    std::fs::write(&cfg, "{\"sections\": [").unwrap();
    assert_clean_error(&run(&["inspect", "--config", s(&cfg)], d.path()), "c.json", "JSON");
}

#[test]
fn bad_settings_are_rejected() {
    let d = tmp();
    let a = fixture("readers/x_csr.h5ad");
    assert_clean_error(&run(&["inspect", "--h5ad", s(&a), "--radius", "0.5"], d.path()), "invalid setting", "radius");
    assert_clean_error(
        &run(&["inspect", "--h5ad", s(&a), "--scale-rate", "0"], d.path()),
        "invalid setting",
        "scale_rate",
    );
}

#[test]
fn simulate_into_unwritable_place_leaves_nothing() {
    let d = tmp();
    let blocker = d.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("sec");
    let o = run(
        &["simulate", "--out", s(&out), "--height", "500", "--width", "500", "--radius", "10", "--genes", "60"],
        d.path(),
    );
    assert_clean_error(&o, "file", "");
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // an existing output is not overwritten without --force
    let out = d.path().join("sec");
    std::fs::create_dir(&out).unwrap();
    let o = run(
        &["simulate", "--out", s(&out), "--height", "500", "--width", "500", "--radius", "10", "--genes", "60"],
        d.path(),
    );
    assert_clean_error(&o, "sec", "already exists");
}

/// A loss scale that is not a positive finite number is refused before anything is written.
#[test]
fn bad_loss_scale() {
    let d = tmp();
    let out = d.path().join("out");
    for v in ["0", "-4", "inf"] {
        // (checked before the input is read: the section need not exist)
        let arg = format!("--loss-scale={v}");
        let o = run(&["run", "--visium", s(&d.path().join("section")), "--out", s(&out), &arg], d.path());
        assert_clean_error(&o, "--loss-scale", v);
        assert!(!out.exists(), "nothing written for --loss-scale {v}");
    }
}
