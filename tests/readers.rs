//! Spot readers on the repo's fixtures (made by tools/make_reader_fixtures.py) and on
//! ../shared/data.
mod common;

use common::{fixture, shared};
use spahdmap::io::config::read_config;
use spahdmap::io::spots::{load_h5ad, load_tables, load_visium, SpotData, TableOptions};

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("readers/expected.json")).unwrap()).unwrap()
}

fn assert_matches_expected(d: &SpotData) {
    let e = expected();
    assert_eq!(d.counts.rows, e["n"].as_u64().unwrap() as usize);
    assert_eq!(d.counts.cols, e["g"].as_u64().unwrap() as usize);
    let obs: Vec<String> = serde_json::from_value(e["obs"].clone()).unwrap();
    let var: Vec<String> = serde_json::from_value(e["var"].clone()).unwrap();
    assert_eq!(d.barcodes, obs);
    assert_eq!(d.genes, var);
    let dense = d.counts.to_dense();
    let rows: Vec<f64> = serde_json::from_value(e["row_sums"].clone()).unwrap();
    for (r, want) in rows.iter().enumerate() {
        let got: f32 = dense[r * d.counts.cols..(r + 1) * d.counts.cols].iter().sum();
        assert_eq!(got as f64, *want, "row {r}");
    }
    let xy: Vec<[f64; 2]> = serde_json::from_value(e["spatial"].clone()).unwrap();
    for (a, b) in d.spatial.iter().zip(&xy) {
        assert!((a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9, "{a:?} vs {b:?}");
    }
}

#[test]
fn h5ad_dense_csr_csc() {
    for kind in ["dense", "csr", "csc"] {
        let d = load_h5ad(&fixture(&format!("readers/x_{kind}.h5ad"))).unwrap();
        assert_matches_expected(&d);
        assert_eq!(d.spot_diameter, Some(89.5));
        assert_eq!(d.radius(), Some(45.0));
    }
}

#[test]
fn visium_matrix_market_gz_with_parquet_and_plain_with_csv() {
    for dir in ["visium_mtx_gz", "visium_mtx_plain"] {
        let d = load_visium(&fixture(&format!("readers/{dir}"))).unwrap();
        assert_matches_expected(&d);
        assert_eq!(d.gene_ids[0], "ENSG00000");
    }
}

#[test]
fn coordinate_and_expression_tables() {
    let d =
        load_tables(&fixture("readers/coords.tsv.gz"), &fixture("readers/expression.csv"), &TableOptions::default())
            .unwrap();
    assert_matches_expected(&d);
    // choosing the columns explicitly gives the same
    let d2 = load_tables(
        &fixture("readers/coords.tsv.gz"),
        &fixture("readers/expression.csv"),
        &TableOptions { id_col: Some(0), coord_cols: Some([2, 3]) },
    )
    .unwrap();
    assert_eq!(d.spatial, d2.spatial);
    // swapped order: (x, y) → (row, col)
    assert_eq!(d.row_col(true)[0], [d.spatial[0][1], d.spatial[0][0]]);
}

#[test]
fn mouse_brain_h5_without_attributes_v1_positions() {
    let Some(dir) = shared("visium_mouse_brain_lowres") else {
        return;
    };
    let d = load_visium(&dir).unwrap();
    assert_eq!((d.counts.rows, d.counts.cols), (2695, 100));
    assert_eq!(d.counts.data.iter().map(|&v| v as f64).sum::<f64>(), 132231.0);
    assert_eq!(d.barcodes[0], "AAACAAGTATCTCCCA-1");
    assert_eq!(d.genes[0], "Xkr4");
    let (_, v) = d.counts.row(0);
    assert_eq!(v.iter().sum::<f32>(), 34.0);
    assert_eq!(d.radius(), Some(48.0));
    assert!(d.positions_file.ends_with("tissue_positions_list.csv"));
}

#[test]
fn heart_h5_with_attributes_fixed_strings_float_data() {
    let Some(dir) = shared("visium_human_heart_lowres") else {
        return;
    };
    let d = load_visium(&dir).unwrap();
    // 4,235 barcodes are in tissue, only the 100 in the matrix are kept
    assert_eq!((d.counts.rows, d.counts.cols), (100, 100));
    assert_eq!(d.counts.data.iter().map(|&v| v as f64).sum::<f64>(), 932.0);
    assert_eq!(d.genes[0], "ENSG00000243485");
    assert_eq!(d.radius(), Some(45.0));
}

#[test]
fn squidpy_h5ad_csr() {
    let Some(p) = shared("visium_mouse_brain_crop/test_data.h5ad") else {
        return;
    };
    let d = load_h5ad(&p).unwrap();
    assert_eq!((d.counts.rows, d.counts.cols), (49, 1999));
    let s: f64 = d.counts.data.iter().map(|&v| v as f64).sum();
    assert!((s - 30129.566022634506).abs() < 1e-2, "{s}");
    assert_eq!(d.barcodes[0], "AAATTGCGGCGGTTCT-1");
    assert_eq!(d.spatial[0], [337.0, 439.0]);
}

#[test]
fn her2st_legacy_st_layout_is_recognised() {
    let Some(dir) = shared("her2st") else { return };
    let d = load_tables(&dir.join("spots/B4_selection.tsv"), &dir.join("counts/B4.tsv.gz"), &TableOptions::default())
        .unwrap();
    assert_eq!((d.counts.rows, d.counts.cols), (283, 15289));
    assert_eq!(d.counts.data.iter().map(|&v| v as f64).sum::<f64>(), 935146.0);
    assert_eq!(d.barcodes[0], "10x14");
    // pixel_x / pixel_y kept in stored (x, y) order; the selection file has one spot more
    let rc = d.row_col(true);
    assert!(rc.iter().all(|p| p[0] > 1000.0 && p[1] > 1000.0));
    assert_eq!(d.warnings.len(), 1);
}

#[test]
fn reference_config_with_lists_and_reference_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.json");
    let a = fixture("readers/x_csr.h5ad");
    let b = fixture("readers/visium_mtx_plain");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "settings": {"root_path": "./experiments", "project": "P"},
            "sections": [
                {"name": "A", "image_path": "a.tif", "adata_path": a},
                {"name": "B", "image_path": "b.tif", "visium_path": b}
            ],
            "paras": {"scale_rate": [1, 2], "radius": 50, "reference": {"B": "A"}, "rank": 10}
        })
        .to_string(),
    )
    .unwrap();
    let c = read_config(&cfg).unwrap();
    assert_eq!(c.project.as_deref(), Some("P"));
    assert_eq!(c.sections.len(), 2);
    assert_eq!(c.sections[1].scale_rate, 2.0);
    assert_eq!(c.sections[0].radius, Some(50.0));
    assert_eq!(c.reference, vec![("B".to_string(), "A".to_string())]);
    assert_eq!(c.paras["rank"], 10);
    let d = c.sections[1].load(&TableOptions::default()).unwrap();
    assert_matches_expected(&d);
}
