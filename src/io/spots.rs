//! Spot-level inputs, whatever their layout, become one `SpotData` (SPEC §1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::h5::{read_10x_h5, read_h5ad, TenxMatrix};
use crate::io::mtx::{find_file, read_mtx_dir};
use crate::io::positions::{read_positions, read_scalefactors, ScaleFactors};
use crate::io::sparse::Csr;
use crate::io::text::{parse_f64, read_table};

/// Expression and locations of the sequenced spots of one section.
#[derive(Debug, Clone)]
pub struct SpotData {
    pub barcodes: Vec<String>,
    pub genes: Vec<String>,
    pub gene_ids: Vec<String>,
    /// spots × genes, as read (raw counts or already normalised).
    pub counts: Csr,
    /// Coordinates as stored (`obsm['spatial']` order: x, y — i.e. col, row — for Visium).
    pub spatial: Vec<[f64; 2]>,
    /// Full-resolution spot diameter in pixels, when the input states it.
    pub spot_diameter: Option<f64>,
    pub scalefactors: Option<ScaleFactors>,
    /// A full-resolution image found next to the data (Space Ranger folders).
    pub image: Option<PathBuf>,
    /// Files the data came from, for messages.
    pub counts_file: PathBuf,
    pub positions_file: PathBuf,
    pub warnings: Vec<String>,
}

/// How to read coordinate / expression tables.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// Column holding the spot id (default 0).
    pub id_col: Option<usize>,
    /// Columns holding the two coordinates (default: the last two).
    pub coord_cols: Option<[usize; 2]>,
}

impl SpotData {
    /// (row, col) per spot; `swap` says the stored order is (x, y) as in Visium (SPEC §1).
    pub fn row_col(&self, swap: bool) -> Vec<[f64; 2]> {
        self.spatial.iter().map(|&[a, b]| if swap { [b, a] } else { [a, b] }).collect()
    }

    /// Spot radius in full-resolution pixels: round(diameter / 2), as the reference.
    pub fn radius(&self) -> Option<f64> {
        self.spot_diameter.map(|d| (d / 2.0).round())
    }

    /// Reject what no later stage can work with: empty matrix, NaN, negative values.
    fn check(&self) -> Result<()> {
        let f = &self.counts_file;
        if self.counts.rows == 0 {
            return Err(Error::format(f, "spots", "no spots (empty matrix)"));
        }
        if self.counts.cols == 0 {
            return Err(Error::format(f, "genes", "no genes (empty matrix)"));
        }
        self.counts.validate().map_err(|m| Error::format(f, "matrix", m))?;
        for r in 0..self.counts.rows {
            let (idx, val) = self.counts.row(r);
            if let Some(k) = val.iter().position(|v| !v.is_finite() || *v < 0.0) {
                let what = if val[k].is_nan() { "NaN".to_string() } else { format!("{}", val[k]) };
                return Err(Error::format(
                    f,
                    format!("spot {} gene {}", self.barcodes[r], self.genes[idx[k] as usize]),
                    format!("count is {what}; counts must be finite and non-negative"),
                ));
            }
        }
        if let Some(i) = self.spatial.iter().position(|p| !p[0].is_finite() || !p[1].is_finite()) {
            return Err(Error::format(
                &self.positions_file,
                format!("spot {}", self.barcodes[i]),
                "coordinate is not a finite number",
            ));
        }
        Ok(())
    }
}

