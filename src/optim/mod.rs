//! Optimisation with PyTorch's semantics, shared by the GCN and the U-Net trainer: Adam
//! (L2 weight decay added to the gradient, bias-corrected moments, eps outside the square
//! root) and cosine annealing of the learning rate.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod scaler;
pub use scaler::LossScaler;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Adam state for a list of parameter tensors: the moments live where the parameters do
/// (host vectors, or a backend's buffers).
#[derive(Debug, Clone)]
pub struct Adam<T = Vec<f32>> {
    pub cfg: AdamConfig,
    pub step: u64,
    pub m: Vec<T>,
    pub v: Vec<T>,
}

/// The per-step scalars of one tensor's Adam update.
#[derive(Debug, Clone, Copy)]
pub struct AdamScalars {
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamScalars {
    /// The six fields in order, as `Backend::adam_at` reads them.
    pub fn to_array(&self) -> [f32; 6] {
        [self.step_size, self.bc2_sqrt, self.beta1, self.beta2, self.eps, self.weight_decay]
    }
    pub fn from_slice(s: &[f32]) -> AdamScalars {
        AdamScalars { step_size: s[0], bc2_sqrt: s[1], beta1: s[2], beta2: s[3], eps: s[4], weight_decay: s[5] }
    }
}

impl<T> Adam<T> {
    /// Moments of zeros made by `zeros(len)` (a backend's buffers, or host vectors).
    pub fn with(cfg: AdamConfig, sizes: &[usize], mut zeros: impl FnMut(usize) -> T) -> Adam<T> {
        Adam {
            cfg,
            step: 0,
            m: sizes.iter().map(|&n| zeros(n)).collect(),
            v: sizes.iter().map(|&n| zeros(n)).collect(),
        }
    }

    /// Advance the step count; the scalars for each learning rate in `lrs`.
    pub fn next_step(&mut self, lrs: &[f64]) -> Vec<AdamScalars> {
        assert_eq!(lrs.len(), self.m.len());
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        // scalars in double as PyTorch computes them in Python, applied in f32
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2_sqrt = (1.0 - (c.beta2 as f64).powi(t)).sqrt() as f32;
        lrs.iter()
            .map(|&lr| AdamScalars {
                step_size: (lr / bc1) as f32,
                bc2_sqrt,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
            })
            .collect()
    }
}

/// `torch.optim.Adam`'s single-tensor update on host slices.
pub fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) {
    assert_eq!(p.len(), g.len());
    p.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(m.par_chunks_mut(4096).zip(v.par_chunks_mut(4096))).for_each(
        |((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i] + s.weight_decay * p[i];
                m[i] += (1.0 - s.beta1) * (gi - m[i]);
                v[i] = v[i] * s.beta2 + (1.0 - s.beta2) * gi * gi;
                let denom = v[i].sqrt() / s.bc2_sqrt + s.eps;
                p[i] -= s.step_size * (m[i] / denom);
            }
        },
    );
}

impl Adam {
    pub fn new(cfg: AdamConfig, sizes: &[usize]) -> Adam {
        Adam::with(cfg, sizes, |n| vec![0.0; n])
    }

    /// One step at learning rate `lr` (`torch.optim.Adam`, single-tensor path).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f64) {
        let lrs = vec![lr; params.len()];
        self.step_groups(params, grads, &lrs);
    }

    /// One step with a learning rate per tensor (PyTorch's parameter groups).
    pub fn step_groups(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lrs: &[f64]) {
        assert_eq!(params.len(), self.m.len());
        let scalars = self.next_step(lrs);
        for (k, p) in params.iter_mut().enumerate() {
            adam_update(p, grads[k], &mut self.m[k], &mut self.v[k], &scalars[k]);
        }
    }
}

/// `CosineAnnealingLR(T_max, eta_min)`: the learning rate after `t` scheduler steps.
pub fn cosine_lr(base: f64, eta_min: f64, t: usize, t_max: usize) -> f64 {
    if t_max == 0 {
        return base;
    }
    eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t as f64 / t_max as f64).cos()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_first_step_moves_each_weight_by_lr() {
        // with bias correction the first step is lr · g/(|g| + eps') for every element
        let mut p = [1.0f32, -2.0, 0.5];
        let g = [0.3f32, -4.0, 1e-3];
        let mut opt = Adam::new(AdamConfig::default(), &[3]);
        opt.step(&mut [&mut p[..]], &[&g[..]], 0.01);
        for (a, b) in p.iter().zip([0.99f32, -1.99, 0.49]) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn cosine_runs_from_base_to_eta_min() {
        assert_eq!(cosine_lr(0.004, 0.001, 0, 100), 0.004);
        assert!((cosine_lr(0.004, 0.001, 50, 100) - 0.0025).abs() < 1e-15);
        assert!((cosine_lr(0.004, 0.001, 100, 100) - 0.001).abs() < 1e-15);
    }
}
