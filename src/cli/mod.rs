//! Command line: parses flags and calls the library. Errors become one line on stderr.

mod bench;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::io::config::{read_config, SectionInput, SectionSpec};
use crate::io::spots::TableOptions;
use crate::simulate::{simulate, SimParams};
use crate::stages::preprocess::PreprocessSettings;
use crate::stages::Stage;

#[derive(Parser)]
#[command(
    name = "spahdmap",
    version,
    about = "SpaHDmap: pixel-resolution embeddings from spatial transcriptomics and histology"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
enum Command {
    /// Write a simulated Space Ranger-style section with ground truth.
    Simulate(SimulateArgs),
    /// Load a section and report what was found.
    Inspect(InspectArgs),
    /// Run the pipeline on one or more sections.
    Run(RunArgs),
    /// Stage and kernel benchmarks.
    Bench(bench::BenchArgs),
    /// CPU threads, CUDA devices, and whether kernels were built and for which architectures.
    Devices(DevicesArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Results folder.
    #[arg(long)]
    out: PathBuf,
    /// Number of embeddings (metagenes).
    #[arg(long, default_value_t = 20)]
    rank: usize,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    /// Redo from this stage (default: resume after the last finished one).
    #[arg(long)]
    from: Option<Stage>,
    /// Stop after this stage.
    #[arg(long, default_value = "downstream")]
    to: Stage,
    /// Transfer: take the pre-trained network from this model file instead of pre-training
    /// (models/pretrained.safetensors of another run, or a converted `pretrained_model.pth`).
    #[arg(long)]
    pretrained_model: Option<PathBuf>,
    /// Transfer: take the trained joint network (and its metagenes) from this model file
    /// instead of training (with --transfer-metagenes and the same genes).
    #[arg(long)]
    trained_model: Option<PathBuf>,
    /// Where the network runs: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Louvain resolution of the spot clustering.
    #[arg(long, default_value_t = 0.8)]
    resolution: f64,
    /// Neighbours in the spot clustering's k-nearest-neighbour graph.
    #[arg(long, default_value_t = 50)]
    n_neighbors: usize,
    /// Genes to recover at spots and pixels (comma-separated; maps in SECTION/figures/).
    #[arg(long, value_delimiter = ',')]
    genes: Vec<String>,
    /// Spots above this spot score are listed per component (SECTION/component_spots.csv).
    #[arg(long, default_value_t = 0.05)]
    threshold: f64,
    /// Figures (SECTION/figures/) as PNG, PDF (with a title and a colour bar or legend) or both.
    #[arg(long, value_enum, default_value = "png")]
    figure_format: crate::io::figures::FigureFormat,
    /// Iteration counts: `reference` = the published defaults, `quick` = a CPU demo.
    #[arg(long, value_enum, default_value = "reference")]
    preset: Preset,
    /// GCN training iterations (default: from the preset).
    #[arg(long)]
    gcn_iterations: Option<usize>,
    /// NMF iteration cap (default: from the preset).
    #[arg(long)]
    nmf_max_iter: Option<usize>,
    /// U-Net pre-training iterations (default: from the preset).
    #[arg(long)]
    pretrain_iterations: Option<usize>,
    /// Joint training iterations, and those of its first phase (heads only) (default: from
    /// the preset).
    #[arg(long)]
    train_iterations: Option<usize>,
    #[arg(long)]
    fix_iterations: Option<usize>,
    /// Pre-train with dynamic loss scaling from this initial scale (PyTorch's GradScaler, e.g.
    /// 65536): gradients unscaled before Adam, steps with inf/NaN gradients skipped.
    #[arg(long)]
    loss_scale: Option<f32>,
    /// Tiles per pre-training and training batch (default: from the preset).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tile size of training and inference, and the size spot windows are upsampled to
    /// (a multiple of 8).
    #[arg(long, default_value_t = 256)]
    split_size: usize,
    /// Save the training state every this many iterations (resume point).
    #[arg(long, default_value_t = 20)]
    checkpoint_every: usize,
    /// Spot graph edge weights: 0.25 (exact, the reference default) or 1/degree.
    #[arg(long, value_enum, default_value = "exact")]
    graph: crate::stages::graph::GraphMode,
    /// Image embeddings for the spot graph (default: encoder for the reference preset,
    /// stats for quick).
    #[arg(long, value_enum)]
    embedding: Option<crate::stages::spot::Embedding>,
    /// Keep the GCN scores the two-Gaussian low-signal filter would zero.
    #[arg(long)]
    no_gmm_filter: bool,
    /// Transfer: score against these metagenes (a metagene_NMF.csv) instead of factorising.
    #[arg(long)]
    transfer_metagenes: Option<PathBuf>,
    /// Spatially variable genes kept (Moran's I); 0 keeps all genes.
    #[arg(long, default_value_t = 3000)]
    n_top_genes: usize,
    /// How spatially variable genes are ranked.
    #[arg(long, value_enum, default_value = "moran")]
    svg_method: crate::stages::preprocess::SvgMethod,
    /// Highly variable genes kept before that (Seurat flavour); 0 keeps all.
    #[arg(long, default_value_t = 10000)]
    n_hvg: usize,
    /// Keep exactly these genes, one per line, in this order (absent ones become zeros);
    /// replaces highly/spatially variable gene selection.
    #[arg(long)]
    gene_list: Option<PathBuf>,
    /// Pseudo spots per sequenced spot.
    #[arg(long, default_value_t = 5.0)]
    ratio_pseudo_spots: f64,
}

#[derive(Args)]
struct DevicesArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    Reference,
    Quick,
}

