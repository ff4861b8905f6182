//! The CPU backend: f32 buffers in host memory, layers as GEMMs over gathered rows
//! (matrixmultiply) split in fixed blocks over rayon's threads, so results do not depend on
//! the thread count's scheduling. The reference the CUDA backend is tested against.

pub mod act;
pub mod band;
pub mod conv;
pub mod loss;
pub mod norm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::{Backend, ConvSpec, Decoder, DxEpilogue, Epilogue, Shape, TileSpots};
use crate::optim::{adam_update, AdamScalars};

/// Released buffers are kept by length and handed out again.
#[derive(Default)]
pub struct Cpu {
    pool: Mutex<HashMap<usize, Vec<Vec<f32>>>>,
    fresh: AtomicU64,
}

impl Cpu {
    pub fn new() -> Cpu {
        Cpu::default()
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Band = band::BandAverager;
    type Fence = ();
    type Sums = Vec<f64>;
    type Graph = std::convert::Infallible;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn alloc(&self, len: usize) -> Vec<f32> {
        if let Some(b) = self.pool.lock().unwrap().get_mut(&len).and_then(|v| v.pop()) {
            return b;
        }
        self.fresh.fetch_add(1, Ordering::Relaxed);
        vec![0.0; len]
    }
    fn zeros(&self, len: usize) -> Vec<f32> {
        let mut b = self.alloc(len);
        b.fill(0.0);
        b
    }
    fn release(&self, buf: Vec<f32>) {
        self.pool.lock().unwrap().entry(buf.len()).or_default().push(buf);
    }
    fn fresh_allocations(&self) -> u64 {
        self.fresh.load(Ordering::Relaxed)
    }
    fn fence(&self) {}
    fn upload_overlapped(&self, host: super::Host<'_>, dst: &mut Vec<f32>, _after: Option<&()>) {
        host.widen_into(dst);
    }
    fn upload(&self, host: &[f32]) -> Vec<f32> {
        let mut b = self.alloc(host.len());
        b.copy_from_slice(host);
        b
    }
    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) {
        dst.copy_from_slice(src);
    }

