//! The joint network of SPEC §9 on top of the U-Net body: a low-rank head (block 32→R) gives
//! L; the high-resolution score HR = sigmoid(logit(VD) + L); an image head (block R→C +
//! sigmoid) reconstructs the tile from HR; each spot's score is the mean of HR over its pixel
//! set, and its expression prediction relu(D)·score (+ gamma, relu'd, for query sections).
//!
//! Loss per tile, as the reference sums it over a batch of B tiles:
//! (w_img·MSE(image) + w_exp·PoissonNLL(expression) + w_reg·reg) / B, with
//! reg = mean over pixels with HR > 0.95 of ((1−VD)²·HR − (1−VD)²·VD)².

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::act::{logit, sigmoid, sigmoid_backward};
use super::conv::Shape;
use super::unet::{Activations, Block, BlockCache, Init, Kind, Params, UNet};

/// PyTorch's PoissonNLLLoss eps for log_input=False.
pub const POISSON_EPS: f32 = 1e-8;
pub const REG_THRESHOLD: f32 = 0.95;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LossWeights {
    pub image: f32,
    pub expression: f32,
    pub regulariser: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights { image: 0.67, expression: 0.33, regulariser: 0.5 }
    }
}

/// The heads and the decoder, added to the body's parameter set.
#[derive(Debug, Clone)]
pub struct JointHead {
    pub rank: usize,
    pub genes: usize,
    low_rank: Block,
    image_pred: Block,
    pub decoder: usize,
    pub gamma: Option<usize>,
}

/// One tile of a batch: its spots' pixel sets (flat y·W + x in the tile), their expression
/// (spots × genes) and, for a query section, its row of gamma.
pub struct TileSpots<'a> {
    pub pixels: &'a [Vec<u32>],
    pub expression: &'a [f32],
    pub query: Option<usize>,
}

/// A batch of tiles: images (N, H, W, C), their VD scores (N, H, W, R) and spots.
pub struct JointBatch<'a> {
    pub image: &'a [f32],
    pub shape: Shape,
    pub vd: &'a [f32],
    pub tiles: &'a [TileSpots<'a>],
}

/// What one batch's forward pass gives back.
pub struct JointOut {
    pub loss: f64,
    pub loss_image: f64,
    pub loss_exp: f64,
    pub loss_reg: f64,
    /// HR (N, H, W, R)
    pub hr: Vec<f32>,
}

struct HeadCache {
    lr: BlockCache,
    hr: Vec<f32>,
    ip: BlockCache,
    pred: Vec<f32>,
}

