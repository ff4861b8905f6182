//! The joint network of SPEC §9 on top of the U-Net body: a low-rank head (block 32→R) gives
//! L; the high-resolution score HR = sigmoid(logit(VD) + L); an image head (block R→C +
//! sigmoid) reconstructs the tile from HR; each spot's score is the mean of HR over its pixel
//! set, and its expression prediction relu(D)·score (+ gamma, relu'd, for query sections).
//!
//! Loss per tile, as the reference sums it over a batch of B tiles (the backend computes each
//! term; see `backend::cpu::loss`):
//! (w_img·MSE(image) + w_exp·PoissonNLL(expression) + w_reg·reg) / B, with
//! reg = mean over pixels with HR > 0.95 of ((1−VD)²·HR − (1−VD)²·VD)².

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

pub use crate::backend::TileSpots;
use crate::backend::{Backend, Decoder, HalfActivations, Shape};

use super::unet::{pair_mut, Activations, Block, BlockCache, Init, Kind, Params, UNet};

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

/// A batch of tiles in a backend's buffers: images (N, H, W, C), their VD scores
/// (N, H, W, R), and the tiles' spots on the host.
pub struct JointBatch<'a, T> {
    pub image: &'a T,
    pub shape: Shape,
    pub vd: &'a T,
    pub tiles: &'a [TileSpots<'a>],
}

/// What one batch's forward pass gives back.
pub struct JointOut {
    pub loss: f64,
    pub loss_image: f64,
    pub loss_exp: f64,
    pub loss_reg: f64,
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
    pub fn step<B: Backend>(
        &self,
        b: &B,
        net: &UNet,
        p: &mut Params<B::Buf>,
        batch: &JointBatch<B::Buf>,
        w: &LossWeights,
        train_body: bool,
    ) -> JointOut {
        let body = net.forward_body(b, p, batch.image, batch.shape);
        let (out, d_body) = self.heads(b, p, &body, batch, w, train_body);
        if let Some(d) = d_body {
            net.backward_body(b, p, &body, batch.image, d);
        }
        body.release(b);
        out
    }

