//! Small dense linear algebra the CPU stages need: GEMM through `matrixmultiply`, sparse ×
//! dense products, Gram–Schmidt, a symmetric eigen solver for small matrices and a
//! randomised truncated SVD.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::io::sparse::Csr;

pub mod narrow;

/// C (m×n) = A (m×k) · B (k×n), all row-major f64. Rows of C are split across threads.
pub fn gemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    let rows = (m / (4 * rayon::current_num_threads())).max(64);
    c.par_chunks_mut(rows * n).zip(a.par_chunks(rows * k)).for_each(|(cc, aa)| {
        let mm = cc.len() / n.max(1);
        // SAFETY: slices hold mm×k, k×n and mm×n elements with the strides given.
        unsafe {
            matrixmultiply::dgemm(
                mm,
                k,
                n,
                1.0,
                aa.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                cc.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    });
}

/// Y (rows × n) = X (rows × cols, dense f32 row-major) · M (cols × n, f64), or with
/// `transpose` Y (cols × n) = Xᵀ · M (rows × n). Single-precision GEMM (as scikit-learn runs
/// float32 data through BLAS), results widened to f64.
pub fn dense_f32_times(x: &[f32], rows: usize, cols: usize, m: &[f64], n: usize, transpose: bool) -> Vec<f64> {
    let mf: Vec<f32> = m.iter().map(|&v| v as f32).collect();
    let (out_rows, inner) = if transpose { (cols, rows) } else { (rows, cols) };
    // element (i, k) of the left operand: X[i][k] or X[k][i]
    let (rs, cs) = if transpose { (1isize, cols as isize) } else { (cols as isize, 1isize) };
    let mut y = vec![0f32; out_rows * n];
    let chunk = (out_rows / (4 * rayon::current_num_threads())).max(64);
    y.par_chunks_mut(chunk * n).enumerate().for_each(|(c, yy)| {
        let i0 = c * chunk;
        let mm = yy.len() / n.max(1);
        // SAFETY: rows i0..i0+mm of the (possibly transposed) view of X lie inside x; M is
        // inner × n; Y chunk is mm × n.
        unsafe {
            let a = x.as_ptr().offset(i0 as isize * rs);
            matrixmultiply::sgemm(
                mm,
                inner,
                n,
                1.0,
                a,
                rs,
                cs,
                mf.as_ptr(),
                n as isize,
                1,
                0.0,
                yy.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    });
    y.into_iter().map(|v| v as f64).collect()
}

/// The transpose of a row-major rows × cols matrix (cols × rows, row-major).
pub fn transpose<T: Copy + Default>(a: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// An f32 matrix operand: `rows × cols`, stored row-major, or (`transposed`) the transpose
/// of a row-major `cols × rows` buffer — so Aᵀ of a stored matrix costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        debug_assert!(data.len() >= rows * cols);
        Mat { data, rows, cols, transposed: false }
    }
    /// The transpose of this operand.
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, transposed: !self.transposed }
    }
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.rows as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// Rows of C per task, and the inner-dimension chunk of reductions: fixed sizes, so results
/// do not depend on the thread count.
const SGEMM_ROWS: usize = 128;
const SGEMM_SPLIT_K: usize = 2048;

/// C (m×n, row-major) = A·B + beta·C in f32. Long reductions with a short C (weight
/// gradients: m·n small, k = spots) are split along k, the partial products added in order.
pub fn sgemm(a: Mat, b: Mat, c: &mut [f32], beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "sgemm: inner dimensions");
    assert_eq!(c.len(), m * n, "sgemm: output size");
    let (rsa, csa) = a.strides();
    let (rsb, csb) = b.strides();
    // SAFETY (all calls): pointers offset within the operands' buffers; each task writes
    // its own disjoint block of C or its own partial buffer.
    if m >= 2 * SGEMM_ROWS || k <= 2 * SGEMM_SPLIT_K {
        c.par_chunks_mut(SGEMM_ROWS * n).enumerate().for_each(|(ci, cc)| {
            let mm = cc.len() / n.max(1);
            unsafe {
                let ap = a.data.as_ptr().offset((ci * SGEMM_ROWS) as isize * rsa);
                matrixmultiply::sgemm(
                    mm,
                    k,
                    n,
                    1.0,
                    ap,
                    rsa,
                    csa,
                    b.data.as_ptr(),
                    rsb,
                    csb,
                    beta,
                    cc.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        });
        return;
    }
    let parts: Vec<Vec<f32>> = (0..k.div_ceil(SGEMM_SPLIT_K))
        .into_par_iter()
        .map(|p| {
            let (k0, k1) = (p * SGEMM_SPLIT_K, ((p + 1) * SGEMM_SPLIT_K).min(k));
            let mut part = vec![0f32; m * n];
            unsafe {
                let ap = a.data.as_ptr().offset(k0 as isize * csa);
                let bp = b.data.as_ptr().offset(k0 as isize * rsb);
                matrixmultiply::sgemm(
                    m,
                    k1 - k0,
                    n,
                    1.0,
                    ap,
                    rsa,
                    csa,
                    bp,
                    rsb,
                    csb,
                    0.0,
                    part.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            part
        })
        .collect();
    for v in c.iter_mut() {
        *v = if beta == 0.0 { 0.0 } else { *v * beta };
    }
    for part in parts {
        for (v, p) in c.iter_mut().zip(part) {
            *v += p;
        }
    }
}

/// Aᵀ A for A (m×k) row-major: k×k.
pub fn gram(m: usize, k: usize, a: &[f64]) -> Vec<f64> {
    let mut g = vec![0f64; k * k];
    // SAFETY: A viewed as its transpose through strides; output k×k.
    unsafe {
        matrixmultiply::dgemm(
            k,
            m,
            k,
            1.0,
            a.as_ptr(),
            1,
            k as isize,
            a.as_ptr(),
            k as isize,
            1,
            0.0,
            g.as_mut_ptr(),
            k as isize,
            1,
        );
    }
    g
}

/// Y (rows × n) = X (rows × cols, sparse) · M (cols × n).
pub fn spmm(x: &Csr, m: &[f64], n: usize) -> Vec<f64> {
    let mut y = vec![0f64; x.rows * n];
    y.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, yi)| {
        let (idx, val) = x.row(i);
        for (&j, &v) in idx.iter().zip(val) {
            let mj = &m[j as usize * n..(j as usize + 1) * n];
            for (a, &b) in yi.iter_mut().zip(mj) {
                *a += v as f64 * b;
            }
        }
    });
    y
}

/// Orthonormalise the columns of Q (rows × k, row-major) in place (modified Gram–Schmidt).
pub fn orthonormalise(q: &mut [f64], rows: usize, k: usize) {
    for j in 0..k {
        for p in 0..j {
            let dot: f64 = (0..rows).map(|i| q[i * k + j] * q[i * k + p]).sum();
            for i in 0..rows {
                q[i * k + j] -= dot * q[i * k + p];
            }
        }
        let norm = (0..rows).map(|i| q[i * k + j].powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for i in 0..rows {
                q[i * k + j] /= norm;
            }
        }
    }
}

/// Eigen decomposition of a small symmetric matrix (cyclic Jacobi); eigenvalues descending,
/// eigenvectors as columns of the returned row-major matrix.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].partial_cmp(&a[i * n + i]).unwrap());
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vecs[k * n + new] = v[k * n + old];
        }
    }
    (vals, vecs)
}

