//! Command line: parses flags and calls the library. Errors become one line on stderr.

mod bench;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::io::config::{read_config, SectionInput, SectionSpec};
use crate::io::spots::TableOptions;
use crate::simulate::{simulate, SimParams};

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
enum Command {
    /// Write a simulated Space Ranger-style section with ground truth.
    Simulate(SimulateArgs),
    /// Load a section and report what was found.
    Inspect(InspectArgs),
    /// Stage and kernel benchmarks.
    Bench(bench::BenchArgs),
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

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Command::Simulate(a) => run_simulate(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Bench(a) => bench::run(a),
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
