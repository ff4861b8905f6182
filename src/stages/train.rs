//! The `train` stage (SPEC §9): joint training of the U-Net with the low-rank and image heads
//! against the tiles' images, their VD scores and the spots' expression, as the reference's
//! `_train_model` runs it:
//! - the model starts from the pre-trained weights, the decoder from `metagene_GCN.csv`, gamma
//!   from the NMF stage's offsets;
//! - phase 1 (through `fix_iterations`): only the low-rank and image heads learn, Adam at the
//!   GCN's lr 0.005 with cosine annealing over `fix_iterations`;
//! - phase 2 (from the first epoch boundary after that): everything learns, lr 4e-4 for the
//!   network and 4e-6 for the decoder and gamma, cosine over the remaining iterations;
//! - tiles reshuffled per epoch, batches of 32; budget tested between epochs, as there.
//!
//! Resumable through `models/train.partial.safetensors` like `pretrain`. Writes
//! `models/trained.safetensors` and `metagene.csv` (the trained decoder, genes × R).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::backend::{Backend, Cpu, Shape};
use crate::error::{Error, Result};
use crate::io::image::ImageCache;
use crate::io::npy::read_npy;
use crate::model::checkpoint;
use crate::model::joint::{JointBatch, JointHead, LossWeights, TileSpots};
use crate::model::unet::UNet;
use crate::optim::{cosine_lr, Adam, AdamConfig};
use crate::preprocess::spot_pixels::spot_disk_pixels;
use crate::stages::pretrain::epoch_order;
use crate::stages::results::{read_metagenes, write_metagenes, ScoreMap, SectionDir};

#[derive(Debug, Clone, Serialize)]
pub struct TrainSettings {
    pub iterations: usize,
    pub fix_iterations: usize,
    pub batch: usize,
    pub lr_fix: f64,
    pub lr: f64,
    pub eta_min: f64,
    pub weight_decay: f32,
    pub weights: LossWeights,
    pub checkpoint_every: usize,
    pub seed: u64,
    pub split_size: usize,
    /// where the network runs
    #[serde(skip)]
    pub device: crate::backend::Device,
    /// test the budgets between epochs only, as the reference does; false switches phase and
    /// stops exactly at the budgets (short demo runs)
    pub whole_epochs: bool,
    #[serde(skip)]
    pub fail_after: Option<usize>,
    /// take the trained joint network from this model file instead of training (transfer)
    pub import: Option<std::path::PathBuf>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            device: Default::default(),
            iterations: 2000,
            fix_iterations: 1000,
            batch: 32,
            lr_fix: 0.005,
            lr: 4e-4,
            eta_min: 1e-6,
            weight_decay: 1e-5,
            weights: LossWeights::default(),
            checkpoint_every: 100,
            seed: 123,
            split_size: 256,
            whole_epochs: true,
            fail_after: None,
            import: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub tiles: usize,
    pub iterations: usize,
    pub second_phase_from: Option<usize>,
    pub resumed_from: Option<usize>,
    pub last_loss: f64,
    pub last_image_loss: f64,
    pub last_expression_loss: f64,
    pub imported_from: Option<String>,
}

/// One section's training data: its image, VD score map, expression and tiles' spots.
struct SectionData {
    image: ImageCache,
    vd: ScoreMap,
    row0: i64,
    col0: i64,
    exp: Vec<f32>,
    genes: usize,
    query: Option<usize>,
    tiles: Vec<crate::preprocess::tiles::Tile>,
    spots: Vec<crate::preprocess::spot_pixels::TileSpots>,
}

impl SectionData {
    /// The tile's VD scores (split × split × R, channels last), zeros outside the crop.
    fn vd_tile(&self, t: usize, ss: usize) -> Vec<f32> {
        let tl = &self.tiles[t];
        self.vd.window(tl.r0 - self.row0, tl.c0 - self.col0, ss, ss)
    }
}

pub fn run_train(
    out: &Path,
    sections: &[SectionDir],
    refs: &[(String, String)],
    s: &TrainSettings,
) -> Result<TrainReport> {
    crate::on_device!(unscaled s.device, b => train_on(b, out, sections, refs, s))
}

