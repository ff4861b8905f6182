//! The spot graph of the GCN (SPEC §7). Spots 0..N are sequenced, N..N+P pseudo. For
//! every spot: among its k nearest sequenced spots and its ⌈P/N·k⌉ nearest pseudo spots
//! (each list counting the spot itself when it is of that kind), keep the 2 most
//! correlated by image embedding of each kind, the spot itself excluded.
//!
//! Exact mode weighs each edge 0.25 as the reference's exact builder does; approximate mode
//! weighs 1/degree as its Annoy builder does. Our neighbour search is exact and cheap in
//! both (a bucket grid, O((N+P)·k) time and memory — the reference forms the (N+P)² distance
//! and correlation matrices), so the two modes pick the same neighbours and differ only in
//! the weights. Distance ties go to the lower index; correlation ties to the nearer spot.

use rayon::prelude::*;

use crate::io::sparse::Csr;
use crate::preprocess::nearest::SpotIndex;

/// Edge weights: the reference's exact builder (0.25) or its approximate one (1/degree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GraphMode {
    Exact,
    Approximate,
}

pub const DEFAULT_NEIGHBORS: usize = 50;

/// Per-thread scratch: nearest candidates (distance², index) and scored ones
/// (correlation, distance rank, spot).
type Scratch = (Vec<(f64, u32)>, Vec<(f64, usize, u32)>);

/// Rows of the embedding matrix centred and scaled to unit norm (f64), so that a dot product
/// is numpy's `corrcoef`; a constant row gets NaN, which sorts last.
fn standardise(emb: &[f32], d: usize) -> Vec<f64> {
    let mut z = vec![0f64; emb.len()];
    z.par_chunks_mut(d).zip(emb.par_chunks(d)).for_each(|(zi, ei)| {
        let mean = ei.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        for (a, &v) in zi.iter_mut().zip(ei) {
            *a = v as f64 - mean;
        }
        let norm = zi.iter().map(|a| a * a).sum::<f64>().sqrt();
        for a in zi.iter_mut() {
            *a = if norm > 0.0 { *a / norm } else { f64::NAN };
        }
    });
    z
}

/// The adjacency (N+P)² as CSR: `coords` (row, col) of the N sequenced then P pseudo spots,
/// `emb` their embeddings ((N+P) × d, row-major).
pub fn spot_graph(coords: &[[f64; 2]], emb: &[f32], d: usize, n_seq: usize, k: usize, mode: GraphMode) -> Csr {
    let total = coords.len();
    assert!(n_seq > 0 && n_seq <= total && emb.len() == total * d, "spot graph: inconsistent sizes");
    let n_pseudo = total - n_seq;
    let k_seq = k.min(n_seq);
    let k_pseudo = ((n_pseudo as f64 / n_seq as f64) * k as f64).ceil() as usize;
    let k_pseudo = k_pseudo.min(n_pseudo);
    let z = standardise(emb, d);
    let seq_index = SpotIndex::new(&coords[..n_seq]);
    let pseudo_index = (n_pseudo > 0).then(|| SpotIndex::new(&coords[n_seq..]));

    let rows: Vec<Vec<u32>> = (0..total)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(near, scored): &mut Scratch, i| {
                let zi = &z[i * d..(i + 1) * d];
                let mut pick = |index: &SpotIndex, kk: usize, offset: usize, out: &mut Vec<u32>| {
                    index.nearest_k(coords[i], kk, near);
                    scored.clear();
                    for (rank, &(_, j)) in near.iter().enumerate() {
                        let j = j + offset as u32;
                        if j as usize == i {
                            continue;
                        }
                        let zj = &z[j as usize * d..(j as usize + 1) * d];
                        let c: f64 = zi.iter().zip(zj).map(|(a, b)| a * b).sum();
                        scored.push((if c.is_nan() { f64::NEG_INFINITY } else { c }, rank, j));
                    }
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    out.extend(scored.iter().take(2).map(|s| s.2));
                };
                let mut chosen = Vec::with_capacity(4);
                pick(&seq_index, k_seq, 0, &mut chosen);
                if let Some(pi) = &pseudo_index {
                    pick(pi, k_pseudo, n_seq, &mut chosen);
                }
                chosen
            },
        )
        .collect();

    let mut a = Csr::empty(total, total);
    for (i, mut nb) in rows.into_iter().enumerate() {
        let w = match mode {
            GraphMode::Exact => 0.25,
            GraphMode::Approximate => 1.0 / nb.len().max(1) as f32,
        };
        nb.sort_unstable();
        a.data.extend(std::iter::repeat_n(w, nb.len()));
        a.indices.extend(nb);
        a.indptr[i + 1] = a.indices.len();
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The reference's rule written out the slow way: full distance and correlation
    /// matrices, stable sorts.
    fn brute(coords: &[[f64; 2]], emb: &[f32], d: usize, n: usize, k: usize) -> Vec<Vec<u32>> {
        let t = coords.len();
        let kp = ((((t - n) as f64) / n as f64) * k as f64).ceil() as usize;
        let z = standardise(emb, d);
        let dist = |i: usize, j: usize| (coords[i][0] - coords[j][0]).powi(2) + (coords[i][1] - coords[j][1]).powi(2);
        let corr = |i: usize, j: usize| (0..d).map(|q| z[i * d + q] * z[j * d + q]).sum::<f64>();
        (0..t)
            .map(|i| {
                let mut out = Vec::new();
                for (range, kk) in [(0..n, k), (n..t, kp)] {
                    let mut c: Vec<usize> = range.collect();
                    c.sort_by(|&a, &b| dist(i, a).total_cmp(&dist(i, b)).then(a.cmp(&b)));
                    c.truncate(kk);
                    let mut ranked: Vec<(usize, usize)> = c.into_iter().enumerate().filter(|&(_, j)| j != i).collect();
                    ranked.sort_by(|a, b| corr(i, b.1).total_cmp(&corr(i, a.1)).then(a.0.cmp(&b.0)));
                    out.extend(ranked.iter().take(2).map(|&(_, j)| j as u32));
                }
                out.sort_unstable();
                out
            })
            .collect()
    }

    #[test]
    fn matches_the_brute_force_rule_and_weights() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (n, p, d) = (120, 400, 16);
        let coords: Vec<[f64; 2]> =
            (0..n + p).map(|_| [rng.random_range(0.0..300.0), rng.random_range(0.0..200.0)]).collect();
        let emb: Vec<f32> = (0..(n + p) * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let want = brute(&coords, &emb, d, n, 10);
        for mode in [GraphMode::Exact, GraphMode::Approximate] {
            let a = spot_graph(&coords, &emb, d, n, 10, mode);
            for (i, w) in want.iter().enumerate() {
                let (idx, val) = a.row(i);
                assert_eq!(idx, &w[..], "row {i}");
                assert!(idx.iter().all(|&j| j as usize != i));
                let expect = if mode == GraphMode::Exact { 0.25 } else { 1.0 / w.len() as f32 };
                assert!(val.iter().all(|&v| v == expect));
            }
        }
    }

    #[test]
    fn no_pseudo_spots_and_constant_embeddings_are_handled() {
        let coords: Vec<[f64; 2]> = (0..5).map(|i| [i as f64, 0.0]).collect();
        let emb = vec![1.0f32; 5 * 3];
        let a = spot_graph(&coords, &emb, 3, 5, 50, GraphMode::Approximate);
        for i in 0..5 {
            let (idx, val) = a.row(i);
            assert_eq!(idx.len(), 2);
            assert!(val.iter().all(|&v| v == 0.5));
        }
    }
}