    fn heads<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        body: &Activations<B::Buf>,
        batch: &JointBatch<B::Buf>,
        w: &LossWeights,
        train_body: bool,
    ) -> (JointOut, Option<B::Buf>) {
        let is = batch.shape;
        let (x, xs) = body.body_out();
        let hs = xs.with_c(self.rank);
        let (lr, hr) = self.low_rank_hr(b, p, x, xs, batch.vd);
        let ip = self.image_pred.forward(b, p, &hr, hs);
        let mut pred = b.alloc(is.len());
        b.sigmoid(&ip.out, &mut pred);
        let n = is.n as f64;
        let mut d_pred = b.alloc(is.len());
        let loss_image = b.mse_per_image(&pred, batch.image, is, w.image as f64 / n, &mut d_pred);
        let mut d_hr = b.zeros(hs.len());
        let loss_exp = {
            let (d, gamma) = (&p.data[self.decoder], self.gamma.map(|g| &p.data[g]));
            let (grad_d, grad_gamma) = match self.gamma {
                Some(g) => {
                    let (a, c) = pair_mut(&mut p.grads, self.decoder, g);
                    (a, Some(c))
                }
                None => (&mut p.grads[self.decoder], None),
            };
            let dec = Decoder { d, gamma, grad_d, grad_gamma };
            b.expression_loss(&hr, hs, batch.tiles, dec, w.expression as f64 / n, &mut d_hr)
        };
        let loss_reg = b.hr_regulariser(&hr, batch.vd, hs, w.regulariser as f64 / n, &mut d_hr);
        // image head back to HR
        b.sigmoid_backward(&pred, &mut d_pred);
        let d_from_img = self.image_pred.backward(b, p, &hr, &ip, d_pred, None, true).unwrap();
        b.add_assign(&mut d_hr, &d_from_img);
        b.release(d_from_img);
        // HR = sigmoid(logit(vd) + L)
        b.sigmoid_backward(&hr, &mut d_hr);
        let d_body = self.low_rank.backward(b, p, x, &lr, d_hr, None, train_body);
        for t in [hr, pred] {
            b.release(t);
        }
        lr.release(b);
        ip.release(b);
        let loss = (w.image as f64 * loss_image + w.expression as f64 * loss_exp + w.regulariser as f64 * loss_reg) / n;
        (JointOut { loss, loss_image: loss_image / n, loss_exp: loss_exp / n, loss_reg: loss_reg / n }, d_body)
    }

    /// The low-rank head's activations and HR = sigmoid(logit(VD) + L).
    fn low_rank_hr<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        x: &B::Buf,
        xs: Shape,
        vd: &B::Buf,
    ) -> (BlockCache<B::Buf>, B::Buf) {
        let lr = self.low_rank.forward(b, p, x, xs);
        let mut hr = b.alloc(xs.with_c(self.rank).len());
        b.prior_sigmoid(&lr.out, vd, &mut hr);
        (lr, hr)
    }

    /// HR scores only (inference; SPEC §10): body, low-rank head, VD prior.
    pub fn hr_scores<B: Backend>(
        &self,
        b: &B,
        net: &UNet,
        p: &Params<B::Buf>,
        image: &B::Buf,
        is: Shape,
        vd: &B::Buf,
    ) -> B::Buf {
        // the network's activations in f16 where the backend stores them so (the reference's
        // autocast inference); the scores after the VD prior in f32
        let (x, xs, lr) = {
            let _half = HalfActivations::on(b);
            let (x, xs) = net.forward_body_infer(b, p, image, is);
            let lr = self.low_rank.forward_infer(b, p, &x, xs);
            (x, xs, lr)
        };
        let mut hr = b.alloc(xs.with_c(self.rank).len());
        b.prior_sigmoid(&lr.out, vd, &mut hr);
        lr.release(b);
        b.release(x);
        hr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::optim::{Adam, AdamConfig};

    /// After the first iteration every buffer a training step needs comes back from the
    /// backend's pool: the loops allocate nothing on the device per iteration.
    #[test]
    fn training_steps_reuse_their_buffers() {
        let cpu = Cpu::new();
        let (rank, genes) = (3, 7);
        let (net, mut host) = UNet::new(3, 4);
        let head = JointHead::new(&mut host, 3, rank, genes, 0, 4);
        let sizes: Vec<usize> = host.data.iter().map(|d| d.len()).collect();
        let mut p = host.upload(&cpu);
        let all: Vec<usize> = (0..sizes.len()).collect();
        let mut opt = Adam::with(AdamConfig::default(), &sizes, |n| cpu.zeros(n));
        let is = Shape { n: 2, h: 16, w: 16, c: 3 };
        let image: Vec<f32> = (0..is.len()).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
        let vd: Vec<f32> = (0..2 * 16 * 16 * rank).map(|i| ((i * 13) % 97) as f32 / 97.0).collect();
        let pixels = vec![vec![0u32, 1, 16, 17], vec![100, 101, 116]];
        let exp: Vec<f32> = (0..2 * genes).map(|i| (i % 4) as f32).collect();
        let tiles: Vec<TileSpots> =
            (0..2).map(|_| TileSpots { pixels: &pixels, expression: &exp, query: None }).collect();
        let mut fresh = Vec::new();
        let mut losses = Vec::new();
        for _ in 0..3 {
            let (im, v) = (cpu.upload(&image), cpu.upload(&vd));
            let pre = crate::stages::pretrain::pretrain_step(&cpu, &net, &mut p, &im, is);
            let out = head.step(
                &cpu,
                &net,
                &mut p,
                &JointBatch { image: &im, shape: is, vd: &v, tiles: &tiles },
                &LossWeights::default(),
                true,
            );
            p.adam_step(&cpu, &mut opt, &all, &vec![1e-3; all.len()]);
            cpu.release(im);
            cpu.release(v);
            fresh.push(cpu.fresh_allocations());
            losses.push((pre, out.loss));
        }
        assert!(fresh[0] > 50, "the first iteration allocates ({})", fresh[0]);
        assert_eq!(fresh[1], fresh[0], "second iteration allocated");
        assert_eq!(fresh[2], fresh[0], "third iteration allocated");
        // and the steps did train: losses are finite and move
        assert!(losses.iter().all(|(a, b)| a.is_finite() && b.is_finite()));
        assert_ne!(losses[0], losses[2]);
    }

    #[test]
    fn the_inference_body_gives_the_training_body_output_and_keeps_less() {
        let cpu = Cpu::new();
        let (net, host) = UNet::new(3, 5);
        let p = host.upload(&cpu);
        let is = Shape { n: 2, h: 32, w: 24, c: 3 };
        let image: Vec<f32> = (0..is.len()).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
        let a = net.forward_body(&cpu, &p, &image, is);
        let (want, ws) = a.body_out();
        let (got, gs) = net.forward_body_infer(&cpu, &p, &image, is);
        assert_eq!(gs, ws);
        assert_eq!(&got, want, "same operations in the same order: bit-identical");
        a.release(&cpu);
        cpu.release(got);
        // a second inference pass reuses the pool entirely
        let before = cpu.fresh_allocations();
        let (again, _) = net.forward_body_infer(&cpu, &p, &image, is);
        assert_eq!(cpu.fresh_allocations(), before);
        cpu.release(again);
    }
}
