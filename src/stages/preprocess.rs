//! The `load` and `preprocess` stages (SPEC §1–4): spots and expression, the scaled image
//! and tissue mask, spatially variable genes across sections, tiles and pseudo spots.
//! Results per section: `meta.json`, `mask.npy`, `spots.npy`, `pseudo_spots.npy` and the
//! preprocessed expression (`expression/`), each written atomically; `meta.json` last, so
//! its presence means the section is complete.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::config::SectionSpec;
use crate::io::image::ImageCache;
use crate::io::npy::write_npy;
use crate::io::spots::TableOptions;
use crate::preprocess::expression::{preprocess_expression, Expression};
use crate::preprocess::image_type::ImageType;
use crate::preprocess::pseudo_spots::{create_pseudo_spots, pseudo_spot_count};
use crate::preprocess::svg::{bsp, grid_neighbors, morans_i, sparkx, top_by_mean};
use crate::preprocess::tiles::{tissue_tiles, Tile};
use crate::preprocess::tissue::{prepare_image, TissueSettings};
use crate::util::atomic_write;

/// Settings of the preprocessing stage (reference defaults).
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessSettings {
    pub split_size: usize,
    pub redundant_ratio: f64,
    pub ratio_pseudo_spots: f64,
    /// Seurat HVGs kept before SVG selection (reference: 10000); None = all genes
    pub n_hvg: Option<usize>,
    /// spatially variable genes kept; None = no selection
    pub n_svg: Option<usize>,
    pub svg_method: SvgMethod,
    pub rank: usize,
    pub seed: u64,
    /// genes to keep, in this order (missing ones become zeros); disables HVG/SVG selection
    pub gene_list: Option<Vec<String>>,
    #[serde(skip)]
    pub cache_dir: PathBuf,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        PreprocessSettings {
            split_size: 256,
            redundant_ratio: 0.2,
            ratio_pseudo_spots: 5.0,
            n_hvg: Some(10000),
            n_svg: Some(3000),
            svg_method: SvgMethod::Moran,
            rank: 20,
            seed: 123,
            gene_list: None,
            cache_dir: crate::io::image::cache::default_cache_dir(),
        }
    }
}

/// How spatially variable genes are ranked (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SvgMethod {
    /// Moran's I, highest first
    Moran,
    /// SPARK-X p-value, lowest first
    Sparkx,
    /// BSP p-value, lowest first
    Bsp,
}

/// `SECTION/meta.json`: what later stages and users need to map results back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionMeta {
    pub section: String,
    /// crop offsets in the scaled image
    pub row0: usize,
    pub col0: usize,
    /// size of the cropped region (the score maps)
    pub height: usize,
    pub width: usize,
    /// size of the whole scaled image
    pub scaled_height: usize,
    pub scaled_width: usize,
    pub scale_rate: f64,
    /// spot radius in scaled pixels
    pub radius: usize,
    pub original_radius: f64,
    pub rank: usize,
    pub image: PathBuf,
    pub image_type: ImageType,
    pub channels: usize,
    pub scaled_image_cache: PathBuf,
    pub spots: usize,
    pub pseudo_spots: usize,
    pub genes: usize,
    pub tiles: Vec<Tile>,
    pub warnings: Vec<String>,
}

struct Loaded {
    spec: SectionSpec,
    expr: Expression,
    /// spot centres (row, col) in original pixels, for the kept spots
    rc: Vec<[f64; 2]>,
    radius: f64,
    image: PathBuf,
    warnings: Vec<String>,
}

fn load_section(spec: &SectionSpec, table: &TableOptions, s: &PreprocessSettings) -> Result<Loaded> {
    spec.validate()?;
    let d = spec.load(table)?;
    let mut warnings = d.warnings.clone();
    let expr = preprocess_expression(&d, s.gene_list.as_deref(), s.n_hvg)?;
    warnings.extend(expr.warnings.iter().cloned());
    let (radius, _) = spec.radius_for(&d, &mut warnings);
    let image = d.image.clone().ok_or_else(|| {
        Error::setting(format!("section {}: image", spec.name), "no image: give --image or image_path")
    })?;
    let all = d.row_col(spec.swap_coord);
    let rc = expr.kept_spots.iter().map(|&i| all[i]).collect();
    Ok(Loaded { spec: spec.clone(), expr, rc, radius, image, warnings })
}

/// Genes in every section, then the `n` best by the mean statistic across sections (SPEC §2).
fn select_svgs(sections: &mut [Loaded], n: usize, method: SvgMethod) -> Vec<String> {
    let mut common: Vec<String> = sections[0].expr.genes.clone();
    for s in &sections[1..] {
        let set: std::collections::HashSet<&String> = s.expr.genes.iter().collect();
        common.retain(|g| set.contains(g));
    }
    if sections.len() > 1 {
        common.sort();
    }
    for s in sections.iter_mut() {
        s.expr.select_genes(&common);
    }
    if common.len() <= n {
        return common;
    }
    // top_by_mean keeps the highest: p-values enter negated
    let stats: Vec<Vec<f64>> = sections
        .iter()
        .map(|s| match method {
            SvgMethod::Moran => morans_i(&s.expr.x, &grid_neighbors(&s.rc, 6)),
            SvgMethod::Sparkx => sparkx(&s.expr.x, &s.rc).into_iter().map(|p| -p).collect(),
            SvgMethod::Bsp => bsp(&s.expr.x, &s.rc).into_iter().map(|p| -p).collect(),
        })
        .collect();
    let top = top_by_mean(&stats, n);
    let keep: Vec<String> = top.iter().map(|&j| common[j].clone()).collect();
    for s in sections.iter_mut() {
        s.expr.select_genes(&keep);
    }
    keep
}

