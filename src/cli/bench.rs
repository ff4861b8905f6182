//! `spahdmap bench`: timings reported as medians of several runs.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use crate::error::Result;
use crate::io::image::decode_bands;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Accuracy of a finished run on a generated section (`simulate`) against its truth:
    /// ARIs of SpaHDmap and VD pixel clusters and painted NMF spot clusters, marker recovery.
    Accuracy {
        #[arg(long)]
        results: PathBuf,
        /// the simulated section's `truth/` folder
        #[arg(long)]
        truth: PathBuf,
        #[arg(long, default_value = "section")]
        section: String,
    },
    /// Voronoi score (SPEC §8) of a crop from saved inputs: spot scores (N×R f32 .npy), the
    /// nearest-spot map (H×W i32 .npy) and the mask (H×W u8/bool .npy).
    Vd {
        #[arg(long)]
        scores: PathBuf,
        #[arg(long)]
        nearest: PathBuf,
        #[arg(long)]
        mask: PathBuf,
        #[arg(long)]
        kernel: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// NMF (SPEC §5) on a section's preprocessed expression, `--genes` highly variable
    /// genes; `--dump` writes the matrix used (dense .npy) for the reference timing.
    Nmf {
        #[command(flatten)]
        input: super::InputArgs,
        #[arg(long, default_value_t = 20)]
        rank: usize,
        #[arg(long, default_value_t = 3000)]
        genes: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// Spot graph and GCN training (SPEC §7) on inputs written by
    /// tools/bench_gcn_reference.py (coords, embeddings, score .npy); checks the graph
    /// against the reference's adjacency when the folder holds it.
    Gcn {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// cpu, cuda[:N] or auto (the GCN training; the graph is built on the CPU)
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// One pre-training iteration of the U-Net (forward, MSE, backward, Adam) on random images,
    /// batch × size × size × 3 (medians over --repeat).
    Unet {
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Time the spot-embedding pass over this many upsampled windows instead.
        #[arg(long)]
        embed_spots: Option<usize>,
        /// cpu, cuda[:N] or auto
        #[arg(long, default_value = "cpu")]
        device: String,
        /// On a GPU: f32 FMAs instead of TF32 tensor cores in the convolutions.
        #[arg(long)]
        exact: bool,
        /// On a GPU: the TF32 kernels that load each step ahead of the previous step's MMAs.
        #[arg(long, conflicts_with = "exact")]
        pipelined: bool,
        /// On a GPU: the pipelined kernels on 128 × 64 tiles where channel counts divide by 4
        /// (the default, the pipeline's speed path: SPAHDMAP_GPU_CONV replaces it as in a run).
        #[arg(long, conflicts_with_all = ["exact", "pipelined", "plain"])]
        wide: bool,
        /// On a GPU: the first TF32 kernels (64 × 64 tiles, loads and MMAs in turn).
        #[arg(long, conflicts_with_all = ["exact", "pipelined"])]
        plain: bool,
        /// On a GPU: the wide kernels on f16 operands (f32 accumulation; pre-training steps
        /// then run behind a loss scaler, as autocast + GradScaler do).
        #[arg(long, conflicts_with_all = ["exact", "pipelined", "plain", "wide"])]
        f16: bool,
        /// Time the joint-training iteration instead (rank 20, 3,000 genes, four disk spots of
        /// radius 45 per tile, heads + body + decoder, Adam), as the reference's train loop.
        #[arg(long)]
        joint: bool,
        /// Time high-definition inference instead (rank 20: body without its training
        /// activations, low-rank head, VD prior), in megapixels of tiles per second — the
        /// reference bench's `hd_inference`.
        #[arg(long)]
        infer: bool,
        /// On a GPU: the network's activations in f16 (kernels/conv_h16.cu) — inference's with
        /// --infer, else pre-training's and their gradients, behind a loss scaler — whatever
        /// SPAHDMAP_GPU_HALF says (the pipeline's default is the same).
        #[arg(long, conflicts_with_all = ["joint", "embed_spots"])]
        half: bool,
        /// On a GPU: activations in f32 throughout (SPAHDMAP_GPU_HALF=0), the baseline the f16
        /// storage is measured against.
        #[arg(long, conflicts_with = "half")]
        f32_storage: bool,
    },
    /// NMF and the Voronoi score on generated data at the medulloblastoma scale (spots ×
    /// genes at about a third non-zero; a side × side crop of hexagonally spaced spots), on the
    /// CPU backend and, with --device cuda, on the GPU too, with how far the two agree.
    Stages {
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 3000)]
        spots: usize,
        #[arg(long, default_value_t = 3000)]
        genes: usize,
        #[arg(long, default_value_t = 20)]
        rank: usize,
        #[arg(long, default_value_t = 3000)]
        side: usize,
        #[arg(long, default_value_t = 45)]
        kernel: usize,
    },
    /// Preprocessing stages of one section: Moran's I, image scaling + mask, pseudo spots,
    /// nearest-spot maps (medians over --repeat runs).
    Preprocess {
        #[command(flatten)]
        input: super::InputArgs,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Decode an image (no cache) and report pixel throughput.
    Decode {
        image: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The GPU of `--device` for a benchmark (None: the CPU backend).
fn bench_gpu(device: &str, precision: crate::backend::cuda::Precision) -> Result<Option<crate::backend::cuda::Cuda>> {
    crate::backend::resolve_device(device)?.gpu(precision)
}

/// A kernel profile as JSON: milliseconds per iteration of each kernel, the most expensive
/// first, achieved TFLOP/s where its work is counted (the convolutions), and the total.
fn profile_json(p: &[crate::backend::cuda::KernelTime], iterations: usize) -> serde_json::Value {
    let it = iterations as f64;
    let kernels: Vec<serde_json::Value> = p
        .iter()
        .map(|k| {
            let mut v = serde_json::json!({"kernel": k.kernel, "launches": k.launches / iterations, "ms": k.ms / it});
            if k.flop > 0.0 {
                v["tflop_per_s"] = serde_json::json!(k.flop / (k.ms * 1e9));
            }
            v
        })
        .collect();
    serde_json::json!({"iterations": iterations, "total_ms": p.iter().map(|k| k.ms).sum::<f64>() / it, "kernels": kernels})
}

/// Deterministic image-like values in [0, 1) for the network benchmarks.
fn bench_image(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect()
}

/// Deterministic VD scores in [0.05, 0.95] (away from the logit's ends).
fn bench_vd(len: usize) -> Vec<f32> {
    (0..len).map(|i| 0.05 + 0.9 * ((i * 104729) % 997) as f32 / 997.0).collect()
}

/// The U-Net benchmarks on one backend: the pre-training iteration, or the spot-embedding pass.
fn unet_bench<B: crate::backend::Backend>(
    b: &B,
    batch: usize,
    size: usize,
    repeat: usize,
    embed_spots: Option<usize>,
    joint: bool,
    infer: bool,
) -> serde_json::Value {
    use crate::backend::Shape;
    use crate::model::unet::UNet;
    use crate::optim::{Adam, AdamConfig};
    let (net, mut host) = UNet::new(3, 0);
    if joint {
        return joint_bench(b, &net, &mut host, batch, size, repeat);
    }
    if infer {
        return infer_bench(b, &net, &mut host, batch, size, repeat);
    }
    let mut p = host.upload(b);
    let is = Shape { n: batch, h: size, w: size, c: 3 };
    let image = bench_image(is.len());
    let image = b.upload(&image);
    let threads = rayon::current_num_threads();
    if let Some(spots) = embed_spots {
        let mut times = Vec::new();
        for _ in 0..repeat.max(1) + 1 {
            let t = Instant::now();
            // whole batches (the last one filled up), as the embedding stage runs them
            for _ in 0..spots.div_ceil(batch) {
                let e = net.embed(b, &p, &image, is);
                b.release(e);
            }
            b.synchronize();
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0); // warm-up: module load, pool fill
        let t = median(times);
        return serde_json::json!({"bench": "unet_spot_embedding", "device": b.name(), "median_s": t, "repeat": repeat,
            "threads": threads, "detail": {"spots": spots.div_ceil(batch) * batch, "batch": batch, "size": size,
                "s_per_spot": t / (spots.div_ceil(batch) * batch) as f64}});
    }
    let sizes: Vec<usize> = p.data.iter().map(|d| b.len(d)).collect();
    let all: Vec<usize> = (0..sizes.len()).collect();
    let mut opt = Adam::with(AdamConfig::default(), &sizes, |n| b.zeros(n));
    let (mut tf, mut tb, mut ta) = (Vec::new(), Vec::new(), Vec::new());
    // half-precision operands train behind a loss scaler (its unscale pass is timed with Adam)
    let mut scaler = b.scales_loss().then(crate::optim::LossScaler::default);
    if b.graphs() {
        return recorded_pretrain_bench(b, &net, &mut p, &mut opt, scaler, is, repeat);
    }
    for _ in 0..repeat.max(1) + 1 {
        // activations in f16 where the backend trains so (the image and gradients of parameters stay f32)
        let _half = crate::backend::HalfActivations::set(b, b.half_training());
        b.synchronize();
        let t = Instant::now();
        let a = net.forward(b, &p, &image, is);
        b.synchronize();
        tf.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut d = b.alloc(is.len());
        let scale = scaler.as_ref().map_or(1.0, |s| s.scale as f64);
        b.mse_per_image(a.pred.as_ref().unwrap(), &image, is, scale / is.n as f64, &mut d);
        net.backward(b, &mut p, &a, &image, d);
        a.release(b);
        b.synchronize();
        tb.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        match &mut scaler {
            None => p.adam_step(b, &mut opt, &all, &vec![4e-4; all.len()]),
            Some(s) => {
                p.scaled_adam_step(b, &mut opt, s, &all, &vec![4e-4; all.len()]);
            }
        }
        b.synchronize();
        ta.push(t.elapsed().as_secs_f64());
    }
    // the first iteration fills the buffer pool (and loads kernels): not timed
    for v in [&mut tf, &mut tb, &mut ta] {
        v.remove(0);
    }
    let (f, bw, ad) = (median(tf), median(tb), median(ta));
    serde_json::json!({"bench": "unet_pretrain_iteration", "device": b.name(), "median_s": f + bw + ad, "repeat": repeat,
        "threads": threads,
        "detail": {"batch": batch, "size": size, "forward_s": f, "backward_s": bw, "adam_s": ad,
            "half_activations": b.half_training(),
            "peak_rss_mib": crate::util::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0}})
}

/// The pre-training iteration as the stage runs it with recordings on: forward, loss,
/// backward, unscale and Adam replayed as one CUDA graph (the loss and the found-inf flag read
/// after it). The first two iterations (eager, then recorded) are not timed.
fn recorded_pretrain_bench<B: crate::backend::Backend>(
    b: &B,
    net: &crate::model::unet::UNet,
    p: &mut crate::model::unet::Params<B::Buf>,
    opt: &mut crate::optim::Adam<B::Buf>,
    mut scaler: Option<crate::optim::LossScaler>,
    is: crate::backend::Shape,
    repeat: usize,
) -> serde_json::Value {
    use crate::backend::graphs::Ran;
    let all: Vec<usize> = (0..p.data.len()).collect();
    let lrs = vec![4e-4; all.len()];
    let mut step = crate::stages::pretrain::RecordedStep::<B>::default();
    step.load(b, &bench_image(is.len()), is);
    let (mut times, mut ran) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) + 2 {
        b.synchronize();
        let t = Instant::now();
        let (_, how, _) = step.step(b, net, p, opt, &all, &lrs, scaler.as_mut());
        b.synchronize();
        times.push(t.elapsed().as_secs_f64());
        ran.push(how);
    }
    let replayed = ran.iter().filter(|&&r| r == Ran::Replayed).count();
    times.drain(..2);
    step.release(b);
    let t = median(times);
    serde_json::json!({"bench": "unet_pretrain_iteration", "device": b.name(), "median_s": t, "repeat": repeat,
        "threads": rayon::current_num_threads(),
        "detail": {"batch": is.n, "size": is.h, "recorded": true, "replayed_steps": replayed,
            "half_activations": b.half_training(),
            "input": "uploaded once, read from the step's own buffer",
            "peak_rss_mib": crate::util::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0}})
}

/// High-definition inference: a batch of tiles to rank-20 scores, as the score stage runs it.
fn infer_bench<B: crate::backend::Backend>(
    b: &B,
    net: &crate::model::unet::UNet,
    host: &mut crate::model::unet::Params,
    batch: usize,
    size: usize,
    repeat: usize,
) -> serde_json::Value {
    use crate::backend::{Host, Shape};
    use crate::model::joint::JointHead;
    let rank = 20usize;
    let head = JointHead::new(host, 3, rank, 100, 0, 0);
    // whether the backend takes f16 activations: turned on inside the scope, the answer is the
    // setting it had there
    let half = {
        let _on = crate::backend::HalfActivations::on(b);
        b.half_activations(true)
    };
    let p = host.upload(b);
    // as the score stage holds them: the weights' f16 packings made once
    let _frozen = crate::backend::FrozenWeights::on(b);
    let is = Shape { n: batch, h: size, w: size, c: 3 };
    let image = bench_image(is.len());
    // the VD prior as the score stage reads it: half floats from its f16 file
    let vd16: Vec<half::f16> = bench_vd(batch * size * size * rank).into_iter().map(half::f16::from_f32).collect();
    let vd: Vec<f32> = vd16.iter().map(|v| v.to_f32()).collect();
    let im = b.upload(&image);
    let mut v = b.alloc_upload(Host::F16(&vd16));
    b.upload_overlapped(Host::F16(&vd16), &mut v, None);
    let mut times = Vec::new();
    // as the score stage runs a batch: one recorded launch where recordings are on
    let mut rec = crate::backend::graphs::RecordedOut::<B>::default();
    let net_batch = |x: &[&B::Buf]| head.hr_scores(b, net, &p, x[0], is, x[1]);
    for _ in 0..repeat.max(1) + 2 {
        b.synchronize();
        let t = Instant::now();
        rec.run(b, 0, &[&im, &v], &net_batch);
        b.synchronize();
        times.push(t.elapsed().as_secs_f64());
    }
    times.drain(..2); // warm-up: module load, pool fill (and the recording)
    let t = median(times);
    let mpx = (batch * size * size) as f64 / 1e6;
    b.release(im);
    b.release(v);
    // the same batches with their inputs coming from host memory each time: in f32, uploaded
    // in turn with the network (the naive baseline), or as the score stage feeds them (the VD
    // prior in f16, overlapped with the batch before)
    let batches = repeat.max(2);
    let serial = {
        let t0 = Instant::now();
        for _ in 0..batches {
            let (ib, vb) = (b.upload(&image), b.upload(&vd));
            let hr = head.hr_scores(b, net, &p, &ib, is, &vb);
            for x in [ib, vb, hr] {
                b.release(x);
            }
        }
        b.synchronize();
        t0.elapsed().as_secs_f64() / batches as f64
    };
    let overlapped = {
        let mut ring = crate::backend::streamed::InputRing::<B>::default();
        let inputs = [Host::F32(&image), Host::F16(&vd16)];
        // untimed: both slots' buffers and page-locked staging, set up once per slide
        for _ in 0..2 {
            let bufs = ring.fill(b, &inputs);
            rec.run(b, 0, &[&bufs[0], &bufs[1]], &net_batch);
            ring.done(b);
        }
        b.synchronize();
        let t0 = Instant::now();
        for _ in 0..batches {
            let bufs = ring.fill(b, &inputs);
            rec.run(b, 0, &[&bufs[0], &bufs[1]], &net_batch);
            ring.done(b);
        }
        b.synchronize();
        let t = t0.elapsed().as_secs_f64() / batches as f64;
        ring.release(b);
        t
    };
    rec.release(b);
    serde_json::json!({"bench": "unet_hd_inference", "device": b.name(), "median_s": t, "repeat": repeat,
        "threads": rayon::current_num_threads(),
        "detail": {"batch": batch, "size": size, "rank": rank, "megapixel_per_s": mpx / t, "recorded": b.graphs(),
            "half_activations": half,
            "input_mb_per_batch": (image.len() * 4 + vd.len() * 2) as f64 / 1e6,
            "with_uploads": {"batches": batches, "serial_f32_megapixel_per_s": mpx / serial,
                "serial_f32_input_mb_per_batch": ((image.len() + vd.len()) * 4) as f64 / 1e6,
                "overlapped_megapixel_per_s": mpx / overlapped},
            "peak_rss_mib": crate::util::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0}})
}

/// The joint-training iteration: a batch of tiles through body, heads, the three losses and
/// their gradients, then Adam over every tensor.
fn joint_bench<B: crate::backend::Backend>(
    b: &B,
    net: &crate::model::unet::UNet,
    host: &mut crate::model::unet::Params,
    batch: usize,
    size: usize,
    repeat: usize,
) -> serde_json::Value {
    use crate::backend::{Shape, TileSpots};
    use crate::model::joint::{JointBatch, JointHead, LossWeights};
    use crate::optim::{Adam, AdamConfig};
    let (rank, genes, radius) = (20usize, 3000usize, 45i64);
    let head = JointHead::new(host, 3, rank, genes, 0, 0);
    let mut p = host.upload(b);
    let sizes: Vec<usize> = p.data.iter().map(|d| b.len(d)).collect();
    let all: Vec<usize> = (0..sizes.len()).collect();
    let mut opt = Adam::with(AdamConfig::default(), &sizes, |n| b.zeros(n));
    let is = Shape { n: batch, h: size, w: size, c: 3 };
    let image = bench_image(is.len());
    let vd = bench_vd(batch * size * size * rank);
    // the reference bench's spot centres: every 3.6 r from r, disks of radius r
    let step = (3.6 * radius as f64) as i64;
    let centres: Vec<(i64, i64)> = (radius..size as i64 - radius)
        .step_by(step as usize)
        .flat_map(|y| (radius..size as i64 - radius).step_by(step as usize).map(move |x| (y, x)))
        .collect();
    let pixels: Vec<Vec<u32>> = centres
        .iter()
        .map(|&(cy, cx)| {
            let mut v = Vec::new();
            for y in cy - radius..=cy + radius {
                for x in cx - radius..=cx + radius {
                    if (y - cy).pow(2) + (x - cx).pow(2) <= radius * radius {
                        v.push((y * size as i64 + x) as u32);
                    }
                }
            }
            v
        })
        .collect();
    let expr: Vec<f32> = (0..centres.len() * genes).map(|i| ((i * 31) % 7) as f32).collect();
    let tiles: Vec<TileSpots> =
        (0..batch).map(|_| TileSpots { pixels: &pixels, expression: &expr, query: None }).collect();
    let (im, v) = (b.upload(&image), b.upload(&vd));
    let mut times = Vec::new();
    let mut loss = 0.0;
    for _ in 0..repeat.max(1) + 1 {
        b.synchronize();
        let t = Instant::now();
        let out = head.step(
            b,
            net,
            &mut p,
            &JointBatch { image: &im, shape: is, vd: &v, tiles: &tiles },
            &LossWeights::default(),
            true,
        );
        p.adam_step(b, &mut opt, &all, &vec![4e-4; all.len()]);
        b.synchronize();
        times.push(t.elapsed().as_secs_f64());
        loss = out.loss;
    }
    times.remove(0);
    serde_json::json!({"bench": "unet_joint_iteration", "device": b.name(), "median_s": median(times), "repeat": repeat,
        "threads": rayon::current_num_threads(),
        "detail": {"batch": batch, "size": size, "rank": rank, "genes": genes, "spots_per_tile": centres.len(), "loss": loss}})
}

fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(times), last.unwrap()))
}

