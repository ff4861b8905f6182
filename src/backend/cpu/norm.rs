//! Half instance normalisation (HINet): the first C/2 channels of each image normalised over
//! its pixels (biased variance, eps 1e-5) with an affine scale and shift; the other half
//! passes through. Sums in f64, as PyTorch accumulates float on the CPU.

use rayon::prelude::*;

use crate::backend::Shape;

pub const EPS: f64 = 1e-5;

/// y = leaky?(HIN(x)); gamma/beta have C/2 entries. `stats` (2·N·C/2) receives the mean and
/// 1/σ of each (image, normalised channel), means first.
pub fn hin_forward(x: &[f32], s: Shape, gamma: &[f32], beta: &[f32], leaky: bool, y: &mut [f32], stats: &mut [f32]) {
    let half = s.c / 2;
    let hw = s.h * s.w;
    let (means, rstds) = stats.split_at_mut(s.n * half);
    let per_img: Vec<(Vec<f32>, Vec<f32>)> = (0..s.n)
        .into_par_iter()
        .map(|img| {
            let xi = &x[img * hw * s.c..(img + 1) * hw * s.c];
            let mut sum = vec![0f64; half];
            for px in xi.chunks(s.c) {
                for c in 0..half {
                    sum[c] += px[c] as f64;
                }
            }
            let mean: Vec<f64> = sum.iter().map(|v| v / hw as f64).collect();
            let mut sq = vec![0f64; half];
            for px in xi.chunks(s.c) {
                for c in 0..half {
                    let d = px[c] as f64 - mean[c];
                    sq[c] += d * d;
                }
            }
            let rstd: Vec<f32> = sq.iter().map(|v| (1.0 / (v / hw as f64 + EPS).sqrt()) as f32).collect();
            (mean.iter().map(|&m| m as f32).collect(), rstd)
        })
        .collect();
    for (img, (m, r)) in per_img.into_iter().enumerate() {
        means[img * half..(img + 1) * half].copy_from_slice(&m);
        rstds[img * half..(img + 1) * half].copy_from_slice(&r);
    }
    hin_apply(x, s, stats, gamma, beta, leaky, y);
}

/// y = leaky?(HIN(x)) from `stats` as hin_forward writes them (means, then 1/σ).
pub fn hin_apply(x: &[f32], s: Shape, stats: &[f32], gamma: &[f32], beta: &[f32], leaky: bool, y: &mut [f32]) {
    let half = s.c / 2;
    let hw = s.h * s.w;
    let (means, rstds) = stats.split_at(s.n * half);
    y.par_chunks_mut(hw * s.c).zip(x.par_chunks(hw * s.c)).enumerate().for_each(|(img, (yi, xi))| {
        let (m, r) = (&means[img * half..(img + 1) * half], &rstds[img * half..(img + 1) * half]);
        for (py, px) in yi.chunks_mut(s.c).zip(xi.chunks(s.c)) {
            for c in 0..half {
                py[c] = (px[c] - m[c]) * r[c] * gamma[c] + beta[c];
            }
            py[half..].copy_from_slice(&px[half..]);
            if leaky {
                super::act::leaky_relu_serial(py);
            }
        }
    });
}

/// dx from dy (and dgamma, dbeta, overwritten), with the forward's input and stats.
#[allow(clippy::too_many_arguments)] // a backward pass takes its forward operands and every gradient
pub fn hin_backward(
    x: &[f32],
    s: Shape,
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let half = s.c / 2;
    let hw = s.h * s.w;
    let (means, rstds) = stats.split_at(s.n * half);
    let per_img: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(hw * s.c)
        .enumerate()
        .map(|(img, dxi)| {
            let (xi, dyi) = (&x[img * hw * s.c..(img + 1) * hw * s.c], &dy[img * hw * s.c..(img + 1) * hw * s.c]);
            let (m, r) = (&means[img * half..(img + 1) * half], &rstds[img * half..(img + 1) * half]);
            // Σ dy and Σ dy·x̂ per channel
            let (mut sdy, mut sdyx) = (vec![0f64; half], vec![0f64; half]);
            for (px, pd) in xi.chunks(s.c).zip(dyi.chunks(s.c)) {
                for c in 0..half {
                    let xh = ((px[c] - m[c]) * r[c]) as f64;
                    sdy[c] += pd[c] as f64;
                    sdyx[c] += pd[c] as f64 * xh;
                }
            }
            let n = hw as f64;
            for ((pdx, px), pd) in dxi.chunks_mut(s.c).zip(xi.chunks(s.c)).zip(dyi.chunks(s.c)) {
                for c in 0..half {
                    let xh = ((px[c] - m[c]) * r[c]) as f64;
                    let g = gamma[c] as f64;
                    pdx[c] = (r[c] as f64 * g * (pd[c] as f64 - sdy[c] / n - xh * sdyx[c] / n)) as f32;
                }
                pdx[half..].copy_from_slice(&pd[half..]);
            }
            (sdy, sdyx)
        })
        .collect();
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    for (sdy, sdyx) in per_img {
        for c in 0..half {
            dbeta[c] += sdy[c] as f32;
            dgamma[c] += sdyx[c] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::rnd;

    #[test]
    fn normalises_the_first_half_and_gradients_match_finite_differences() {
        let s = Shape { n: 2, h: 3, w: 4, c: 6 };
        let x: Vec<f32> = rnd(s.len(), 1).iter().map(|v| 2.0 * v + 0.5).collect();
        let (gamma, beta) = (vec![1.5f32, 0.5, -1.0], vec![0.1f32, 0.0, 0.3]);
        let mut y = vec![0f32; s.len()];
        let mut st = vec![0f32; 2 * s.n * 3];
        hin_forward(&x, s, &gamma, &beta, false, &mut y, &mut st);
        // channel 0 of image 0: mean beta, std |gamma|
        let v: Vec<f64> = y[..12 * 6].chunks(6).map(|p| p[0] as f64).collect();
        let mean = v.iter().sum::<f64>() / 12.0;
        assert!((mean - 0.1).abs() < 1e-5);
        assert_eq!(y[5], x[5]);
        let g = rnd(s.len(), 2);
        let loss = |x: &[f32]| -> f64 {
            let mut y = vec![0f32; s.len()];
            hin_forward(x, s, &gamma, &beta, false, &mut y, &mut vec![0f32; 2 * s.n * 3]);
            y.iter().zip(&g).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let (mut dx, mut dg, mut dbt) = (vec![0f32; s.len()], vec![0f32; 3], vec![0f32; 3]);
        hin_backward(&x, s, &gamma, &st, &g, &mut dx, &mut dg, &mut dbt);
        for i in (0..s.len()).step_by(5) {
            let mut p = x.clone();
            p[i] += 1e-2;
            let lp = loss(&p);
            p[i] -= 2e-2;
            let fd = (lp - loss(&p)) / 2e-2;
            assert!((fd - dx[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()), "dx[{i}] fd {fd} vs {}", dx[i]);
        }
        let want_db: f32 = g.chunks(6).map(|p| p[1]).sum();
        assert!((dbt[1] - want_db).abs() < 1e-4);
    }
}