fn write_expression(dir: &Path, e: &Expression) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
    write_npy(&dir.join("data.npy"), &[e.x.data.len() as u64], e.x.data.iter().copied())?;
    write_npy(&dir.join("indices.npy"), &[e.x.indices.len() as u64], e.x.indices.iter().copied())?;
    write_npy(&dir.join("indptr.npy"), &[e.x.indptr.len() as u64], e.x.indptr.iter().map(|&v| v as u64))?;
    atomic_write(&dir.join("genes.txt"), (e.genes.join("\n") + "\n").as_bytes())?;
    atomic_write(&dir.join("barcodes.txt"), (e.barcodes.join("\n") + "\n").as_bytes())
}

/// Run `load` and `preprocess` for all sections into `out`.
pub fn run_preprocess(
    specs: &[SectionSpec],
    table: &TableOptions,
    s: &PreprocessSettings,
    out: &Path,
) -> Result<Vec<SectionMeta>> {
    let mut loaded = specs.iter().map(|spec| load_section(spec, table, s)).collect::<Result<Vec<_>>>()?;
    let genes = match (s.n_svg, &s.gene_list) {
        (_, Some(list)) => list.clone(),
        (Some(n), None) => select_svgs(&mut loaded, n, s.svg_method),
        (None, None) => loaded[0].expr.genes.clone(),
    };
    let mut metas = Vec::new();
    for (k, l) in loaded.iter().enumerate() {
        let dir = out.join(&l.spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let src = ImageCache::open(&l.image, &s.cache_dir)?;
        let ts = TissueSettings {
            scale_rate: l.spec.scale_rate,
            radius: l.radius,
            create_mask: l.spec.create_mask,
            image_type: match l.spec.image_type.as_deref() {
                Some("HE") => Some(ImageType::HE),
                Some("Immunofluorescence") => Some(ImageType::Immunofluorescence),
                _ => None,
            },
            color_norm: l.spec.color_norm,
        };
        let p = prepare_image(&src, &s.cache_dir, &l.rc, &ts)?;
        let mut warnings = l.warnings.clone();
        warnings.extend(p.warnings.iter().cloned());
        let outside = p
            .spots
            .iter()
            .filter(|q| {
                q[0] < 0.0 || q[1] < 0.0 || q[0] >= p.full_mask.height as f64 || q[1] >= p.full_mask.width as f64
            })
            .count();
        if outside > 0 {
            warnings.push(format!("{outside} spots lie outside the image"));
        }
        // one mask copy at a time next to the full mask: crop (tiles, mask.npy), then the
        // feasible domain, consumed by the pseudo-spot draw
        let mask = p.mask();
        let tiles = tissue_tiles(&mask, p.row_range, p.col_range, s.split_size, s.redundant_ratio);
        if tiles.is_empty() {
            warnings.push(format!("no {0}×{0} tile holds more than 255 tissue pixels", s.split_size));
        }
        write_npy(&dir.join("mask.npy"), &[mask.height as u64, mask.width as u64], mask.iter())?;
        let (mask_h, mask_w) = (mask.height, mask.width);
        drop(mask);
        let n_pseudo = if s.ratio_pseudo_spots > 0.0 { pseudo_spot_count(l.rc.len(), s.ratio_pseudo_spots) } else { 0 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(crate::simulate::field::mix(
            s.seed ^ (k as u64).wrapping_mul(0x9E37_79B9),
        ));
        let pseudo = create_pseudo_spots(p.feasible_domain(), p.radius, n_pseudo, 10, &mut rng);
        if pseudo.len() < n_pseudo {
            warnings.push(format!("the feasible domain holds only {} of {n_pseudo} pseudo spots", pseudo.len()));
        }
        write_npy(&dir.join("spots.npy"), &[p.spots.len() as u64, 2], p.spots.iter().flat_map(|q| [q[0], q[1]]))?;
        write_npy(
            &dir.join("pseudo_spots.npy"),
            &[pseudo.len() as u64, 2],
            pseudo.iter().flat_map(|q| [q[0] as f64, q[1] as f64]),
        )?;
        write_expression(&dir.join("expression"), &l.expr)?;
        let meta = SectionMeta {
            section: l.spec.name.clone(),
            row0: p.row_range.0,
            col0: p.col_range.0,
            height: mask_h,
            width: mask_w,
            scaled_height: p.full_mask.height,
            scaled_width: p.full_mask.width,
            scale_rate: l.spec.scale_rate,
            radius: p.radius,
            original_radius: l.radius,
            rank: s.rank,
            image: l.image.clone(),
            image_type: p.image_type,
            channels: p.image.info.channels,
            scaled_image_cache: p.image.raw_path.clone(),
            spots: p.spots.len(),
            pseudo_spots: pseudo.len(),
            genes: genes.len(),
            tiles,
            warnings,
        };
        atomic_write(&dir.join("meta.json"), serde_json::to_string_pretty(&meta).unwrap().as_bytes())?;
        metas.push(meta);
    }
    Ok(metas)
}
