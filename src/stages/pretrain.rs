//! The `pretrain` stage (SPEC §6): the U-Net learns to reconstruct tissue tiles. As the
//! reference: every section's tiles, reshuffled each epoch, batches of 32 (the last one of an
//! epoch smaller), MSE, Adam (lr 4e-4, weight decay 1e-5) with cosine annealing to 1e-6 over
//! the iteration budget, and the early stop: every 200 iterations, once half the budget is
//! spent, stop when the mean loss changed by less than 5 % from the previous 200.
//!
//! Resumable: every `checkpoint_every` iterations the model, Adam's state and the loop's
//! position go to `models/pretrain.partial.safetensors`; a rerun continues from there and
//! ends bit-identical to an uninterrupted run (same seed and thread count). The result is
//! `models/pretrained.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::backend::graphs::{lru, mix, Ran, Replayed};
use crate::backend::{AdamSource, Backend, Cpu, HalfActivations, Host, Shape};
use crate::error::{Error, Result};
use crate::io::image::ImageCache;
use crate::model::checkpoint;
use crate::model::unet::{Params, UNet};
use crate::optim::{cosine_lr, Adam, AdamConfig, LossScaler};
use crate::stages::results::SectionDir;

#[derive(Debug, Clone, Serialize)]
pub struct PretrainSettings {
    pub iterations: usize,
    pub batch: usize,
    pub lr: f64,
    pub eta_min: f64,
    pub weight_decay: f32,
    /// iterations per loss record (the early-stop window)
    pub rec_iter: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    pub split_size: usize,
    /// where the network runs
    #[serde(skip)]
    pub device: crate::backend::Device,
    /// finish the epoch in which the budget runs out, as the reference's loop does (it tests
    /// the budget only between epochs); false stops at the budget (short demo runs)
    pub whole_epochs: bool,
    /// stop with an error after this many iterations (tests of resuming)
    #[serde(skip)]
    pub fail_after: Option<usize>,
    /// dynamic loss scaling (PyTorch's GradScaler, which the reference runs with its fp16
    /// autocast on a GPU): the initial scale, or none — then 2^16 where the backend's
    /// convolutions take f16 operands (`Backend::half_operands`), no scaling elsewhere. With
    /// f32 operands a power-of-two scale changes no value unless a gradient overflows.
    pub loss_scale: Option<f32>,
    /// take the network from this model file (ours, or the package's converted by
    /// tools/import_pth.py) instead of training it: transfer to a new section
    pub import: Option<std::path::PathBuf>,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        PretrainSettings {
            device: Default::default(),
            iterations: 5000,
            batch: 32,
            lr: 4e-4,
            eta_min: 1e-6,
            weight_decay: 1e-5,
            rec_iter: 200,
            checkpoint_every: 100,
            seed: 123,
            split_size: 256,
            whole_epochs: true,
            fail_after: None,
            loss_scale: None,
            import: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    pub tiles: usize,
    pub iterations: usize,
    pub epochs: usize,
    pub stopped_early: bool,
    pub resumed_from: Option<usize>,
    /// mean loss of each `rec_iter` window
    pub losses: Vec<f64>,
    pub last_batch_loss: f64,
    pub imported_from: Option<String>,
    /// the loss scaler at the end (scale, steps skipped for overflow), when scaling
    pub loss_scaler: Option<LossScaler>,
}

/// The loop's position, kept in the checkpoint's metadata (floats as their bits).
#[derive(Debug, Clone, Default)]
struct Progress {
    iteration: usize,
    epoch: usize,
    /// batches of the current epoch already done
    batch_in_epoch: usize,
    rec_loss: f64,
    last_loss: f64,
    losses: Vec<f64>,
    /// the loss scaler's state, when scaling
    scaler: Option<LossScaler>,
}

impl Progress {
    fn to_meta(&self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("iteration".into(), self.iteration.to_string()),
            ("epoch".into(), self.epoch.to_string()),
            ("batch_in_epoch".into(), self.batch_in_epoch.to_string()),
            ("rec_loss_bits".into(), self.rec_loss.to_bits().to_string()),
            ("last_loss_bits".into(), self.last_loss.to_bits().to_string()),
            (
                "losses_bits".into(),
                serde_json::to_string(&self.losses.iter().map(|v| v.to_bits()).collect::<Vec<_>>()).unwrap(),
            ),
        ]);
        if let Some(sc) = &self.scaler {
            m.insert("loss_scaler".into(), serde_json::to_string(sc).unwrap());
        }
        m
    }

    fn from_meta(path: &Path, m: &HashMap<String, String>) -> Result<Progress> {
        let num = |k: &str| -> Result<u64> {
            m.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| Error::format(path, k, "missing or not a number"))
        };
        let losses: Vec<u64> = m
            .get("losses_bits")
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| Error::format(path, "losses_bits", "missing"))?;
        Ok(Progress {
            iteration: num("iteration")? as usize,
            epoch: num("epoch")? as usize,
            batch_in_epoch: num("batch_in_epoch")? as usize,
            rec_loss: f64::from_bits(num("rec_loss_bits")?),
            last_loss: f64::from_bits(num("last_loss_bits")?),
            losses: losses.into_iter().map(f64::from_bits).collect(),
            scaler: match m.get("loss_scaler") {
                None => None,
                Some(v) => {
                    Some(serde_json::from_str(v).map_err(|e| Error::format(path, "loss_scaler", e.to_string()))?)
                }
            },
        })
    }
}

