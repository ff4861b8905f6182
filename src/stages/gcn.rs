//! The GCN autoencoder of SPEC §7, with explicit forward and backward passes.
//!
//! X = [NMF scores of the N sequenced spots; sigmoid(learnable pseudo scores)], then four
//! layers U_l = A·(H_{l-1} W_lᵀ + b_l) (R→64→256→64→R), ReLU between, sigmoid out; the loss
//! is the MSE of the first N output rows against the scores. Adam (lr 0.005, weight decay
//! 1e-5) with cosine annealing to lr/4, as the reference trains it.
//!
//! Only the first N outputs enter the loss, so layer l is needed only on the rows within
//! 4−l hops of a sequenced spot: a `Plan` gathers those rows and the sub-adjacencies once,
//! and every iteration computes exactly the reference's loss and gradients on fewer rows.
//! The final prediction runs a plan over all rows. Products run in f32 as PyTorch's do, with
//! fixed work splits, so results depend on the seed only, not on the thread count.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

use crate::io::sparse::Csr;
use crate::linalg::{sgemm, Mat};
use crate::optim::{cosine_lr, Adam, AdamConfig};

pub const HIDDEN: [usize; 3] = [64, 256, 64];

#[derive(Debug, Clone, Serialize)]
pub struct GcnSettings {
    pub iterations: usize,
    pub lr: f64,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for GcnSettings {
    fn default() -> Self {
        GcnSettings { iterations: 5000, lr: 0.005, weight_decay: 1e-5, seed: 123 }
    }
}

/// Learnable tensors, PyTorch layouts: `w[l]` is out × in, `pseudo` is P × R.
#[derive(Debug, Clone, PartialEq)]
pub struct GcnParams {
    pub pseudo: Vec<f32>,
    pub w: [Vec<f32>; 4],
    pub b: [Vec<f32>; 4],
}

impl GcnParams {
    pub fn dims(rank: usize) -> [usize; 5] {
        [rank, HIDDEN[0], HIDDEN[1], HIDDEN[2], rank]
    }

    /// The reference's initialisation: pseudo scores ~ N(0, 1); weights Kaiming-normal
    /// (fan_out, ReLU gain: std = √(2/out)); biases zero.
    pub fn init(n_pseudo: usize, rank: usize, seed: u64) -> GcnParams {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            (0..n).map(|_| std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)).collect()
        };
        let d = Self::dims(rank);
        let pseudo = normal(n_pseudo * rank, 1.0);
        let w = [0, 1, 2, 3].map(|l| normal(d[l + 1] * d[l], (2.0 / d[l + 1] as f32).sqrt()));
        let b = [0, 1, 2, 3].map(|l| vec![0f32; d[l + 1]]);
        GcnParams { pseudo, w, b }
    }

    pub fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut v: Vec<&mut [f32]> = vec![&mut self.pseudo[..]];
        for (w, b) in self.w.iter_mut().zip(self.b.iter_mut()) {
            v.push(&mut w[..]);
            v.push(&mut b[..]);
        }
        v
    }

    /// pseudo, then (w, b) of each layer: the optimiser's order
    pub fn tensors(&self) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = vec![&self.pseudo[..]];
        for (w, b) in self.w.iter().zip(&self.b) {
            v.push(&w[..]);
            v.push(&b[..]);
        }
        v
    }

    fn zeros_like(&self) -> GcnParams {
        GcnParams {
            pseudo: vec![0.0; self.pseudo.len()],
            w: self.w.clone().map(|w| vec![0.0; w.len()]),
            b: self.b.clone().map(|b| vec![0.0; b.len()]),
        }
    }
}

/// One layer's rows and its slice of the adjacency (rows: this layer's rows; columns: the
/// previous layer's rows, as local indices), with the transpose for the backward pass.
struct LayerPlan {
    a: Csr,
    at: Csr,
}

/// Which rows each layer computes (global spot ids, sorted), from the output rows back.
pub struct Plan {
    rows: [Vec<u32>; 5],
    layers: Vec<LayerPlan>,
}