fn bench_gcn(dir: &std::path::Path, iterations: usize, repeat: usize, device: &str) -> Result<()> {
    use crate::io::npy::read_npy;
    use crate::stages::gcn::{train_gcn, GcnParams, GcnSettings};
    use crate::stages::graph::{spot_graph, GraphMode, DEFAULT_NEIGHBORS};
    let gpu = bench_gpu(device, crate::backend::cuda::Precision::Exact)?;
    let (ss, score) = read_npy::<f32>(&dir.join("score.npy"))?;
    let (n, r) = (ss[0] as usize, ss[1] as usize);
    let threads = rayon::current_num_threads();
    let (adj, total) = if dir.join("embeddings.npy").exists() {
        let (_, c) = read_npy::<f64>(&dir.join("coords.npy"))?;
        let coords: Vec<[f64; 2]> = c.chunks(2).map(|p| [p[0], p[1]]).collect();
        let (es, emb) = read_npy::<f32>(&dir.join("embeddings.npy"))?;
        let rss0 = crate::util::peak_rss_bytes();
        let (t, adj) =
            time(repeat, || Ok(spot_graph(&coords, &emb, es[1] as usize, n, DEFAULT_NEIGHBORS, GraphMode::Exact)))?;
        let rss1 = crate::util::peak_rss_bytes();
        let same = match read_npy::<i64>(&dir.join("adj_indices.npy")) {
            Ok((_, idx)) => {
                let ptr = read_npy::<i64>(&dir.join("adj_indptr.npy"))?.1;
                Some(
                    idx.iter().map(|&v| v as u32).eq(adj.indices.iter().copied())
                        && ptr.iter().map(|&v| v as usize).eq(adj.indptr.iter().copied()),
                )
            }
            Err(_) => None,
        };
        println!(
            "{}",
            serde_json::json!({"bench": "spot_graph", "median_s": t, "repeat": repeat, "threads": threads,
                "detail": {"spots": n, "pseudo": coords.len() - n, "edges": adj.nnz(), "same_as_reference": same,
                    "peak_rss_mib_before": rss0.unwrap_or(0) as f64 / 1048576.0, "peak_rss_mib_after": rss1.unwrap_or(0) as f64 / 1048576.0}})
        );
        let total = coords.len();
        (adj, total)
    } else {
        // the reference's adjacency as saved (a bundle without the embeddings: GCN only)
        let ptr = read_npy::<i64>(&dir.join("adj_indptr.npy"))?.1;
        let idx = read_npy::<i64>(&dir.join("adj_indices.npy"))?.1;
        let data = read_npy::<f32>(&dir.join("adj_data.npy"))?.1;
        let total = ptr.len() - 1;
        let adj = crate::io::sparse::Csr {
            rows: total,
            cols: total,
            indptr: ptr.iter().map(|&v| v as usize).collect(),
            indices: idx.iter().map(|&v| v as u32).collect(),
            data,
        };
        (adj, total)
    };
    let s = GcnSettings { iterations, ..Default::default() };
    let (t, res) = time(1, || {
        let pb = crate::util::progress_count(iterations as u64, "GCN");
        let p = GcnParams::init(total - n, r, s.seed);
        let res = match &gpu {
            None => train_gcn(&adj, &score, n, p, &s, |_, _| pb.inc(1)),
            Some(g) => crate::backend::cuda::gcn::train_gcn_cuda(g, &adj, &score, n, p, &s, |_, _| pb.inc(1)),
        };
        pb.finish_and_clear();
        Ok(res)
    })?;
    let mse: f64 = res.output[..n * r].iter().zip(&score).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>()
        / (n * r) as f64;
    println!(
        "{}",
        serde_json::json!({"bench": "gcn_train", "seconds": t, "iterations": iterations, "threads": threads,
            "device": gpu.as_ref().map_or_else(|| "cpu".to_string(), crate::backend::Backend::name),
            "detail": {"ms_per_iteration": 1e3 * t / iterations.max(1) as f64, "rows_per_layer": res.rows_per_layer, "final_mse": mse}})
    );
    Ok(())
}

