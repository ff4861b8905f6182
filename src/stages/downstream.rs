//! The `downstream` stage (SPEC §11): clusters of spots and pixels jointly across sections,
//! cluster tables and maps, and figures.
//!
//! Per section it writes `clusters.csv` (barcode, cluster), `clusters_pixel.npy` (int32 label
//! map at 1/4 of the score map, −1 outside the mask) and `figures/` (`clusters.png`,
//! `SpaHDmap_K.png` through the blue→red map and `gray/SpaHDmap_K.png`, cropped to the tissue;
//! as PDF with a title and a colour bar or legend too, or instead, with `--figure-format`).

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::figures::{blue_red, gray, label_colour, write_figure, Figure, FigureFormat, BACKGROUND};
use crate::io::npy::{read_npy, write_npy};
use crate::io::pdf::Key;
use crate::stages::cluster::{cluster_means, cluster_spots, kmeans, resize_linear, resize_linear_with};
use crate::stages::genes::{cluster_markers, markers_csv, recover, top_genes_csv};
use crate::stages::results::{csv_field, read_metagenes, ScoreMap, SectionDir};
use crate::util::atomic_write;

#[derive(Debug, Clone, Serialize)]
pub struct DownstreamSettings {
    pub resolution: f64,
    pub neighbors: usize,
    /// the pixel clustering runs on the score map shrunk by this factor
    pub shrink: f64,
    /// genes whose expression is recovered at spots and pixels (maps in figures/)
    pub genes: Vec<String>,
    /// spots above this spot score are listed per component (`extract_spots`)
    pub threshold: f64,
    /// embedding-associated genes kept per component, marker genes per cluster
    pub top_genes: usize,
    pub markers: usize,
    pub figure_format: FigureFormat,
}

