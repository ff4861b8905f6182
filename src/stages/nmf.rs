//! Spot-level NMF (SPEC §5): X (N×G) ≈ W (N×R) · H (R×G) on the Frobenius loss, NNDSVD
//! initialisation, coordinate descent as scikit-learn's `cd` solver runs it (each row of W,
//! then each column of H, updated component by component from the Gram matrices; stop when
//! the projected-gradient violation falls below tol × its first value, or after max_iter),
//! then column-max normalisation. Transfer mode solves W ≥ 0 for given metagenes; several
//! sections with references shift query scores and initialise the gene offsets gamma.

use rayon::prelude::*;

use crate::io::sparse::Csr;
use crate::linalg::narrow::narrow_gemm;
use crate::linalg::{dense_f32_times, gemm, gram, spmm, transpose, truncated_svd};

#[derive(Debug, Clone, serde::Serialize)]
pub struct NmfSettings {
    pub rank: usize,
    pub max_iter: usize,
    pub tol: f64,
    pub seed: u64,
}

impl Default for NmfSettings {
    fn default() -> Self {
        NmfSettings { rank: 20, max_iter: 2000, tol: 1e-4, seed: 0 }
    }
}

/// W (N×R) and H (R×G), row-major.
#[derive(Debug, Clone)]
pub struct Factors {
    pub rank: usize,
    pub w: Vec<f64>,
    pub h: Vec<f64>,
    pub iterations: usize,
}

/// NNDSVD initialisation (Boutsidis & Gallopoulos), zeros below 1e-6 as scikit-learn.
pub fn nndsvd(x: &Csr, xt: &Csr, rank: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let (n, g) = (x.rows, x.cols);
    let (u, s, v) = truncated_svd(x, xt, rank, 7, seed);
    let mut w = vec![0f64; n * rank];
    let mut h = vec![0f64; rank * g];
    for i in 0..n {
        w[i * rank] = s[0].sqrt() * u[i * rank].abs();
    }
    for j in 0..g {
        h[j] = s[0].sqrt() * v[j].abs();
    }
    let norm = |it: &mut dyn Iterator<Item = f64>| it.map(|a| a * a).sum::<f64>().sqrt();
    for t in 1..rank {
        let xcol: Vec<f64> = (0..n).map(|i| u[i * rank + t]).collect();
        let yrow = &v[t * g..(t + 1) * g];
        let (xp, xn) = (norm(&mut xcol.iter().map(|&a| a.max(0.0))), norm(&mut xcol.iter().map(|&a| (-a).max(0.0))));
        let (yp, yn) = (norm(&mut yrow.iter().map(|&a| a.max(0.0))), norm(&mut yrow.iter().map(|&a| (-a).max(0.0))));
        let (mp, mn) = (xp * yp, xn * yn);
        let (sign, xn_, yn_, sigma) = if mp > mn { (1.0, xp, yp, mp) } else { (-1.0, xn, yn, mn) };
        let lbd = (s[t] * sigma).sqrt();
        for i in 0..n {
            let a = (sign * xcol[i]).max(0.0);
            w[i * rank + t] = if xn_ > 0.0 { lbd * a / xn_ } else { 0.0 };
        }
        for j in 0..g {
            let b = (sign * yrow[j]).max(0.0);
            h[t * g + j] = if yn_ > 0.0 { lbd * b / yn_ } else { 0.0 };
        }
    }
    w.iter_mut().chain(h.iter_mut()).for_each(|a| {
        if *a < 1e-6 {
            *a = 0.0
        }
    });
    (w, h)
}

/// One coordinate-descent sweep over the rows of A (m×R) for fixed B: minimises
/// ‖Y − A Bᵀ‖ with YB = Y·B (m×R) and BtB = BᵀB (R×R). Returns the projected-gradient
/// violation.
fn cd_sweep(a: &mut [f64], yb: &[f64], btb: &[f64], r: usize) -> f64 {
    a.par_chunks_mut(r)
        .zip(yb.par_chunks(r))
        .map(|(ai, ybi)| {
            let mut viol = 0.0;
            for t in 0..r {
                let mut grad = -ybi[t];
                for q in 0..r {
                    grad += btb[t * r + q] * ai[q];
                }
                let pg = if ai[t] == 0.0 { grad.min(0.0) } else { grad };
                viol += pg.abs();
                let hess = btb[t * r + t];
                if hess != 0.0 {
                    ai[t] = (ai[t] - grad / hess).max(0.0);
                }
            }
            viol
        })
        .sum()
}

/// X as the products need it: sparse (with its transpose), or dense f32 with its transpose
/// when a quarter or more of it is non-zero, where streaming it through a vectorised
/// narrow product beats indirect indexing.
enum Operand {
    Sparse(Csr),
    Dense { x: Vec<f32>, xt: Vec<f32> },
}

impl Operand {
    /// X · M (M: cols × r)
    fn times(&self, x: &Csr, m: &[f64], r: usize) -> Vec<f64> {
        match self {
            Operand::Sparse(_) => spmm(x, m, r),
            Operand::Dense { x: d, .. } => dense_times(d, x.rows, x.cols, m, r),
        }
    }
    /// Xᵀ · M (M: rows × r)
    fn t_times(&self, x: &Csr, m: &[f64], r: usize) -> Vec<f64> {
        match self {
            Operand::Sparse(xt) => spmm(xt, m, r),
            Operand::Dense { xt, .. } => dense_times(xt, x.cols, x.rows, m, r),
        }
    }
}

