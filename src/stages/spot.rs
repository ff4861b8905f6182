//! The spot-level stages of `spahdmap run` (SPEC §5, §7, §8) over a results folder that
//! `preprocess` filled: `nmf` (all sections jointly), `gcn` and `vd` (per section).

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::image::ImageCache;
use crate::io::npy::{read_npy, write_npy};
use crate::io::sparse::Csr;
use crate::linalg::{gemm, transpose};
use crate::model::unet::UNet;
use crate::preprocess::nearest::SpotIndex;
use crate::stages::embed::{EncoderEmbedder, SpotEmbedder, WindowStats};
use crate::stages::gcn::{train_gcn, GcnParams, GcnSettings};
use crate::stages::gmm::filter_scores;
use crate::stages::graph::{spot_graph, GraphMode, DEFAULT_NEIGHBORS};
use crate::stages::nmf::{nmf, nnls_rows, normalise, reference_shift, transfer_scores, NmfSettings};
use crate::stages::results::{read_metagenes, write_metagenes, F16NpyWriter, SectionDir};
use crate::stages::voronoi::{FileRows, MemRows, RowStore, VdJob};

/// Where the spot graph's image embeddings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Embedding {
    /// the pre-trained U-Net's encoder, as the reference (needs models/pretrained.safetensors)
    Encoder,
    /// window statistics: no model, seconds instead of a network pass per spot
    Stats,
}

/// Settings of the spot-level stages (reference defaults).
#[derive(Debug, Clone, Serialize)]
pub struct SpotSettings {
    pub nmf: NmfSettings,
    pub gcn: GcnSettings,
    pub graph_mode: GraphMode,
    pub neighbors: usize,
    /// two-Gaussian low-signal filter of the GCN scores
    pub gmm_filter: bool,
    pub smooth_threshold: f32,
    /// `metagene_NMF.csv` to transfer from (scores by NNLS, no factorisation)
    pub transfer_from: Option<std::path::PathBuf>,
    /// crops above this many pixels smooth through scratch files instead of memory
    pub stream_above_pixels: usize,
    pub embedding: Embedding,
    /// windows are upsampled to the tile size before the encoder
    pub split_size: usize,
    /// where the network runs
    #[serde(skip)]
    pub device: crate::backend::Device,
}

impl Default for SpotSettings {
    fn default() -> Self {
        SpotSettings {
            device: Default::default(),
            nmf: NmfSettings::default(),
            gcn: GcnSettings::default(),
            graph_mode: GraphMode::Exact,
            neighbors: DEFAULT_NEIGHBORS,
            gmm_filter: true,
            smooth_threshold: 0.01,
            transfer_from: None,
            stream_above_pixels: 64 << 20,
            embedding: Embedding::Encoder,
            split_size: 256,
        }
    }
}

fn stack_rows(parts: &[Csr]) -> Csr {
    let cols = parts[0].cols;
    let mut m = Csr::empty(0, cols);
    m.indptr.clear();
    m.indptr.push(0);
    for p in parts {
        for r in 0..p.rows {
            let (i, v) = p.row(r);
            m.indices.extend_from_slice(i);
            m.data.extend_from_slice(v);
            m.indptr.push(m.indices.len());
        }
        m.rows += p.rows;
    }
    m
}

fn section_expressions(sections: &[SectionDir]) -> Result<(Vec<Csr>, Vec<String>)> {
    let mut xs = Vec::new();
    let mut genes: Option<Vec<String>> = None;
    for s in sections {
        let (x, g) = s.expression()?;
        if let Some(g0) = &genes {
            if *g0 != g {
                return Err(Error::format(s.path("expression/genes.txt"), "genes", "differs from the first section's"));
            }
        } else {
            genes = Some(g);
        }
        xs.push(x);
    }
    Ok((xs, genes.unwrap_or_default()))
}

fn f32_of(v: &[f64]) -> impl Iterator<Item = f32> + '_ {
    v.iter().map(|&x| x as f32)
}