fn bench_stages(device: &str, spots: usize, genes: usize, rank: usize, side: usize, kernel: usize) -> Result<()> {
    use crate::stages::nmf::{nmf, reconstruction_error, NmfSettings};
    use crate::stages::voronoi::vd_score;
    use rand::{Rng, SeedableRng};
    let gpu = bench_gpu(device, crate::backend::cuda::Precision::Exact)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    // counts of rank 8 plus noise, about a third non-zero
    let k = 8;
    let a: Vec<f32> = (0..spots * k).map(|_| rng.random_range(0.0..1.0)).collect();
    let b: Vec<f32> = (0..k * genes).map(|_| rng.random_range(0.0..1.0)).collect();
    let mut x = crate::io::sparse::Csr::empty(spots, genes);
    for i in 0..spots {
        for j in 0..genes {
            if rng.random_bool(0.34) {
                let v: f32 = (0..k).map(|t| a[i * k + t] * b[t * genes + j]).sum();
                x.indices.push(j as u32);
                x.data.push((v + rng.random_range(0.0..1.0)).ln_1p());
            }
        }
        x.indptr[i + 1] = x.indices.len();
    }
    let s = NmfSettings { rank, ..Default::default() };
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let fc = nmf(&x, &s);
    let tc = t.elapsed().as_secs_f64();
    let ec = reconstruction_error(&x, &fc);
    let mut nmf_json = serde_json::json!({"bench": "nmf_synthetic", "threads": threads,
        "detail": {"spots": spots, "genes": genes, "rank": rank, "nnz": x.nnz(),
            "cpu_s": tc, "cpu_iterations": fc.iterations, "cpu_error": ec}});
    if let Some(g) = &gpu {
        let t = Instant::now();
        let mut fg = None;
        let ev = g.time_ms(|| fg = Some(crate::backend::cuda::nmf::nmf_cuda(g, &x, &s)));
        let (tg, fg) = (t.elapsed().as_secs_f64(), fg.unwrap());
        let d = &mut nmf_json["detail"];
        d["gpu_s"] = tg.into();
        d["gpu_event_ms"] = ev.into();
        d["gpu_iterations"] = fg.iterations.into();
        d["gpu_error"] = reconstruction_error(&x, &fg).into();
        d["device"] = crate::backend::Backend::name(g).into();
    }
    println!("{nmf_json}");
    // a side × side crop of spots 55 px apart on a hexagonal lattice, a disk of tissue
    let mut centres = Vec::new();
    for (i, y) in (0..side).step_by(48).enumerate() {
        for x in (if i % 2 == 0 { 0 } else { 27 }..side).step_by(55) {
            centres.push([y as f64, x as f64]);
        }
    }
    let index = crate::preprocess::nearest::SpotIndex::new(&centres);
    let nearest = index.nearest_map(0, side, 0, side);
    let scores: Vec<f32> = (0..centres.len() * rank).map(|_| rng.random_range(0.0..1.0)).collect();
    let c = side as f32 / 2.0;
    let bytes: Vec<u8> = (0..side * side)
        .map(|i| u8::from(((i / side) as f32 - c).hypot((i % side) as f32 - c) < 0.48 * side as f32))
        .collect();
    let mask = crate::preprocess::morphology::Mask::from_bytes(side, side, &bytes);
    let t = Instant::now();
    let want = vd_score(&scores, rank, &nearest, &mask, kernel, 0.01);
    let tc = t.elapsed().as_secs_f64();
    let mut vd_json = serde_json::json!({"bench": "vd_synthetic", "threads": threads,
        "detail": {"pixels": side * side, "spots": centres.len(), "components": rank, "kernel": kernel, "cpu_s": tc}});
    if let Some(g) = &gpu {
        let t = Instant::now();
        let mut res = None;
        let ev = g.time_ms(|| {
            res = Some(crate::backend::cuda::vd::vd_score_cuda(g, &scores, rank, &nearest, &mask, kernel, 0.01))
        });
        let (tg, (got, summary)) = (t.elapsed().as_secs_f64(), res.unwrap());
        let (mut num, mut den) = (0f64, 0f64);
        for (p, q) in got.iter().zip(&want) {
            for (a, b) in p.iter().zip(q) {
                num += ((a - b) as f64).powi(2);
                den += (*b as f64).powi(2);
            }
        }
        let d = &mut vd_json["detail"];
        d["gpu_s"] = tg.into();
        d["gpu_event_ms"] = ev.into();
        d["relative_error"] = (num / den.max(1e-300)).sqrt().into();
        d["passes"] = summary.iter().map(|c| c.passes).collect::<Vec<_>>().into();
        d["device"] = crate::backend::Backend::name(g).into();
    }
    println!("{vd_json}");
    Ok(())
}