/// Dense f32 X (rows × cols) times f64 M (cols × r) in single precision, as scikit-learn
/// runs float32 data through BLAS.
fn dense_times(x: &[f32], rows: usize, cols: usize, m: &[f64], r: usize) -> Vec<f64> {
    if r <= 32 {
        let mf: Vec<f32> = m.iter().map(|&v| v as f32).collect();
        narrow_gemm(x, rows, cols, &mf, r).into_iter().map(|v| v as f64).collect()
    } else {
        dense_f32_times(x, rows, cols, m, r, false)
    }
}

/// Factorise X (spots × genes).
pub fn nmf(x: &Csr, s: &NmfSettings) -> Factors {
    let r = s.rank.min(x.rows).min(x.cols).max(1);
    let xt = x.transpose();
    let (mut w, h) = nndsvd(x, &xt, r, s.seed);
    let op = if x.nnz() * 4 >= x.rows * x.cols {
        let d = x.to_dense();
        let t = transpose(&d, x.rows, x.cols);
        Operand::Dense { x: d, xt: t }
    } else {
        Operand::Sparse(xt)
    };
    let mut ht = transpose(&h, r, x.cols); // G × R
    let mut first = None;
    let mut iterations = 0;
    for it in 1..=s.max_iter {
        iterations = it;
        // W step: X Hᵀ and H Hᵀ
        let xht = op.times(x, &ht, r);
        let hht = gram(x.cols, r, &ht);
        let mut viol = cd_sweep(&mut w, &xht, &hht, r);
        // H step on the transposed problem: Xᵀ W and Wᵀ W
        let xtw = op.t_times(x, &w, r);
        let wtw = gram(x.rows, r, &w);
        viol += cd_sweep(&mut ht, &xtw, &wtw, r);
        let v0 = *first.get_or_insert(viol);
        if v0 == 0.0 || viol / v0 <= s.tol {
            break;
        }
    }
    Factors { rank: r, w, h: transpose(&ht, x.cols, r), iterations }
}

/// ‖X − W H‖_F without forming W H.
pub fn reconstruction_error(x: &Csr, f: &Factors) -> f64 {
    let (n, g, r) = (x.rows, x.cols, f.rank);
    let xx: f64 = x.data.iter().map(|&v| (v as f64).powi(2)).sum();
    let ht = transpose(&f.h, r, g);
    let xht = spmm(x, &ht, r);
    let cross: f64 = xht.iter().zip(&f.w).map(|(a, b)| a * b).sum();
    let wtw = gram(n, r, &f.w);
    let hht = gram(g, r, &ht);
    let quad: f64 = wtw.iter().zip(&hht).map(|(a, b)| a * b).sum();
    (xx - 2.0 * cross + quad).max(0.0).sqrt()
}

/// Scores for given metagenes H (R×G): min ‖X − W H‖ over W ≥ 0 (transfer mode).
pub fn transfer_scores(x: &Csr, h: &[f64], rank: usize) -> Vec<f64> {
    let ht = transpose(h, rank, x.cols);
    nnls_rows(&spmm(x, &ht, rank), &gram(x.cols, rank, &ht), rank)
}

/// Non-negative least squares for many right-hand sides sharing one design B: each row a_i
/// of A minimises ‖y_i − B a_i‖ over a_i ≥ 0, given Y·B (rows × R) and BᵀB (R × R). Coordinate
/// descent to convergence (the problem is convex, so this is the NNLS optimum that SciPy's
/// active-set `nnls` finds).
pub fn nnls_rows(yb: &[f64], btb: &[f64], rank: usize) -> Vec<f64> {
    let mut a = vec![0f64; yb.len()];
    let mut first = None;
    for _ in 0..10_000 {
        let v = cd_sweep(&mut a, yb, btb, rank);
        let v0 = *first.get_or_insert(v);
        if v0 == 0.0 || v / v0 <= 1e-10 {
            break;
        }
    }
    a
}

/// Divide each column of W by its maximum and scale the rows of H by it (SPEC §5).
pub fn normalise(f: &mut Factors, n: usize, g: usize) {
    let r = f.rank;
    for t in 0..r {
        let m = (0..n).map(|i| f.w[i * r + t]).fold(0.0, f64::max);
        if m > 0.0 {
            (0..n).for_each(|i| f.w[i * r + t] /= m);
            (0..g).for_each(|j| f.h[t * g + j] *= m);
        }
    }
}

/// Batch offsets for `(query, reference)` section pairs (SPEC §5): the query's scores are
/// shifted by the difference of column means (negatives clipped to 0), and its gamma row
/// starts at beta · H. `scores[k]` is section k's N_k × R block; returns gamma (pairs × G).
pub fn reference_shift(scores: &mut [Vec<f64>], pairs: &[(usize, usize)], h: &[f64], r: usize, g: usize) -> Vec<f64> {
    let mean = |s: &[f64]| -> Vec<f64> {
        let n = (s.len() / r).max(1) as f64;
        (0..r).map(|t| s.iter().skip(t).step_by(r).sum::<f64>() / n).collect()
    };
    // every beta from the unshifted scores, as the reference keeps a copy
    let betas: Vec<Vec<f64>> = pairs
        .iter()
        .map(|&(q, refr)| mean(&scores[q]).iter().zip(mean(&scores[refr])).map(|(a, b)| a - b).collect())
        .collect();
    let mut gamma = vec![0f64; pairs.len() * g];
    for (p, (&(q, _), beta)) in pairs.iter().zip(&betas).enumerate() {
        for row in scores[q].chunks_mut(r) {
            for t in 0..r {
                row[t] = (row[t] - beta[t]).max(0.0);
            }
        }
        let mut gr = vec![0f64; g];
        gemm(1, r, g, beta, h, &mut gr);
        gamma[p * g..(p + 1) * g].copy_from_slice(&gr);
    }
    gamma
}