/// The order of the tiles in epoch `e`: a permutation drawn from (seed, e) alone, so a resumed
/// run replays it.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(crate::simulate::field::mix(
        seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407),
    ));
    v.shuffle(&mut rng);
    v
}

/// Forward, MSE over the batch, backward: the gradients land in `p.grads`; returns the loss.
/// Unscaled: on a backend that trains on f16 activations (`Backend::half_training`) small
/// gradients underflow — use `pretrain_step_scaled` behind a loss scaler there.
pub fn pretrain_step<B: Backend>(b: &B, net: &UNet, p: &mut Params<B::Buf>, batch: &B::Buf, is: Shape) -> f64 {
    pretrain_step_scaled(b, net, p, batch, is, 1.0)
}

/// `pretrain_step` with the loss's gradient multiplied by `loss_scale` (the gradients come out
/// scaled; the returned loss is not).
pub fn pretrain_step_scaled<B: Backend>(
    b: &B,
    net: &UNet,
    p: &mut Params<B::Buf>,
    batch: &B::Buf,
    is: Shape,
    loss_scale: f32,
) -> f64 {
    // activations and their gradients in f16 where the backend trains so
    let _half = HalfActivations::set(b, b.half_training());
    let a = net.forward(b, p, batch, is);
    let mut d = b.alloc(is.len());
    // the mean over the whole batch = the mean of per-image means (equal sizes)
    let grad = loss_scale as f64 / is.n as f64;
    let loss = b.mse_per_image(a.pred.as_ref().unwrap(), batch, is, grad, &mut d) / is.n as f64;
    net.backward(b, p, &a, batch, d);
    a.release(b);
    loss
}

/// A whole pre-training iteration — forward, loss, backward, the loss scaler's unscale and
/// Adam — on an input buffer, loss sums, Adam scalars and a found-inf flag of its own, so it can
/// be recorded once and replayed (`graphs::Replayed`; CUDA graphs where
/// `SPAHDMAP_GPU_GRAPHS=1`, eager elsewhere). The arithmetic is `pretrain_step_scaled` followed
/// by `adam_step` / `scaled_adam_step`; the learning rate and bias corrections go up as a small
/// buffer each step, the loss and the found-inf flag come back after it. One recording per
/// batch shape, two shapes kept (an epoch's short last batch). The parameters and Adam's
/// moments must be updated in place, never replaced (a recording reads them where they were).
pub struct RecordedStep<B: Backend> {
    shapes: Vec<(u64, StepSlot<B>)>,
}

struct StepSlot<B: Backend> {
    is: Shape,
    input: B::Buf,
    sums: B::Sums,
    /// Adam's six scalars per tensor, uploaded each step (allocated at the first)
    scalars: Option<B::Buf>,
    flag: B::Buf,
    rec: Replayed<B>,
}

impl<B: Backend> StepSlot<B> {
    fn release(mut self, b: &B) {
        self.rec.discard(b);
        for x in [Some(self.input), self.scalars, Some(self.flag)].into_iter().flatten() {
            b.release(x);
        }
    }
}

impl<B: Backend> Default for RecordedStep<B> {
    fn default() -> Self {
        RecordedStep { shapes: Vec::new() }
    }
}

impl<B: Backend> RecordedStep<B> {
    /// Upload the batch (`is` images) into the input buffer of its shape; `step` runs on it.
    pub fn load(&mut self, b: &B, host: &[f32], is: Shape) {
        assert_eq!(host.len(), is.len(), "a batch of another shape");
        let slot = lru(
            &mut self.shapes,
            mix(&[is.n, is.h, is.w, is.c]),
            || StepSlot {
                is,
                input: b.alloc(is.len()),
                sums: b.sums(is.n),
                scalars: None,
                flag: b.zeros(1),
                rec: Replayed::default(),
            },
            |old| old.release(b),
        );
        b.upload_overlapped(Host::F32(host), &mut slot.input, None);
    }

