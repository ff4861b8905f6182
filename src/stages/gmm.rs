//! Low-signal filter of the GCN scores (SPEC §7): per component, a two-component Gaussian
//! mixture on the spot values as scikit-learn's `GaussianMixture(2, covariance_type='full')`
//! fits it — k-means initialisation, EM until the mean log-likelihood changes by less than
//! 1e-3 (at most 100 iterations), variance floor 1e-6 — and the spots not assigned to the
//! higher-mean component are zeroed; then every value below 0.1 is zeroed.
//!
//! The k-means start is the optimal 2-means split of the sorted values (scikit-learn's Lloyd
//! iterations from a random k-means++ start reach it on all but contrived data), so the
//! filter needs no seed.

use rayon::prelude::*;

const TOL: f64 = 1e-3;
const MAX_ITER: usize = 100;
const REG_COVAR: f64 = 1e-6;
pub const THRESHOLD: f32 = 0.1;

/// The best split of 1-D data into two clusters by squared error: labels (true = upper).
fn two_means(x: &[f64]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]).then(a.cmp(&b)));
    let sorted: Vec<f64> = order.iter().map(|&i| x[i]).collect();
    let n = sorted.len();
    let (mut s, mut s2) = (vec![0f64; n + 1], vec![0f64; n + 1]);
    for i in 0..n {
        s[i + 1] = s[i] + sorted[i];
        s2[i + 1] = s2[i] + sorted[i] * sorted[i];
    }
    let sse = |a: usize, b: usize| {
        let m = (b - a) as f64;
        s2[b] - s2[a] - (s[b] - s[a]).powi(2) / m
    };
    // split only between distinct values, so equal values share a cluster
    let best = (1..n)
        .filter(|&k| sorted[k] > sorted[k - 1])
        .min_by(|&a, &b| (sse(0, a) + sse(a, n)).total_cmp(&(sse(0, b) + sse(b, n))).then(a.cmp(&b)));
    let mut labels = vec![false; n];
    if let Some(k) = best {
        for &i in &order[k..] {
            labels[i] = true;
        }
    }
    labels
}

/// Mixture parameters: weights, means, variances of the two components.
#[derive(Debug, Clone, Copy)]
struct Params {
    w: [f64; 2],
    mu: [f64; 2],
    var: [f64; 2],
}

fn m_step(x: &[f64], resp: &[[f64; 2]]) -> Params {
    let eps10 = 10.0 * f64::EPSILON;
    let mut p = Params { w: [0.0; 2], mu: [0.0; 2], var: [0.0; 2] };
    for k in 0..2 {
        let nk = resp.iter().map(|r| r[k]).sum::<f64>() + eps10;
        let mu = resp.iter().zip(x).map(|(r, &v)| r[k] * v).sum::<f64>() / nk;
        let var = resp.iter().zip(x).map(|(r, &v)| r[k] * (v - mu) * (v - mu)).sum::<f64>() / nk + REG_COVAR;
        p.w[k] = nk;
        p.mu[k] = mu;
        p.var[k] = var;
    }
    let total = p.w[0] + p.w[1];
    p.w = p.w.map(|w| w / total);
    p
}

/// log w_k + log N(v | μ_k, σ_k²)
fn weighted_log_prob(p: &Params, v: f64) -> [f64; 2] {
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    [0, 1].map(|k| p.w[k].ln() - 0.5 * (ln2pi + p.var[k].ln() + (v - p.mu[k]).powi(2) / p.var[k]))
}

/// Membership of each value in the higher-mean component of the fitted mixture.
pub fn upper_component(values: &[f32]) -> Vec<bool> {
    let x: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    let init = two_means(&x);
    if x.len() < 2 || !init.iter().any(|&b| b) {
        // constant data: one cluster, nothing to separate
        return vec![true; x.len()];
    }
    let mut resp: Vec<[f64; 2]> = init.iter().map(|&u| if u { [0.0, 1.0] } else { [1.0, 0.0] }).collect();
    let mut p = m_step(&x, &resp);
    let mut lower = f64::NEG_INFINITY;
    for _ in 0..MAX_ITER {
        let prev = lower;
        let mut total = 0.0;
        for (r, &v) in resp.iter_mut().zip(&x) {
            let lp = weighted_log_prob(&p, v);
            let m = lp[0].max(lp[1]);
            let norm = m + ((lp[0] - m).exp() + (lp[1] - m).exp()).ln();
            total += norm;
            *r = [(lp[0] - norm).exp(), (lp[1] - norm).exp()];
        }
        p = m_step(&x, &resp);
        lower = total / x.len() as f64;
        if (lower - prev).abs() < TOL {
            break;
        }
    }
    let upper = if p.mu[1] > p.mu[0] { 1 } else { 0 };
    x.iter()
        .map(|&v| {
            let lp = weighted_log_prob(&p, v);
            // argmax picks the first on ties, as numpy's does
            let label = if lp[1] > lp[0] { 1 } else { 0 };
            label == upper
        })
        .collect()
}

/// The filter on an S × R score matrix (row-major), in place: mixture per component (when
/// `mixture`), then the 0.1 threshold.
pub fn filter_scores(scores: &mut [f32], rank: usize, mixture: bool) {
    let rows = scores.len() / rank.max(1);
    if mixture {
        let keep: Vec<Vec<bool>> = (0..rank)
            .into_par_iter()
            .map(|t| upper_component(&(0..rows).map(|i| scores[i * rank + t]).collect::<Vec<_>>()))
            .collect();
        for (t, keep) in keep.iter().enumerate() {
            for (i, &k) in keep.iter().enumerate() {
                if !k {
                    scores[i * rank + t] = 0.0;
                }
            }
        }
    }
    for v in scores.iter_mut() {
        if *v < THRESHOLD {
            *v = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    #[test]
    fn separates_two_clear_modes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let lo = Normal::new(0.05, 0.02).unwrap();
        let hi = Normal::new(0.7, 0.1).unwrap();
        let mut v: Vec<f32> = (0..300).map(|_| lo.sample(&mut rng) as f32).collect();
        v.extend((0..100).map(|_| hi.sample(&mut rng) as f32));
        let up = upper_component(&v);
        assert!(up[..300].iter().all(|&u| !u) && up[300..].iter().all(|&u| u));
        assert_eq!(upper_component(&[0.3f32; 10]), vec![true; 10]);
        let mut s: Vec<f32> = (0..50).map(|_| rng.random_range(0.0..1.0)).collect();
        filter_scores(&mut s, 5, true);
        assert!(s.iter().all(|&x| x == 0.0 || x >= THRESHOLD));
    }

    #[test]
    fn two_means_is_the_optimal_split() {
        let x = [0.0, 0.1, 0.2, 5.0, 5.5, 0.15];
        assert_eq!(two_means(&x), vec![false, false, false, true, true, false]);
    }
}
