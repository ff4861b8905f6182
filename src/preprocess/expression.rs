//! Expression preprocessing (SPEC §2), as the reference runs it through scanpy: unique gene
//! names, spot and gene filters, total-count normalisation to 1e4 and log1p when the counts
//! look raw (max ≥ 20), an optional gene list, and Seurat-flavour highly variable genes.
//! The matrix stays sparse throughout.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::io::sparse::Csr;
use crate::io::spots::SpotData;

/// Preprocessed expression of one section.
#[derive(Debug, Clone)]
pub struct Expression {
    pub barcodes: Vec<String>,
    pub genes: Vec<String>,
    /// spots × genes, log-normalised
    pub x: Csr,
    /// indices into the loaded spots of the spots that were kept
    pub kept_spots: Vec<usize>,
    /// whether normalisation ran (false: the data looked normalised already)
    pub normalised_here: bool,
    pub warnings: Vec<String>,
}

/// anndata's `var_names_make_unique`: later duplicates get "-1", "-2", … appended.
pub fn make_unique(names: &[String]) -> Vec<String> {
    let mut seen: HashSet<String> = names.iter().cloned().collect();
    let mut dup_count: HashMap<&str, usize> = HashMap::new();
    let mut first = HashSet::new();
    names
        .iter()
        .map(|n| {
            if first.insert(n.as_str()) {
                return n.clone();
            }
            let k = dup_count.entry(n.as_str()).or_insert(0);
            loop {
                *k += 1;
                let cand = format!("{n}-{k}");
                if seen.insert(cand.clone()) {
                    return cand;
                }
            }
        })
        .collect()
}

fn nonzero_per_row(x: &Csr) -> Vec<usize> {
    (0..x.rows).map(|r| x.row(r).1.iter().filter(|&&v| v != 0.0).count()).collect()
}

fn nonzero_per_col(x: &Csr) -> Vec<usize> {
    let mut c = vec![0usize; x.cols];
    for (&j, &v) in x.indices.iter().zip(&x.data) {
        if v != 0.0 {
            c[j as usize] += 1;
        }
    }
    c
}

/// Run SPEC §2 on loaded spots. `gene_list` reorders genes (missing ones become zeros);
/// `n_hvg` keeps that many Seurat-flavour highly variable genes (ignored with a gene list).
pub fn preprocess_expression(d: &SpotData, gene_list: Option<&[String]>, n_hvg: Option<usize>) -> Result<Expression> {
    let mut warnings = Vec::new();
    let mut x = d.counts.clone();
    let mut genes = d.genes.clone();
    let mut kept: Vec<usize> = (0..x.rows).collect();
    let raw = x.max_value() >= 20.0;
    if raw {
        genes = make_unique(&genes);
        let per_spot = nonzero_per_row(&x);
        kept = (0..x.rows).filter(|&r| per_spot[r] >= 3).collect();
        if kept.is_empty() {
            return Err(Error::format(&d.counts_file, "spots", "no spot has counts for 3 or more genes"));
        }
        x = x.select_rows(&kept);
        let per_gene = nonzero_per_col(&x);
        let keep_genes: Vec<usize> = (0..x.cols).filter(|&j| per_gene[j] >= 3).collect();
        if keep_genes.is_empty() {
            return Err(Error::format(&d.counts_file, "genes", "no gene is detected in 3 or more spots"));
        }
        if keep_genes.len() < x.cols {
            x = x.select_cols(&keep_genes.iter().map(|&j| Some(j)).collect::<Vec<_>>());
            genes = keep_genes.iter().map(|&j| genes[j].clone()).collect();
        }
        normalize_log1p(&mut x, 1e4);
    } else {
        warnings.push(format!(
            "the maximum value is {} (< 20): the data look normalised; normalisation skipped",
            x.max_value()
        ));
    }
    let mut e = Expression {
        barcodes: kept.iter().map(|&i| d.barcodes[i].clone()).collect(),
        genes,
        x,
        kept_spots: kept,
        normalised_here: raw,
        warnings,
    };
    if let Some(list) = gene_list {
        let missing = e.select_genes(list);
        if missing > 0 {
            e.warnings.push(format!("{missing} genes of the gene list are absent and were added as zeros"));
        }
    } else if let Some(n) = n_hvg {
        let hv = highly_variable_seurat(&e.x, n);
        let keep: Vec<String> = e.genes.iter().zip(&hv).filter(|(_, h)| **h).map(|(g, _)| g.clone()).collect();
        e.select_genes(&keep);
    }
    Ok(e)
}

