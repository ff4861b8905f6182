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

/// numpy's `quantile` with linear interpolation.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Columns standardised with the population standard deviation.
fn standardise(cols: &mut [Vec<f64>]) {
    for c in cols.iter_mut() {
        let n = c.len() as f64;
        let m = c.iter().sum::<f64>() / n;
        let sd = (c.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
        c.iter_mut().for_each(|v| *v = (*v - m) / sd);
    }
}

/// SPARK-X p-values of one kernel (two transformed coordinate columns). The null law of the
/// statistic with two location columns is λ·χ²₂, whose tail is exp(−q / 2λ): the value the
/// reference's numerical Davies inversion (and its Liu fallback) approximates.
fn sparkx_kernel(x: &Csr, cols: &[Vec<f64>; 2]) -> Vec<f64> {
    let mut c = cols.clone();
    standardise(&mut c);
    let n = x.rows;
    let (a, b, d) = (
        c[0].iter().map(|v| v * v).sum::<f64>(),
        c[0].iter().zip(&c[1]).map(|(u, v)| u * v).sum::<f64>(),
        c[1].iter().map(|v| v * v).sum::<f64>(),
    );
    let det = a * d - b * b;
    let inv = [d / det, -b / det, -b / det, a / det];
    let g = x.cols;
    let mut ehl = vec![[0f64; 2]; g];
    let mut sq = vec![0f64; g];
    let mut sum = vec![0f64; g];
    for i in 0..n {
        let (idx, val) = x.row(i);
        for (&k, &v) in idx.iter().zip(val) {
            let (k, v) = (k as usize, v as f64);
            ehl[k][0] += v * c[0][i];
            ehl[k][1] += v * c[1][i];
            sq[k] += v * v;
            sum[k] += v;
        }
    }
    let nf = n as f64;
    (0..g)
        .map(|k| {
            let e = ehl[k];
            let quad = e[0] * (e[0] * inv[0] + e[1] * inv[2]) + e[1] * (e[0] * inv[1] + e[1] * inv[3]);
            let stat = quad * nf / sq[k];
            let ybar = sum[k] / nf;
            let lam = 1.0 - nf * ybar * ybar / sq[k];
            (-stat / (2.0 * lam)).exp()
        })
        .collect()
}

/// Cauchy combination of p-values with equal weights (ACAT), as the reference.
fn acat(p: &[f64]) -> f64 {
    let w = 1.0 / p.len() as f64;
    let pi = std::f64::consts::PI;
    let stat: f64 = p.iter().map(|&v| if v < 1e-16 { w / v / pi } else { w * ((0.5 - v) * pi).tan() }).sum();
    if stat > 1e15 {
        1.0 / stat / pi
    } else {
        0.5 - stat.atan() / pi
    }
}

/// SPARK-X ("mixture": the coordinates, 5 Gaussian and 5 cosine transforms), p-values
/// per gene combined by ACAT. `x`: spots × genes, `loc`: spot coordinates.
pub fn sparkx(x: &Csr, loc: &[[f64; 2]]) -> Vec<f64> {
    let raw = [loc.iter().map(|p| p[0]).collect::<Vec<_>>(), loc.iter().map(|p| p[1]).collect::<Vec<_>>()];
    let mut kernels = vec![raw.clone()];
    for gaussian in [true, false] {
        for lker in 1..=5 {
            let t = raw.clone().map(|col| {
                let m = col.iter().sum::<f64>() / col.len() as f64;
                let c: Vec<f64> = col.iter().map(|v| v - m).collect();
                let mut abs: Vec<f64> = c.iter().map(|v| v.abs()).collect();
                abs.sort_by(|a, b| a.partial_cmp(b).unwrap());
                // np.arange(0.2, 1.1, 0.2)
                let l = quantile(&abs, 0.2 + 0.2 * (lker - 1) as f64);
                if gaussian {
                    c.iter().map(|v| (-v * v / (2.0 * l * l)).exp()).collect()
                } else {
                    c.iter().map(|v| (2.0 * std::f64::consts::PI * v / l).cos()).collect()
                }
            });
            kernels.push(t);
        }
    }
    let per: Vec<Vec<f64>> = kernels.par_iter().map(|k| sparkx_kernel(x, k)).collect();
    (0..x.cols).map(|g| acat(&per.iter().map(|p| p[g]).collect::<Vec<_>>())).collect()
}

/// BSP (big-small patch) p-values per gene: ratio of the variances of patch means at radii
/// 3s and s (s: geometric mean of the coordinate ranges over √n), weighted by the gene's
/// relative global variance, against a log-normal fitted below the 90th percentile.
pub fn bsp(x: &Csr, loc: &[[f64; 2]]) -> Vec<f64> {
    let n = x.rows;
    let g = x.cols;
    let range = |a: usize| {
        let (lo, hi) = loc.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p[a]), h.max(p[a])));
        hi - lo
    };
    let s = (range(0) * range(1)).sqrt() / (n as f64).sqrt();
    // min–max scaling as the reference does it: each gene divided by its maximum
    let mut max = vec![0f32; g];
    for (&k, &v) in x.indices.iter().zip(&x.data) {
        max[k as usize] = max[k as usize].max(v);
    }
    let tree: KdTree<f64, 2> = KdTree::from(&loc.to_vec());
    let patch_var = |radius: f64| -> Vec<f64> {
        let (s1, s2) = (0..n)
            .into_par_iter()
            .fold(
                || (vec![0f64; g], vec![0f64; g], vec![0f64; g]),
                |(mut s1, mut s2, mut pm), i| {
                    let p = loc[i];
                    let mut nb: Vec<usize> = tree
                        .within_unsorted::<SquaredEuclidean>(&p, radius * radius * (1.0 + 1e-9))
                        .into_iter()
                        .map(|e| e.item as usize)
                        .filter(|&j| {
                            let d = ((loc[j][0] - p[0]).powi(2) + (loc[j][1] - p[1]).powi(2)).sqrt();
                            d <= radius && d > 0.0
                        })
                        .collect();
                    if nb.is_empty() {
                        nb.push(i);
                    }
                    let inv = 1.0 / nb.len() as f64;
                    for &j in &nb {
                        let (idx, val) = x.row(j);
                        for (&k, &v) in idx.iter().zip(val) {
                            pm[k as usize] += v as f64 / max[k as usize] as f64 * inv;
                        }
                    }
                    for &j in &nb {
                        for &k in x.row(j).0 {
                            let k = k as usize;
                            if pm[k] != 0.0 {
                                s1[k] += pm[k];
                                s2[k] += pm[k] * pm[k];
                                pm[k] = 0.0;
                            }
                        }
                    }
                    (s1, s2, pm)
                },
            )
            .map(|(a, b, _)| (a, b))
            .reduce(
                || (vec![0f64; g], vec![0f64; g]),
                |(mut a1, mut a2), (b1, b2)| {
                    for k in 0..g {
                        a1[k] += b1[k];
                        a2[k] += b2[k];
                    }
                    (a1, a2)
                },
            );
        let nf = n as f64;
        (0..g).map(|k| s2[k] / nf - (s1[k] / nf).powi(2)).collect()
    };
    let small = patch_var(s);
    let big = patch_var(3.0 * s);
    let nf = n as f64;
    let mut sum = vec![0f64; g];
    let mut sq = vec![0f64; g];
    for (&k, &v) in x.indices.iter().zip(&x.data) {
        sum[k as usize] += v as f64;
        sq[k as usize] += (v as f64).powi(2);
    }
    let gvar: Vec<f64> = (0..g).map(|k| sq[k] / nf - (sum[k] / nf).powi(2)).collect();
    let gmax = gvar.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let t: Vec<f64> = (0..g).map(|k| big[k] / small[k] * (gvar[k] / gmax)).collect();
    let mut sorted: Vec<f64> = t.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![f64::NAN; g];
    }
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let t90 = quantile(&sorted, 0.9);
    let mut mid: Vec<f64> = sorted.iter().copied().filter(|&v| v < t90).map(f64::ln).collect();
    if mid.is_empty() {
        mid = sorted.iter().map(|v| v.ln()).collect();
    }
    let mu = mid.iter().sum::<f64>() / mid.len() as f64;
    let sigma = (mid.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
    t.iter().map(|&v| 0.5 * libm::erfc((v.ln() - mu) / (sigma * std::f64::consts::SQRT_2))).collect()
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