fn bench_preprocess(input: &super::InputArgs, repeat: usize) -> Result<()> {
    use crate::io::image::ImageCache;
    use crate::preprocess::expression::preprocess_expression;
    use crate::preprocess::nearest::SpotIndex;
    use crate::preprocess::pseudo_spots::{create_pseudo_spots, pseudo_spot_count};
    use crate::preprocess::svg::{grid_neighbors, morans_i};
    use crate::preprocess::tissue::{prepare_image, TissueSettings};
    use rand::SeedableRng;
    let spec = &input.sections()?[0];
    let d = spec.load(&input.table_options())?;
    let e = preprocess_expression(&d, None, None)?;
    let all = d.row_col(spec.swap_coord);
    let rc: Vec<[f64; 2]> = e.kept_spots.iter().map(|&i| all[i]).collect();
    let report = |what: &str, s: f64, extra: serde_json::Value| {
        println!(
            "{}",
            serde_json::json!({"bench": what, "median_s": s, "repeat": repeat, "threads": rayon::current_num_threads(), "detail": extra})
        );
    };
    let (t, mi) = time(repeat, || Ok(morans_i(&e.x, &grid_neighbors(&rc, 6))))?;
    report(
        "morans_i",
        t,
        serde_json::json!({"spots": e.x.rows, "genes": e.x.cols, "nan": mi.iter().filter(|v| v.is_nan()).count()}),
    );
    let image = d.image.clone().ok_or_else(|| crate::error::Error::setting("--image", "needed"))?;
    let cache = tempfile_dir()?;
    let (t, src) = time(1, || ImageCache::open(&image, &cache))?;
    report("decode_to_cache", t, serde_json::json!({"bytes": src.info.total_bytes()}));
    let (radius, _) = spec.radius_for(&d, &mut Vec::new());
    let ts =
        TissueSettings { scale_rate: spec.scale_rate, radius, create_mask: true, image_type: None, color_norm: false };
    let (t, p) = time(repeat, || {
        // a fresh derived cache each time: the scaled image is part of the work
        let dir = cache.join(format!("scaled-{}", rand::random::<u32>()));
        let r = prepare_image(&src, &dir, &rc, &ts);
        let _ = std::fs::remove_dir_all(&dir);
        r.map(|p| {
            (
                p.full_mask.height,
                p.full_mask.width,
                p.row_range,
                p.col_range,
                p.radius,
                p.feasible_domain(),
                p.spots.clone(),
            )
        })
    })?;
    let (hh, hw, rr, cr, rad, feasible, spots) = p;
    report("scale_and_mask", t, serde_json::json!({"scaled": [hh, hw], "scale_rate": spec.scale_rate}));
    let n_pseudo = pseudo_spot_count(spots.len(), 5.0);
    let (t, pseudo) = time(repeat, || {
        Ok(create_pseudo_spots(feasible.clone(), rad, n_pseudo, 10, &mut rand::rngs::StdRng::seed_from_u64(1)))
    })?;
    report("pseudo_spots", t, serde_json::json!({"pseudo_spots": pseudo.len(), "domain": [hh, hw]}));
    let mut every = spots.clone();
    every.extend(pseudo.iter().map(|p| [p[0] as f64, p[1] as f64]));
    for (name, set) in [("nearest_map_sequenced", &spots), ("nearest_map_all", &every)] {
        let (t, m) = time(repeat, || Ok(SpotIndex::new(set).nearest_map(rr.0, rr.1, cr.0, cr.1)))?;
        report(name, t, serde_json::json!({"spots": set.len(), "pixels": m.len()}));
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("spahdmap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| crate::error::Error::io(&d, e))?;
    Ok(d)
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        BenchWhat::Preprocess { input, repeat } => bench_preprocess(&input, repeat)?,
        BenchWhat::Vd { scores, nearest, mask, kernel, repeat } => {
            use crate::io::npy::read_npy;
            let (ss, sc) = read_npy::<f32>(&scores)?;
            let (ns, nn) = read_npy::<i32>(&nearest)?;
            let (ms, mk) = read_npy::<u8>(&mask)?;
            let mask = crate::preprocess::morphology::Mask::from_bytes(ms[0] as usize, ms[1] as usize, &mk);
            let near: Vec<u32> = nn.iter().map(|&v| v as u32).collect();
            let r = ss[1] as usize;
            let (t, _) = time(repeat, || Ok(crate::stages::voronoi::vd_score(&sc, r, &near, &mask, kernel, 0.01)))?;
            println!(
                "{}",
                serde_json::json!({"bench": "vd", "median_s": t, "repeat": repeat, "threads": rayon::current_num_threads(),
                    "detail": {"pixels": ns[0] * ns[1], "components": r, "kernel": kernel}})
            );
        }
        BenchWhat::Stages { device, spots, genes, rank, side, kernel } => {
            bench_stages(&device, spots, genes, rank, side, kernel)?
        }
        BenchWhat::Gcn { dir, iterations, repeat, device } => bench_gcn(&dir, iterations, repeat, &device)?,
        BenchWhat::Accuracy { results, truth, section } => {
            let a = crate::simulate::evaluate::evaluate(&results, &truth, &section)?;
            println!("{}", serde_json::json!({"bench": "accuracy", "detail": a}));
        }
        BenchWhat::Unet {
            batch,
            size,
            repeat,
            embed_spots,
            device,
            exact,
            pipelined,
            wide: _,
            plain,
            f16,
            joint,
            infer,
            half,
            f32_storage,
        } => {
            use crate::backend::cuda::Precision;
            let precision = match (exact, pipelined, plain, f16) {
                (true, ..) => Precision::Exact,
                (_, true, ..) => Precision::Tf32Pipelined,
                (_, _, true, _) => Precision::Tf32,
                (.., true) => Precision::F16Wide,
                _ => crate::backend::cuda::SPEED,
            };
            let v = match bench_gpu(&device, precision)? {
                None => unet_bench(&crate::backend::Cpu::new(), batch, size, repeat, embed_spots, joint, infer),
                Some(g) => {
                    if half {
                        g.use_half_storage(true);
                        g.use_half_training(!infer);
                    }
                    if f32_storage {
                        g.use_half_storage(false);
                    }
                    // device time per kernel over every iteration, the warm-up one included
                    let profiling = std::env::var_os("SPAHDMAP_GPU_PROFILE").is_some_and(|v| v != "0");
                    g.set_profiling(profiling);
                    let mut v = unet_bench(&g, batch, size, repeat, embed_spots, joint, infer);
                    if profiling {
                        v["profile"] = profile_json(&g.take_profile(), repeat.max(1) + 1);
                    }
                    v
                }
            };
            println!("{v}");
        }
        BenchWhat::Nmf { input, rank, genes, repeat, dump } => {
            use crate::preprocess::expression::preprocess_expression;
            use crate::stages::nmf::{nmf, reconstruction_error, NmfSettings};
            let spec = &input.sections()?[0];
            let d = spec.load(&input.table_options())?;
            let e = preprocess_expression(&d, None, Some(genes))?;
            if let Some(p) = &dump {
                crate::io::npy::write_npy(p, &[e.x.rows as u64, e.x.cols as u64], e.x.to_dense())?;
            }
            let s = NmfSettings { rank, ..Default::default() };
            let (t, f) = time(repeat, || Ok(nmf(&e.x, &s)))?;
            let err = reconstruction_error(&e.x, &f);
            println!(
                "{}",
                serde_json::json!({"bench": "nmf", "median_s": t, "repeat": repeat, "threads": rayon::current_num_threads(),
                    "detail": {"spots": e.x.rows, "genes": e.x.cols, "rank": rank, "iterations": f.iterations, "reconstruction_err": err}})
            );
        }
        BenchWhat::Decode { image, repeat, json } => {
            let mut times = Vec::new();
            let mut bytes = 0u64;
            for _ in 0..repeat.max(1) {
                let t = Instant::now();
                bytes = 0;
                let mut checksum = 0u64;
                decode_bands(&image, &mut |band| {
                    bytes += band.len() as u64;
                    checksum = checksum.wrapping_add(band[band.len() / 2] as u64);
                    Ok(())
                })?;
                std::hint::black_box(checksum);
                times.push(t.elapsed().as_secs_f64());
            }
            let m = median(times);
            let mbps = bytes as f64 / 1e6 / m;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "decode", "image": image, "bytes": bytes, "median_s": m, "mb_per_s": mbps, "repeat": repeat})
                );
            } else {
                println!(
                    "decode {}: {:.1} MB of pixels, median {:.3} s over {} runs, {:.0} MB/s",
                    image.display(),
                    bytes as f64 / 1e6,
                    m,
                    repeat,
                    mbps
                );
            }
        }
    }
    Ok(())
}
