//! The spot graph, the GCN autoencoder, the mixture filter and the metagene refinement
//! against the published package (tests/fixtures/gcn, tools/make_gcn_fixtures.py).
mod common;

use common::{fixture, read_npy};
use spahdmap::io::sparse::Csr;
use spahdmap::linalg::gemm;
use spahdmap::stages::gcn::{train_gcn, Gcn, GcnParams, GcnSettings};
use spahdmap::stages::gmm::filter_scores;
use spahdmap::stages::graph::{spot_graph, GraphMode};
use spahdmap::stages::nmf::nnls_rows;

fn f32s(name: &str) -> Vec<f32> {
    read_npy::<f32>(&fixture(&format!("gcn/{name}.npy"))).1
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn params(prefix: &str) -> GcnParams {
    GcnParams {
        pseudo: f32s(&format!("{prefix}_pseudo")),
        w: [1, 2, 3, 4].map(|l| f32s(&format!("{prefix}_w{l}"))),
        b: [1, 2, 3, 4].map(|l| f32s(&format!("{prefix}_b{l}"))),
    }
}

fn inputs() -> (Csr, Vec<f32>, usize, usize) {
    let (shape, score) = read_npy::<f32>(&fixture("gcn/score.npy"));
    let (n, r) = (shape[0] as usize, shape[1] as usize);
    let indptr: Vec<usize> = read_npy::<i64>(&fixture("gcn/adj_indptr.npy")).1.iter().map(|&v| v as usize).collect();
    let total = indptr.len() - 1;
    let indices: Vec<u32> = read_npy::<i64>(&fixture("gcn/adj_indices.npy")).1.iter().map(|&v| v as u32).collect();
    let adj = Csr { rows: total, cols: total, indptr, indices, data: f32s("adj_data") };
    (adj, score, n, r)
}

#[test]
fn graph_reproduces_the_reference_adjacency() {
    let (want, _, n, _) = inputs();
    let (cshape, c) = read_npy::<f64>(&fixture("gcn/coords.npy"));
    let coords: Vec<[f64; 2]> = c.chunks(2).map(|p| [p[0], p[1]]).collect();
    let (eshape, emb) = read_npy::<f32>(&fixture("gcn/embeddings.npy"));
    assert_eq!(cshape[0], eshape[0]);
    let got = spot_graph(&coords, &emb, eshape[1] as usize, n, 50, GraphMode::Exact);
    assert_eq!(got.indptr, want.indptr);
    assert_eq!(got.indices, want.indices);
    assert_eq!(got.data, want.data);
}

#[test]
fn forward_and_gradients_match_pytorch_at_initialisation() {
    let (adj, score, n, r) = inputs();
    let p = params("init");
    let out = Gcn::predict(&adj, n, &p, &score);
    let e = rel(&out, &f32s("init_output"));
    eprintln!("forward relative error {e:e}");
    assert!(e < 1e-5, "forward: {e}");
    let mut gcn = Gcn::new(&adj, n, r);
    let mut g = p.clone();
    let loss = gcn.loss_and_grad(&p, &score, &mut g);
    let want = read_npy::<f64>(&fixture("gcn/init_loss.npy")).1[0];
    assert!((loss - want).abs() < 1e-5 * want, "loss {loss} vs {want}");
    let e = rel(&g.pseudo, &f32s("grad_pseudo"));
    eprintln!("loss {loss} vs {want}; pseudo-score gradient relative error {e:e}");
    assert!(e < 1e-4, "pseudo grad {e}");
    for l in 0..4 {
        let ew = rel(&g.w[l], &f32s(&format!("grad_w{}", l + 1)));
        let eb = rel(&g.b[l], &f32s(&format!("grad_b{}", l + 1)));
        eprintln!("layer {}: weight gradient {ew:e}, bias gradient {eb:e}", l + 1);
        assert!(ew < 1e-4 && eb < 1e-4, "layer {}: w {ew}, b {eb}", l + 1);
    }
    // fewer rows than the whole graph do the work of a training step
    let sizes = gcn.plan_sizes();
    assert_eq!(sizes[4], n);
    assert!(sizes[3] < adj.rows);
}

#[test]
fn forty_adam_steps_match_pytorch() {
    let (adj, score, n, _) = inputs();
    let s = GcnSettings { iterations: 40, ..Default::default() };
    let res = train_gcn(&adj, &score, n, params("init"), &s, |_, _| {});
    let want = params("trained");
    let e = rel(&res.params.pseudo, &want.pseudo);
    eprintln!("after 40 steps: pseudo scores {e:e}");
    assert!(e < 1e-4, "pseudo {e}");
    for l in 0..4 {
        let (ew, eb) = (rel(&res.params.w[l], &want.w[l]), rel(&res.params.b[l], &want.b[l]));
        eprintln!("after 40 steps: layer {} weights {ew:e}, bias {eb:e}", l + 1);
        assert!(ew < 1e-4 && eb < 1e-4, "layer {}: w {ew}, b {eb}", l + 1);
    }
    let e = rel(&res.output, &f32s("trained_output"));
    eprintln!("after 40 steps: output {e:e}");
    assert!(e < 1e-4, "output {e}");
    assert!(res.losses.last() < res.losses.first());
    // same inputs, same thread count: bit-identical
    let again = train_gcn(&adj, &score, n, params("init"), &s, |_, _| {});
    assert_eq!(again.output, res.output);
}

#[test]
fn mixture_filter_and_metagene_refinement_match_the_package() {
    let (_, _, n, r) = inputs();
    let mut s = f32s("trained_output");
    filter_scores(&mut s, r, true);
    let want = f32s("filtered");
    let differ = s.iter().zip(&want).filter(|(a, b)| a != b).count();
    eprintln!("filter: {differ} of {} values differ", s.len());
    assert!(differ * 200 <= s.len(), "{differ} values differ");
    assert!(s.iter().filter(|&&v| v > 0.0).count() > s.len() / 10, "filter kept almost nothing");

    // NNLS of the expression on the package's filtered sequenced scores
    let (xs, x) = read_npy::<f32>(&fixture("gcn/expression.npy"));
    let g = xs[1] as usize;
    let sc: Vec<f64> = want[..n * r].iter().map(|&v| v as f64).collect();
    let mut st = vec![0f64; r * n];
    for i in 0..n {
        for t in 0..r {
            st[t * n + i] = sc[i * r + t];
        }
    }
    let mut gram = vec![0f64; r * r];
    gemm(r, n, r, &st, &sc, &mut gram);
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut xts = vec![0f64; r * g]; // (Sᵀ X) R × G
    gemm(r, n, g, &st, &xf, &mut xts);
    let rhs: Vec<f64> = (0..g * r).map(|i| xts[(i % r) * g + i / r]).collect(); // G × R
    let c = nnls_rows(&rhs, &gram, r);
    let want_c = read_npy::<f64>(&fixture("gcn/metagene.npy")).1;
    let num: f64 = c.iter().zip(&want_c).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = want_c.iter().map(|b| b * b).sum();
    eprintln!("refined metagenes relative error {:e}", (num / den).sqrt());
    assert!((num / den).sqrt() < 1e-5, "metagenes {}", (num / den).sqrt());
}
