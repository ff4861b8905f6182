//! What was loaded, and what looks wrong with it (`spahdmap inspect`).

use serde::Serialize;

use crate::error::Result;
use crate::io::config::SectionSpec;
use crate::io::image::{cache::default_cache_dir, ImageCache, ImageInfo};
use crate::io::spots::TableOptions;
use crate::preprocess::image_type::classify;
use crate::preprocess::tissue::{channel_max, thumbnail16};

#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub path: String,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub dtype: String,
    pub format: String,
    pub type_guess: String,
    pub cache: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub section: String,
    pub spots: usize,
    pub genes: usize,
    pub nonzero: usize,
    pub max_count: f32,
    pub looks_raw: bool,
    pub radius: f64,
    pub radius_source: String,
    /// [min, max] of row and col in full-resolution pixels (after the swap setting)
    pub row_range: [f64; 2],
    pub col_range: [f64; 2],
    pub counts_file: String,
    pub positions_file: String,
    pub image: Option<ImageReport>,
    pub warnings: Vec<String>,
}

fn range(v: impl Iterator<Item = f64>) -> [f64; 2] {
    v.fold([f64::INFINITY, f64::NEG_INFINITY], |[a, b], x| [a.min(x), b.max(x)])
}

fn outside(rc: &[[f64; 2]], info: &ImageInfo) -> usize {
    rc.iter().filter(|p| p[0] < 0.0 || p[1] < 0.0 || p[0] >= info.height as f64 || p[1] >= info.width as f64).count()
}

pub fn inspect(spec: &SectionSpec, table: &TableOptions, decode_image: bool) -> Result<Report> {
    spec.validate()?;
    let d = spec.load(table)?;
    let mut warnings = d.warnings.clone();
    let rc = d.row_col(spec.swap_coord);
    let (radius, radius_source) = spec.radius_for(&d, &mut warnings);
    let image = match &d.image {
        None => {
            warnings.push("no image: give --image".to_string());
            None
        }
        Some(path) => {
            let info = crate::io::image::probe(path)?;
            let n_out = outside(&rc, &info);
            if n_out > 0 {
                let swapped: Vec<[f64; 2]> = rc.iter().map(|p| [p[1], p[0]]).collect();
                let hint = if outside(&swapped, &info) == 0 {
                    " — x/y look swapped (try the other swap_coord setting)"
                } else {
                    ""
                };
                warnings.push(format!(
                    "{n_out} of {} spots lie outside the {}×{} image{hint}",
                    rc.len(),
                    info.height,
                    info.width
                ));
            }
            let (type_guess, cache) = if decode_image {
                let c = ImageCache::open(path, &default_cache_dir())?;
                let thumb = thumbnail16(&c, &channel_max(&c)?)?;
                (classify(&thumb).name().to_string(), c.raw_path.display().to_string())
            } else {
                ("not decoded".to_string(), String::new())
            };
            Some(ImageReport {
                path: path.display().to_string(),
                height: info.height,
                width: info.width,
                channels: info.channels,
                dtype: format!("{:?}", info.sample).to_lowercase(),
                format: info.format,
                type_guess,
                cache,
            })
        }
    };
    let max_count = d.counts.max_value();
    Ok(Report {
        section: spec.name.clone(),
        spots: d.counts.rows,
        genes: d.counts.cols,
        nonzero: d.counts.nnz(),
        max_count,
        looks_raw: max_count >= 20.0,
        radius,
        radius_source: radius_source.to_string(),
        row_range: range(rc.iter().map(|p| p[0])),
        col_range: range(rc.iter().map(|p| p[1])),
        counts_file: d.counts_file.display().to_string(),
        positions_file: d.positions_file.display().to_string(),
        image,
        warnings,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "section {}", self.section)?;
        writeln!(f, "  spots      {}", self.spots)?;
        writeln!(
            f,
            "  genes      {}  ({} non-zero entries, max {}{})",
            self.genes,
            self.nonzero,
            self.max_count,
            if self.looks_raw { ", raw counts" } else { ", looks normalised" }
        )?;
        writeln!(f, "  radius     {} px ({})", self.radius, self.radius_source)?;
        writeln!(f, "  rows       {:.1} – {:.1}", self.row_range[0], self.row_range[1])?;
        writeln!(f, "  cols       {:.1} – {:.1}", self.col_range[0], self.col_range[1])?;
        writeln!(f, "  counts     {}", self.counts_file)?;
        writeln!(f, "  positions  {}", self.positions_file)?;
        if let Some(i) = &self.image {
            writeln!(
                f,
                "  image      {} ({} × {} × {}, {}, {}), looks {}",
                i.path, i.height, i.width, i.channels, i.dtype, i.format, i.type_guess
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}
