//! The GCN autoencoder of `stages::gcn` on the GPU: the same pruned plan (layer l only on the
//! rows within 4−l hops of a sequenced spot), the same f32 products, Adam and cosine schedule,
//! with every tensor resident on the device. A training run uploads the graph and scores once
//! and downloads the loss curve and the parameters once; the final all-rows prediction runs
//! on the CPU from those parameters (one pass).

use cudarc::driver::CudaSlice;

use super::device::{cfg1, cfg_elems, gemm_grid, Cuda, DBuf, DevCsr, THREADS};
use crate::backend::{AdamSource, Backend};
use crate::io::sparse::Csr;
use crate::optim::{cosine_lr, Adam, AdamConfig};
use crate::stages::gcn::{Gcn, GcnParams, GcnResult, GcnSettings, Plan};

/// One graph's autoencoder state on the device.
pub struct GcnCuda<'a> {
    g: &'a Cuda,
    n: usize,
    dims: [usize; 5],
    sizes: [usize; 5],
    rows0: CudaSlice<u32>,
    /// per layer: adjacency slice and its transpose
    layers: Vec<(DevCsr, DevCsr)>,
    score: DBuf,
    h: Vec<DBuf>,
    z: Vec<DBuf>,
    dz: DBuf,
    du: DBuf,
    dh: DBuf,
    /// pseudo, then (w, b) per layer, as `GcnParams::tensors`
    params: Vec<DBuf>,
    grads: Vec<DBuf>,
    /// Σ (y − s)² of each iteration (f64), read back in chunks
    losses: CudaSlice<f64>,
}