/// Truncated SVD X ≈ U diag(S) V by randomised subspace iteration (Halko et al.) with
/// `power` iterations; U is rows × k, V is k × cols. Deterministic for a seed.
pub fn truncated_svd(x: &Csr, xt: &Csr, k: usize, power: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let l = (k + 10).min(x.rows.min(x.cols));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let omega: Vec<f64> = (0..x.cols * l).map(|_| rng.sample(StandardNormal)).collect();
    let mut q = spmm(x, &omega, l);
    orthonormalise(&mut q, x.rows, l);
    for _ in 0..power {
        let mut z = spmm(xt, &q, l);
        orthonormalise(&mut z, x.cols, l);
        q = spmm(x, &z, l);
        orthonormalise(&mut q, x.rows, l);
    }
    // B = Qᵀ X (l × cols), as (Xᵀ Q)ᵀ
    let bt = spmm(xt, &q, l); // cols × l
    let bbt = gram(x.cols, l, &bt); // l × l = B Bᵀ
    let (vals, vecs) = sym_eigen(&bbt, l);
    let s: Vec<f64> = vals.iter().take(k).map(|v| v.max(0.0).sqrt()).collect();
    // U = Q · vecs[:, :k]
    let mut u = vec![0f64; x.rows * k];
    for i in 0..x.rows {
        for j in 0..k {
            u[i * k + j] = (0..l).map(|p| q[i * l + p] * vecs[p * l + j]).sum();
        }
    }
    // V = diag(1/S) · vecsᵀ[:k] · B
    let mut v = vec![0f64; k * x.cols];
    for j in 0..k {
        if s[j] > 0.0 {
            for c in 0..x.cols {
                v[j * x.cols + c] = (0..l).map(|p| vecs[p * l + j] * bt[c * l + p]).sum::<f64>() / s[j];
            }
        }
    }
    (u, s, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svd_recovers_a_low_rank_matrix() {
        let (m, n, r) = (40, 30, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a: Vec<f64> = (0..m * r).map(|_| rng.random_range(0.0..1.0)).collect();
        let b: Vec<f64> = (0..r * n).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut d = vec![0f64; m * n];
        gemm(m, r, n, &a, &b, &mut d);
        let x = Csr::from_dense(m, n, &d.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let (u, s, v) = truncated_svd(&x, &x.transpose(), r, 4, 7);
        let mut rec = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                rec[i * n + j] = (0..r).map(|t| u[i * r + t] * s[t] * v[t * n + j]).sum();
            }
        }
        let err: f64 = rec.iter().zip(&d).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = d.iter().map(|b| b * b).sum::<f64>().sqrt();
        assert!(err / norm < 1e-5, "{}", err / norm);
        assert!(s[0] >= s[1] && s[1] >= s[2]);
    }

    #[test]
    fn gemm_and_gram_match_naive() {
        let (m, k, n) = (130, 7, 5);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
        let mut c = vec![0f64; m * n];
        gemm(m, k, n, &a, &b, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert_eq!(c[i * n + j], want);
            }
        }
        let g = gram(m, k, &a);
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..m).map(|p| a[p * k + i] * a[p * k + j]).sum();
                assert!((g[i * k + j] - want).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn sgemm_all_layouts_and_split_k() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for (m, k, n) in [(5, 7, 3), (300, 33, 17), (9, 5000, 4)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let at: Vec<f32> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect(); // k×m
            let bt: Vec<f32> = (0..k * n).map(|i| b[(i % k) * n + i / k]).collect(); // n×k
            let want: Vec<f64> = (0..m * n)
                .map(|i| (0..k).map(|q| a[(i / n) * k + q] as f64 * b[q * n + i % n] as f64).sum::<f64>() + 0.5)
                .collect();
            for (aa, bb) in
                [(Mat::new(&a, m, k), Mat::new(&b, k, n)), (Mat::new(&at, k, m).t(), Mat::new(&bt, n, k).t())]
            {
                let mut c = vec![1.0f32; m * n];
                sgemm(aa, bb, &mut c, 0.5);
                let err = c.iter().zip(&want).map(|(x, y)| (*x as f64 - y).powi(2)).sum::<f64>().sqrt()
                    / want.iter().map(|y| y * y).sum::<f64>().sqrt();
                assert!(err < 1e-5, "{m}x{k}x{n}: {err}");
            }
        }
    }
}
