//! Y = X · M for a tall dense X (rows × cols, f32) and a narrow M (cols × n, n ≤ 32): the
//! products of NMF's coordinate descent (n = rank). A general GEMM packs X on every call;
//! here X streams through once per product, each 4-row block of Y kept in vector registers
//! while M (a few hundred kB) stays in cache. AVX2 + FMA when the CPU has them, else a
//! portable loop the compiler vectorises.

use rayon::prelude::*;

/// Rows of Y per parallel task (fixed, so results do not depend on the thread count).
const TASK_ROWS: usize = 64;

/// Y (rows × n, row-major) = X (rows × cols, row-major) · M (cols × n, row-major).
pub fn narrow_gemm(x: &[f32], rows: usize, cols: usize, m: &[f32], n: usize) -> Vec<f32> {
    assert!(x.len() >= rows * cols && m.len() >= cols * n);
    let lanes = n.div_ceil(8).max(1);
    let np = 8 * lanes;
    // M padded to a multiple of 8 columns
    let mut mp = vec![0f32; cols * np];
    for k in 0..cols {
        mp[k * np..k * np + n].copy_from_slice(&m[k * n..(k + 1) * n]);
    }
    let mut yp = vec![0f32; rows * np];
    yp.par_chunks_mut(TASK_ROWS * np).enumerate().for_each(|(t, yy)| {
        let r0 = t * TASK_ROWS;
        let nr = yy.len() / np;
        let xs = &x[r0 * cols..(r0 + nr) * cols];
        #[cfg(target_arch = "x86_64")]
        {
            if n <= 32 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked above); slices are sized
                // nr × cols, cols × np and nr × np.
                unsafe {
                    match lanes {
                        1 => avx2::block::<1, 4>(xs, nr, cols, &mp, yy),
                        2 => avx2::block::<2, 4>(xs, nr, cols, &mp, yy),
                        3 => avx2::block::<3, 4>(xs, nr, cols, &mp, yy),
                        _ => avx2::block::<4, 2>(xs, nr, cols, &mp, yy),
                    }
                }
                return;
            }
        }
        portable(xs, nr, cols, &mp, np, yy);
    });
    if np == n {
        return yp;
    }
    let mut y = vec![0f32; rows * n];
    for (dst, src) in y.chunks_mut(n.max(1)).zip(yp.chunks(np)) {
        dst.copy_from_slice(&src[..n]);
    }
    y
}

fn portable(x: &[f32], rows: usize, cols: usize, m: &[f32], np: usize, y: &mut [f32]) {
    for i in 0..rows {
        let yi = &mut y[i * np..(i + 1) * np];
        yi.fill(0.0);
        for k in 0..cols {
            let v = x[i * cols + k];
            if v != 0.0 {
                for (a, &b) in yi.iter_mut().zip(&m[k * np..(k + 1) * np]) {
                    *a += v * b;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Y rows in blocks of R, V vectors of 8 columns each; accumulators stay in registers.
    /// (A separate loop for the last partial block measured slower: the row guard below
    /// costs less than what it does to register allocation.)
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block<const V: usize, const R: usize>(x: &[f32], rows: usize, cols: usize, m: &[f32], y: &mut [f32]) {
        let np = 8 * V;
        let mut i = 0;
        while i < rows {
            let nr = R.min(rows - i);
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            let xp = x.as_ptr().add(i * cols);
            for k in 0..cols {
                let mk = m.as_ptr().add(k * np);
                let mut mv = [_mm256_setzero_ps(); V];
                for v in 0..V {
                    mv[v] = _mm256_loadu_ps(mk.add(8 * v));
                }
                for r in 0..R {
                    if r < nr {
                        let xv = _mm256_set1_ps(*xp.add(r * cols + k));
                        for v in 0..V {
                            acc[r][v] = _mm256_fmadd_ps(xv, mv[v], acc[r][v]);
                        }
                    }
                }
            }
            for r in 0..nr {
                for v in 0..V {
                    _mm256_storeu_ps(y.as_mut_ptr().add((i + r) * np + 8 * v), acc[r][v]);
                }
            }
            i += R;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_a_direct_product_for_every_width() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for (rows, cols) in [(1, 1), (7, 13), (131, 70)] {
            for n in [1, 5, 8, 20, 24, 31, 32] {
                let x: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let m: Vec<f32> = (0..cols * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let y = narrow_gemm(&x, rows, cols, &m, n);
                let mut e = vec![0f32; rows * n];
                portable(&x, rows, cols, &m, n, &mut e);
                for (a, b) in y.iter().zip(&e) {
                    assert!((a - b).abs() < 1e-4, "{rows}x{cols}x{n}: {a} vs {b}");
                }
            }
        }
    }
}