/// `run_train` on a given backend.
pub fn train_on<B: Backend>(
    b: &B,
    out: &Path,
    sections: &[SectionDir],
    refs: &[(String, String)],
    s: &TrainSettings,
) -> Result<TrainReport> {
    let (genes, metagene, rank) = read_metagenes(&out.join("metagene_GCN.csv"))?;
    let g = genes.len();
    let gamma0 = if refs.is_empty() { None } else { Some(read_npy::<f32>(&out.join("nmf_gamma.npy"))?.1) };
    let mut data = Vec::new();
    for sd in sections {
        let m = &sd.meta;
        let image = ImageCache::open_existing(&m.scaled_image_cache)?;
        let vd = ScoreMap::open(&sd.path("VD_score.npy"), rank, m.height, m.width)?;
        let (x, _) = sd.expression()?;
        if x.cols != g {
            return Err(Error::format(sd.path("expression/genes.txt"), "genes", "differ from metagene_GCN.csv"));
        }
        // query sections train on their own expression; the model adds their gamma
        let query = refs.iter().position(|(q, _)| *q == m.section);
        let exp = x.to_dense();
        let (spots, _) = sd.all_spots()?;
        let seq = &spots[..x.rows];
        let tile_spots = spot_disk_pixels(&m.tiles, seq, m.radius as f64);
        data.push(SectionData {
            image,
            vd,
            row0: m.row0 as i64,
            col0: m.col0 as i64,
            exp,
            genes: g,
            query,
            tiles: m.tiles.clone(),
            spots: tile_spots,
        });
    }
    let channels = data[0].image.info.channels;
    let tiles: Vec<(usize, usize)> =
        data.iter().enumerate().flat_map(|(k, d)| (0..d.tiles.len()).map(move |t| (k, t))).collect();
    if tiles.is_empty() {
        return Err(Error::setting("train", "no tissue tiles to train on"));
    }
    let ss = s.split_size;
    let (net, mut host) = UNet::new(channels, s.seed);
    let head = JointHead::new(&mut host, channels, rank, g, refs.len(), s.seed);
    if let Some(src) = &s.import {
        // transfer: the whole joint network (decoder and gamma included) from a trained model
        checkpoint::load(&Cpu::new(), src, &mut host, None)?;
        let meta = HashMap::from([
            ("stage".to_string(), "train".to_string()),
            ("imported_from".to_string(), src.display().to_string()),
        ]);
        checkpoint::save(&Cpu::new(), &out.join("models/trained.safetensors"), &host, None, meta)?;
        let dec: Vec<f64> = host.data[head.decoder].iter().map(|&v| v as f64).collect();
        write_metagenes(&out.join("metagene.csv"), &genes, &dec, rank)?;
        return Ok(TrainReport {
            tiles: tiles.len(),
            iterations: 0,
            second_phase_from: None,
            resumed_from: None,
            last_loss: f64::NAN,
            last_image_loss: f64::NAN,
            last_expression_loss: f64::NAN,
            imported_from: Some(src.display().to_string()),
        });
    }
    // start from the pre-trained body (the heads keep their initialisation)
    {
        let path = out.join("models/pretrained.safetensors");
        let (_, mut body) = UNet::new(channels, 0);
        checkpoint::load(&Cpu::new(), &path, &mut body, None)?;
        for (name, v) in body.names.iter().zip(body.data) {
            let i = host.index(name).expect("same network");
            host.data[i] = v;
        }
    }
    host.data[head.decoder] = metagene.iter().map(|&v| v as f32).collect();
    if let (Some(gi), Some(gm)) = (head.gamma, gamma0) {
        host.data[gi] = gm;
    }
    let sizes: Vec<usize> = host.data.iter().map(|d| d.len()).collect();
    let mut p = host.upload(b);
    drop(host);
    let heads_only: Vec<usize> = (0..p.names.len())
        .filter(|&i| p.names[i].starts_with("low_rank") || p.names[i].starts_with("image_pred"))
        .collect();
    // phase 2: everything the joint network uses (the pre-training output head is not)
    let all: Vec<usize> = (0..p.names.len()).filter(|&i| !p.names[i].starts_with("output.")).collect();
    let models = out.join("models");
    let partial = models.join("train.partial.safetensors");
    let (mut iteration, mut epoch, mut in_epoch, mut phase2_from) = (0usize, 0usize, 0usize, None::<usize>);
    let mut resumed_from = None;
    let new_opt = |idx: &[usize]| {
        Adam::with(
            AdamConfig { weight_decay: s.weight_decay, ..Default::default() },
            &idx.iter().map(|&i| sizes[i]).collect::<Vec<_>>(),
            |n| b.zeros(n),
        )
    };
    let mut opt = new_opt(&heads_only);
    if partial.exists() {
        let bytes = std::fs::read(&partial).map_err(|e| Error::io(&partial, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(&partial, "safetensors", e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let num = |k: &str| -> Result<usize> {
            meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| Error::format(&partial, k, "missing"))
        };
        iteration = num("iteration")?;
        epoch = num("epoch")?;
        in_epoch = num("batch_in_epoch")?;
        phase2_from = meta.get("phase2_from").and_then(|v| v.parse().ok());
        opt = new_opt(if phase2_from.is_some() { &all } else { &heads_only });
        checkpoint::load(
            b,
            &partial,
            &mut p,
            Some((&mut opt, if phase2_from.is_some() { &all } else { &heads_only })),
        )?;
        resumed_from = Some(iteration);
        eprintln!("train: resuming at iteration {iteration}");
    }
    let pb = crate::util::progress_count(s.iterations as u64, "train");
    pb.set_position(iteration as u64);
    let per_epoch = tiles.len().div_ceil(s.batch);
    let mut last = (f64::NAN, f64::NAN, f64::NAN);
    while iteration <= s.iterations {
        if phase2_from.is_none() && iteration > s.fix_iterations {
            phase2_from = Some(iteration);
            opt = new_opt(&all);
        }
        let order = epoch_order(tiles.len(), s.seed ^ 0x7EA1, epoch);
        while in_epoch < per_epoch {
            if !s.whole_epochs {
                if iteration >= s.iterations {
                    break;
                }
                if phase2_from.is_none() && iteration >= s.fix_iterations {
                    phase2_from = Some(iteration);
                    opt = new_opt(&all);
                }
            }
            let idx = &order[in_epoch * s.batch..((in_epoch + 1) * s.batch).min(tiles.len())];
            let is = Shape { n: idx.len(), h: ss, w: ss, c: channels };
            let (mut image, mut vd) = (Vec::with_capacity(is.len()), Vec::with_capacity(idx.len() * ss * ss * rank));
            let mut pix: Vec<Vec<Vec<u32>>> = Vec::new();
            let mut exps: Vec<Vec<f32>> = Vec::new();
            let mut queries = Vec::new();
            for &ti in idx {
                let (k, t) = tiles[ti];
                let d = &data[k];
                let tl = &d.tiles[t];
                image.extend(d.image.read_region_unit(tl.r0, tl.c0, ss, ss)?);
                vd.extend(d.vd_tile(t, ss));
                let ts = &d.spots[t];
                pix.push((0..ts.spots.len()).map(|j| ts.pixels_of(j).to_vec()).collect());
                exps.push(
                    ts.spots
                        .iter()
                        .flat_map(|&sp| d.exp[sp as usize * d.genes..(sp as usize + 1) * d.genes].to_vec())
                        .collect(),
                );
                queries.push(d.query);
            }
            let tile_spots: Vec<TileSpots> = (0..idx.len())
                .map(|n| TileSpots { pixels: &pix[n], expression: &exps[n], query: queries[n] })
                .collect();
            let (image, vd) = (b.upload(&image), b.upload(&vd));
            let batch = JointBatch { image: &image, shape: is, vd: &vd, tiles: &tile_spots };
            let train_body = phase2_from.is_some();
            let o = head.step(b, &net, &mut p, &batch, &s.weights, train_body);
            b.release(image);
            b.release(vd);
            let trained: &[usize] = if train_body { &all } else { &heads_only };
            let lrs: Vec<f64> = match phase2_from {
                None => vec![cosine_lr(s.lr_fix, s.eta_min, iteration, s.fix_iterations); trained.len()],
                Some(from) => {
                    let lr = cosine_lr(s.lr, s.eta_min, iteration - from, s.iterations.saturating_sub(from).max(1));
                    trained
                        .iter()
                        .map(|&i| if i == head.decoder || Some(i) == head.gamma { lr * 0.01 } else { lr })
                        .collect()
                }
            };
            p.adam_step(b, &mut opt, trained, &lrs);
            iteration += 1;
            in_epoch += 1;
            last = (o.loss, o.loss_image, o.loss_exp);
            pb.set_position(iteration as u64);
            pb.set_message(format!("train loss {:.5}", o.loss));
            if s.checkpoint_every > 0 && iteration % s.checkpoint_every == 0 {
                let mut meta = HashMap::from([
                    ("iteration".to_string(), iteration.to_string()),
                    ("epoch".to_string(), epoch.to_string()),
                    ("batch_in_epoch".to_string(), in_epoch.to_string()),
                ]);
                if let Some(f) = phase2_from {
                    meta.insert("phase2_from".into(), f.to_string());
                }
                checkpoint::save(b, &partial, &p, Some((&opt, trained)), meta)?;
            }
            if s.fail_after == Some(iteration) {
                return Err(Error::Other(format!("train: stopped after iteration {iteration} (requested)")));
            }
        }
        if !s.whole_epochs && iteration >= s.iterations {
            break;
        }
        epoch += 1;
        in_epoch = 0;
    }
    pb.finish_and_clear();
    let meta =
        HashMap::from([("stage".to_string(), "train".to_string()), ("iteration".to_string(), iteration.to_string())]);
    checkpoint::save(b, &models.join("trained.safetensors"), &p, None, meta)?;
    let _ = std::fs::remove_file(&partial);
    // the reference writes the decoder as it is (the model applies relu when it uses it)
    let dec: Vec<f64> = b.download(&p.data[head.decoder]).iter().map(|&v| v as f64).collect();
    write_metagenes(&out.join("metagene.csv"), &genes, &dec, rank)?;
    Ok(TrainReport {
        tiles: tiles.len(),
        iterations: iteration,
        second_phase_from: phase2_from,
        resumed_from,
        last_loss: last.0,
        last_image_loss: last.1,
        last_expression_loss: last.2,
        imported_from: None,
    })
}