    /// The iteration on the batch loaded last: gradients (times the scaler's scale, then
    /// unscaled), and Adam at `lrs` over `tensors` unless the scaler finds an inf or NaN (then
    /// the step is skipped, Adam's step count too, and the scaler backs off). Returns the
    /// batch's mean loss, how the work was queued, and whether Adam stepped.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        b: &B,
        net: &UNet,
        p: &mut Params<B::Buf>,
        opt: &mut Adam<B::Buf>,
        tensors: &[usize],
        lrs: &[f64],
        scaler: Option<&mut LossScaler>,
    ) -> (f64, Ran, bool) {
        assert_eq!(tensors.len(), opt.m.len(), "one set of Adam moments per tensor");
        let (_, slot) = self.shapes.first_mut().expect("RecordedStep::load first");
        let need = 6 * tensors.len();
        if slot.scalars.as_ref().is_none_or(|x| b.len(x) != need) {
            // a recording made on the old buffer may not run again
            slot.rec.discard(b);
            if let Some(x) = slot.scalars.replace(b.alloc(need)) {
                b.release(x);
            }
        }
        let host: Vec<f32> = opt.next_step(lrs).iter().flat_map(|s| s.to_array()).collect();
        b.upload_overlapped(Host::F32(&host), slot.scalars.as_mut().unwrap(), None);
        let (scale, inv) = match &scaler {
            Some(s) => (s.scale, Some(s.inv_scale())),
            None => (1.0, None),
        };
        let StepSlot { is, input, sums, scalars, flag, rec } = slot;
        let is = *is;
        let scalars = scalars.as_ref().unwrap();
        let grad = scale as f64 / is.n as f64;
        let key = mix(&[&[scale.to_bits() as usize, inv.is_some() as usize], tensors].concat());
        let ran = rec.run(b, key, &mut || {
            let _half = HalfActivations::set(b, b.half_training());
            let a = net.forward(b, p, input, is);
            let mut d = b.alloc(is.len());
            b.mse_sums(a.pred.as_ref().unwrap(), input, is, grad, &mut d, sums);
            net.backward(b, p, &a, input, d);
            a.release(b);
            if let Some(inv) = inv {
                b.unscale_grads_into(&mut p.grads, inv, flag);
            }
            let skip = inv.is_some().then_some(&*flag);
            b.adam_many(&mut p.data, &p.grads, opt, tensors, AdamSource::Device { scalars, skip });
        });
        let per = (is.h * is.w * is.c) as f64;
        let loss: f64 = b.read_sums(sums).iter().take(is.n).map(|v| v / per).sum();
        let stepped = match scaler {
            None => true,
            Some(sc) => {
                let found = b.flag_set(flag);
                if found {
                    opt.step -= 1;
                }
                sc.update(found);
                !found
            }
        };
        (loss / is.n as f64, ran, stepped)
    }

    pub fn release(mut self, b: &B) {
        for (_, slot) in self.shapes.drain(..) {
            slot.release(b);
        }
    }
}

pub fn run_pretrain(out: &Path, sections: &[SectionDir], s: &PretrainSettings) -> Result<PretrainReport> {
    crate::on_device!(s.device, b => pretrain_on(b, out, sections, s))
}