const IMAGE_EXTS: [&str; 8] = ["tif", "tiff", "btf", "svs", "jpg", "jpeg", "png", "ome.tif"];

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The largest image file directly inside `dir` (Space Ranger keeps only thumbnails in spatial/).
pub fn find_fullres_image(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_file() && is_image(&p) {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, p));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// A Space Ranger output folder (SPEC §1).
pub fn load_visium(dir: &Path) -> Result<SpotData> {
    if !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory")));
    }
    let (counts_file, m) = if let Some(h5) = find_counts_h5(dir) {
        let m = read_10x_h5(&h5)?;
        (h5, m)
    } else if dir.join("filtered_feature_bc_matrix").is_dir() {
        let d = dir.join("filtered_feature_bc_matrix");
        let m = read_mtx_dir(&d)?;
        (d, m)
    } else {
        return Err(Error::format(
            dir,
            "counts",
            "no filtered_feature_bc_matrix.h5 (or other .h5) and no filtered_feature_bc_matrix/ folder",
        ));
    };
    let spatial_dir = dir.join("spatial");
    let positions_file =
        find_file(&spatial_dir, &["tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet"])
            .ok_or_else(|| {
                Error::format(
                    dir,
                    "spatial/tissue_positions.csv",
                    "no positions file (tried v2 .csv, v1 _list.csv and .parquet)",
                )
            })?;
    let positions = read_positions(&positions_file)?;
    let sf_path = spatial_dir.join("scalefactors_json.json");
    let scalefactors = if sf_path.exists() { Some(read_scalefactors(&sf_path)?) } else { None };
    let mut warnings = Vec::new();
    if scalefactors.is_none() {
        warnings.push(format!("{}: missing; spot radius must be given", sf_path.display()));
    }
    let by_barcode: HashMap<&str, usize> = positions.iter().enumerate().map(|(i, p)| (p.barcode.as_str(), i)).collect();
    let mut keep = Vec::new();
    let mut spatial = Vec::new();
    let mut off_tissue = 0usize;
    for (i, b) in m.barcodes.iter().enumerate() {
        let Some(&k) = by_barcode.get(b.as_str()) else {
            return Err(Error::format(
                &positions_file,
                "barcode",
                format!("{b:?} is in the counts ({}) but has no position", counts_file.display()),
            ));
        };
        let p = &positions[k];
        if !p.in_tissue {
            off_tissue += 1;
            continue;
        }
        keep.push(i);
        // scanpy's obsm['spatial'] order: x = column, y = row.
        spatial.push([p.pxl_col, p.pxl_row]);
    }
    if off_tissue > 0 {
        warnings.push(format!(
            "{off_tissue} spots of the matrix are marked in_tissue = 0 in {} and were dropped",
            positions_file.display()
        ));
    }
    let d = SpotData {
        barcodes: keep.iter().map(|&i| m.barcodes[i].clone()).collect(),
        counts: m.counts.select_rows(&keep),
        genes: m.gene_names,
        gene_ids: m.gene_ids,
        spatial,
        spot_diameter: scalefactors.as_ref().map(|s| s.spot_diameter_fullres),
        scalefactors,
        image: find_fullres_image(dir),
        counts_file,
        positions_file,
        warnings,
    };
    d.check()?;
    Ok(d)
}

/// `filtered_feature_bc_matrix.h5`, else the first `.h5` in the folder (as the reference).
fn find_counts_h5(dir: &Path) -> Option<PathBuf> {
    let p = dir.join("filtered_feature_bc_matrix.h5");
    if p.is_file() {
        return Some(p);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "h5"))
        .collect();
    all.sort();
    all.into_iter().next()
}

/// An AnnData file with `obsm['spatial']`.
pub fn load_h5ad(path: &Path) -> Result<SpotData> {
    let a = read_h5ad(path)?;
    let spatial =
        a.spatial.ok_or_else(|| Error::format(path, "/obsm/spatial", "missing: the spots have no coordinates"))?;
    let d = SpotData {
        barcodes: a.obs_names,
        gene_ids: a.var_names.clone(),
        genes: a.var_names,
        counts: a.x,
        spatial,
        spot_diameter: a.spot_diameter_fullres,
        scalefactors: None,
        image: None,
        counts_file: path.to_path_buf(),
        positions_file: path.to_path_buf(),
        warnings: Vec::new(),
    };
    d.check()?;
    Ok(d)
}

/// Spot table layouts that are recognised by their header.
const LEGACY_ST_COLUMNS: [&str; 7] = ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"];

/// Coordinates table: id → (a, b) in stored order.
fn read_coord_table(path: &Path, opts: &TableOptions) -> Result<Vec<(String, [f64; 2])>> {
    let t = read_table(path, None)?;
    if t.rows.is_empty() {
        return Err(Error::format(path, "rows", "no spots"));
    }
    if let Some(h) = &t.header {
        let col = |n: &str| h.iter().position(|c| c == n);
        if LEGACY_ST_COLUMNS.iter().all(|c| col(c).is_some()) {
            // Legacy Spatial Transcriptomics spot detector output: ids are "XxY" of the array
            // coordinates, pixel_x / pixel_y are column / row, unselected spots are dropped.
            let [x, y, px, py, sel] = ["x", "y", "pixel_x", "pixel_y", "selected"].map(|n| col(n).unwrap());
            let mut out = Vec::new();
            for (i, r) in t.rows.iter().enumerate() {
                let f = |k: usize, n: &str| {
                    parse_f64(r.get(k).map(String::as_str).unwrap_or(""), path, || format!("line {}: {n}", i + 2))
                };
                if f(sel, "selected")? == 0.0 {
                    continue;
                }
                let id = format!("{}x{}", f(x, "x")? as i64, f(y, "y")? as i64);
                out.push((id, [f(px, "pixel_x")?, f(py, "pixel_y")?]));
            }
            return Ok(out);
        }
    }
    let ncol = t.rows[0].len();
    let id_col = opts.id_col.unwrap_or(0);
    let [a, b] = opts.coord_cols.unwrap_or([ncol.saturating_sub(2), ncol.saturating_sub(1)]);
    if ncol < 3 && opts.coord_cols.is_none() {
        return Err(Error::format(path, "columns", format!("{ncol} columns; expected an id and two coordinates")));
    }
    let name =
        |k: usize| t.header.as_ref().and_then(|h| h.get(k).cloned()).unwrap_or_else(|| format!("column {}", k + 1));
    let line0 = 1 + t.header.is_some() as usize;
    t.rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let get = |k: usize| {
                r.get(k)
                    .map(String::as_str)
                    .ok_or_else(|| Error::format(path, format!("line {}: {}", i + line0, name(k)), "missing field"))
            };
            Ok((
                get(id_col)?.to_string(),
                [
                    parse_f64(get(a)?, path, || format!("line {}: {}", i + line0, name(a)))?,
                    parse_f64(get(b)?, path, || format!("line {}: {}", i + line0, name(b)))?,
                ],
            ))
        })
        .collect()
}