/// `nmf`: factorise all sections' expression jointly (or score against given metagenes),
/// normalise, shift query sections onto their references. Writes `metagene_NMF.csv`,
/// `SECTION/NMF_score.npy` and, with references, `nmf_gamma.npy` (pairs × genes).
pub fn run_nmf(out: &Path, sections: &[SectionDir], refs: &[(String, String)], s: &SpotSettings) -> Result<()> {
    let (xs, genes) = section_expressions(sections)?;
    let x = stack_rows(&xs);
    let (g, r) = (x.cols, s.nmf.rank);
    let (w, h, r) = if let Some(path) = &s.transfer_from {
        let (mg, m, rank) = read_metagenes(path)?;
        if mg != genes {
            return Err(Error::format(path, "genes", "the metagenes' genes differ from this run's gene list"));
        }
        // file is genes × R; H is R × genes
        let h = transpose(&m, g, rank);
        (transfer_scores(&x, &h, rank), h, rank)
    } else {
        let pb = crate::util::progress_count(1, "NMF");
        let settings = NmfSettings { rank: r, ..s.nmf.clone() };
        let mut f = match s.device.gpu(crate::backend::cuda::SPEED)? {
            None => nmf(&x, &settings),
            Some(g) => crate::backend::cuda::nmf::nmf_cuda(&g, &x, &settings),
        };
        pb.finish_and_clear();
        eprintln!("nmf: {} spots × {} genes, rank {}, {} iterations", x.rows, g, f.rank, f.iterations);
        normalise(&mut f, x.rows, g);
        (f.w, f.h, f.rank)
    };
    let mut blocks = Vec::new();
    let mut at = 0;
    for xi in &xs {
        blocks.push(w[at * r..(at + xi.rows) * r].to_vec());
        at += xi.rows;
    }
    let index = |name: &str| {
        sections
            .iter()
            .position(|sd| sd.meta.section == name)
            .ok_or_else(|| Error::setting("reference", format!("no section named {name:?}")))
    };
    let pairs: Vec<(usize, usize)> = refs.iter().map(|(q, rf)| Ok((index(q)?, index(rf)?))).collect::<Result<_>>()?;
    if !pairs.is_empty() {
        let gamma = reference_shift(&mut blocks, &pairs, &h, r, g);
        write_npy(&out.join("nmf_gamma.npy"), &[pairs.len() as u64, g as u64], f32_of(&gamma))?;
    }
    for (sd, b) in sections.iter().zip(&blocks) {
        write_npy(&sd.path("NMF_score.npy"), &[(b.len() / r) as u64, r as u64], f32_of(b))?;
    }
    let ht = transpose(&h, r, g);
    write_metagenes(&out.join("metagene_NMF.csv"), &genes, &ht, r)
}

/// Per-section summary of the `gcn` stage, kept in the stage record.
#[derive(Debug, Clone, Serialize)]
pub struct GcnReport {
    pub section: String,
    pub embedding: &'static str,
    pub edges: usize,
    pub rows_per_layer: [usize; 5],
    pub first_loss: f64,
    pub final_loss: f64,
    pub nonzero_fraction: f64,
}

/// `gcn`: embeddings → spot graph → GCN autoencoder → mixture filter, per section; then
/// metagenes refined by NNLS of expression on the sequenced spots' GCN scores. Writes
/// `SECTION/GCN_score.npy` ((N+P) × R), `SECTION/gcn_loss.npy`, `metagene_GCN.csv`.
pub fn run_gcn(
    out: &Path,
    sections: &[SectionDir],
    refs: &[(String, String)],
    s: &SpotSettings,
) -> Result<Vec<GcnReport>> {
    match s.device.gpu(crate::backend::cuda::SPEED)? {
        None => gcn_on(&crate::backend::Cpu::new(), None, out, sections, refs, s),
        Some(g) => gcn_on(&g, Some(&g), out, sections, refs, s),
    }
}

