//! Gene-level downstream analyses (SPEC §11): recovered expression (score · metagene row, as
//! the reference's `recovery`), embedding-associated genes (the largest metagene loadings of
//! each component), cluster marker genes (Wilcoxon rank-sum of each cluster against the rest,
//! Benjamini–Hochberg adjusted) and the spots above a threshold in each component
//! (`extract_spots`).

use std::fmt::Write;

use rayon::prelude::*;

use crate::io::sparse::Csr;

/// Standard normal upper tail, P(Z > z), via erfc.
fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// Wilcoxon rank-sum z statistic of `a` against `b` with the tie correction (scipy's
/// `mannwhitneyu(method='asymptotic', use_continuity=False)`; scanpy's `rank_genes_groups`
/// with `tie_correct=True`), and its two-sided p-value.
pub fn ranksum(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|&v| (v, true)).chain(b.iter().map(|&v| (v, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let (mut rank_sum, mut tie_term) = (0f64, 0f64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        for e in &all[i..=j] {
            if e.1 {
                rank_sum += r;
            }
        }
        i = j + 1;
    }
    let nt = n1 + n2;
    let mean = n1 * (nt + 1.0) / 2.0;
    let var = n1 * n2 / 12.0 * ((nt + 1.0) - tie_term / (nt * (nt - 1.0)));
    if var <= 0.0 {
        return (0.0, 1.0);
    }
    let z = (rank_sum - mean) / var.sqrt();
    (z, (2.0 * normal_sf(z.abs())).min(1.0))
}

/// Benjamini–Hochberg adjusted p-values (monotone, capped at 1), in the input's order.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let n = p.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let mut out = vec![0f64; n];
    let mut running = 1f64;
    for (k, &i) in order.iter().enumerate() {
        let rank = (n - k) as f64;
        running = running.min(p[i] * n as f64 / rank);
        out[i] = running.min(1.0);
    }
    out
}

/// One marker row: cluster, gene index, z, log2 fold change of the means (+1 pseudo-count on
/// the expm1 scale of log-normalised data), p, adjusted p.
#[derive(Debug, Clone)]
pub struct Marker {
    pub cluster: usize,
    pub gene: usize,
    pub z: f64,
    pub log2_fold_change: f64,
    pub p: f64,
    pub p_adj: f64,
}

/// Markers of every cluster: Wilcoxon of the cluster's spots against all others for each gene,
/// BH over the genes of a cluster, sorted by z (largest first), the first `top` kept.
pub fn cluster_markers(x: &Csr, labels: &[usize], top: usize) -> Vec<Marker> {
    let dense = x.to_dense();
    let (n, g) = (x.rows, x.cols);
    let k = labels.iter().max().map_or(0, |m| m + 1);
    let mut out = Vec::new();
    for c in 0..k {
        let inside: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
        if inside.is_empty() || inside.len() == n {
            continue;
        }
        let rows: Vec<(f64, f64, f64, f64)> = (0..g)
            .into_par_iter()
            .map(|j| {
                let a: Vec<f64> = inside.iter().map(|&i| dense[i * g + j] as f64).collect();
                let b: Vec<f64> = (0..n).filter(|&i| labels[i] != c).map(|i| dense[i * g + j] as f64).collect();
                let (z, p) = ranksum(&a, &b);
                let mean = |v: &[f64]| v.iter().map(|x| x.exp_m1()).sum::<f64>() / v.len() as f64;
                let lfc = ((mean(&a) + 1e-9) / (mean(&b) + 1e-9)).log2();
                (z, p, lfc, 0.0)
            })
            .collect();
        let adj = benjamini_hochberg(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let mut ms: Vec<Marker> = rows
            .iter()
            .enumerate()
            .map(|(j, r)| Marker { cluster: c, gene: j, z: r.0, log2_fold_change: r.2, p: r.1, p_adj: adj[j] })
            .collect();
        ms.sort_by(|a, b| b.z.total_cmp(&a.z).then(a.gene.cmp(&b.gene)));
        out.extend(ms.into_iter().take(top));
    }
    out
}

/// CSV of markers with gene names.
pub fn markers_csv(m: &[Marker], genes: &[String]) -> String {
    let mut s = String::from("cluster,gene,z,log2_fold_change,p,p_adj\n");
    for r in m {
        let _ = writeln!(
            s,
            "{},{},{:.6},{:.6},{:.6e},{:.6e}",
            r.cluster,
            crate::stages::results::csv_field(&genes[r.gene]),
            r.z,
            r.log2_fold_change,
            r.p,
            r.p_adj
        );
    }
    s
}

/// The `top` genes of each component by metagene loading (genes × R), as CSV rows
/// component, rank, gene, loading.
pub fn top_genes_csv(metagene: &[f64], genes: &[String], rank: usize, top: usize) -> String {
    let mut s = String::from("component,rank,gene,loading\n");
    for k in 0..rank {
        let mut idx: Vec<usize> = (0..genes.len()).collect();
        idx.sort_by(|&a, &b| metagene[b * rank + k].total_cmp(&metagene[a * rank + k]).then(a.cmp(&b)));
        for (r, &g) in idx.iter().take(top).enumerate() {
            let _ = writeln!(
                s,
                "Embedding_{},{},{},{}",
                k + 1,
                r + 1,
                crate::stages::results::csv_field(&genes[g]),
                metagene[g * rank + k] as f32
            );
        }
    }
    s
}

/// Recovered expression of gene `g` from scores (rows × R): score · metagene row.
pub fn recover(scores: &[f64], metagene: &[f64], g: usize, rank: usize) -> Vec<f64> {
    let w = &metagene[g * rank..(g + 1) * rank];
    scores.chunks(rank).map(|s| s.iter().zip(w).map(|(a, b)| a * b).sum()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranksum_and_bh_match_scipy() {
        // scipy.stats.mannwhitneyu(a, b, method='asymptotic', use_continuity=False): the
        // tie-corrected normal approximation, p = 0.0639367 (z = 1.852621)
        let (z, p) = ranksum(&[1.2, 3.4, 5.0, 5.0, 7.1], &[0.5, 1.2, 2.2, 2.9]);
        assert!((z - 1.852621).abs() < 1e-5, "{z}");
        assert!((p - 0.0639367).abs() < 1e-6, "{p}");
        // statsmodels multipletests(method='fdr_bh')
        let adj = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.2]);
        let want = [0.04, 0.0533333, 0.0533333, 0.2];
        for (a, b) in adj.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{adj:?}");
        }
    }

    #[test]
    fn top_genes_and_recovery() {
        let genes: Vec<String> = ["A", "B", "C"].iter().map(|s| s.to_string()).collect();
        let m = [0.1, 2.0, 0.9, 0.0, 0.5, 1.0];
        let csv = top_genes_csv(&m, &genes, 2, 2);
        assert!(csv.contains("Embedding_1,1,B,0.9") && csv.contains("Embedding_2,1,A,2"), "{csv}");
        assert_eq!(recover(&[1.0, 1.0, 0.5, 0.0], &m, 0, 2), vec![2.1, 0.05]);
    }
}