    fn add_assign(&self, y: &mut Vec<f32>, x: &Vec<f32>) {
        y.par_iter_mut().zip(x.par_iter()).for_each(|(a, b)| *a += b);
    }
    fn leaky_relu_backward(&self, y: &Vec<f32>, dy: &mut Vec<f32>) {
        act::leaky_relu_backward(y, dy);
    }
    fn sigmoid(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        y.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = act::sigmoid(v));
    }
    fn sigmoid_backward(&self, y: &Vec<f32>, dy: &mut Vec<f32>) {
        act::sigmoid_backward(y, dy);
    }
    fn prior_sigmoid(&self, l: &Vec<f32>, vd: &Vec<f32>, hr: &mut Vec<f32>) {
        hr.par_iter_mut()
            .zip(l.par_iter().zip(vd.par_iter()))
            .for_each(|(h, (&l, &v))| *h = act::sigmoid(act::logit(v) + l));
    }

    fn conv2d(
        &self,
        x: &Vec<f32>,
        xs: Shape,
        spec: &ConvSpec,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        epi: Epilogue<Vec<f32>>,
        y: &mut Vec<f32>,
    ) {
        conv::conv2d_fused(x, xs, spec, w, bias.map(|b| &b[..]), epi.leaky, epi.residual.map(|r| &r[..]), y);
    }
    fn conv2d_backward(
        &self,
        x: &Vec<f32>,
        xs: Shape,
        spec: &ConvSpec,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dxe: DxEpilogue,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
    ) {
        match dx {
            Some(d) if dxe != DxEpilogue::NONE => {
                let mut g = self.alloc(d.len());
                conv::conv2d_backward(x, xs, spec, w, dy, Some(&mut g[..]), dw, db.map(|d| &mut d[..]));
                act::finish_dx(x, dxe, &g, d);
                self.release(g);
            }
            dx => conv::conv2d_backward(x, xs, spec, w, dy, dx.map(|d| &mut d[..]), dw, db.map(|d| &mut d[..])),
        }
    }
    fn conv_transpose2(&self, x: &Vec<f32>, xs: Shape, cout: usize, w: &Vec<f32>, b: &Vec<f32>, y: &mut Vec<f32>) {
        conv::conv_transpose2(x, xs, cout, w, b, y);
    }
    fn conv_transpose2_backward(
        &self,
        x: &Vec<f32>,
        xs: Shape,
        cout: usize,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
    ) {
        conv::conv_transpose2_backward(x, xs, cout, w, dy, dx.map(|d| &mut d[..]), dw, db);
    }
    fn hin_forward(
        &self,
        x: &Vec<f32>,
        s: Shape,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        leaky: bool,
        y: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) {
        norm::hin_forward(x, s, gamma, beta, leaky, y, stats);
    }
    fn hin_apply(
        &self,
        x: &Vec<f32>,
        s: Shape,
        stats: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        leaky: bool,
        y: &mut Vec<f32>,
    ) {
        norm::hin_apply(x, s, stats, gamma, beta, leaky, y);
    }
    fn hin_backward(
        &self,
        x: &Vec<f32>,
        s: Shape,
        gamma: &Vec<f32>,
        stats: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        dgamma: &mut Vec<f32>,
        dbeta: &mut Vec<f32>,
    ) {
        norm::hin_backward(x, s, gamma, stats, dy, dx, dgamma, dbeta);
    }
    fn concat_channels(&self, a: &Vec<f32>, ca: usize, b: &Vec<f32>, cb: usize, out: &mut Vec<f32>) {
        out.par_chunks_mut(ca + cb).zip(a.par_chunks(ca).zip(b.par_chunks(cb))).for_each(|(o, (pa, pb))| {
            o[..ca].copy_from_slice(pa);
            o[ca..].copy_from_slice(pb);
        });
    }
    fn split_channels(&self, d: &Vec<f32>, ca: usize, cb: usize, a: &mut Vec<f32>, b: &mut Vec<f32>) {
        d.par_chunks(ca + cb).zip(a.par_chunks_mut(ca).zip(b.par_chunks_mut(cb))).for_each(|(p, (pa, pb))| {
            pa.copy_from_slice(&p[..ca]);
            pb.copy_from_slice(&p[ca..]);
        });
    }
    fn spatial_mean(&self, x: &Vec<f32>, s: Shape, out: &mut Vec<f32>) {
        let px = s.h * s.w;
        out.par_chunks_mut(s.c).zip(x.par_chunks(px * s.c)).for_each(|(o, xi)| {
            let mut acc = vec![0f64; s.c];
            for q in xi.chunks(s.c) {
                for k in 0..s.c {
                    acc[k] += q[k] as f64;
                }
            }
            for k in 0..s.c {
                o[k] = (acc[k] / px as f64) as f32;
            }
        });
    }

    fn mse_per_image(&self, pred: &Vec<f32>, target: &Vec<f32>, s: Shape, scale: f64, d: &mut Vec<f32>) -> f64 {
        loss::mse_per_image(pred, target, s, scale, d)
    }
    fn sums(&self, n: usize) -> Vec<f64> {
        vec![0.0; n]
    }
    fn mse_sums(
        &self,
        pred: &Vec<f32>,
        target: &Vec<f32>,
        s: Shape,
        scale: f64,
        d: &mut Vec<f32>,
        sums: &mut Vec<f64>,
    ) {
        *sums = loss::mse_sums(pred, target, s, scale, d);
    }
    fn read_sums(&self, sums: &Vec<f64>) -> Vec<f64> {
        sums.clone()
    }
    fn hr_regulariser(&self, hr: &Vec<f32>, vd: &Vec<f32>, s: Shape, scale: f64, d_hr: &mut Vec<f32>) -> f64 {
        loss::hr_regulariser(hr, vd, s, scale, d_hr)
    }
    fn expression_loss(
        &self,
        hr: &Vec<f32>,
        s: Shape,
        tiles: &[TileSpots],
        dec: Decoder<Vec<f32>>,
        scale: f64,
        d_hr: &mut Vec<f32>,
    ) -> f64 {
        loss::expression_loss(
            hr,
            s,
            tiles,
            dec.d,
            dec.gamma.map(|g| &g[..]),
            scale,
            d_hr,
            dec.grad_d,
            dec.grad_gamma.map(|g| &mut g[..]),
        )
    }

    fn adam(&self, p: &mut Vec<f32>, g: &Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, s: &AdamScalars) {
        adam_update(p, g, m, v, s);
    }
    fn adam_at(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        scalars: &Vec<f32>,
        at: usize,
        skip: Option<&Vec<f32>>,
    ) {
        if skip.is_some_and(|f| self.flag_set(f)) {
            return;
        }
        adam_update(p, g, m, v, &AdamScalars::from_slice(&scalars[6 * at..6 * at + 6]));
    }
    fn band(&self, rank: usize, split: usize, bound: usize, wp: usize) -> band::BandAverager {
        band::BandAverager::new(rank, split, bound, wp)
    }
    fn band_add(&self, band: &mut band::BandAverager, c0: usize, hr: &Vec<f32>, index: usize) {
        let per = band.tile_len();
        band.add(c0, &hr[index * per..(index + 1) * per]);
    }
    fn band_advance(
        &self,
        band: &mut band::BandAverager,
        until: usize,
        emit: &mut dyn FnMut(usize, &[f32]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        band.advance(until, emit)
    }
    fn band_flush(
        &self,
        _band: &mut band::BandAverager,
        _emit: &mut dyn FnMut(usize, &[f32]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        Ok(()) // rows leave at `band_advance` here
    }
    fn unscale_grads(&self, grads: &mut [Vec<f32>], inv_scale: f32) -> bool {
        use rayon::prelude::*;
        grads.iter_mut().fold(false, |found, g| {
            let bad = g
                .par_chunks_mut(4096)
                .map(|c| {
                    let mut bad = false;
                    for v in c {
                        *v *= inv_scale;
                        bad |= !v.is_finite();
                    }
                    bad
                })
                .reduce(|| false, |a, b| a | b);
            found | bad
        })
    }
    fn unscale_grads_into(&self, grads: &mut [Vec<f32>], inv_scale: f32, flag: &mut Vec<f32>) {
        flag[0] = self.unscale_grads(grads, inv_scale) as u8 as f32;
    }
    fn flag_set(&self, flag: &Vec<f32>) -> bool {
        flag[0] != 0.0
    }
    fn replay(&self, g: &std::convert::Infallible) -> bool {
        match *g {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused data-gradient epilogues are the separate passes they replace, bit for bit:
    /// LEAKY = dX then leaky_relu_backward at x; ACCUMULATE = add_assign of dX to the old dx.
    #[test]
    fn dx_epilogues_equal_the_passes_they_fuse() {
        let b = Cpu::new();
        let spec = ConvSpec { cin: 6, cout: 5, k: 3, stride: 1, pad: 1 };
        let xs = Shape { n: 2, h: 7, w: 5, c: 6 };
        let r = |n: usize, seed: u64| conv::tests::rnd(n, seed);
        let (x, w) = (r(xs.len(), 1), r(spec.weight_len(), 2));
        let dy = r(xs.n * xs.h * xs.w * spec.cout, 3);
        let old = r(xs.len(), 4);
        assert!(x.iter().any(|&v| v < 0.0) && x.iter().any(|&v| v > 0.0));
        let mut dw = vec![0f32; w.len()];
        let mut plain = vec![0f32; xs.len()];
        b.conv2d_backward(&x, xs, &spec, &w, &dy, Some(&mut plain), DxEpilogue::NONE, &mut dw, None);
        let mut leaky = vec![0f32; xs.len()];
        b.conv2d_backward(&x, xs, &spec, &w, &dy, Some(&mut leaky), DxEpilogue::LEAKY, &mut dw, None);
        let mut want = plain.clone();
        b.leaky_relu_backward(&x, &mut want);
        assert_eq!(leaky, want);
        assert_ne!(leaky, plain);
        let mut acc = old.clone();
        b.conv2d_backward(&x, xs, &spec, &w, &dy, Some(&mut acc), DxEpilogue::ACCUMULATE, &mut dw, None);
        let mut want = old.clone();
        b.add_assign(&mut want, &plain);
        assert_eq!(acc, want);
    }
}