/// `run_gcn` with the encoder embedding (when asked for) on backend `b`, the GCN on `gpu`
/// when given.
fn gcn_on<B: crate::backend::Backend>(
    b: &B,
    gpu: Option<&crate::backend::cuda::Cuda>,
    out: &Path,
    sections: &[SectionDir],
    refs: &[(String, String)],
    s: &SpotSettings,
) -> Result<Vec<GcnReport>> {
    let mut reports = Vec::new();
    let mut seq_scores = Vec::new();
    let model = match s.embedding {
        Embedding::Encoder => {
            let path = out.join("models/pretrained.safetensors");
            if !path.exists() {
                return Err(Error::setting(
                    "--embedding encoder",
                    format!("{} is missing: run the pretrain stage first, or use --embedding stats", path.display()),
                ));
            }
            let channels = ImageCache::open_existing(&sections[0].meta.scaled_image_cache)?.info.channels;
            let (net, mut p) = UNet::new(channels, 0);
            crate::model::checkpoint::load(&crate::backend::Cpu::new(), &path, &mut p, None)?;
            Some((net, p.upload(b)))
        }
        Embedding::Stats => None,
    };
    for (k, sd) in sections.iter().enumerate() {
        let (ss, score) = read_npy::<f32>(&sd.path("NMF_score.npy"))?;
        let (n, r) = (ss[0] as usize, ss[1] as usize);
        let (spots, n_seq) = sd.all_spots()?;
        if n_seq != n {
            return Err(Error::format(
                sd.path("NMF_score.npy"),
                "rows",
                format!("{n}, but the section has {n_seq} spots"),
            ));
        }
        let image = ImageCache::open_existing(&sd.meta.scaled_image_cache)?;
        let m = &sd.meta;
        let stats = WindowStats { channels: image.info.channels };
        let encoder = model.as_ref().map(|(net, p)| EncoderEmbedder {
            backend: b,
            net,
            params: p,
            split_size: s.split_size,
            batch: 32,
        });
        let embedder: &dyn SpotEmbedder = match &encoder {
            Some(e) => e,
            None => &stats,
        };
        let bounds = [m.row0, m.row0 + m.height, m.col0, m.col0 + m.width];
        let emb = embedder.embed(&image, &spots, m.radius, bounds)?;
        let adj = spot_graph(&spots, &emb, embedder.dim(), n, s.neighbors, s.graph_mode);
        let settings =
            GcnSettings { seed: s.gcn.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), ..s.gcn.clone() };
        let params = GcnParams::init(spots.len() - n, r, settings.seed);
        let pb = crate::util::progress_count(settings.iterations as u64, &format!("GCN {}", m.section));
        let mut res = match gpu {
            None => train_gcn(&adj, &score, n, params, &settings, |_, _| pb.inc(1)),
            Some(g) => {
                crate::backend::cuda::gcn::train_gcn_cuda(g, &adj, &score, n, params, &settings, |_, _| pb.inc(1))
            }
        };
        pb.finish_and_clear();
        filter_scores(&mut res.output, r, s.gmm_filter);
        let nz = res.output.iter().filter(|&&v| v > 0.0).count() as f64 / res.output.len().max(1) as f64;
        write_npy(&sd.path("GCN_score.npy"), &[spots.len() as u64, r as u64], res.output.iter().copied())?;
        write_npy(&sd.path("gcn_loss.npy"), &[res.losses.len() as u64], res.losses.iter().copied())?;
        reports.push(GcnReport {
            section: m.section.clone(),
            embedding: embedder.name(),
            edges: adj.nnz(),
            rows_per_layer: res.rows_per_layer,
            first_loss: res.losses.first().copied().unwrap_or(f64::NAN),
            final_loss: res.losses.last().copied().unwrap_or(f64::NAN),
            nonzero_fraction: nz,
        });
        seq_scores.push(res.output[..n * r].to_vec());
    }
    refine_metagenes(out, sections, refs, &seq_scores)?;
    Ok(reports)
}