impl Expression {
    /// Keep the genes `list`, in that order; genes absent here become all-zero columns.
    /// Returns how many were absent.
    pub fn select_genes(&mut self, list: &[String]) -> usize {
        let pos: HashMap<&str, usize> = self.genes.iter().enumerate().map(|(i, g)| (g.as_str(), i)).collect();
        let cols: Vec<Option<usize>> = list.iter().map(|g| pos.get(g.as_str()).copied()).collect();
        self.x = self.x.select_cols(&cols);
        self.genes = list.to_vec();
        cols.iter().filter(|c| c.is_none()).count()
    }
}

/// Each spot scaled to `target` total counts, then log1p (scanpy's normalize_total + log1p).
pub fn normalize_log1p(x: &mut Csr, target: f32) {
    for r in 0..x.rows {
        let (a, b) = (x.indptr[r], x.indptr[r + 1]);
        let total: f32 = x.data[a..b].iter().sum();
        if total > 0.0 {
            let f = total / target;
            for v in &mut x.data[a..b] {
                *v = (*v / f).ln_1p();
            }
        }
    }
}

/// Seurat-flavour highly variable genes on log-normalised data (scanpy's rule): dispersion
/// of expm1(x) per gene, normalised within 20 equal-width bins of log mean; the `n` highest
/// normalised dispersions (ties included) are selected.
pub fn highly_variable_seurat(x: &Csr, n: usize) -> Vec<bool> {
    let (rows, g) = (x.rows as f64, x.cols);
    let mut sum = vec![0f64; g];
    let mut sq = vec![0f64; g];
    for (&j, &v) in x.indices.iter().zip(&x.data) {
        let e = (v as f64).exp_m1();
        sum[j as usize] += e;
        sq[j as usize] += e * e;
    }
    let mut means = vec![0f64; g];
    let mut disp = vec![f64::NAN; g];
    for j in 0..g {
        let mut m = sum[j] / rows;
        let var = ((sq[j] / rows - m * m) * rows / (rows - 1.0)).max(0.0);
        if m == 0.0 {
            m = 1e-12;
        }
        let d = var / m;
        disp[j] = if d == 0.0 { f64::NAN } else { d.ln() };
        means[j] = m.ln_1p();
    }
    // pandas.cut(means, 20): equal-width bins, the first edge lowered by 0.1 % of the range
    let (lo, hi) = means.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let nb = 20usize;
    let mut edges: Vec<f64> = (0..=nb).map(|i| lo + (hi - lo) * i as f64 / nb as f64).collect();
    if hi > lo {
        edges[0] -= (hi - lo) * 0.001;
    } else {
        // pandas widens a constant range by 0.1 % on both sides
        let adj = if lo != 0.0 { lo.abs() * 0.001 } else { 0.001 };
        edges = (0..=nb).map(|i| lo - adj + 2.0 * adj * i as f64 / nb as f64).collect();
    }
    let bin_of = |v: f64| edges.partition_point(|&e| e < v).saturating_sub(1).min(nb - 1);
    let bins: Vec<usize> = means.iter().map(|&m| bin_of(m)).collect();
    let mut avg = vec![f64::NAN; nb];
    let mut dev = vec![f64::NAN; nb];
    for b in 0..nb {
        let vals: Vec<f64> = (0..g).filter(|&j| bins[j] == b && !disp[j].is_nan()).map(|j| disp[j]).collect();
        if !vals.is_empty() {
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            avg[b] = m;
            if vals.len() > 1 {
                dev[b] = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64).sqrt();
            }
        }
        if dev[b].is_nan() {
            // a single gene in the bin: normalised dispersion 1
            dev[b] = avg[b];
            avg[b] = 0.0;
        }
    }
    let norm: Vec<f64> = (0..g).map(|j| (disp[j] - avg[bins[j]]) / dev[bins[j]]).collect();
    let mut finite: Vec<f64> = norm.iter().copied().filter(|v| !v.is_nan()).collect();
    if finite.is_empty() {
        return vec![false; g];
    }
    finite.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let cut = finite[n.min(finite.len()).max(1) - 1];
    norm.iter().map(|&v| !v.is_nan() && v >= cut).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_like_anndata() {
        let v: Vec<String> = ["A", "B", "A", "A", "A-1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(make_unique(&v), vec!["A", "B", "A-2", "A-3", "A-1"]);
    }
}
