//! NMF against scikit-learn as the package calls it (tests/fixtures/nmf, tools/make_nmf_fixtures.py).
mod common;

use common::{fixture, read_npy};
use spahdmap::io::sparse::Csr;
use spahdmap::stages::nmf::{nmf, normalise, reconstruction_error, reference_shift, transfer_scores, NmfSettings};

fn expression() -> Csr {
    let (shape, x) = read_npy::<f32>(&fixture("preprocess/normalized.npy"));
    Csr::from_dense(shape[0] as usize, shape[1] as usize, &x)
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("nmf/reference.json")).unwrap()).unwrap()
}

#[test]
fn reconstruction_error_within_one_percent_of_sklearn() {
    let x = expression();
    for rank in [4usize, 10] {
        let f = nmf(&x, &NmfSettings { rank, ..Default::default() });
        let ours = reconstruction_error(&x, &f);
        let theirs = reference()["ranks"][rank.to_string()]["reconstruction_err"].as_f64().unwrap();
        eprintln!("rank {rank}: error {ours:.4} vs scikit-learn {theirs:.4} ({} iterations)", f.iterations);
        assert!(ours <= theirs * 1.01, "rank {rank}: {ours} vs {theirs}");
        assert!(f.w.iter().chain(&f.h).all(|&v| v >= 0.0));
        // same seed, same factors
        let again = nmf(&x, &NmfSettings { rank, ..Default::default() });
        assert_eq!(again.w, f.w);
    }
}

#[test]
fn normalisation_keeps_the_product_and_scales_columns_to_one() {
    let x = expression();
    let mut f = nmf(&x, &NmfSettings { rank: 4, max_iter: 200, ..Default::default() });
    let before = reconstruction_error(&x, &f);
    normalise(&mut f, x.rows, x.cols);
    assert!((reconstruction_error(&x, &f) - before).abs() < 1e-6 * before);
    for t in 0..4 {
        let m = (0..x.rows).map(|i| f.w[i * 4 + t]).fold(0.0, f64::max);
        assert!((m - 1.0).abs() < 1e-12);
    }
}

#[test]
fn transfer_matches_non_negative_least_squares() {
    let x = expression();
    let (gs, meta) = read_npy::<f64>(&fixture("nmf/metagene_rank4.npy")); // genes × rank
    let (g, r) = (gs[0] as usize, gs[1] as usize);
    let mut h = vec![0f64; r * g];
    for j in 0..g {
        for t in 0..r {
            h[t * g + j] = meta[j * r + t];
        }
    }
    let w = transfer_scores(&x, &h, r);
    let (_, want) = read_npy::<f64>(&fixture("nmf/transfer_scores_rank4.npy"));
    let num: f64 = w.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    eprintln!("transfer scores relative error {:e}", num / den);
    assert!(num / den < 1e-4);
}

#[test]
fn reference_shift_moves_query_means_onto_the_reference() {
    // two sections, rank 2, 3 genes
    let mut scores = vec![vec![1.0, 2.0, 3.0, 4.0], vec![2.0, 2.5, 2.0, 3.5, 5.0, 3.0]];
    let h = vec![1.0, 0.0, 2.0, 0.5, 1.0, 0.0];
    let gamma = reference_shift(&mut scores, &[(1, 0)], &h, 2, 3);
    // beta = mean(query) − mean(reference) = (3, 3) − (2, 3) = (1, 0)
    assert_eq!(scores[1], vec![1.0, 2.5, 1.0, 3.5, 4.0, 3.0]);
    assert_eq!(scores[0], vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(gamma, vec![1.0, 0.0, 2.0]);
}