#[derive(Args)]
struct SimulateArgs {
    /// Output folder (must not exist unless --force).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4000)]
    height: usize,
    #[arg(long, default_value_t = 4000)]
    width: usize,
    /// Spot radius in pixels.
    #[arg(long, default_value_t = 30.0)]
    radius: f32,
    #[arg(long, default_value_t = 5)]
    domains: usize,
    #[arg(long, default_value_t = 500)]
    genes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Median total counts per spot.
    #[arg(long, default_value_t = 4000.0)]
    library_size: f64,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Where a section comes from, as flags (SPEC §12).
#[derive(Args, Clone, Default)]
pub struct InputArgs {
    /// Reference-style JSON config (settings / sections / paras).
    #[arg(long, conflicts_with_all = ["visium", "h5ad", "coords"])]
    pub config: Option<PathBuf>,
    /// Space Ranger output folder.
    #[arg(long, conflicts_with_all = ["h5ad", "coords"])]
    pub visium: Option<PathBuf>,
    /// AnnData file with obsm['spatial'].
    #[arg(long, conflicts_with = "coords")]
    pub h5ad: Option<PathBuf>,
    /// Spot coordinate table (id, …, coordinate, coordinate).
    #[arg(long, requires = "expression")]
    pub coords: Option<PathBuf>,
    /// Expression table (spots × genes; CSV/TSV, .h5 or .h5ad).
    #[arg(long, requires = "coords")]
    pub expression: Option<PathBuf>,
    /// Full-resolution image (TIFF/BigTIFF/SVS, PNG, JPEG).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Section name.
    #[arg(long)]
    pub section: Option<String>,
    /// Image and coordinates are divided by this.
    #[arg(long)]
    pub scale_rate: Option<f64>,
    /// Spot radius in original pixels (default: from the data, else 65).
    #[arg(long)]
    pub radius: Option<f64>,
    /// Coordinates are already (row, col): do not swap the stored (x, y).
    #[arg(long)]
    pub no_swap_coord: bool,
    /// Column (0-based) of the spot id in a coordinate table.
    #[arg(long)]
    pub id_col: Option<usize>,
    /// Columns (0-based) of the two coordinates in a coordinate table, e.g. 4,5.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    pub coord_cols: Option<Vec<usize>>,
}

impl InputArgs {
    pub fn table_options(&self) -> TableOptions {
        TableOptions { id_col: self.id_col, coord_cols: self.coord_cols.as_ref().map(|v| [v[0], v[1]]) }
    }

    /// The sections these flags describe (several when a config lists several).
    /// `(query, reference)` section pairs from the config (none for flag input).
    pub fn reference_pairs(&self) -> Result<Vec<(String, String)>> {
        match &self.config {
            Some(c) => Ok(read_config(c)?.reference),
            None => Ok(Vec::new()),
        }
    }

