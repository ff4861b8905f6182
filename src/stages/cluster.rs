//! Clustering (SPEC §11) as the reference's `cluster_score` computes it:
//! 1. a directed k-nearest-neighbour graph of the spot scores (k = 50, no self loops, edge
//!    weight 1: scikit-learn's `kneighbors_graph`);
//! 2. Louvain on it as scikit-network runs it by default (Dugué–Perez directed modularity:
//!    out- and in-degree node weights, the symmetrised graph A + Aᵀ normalised to sum 1, local
//!    moves in node order in f32 with ties to the smaller label, aggregation until the gain is
//!    ≤ 1e-3; clusters renumbered by decreasing size);
//! 3. the reference then takes `fit_transform`'s membership — the row-normalised count of each
//!    cluster among a spot's k neighbours — and its argmax, so a spot's label is the majority
//!    label of its neighbours (ties to the larger cluster);
//! 4. pixels: the score map and the mask shrunk 4× (OpenCV's INTER_LINEAR and INTER_NEAREST),
//!    k-means over the mask's pixels started at the mean spot score of each cluster
//!    (scikit-learn's KMeans with that init: max 500 iterations, tolerance 1e-4 × the mean
//!    per-feature variance).

use rayon::prelude::*;

/// Each row's k nearest other rows (Euclidean), nearest first, ties to the smaller index.
pub fn knn(x: &[f64], n: usize, d: usize, k: usize) -> Vec<Vec<u32>> {
    let k = k.min(n.saturating_sub(1));
    (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut dist: Vec<(f64, u32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let xj = &x[j * d..(j + 1) * d];
                    (xi.iter().zip(xj).map(|(a, b)| (a - b) * (a - b)).sum::<f64>(), j as u32)
                })
                .collect();
            let cmp = |a: &(f64, u32), b: &(f64, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            if k < dist.len() {
                dist.select_nth_unstable_by(k, cmp);
                dist.truncate(k);
            }
            dist.sort_unstable_by(cmp);
            dist.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// A weighted graph in CSR form with sorted column indices.
#[derive(Debug, Clone)]
struct Graph {
    indptr: Vec<usize>,
    indices: Vec<usize>,
    data: Vec<f64>,
}

impl Graph {
    fn n(&self) -> usize {
        self.indptr.len() - 1
    }

    fn from_rows(rows: Vec<Vec<(usize, f64)>>) -> Graph {
        let mut g = Graph { indptr: vec![0], indices: Vec::new(), data: Vec::new() };
        for mut r in rows {
            r.sort_unstable_by_key(|e| e.0);
            // merge duplicates
            let mut last: Option<usize> = None;
            for (j, v) in r {
                if last == Some(j) {
                    *g.data.last_mut().unwrap() += v;
                } else {
                    g.indices.push(j);
                    g.data.push(v);
                    last = Some(j);
                }
            }
            g.indptr.push(g.indices.len());
        }
        g
    }

    fn diagonal(&self, i: usize) -> f64 {
        (self.indptr[i]..self.indptr[i + 1]).find(|&e| self.indices[e] == i).map(|e| self.data[e]).unwrap_or(0.0)
    }
}

/// One pass of local moves (scikit-network's `optimize_core`, in f32 as it runs).
fn optimize(g: &Graph, out_w: &[f64], in_w: &[f64], resolution: f32, tol: f32) -> (Vec<usize>, f32) {
    let n = g.n();
    let mut labels: Vec<usize> = (0..n).collect();
    let data: Vec<f32> = g.data.iter().map(|&v| v as f32).collect();
    let out_w: Vec<f32> = out_w.iter().map(|&v| v as f32).collect();
    let in_w: Vec<f32> = in_w.iter().map(|&v| v as f32).collect();
    let mut out_c = out_w.clone();
    let mut in_c = in_w.clone();
    let mut cw = vec![0f32; n];
    let self_loops: Vec<f32> = (0..n).map(|i| g.diagonal(i) as f32).collect();
    let mut increase = 0f32;
    let mut set = std::collections::BTreeSet::new();
    loop {
        let mut pass = 0f32;
        for i in 0..n {
            set.clear();
            let label = labels[i];
            for e in g.indptr[i]..g.indptr[i + 1] {
                let t = labels[g.indices[e]];
                set.insert(t);
                cw[t] += data[e];
            }
            set.remove(&label);
            if !set.is_empty() {
                let (ow, iw) = (out_w[i], in_w[i]);
                let mut delta = 2.0 * (cw[label] - self_loops[i]);
                delta -= resolution * ow * (in_c[label] - iw);
                delta -= resolution * iw * (out_c[label] - ow);
                let (mut best_gain, mut best) = (0f32, label);
                for &t in &set {
                    let mut local = 2.0 * cw[t];
                    local -= resolution * ow * in_c[t];
                    local -= resolution * iw * out_c[t];
                    local -= delta;
                    if local > best_gain {
                        best_gain = local;
                        best = t;
                    }
                    cw[t] = 0.0;
                }
                if best != label {
                    pass += best_gain;
                    labels[i] = best;
                    out_c[label] -= ow;
                    in_c[label] -= iw;
                    out_c[best] += ow;
                    in_c[best] += iw;
                }
            }
            cw[label] = 0.0;
        }
        increase += pass;
        if pass <= tol {
            break;
        }
    }
    (labels, increase)
}

/// Louvain on a directed graph given as each node's out-neighbours (weight 1).
pub fn louvain(out: &[Vec<u32>], resolution: f64) -> Vec<usize> {
    let n = out.len();
    if n == 0 {
        return Vec::new();
    }
    let (mut out_w, mut in_w) = (vec![0f64; n], vec![0f64; n]);
    let mut rows: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for (i, nb) in out.iter().enumerate() {
        for &j in nb {
            let j = j as usize;
            out_w[i] += 1.0;
            in_w[j] += 1.0;
            rows[i].push((j, 1.0));
            rows[j].push((i, 1.0));
        }
    }
    let (so, si) = (out_w.iter().sum::<f64>(), in_w.iter().sum::<f64>());
    if so == 0.0 {
        return (0..n).collect();
    }
    out_w.iter_mut().for_each(|v| *v /= so);
    in_w.iter_mut().for_each(|v| *v /= si);
    let mut g = Graph::from_rows(rows);
    let total: f64 = g.data.iter().sum();
    g.data.iter_mut().for_each(|v| *v /= total);
    // membership[node] = current aggregate node
    let mut membership: Vec<usize> = (0..n).collect();
    loop {
        let (labels, increase) = optimize(&g, &out_w, &in_w, resolution as f32, 1e-3);
        // compact labels in increasing order (np.unique)
        let mut uniq = labels.clone();
        uniq.sort_unstable();
        uniq.dedup();
        let mut map = vec![0usize; g.n()];
        for (k, &u) in uniq.iter().enumerate() {
            map[u] = k;
        }
        let lab: Vec<usize> = labels.iter().map(|&l| map[l]).collect();
        let m = uniq.len();
        let mut rows: Vec<Vec<(usize, f64)>> = vec![Vec::new(); m];
        for i in 0..g.n() {
            for e in g.indptr[i]..g.indptr[i + 1] {
                rows[lab[i]].push((lab[g.indices[e]], g.data[e]));
            }
        }
        let (mut ow, mut iw) = (vec![0f64; m], vec![0f64; m]);
        for i in 0..g.n() {
            ow[lab[i]] += out_w[i];
            iw[lab[i]] += in_w[i];
        }
        g = Graph::from_rows(rows);
        out_w = ow;
        in_w = iw;
        membership.iter_mut().for_each(|c| *c = lab[*c]);
        if m == 1 || increase <= 1e-3 {
            break;
        }
    }
    by_decreasing_size(&membership)
}

/// Renumber labels by decreasing cluster size (ties keep the label order).
fn by_decreasing_size(labels: &[usize]) -> Vec<usize> {
    let k = labels.iter().max().map_or(0, |m| m + 1);
    let mut count = vec![0usize; k];
    labels.iter().for_each(|&l| count[l] += 1);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&l| std::cmp::Reverse(count[l]));
    let mut new = vec![0usize; k];
    for (r, &l) in order.iter().enumerate() {
        new[l] = r;
    }
    labels.iter().map(|&l| new[l]).collect()
}

/// Each node's most frequent label among its out-neighbours (ties to the smaller label): the
/// argmax of scikit-network's `fit_transform` membership, which the reference uses.
pub fn neighbour_majority(out: &[Vec<u32>], labels: &[usize]) -> Vec<usize> {
    let k = labels.iter().max().map_or(0, |m| m + 1);
    out.iter()
        .enumerate()
        .map(|(i, nb)| {
            if nb.is_empty() {
                return labels[i];
            }
            let mut c = vec![0usize; k];
            nb.iter().for_each(|&j| c[labels[j as usize]] += 1);
            let best = *c.iter().max().unwrap();
            c.iter().position(|&v| v == best).unwrap()
        })
        .collect()
}

/// Spot clusters: kNN graph, Louvain, neighbour majority.
pub fn cluster_spots(scores: &[f64], n: usize, d: usize, k: usize, resolution: f64) -> Vec<usize> {
    let g = knn(scores, n, d, k);
    let l = louvain(&g, resolution);
    neighbour_majority(&g, &l)
}

/// The labels in use (ascending) and each one's mean row of `x` (rows of `d`): the k-means
/// start of the pixel clustering (a label the majority step left unused gets no centre).
pub fn cluster_means(x: &[f64], d: usize, labels: &[usize]) -> (Vec<usize>, Vec<f64>) {
    let k = labels.iter().max().map_or(0, |m| m + 1);
    let mut count = vec![0usize; k];
    labels.iter().for_each(|&l| count[l] += 1);
    // each member's share added in order, as the mean was computed before
    let mut mean = vec![0f64; k * d];
    for (row, &l) in x.chunks(d).zip(labels) {
        mean[l * d..(l + 1) * d].iter_mut().zip(row).for_each(|(m, v)| *m += v / count[l] as f64);
    }
    let used: Vec<usize> = (0..k).filter(|&c| count[c] > 0).collect();
    let init = used.iter().flat_map(|&c| mean[c * d..(c + 1) * d].to_vec()).collect();
    (used, init)
}

/// k-means from given centres (scikit-learn's KMeans with an explicit init, n_init 1): Lloyd
/// steps until the labels stop changing or the centres move less than 1e-4 × the mean
/// per-feature variance (squared, summed), at most `max_iter`; the labels of the final centres.
/// An empty cluster is moved to the point farthest from its centre, as scikit-learn does.
pub fn kmeans(x: &[f64], d: usize, init: &[f64], max_iter: usize) -> Vec<usize> {
    let n = x.len() / d;
    let k = init.len() / d;
    let mut mean = vec![0f64; d];
    for p in x.chunks(d) {
        mean.iter_mut().zip(p).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut var = 0f64;
    for p in x.chunks(d) {
        var += p.iter().zip(&mean).map(|(v, m)| (v - m) * (v - m)).sum::<f64>();
    }
    let tol = 1e-4 * var / (n.max(1) * d) as f64;
    let assign = |c: &[f64]| -> Vec<usize> {
        x.par_chunks(d)
            .map(|p| {
                let mut best = (f64::INFINITY, 0);
                for j in 0..k {
                    let dd: f64 = p.iter().zip(&c[j * d..(j + 1) * d]).map(|(a, b)| (a - b) * (a - b)).sum();
                    if dd < best.0 {
                        best = (dd, j);
                    }
                }
                best.1
            })
            .collect()
    };
    let mut centres = init.to_vec();
    let mut labels = assign(&centres);
    for _ in 0..max_iter {
        let mut sum = vec![0f64; k * d];
        let mut cnt = vec![0usize; k];
        for (p, &l) in x.chunks(d).zip(&labels) {
            cnt[l] += 1;
            sum[l * d..(l + 1) * d].iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        // scikit-learn's relocation: each empty cluster takes the point farthest from its
        // centre, which leaves its old cluster
        let empty: Vec<usize> = (0..k).filter(|&j| cnt[j] == 0).collect();
        if !empty.is_empty() {
            let dist: Vec<f64> = x
                .chunks(d)
                .zip(&labels)
                .map(|(p, &l)| p.iter().zip(&centres[l * d..(l + 1) * d]).map(|(a, b)| (a - b) * (a - b)).sum())
                .collect();
            let mut far: Vec<usize> = (0..n).collect();
            far.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
            for (&j, &i) in empty.iter().zip(&far) {
                let (old, p) = (labels[i], &x[i * d..(i + 1) * d]);
                for t in 0..d {
                    sum[old * d + t] -= p[t];
                    sum[j * d + t] = p[t];
                }
                cnt[old] -= 1;
                cnt[j] = 1;
            }
        }
        let mut shift = 0f64;
        for j in 0..k {
            if cnt[j] == 0 {
                continue;
            }
            for t in 0..d {
                let c = sum[j * d + t] / cnt[j] as f64;
                shift += (c - centres[j * d + t]).powi(2);
                centres[j * d + t] = c;
            }
        }
        let new = assign(&centres);
        let same = new == labels;
        labels = new;
        if same || shift <= tol {
            break;
        }
    }
    labels
}

/// OpenCV's `resize(..., INTER_LINEAR)` of one f32 plane (half-pixel centres, edge clamped;
/// rows interpolated first, then columns, in f32).
pub fn resize_linear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    resize_linear_with(|y, x| src[y * w + x], h, w, oh, ow)
}

/// `resize_linear` reading the source through `get(row, col)` (a memory-mapped map).
pub fn resize_linear_with(
    get: impl Fn(usize, usize) -> f32 + Sync,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let taps = |s: usize, d: usize| -> Vec<(usize, usize, f32)> {
        let scale = s as f64 / d as f64;
        (0..d)
            .map(|o| {
                let f = (o as f64 + 0.5) * scale - 0.5;
                let mut i = f.floor() as i64;
                let mut t = (f - i as f64) as f32;
                if i < 0 {
                    i = 0;
                    t = 0.0;
                }
                if i as usize >= s - 1 {
                    i = s as i64 - 1;
                    t = 0.0;
                }
                let i = i as usize;
                (i, (i + 1).min(s - 1), t)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0f32; oh * ow];
    out.par_chunks_mut(ow).zip(ty.par_iter()).for_each(|(row, &(y0, y1, fy))| {
        let horiz = |y: usize, x: &(usize, usize, f32)| get(y, x.0) * (1.0 - x.2) + get(y, x.1) * x.2;
        for (o, t) in row.iter_mut().zip(&tx) {
            *o = horiz(y0, t) * (1.0 - fy) + horiz(y1, t) * fy;
        }
    });
    out
}

/// OpenCV's INTER_NEAREST source index for each output index: ⌊o · (s/d)⌋.
pub fn nearest_index(s: usize, d: usize) -> Vec<usize> {
    let inv = 1.0 / (d as f64 / s as f64);
    (0..d).map(|o| ((o as f64 * inv).floor() as usize).min(s - 1)).collect()
}

/// Adjusted Rand index of two labelings (for accuracy reports against ground truth).
pub fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (ka, kb) = (a.iter().max().map_or(0, |m| m + 1), b.iter().max().map_or(0, |m| m + 1));
    let mut t = vec![0u64; ka * kb];
    for (&x, &y) in a.iter().zip(b) {
        t[x * kb + y] += 1;
    }
    let c2 = |v: u64| (v * v.saturating_sub(1)) as f64 / 2.0;
    let sum_ij: f64 = t.iter().map(|&v| c2(v)).sum();
    let rows: f64 = (0..ka).map(|i| c2(t[i * kb..(i + 1) * kb].iter().sum())).sum();
    let cols: f64 = (0..kb).map(|j| c2((0..ka).map(|i| t[i * kb + j]).sum())).sum();
    let total = c2(a.len() as u64);
    let expected = rows * cols / total;
    let max = (rows + cols) / 2.0;
    if max == expected {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn louvain_splits_two_cliques_joined_by_one_edge() {
        // two 6-cliques (directed both ways) and one edge between them
        let mut out: Vec<Vec<u32>> = (0..12u32)
            .map(|i| {
                let base = if i < 6 { 0 } else { 6 };
                (base..base + 6).filter(|&j| j != i).collect()
            })
            .collect();
        out[5].push(6);
        let l = louvain(&out, 1.0);
        assert!(l[..6].iter().all(|&v| v == l[0]) && l[6..].iter().all(|&v| v == l[6]));
        assert_ne!(l[0], l[6]);
        assert_eq!(neighbour_majority(&out, &l), l);
    }

    #[test]
    fn knn_kmeans_ari_and_resizes() {
        let x = [0.0, 0.0, 0.1, 0.0, 5.0, 5.0, 5.1, 5.0, 0.0, 0.2];
        let g = knn(&x, 5, 2, 2);
        assert_eq!(g[0], vec![1, 4]);
        assert_eq!(g[2], vec![3, 4]);
        let l = kmeans(&x, 2, &[1.0, 1.0, 4.0, 4.0], 100);
        assert_eq!(l, vec![0, 0, 1, 1, 0]);
        assert_eq!(adjusted_rand_index(&[0, 0, 1, 1], &[1, 1, 0, 0]), 1.0);
        assert!(adjusted_rand_index(&[0, 1, 0, 1], &[0, 0, 1, 1]) < 0.0);
        // 4 → 2 linear: half-pixel centres average pairs
        assert_eq!(resize_linear(&[0.0, 2.0, 4.0, 6.0], 1, 4, 1, 2), vec![1.0, 5.0]);
        assert_eq!(nearest_index(10, 2), vec![0, 5]);
    }
}