impl Default for DownstreamSettings {
    fn default() -> Self {
        DownstreamSettings {
            resolution: 0.8,
            neighbors: 50,
            shrink: 4.0,
            genes: Vec::new(),
            threshold: 0.05,
            top_genes: 20,
            markers: 50,
            figure_format: FigureFormat::Png,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SectionClusters {
    pub section: String,
    pub spots: usize,
    /// pixels of the shrunk map inside the mask
    pub pixels: usize,
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownstreamReport {
    pub clusters: usize,
    pub sections: Vec<SectionClusters>,
}

/// A section's score map and mask shrunk for the pixel clustering.
struct Shrunk {
    h: usize,
    w: usize,
    /// R × h × w
    score: Vec<f32>,
    mask: Vec<bool>,
}

fn shrink(sd: &SectionDir, rank: usize, factor: f64) -> Result<Shrunk> {
    let m = &sd.meta;
    let (h, w) = (m.height, m.width);
    let (oh, ow) = (((h as f64) / factor) as usize, ((w as f64) / factor) as usize);
    if oh == 0 || ow == 0 {
        return Err(Error::setting("shrink", format!("{h} × {w} is too small to shrink by {factor}")));
    }
    let map = ScoreMap::open(&sd.path("SpaHDmap_score.npy"), rank, h, w)?;
    let mut score = Vec::with_capacity(rank * oh * ow);
    for k in 0..rank {
        score.extend(resize_linear_with(|y, x| map.get(k, y, x), h, w, oh, ow));
    }
    // the reference shrinks the mask with INTER_LINEAR (it passes INTER_NEAREST where
    // cv2.resize expects `dst`) and then casts to bool; OpenCV's 8-bit fixed-point path is
    // not reproduced: we keep pixels whose 0/1 average is ≥ 0.5 (≈1% of rim pixels differ)
    let (ms, mv) = read_npy::<bool>(&sd.path("SpaHDmap_mask.npy"))?;
    if ms != [h as u64, w as u64] {
        return Err(Error::format(sd.path("SpaHDmap_mask.npy"), "shape", format!("{ms:?}, expected [{h}, {w}]")));
    }
    let mf: Vec<f32> = mv.iter().map(|&b| b as u8 as f32).collect();
    let mask = resize_linear(&mf, h, w, oh, ow).into_iter().map(|v| v >= 0.5).collect();
    Ok(Shrunk { h: oh, w: ow, score, mask })
}

/// Figures of one section: its bounding box of tissue in the shrunk frame.
fn figures(sd: &SectionDir, s: &Shrunk, labels: &[i32], rank: usize, format: FigureFormat) -> Result<()> {
    let (r0, r1, c0, c1) = tissue_box(s);
    let (fh, fw) = (r1 - r0, c1 - c0);
    let dir = sd.path("figures");
    let name = &sd.meta.section;
    let mut rgb = vec![0u8; fh * fw * 3];
    for y in 0..fh {
        for x in 0..fw {
            let i = (y + r0) * s.w + x + c0;
            let c = if labels[i] >= 0 { label_colour(labels[i] as usize) } else { BACKGROUND };
            rgb[(y * fw + x) * 3..(y * fw + x + 1) * 3].copy_from_slice(&c);
        }
    }
    let mut present: Vec<i32> = labels.iter().copied().filter(|&l| l >= 0).collect();
    present.sort_unstable();
    present.dedup();
    let legend = present.iter().map(|&l| (label_colour(l as usize), format!("cluster {l}"))).collect();
    let title = format!("Clusters - {name}");
    let fig = Figure { width: fw, height: fh, channels: 3, pixels: &rgb, title: &title, key: Key::Legend(legend) };
    write_figure(&dir.join("clusters"), &fig, format)?;
    let mut grays = vec![0u8; fh * fw];
    for k in 0..rank {
        let plane = &s.score[k * s.h * s.w..(k + 1) * s.h * s.w];
        for y in 0..fh {
            for x in 0..fw {
                let i = (y + r0) * s.w + x + c0;
                let v = if s.mask[i] { plane[i] } else { 0.0 };
                let c = if s.mask[i] { blue_red(v) } else { BACKGROUND };
                rgb[(y * fw + x) * 3..(y * fw + x + 1) * 3].copy_from_slice(&c);
                grays[y * fw + x] = gray(v)[0];
            }
        }
        let title = format!("SpaHDmap embedding {} - {name}", k + 1);
        let bar = |colour: &'static dyn Fn(f32) -> [u8; 3]| Key::Bar { colour, low: "0".into(), high: "1".into() };
        let fig = Figure { width: fw, height: fh, channels: 3, pixels: &rgb, title: &title, key: bar(&blue_red) };
        write_figure(&dir.join(format!("SpaHDmap_{}", k + 1)), &fig, format)?;
        let fig = Figure { width: fw, height: fh, channels: 1, pixels: &grays, title: &title, key: bar(&gray) };
        write_figure(&dir.join(format!("gray/SpaHDmap_{}", k + 1)), &fig, format)?;
    }
    Ok(())
}

/// `section.h5ad`: the preprocessed expression, spot clusters, spot coordinates (x, y = col,
/// row in the score maps' frame) and scores, the trained metagenes.
fn write_anndata(out: &Path, sd: &SectionDir, labels: &[usize], spot_scores: &[f64], rank: usize) -> Result<()> {
    let (x, genes) = sd.expression()?;
    let barcodes = sd.barcodes()?;
    let (spots, n) = sd.all_spots()?;
    let m = &sd.meta;
    let spatial: Vec<f64> = spots[..n].iter().flat_map(|p| [p[1] - m.col0 as f64, p[0] - m.row0 as f64]).collect();
    let (ns, nmf) = read_npy::<f32>(&sd.path("NMF_score.npy"))?;
    let (mg, metagene, r) = crate::stages::results::read_metagenes(&out.join("metagene.csv"))?;
    if mg != genes {
        return Err(Error::format(out.join("metagene.csv"), "genes", "differ from the section's expression genes"));
    }
    let a = crate::io::h5::AnnDataOut {
        barcodes: &barcodes,
        genes: &genes,
        x: &x,
        obs_int: vec![("cluster", labels.iter().map(|&l| l as i64).collect())],
        obsm: vec![
            ("spatial", spatial, 2),
            ("SpaHDmap", spot_scores.to_vec(), rank),
            ("NMF", nmf.iter().map(|&v| v as f64).collect(), ns[1] as usize),
        ],
        uns: vec![("metagene", metagene, r)],
    };
    crate::io::h5::write_h5ad(&sd.path("section.h5ad"), &a)
}

/// Gene maps (pixel level at the shrunk scale, blue→red from 0 to the tissue maximum), the
/// spot-level recovery table and the spots above the threshold of each component.
fn gene_outputs(
    sd: &SectionDir,
    sh: &Shrunk,
    spot_scores: &[f64],
    rank: usize,
    metagene: &[f64],
    gene_idx: &[(String, usize)],
    s: &DownstreamSettings,
) -> Result<()> {
    let barcodes = sd.barcodes()?;
    let rec: Vec<Vec<f64>> = gene_idx.iter().map(|(_, g)| recover(spot_scores, metagene, *g, rank)).collect();
    let mut csv = String::from("barcode");
    for (name, _) in gene_idx {
        csv.push(',');
        csv.push_str(&csv_field(name));
    }
    csv.push('\n');
    for (i, b) in barcodes.iter().enumerate() {
        csv.push_str(&csv_field(b));
        for r in &rec {
            csv.push_str(&format!(",{}", r[i] as f32));
        }
        csv.push('\n');
    }
    atomic_write(&sd.path("gene_recovery.csv"), csv.as_bytes())?;
    let px = sh.h * sh.w;
    for (name, g) in gene_idx {
        let w = &metagene[g * rank..(g + 1) * rank];
        let v: Vec<f32> =
            (0..px).map(|i| (0..rank).map(|k| sh.score[k * px + i] as f64 * w[k]).sum::<f64>() as f32).collect();
        let max = (0..px).filter(|&i| sh.mask[i]).map(|i| v[i]).fold(0f32, f32::max);
        let norm: Vec<f32> = v.iter().map(|&x| if max > 0.0 { x / max } else { 0.0 }).collect();
        let safe: String =
            name.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        let title = format!("{name} (recovered) - {}", sd.meta.section);
        let key = Key::Bar { colour: &blue_red, low: "0".into(), high: format!("{max:.3}") };
        colour_map(&sd.path(&format!("figures/gene_{safe}")), sh, &norm, &title, key, s.figure_format)?;
    }
    let mut csv = String::from("component,barcode,score\n");
    for k in 0..rank {
        for (i, b) in barcodes.iter().enumerate() {
            let v = spot_scores[i * rank + k];
            if v > s.threshold {
                csv.push_str(&format!("Embedding_{},{},{}\n", k + 1, csv_field(b), v as f32));
            }
        }
    }
    atomic_write(&sd.path("component_spots.csv"), csv.as_bytes())
}

/// The tissue's bounding box in the shrunk frame: (r0, r1, c0, c1).
fn tissue_box(sh: &Shrunk) -> (usize, usize, usize, usize) {
    let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
    for i in (0..sh.h * sh.w).filter(|&i| sh.mask[i]) {
        let (r, c) = (i / sh.w, i % sh.w);
        (r0, r1, c0, c1) = (r0.min(r), r1.max(r + 1), c0.min(c), c1.max(c + 1));
    }
    if r0 == usize::MAX {
        (0, sh.h, 0, sh.w)
    } else {
        (r0, r1, c0, c1)
    }
}

/// A [0, 1] map through the blue→red colour map, background gray, cropped to the tissue.
fn colour_map(stem: &Path, sh: &Shrunk, v: &[f32], title: &str, key: Key, format: FigureFormat) -> Result<()> {
    let (r0, r1, c0, c1) = tissue_box(sh);
    let (fh, fw) = (r1 - r0, c1 - c0);
    let mut rgb = vec![0u8; fh * fw * 3];
    for y in 0..fh {
        for x in 0..fw {
            let i = (y + r0) * sh.w + x + c0;
            let c = if sh.mask[i] { blue_red(v[i]) } else { BACKGROUND };
            rgb[(y * fw + x) * 3..(y * fw + x + 1) * 3].copy_from_slice(&c);
        }
    }
    write_figure(stem, &Figure { width: fw, height: fh, channels: 3, pixels: &rgb, title, key }, format)
}

pub fn run_downstream(out: &Path, sections: &[SectionDir], s: &DownstreamSettings) -> Result<DownstreamReport> {
    let (genes, metagene, mrank) = read_metagenes(&out.join("metagene.csv"))?;
    let gene_idx: Vec<(String, usize)> = s
        .genes
        .iter()
        .map(|g| {
            genes.iter().position(|x| x == g).map(|i| (g.clone(), i)).ok_or_else(|| {
                Error::setting("--genes", format!("{g} is not among the {} genes of metagene.csv", genes.len()))
            })
        })
        .collect::<Result<_>>()?;
    atomic_write(&out.join("metagene_top_genes.csv"), top_genes_csv(&metagene, &genes, mrank, s.top_genes).as_bytes())?;
    // spot clusters, jointly across sections
    let mut all = Vec::new();
    let mut counts = Vec::new();
    let mut rank = 0;
    for sd in sections {
        let p = sd.path("SpaHDmap_spot_score.npy");
        let (shape, v) = read_npy::<f64>(&p)?;
        if shape.len() != 2 || (rank != 0 && shape[1] as usize != rank) {
            return Err(Error::format(&p, "shape", format!("{shape:?}")));
        }
        rank = shape[1] as usize;
        counts.push(shape[0] as usize);
        all.extend(v);
    }
    let n: usize = counts.iter().sum();
    if n == 0 || rank == 0 {
        return Err(Error::setting("downstream", "no spot scores to cluster"));
    }
    let labels = cluster_spots(&all, n, rank, s.neighbors, s.resolution);
    let (used, init) = cluster_means(&all, rank, &labels);
    let shrunk: Vec<Shrunk> = sections.iter().map(|sd| shrink(sd, rank, s.shrink)).collect::<Result<_>>()?;
    let mut x = Vec::new();
    for sh in &shrunk {
        let px = sh.h * sh.w;
        for i in (0..px).filter(|&i| sh.mask[i]) {
            x.extend((0..rank).map(|t| sh.score[t * px + i] as f64));
        }
    }
    let pixel = kmeans(&x, rank, &init, 500);
    let mut reports = Vec::new();
    let (mut at_spot, mut at_px) = (0, 0);
    for ((sd, sh), &cnt) in sections.iter().zip(&shrunk).zip(&counts) {
        let barcodes = sd.barcodes()?;
        let mut csv = String::from("barcode,cluster\n");
        for (b, l) in barcodes.iter().zip(&labels[at_spot..at_spot + cnt]) {
            csv.push_str(&format!("{},{}\n", crate::stages::results::csv_field(b), l));
        }
        atomic_write(&sd.path("clusters.csv"), csv.as_bytes())?;
        write_anndata(out, sd, &labels[at_spot..at_spot + cnt], &all[at_spot * rank..(at_spot + cnt) * rank], rank)?;
        at_spot += cnt;
        let px = sh.h * sh.w;
        let mut map = vec![-1i32; px];
        let mut inside = 0;
        for i in (0..px).filter(|&i| sh.mask[i]) {
            map[i] = used[pixel[at_px]] as i32;
            at_px += 1;
            inside += 1;
        }
        write_npy(&sd.path("clusters_pixel.npy"), &[sh.h as u64, sh.w as u64], map.iter().copied())?;
        figures(sd, sh, &map, rank, s.figure_format)?;
        let first = at_spot - cnt;
        gene_outputs(sd, sh, &all[first * rank..at_spot * rank], rank, &metagene, &gene_idx, s)?;
        reports.push(SectionClusters {
            section: sd.meta.section.clone(),
            spots: cnt,
            pixels: inside,
            height: sh.h,
            width: sh.w,
        });
    }
    // marker genes of the joint clusters over every section's spots
    let mut xs = Vec::new();
    for sd in sections {
        xs.push(sd.expression()?.0);
    }
    let x = crate::io::sparse::Csr::vstack(&xs);
    let markers = cluster_markers(&x, &labels, s.markers);
    atomic_write(&out.join("cluster_markers.csv"), markers_csv(&markers, &genes).as_bytes())?;
    Ok(DownstreamReport { clusters: used.len(), sections: reports })
}

/// Used by tests and reports: the pixel label map of a section.
pub fn read_pixel_clusters(dir: &Path) -> Result<(Vec<u64>, Vec<i32>)> {
    read_npy::<i32>(&dir.join("clusters_pixel.npy"))
}
