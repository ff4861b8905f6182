//! `spahdmap simulate`: a Space Ranger-style section with known ground truth.
//!
//! The image is rendered in bands of rows straight into a (Big)TIFF, so slide size is bounded
//! by disk, not memory. Expression follows the same domain map: each spot's counts are drawn
//! from the per-pixel programs averaged over its disk.

pub mod evaluate;
mod expression;
pub mod field;
mod render;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

pub use field::Section;

#[derive(Debug, Clone, Serialize)]
pub struct SimParams {
    pub height: usize,
    pub width: usize,
    /// spot radius in full-resolution pixels
    pub radius: f32,
    pub domains: usize,
    pub genes: usize,
    pub seed: u64,
    /// median library size (total counts per spot)
    pub library_size: f64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams { height: 4000, width: 4000, radius: 30.0, domains: 5, genes: 500, seed: 0, library_size: 4000.0 }
    }
}

impl SimParams {
    pub fn validate(&self) -> Result<()> {
        if self.radius < 2.0 {
            return Err(Error::setting("--radius", format!("must be at least 2 pixels, got {}", self.radius)));
        }
        let spacing = 100.0 / 55.0 * 2.0 * self.radius;
        if (self.height.min(self.width) as f32) < 4.0 * spacing {
            return Err(Error::setting(
                "--height/--width",
                format!(
                    "{}×{} px holds too few spots of radius {}; make it at least {} px",
                    self.height,
                    self.width,
                    self.radius,
                    (4.0 * spacing).ceil()
                ),
            ));
        }
        if self.height > 1 << 20 || self.width > 1 << 20 {
            return Err(Error::setting("--height/--width", "at most 1,048,576 px a side"));
        }
        if !(1..=200).contains(&self.domains) {
            return Err(Error::setting("--domains", format!("must be 1–200, got {}", self.domains)));
        }
        if self.genes < 10 * self.domains.max(2) {
            return Err(Error::setting(
                "--genes",
                format!("need at least {} genes for {} domains", 10 * self.domains.max(2), self.domains),
            ));
        }
        Ok(())
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct SimSummary {
    pub out: PathBuf,
    pub height: usize,
    pub width: usize,
    pub lattice_spots: usize,
    pub spots: usize,
    pub genes: usize,
    pub domains: usize,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Write a simulated section into `out`. The folder appears complete or not at all: it is
/// written under a temporary name and renamed at the end.
pub fn simulate(p: &SimParams, out: &Path, force: bool) -> Result<SimSummary> {
    p.validate()?;
    let t0 = std::time::Instant::now();
    if out.exists() && !force {
        return Err(Error::io(
            out,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists (use --force to replace it)"),
        ));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out.file_name().and_then(|s| s.to_str()).unwrap_or("section");
    let tmp = parent.join(format!(".{name}.partial.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let r = write_section(p, &tmp);
    let summary = match r {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(SimSummary {
        out: out.to_path_buf(),
        seconds: t0.elapsed().as_secs_f64(),
        peak_rss_bytes: crate::util::peak_rss_bytes(),
        ..summary
    })
}

fn write_section(p: &SimParams, dir: &Path) -> Result<SimSummary> {
    for sub in ["spatial", "truth"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
    }
    let section = Section::new(p.seed, p.height, p.width, p.radius, p.domains);
    render::render(&section, dir)?;
    let e = expression::write_expression(&section, p, dir)?;
    std::fs::write(dir.join("truth/params.json"), serde_json::to_string_pretty(p).unwrap())
        .map_err(|e| Error::io(dir.join("truth/params.json"), e))?;
    Ok(SimSummary {
        out: dir.to_path_buf(),
        height: p.height,
        width: p.width,
        lattice_spots: e.lattice_spots,
        spots: e.spots,
        genes: p.genes,
        domains: p.domains,
        seconds: 0.0,
        peak_rss_bytes: None,
    })
}
