//! Gene programs, the Visium lattice, and counts drawn from the per-pixel expression
//! averaged over each spot's disk.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma, LogNormal, Poisson};
use rayon::prelude::*;

use super::field::{mix, Section};
use super::render::thumb_scale;
use super::SimParams;
use crate::error::{Error, Result};
use crate::io::h5::{write_10x_h5, TenxMatrix};
use crate::io::sparse::Csr;

pub struct ExpressionSummary {
    pub lattice_spots: usize,
    pub spots: usize,
}

/// Per-gene rates: one row per domain plus one per gradient program.
struct Programs {
    /// [domain][gene]
    domain: Vec<Vec<f64>>,
    /// [gradient][gene]
    gradient: Vec<Vec<f64>>,
    /// role of each gene, for the truth table
    role: Vec<String>,
}

fn programs(p: &SimParams, rng: &mut impl Rng) -> Programs {
    let (g, k) = (p.genes, p.domains);
    let base_dist = Gamma::new(0.6, 1.0).unwrap();
    let base: Vec<f64> = (0..g).map(|_| 0.05 + base_dist.sample(rng)).collect();
    let mut domain = vec![base.clone(); k];
    let mut role = vec!["background".to_string(); g];
    let per_domain = (g / (4 * k)).max(3);
    let mut next = 0;
    for (d, prog) in domain.iter_mut().enumerate() {
        for _ in 0..per_domain {
            let fold = rng.random_range(4.0..10.0);
            prog[next] = (base[next] + 0.5) * fold;
            role[next] = format!("marker_domain_{}", d + 1);
            next += 1;
        }
    }
    let per_grad = (g / 20).max(2).min(g - next);
    let mut gradient = vec![vec![0.0; g]; 2];
    for (q, prog) in gradient.iter_mut().enumerate() {
        for _ in 0..per_grad / 2 {
            if next >= g {
                break;
            }
            prog[next] = (base[next] + 0.5) * rng.random_range(3.0..6.0);
            role[next] = format!("gradient_{}", q + 1);
            next += 1;
        }
    }
    Programs { domain, gradient, role }
}

/// A Visium-like barcode: 16 bases and the gem-group suffix.
fn barcode(seed: u64, i: usize) -> String {
    let mut h = mix(seed ^ 0xBA5E ^ (i as u64).wrapping_mul(0x9E37));
    let mut s = String::with_capacity(18);
    for _ in 0..16 {
        s.push(b"ACGT"[(h & 3) as usize] as char);
        h >>= 2;
    }
    s.push_str("-1");
    s
}

struct LatticeSpot {
    array_row: i64,
    array_col: i64,
    row: i64,
    col: i64,
    in_tissue: bool,
}

/// Hexagonal lattice with centre spacing 100/55 × spot diameter, covering the image.
fn lattice(s: &Section, radius: f32) -> Vec<LatticeSpot> {
    let spacing = 100.0 / 55.0 * 2.0 * radius as f64;
    let dy = spacing * 3f64.sqrt() / 2.0;
    let margin = spacing / 2.0;
    let mut out = Vec::new();
    let mut i = 0i64;
    loop {
        let row = margin + i as f64 * dy;
        if row > s.height as f64 - margin {
            break;
        }
        let mut j = 0i64;
        loop {
            let col = margin + j as f64 * spacing + if i % 2 == 1 { spacing / 2.0 } else { 0.0 };
            if col > s.width as f64 - margin {
                break;
            }
            let (r, c) = (row.round() as i64, col.round() as i64);
            out.push(LatticeSpot {
                array_row: i,
                array_col: 2 * j + (i % 2),
                row: r,
                col: c,
                in_tissue: s.label(r as usize, c as usize) != 0,
            });
            j += 1;
        }
        i += 1;
    }
    out
}

/// Fractions of each domain (index 0 = background) and mean gradients over a spot disk.
fn disk_average(s: &Section, row: i64, col: i64, radius: f32) -> (Vec<f64>, [f64; 2]) {
    let r = radius.floor() as i64;
    let mut frac = vec![0f64; s.domains() + 1];
    let mut grad = [0f64; 2];
    let mut n = 0f64;
    for dy in -r..=r {
        for dx in -r..=r {
            if (dy * dy + dx * dx) as f32 > radius * radius {
                continue;
            }
            let (y, x) = (row + dy, col + dx);
            if y < 0 || x < 0 || y >= s.height as i64 || x >= s.width as i64 {
                continue;
            }
            let p = s.warped(y as f32, x as f32, None);
            let lab = s.label_at(p);
            frac[lab as usize] += 1.0;
            if lab != 0 {
                let g = s.gradients(p);
                grad[0] += g[0] as f64;
                grad[1] += g[1] as f64;
            }
            n += 1.0;
        }
    }
    frac.iter_mut().for_each(|f| *f /= n);
    let tissue = n * (1.0 - frac[0]);
    if tissue > 0.0 {
        grad.iter_mut().for_each(|g| *g /= tissue);
    }
    (frac, grad)
}

