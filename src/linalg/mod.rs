//! Small dense linear algebra the CPU stages need: GEMM through `matrixmultiply`, sparse ×
//! dense products, Gram–Schmidt, a symmetric eigen solver for small matrices and a
//! randomised truncated SVD.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::io::sparse::Csr;

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
}