impl JointHead {
    /// `queries`: rows of gamma (sections with a reference); decoder ~ N(0, 1) as the
    /// reference's `torch.randn` (replaced by the GCN metagenes before training).
    pub fn new(p: &mut Params, channels: usize, rank: usize, genes: usize, queries: usize, seed: u64) -> JointHead {
        let mut init = Init { rng: rand::rngs::StdRng::seed_from_u64(seed) };
        let low_rank = Block::new(p, &mut init, "low_rank", super::unet::WIDTH, rank, false, false);
        let image_pred = Block::new(p, &mut init, "image_pred.0", rank, channels, false, false);
        let dec: Vec<f32> = (0..genes * rank)
            .map(|_| <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut init.rng))
            .collect();
        let decoder = p.add("nmf_decoder".into(), Kind::Matrix { rows: genes, cols: rank }, dec);
        let gamma = (queries > 0)
            .then(|| p.add("gamma".into(), Kind::Matrix { rows: queries, cols: genes }, vec![0.0; queries * genes]));
        JointHead { rank, genes, low_rank, image_pred, decoder, gamma }
    }

    /// Forward and backward of a batch: gradients of the heads, the decoder and gamma, and —
    /// when `train_body` — of the body, are written into `p.grads`.
    pub fn step(&self, net: &UNet, p: &mut Params, batch: &JointBatch, w: &LossWeights, train_body: bool) -> JointOut {
        let body = net.forward_body(p, batch.image, batch.shape);
        let (out, d_body) = self.heads(p, &body, batch, w, train_body);
        if let Some(d) = d_body {
            net.backward_body(p, &body, d);
        }
        out
    }

    fn heads(
        &self,
        p: &mut Params,
        body: &Activations,
        batch: &JointBatch,
        w: &LossWeights,
        train_body: bool,
    ) -> (JointOut, Option<Vec<f32>>) {
        let (image, is, vd, tiles) = (batch.image, batch.shape, batch.vd, batch.tiles);
        let (r, g) = (self.rank, self.genes);
        let (x, xs) = (&body.out_in.0, body.out_in.1);
        let c = self.forward_heads(p, x, xs, vd);
        let b = is.n as f64;
        let px = is.h * is.w;
        let mut d_hr = vec![0f32; c.hr.len()];
        // image: MSE per tile, weighted and divided by the batch size
        let per_img = px * is.c;
        let mut d_pred = vec![0f32; c.pred.len()];
        let mut loss_image = 0f64;
        for n in 0..is.n {
            let mut s = 0f64;
            for i in n * per_img..(n + 1) * per_img {
                let e = (c.pred[i] - image[i]) as f64;
                s += e * e;
                d_pred[i] = (w.image as f64 * 2.0 * e / per_img as f64 / b) as f32;
            }
            loss_image += s / per_img as f64;
        }
        // expression: spot scores → relu(D)·s (+ gamma) → Poisson NLL
        let dec = &p.data[self.decoder];
        let relu_d: Vec<f32> = dec.iter().map(|&v| v.max(0.0)).collect();
        let mut d_dec = vec![0f32; g * r];
        let mut d_gamma = self.gamma.map(|gi| vec![0f32; p.data[gi].len()]);
        let mut loss_exp = 0f64;
        for (n, t) in tiles.iter().enumerate() {
            let ns = t.pixels.len();
            if ns == 0 {
                continue;
            }
            let hr_n = &c.hr[n * px * r..(n + 1) * px * r];
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
            let gam = match (self.gamma, t.query) {
                (Some(gi), Some(q)) => Some(&p.data[gi][q * g..(q + 1) * g]),
                _ => None,
            };
            let numel = (ns * g) as f64;
            let mut d_scores = vec![vec![0f64; r]; ns];
            let mut sum = 0f64;
            for (s, sc) in scores.iter().enumerate() {
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
                    let target = t.expression[s * g + j];
                    sum += (pre - target * (pre + POISSON_EPS).ln()) as f64;
                    // d/dpre of (pre − target·ln(pre + eps)), mean, weight, batch
                    let dpre = (1.0 - target as f64 / (pre + POISSON_EPS) as f64) / numel * w.expression as f64 / b;
                    if !gate {
                        continue;
                    }
                    if let (Some(dg), Some(q)) = (d_gamma.as_mut(), t.query) {
                        if gam.is_some() {
                            dg[q * g + j] += dpre as f32;
                        }
                    }
                    for k in 0..r {
                        d_scores[s][k] += dpre * relu_d[j * r + k] as f64;
                        if dec[j * r + k] > 0.0 {
                            d_dec[j * r + k] += (dpre * sc[k] as f64) as f32;
                        }
                    }
                }
            }
            loss_exp += sum / numel;
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
        // regulariser over pixels with HR > 0.95, per tile
        let mut loss_reg = 0f64;
        for n in 0..is.n {
            let range = n * px * r..(n + 1) * px * r;
            let idx: Vec<usize> = range.filter(|&i| c.hr[i] > REG_THRESHOLD).collect();
            if idx.is_empty() {
                continue;
            }
            let m = idx.len() as f64;
            let mut s = 0f64;
            for &i in &idx {
                let wt = (1.0 - vd[i]) * (1.0 - vd[i]);
                let e = wt * c.hr[i] - wt * vd[i];
                s += (e as f64) * (e as f64);
                d_hr[i] += (w.regulariser as f64 * 2.0 * e as f64 * wt as f64 / m / b) as f32;
            }
            loss_reg += s / m;
        }
        // image head back to HR
        sigmoid_backward(&c.pred, &mut d_pred);
        let d_from_img = self.image_pred.backward(p, &c.hr, &c.ip, d_pred, None);
        d_hr.par_iter_mut().zip(d_from_img.par_iter()).for_each(|(a, b)| *a += b);
        // HR = sigmoid(logit(vd) + L)
        let mut d_l = d_hr;
        sigmoid_backward(&c.hr, &mut d_l);
        let d_body = self.low_rank.backward_opt(p, x, &c.lr, d_l, None, train_body);
        p.grads[self.decoder] = d_dec;
        if let (Some(gi), Some(dg)) = (self.gamma, d_gamma) {
            p.grads[gi] = dg;
        }
        let loss = (w.image as f64 * loss_image + w.expression as f64 * loss_exp + w.regulariser as f64 * loss_reg) / b;
        (
            JointOut { loss, loss_image: loss_image / b, loss_exp: loss_exp / b, loss_reg: loss_reg / b, hr: c.hr },
            d_body,
        )
    }

    fn forward_heads(&self, p: &Params, x: &[f32], xs: Shape, vd: &[f32]) -> HeadCache {
        let lr = self.low_rank.forward(p, x, xs);
        let hr: Vec<f32> = lr.out.par_iter().zip(vd.par_iter()).map(|(&l, &v)| sigmoid(logit(v) + l)).collect();
        let ip = self.image_pred.forward(p, &hr, xs.with_c(self.rank));
        let mut pred = ip.out.clone();
        super::act::sigmoid_inplace(&mut pred);
        HeadCache { lr, hr, ip, pred }
    }

    /// HR scores only (inference; SPEC §10): body, low-rank head, VD prior.
    pub fn hr_scores(&self, net: &UNet, p: &Params, image: &[f32], is: Shape, vd: &[f32]) -> Vec<f32> {
        let body = net.forward_body(p, image, is);
        let lr = self.low_rank.forward(p, &body.out_in.0, body.out_in.1);
        lr.out.par_iter().zip(vd.par_iter()).map(|(&l, &v)| sigmoid(logit(v) + l)).collect()
    }
}
