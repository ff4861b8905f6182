//! Convolutions of the CPU backend, channels-last (N, H, W, C) f32, as GEMMs over gathered rows.
//!
//! Layout: activations NHWC, conv weights [ky][kx][ci][co] (K = k·k·Cin rows × Cout columns),
//! transposed-conv weights [ci][ky][kx][co]. Channels-last makes every gathered row a run of
//! contiguous channel vectors — the same layout the tensor-core implicit GEMM of the CUDA
//! backend reads (one pixel's channels = one contiguous K-slice) — and the weight layout is
//! the GEMM's B operand as is.
//!
//! Work is split in fixed blocks of output rows (not by thread count) and reductions (weight
//! gradients) add their partial sums in block order, so results are reproducible.

use rayon::prelude::*;

use crate::backend::{ConvSpec, Shape};
use crate::linalg::{sgemm, Mat};

/// Output pixels per GEMM block.
const BLOCK_PIXELS: usize = 1024;

fn rows_per_block(ow: usize) -> usize {
    (BLOCK_PIXELS / ow.max(1)).max(1)
}

/// Gather the k·k·Cin input values that output pixel (img, oy, ox) reads, zeros off the edge.
#[inline]
fn gather_row(x: &[f32], xs: Shape, s: &ConvSpec, img: usize, oy: usize, ox: usize, out: &mut [f32]) {
    let c = xs.c;
    for ky in 0..s.k {
        let iy = (oy * s.stride + ky) as isize - s.pad as isize;
        for kx in 0..s.k {
            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
            let dst = &mut out[(ky * s.k + kx) * c..(ky * s.k + kx + 1) * c];
            if iy < 0 || ix < 0 || iy >= xs.h as isize || ix >= xs.w as isize {
                dst.fill(0.0);
            } else {
                let at = ((img * xs.h + iy as usize) * xs.w + ix as usize) * c;
                dst.copy_from_slice(&x[at..at + c]);
            }
        }
    }
}

/// y = conv(x) (+ bias). `y` has shape (N, OH, OW, Cout).
pub fn conv2d(x: &[f32], xs: Shape, s: &ConvSpec, wt: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    conv2d_fused(x, xs, s, wt, bias, false, None, y)
}

/// y = leaky?(conv(x) + bias) + residual, the epilogue applied per block while it is in cache.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_fused(
    x: &[f32],
    xs: Shape,
    s: &ConvSpec,
    wt: &[f32],
    bias: Option<&[f32]>,
    leaky: bool,
    residual: Option<&[f32]>,
    y: &mut [f32],
) {
    assert_eq!(xs.c, s.cin);
    let (oh, ow) = s.out_hw(xs.h, xs.w);
    let kk = s.k * s.k * s.cin;
    let rows = rows_per_block(ow);
    let block_len = rows * ow * s.cout;
    y.par_chunks_mut(block_len).enumerate().for_each(|(b, yb)| {
        let first = b * rows; // global output row (img * oh + oy)
        let nrows = yb.len() / (ow * s.cout);
        let mut col = vec![0f32; nrows * ow * kk];
        for r in 0..nrows {
            let (img, oy) = ((first + r) / oh, (first + r) % oh);
            for ox in 0..ow {
                gather_row(x, xs, s, img, oy, ox, &mut col[(r * ow + ox) * kk..(r * ow + ox + 1) * kk]);
            }
        }
        if let Some(bv) = bias {
            for px in yb.chunks_mut(s.cout) {
                px.copy_from_slice(bv);
            }
        }
        let beta = if bias.is_some() { 1.0 } else { 0.0 };
        sgemm_serial(Mat::new(&col, nrows * ow, kk), Mat::new(wt, kk, s.cout), yb, beta);
        if leaky {
            super::act::leaky_relu_serial(yb);
        }
        if let Some(r) = residual {
            yb.iter_mut().zip(&r[b * block_len..]).for_each(|(a, b)| *a += b);
        }
    });
}

/// A GEMM on the calling thread (the callers already run one block per task).
fn sgemm_serial(a: Mat, b: Mat, c: &mut [f32], beta: f32) {
    // sgemm splits only when C has ≥ 256 rows and runs nested rayon tasks otherwise inline
    sgemm(a, b, c, beta);
}