impl<'a> GcnCuda<'a> {
    /// `adj`: (N+P)² adjacency; `n` sequenced spots; `score`: their N × R NMF scores;
    /// room for `iterations` loss values.
    pub fn new(g: &'a Cuda, adj: &Csr, n: usize, score: &[f32], p: &GcnParams, iterations: usize) -> GcnCuda<'a> {
        let rank = p.b[3].len();
        let dims = GcnParams::dims(rank);
        let plan = Plan::new(adj, (0..n as u32).collect());
        let sizes = plan.sizes();
        let layers = (1..5)
            .map(|l| {
                let (a, at) = plan.adjacency(l);
                (DevCsr::new(g, a), DevCsr::new(g, at))
            })
            .collect();
        let big = (0..4).map(|l| sizes[l] * dims[l + 1]).chain((0..5).map(|l| sizes[l] * dims[l])).max().unwrap_or(0);
        GcnCuda {
            g,
            n,
            dims,
            sizes,
            rows0: g.upload_raw(plan.rows(0)),
            layers,
            score: g.upload(score),
            h: (0..5).map(|l| g.alloc(sizes[l] * dims[l])).collect(),
            z: (0..4).map(|l| g.alloc(sizes[l] * dims[l + 1])).collect(),
            dz: g.alloc(big),
            du: g.alloc(big),
            dh: g.alloc(big),
            params: p.tensors().iter().map(|t| g.upload(t)).collect(),
            grads: p.tensors().iter().map(|t| g.alloc(t.len())).collect(),
            losses: g.upload_raw(&vec![0f64; iterations.max(1)]),
        }
    }

    /// C (m × n, row stride ldc) = A · B (+ bias) from strided operands; `atomic` sums split-K
    /// partial products into C (zeroed here).
    #[allow(clippy::too_many_arguments)]
    fn dense(
        &self,
        a: (u64, usize, usize),
        b: (u64, usize, usize),
        bias: u64,
        c: u64,
        mnk: (usize, usize, usize),
        atomic: bool,
    ) {
        let g = self.g;
        let (m, n, k) = mnk;
        let splits = if atomic {
            g.zero_bytes(c, m * n * 4);
            g.splits(m.div_ceil(64) * n.div_ceil(64), k)
        } else {
            1
        };
        launch!(
            g,
            "dense_f32",
            gemm_grid(m, n, splits),
            a.0,
            a.1 as i64,
            a.2 as i64,
            b.0,
            b.1 as i64,
            b.2 as i64,
            bias,
            c,
            n as i32,
            m as i64,
            n as i32,
            k as i64,
            atomic as i32
        );
    }

    fn spmm(&self, a: &DevCsr, c: usize, z: u64, act: i32, y: u64) {
        let g = self.g;
        let cfg = cfg1((a.rows * 32).div_ceil(THREADS as usize), THREADS);
        launch!(
            g,
            "spmm_f32",
            cfg,
            g.raw(&a.indptr),
            g.raw(&a.indices),
            g.raw(&a.data),
            a.rows as i64,
            c as i32,
            z,
            act,
            y
        );
    }

    /// Forward and backward at the current parameters: gradients into the device's grads, the
    /// loss sum added to slot `it` of the loss curve.
    fn loss_and_grad_into(&mut self, it: usize) {
        let g = self.g;
        let (n, r, d, s) = (self.n, self.dims[0], self.dims, self.sizes);
        let p: Vec<u64> = self.params.iter().map(|b| g.ptr(b)).collect();
        let gr: Vec<u64> = self.grads.iter().map(|b| g.ptr(b)).collect();
        let h: Vec<u64> = self.h.iter().map(|b| g.ptr(b)).collect();
        let (dz, du, dh) = (g.ptr(&self.dz), g.ptr(&self.du), g.ptr(&self.dh));
        let rows0 = g.raw(&self.rows0);
        launch!(
            g,
            "gcn_gather_input_f32",
            cfg_elems(s[0] * r),
            g.ptr(&self.score),
            p[0],
            rows0,
            s[0] as i64,
            n as i64,
            r as i32,
            h[0]
        );
        for l in 1..5 {
            let (din, dout) = (d[l - 1], d[l]);
            let z = g.ptr(&self.z[l - 1]);
            // Z = H Wᵀ + b, W out × in
            self.dense((h[l - 1], din, 1), (p[2 * l - 1], 1, din), p[2 * l], z, (s[l - 1], dout, din), false);
            self.spmm(&self.layers[l - 1].0, dout, z, if l < 4 { 1 } else { 2 }, h[l]);
        }
        let loss_slot = g.raw(&self.losses) + (it * 8) as u64;
        let scale = 2.0 / (n * r) as f32;
        launch!(
            g,
            "gcn_output_loss_f32",
            cfg_elems(n * r),
            h[4],
            g.ptr(&self.score),
            (n * r) as i64,
            scale,
            du,
            loss_slot
        );
        for l in (1..5).rev() {
            let (din, dout) = (d[l - 1], d[l]);
            let rows_in = s[l - 1];
            self.spmm(&self.layers[l - 1].1, dout, du, 0, dz);
            // dW = dZᵀ H (out × in), dB = column sums of dZ, dH = dZ W
            self.dense((dz, 1, dout), (h[l - 1], din, 1), 0, gr[2 * l - 1], (dout, din, rows_in), true);
            g.colsum(dz, rows_in, dout, gr[2 * l]);
            self.dense((dz, dout, 1), (p[2 * l - 1], din, 1), 0, dh, (rows_in, din, dout), false);
            if l > 1 {
                launch!(g, "relu_mask_f32", cfg_elems(rows_in * din), h[l - 1], dh, (rows_in * din) as i64, du);
            } else {
                g.zero_bytes(gr[0], g.len(&self.grads[0]) * 4);
                launch!(
                    g,
                    "gcn_pseudo_grad_f32",
                    cfg_elems(rows_in * r),
                    rows0,
                    rows_in as i64,
                    n as i64,
                    r as i32,
                    dh,
                    h[0],
                    gr[0]
                );
            }
        }
    }

    /// The loss (mean over the N × R outputs) and gradients at the current parameters, on the
    /// host (tests against `Gcn::loss_and_grad`).
    pub fn loss_and_grad(&mut self) -> (f64, GcnParams) {
        let g = self.g;
        g.zero_bytes(g.raw(&self.losses), 8);
        self.loss_and_grad_into(0);
        let loss = g.dtoh::<f64>(g.raw(&self.losses), 1)[0] / (self.n * self.dims[0]) as f64;
        (loss, self.to_host(&self.grads))
    }

    fn to_host(&self, t: &[DBuf]) -> GcnParams {
        let mut v: Vec<Vec<f32>> = t.iter().map(|b| self.g.download(b)).collect();
        let w = [1, 3, 5, 7].map(|i| std::mem::take(&mut v[i]));
        let b = [2, 4, 6, 8].map(|i| std::mem::take(&mut v[i]));
        GcnParams { pseudo: std::mem::take(&mut v[0]), w, b }
    }
}

/// `stages::gcn::train_gcn` on the GPU: same schedule, same plan, same result layout.
pub fn train_gcn_cuda(
    g: &Cuda,
    adj: &Csr,
    score: &[f32],
    n: usize,
    params: GcnParams,
    s: &GcnSettings,
    mut on_iter: impl FnMut(usize, f64),
) -> GcnResult {
    let rank = params.b[3].len();
    assert_eq!(score.len(), n * rank, "GCN: scores are N × R");
    let mut m = GcnCuda::new(g, adj, n, score, &params, s.iterations);
    let sizes: Vec<usize> = params.tensors().iter().map(|t| t.len()).collect();
    let mut opt = Adam::with(AdamConfig { weight_decay: s.weight_decay, ..Default::default() }, &sizes, |k| g.zeros(k));
    let all: Vec<usize> = (0..sizes.len()).collect();
    g.zero_bytes(g.raw(&m.losses), s.iterations * 8);
    let mut losses = Vec::with_capacity(s.iterations);
    let denom = (n * rank) as f64;
    const CHUNK: usize = 250; // loss values read back (and reported) per chunk: no sync per step
    for it in 0..s.iterations {
        m.loss_and_grad_into(it);
        let lr = cosine_lr(s.lr, s.lr / 4.0, it, s.iterations);
        let sc = opt.next_step(&vec![lr; sizes.len()]);
        // one launch for every tensor: the GCN's steps are short, thousands of them
        g.adam_many(&mut m.params, &m.grads, &mut opt, &all, AdamSource::Host(&sc));
        if (it + 1) % CHUNK == 0 || it + 1 == s.iterations {
            let first = losses.len();
            let v = g.dtoh::<f64>(g.raw(&m.losses) + (first * 8) as u64, it + 1 - first);
            for (k, l) in v.into_iter().enumerate() {
                losses.push(l / denom);
                on_iter(first + k, l / denom);
            }
        }
    }
    let params = m.to_host(&m.params);
    let output = Gcn::predict(adj, n, &params, score);
    GcnResult { params, output, losses, rows_per_layer: m.sizes }
}