impl Plan {
    pub fn new(adj: &Csr, outputs: Vec<u32>) -> Plan {
        let total = adj.rows;
        let mut rows: [Vec<u32>; 5] = Default::default();
        rows[4] = outputs;
        for l in (0..4).rev() {
            let mut seen = vec![false; total];
            for &g in &rows[l + 1] {
                for &j in adj.row(g as usize).0 {
                    seen[j as usize] = true;
                }
            }
            rows[l] = (0..total as u32).filter(|&j| seen[j as usize]).collect();
        }
        let mut local = vec![u32::MAX; total];
        let layers = (1..5)
            .map(|l| {
                for (i, &g) in rows[l - 1].iter().enumerate() {
                    local[g as usize] = i as u32;
                }
                let mut a = Csr::empty(rows[l].len(), rows[l - 1].len());
                for (i, &g) in rows[l].iter().enumerate() {
                    let (idx, val) = adj.row(g as usize);
                    a.indices.extend(idx.iter().map(|&j| local[j as usize]));
                    a.data.extend_from_slice(val);
                    a.indptr[i + 1] = a.indices.len();
                }
                let at = a.transpose();
                LayerPlan { a, at }
            })
            .collect();
        Plan { rows, layers }
    }

    /// Global spot ids of the rows layer `l` computes (0: the input rows).
    pub fn rows(&self, l: usize) -> &[u32] {
        &self.rows[l]
    }

    /// Layer `l`'s (1..=4) adjacency slice and its transpose.
    pub fn adjacency(&self, l: usize) -> (&Csr, &Csr) {
        (&self.layers[l - 1].a, &self.layers[l - 1].at)
    }

    /// Rows computed by each layer, input first.
    pub fn sizes(&self) -> [usize; 5] {
        [0, 1, 2, 3, 4].map(|l| self.rows[l].len())
    }
}