    pub fn sections(&self) -> Result<Vec<SectionSpec>> {
        let mut specs = if let Some(c) = &self.config {
            read_config(c)?.sections
        } else {
            let input = if let Some(v) = &self.visium {
                SectionInput::Visium(v.clone())
            } else if let Some(h) = &self.h5ad {
                SectionInput::H5ad(h.clone())
            } else if let (Some(c), Some(e)) = (&self.coords, &self.expression) {
                SectionInput::Tables { coords: c.clone(), expression: e.clone() }
            } else {
                return Err(Error::setting(
                    "input",
                    "give one of --config, --visium, --h5ad, or --coords with --expression",
                ));
            };
            vec![SectionSpec::new(self.section.clone().unwrap_or_else(|| "section".into()), input)]
        };
        for s in &mut specs {
            if self.image.is_some() {
                s.image = self.image.clone();
            }
            if let Some(r) = self.scale_rate {
                s.scale_rate = r;
            }
            if self.radius.is_some() {
                s.radius = self.radius;
            }
            if self.no_swap_coord {
                s.swap_coord = false;
            }
            s.validate()?;
        }
        Ok(specs)
    }
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Print one JSON object (an array for several sections).
    #[arg(long)]
    json: bool,
    /// Do not decode the image (no type guess, no cache).
    #[arg(long)]
    no_decode: bool,
}

fn run_simulate(a: SimulateArgs) -> Result<()> {
    let p = SimParams {
        height: a.height,
        width: a.width,
        radius: a.radius,
        domains: a.domains,
        genes: a.genes,
        seed: a.seed,
        library_size: a.library_size,
    };
    let s = simulate(&p, &a.out, a.force)?;
    if a.json {
        println!("{}", serde_json::to_string(&s).unwrap());
    } else {
        println!(
            "wrote {}: {}×{} px, {} spots in tissue of {} on the lattice, {} genes, {} domains ({:.1} s, peak RSS {} MiB)",
            s.out.display(),
            s.height,
            s.width,
            s.spots,
            s.lattice_spots,
            s.genes,
            s.domains,
            s.seconds,
            s.peak_rss_bytes.map(|b| b >> 20).unwrap_or(0)
        );
    }
    Ok(())
}

fn run_inspect(a: InspectArgs) -> Result<()> {
    let specs = a.input.sections()?;
    let table = a.input.table_options();
    let reports = specs.iter().map(|s| crate::inspect::inspect(s, &table, !a.no_decode)).collect::<Result<Vec<_>>>()?;
    if a.json {
        let v = if reports.len() == 1 { serde_json::to_value(&reports[0]) } else { serde_json::to_value(&reports) };
        println!("{}", v.unwrap());
    } else {
        for r in &reports {
            print!("{r}");
        }
    }
    Ok(())
}

fn run_pipeline(a: RunArgs) -> Result<()> {
    use crate::stages::pipeline::Pipeline;
    use crate::stages::spot::SpotSettings;
    if let Some(v) = a.loss_scale.filter(|v| !(v.is_finite() && *v > 0.0)) {
        // a zero, negative or infinite scale would skip every step for overflow, silently
        return Err(Error::setting("--loss-scale", format!("{v} is not a positive finite number")));
    }
    let device = crate::backend::resolve_device(&a.device)?;
    eprintln!("device: {device}");
    let specs = a.input.sections()?;
    let refs = a.input.reference_pairs()?;
    let table = a.input.table_options();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let settings = PreprocessSettings {
        rank: a.rank,
        seed: a.seed,
        n_svg: (a.n_top_genes > 0).then_some(a.n_top_genes),
        svg_method: a.svg_method,
        gene_list: match &a.gene_list {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| Error::io(p, e))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => None,
        },
        n_hvg: (a.n_hvg > 0).then_some(a.n_hvg),
        ratio_pseudo_spots: a.ratio_pseudo_spots,
        split_size: a.split_size,
        ..Default::default()
    };
    if a.split_size == 0 || a.split_size % 8 != 0 {
        return Err(Error::setting("--split-size", format!("{} is not a positive multiple of 8", a.split_size)));
    }
    let (gcn_iters, nmf_iters, pre_iters, batch) = match a.preset {
        Preset::Reference => (5000, 2000, 5000, 32),
        Preset::Quick => (1000, 500, 10, 4),
    };
    // quick: many single-tile steps beat few batches of 4 at the same cost (BENCHMARKS.md)
    let (train_iters, fix_iters, train_batch) = match a.preset {
        Preset::Reference => (2000, 1000, 32),
        Preset::Quick => (200, 40, 1),
    };
    let train = crate::stages::train::TrainSettings {
        iterations: a.train_iterations.unwrap_or(train_iters),
        fix_iterations: a.fix_iterations.unwrap_or(fix_iters),
        batch: a.batch_size.unwrap_or(train_batch),
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        split_size: a.split_size,
        fail_after: std::env::var("SPAHDMAP_TRAIN_FAIL_AFTER").ok().and_then(|v| v.parse().ok()),
        whole_epochs: a.preset == Preset::Reference && a.train_iterations.is_none() && a.fix_iterations.is_none(),
        import: a.trained_model.clone(),
        device,
        ..Default::default()
    };
    let pretrain = crate::stages::pretrain::PretrainSettings {
        iterations: a.pretrain_iterations.unwrap_or(pre_iters),
        batch: a.batch_size.unwrap_or(batch),
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        split_size: a.split_size,
        whole_epochs: a.preset == Preset::Reference && a.pretrain_iterations.is_none(),
        import: a.pretrained_model.clone(),
        device,
        loss_scale: a.loss_scale,
        fail_after: std::env::var("SPAHDMAP_PRETRAIN_FAIL_AFTER").ok().and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    let mut spot = SpotSettings {
        graph_mode: a.graph,
        gmm_filter: !a.no_gmm_filter,
        transfer_from: a.transfer_metagenes.clone(),
        device,
        ..Default::default()
    };
    spot.nmf.rank = a.rank;
    spot.nmf.seed = a.seed;
    spot.nmf.max_iter = a.nmf_max_iter.unwrap_or(nmf_iters);
    spot.gcn.seed = a.seed;
    spot.gcn.iterations = a.gcn_iterations.unwrap_or(gcn_iters);
    spot.split_size = a.split_size;
    spot.embedding = a.embedding.unwrap_or(match a.preset {
        Preset::Reference => crate::stages::spot::Embedding::Encoder,
        Preset::Quick => crate::stages::spot::Embedding::Stats,
    });
    if let Some(v) = std::env::var("SPAHDMAP_STREAM_ABOVE_PIXELS").ok().and_then(|v| v.parse().ok()) {
        // smooth through scratch files above this crop size (tests force it on small crops)
        spot.stream_above_pixels = v;
    }
    let downstream = crate::stages::downstream::DownstreamSettings {
        resolution: a.resolution,
        neighbors: a.n_neighbors,
        genes: a.genes.clone(),
        threshold: a.threshold,
        figure_format: a.figure_format,
        ..Default::default()
    };
    let score = crate::stages::score::ScoreSettings {
        split_size: a.split_size,
        batch: a.batch_size.unwrap_or(batch),
        device,
        ..Default::default()
    };
    let p = Pipeline {
        specs: &specs,
        table: &table,
        refs: &refs,
        preprocess: &settings,
        spot: &spot,
        pretrain: &pretrain,
        train: &train,
        downstream: &downstream,
        score: &score,
        out: &a.out,
    };
    let ran = p.run(a.from, a.to)?;
    let finished = p.finished();
    print_stage_table(&finished, &ran);
    let last = finished.last().and_then(|r| r["stage"].as_str()).unwrap_or("none").to_string();
    let run = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "sections": specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "threads": rayon::current_num_threads(),
        "device": device.to_string(),
        "settings": {"preprocess": settings, "spot": spot, "pretrain": pretrain, "train": train,
            "score": score, "downstream": downstream},
        "stages": finished,
        "finished_through": last,
    });
    crate::util::atomic_write(&a.out.join("run.json"), serde_json::to_string_pretty(&run).unwrap().as_bytes())
}

/// The per-stage time and peak memory of every finished stage (this run's or kept).
fn print_stage_table(finished: &[serde_json::Value], ran: &[serde_json::Value]) {
    eprintln!("{:<11} {:>10} {:>12}", "stage", "seconds", "peak RSS");
    let mut total = 0.0;
    for r in finished {
        let name = r["stage"].as_str().unwrap_or("?");
        let secs = r["seconds"].as_f64().unwrap_or(0.0);
        let rss = r["peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64;
        let kept = !ran.iter().any(|x| x["stage"] == r["stage"]);
        total += secs;
        eprintln!("{name:<11} {secs:>10.1} {rss:>8.0} MiB{}", if kept { "  (earlier run)" } else { "" });
    }
    eprintln!("{:<11} {total:>10.1}", "total");
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Command::Simulate(a) => run_simulate(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Run(a) => run_pipeline(a),
        Command::Bench(a) => bench::run(a),
        Command::Devices(a) => {
            let d = crate::backend::cuda::devices();
            if a.json {
                println!("{}", serde_json::to_string(&d).unwrap());
            } else {
                print!("{d}");
            }
            Ok(())
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            // one line, whatever the error
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            match e {
                Error::Setting { .. } => 2,
                _ => 1,
            }
        }
    }
}
