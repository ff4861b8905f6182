//! Spatially variable genes (SPEC §2). Moran's I on squidpy's default graph for spot
//! lattices (`spatial_neighbors` with grid coordinates: each spot's 6 nearest spots, kept
//! when closer than 1.3 × the median of those distances; rows normalised to sum 1), as the
//! reference computes it; several sections: genes in all of them, ranked by the mean
//! statistic.

use kiddo::{KdTree, SquaredEuclidean};
use rayon::prelude::*;

use crate::io::sparse::Csr;

/// Row-normalised grid neighbour weights (N × N, CSR).
pub fn grid_neighbors(coords: &[[f64; 2]], n_neighs: usize) -> Csr {
    let n = coords.len();
    let tree: KdTree<f64, 2> = KdTree::from(&coords.to_vec());
    let k = n_neighs.min(n.saturating_sub(1));
    // neighbours other than the spot itself, nearest first
    let knn: Vec<Vec<(f64, usize)>> = coords
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut v: Vec<(f64, usize)> = tree
                .nearest_n::<SquaredEuclidean>(p, k + 1)
                .into_iter()
                .map(|nb| (nb.distance.sqrt(), nb.item as usize))
                .filter(|&(_, j)| j != i)
                .collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v.truncate(k);
            v
        })
        .collect();
    let mut all: Vec<f64> = knn.iter().flatten().map(|e| e.0).collect();
    let cutoff = if all.is_empty() {
        0.0
    } else {
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let m = all.len();
        let med = if m % 2 == 1 { all[m / 2] } else { 0.5 * (all[m / 2 - 1] + all[m / 2]) };
        med * 1.3
    };
    let mut w = Csr::empty(n, n);
    for (i, nb) in knn.iter().enumerate() {
        let mut kept: Vec<u32> = nb.iter().filter(|e| e.0 < cutoff).map(|e| e.1 as u32).collect();
        kept.sort_unstable();
        let x = if kept.is_empty() { 0.0 } else { 1.0 / kept.len() as f32 };
        for j in kept {
            w.indices.push(j);
            w.data.push(x);
        }
        w.indptr[i + 1] = w.data.len();
    }
    w
}

/// Moran's I of every gene (columns of `x`, spots × genes) under weights `w`; NaN for
/// constant genes. One pass over spots: each spot's weighted neighbour rows are summed
/// into a dense gene vector and dotted with the spot's own row, so no transpose of the
/// expression matrix is needed; per-gene partial sums are reduced across workers.
pub fn morans_i(x: &Csr, w: &Csr) -> Vec<f64> {
    let (n, g) = (x.rows, x.cols);
    let s0: f64 = w.data.iter().map(|&v| v as f64).sum();
    let mut csum = vec![0f64; w.cols];
    for (&j, &v) in w.indices.iter().zip(&w.data) {
        csum[j as usize] += v as f64;
    }
    // per gene: Σx, Σx², Σ_i x_i (Wx)_i, Σ_i x_i r_i, Σ_i x_i c_i
    struct Acc {
        sum: Vec<f64>,
        sq: Vec<f64>,
        xwx: Vec<f64>,
        xr: Vec<f64>,
        xc: Vec<f64>,
        wx: Vec<f64>,
    }
    let new = || Acc {
        sum: vec![0.0; g],
        sq: vec![0.0; g],
        xwx: vec![0.0; g],
        xr: vec![0.0; g],
        xc: vec![0.0; g],
        wx: vec![0.0; g],
    };
    let chunk = n.div_ceil(4 * rayon::current_num_threads()).max(1);
    let acc = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut a = new();
            for i in c * chunk..((c + 1) * chunk).min(n) {
                let (wi, wv) = w.row(i);
                let r: f64 = wv.iter().map(|&v| v as f64).sum();
                for (&j, &wij) in wi.iter().zip(wv) {
                    let (xi, xv) = x.row(j as usize);
                    for (&k, &v) in xi.iter().zip(xv) {
                        a.wx[k as usize] += wij as f64 * v as f64;
                    }
                }
                let (idx, val) = x.row(i);
                for (&k, &v) in idx.iter().zip(val) {
                    let (k, v) = (k as usize, v as f64);
                    a.sum[k] += v;
                    a.sq[k] += v * v;
                    a.xwx[k] += v * a.wx[k];
                    a.xr[k] += v * r;
                    a.xc[k] += v * csum[i];
                }
                // clear only what the neighbours touched
                for &j in wi {
                    for &k in x.row(j as usize).0 {
                        a.wx[k as usize] = 0.0;
                    }
                }
            }
            a
        })
        .reduce(new, |mut a, b| {
            for k in 0..g {
                a.sum[k] += b.sum[k];
                a.sq[k] += b.sq[k];
                a.xwx[k] += b.xwx[k];
                a.xr[k] += b.xr[k];
                a.xc[k] += b.xc[k];
            }
            a
        });
    let nf = n as f64;
    (0..g)
        .map(|k| {
            let m = acc.sum[k] / nf;
            let z2 = acc.sq[k] - nf * m * m;
            // Σ w_ij (x_i − m)(x_j − m) expanded
            let num = acc.xwx[k] - m * acc.xr[k] - m * acc.xc[k] + m * m * s0;
            if z2 <= 1e-12 * acc.sq[k].max(f64::MIN_POSITIVE) || z2 <= 0.0 {
                f64::NAN
            } else {
                nf / s0 * num / z2
            }
        })
        .collect()
}

/// Indices of the `n_top` genes with the highest mean statistic (NaN last), best first.
pub fn top_by_mean(stats: &[Vec<f64>], n_top: usize) -> Vec<usize> {
    let g = stats[0].len();
    let mean: Vec<f64> = (0..g).map(|j| stats.iter().map(|s| s[j]).sum::<f64>() / stats.len() as f64).collect();
    let mut order: Vec<usize> = (0..g).collect();
    order.sort_by(|&a, &b| match (mean[a].is_nan(), mean[b].is_nan()) {
        (true, true) => a.cmp(&b),
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => mean[b].partial_cmp(&mean[a]).unwrap().then(a.cmp(&b)),
    });
    order.truncate(n_top);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn morans_i_matches_the_textbook_formula() {
        let coords: Vec<[f64; 2]> = (0..30).map(|i| [(i / 6) as f64 * 10.0, (i % 6) as f64 * 10.0]).collect();
        let w = grid_neighbors(&coords, 6);
        let dense: Vec<f32> = (0..30 * 3)
            .map(|k| if k % 3 == 2 { 1.0 } else { ((k * 37) % 11) as f32 * ((k / 3) as f32 / 10.0) })
            .collect();
        let x = Csr::from_dense(30, 3, &dense);
        let got = morans_i(&x, &w);
        let wd = w.to_dense();
        for g in 0..2 {
            let v: Vec<f64> = (0..30).map(|i| dense[i * 3 + g] as f64).collect();
            let m = v.iter().sum::<f64>() / 30.0;
            let z: Vec<f64> = v.iter().map(|a| a - m).collect();
            let mut num = 0.0;
            for i in 0..30 {
                for j in 0..30 {
                    num += wd[i * 30 + j] as f64 * z[i] * z[j];
                }
            }
            let s0: f64 = wd.iter().map(|&a| a as f64).sum();
            let want = 30.0 / s0 * num / z.iter().map(|a| a * a).sum::<f64>();
            assert!((got[g] - want).abs() < 1e-9, "{} vs {want}", got[g]);
        }
        assert!(got[2].is_nan());
    }
}