/// metagene_GCN = argmin_{C ≥ 0} ‖X − S Cᵀ‖ over all sections' sequenced spots, query
/// sections' expression first reduced by their gamma (clipped at 0), as the reference does.
fn refine_metagenes(out: &Path, sections: &[SectionDir], refs: &[(String, String)], scores: &[Vec<f32>]) -> Result<()> {
    let (xs, genes) = section_expressions(sections)?;
    let g = genes.len();
    let r = scores.first().map(|s| s.len() / xs[0].rows.max(1)).unwrap_or(0).max(1);
    let gamma = if refs.is_empty() { None } else { Some(read_npy::<f32>(&out.join("nmf_gamma.npy"))?.1) };
    let mut gram = vec![0f64; r * r];
    let mut xts = vec![0f64; r * g]; // Sᵀ X
    for (k, (x, sc)) in xs.iter().zip(scores).enumerate() {
        let n = x.rows;
        let s64: Vec<f64> = sc.iter().map(|&v| v as f64).collect();
        let st = transpose(&s64, n, r);
        let mut gk = vec![0f64; r * r];
        gemm(r, n, r, &st, &s64, &mut gk);
        gram.iter_mut().zip(&gk).for_each(|(a, b)| *a += b);
        let shift = refs
            .iter()
            .position(|(q, _)| *q == sections[k].meta.section)
            .and_then(|p| gamma.as_ref().map(|gm| &gm[p * g..(p + 1) * g]));
        let mut dense = x.to_dense();
        if let Some(sh) = shift {
            for row in dense.chunks_mut(g) {
                for (v, &s) in row.iter_mut().zip(sh) {
                    *v = (*v - s).max(0.0);
                }
            }
        }
        let xd: Vec<f64> = dense.iter().map(|&v| v as f64).collect();
        let mut part = vec![0f64; r * g];
        gemm(r, n, g, &st, &xd, &mut part);
        xts.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    let rhs = transpose(&xts, r, g);
    let c = nnls_rows(&rhs, &gram, r);
    write_metagenes(&out.join("metagene_GCN.csv"), &genes, &c, r)
}

/// Per-section summary of the `vd` stage.
#[derive(Debug, Clone, Serialize)]
pub struct VdReport {
    pub section: String,
    pub kernel: usize,
    pub streamed: bool,
    pub passes: Vec<usize>,
}

/// `vd`: the Voronoi score of each section's crop from its GCN scores, written as
/// `SECTION/VD_score.npy` (R × H × W, f16) band by band.
pub fn run_vd(sections: &[SectionDir], s: &SpotSettings) -> Result<Vec<VdReport>> {
    let mut reports = Vec::new();
    for sd in sections {
        let m = &sd.meta;
        let (gs, scores) = read_npy::<f32>(&sd.path("GCN_score.npy"))?;
        let r = gs[1] as usize;
        let (spots, _) = sd.all_spots()?;
        if gs[0] as usize != spots.len() {
            return Err(Error::format(sd.path("GCN_score.npy"), "rows", "does not match the section's spots"));
        }
        let mask = sd.mask()?;
        let (h, w) = (m.height, m.width);
        if (mask.height, mask.width) != (h, w) {
            return Err(Error::format(sd.path("mask.npy"), "shape", "differs from meta.json"));
        }
        let kernel = m.radius / 2 * 2 + 1;
        let streamed = h * w > s.stream_above_pixels;
        // a crop that fits in memory is smoothed on the GPU when there is one
        let gpu = if streamed { None } else { s.device.gpu(crate::backend::cuda::SPEED)? };
        let job =
            VdJob { scores: &scores, rank: r, height: h, width: w, kernel, threshold: s.smooth_threshold, mask: &mask };
        let index = SpotIndex::new(&spots);
        let pb = crate::util::progress_count(r as u64, &format!("VD {}", m.section));
        let summary = F16NpyWriter::create(&sd.path("VD_score.npy"), &[r, h, w], |writer| {
            let emit = |t: usize, y0: usize, rows: &[f32]| {
                let at = t * h * w + y0 * w;
                writer.write(at, rows);
                // whole pages of this band leave memory now, the pages it shares with its
                // neighbours when the component is finished
                writer.release(at, at + rows.len())
            };
            // a finished component goes to the page cache and leaves this process's memory
            let mut finished = |t: usize| {
                pb.inc(1);
                writer.release(t * h * w, (t + 1) * h * w)
            };
            let fill_nearest = |store: &dyn RowStore<u32>| -> Result<()> {
                for y0 in (0..h).step_by(256) {
                    let y1 = (y0 + 256).min(h);
                    store.write(y0, &index.nearest_map(m.row0 + y0, m.row0 + y1, m.col0, m.col0 + w))?;
                }
                Ok(())
            };
            if let Some(g) = &gpu {
                // the crop fits in memory: smooth it on the GPU, component by component
                let near = MemRows::<u32>::new(h, w);
                fill_nearest(&near)?;
                let (planes, summary) = crate::backend::cuda::vd::vd_score_cuda(
                    g,
                    &scores,
                    r,
                    &near.into_vec(),
                    &mask,
                    kernel,
                    s.smooth_threshold,
                );
                for (t, p) in planes.iter().enumerate() {
                    emit(t, 0, p)?;
                    finished(t)?;
                }
                Ok(summary)
            } else if streamed {
                let near = FileRows::<u32>::new(&sd.dir, h, w)?;
                fill_nearest(&near)?;
                let (a, b) = (FileRows::new(&sd.dir, h, w)?, FileRows::new(&sd.dir, h, w)?);
                job.run(&near, &a, &b, &emit, &mut finished)
            } else {
                let near = MemRows::<u32>::new(h, w);
                fill_nearest(&near)?;
                let (a, b) = (MemRows::new(h, w), MemRows::new(h, w));
                job.run(&near, &a, &b, &emit, &mut finished)
            }
        })?;
        pb.finish_and_clear();
        reports.push(VdReport {
            section: m.section.clone(),
            kernel,
            streamed,
            passes: summary.iter().map(|c| c.passes).collect(),
        });
    }
    Ok(reports)
}
