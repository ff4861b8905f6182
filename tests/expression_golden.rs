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
