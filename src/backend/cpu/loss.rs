//! The joint network's losses on the CPU (SPEC §9): per-image MSE, the Poisson NLL of the
//! spots' expression predicted from spot means of HR, and the regulariser over confident
//! pixels. Values are summed in f64 per image and images are added in order.

use rayon::prelude::*;

use crate::backend::{Shape, TileSpots};

/// PyTorch's PoissonNLLLoss eps for log_input=False.
pub const POISSON_EPS: f32 = 1e-8;
pub const REG_THRESHOLD: f32 = 0.95;

pub fn mse_per_image(pred: &[f32], target: &[f32], s: Shape, scale: f64, d: &mut [f32]) -> f64 {
    let per = (s.h * s.w * s.c) as f64;
    mse_sums(pred, target, s, scale, d).iter().map(|v| v / per).sum()
}

/// Each image's sum of squared errors (not yet divided by H·W·C); d as `mse_per_image`.
pub fn mse_sums(pred: &[f32], target: &[f32], s: Shape, scale: f64, d: &mut [f32]) -> Vec<f64> {
    let per = s.h * s.w * s.c;
    d.par_chunks_mut(per)
        .zip(pred.par_chunks(per).zip(target.par_chunks(per)))
        .map(|(d, (p, t))| {
            let mut sum = 0f64;
            for i in 0..per {
                let e = (p[i] - t[i]) as f64;
                sum += e * e;
                d[i] = (scale * 2.0 * e / per as f64) as f32;
            }
            sum
        })
        .collect()
}

pub fn hr_regulariser(hr: &[f32], vd: &[f32], s: Shape, scale: f64, d_hr: &mut [f32]) -> f64 {
    let per = s.h * s.w * s.c;
    let sums: Vec<f64> = d_hr
        .par_chunks_mut(per)
        .zip(hr.par_chunks(per).zip(vd.par_chunks(per)))
        .map(|(d, (h, v))| {
            let m = h.iter().filter(|&&x| x > REG_THRESHOLD).count();
            if m == 0 {
                return 0.0;
            }
            let mut sum = 0f64;
            for i in (0..per).filter(|&i| h[i] > REG_THRESHOLD) {
                let wt = (1.0 - v[i]) * (1.0 - v[i]);
                let e = wt * h[i] - wt * v[i];
                sum += (e as f64) * (e as f64);
                d[i] += (scale * 2.0 * e as f64 * wt as f64 / m as f64) as f32;
            }
            sum / m as f64
        })
        .collect();
    sums.iter().sum()
}

/// See `Backend::expression_loss`. `dec` is genes × R, `gamma` queries × genes.
#[allow(clippy::too_many_arguments)]
pub fn expression_loss(
    hr: &[f32],
    s: Shape,
    tiles: &[TileSpots],
    dec: &[f32],
    gamma: Option<&[f32]>,
    scale: f64,
    d_hr: &mut [f32],
    d_dec: &mut [f32],
    mut d_gamma: Option<&mut [f32]>,
) -> f64 {
    let r = s.c;
    let g = dec.len() / r;
    let px = s.h * s.w;
    let relu_d: Vec<f32> = dec.iter().map(|&v| v.max(0.0)).collect();
    d_dec.fill(0.0);
    if let Some(dg) = d_gamma.as_deref_mut() {
        dg.fill(0.0);
    }
    let mut loss = 0f64;
    for (n, t) in tiles.iter().enumerate() {
        let ns = t.pixels.len();
        if ns == 0 {
            continue;
        }
        let hr_n = &hr[n * px * r..(n + 1) * px * r];
        let scores: Vec<Vec<f32>> = t
            .pixels
            .iter()
            .map(|set| {
                let mut m = vec![0f64; r];
                for &q in set {
                    for k in 0..r {
                        m[k] += hr_n[q as usize * r + k] as f64;
                    }
                }
                m.iter().map(|v| (v / set.len().max(1) as f64) as f32).collect()
            })
            .collect();
        let gam = match (gamma, t.query) {
            (Some(gm), Some(q)) => Some(&gm[q * g..(q + 1) * g]),
            _ => None,
        };
        let numel = (ns * g) as f64;
        let mut d_scores = vec![vec![0f64; r]; ns];
        let mut sum = 0f64;
        for (sp, sc) in scores.iter().enumerate() {
            for j in 0..g {
                let mut v = 0f32;
                for k in 0..r {
                    v += sc[k] * relu_d[j * r + k];
                }
                let (pre, gate) = match gam {
                    Some(gm) => {
                        let z = v + gm[j];
                        (z.max(0.0), z > 0.0)
                    }
                    None => (v, true),
                };
                let target = t.expression[sp * g + j];
                sum += (pre - target * (pre + POISSON_EPS).ln()) as f64;
                // d/dpre of (pre − target·ln(pre + eps)), mean, scale
                let dpre = (1.0 - target as f64 / (pre + POISSON_EPS) as f64) / numel * scale;
                if !gate {
                    continue;
                }
                if let (Some(dg), Some(q), Some(_)) = (d_gamma.as_deref_mut(), t.query, gam) {
                    dg[q * g + j] += dpre as f32;
                }
                for k in 0..r {
                    d_scores[sp][k] += dpre * relu_d[j * r + k] as f64;
                    if dec[j * r + k] > 0.0 {
                        d_dec[j * r + k] += (dpre * sc[k] as f64) as f32;
                    }
                }
            }
        }
        loss += sum / numel;
        let d_hr_n = &mut d_hr[n * px * r..(n + 1) * px * r];
        for (set, ds) in t.pixels.iter().zip(&d_scores) {
            let inv = 1.0 / set.len().max(1) as f64;
            for &q in set {
                for k in 0..r {
                    d_hr_n[q as usize * r + k] += (ds[k] * inv) as f32;
                }
            }
        }
    }
    loss
}