/// Expression table: spots × genes, first column the spot id, header of gene names.
fn read_expression_table(path: &Path) -> Result<TenxMatrix> {
    let t = read_table(path, Some(true))?;
    let header = t.header.ok_or_else(|| Error::format(path, "header", "missing"))?;
    if header.len() < 2 {
        return Err(Error::format(path, "header", "no gene columns"));
    }
    let genes: Vec<String> = header[1..].to_vec();
    let g = genes.len();
    let mut barcodes = Vec::with_capacity(t.rows.len());
    let mut m = Csr::empty(0, g);
    m.indptr.clear();
    m.indptr.push(0);
    for (i, r) in t.rows.iter().enumerate() {
        if r.len() != g + 1 {
            return Err(Error::format(
                path,
                format!("line {}", i + 2),
                format!("{} fields, header has {}", r.len(), g + 1),
            ));
        }
        barcodes.push(r[0].clone());
        for (j, s) in r[1..].iter().enumerate() {
            let v: f32 = s.parse().map_err(|_| {
                Error::format(path, format!("line {}: {}", i + 2, genes[j]), format!("{s:?} is not a number"))
            })?;
            if v != 0.0 {
                m.indices.push(j as u32);
                m.data.push(v);
            }
        }
        m.indptr.push(m.data.len());
    }
    m.rows = barcodes.len();
    Ok(TenxMatrix { barcodes, gene_ids: genes.clone(), gene_names: genes, counts: m })
}

fn read_expression_any(path: &Path) -> Result<TenxMatrix> {
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
    if name.ends_with(".h5ad") {
        let a = read_h5ad(path)?;
        return Ok(TenxMatrix {
            barcodes: a.obs_names,
            gene_ids: a.var_names.clone(),
            gene_names: a.var_names,
            counts: a.x,
        });
    }
    if name.ends_with(".h5") {
        // as the reference: try AnnData first, then 10x
        let f = crate::io::h5::open(path)?;
        let is_anndata = f.group("obs").is_ok() && f.link_exists("X");
        drop(f);
        return if is_anndata {
            let a = read_h5ad(path)?;
            Ok(TenxMatrix {
                barcodes: a.obs_names,
                gene_ids: a.var_names.clone(),
                gene_names: a.var_names,
                counts: a.x,
            })
        } else {
            read_10x_h5(path)
        };
    }
    read_expression_table(path)
}

/// Separate coordinate and expression files (SPEC §1); spots present in both are kept.
pub fn load_tables(coords: &Path, expression: &Path, opts: &TableOptions) -> Result<SpotData> {
    let m = read_expression_any(expression)?;
    let c = read_coord_table(coords, opts)?;
    let by_id: HashMap<&str, usize> = c.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let mut warnings = Vec::new();
    if let Some(b) = m.barcodes.iter().find(|b| !by_id.contains_key(b.as_str())) {
        let n = m.barcodes.iter().filter(|b| !by_id.contains_key(b.as_str())).count();
        return Err(Error::format(
            coords,
            "spot id",
            format!("{b:?} (and {} more) in {} has no coordinates here", n - 1, expression.display()),
        ));
    }
    let in_counts: std::collections::HashSet<&str> = m.barcodes.iter().map(String::as_str).collect();
    let extra = c.iter().filter(|(id, _)| !in_counts.contains(id.as_str())).count();
    if extra > 0 {
        warnings.push(format!(
            "{extra} spots of {} have no expression in {} and were ignored",
            coords.display(),
            expression.display()
        ));
    }
    let spatial = m.barcodes.iter().map(|b| c[by_id[b.as_str()]].1).collect();
    let d = SpotData {
        barcodes: m.barcodes,
        genes: m.gene_names,
        gene_ids: m.gene_ids,
        counts: m.counts,
        spatial,
        spot_diameter: None,
        scalefactors: None,
        image: None,
        counts_file: expression.to_path_buf(),
        positions_file: coords.to_path_buf(),
        warnings,
    };
    d.check()?;
    Ok(d)
}