/// `run_pretrain` on a given backend.
pub fn pretrain_on<B: Backend>(
    b: &B,
    out: &Path,
    sections: &[SectionDir],
    s: &PretrainSettings,
) -> Result<PretrainReport> {
    let images: Vec<ImageCache> =
        sections.iter().map(|sd| ImageCache::open_existing(&sd.meta.scaled_image_cache)).collect::<Result<_>>()?;
    let channels = images[0].info.channels;
    if images.iter().any(|im| im.info.channels != channels) {
        return Err(Error::setting("sections", "images with different channel counts cannot share one model"));
    }
    let tiles: Vec<(usize, i64, i64)> =
        sections.iter().enumerate().flat_map(|(k, sd)| sd.meta.tiles.iter().map(move |t| (k, t.r0, t.c0))).collect();
    if tiles.is_empty() {
        return Err(Error::setting("pretrain", "no tissue tiles to train on"));
    }
    if let Some(src) = &s.import {
        let (_, mut host) = UNet::new(channels, s.seed);
        checkpoint::load(&Cpu::new(), src, &mut host, None)?;
        let meta = HashMap::from([
            ("stage".to_string(), "pretrain".to_string()),
            ("imported_from".to_string(), src.display().to_string()),
        ]);
        checkpoint::save(&Cpu::new(), &out.join("models/pretrained.safetensors"), &host, None, meta)?;
        return Ok(PretrainReport {
            tiles: tiles.len(),
            iterations: 0,
            epochs: 0,
            stopped_early: false,
            resumed_from: None,
            losses: Vec::new(),
            last_batch_loss: f64::NAN,
            imported_from: Some(src.display().to_string()),
            loss_scaler: None,
        });
    }
    let ss = s.split_size;
    let (net, host) = UNet::new(channels, s.seed);
    let sizes: Vec<usize> = host.data.iter().map(|d| d.len()).collect();
    let mut p = host.upload(b);
    drop(host);
    let all: Vec<usize> = (0..sizes.len()).collect();
    let mut opt = Adam::with(AdamConfig { weight_decay: s.weight_decay, ..Default::default() }, &sizes, |n| b.zeros(n));
    let models = out.join("models");
    let partial = models.join("pretrain.partial.safetensors");
    // half-precision operands or activations want a loss scale (autocast + GradScaler's 2^16 to start)
    let scaler = s
        .loss_scale
        .or(b.scales_loss().then_some(LossScaler::default().scale))
        .map(|scale| LossScaler { scale, ..Default::default() });
    let mut pr = Progress { last_loss: 1000.0, scaler, ..Default::default() };
    let mut resumed_from = None;
    if partial.exists() {
        let meta = checkpoint::load(b, &partial, &mut p, Some((&mut opt, &all)))?;
        pr = Progress::from_meta(&partial, &meta)?;
        // a run begun without scaling and resumed on f16 operands starts scaling here
        pr.scaler = pr.scaler.or(scaler);
        resumed_from = Some(pr.iteration);
        eprintln!("pretrain: resuming at iteration {}", pr.iteration);
    }
    let pb = crate::util::progress_count(s.iterations as u64, "pretrain");
    pb.set_position(pr.iteration as u64);
    let mut stopped_early = false;
    let mut last_batch_loss = f64::NAN;
    let per_epoch = tiles.len().div_ceil(s.batch);
    let mut step = RecordedStep::<B>::default();
    'outer: while pr.iteration <= s.iterations {
        let order = epoch_order(tiles.len(), s.seed, pr.epoch);
        while pr.batch_in_epoch < per_epoch {
            let bi = pr.batch_in_epoch;
            let idx = &order[bi * s.batch..((bi + 1) * s.batch).min(tiles.len())];
            let is = Shape { n: idx.len(), h: ss, w: ss, c: channels };
            let mut host = Vec::with_capacity(is.len());
            for &t in idx {
                let (k, r0, c0) = tiles[t];
                host.extend(images[k].read_region_unit(r0, c0, ss, ss)?);
            }
            step.load(b, &host, is);
            let lr = cosine_lr(s.lr, s.eta_min, pr.iteration, s.iterations);
            let lrs = vec![lr; all.len()];
            let (loss, _, _) = step.step(b, &net, &mut p, &mut opt, &all, &lrs, pr.scaler.as_mut());
            pr.iteration += 1;
            pr.batch_in_epoch += 1;
            pr.rec_loss += loss;
            last_batch_loss = loss;
            pb.set_position(pr.iteration as u64);
            pb.set_message(format!("pretrain loss {loss:.5}"));
            let mut stop = false;
            if pr.iteration % s.rec_iter.max(1) == 0 {
                let rec = pr.rec_loss / s.rec_iter as f64;
                pr.losses.push(rec);
                if pr.iteration >= s.iterations / 2 && (1.0 - rec / pr.last_loss).abs() < 0.05 {
                    stop = true;
                }
                pr.last_loss = rec;
                pr.rec_loss = 0.0;
            }
            if stop {
                stopped_early = true;
                break 'outer;
            }
            if s.checkpoint_every > 0 && pr.iteration % s.checkpoint_every == 0 {
                checkpoint::save(b, &partial, &p, Some((&opt, &all)), pr.to_meta())?;
            }
            if s.fail_after == Some(pr.iteration) {
                return Err(Error::Other(format!("pretrain: stopped after iteration {} (requested)", pr.iteration)));
            }
            if !s.whole_epochs && pr.iteration >= s.iterations {
                break 'outer;
            }
        }
        pr.epoch += 1;
        pr.batch_in_epoch = 0;
    }
    pb.finish_and_clear();
    step.release(b);
    let mut meta = pr.to_meta();
    meta.insert("stage".into(), "pretrain".into());
    checkpoint::save(b, &models.join("pretrained.safetensors"), &p, None, meta)?;
    let _ = std::fs::remove_file(&partial);
    Ok(PretrainReport {
        tiles: tiles.len(),
        iterations: pr.iteration,
        epochs: pr.epoch + 1,
        stopped_early,
        resumed_from,
        losses: pr.losses,
        last_batch_loss,
        imported_from: None,
        loss_scaler: pr.scaler,
    })
}