pub fn write_expression(s: &Section, p: &SimParams, dir: &Path) -> Result<ExpressionSummary> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(p.seed ^ 0xE7E7));
    let prog = programs(p, &mut rng);
    let spots = lattice(s, p.radius);
    let mut seen = HashSet::new();
    let barcodes: Vec<String> = (0..spots.len())
        .map(|i| {
            let mut k = 0;
            loop {
                let b = barcode(p.seed.wrapping_add(k), i);
                if seen.insert(b.clone()) {
                    return b;
                }
                k += 1_000_003;
            }
        })
        .collect();
    let tissue: Vec<usize> = (0..spots.len()).filter(|&i| spots[i].in_tissue).collect();
    let averages: Vec<(Vec<f64>, [f64; 2])> =
        tissue.par_iter().map(|&i| disk_average(s, spots[i].row, spots[i].col, p.radius)).collect();
    let lib = LogNormal::new(p.library_size.ln(), 0.35).unwrap();
    let g = p.genes;
    let mut counts = Csr::empty(tissue.len(), g);
    let mut truth_spots = String::from("barcode,row,col,library_size");
    for d in 0..=p.domains {
        let _ = write!(truth_spots, ",frac_{}", if d == 0 { "background".to_string() } else { format!("domain_{d}") });
    }
    truth_spots.push_str(",gradient_1,gradient_2\n");
    let mut rate = vec![0f64; g];
    for (k, &i) in tissue.iter().enumerate() {
        let (frac, grad) = &averages[k];
        rate.iter_mut().for_each(|r| *r = 0.0);
        for d in 0..p.domains {
            if frac[d + 1] > 0.0 {
                rate.iter_mut().zip(&prog.domain[d]).for_each(|(r, v)| *r += frac[d + 1] * v);
            }
        }
        let tissue_frac = 1.0 - frac[0];
        for q in 0..2 {
            rate.iter_mut().zip(&prog.gradient[q]).for_each(|(r, v)| *r += tissue_frac * grad[q] * v);
        }
        let total: f64 = rate.iter().sum();
        let l = lib.sample(&mut rng) * tissue_frac.max(0.05);
        for (j, &r) in rate.iter().enumerate() {
            let lambda = l * r / total;
            if lambda > 0.0 {
                let c = Poisson::new(lambda).unwrap().sample(&mut rng);
                if c > 0.0 {
                    counts.indices.push(j as u32);
                    counts.data.push(c as f32);
                }
            }
        }
        counts.indptr[k + 1] = counts.data.len();
        let sp = &spots[i];
        let _ = write!(truth_spots, "{},{},{},{:.1}", barcodes[i], sp.row, sp.col, l);
        for f in frac {
            let _ = write!(truth_spots, ",{f:.5}");
        }
        let _ = writeln!(truth_spots, ",{:.5},{:.5}", grad[0], grad[1]);
    }
    let gene_names: Vec<String> = (0..g).map(|j| format!("Gene{:05}", j + 1)).collect();
    let gene_ids: Vec<String> = (0..g).map(|j| format!("SIMG{:011}", j + 1)).collect();
    let m = TenxMatrix {
        barcodes: tissue.iter().map(|&i| barcodes[i].clone()).collect(),
        gene_ids,
        gene_names: gene_names.clone(),
        counts,
    };
    write_10x_h5(&dir.join("filtered_feature_bc_matrix.h5"), &m, "SIM1")?;

    // spatial/: v2 positions of the whole lattice, scale factors
    let mut pos = String::from("barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n");
    for (i, sp) in spots.iter().enumerate() {
        let _ = writeln!(
            pos,
            "{},{},{},{},{},{}",
            barcodes[i], sp.in_tissue as u8, sp.array_row, sp.array_col, sp.row, sp.col
        );
    }
    write_text(&dir.join("spatial/tissue_positions.csv"), &pos)?;
    let sf = serde_json::json!({
        "spot_diameter_fullres": 2.0 * p.radius as f64,
        "fiducial_diameter_fullres": 2.0 * p.radius as f64 * 65.0 / 55.0,
        "tissue_hires_scalef": thumb_scale(p.height, p.width, 2000),
        "tissue_lowres_scalef": thumb_scale(p.height, p.width, 600),
    });
    write_text(&dir.join("spatial/scalefactors_json.json"), &serde_json::to_string_pretty(&sf).unwrap())?;

    // truth/
    write_text(&dir.join("truth/spots.csv"), &truth_spots)?;
    let mut tab = String::from("gene,role");
    for d in 0..p.domains {
        let _ = write!(tab, ",domain_{}", d + 1);
    }
    tab.push_str(",gradient_1,gradient_2\n");
    for j in 0..g {
        let _ = write!(tab, "{},{}", gene_names[j], prog.role[j]);
        for d in 0..p.domains {
            let _ = write!(tab, ",{:.6}", prog.domain[d][j]);
        }
        let _ = writeln!(tab, ",{:.6},{:.6}", prog.gradient[0][j], prog.gradient[1][j]);
    }
    write_text(&dir.join("truth/programs.csv"), &tab)?;
    write_text(&dir.join("truth/genes.txt"), &(gene_names.join("\n") + "\n"))?;
    Ok(ExpressionSummary { lattice_spots: spots.len(), spots: tissue.len() })
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}
