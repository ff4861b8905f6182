//! Expression preprocessing, highly variable genes and Moran's I against scanpy/squidpy
//! outputs of the published pipeline (tests/fixtures/preprocess, tools/make_preprocess_fixtures.py).
mod common;

use common::{fixture, read_npy};
use spahdmap::io::spots::load_visium;
use spahdmap::preprocess::expression::{highly_variable_seurat, preprocess_expression};
use spahdmap::preprocess::svg::{grid_neighbors, morans_i};

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("preprocess/reference.json")).unwrap()).unwrap()
}

#[test]
fn normalised_expression_hvg_and_morans_i_match() {
    let d = load_visium(&fixture("preprocess/section")).unwrap();
    let e = preprocess_expression(&d, None, None).unwrap();
    let r = reference();
    let genes: Vec<String> = serde_json::from_value(r["genes"].clone()).unwrap();
    let spots: Vec<String> = serde_json::from_value(r["spots"].clone()).unwrap();
    assert_eq!(e.genes, genes);
    assert_eq!(e.barcodes, spots);
    assert!(e.normalised_here);

    let (shape, want) = read_npy::<f32>(&fixture("preprocess/normalized.npy"));
    assert_eq!((shape[0] as usize, shape[1] as usize), (e.x.rows, e.x.cols));
    let got = e.x.to_dense();
    let num: f64 = got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    eprintln!("normalised expression relative error {:e}", num / den);
    assert!(num / den < 1e-6);

    let hv = highly_variable_seurat(&e.x, 50);
    let ours: Vec<&String> = e.genes.iter().zip(&hv).filter(|(_, h)| **h).map(|(g, _)| g).collect();
    let theirs: Vec<String> = serde_json::from_value(r["hvg"].clone()).unwrap();
    assert_eq!(ours, theirs.iter().collect::<Vec<_>>());

    let rc = d.row_col(true);
    let coords: Vec<[f64; 2]> = e.kept_spots.iter().map(|&i| rc[i]).collect();
    let w = grid_neighbors(&coords, 6);
    assert_eq!(w.nnz() as u64, r["spatial_neighbors"]["n_edges"].as_u64().unwrap());
    let mi = morans_i(&e.x, &w);
    let (_, want) = read_npy::<f64>(&fixture("preprocess/moran_I.npy"));
    let worst = mi
        .iter()
        .zip(&want)
        .map(|(a, b)| if a.is_nan() && b.is_nan() { 0.0 } else { (a - b).abs() })
        .fold(0.0, f64::max);
    eprintln!("Moran's I max abs diff {worst:e}");
    assert!(worst < 1e-6, "{worst}");
}

#[test]
fn sparkx_and_bsp_p_values_match() {
    use spahdmap::preprocess::svg::{bsp, sparkx};
    let d = load_visium(&fixture("preprocess/section")).unwrap();
    let e = preprocess_expression(&d, None, None).unwrap();
    let rc = d.row_col(true);
    let coords: Vec<[f64; 2]> = e.kept_spots.iter().map(|&i| rc[i]).collect();

    // SPARK-X: the package's pipeline with the λ·χ²₂ tail in closed form must agree
    // exactly; the package as published integrates that tail numerically (accuracy 1e-4),
    // which garbles very small p-values, so against it only the ranking is compared
    let got = sparkx(&e.x, &coords);
    let (_, exact) = read_npy::<f64>(&fixture("preprocess/sparkx_p_exact_tail.npy"));
    // relative in log p (p reaches 1e-300 here)
    let worst = got
        .iter()
        .zip(&exact)
        .filter(|(a, b)| **a > 0.0 && **b > 0.0)
        .map(|(a, b)| (a.ln() - b.ln()).abs() / (1.0 + b.ln().abs()))
        .fold(0.0, f64::max);
    eprintln!("SPARK-X: max relative log-p difference against the exact-tail reference {worst:e}");
    assert!(worst < 1e-5, "{worst}");
    assert_eq!(got.iter().filter(|v| **v == 0.0).count(), exact.iter().filter(|v| **v == 0.0).count());
    let (_, published) = read_npy::<f64>(&fixture("preprocess/sparkx_p.npy"));
    let rank = |v: &[f64]| {
        let mut o: Vec<usize> = (0..v.len()).collect();
        o.sort_by(|&a, &b| v[a].partial_cmp(&v[b]).unwrap());
        let mut r = vec![0f64; v.len()];
        for (i, &k) in o.iter().enumerate() {
            r[k] = i as f64;
        }
        r
    };
    let (ra, rb) = (rank(&got), rank(&published));
    let n = ra.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(a, b)| (a - b).powi(2)).sum();
    let spearman = 1.0 - 6.0 * d2 / (n * (n * n - 1.0));
    eprintln!("SPARK-X: Spearman correlation with the published package {spearman:.4}");
    assert!(spearman > 0.95, "{spearman}");

    let got = bsp(&e.x, &coords);
    let diff = |f: &str| {
        let (_, want) = read_npy::<f64>(&fixture(f));
        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    };
    let (exact, published) = (diff("preprocess/bsp_p_f64.npy"), diff("preprocess/bsp_p.npy"));
    eprintln!("BSP p-values: max abs difference {exact:e} (float64 reference), {published:e} (as published, float32)");
    assert!(exact < 1e-6 && published < 1e-3, "{exact} {published}");
}

#[test]
fn moran_selection_matches_the_reference_ranking() {
    use spahdmap::preprocess::svg::top_by_mean;
    let d = load_visium(&fixture("preprocess/section")).unwrap();
    let e = preprocess_expression(&d, None, None).unwrap();
    let rc = d.row_col(true);
    let coords: Vec<[f64; 2]> = e.kept_spots.iter().map(|&i| rc[i]).collect();
    let ours = morans_i(&e.x, &grid_neighbors(&coords, 6));
    let (_, theirs) = read_npy::<f64>(&fixture("preprocess/moran_I.npy"));
    for n in [10, 30, 60] {
        assert_eq!(
            top_by_mean(std::slice::from_ref(&ours), n),
            top_by_mean(std::slice::from_ref(&theirs), n),
            "top {n}"
        );
    }
}