/// Y (a.rows × n) = A · Z (a.cols × n), sparse × dense.
fn spmm_f32(a: &Csr, z: &[f32], n: usize, y: &mut [f32]) {
    y.par_chunks_mut(n * 64).enumerate().for_each(|(c, yy)| {
        for (r, yi) in yy.chunks_mut(n).enumerate() {
            yi.fill(0.0);
            let (idx, val) = a.row(c * 64 + r);
            for (&j, &v) in idx.iter().zip(val) {
                let zj = &z[j as usize * n..(j as usize + 1) * n];
                for (o, &zz) in yi.iter_mut().zip(zj) {
                    *o += v * zz;
                }
            }
        }
    });
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Activations and gradients of one plan, allocated once.
struct Workspace {
    /// h[0] = X on rows[0]; h[l] = activation of layer l on rows[l]
    h: [Vec<f32>; 5],
    /// pre-adjacency products Z_l on rows[l-1] (index l-1)
    z: [Vec<f32>; 4],
    dz: Vec<f32>,
    du: Vec<f32>,
    dh: Vec<f32>,
}

impl Workspace {
    fn new(plan: &Plan, d: &[usize; 5]) -> Workspace {
        let s = plan.sizes();
        let big = (0..4).map(|l| s[l] * d[l + 1]).chain((0..5).map(|l| s[l] * d[l])).max().unwrap_or(0);
        Workspace {
            h: [0, 1, 2, 3, 4].map(|l| vec![0f32; s[l] * d[l]]),
            z: [0, 1, 2, 3].map(|l| vec![0f32; s[l] * d[l + 1]]),
            dz: vec![0f32; big],
            du: vec![0f32; big],
            dh: vec![0f32; big],
        }
    }
}

/// The autoencoder over one graph.
pub struct Gcn {
    pub n: usize,
    pub rank: usize,
    dims: [usize; 5],
    train_plan: Plan,
    ws: Workspace,
}

impl Gcn {
    /// `adj`: (N+P)² adjacency; `n`: sequenced spots (the first rows); `rank`: R.
    pub fn new(adj: &Csr, n: usize, rank: usize) -> Gcn {
        let dims = GcnParams::dims(rank);
        let train_plan = Plan::new(adj, (0..n as u32).collect());
        let ws = Workspace::new(&train_plan, &dims);
        Gcn { n, rank, dims, train_plan, ws }
    }

    pub fn plan_sizes(&self) -> [usize; 5] {
        self.train_plan.sizes()
    }

    fn forward(plan: &Plan, ws: &mut Workspace, dims: &[usize; 5], p: &GcnParams, score: &[f32], n: usize) {
        let r = dims[0];
        for (i, &g) in plan.rows[0].iter().enumerate() {
            let g = g as usize;
            let x = &mut ws.h[0][i * r..(i + 1) * r];
            if g < n {
                x.copy_from_slice(&score[g * r..(g + 1) * r]);
            } else {
                for (o, &v) in x.iter_mut().zip(&p.pseudo[(g - n) * r..(g - n + 1) * r]) {
                    *o = sigmoid(v);
                }
            }
        }
        for l in 1..5 {
            let (din, dout) = (dims[l - 1], dims[l]);
            let rows_in = plan.rows[l - 1].len();
            let z = &mut ws.z[l - 1];
            for row in z.chunks_mut(dout) {
                row.copy_from_slice(&p.b[l - 1]);
            }
            sgemm(Mat::new(&ws.h[l - 1], rows_in, din), Mat::new(&p.w[l - 1], dout, din).t(), z, 1.0);
            spmm_f32(&plan.layers[l - 1].a, &ws.z[l - 1], dout, &mut ws.h[l]);
            let h = &mut ws.h[l];
            if l < 4 {
                h.par_iter_mut().for_each(|v| *v = v.max(0.0));
            } else {
                h.par_iter_mut().for_each(|v| *v = sigmoid(*v));
            }
        }
    }

    /// Loss and gradients at `p` (the reference's MSE over the N × R sequenced outputs).
    pub fn loss_and_grad(&mut self, p: &GcnParams, score: &[f32], grad: &mut GcnParams) -> f64 {
        let (n, r, dims) = (self.n, self.rank, self.dims);
        let plan = &self.train_plan;
        let ws = &mut self.ws;
        Self::forward(plan, ws, &dims, p, score, n);
        // rows[4] = 0..n in order
        let y = &ws.h[4];
        let scale = 2.0 / (n * r) as f32;
        let mut loss = 0f64;
        let du = &mut ws.du[..n * r];
        for i in 0..n * r {
            let e = y[i] - score[i];
            loss += (e as f64) * (e as f64);
            du[i] = scale * e * y[i] * (1.0 - y[i]);
        }
        for l in (1..5).rev() {
            let (din, dout) = (dims[l - 1], dims[l]);
            let (rows_out, rows_in) = (plan.rows[l].len(), plan.rows[l - 1].len());
            let dz = &mut ws.dz[..rows_in * dout];
            spmm_f32(&plan.layers[l - 1].at, &ws.du[..rows_out * dout], dout, dz);
            sgemm(Mat::new(dz, rows_in, dout).t(), Mat::new(&ws.h[l - 1], rows_in, din), &mut grad.w[l - 1], 0.0);
            let db = &mut grad.b[l - 1];
            db.fill(0.0);
            for row in dz.chunks(dout) {
                for (a, &v) in db.iter_mut().zip(row) {
                    *a += v;
                }
            }
            let dh = &mut ws.dh[..rows_in * din];
            sgemm(Mat::new(dz, rows_in, dout), Mat::new(&p.w[l - 1], dout, din), dh, 0.0);
            if l > 1 {
                let h = &ws.h[l - 1];
                ws.du[..rows_in * din].par_iter_mut().zip(dh.par_iter()).zip(h.par_iter()).for_each(|((u, &g), &a)| {
                    *u = if a > 0.0 { g } else { 0.0 };
                });
            } else {
                grad.pseudo.fill(0.0);
                for (i, &g) in plan.rows[0].iter().enumerate() {
                    let g = g as usize;
                    if g >= n {
                        let (pg, dx) = (&mut grad.pseudo[(g - n) * r..(g - n + 1) * r], &dh[i * r..(i + 1) * r]);
                        for q in 0..r {
                            let s = ws.h[0][i * r + q];
                            pg[q] = dx[q] * s * (1.0 - s);
                        }
                    }
                }
            }
        }
        loss / (n * r) as f64
    }

    /// Outputs of every spot (N+P) × R.
    pub fn predict(adj: &Csr, n: usize, p: &GcnParams, score: &[f32]) -> Vec<f32> {
        let rank = p.b[3].len();
        let dims = GcnParams::dims(rank);
        let plan = Plan::new(adj, (0..adj.rows as u32).collect());
        let mut ws = Workspace::new(&plan, &dims);
        Self::forward(&plan, &mut ws, &dims, p, score, n);
        std::mem::take(&mut ws.h[4])
    }
}

/// The result of training: final parameters, every spot's score and the loss curve.
pub struct GcnResult {
    pub params: GcnParams,
    pub output: Vec<f32>,
    pub losses: Vec<f64>,
    /// rows each layer computed per training step, input first
    pub rows_per_layer: [usize; 5],
}

/// Train from `params` as the reference does and predict every spot; `on_iter` sees
/// (iteration, loss) after each step (progress bars, logs).
pub fn train_gcn(
    adj: &Csr,
    score: &[f32],
    n: usize,
    mut params: GcnParams,
    s: &GcnSettings,
    mut on_iter: impl FnMut(usize, f64),
) -> GcnResult {
    let rank = params.b[3].len();
    assert_eq!(score.len(), n * rank, "GCN: scores are N × R");
    let mut gcn = Gcn::new(adj, n, rank);
    let mut grad = params.zeros_like();
    let sizes: Vec<usize> = params.tensors().iter().map(|t| t.len()).collect();
    let mut opt = Adam::new(AdamConfig { weight_decay: s.weight_decay, ..Default::default() }, &sizes);
    let mut losses = Vec::with_capacity(s.iterations);
    for it in 0..s.iterations {
        let loss = gcn.loss_and_grad(&params, score, &mut grad);
        let lr = cosine_lr(s.lr, s.lr / 4.0, it, s.iterations);
        opt.step(&mut params.tensors_mut(), &grad.tensors(), lr);
        losses.push(loss);
        on_iter(it, loss);
    }
    let output = Gcn::predict(adj, n, &params, score);
    GcnResult { params, output, losses, rows_per_layer: gcn.plan_sizes() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn random_graph(total: usize, seed: u64) -> Csr {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut a = Csr::empty(total, total);
        for i in 0..total {
            let mut nb: Vec<u32> =
                (0..4).map(|_| rng.random_range(0..total as u32)).filter(|&j| j as usize != i).collect();
            nb.sort_unstable();
            nb.dedup();
            a.data.extend(nb.iter().map(|_| 0.25f32));
            a.indices.extend(nb);
            a.indptr[i + 1] = a.indices.len();
        }
        a
    }

    /// Central differences in f64 of the loss through the same forward pass; the check uses
    /// a smooth, small network so that f32 round-off stays well below the step.
    #[test]
    fn gradients_match_finite_differences() {
        let (n, p, r) = (12, 20, 3);
        let adj = random_graph(n + p, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let score: Vec<f32> = (0..n * r).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut params = GcnParams::init(p, r, 3);
        for b in params.b.iter_mut() {
            b.iter_mut().for_each(|v| *v = rng.random_range(-0.1..0.1));
        }
        let mut gcn = Gcn::new(&adj, n, r);
        let mut grad = params.zeros_like();
        gcn.loss_and_grad(&params, &score, &mut grad);
        let eps = 2e-3f32;
        let analytic: Vec<Vec<f32>> = grad.tensors().iter().map(|t| t.to_vec()).collect();
        let mut probe = params.clone();
        let mut scratch = params.zeros_like();
        let mut checked = 0;
        for (k, g) in analytic.iter().enumerate() {
            for idx in (0..g.len()).step_by(g.len().div_ceil(7).max(1)) {
                let orig = probe.tensors()[k][idx];
                probe.tensors_mut()[k][idx] = orig + eps;
                let lp = gcn.loss_and_grad(&probe, &score, &mut scratch);
                probe.tensors_mut()[k][idx] = orig - eps;
                let lm = gcn.loss_and_grad(&probe, &score, &mut scratch);
                probe.tensors_mut()[k][idx] = orig;
                let fd = (lp - lm) / (2.0 * eps as f64);
                let tol = 1e-2 * fd.abs().max(g.iter().map(|v| v.abs()).fold(0.0, f32::max) as f64) + 1e-7;
                assert!((fd - g[idx] as f64).abs() <= tol, "tensor {k}[{idx}]: fd {fd} vs {}", g[idx]);
                checked += 1;
            }
        }
        assert!(checked > 40);
    }

    #[test]
    fn the_pruned_plan_gives_the_full_graphs_outputs() {
        let (n, p, r) = (30, 90, 4);
        let adj = random_graph(n + p, 5);
        let params = GcnParams::init(p, r, 6);
        let score: Vec<f32> = (0..n * r).map(|i| (i % 7) as f32 / 7.0).collect();
        let full = Gcn::predict(&adj, n, &params, &score);
        let plan = Plan::new(&adj, (0..n as u32).collect());
        let mut ws = Workspace::new(&plan, &GcnParams::dims(r));
        Gcn::forward(&plan, &mut ws, &GcnParams::dims(r), &params, &score, n);
        assert_eq!(&ws.h[4][..], &full[..n * r]);
    }
}