/// Gradients of `conv2d`: dX (if asked), dW and dB (if asked) from dY. dW and dB are
/// overwritten.
#[allow(clippy::too_many_arguments)] // a backward pass takes its forward operands and every gradient
pub fn conv2d_backward(
    x: &[f32],
    xs: Shape,
    s: &ConvSpec,
    wt: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let (oh, ow) = s.out_hw(xs.h, xs.w);
    let kk = s.k * s.k * s.cin;
    let total_rows = xs.n * oh;
    let rows = rows_per_block(ow);
    // dW = Σ_blocks colᵀ · dY_block, partial sums added in block order
    let parts: Vec<Vec<f32>> = (0..total_rows.div_ceil(rows))
        .into_par_iter()
        .map(|b| {
            let first = b * rows;
            let nrows = rows.min(total_rows - first);
            let mut col = vec![0f32; nrows * ow * kk];
            for r in 0..nrows {
                let (img, oy) = ((first + r) / oh, (first + r) % oh);
                for ox in 0..ow {
                    gather_row(x, xs, s, img, oy, ox, &mut col[(r * ow + ox) * kk..(r * ow + ox + 1) * kk]);
                }
            }
            let dyb = &dy[first * ow * s.cout..(first + nrows) * ow * s.cout];
            let mut part = vec![0f32; kk * s.cout];
            sgemm_serial(Mat::new(&col, nrows * ow, kk).t(), Mat::new(dyb, nrows * ow, s.cout), &mut part, 0.0);
            part
        })
        .collect();
    dw.fill(0.0);
    for p in parts {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    if let Some(db) = db {
        db.fill(0.0);
        for px in dy.chunks(s.cout) {
            db.iter_mut().zip(px).for_each(|(a, b)| *a += b);
        }
    }
    if let Some(dx) = dx {
        conv2d_input_grad(dy, xs, s, wt, dx);
    }
}

/// dX[img, iy, ix, ci] = Σ_{ky, kx, co} dY[img, oy, ox, co] · W[ky, kx, ci, co] over the output
/// pixels (oy, ox) that read (iy, ix): for each input pixel, gather those dY vectors into a
/// row of k·k·Cout and multiply by Wᵀ blocks — a gather, so blocks never write the same dX.
fn conv2d_input_grad(dy: &[f32], xs: Shape, s: &ConvSpec, wt: &[f32], dx: &mut [f32]) {
    let (oh, ow) = s.out_hw(xs.h, xs.w);
    let kc = s.k * s.k * s.cout;
    // Wᵀ per tap: rows (ky, kx, co), columns ci
    let mut wtt = vec![0f32; kc * s.cin];
    for t in 0..s.k * s.k {
        for ci in 0..s.cin {
            for co in 0..s.cout {
                wtt[(t * s.cout + co) * s.cin + ci] = wt[(t * s.cin + ci) * s.cout + co];
            }
        }
    }
    let rows = rows_per_block(xs.w);
    dx.par_chunks_mut(rows * xs.w * s.cin).enumerate().for_each(|(b, dxb)| {
        let first = b * rows;
        let nrows = dxb.len() / (xs.w * s.cin);
        let mut col = vec![0f32; nrows * xs.w * kc];
        for r in 0..nrows {
            let (img, iy) = ((first + r) / xs.h, (first + r) % xs.h);
            for ix in 0..xs.w {
                let row = &mut col[(r * xs.w + ix) * kc..(r * xs.w + ix + 1) * kc];
                for ky in 0..s.k {
                    let ty = iy as isize + s.pad as isize - ky as isize;
                    for kx in 0..s.k {
                        let tx = ix as isize + s.pad as isize - kx as isize;
                        let dst = &mut row[(ky * s.k + kx) * s.cout..(ky * s.k + kx + 1) * s.cout];
                        let st = s.stride as isize;
                        let ok = ty >= 0
                            && tx >= 0
                            && ty % st == 0
                            && tx % st == 0
                            && ty / st < oh as isize
                            && tx / st < ow as isize;
                        if ok {
                            let at = ((img * oh + (ty / st) as usize) * ow + (tx / st) as usize) * s.cout;
                            dst.copy_from_slice(&dy[at..at + s.cout]);
                        } else {
                            dst.fill(0.0);
                        }
                    }
                }
            }
        }
        sgemm_serial(Mat::new(&col, nrows * xs.w, kc), Mat::new(&wtt, kc, s.cin), dxb, 0.0);
    });
}

/// ConvTranspose2d with kernel 2, stride 2 (no overlap): y[img, 2iy+ky, 2ix+kx, co] =
/// Σ_ci x[img, iy, ix, ci] · W[ci, ky, kx, co] + b[co]. `y` is (N, 2H, 2W, Cout).
pub fn conv_transpose2(x: &[f32], xs: Shape, cout: usize, wt: &[f32], bias: &[f32], y: &mut [f32]) {
    let (h, w, cin) = (xs.h, xs.w, xs.c);
    let rows = rows_per_block(w);
    let total = xs.n * h;
    let zs: Vec<(usize, Vec<f32>)> = (0..total.div_ceil(rows))
        .into_par_iter()
        .map(|b| {
            let first = b * rows;
            let nrows = rows.min(total - first);
            let xb = &x[first * w * cin..(first + nrows) * w * cin];
            let mut z = vec![0f32; nrows * w * 4 * cout];
            sgemm_serial(Mat::new(xb, nrows * w, cin), Mat::new(wt, cin, 4 * cout), &mut z, 0.0);
            (first, z)
        })
        .collect();
    let (oh, ow) = (2 * h, 2 * w);
    for (first, z) in zs {
        for (p, zp) in z.chunks(4 * cout).enumerate() {
            let (g, ix) = (first + p / w, p % w);
            let (img, iy) = (g / h, g % h);
            for ky in 0..2 {
                for kx in 0..2 {
                    let at = ((img * oh + 2 * iy + ky) * ow + 2 * ix + kx) * cout;
                    let src = &zp[(ky * 2 + kx) * cout..(ky * 2 + kx + 1) * cout];
                    for ((o, &v), &bv) in y[at..at + cout].iter_mut().zip(src).zip(bias) {
                        *o = v + bv;
                    }
                }
            }
        }
    }
}

/// Gradients of `conv_transpose2`; dW and dB are overwritten.
#[allow(clippy::too_many_arguments)] // a backward pass takes its forward operands and every gradient
pub fn conv_transpose2_backward(
    x: &[f32],
    xs: Shape,
    cout: usize,
    wt: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let (h, w, cin) = (xs.h, xs.w, xs.c);
    let (oh, ow) = (2 * h, 2 * w);
    let np = xs.n * h * w;
    // dZ (input pixels × 4·Cout): each input pixel's 2×2 block of dY
    let mut dz = vec![0f32; np * 4 * cout];
    dz.par_chunks_mut(4 * cout).enumerate().for_each(|(p, d)| {
        let (g, ix) = (p / w, p % w);
        let (img, iy) = (g / h, g % h);
        for ky in 0..2 {
            for kx in 0..2 {
                let at = ((img * oh + 2 * iy + ky) * ow + 2 * ix + kx) * cout;
                d[(ky * 2 + kx) * cout..(ky * 2 + kx + 1) * cout].copy_from_slice(&dy[at..at + cout]);
            }
        }
    });
    sgemm(Mat::new(x, np, cin).t(), Mat::new(&dz, np, 4 * cout), dw, 0.0);
    db.fill(0.0);
    for px in dy.chunks(cout) {
        db.iter_mut().zip(px).for_each(|(a, b)| *a += b);
    }
    if let Some(dx) = dx {
        sgemm(Mat::new(&dz, np, 4 * cout), Mat::new(wt, cin, 4 * cout).t(), dx, 0.0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn direct(x: &[f32], xs: Shape, s: &ConvSpec, wt: &[f32], bias: &[f32]) -> Vec<f64> {
        let (oh, ow) = s.out_hw(xs.h, xs.w);
        let mut y = vec![0f64; xs.n * oh * ow * s.cout];
        for img in 0..xs.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..s.cout {
                        let mut acc = bias[co] as f64;
                        for ky in 0..s.k {
                            for kx in 0..s.k {
                                let (iy, ix) = (
                                    (oy * s.stride + ky) as isize - s.pad as isize,
                                    (ox * s.stride + kx) as isize - s.pad as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= xs.h as isize || ix >= xs.w as isize {
                                    continue;
                                }
                                for ci in 0..s.cin {
                                    acc += x[((img * xs.h + iy as usize) * xs.w + ix as usize) * s.cin + ci] as f64
                                        * wt[((ky * s.k + kx) * s.cin + ci) * s.cout + co] as f64;
                                }
                            }
                        }
                        y[((img * oh + oy) * ow + ox) * s.cout + co] = acc;
                    }
                }
            }
        }
        y
    }

    fn rel(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
        (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
    }

    #[test]
    fn conv_forward_and_gradients_match_direct_sums() {
        for s in [
            ConvSpec { cin: 3, cout: 5, k: 3, stride: 1, pad: 1 },
            ConvSpec { cin: 4, cout: 6, k: 4, stride: 2, pad: 1 },
            ConvSpec { cin: 5, cout: 3, k: 1, stride: 1, pad: 0 },
        ] {
            let xs = Shape { n: 2, h: 9, w: 7, c: s.cin };
            let (oh, ow) = s.out_hw(xs.h, xs.w);
            let (x, wt, b) = (rnd(xs.len(), 1), rnd(s.weight_len(), 2), rnd(s.cout, 3));
            let mut y = vec![0f32; xs.n * oh * ow * s.cout];
            conv2d(&x, xs, &s, &wt, Some(&b), &mut y);
            assert!(rel(&y, &direct(&x, xs, &s, &wt, &b)) < 1e-6, "{s:?}");
            // gradients of L = Σ y ⊙ g, against the direct form differentiated by linearity
            let g = rnd(y.len(), 4);
            let (mut dx, mut dw, mut db) = (vec![0f32; x.len()], vec![0f32; wt.len()], vec![0f32; s.cout]);
            conv2d_backward(&x, xs, &s, &wt, &g, Some(&mut dx), &mut dw, Some(&mut db));
            let zero = vec![0f32; s.cout];
            let dot = |y: &[f64]| y.iter().zip(&g).map(|(a, b)| a * *b as f64).sum::<f64>();
            let want_dw: Vec<f64> = (0..wt.len())
                .map(|i| {
                    let mut e = vec![0f32; wt.len()];
                    e[i] = 1.0;
                    dot(&direct(&x, xs, &s, &e, &zero))
                })
                .collect();
            assert!(rel(&dw, &want_dw) < 1e-5, "dW {s:?}");
            let want_dx: Vec<f64> = (0..x.len())
                .map(|i| {
                    let mut e = vec![0f32; x.len()];
                    e[i] = 1.0;
                    dot(&direct(&e, xs, &s, &wt, &zero))
                })
                .collect();
            assert!(rel(&dx, &want_dx) < 1e-5, "dX {s:?}");
            let want_db: Vec<f64> =
                (0..s.cout).map(|c| g.iter().skip(c).step_by(s.cout).map(|&v| v as f64).sum()).collect();
            assert!(rel(&db, &want_db) < 1e-6);
        }
    }

    #[test]
    fn transposed_conv_and_its_gradients() {
        let (xs, cout) = (Shape { n: 2, h: 3, w: 4, c: 5 }, 3);
        let (x, wt, b) = (rnd(xs.len(), 5), rnd(xs.c * 4 * cout, 6), rnd(cout, 7));
        let mut y = vec![0f32; xs.n * 4 * xs.h * xs.w * cout];
        conv_transpose2(&x, xs, cout, &wt, &b, &mut y);
        let (oh, ow) = (2 * xs.h, 2 * xs.w);
        let yat = |x: &[f32], wt: &[f32], b: &[f32], img: usize, oy: usize, ox: usize, co: usize| -> f64 {
            let (iy, ix, ky, kx) = (oy / 2, ox / 2, oy % 2, ox % 2);
            b[co] as f64
                + (0..xs.c)
                    .map(|ci| {
                        x[((img * xs.h + iy) * xs.w + ix) * xs.c + ci] as f64
                            * wt[((ci * 2 + ky) * 2 + kx) * cout + co] as f64
                    })
                    .sum::<f64>()
        };
        let full = |x: &[f32], wt: &[f32], b: &[f32]| -> Vec<f64> {
            let mut v = Vec::new();
            for img in 0..xs.n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for co in 0..cout {
                            v.push(yat(x, wt, b, img, oy, ox, co));
                        }
                    }
                }
            }
            v
        };
        assert!(rel(&y, &full(&x, &wt, &b)) < 1e-6);
        let g = rnd(y.len(), 8);
        let (mut dx, mut dw, mut db) = (vec![0f32; x.len()], vec![0f32; wt.len()], vec![0f32; cout]);
        conv_transpose2_backward(&x, xs, cout, &wt, &g, Some(&mut dx), &mut dw, &mut db);
        let zero = vec![0f32; cout];
        let dot = |y: &[f64]| y.iter().zip(&g).map(|(a, b)| a * *b as f64).sum::<f64>();
        let want_dx: Vec<f64> = (0..x.len())
            .map(|i| {
                let mut e = vec![0f32; x.len()];
                e[i] = 1.0;
                dot(&full(&e, &wt, &zero))
            })
            .collect();
        assert!(rel(&dx, &want_dx) < 1e-5);
        let want_dw: Vec<f64> = (0..wt.len())
            .map(|i| {
                let mut e = vec![0f32; wt.len()];
                e[i] = 1.0;
                dot(&full(&x, &e, &zero))
            })
            .collect();
        assert!(rel(&dw, &want_dw) < 1e-5);
    }
}
