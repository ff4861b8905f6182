//! The reference's U-Net (SPEC §6) with explicit forward and backward passes on the CPU:
//! conv_init 3×3 → four down blocks (32, 64, 128, 256 channels; half instance norm; 4×4
//! stride-2 downsampling after the first three) → three up blocks (2×2 transposed conv,
//! concatenation with a 3×3-convolved skip) → output block + sigmoid. Parameters are named as
//! in the reference's PyTorch state dict; values are stored in our layouts (see `conv`).

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use super::act::{leaky_relu, leaky_relu_backward, sigmoid_backward, sigmoid_inplace};
use super::conv::{conv2d, conv2d_backward, conv_transpose2, conv_transpose2_backward, ConvSpec, Shape};
use super::norm::{hin_backward, hin_forward, HinStats};
use crate::optim::Adam;

pub const WIDTH: usize = 32;
pub const DEPTH: usize = 4;

/// What a parameter tensor is, which fixes its PyTorch layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Conv2d weight: PyTorch (Cout, Cin, k, k), ours [k][k][Cin][Cout]
    Conv(ConvSpec),
    /// ConvTranspose2d 2×2 weight: PyTorch (Cin, Cout, 2, 2), ours [Cin][2][2][Cout]
    ConvT { cin: usize, cout: usize },
    /// biases, norm scales and shifts
    Vector,
    /// a row-major matrix, same layout both sides (the decoder: genes × R; gamma: pairs × genes)
    Matrix { rows: usize, cols: usize },
}

impl Kind {
    /// PyTorch's shape of a tensor of this kind holding `len` values.
    pub fn torch_shape(&self, len: usize) -> Vec<usize> {
        match *self {
            Kind::Conv(s) => vec![s.cout, s.cin, s.k, s.k],
            Kind::ConvT { cin, cout } => vec![cin, cout, 2, 2],
            Kind::Vector => vec![len],
            Kind::Matrix { rows, cols } => vec![rows, cols],
        }
    }

    /// Our layout → PyTorch's (flattened).
    pub fn to_torch(&self, v: &[f32]) -> Vec<f32> {
        let mut t = vec![0f32; v.len()];
        match *self {
            Kind::Conv(s) => {
                for co in 0..s.cout {
                    for ci in 0..s.cin {
                        for ky in 0..s.k {
                            for kx in 0..s.k {
                                t[((co * s.cin + ci) * s.k + ky) * s.k + kx] =
                                    v[((ky * s.k + kx) * s.cin + ci) * s.cout + co];
                            }
                        }
                    }
                }
            }
            Kind::ConvT { cin, cout } => {
                for ci in 0..cin {
                    for co in 0..cout {
                        for k in 0..4 {
                            t[(ci * cout + co) * 4 + k] = v[(ci * 4 + k) * cout + co];
                        }
                    }
                }
            }
            Kind::Vector | Kind::Matrix { .. } => t.copy_from_slice(v),
        }
        t
    }

    /// PyTorch's layout (flattened) → ours.
    pub fn from_torch(&self, t: &[f32]) -> Vec<f32> {
        let mut v = vec![0f32; t.len()];
        match *self {
            Kind::Conv(s) => {
                for co in 0..s.cout {
                    for ci in 0..s.cin {
                        for ky in 0..s.k {
                            for kx in 0..s.k {
                                v[((ky * s.k + kx) * s.cin + ci) * s.cout + co] =
                                    t[((co * s.cin + ci) * s.k + ky) * s.k + kx];
                            }
                        }
                    }
                }
            }
            Kind::ConvT { cin, cout } => {
                for ci in 0..cin {
                    for co in 0..cout {
                        for k in 0..4 {
                            v[(ci * 4 + k) * cout + co] = t[(ci * cout + co) * 4 + k];
                        }
                    }
                }
            }
            Kind::Vector | Kind::Matrix { .. } => v.copy_from_slice(t),
        }
        v
    }
}

/// Named parameter tensors with their gradients.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub names: Vec<String>,
    pub kinds: Vec<Kind>,
    pub data: Vec<Vec<f32>>,
    pub grads: Vec<Vec<f32>>,
}

impl Params {
    pub(crate) fn add(&mut self, name: String, kind: Kind, data: Vec<f32>) -> usize {
        self.grads.push(vec![0.0; data.len()]);
        self.names.push(name);
        self.kinds.push(kind);
        self.data.push(data);
        self.names.len() - 1
    }
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// One Adam step on tensors `tensors` (in the optimiser's order) from their gradients,
    /// with a learning rate per tensor.
    pub fn adam_step(&mut self, opt: &mut Adam, tensors: &[usize], lrs: &[f64]) {
        let mut slots: Vec<Option<&mut [f32]>> = self.data.iter_mut().map(|v| Some(&mut v[..])).collect();
        let mut params: Vec<&mut [f32]> = tensors.iter().map(|&i| slots[i].take().expect("each tensor once")).collect();
        let grads: Vec<&[f32]> = tensors.iter().map(|&i| &self.grads[i][..]).collect();
        opt.step_groups(&mut params, &grads, lrs);
    }
}

/// A convolution and the indices of its weight (and bias) tensors.
#[derive(Debug, Clone, Copy)]
struct Conv {
    spec: ConvSpec,
    w: usize,
    b: Option<usize>,
}

impl Conv {
    fn new(p: &mut Params, init: &mut Init, name: &str, spec: ConvSpec, bias: bool) -> Conv {
        let w = p.add(format!("{name}.weight"), Kind::Conv(spec), init.kaiming_conv(&spec));
        let b = bias.then(|| p.add(format!("{name}.bias"), Kind::Vector, vec![0.0; spec.cout]));
        Conv { spec, w, b }
    }

    fn forward(&self, p: &Params, x: &[f32], xs: Shape) -> (Vec<f32>, Shape) {
        let (oh, ow) = self.spec.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: self.spec.cout };
        let mut y = vec![0f32; ys.len()];
        conv2d(x, xs, &self.spec, &p.data[self.w], self.b.map(|b| &p.data[b][..]), &mut y);
        (y, ys)
    }

    /// Writes this layer's gradients; returns dX when asked.
    fn backward(&self, p: &mut Params, x: &[f32], xs: Shape, dy: &[f32], want_dx: bool) -> Option<Vec<f32>> {
        let mut dx = want_dx.then(|| vec![0f32; xs.len()]);
        let mut dw = std::mem::take(&mut p.grads[self.w]);
        let mut db = self.b.map(|b| std::mem::take(&mut p.grads[b]));
        conv2d_backward(x, xs, &self.spec, &p.data[self.w], dy, dx.as_deref_mut(), &mut dw, db.as_deref_mut());
        p.grads[self.w] = dw;
        if let (Some(b), Some(g)) = (self.b, db) {
            p.grads[b] = g;
        }
        dx
    }
}

/// Kaiming-normal initialisation as the reference's `__initial_weights__`.
pub(crate) struct Init {
    pub(crate) rng: rand::rngs::StdRng,
}

impl Init {
    /// fan_out mode, LeakyReLU gain with a = 0.2: std = √(2/(1+a²)) / √(Cout·k·k).
    fn kaiming_conv(&mut self, s: &ConvSpec) -> Vec<f32> {
        let std = (2.0 / (1.0 + 0.04f32)).sqrt() / ((s.cout * s.k * s.k) as f32).sqrt();
        (0..s.weight_len())
            .map(|_| std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut self.rng))
            .collect()
    }
    /// PyTorch's default for ConvTranspose2d (not touched by the reference's init):
    /// U(±1/√fan_in) for weight and bias, fan_in = Cout·2·2 for its (Cin, Cout, 2, 2) weight.
    fn default_convt(&mut self, cin: usize, cout: usize) -> (Vec<f32>, Vec<f32>) {
        let bound = 1.0 / ((cout * 4) as f32).sqrt();
        let u = Uniform::new_inclusive(-bound, bound).unwrap();
        (
            (0..cin * 4 * cout).map(|_| u.sample(&mut self.rng)).collect(),
            (0..cout).map(|_| u.sample(&mut self.rng)).collect(),
        )
    }
}

/// UNetConvBlock: out = leaky(conv2(leaky(HIN?(conv1(x))))) + identity(x), then optionally
/// a 4×4 stride-2 downsampling of out.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    identity: Conv,
    conv1: Conv,
    conv2: Conv,
    hin: Option<(usize, usize)>,
    down: Option<Conv>,
}

pub(crate) struct BlockCache {
    xs: Shape,
    os: Shape,
    c1: Vec<f32>,
    stats: HinStats,
    a1: Vec<f32>,
    a2: Vec<f32>,
    pub(crate) out: Vec<f32>,
}

impl Block {
    pub(crate) fn new(
        p: &mut Params,
        init: &mut Init,
        name: &str,
        cin: usize,
        cout: usize,
        down: bool,
        hin: bool,
    ) -> Block {
        let c3 = |ci, co| ConvSpec { cin: ci, cout: co, k: 3, stride: 1, pad: 1 };
        let identity =
            Conv::new(p, init, &format!("{name}.identity"), ConvSpec { cin, cout, k: 1, stride: 1, pad: 0 }, true);
        let conv1 = Conv::new(p, init, &format!("{name}.conv_1"), c3(cin, cout), true);
        let conv2 = Conv::new(p, init, &format!("{name}.conv_2"), c3(cout, cout), true);
        let hin = hin.then(|| {
            (
                p.add(format!("{name}.norm.weight"), Kind::Vector, vec![1.0; cout / 2]),
                p.add(format!("{name}.norm.bias"), Kind::Vector, vec![0.0; cout / 2]),
            )
        });
        let down = down.then(|| {
            Conv::new(
                p,
                init,
                &format!("{name}.downsample_layer"),
                ConvSpec { cin: cout, cout, k: 4, stride: 2, pad: 1 },
                false,
            )
        });
        Block { identity, conv1, conv2, hin, down }
    }

    pub(crate) fn forward(&self, p: &Params, x: &[f32], xs: Shape) -> BlockCache {
        let (mut c1, os) = self.conv1.forward(p, x, xs);
        let mut stats = HinStats::default();
        let mut a1 = match self.hin {
            Some((g, b)) => {
                let mut h = vec![0f32; c1.len()];
                hin_forward(&c1, os, &p.data[g], &p.data[b], &mut h, &mut stats);
                h
            }
            None => std::mem::take(&mut c1),
        };
        leaky_relu(&mut a1);
        let (mut a2, _) = self.conv2.forward(p, &a1, os);
        leaky_relu(&mut a2);
        let (id, _) = self.identity.forward(p, x, xs);
        let out: Vec<f32> = a2.iter().zip(&id).map(|(a, b)| a + b).collect();
        BlockCache { xs, os, c1, stats, a1, a2, out }
    }

    fn down_forward(&self, p: &Params, c: &BlockCache) -> Option<(Vec<f32>, Shape)> {
        self.down.map(|d| d.forward(p, &c.out, c.os))
    }

    /// dX from the gradient at `out` (and at the downsampled output, if any).
    pub(crate) fn backward(
        &self,
        p: &mut Params,
        x: &[f32],
        c: &BlockCache,
        d_out: Vec<f32>,
        d_down: Option<&[f32]>,
    ) -> Vec<f32> {
        self.backward_opt(p, x, c, d_out, d_down, true).unwrap()
    }

    /// As `backward`; dX only when `want_dx` (a frozen input needs none).
    pub(crate) fn backward_opt(
        &self,
        p: &mut Params,
        x: &[f32],
        c: &BlockCache,
        mut d_out: Vec<f32>,
        d_down: Option<&[f32]>,
        want_dx: bool,
    ) -> Option<Vec<f32>> {
        if let (Some(d), Some(dd)) = (self.down, d_down) {
            let g = d.backward(p, &c.out, c.os, dd, true).unwrap();
            d_out.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        let mut dx = self.identity.backward(p, x, c.xs, &d_out, want_dx);
        let mut d2 = d_out;
        leaky_relu_backward(&c.a2, &mut d2);
        let mut d1 = self.conv2.backward(p, &c.a1, c.os, &d2, true).unwrap();
        leaky_relu_backward(&c.a1, &mut d1);
        let dc1 = match self.hin {
            Some((g, b)) => {
                let mut dc = vec![0f32; d1.len()];
                let (mut dg, mut dbt) = (std::mem::take(&mut p.grads[g]), std::mem::take(&mut p.grads[b]));
                hin_backward(&c.c1, c.os, &p.data[g], &c.stats, &d1, &mut dc, &mut dg, &mut dbt);
                p.grads[g] = dg;
                p.grads[b] = dbt;
                dc
            }
            None => d1,
        };
        let g1 = self.conv1.backward(p, x, c.xs, &dc1, want_dx);
        if let (Some(dx), Some(g1)) = (dx.as_mut(), g1) {
            dx.iter_mut().zip(&g1).for_each(|(a, b)| *a += b);
        }
        dx
    }
}

/// UNetUpBlock: cat(convT(x), skip) → block.
#[derive(Debug, Clone)]
struct Up {
    w: usize,
    b: usize,
    cout: usize,
    block: Block,
}

fn concat(a: &[f32], ca: usize, b: &[f32], cb: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    for (pa, pb) in a.chunks(ca).zip(b.chunks(cb)) {
        out.extend_from_slice(pa);
        out.extend_from_slice(pb);
    }
    out
}

fn split(d: &[f32], ca: usize, cb: usize) -> (Vec<f32>, Vec<f32>) {
    let px = d.len() / (ca + cb);
    let (mut a, mut b) = (Vec::with_capacity(px * ca), Vec::with_capacity(px * cb));
    for p in d.chunks(ca + cb) {
        a.extend_from_slice(&p[..ca]);
        b.extend_from_slice(&p[ca..]);
    }
    (a, b)
}

/// Activations of one pre-training forward pass, kept for the backward pass.
pub struct Activations {
    image: Vec<f32>,
    is: Shape,
    /// inputs of the down blocks (conv_init's output, then each downsampled output)
    down_in: Vec<(Vec<f32>, Shape)>,
    down: Vec<BlockCache>,
    skips: Vec<(Vec<f32>, Shape)>,
    /// inputs of the up blocks' transposed convolutions
    ups_in: Vec<(Vec<f32>, Shape)>,
    cats: Vec<(Vec<f32>, Shape)>,
    up_blocks: Vec<BlockCache>,
    /// the body's output (32 channels at full resolution): the heads' input
    pub out_in: (Vec<f32>, Shape),
    out_block: Option<BlockCache>,
    /// the reconstructed image (N, H, W, C); empty after `forward_body`
    pub pred: Vec<f32>,
}

impl Activations {
    /// The skip feature of the third down block (128 channels at 1/4 scale): the spot image
    /// embedding's source (SPEC §7).
    pub fn third_skip(&self) -> (&[f32], Shape) {
        (&self.down[2].out, self.down[2].os)
    }
}

/// The pre-training network.
#[derive(Debug, Clone)]
pub struct UNet {
    pub channels: usize,
    conv_init: Conv,
    down: Vec<Block>,
    ups: Vec<Up>,
    skip: Vec<Conv>,
    output: Block,
}

impl UNet {
    /// Parameters initialised as the reference does (drawn from our own generator).
    pub fn new(channels: usize, seed: u64) -> (UNet, Params) {
        let mut p = Params::default();
        let mut init = Init { rng: rand::rngs::StdRng::seed_from_u64(seed) };
        let c3 = |ci, co| ConvSpec { cin: ci, cout: co, k: 3, stride: 1, pad: 1 };
        let conv_init = Conv::new(&mut p, &mut init, "conv_init", c3(channels, WIDTH), true);
        let mut down = Vec::new();
        let mut prev = WIDTH;
        for i in 0..DEPTH {
            let out = (1 << i) * WIDTH;
            down.push(Block::new(&mut p, &mut init, &format!("down_path.{i}"), prev, out, i + 1 < DEPTH, true));
            prev = out;
        }
        let (mut ups, mut skip) = (Vec::new(), Vec::new());
        for (j, i) in (0..DEPTH - 1).rev().enumerate() {
            let out = (1 << i) * WIDTH;
            let (w, b) = init.default_convt(prev, out);
            let kind = Kind::ConvT { cin: prev, cout: out };
            let (w, b) = (
                p.add(format!("up_path.{j}.up.weight"), kind, w),
                p.add(format!("up_path.{j}.up.bias"), Kind::Vector, b),
            );
            let block = Block::new(&mut p, &mut init, &format!("up_path.{j}.conv_block"), prev, out, false, false);
            ups.push(Up { w, b, cout: out, block });
            skip.push(Conv::new(&mut p, &mut init, &format!("skip_conv.{j}"), c3(out, out), true));
            prev = out;
        }
        let output = Block::new(&mut p, &mut init, "output.0", prev, channels, false, false);
        (UNet { channels, conv_init, down, ups, skip, output }, p)
    }

    /// Reconstruct a batch of images (N, H, W, C), H and W multiples of 8.
    pub fn forward(&self, p: &Params, image: &[f32], is: Shape) -> Activations {
        let mut a = self.forward_body(p, image, is);
        let ob = self.output.forward(p, &a.out_in.0, a.out_in.1);
        let mut pred = ob.out.clone();
        sigmoid_inplace(&mut pred);
        a.out_block = Some(ob);
        a.pred = pred;
        a
    }

    /// The spot-embedding pass (SPEC §7): only the layers that feed the third down block's
    /// skip feature (conv_init, two down blocks with their downsampling, the third block),
    /// averaged over space: N × 128. The reference runs the whole network for this.
    pub fn embed(&self, p: &Params, image: &[f32], is: Shape) -> Vec<f32> {
        let (mut x, mut xs) = self.conv_init.forward(p, image, is);
        for b in &self.down[..2] {
            let c = b.forward(p, &x, xs);
            (x, xs) = b.down_forward(p, &c).expect("the first blocks downsample");
        }
        let c = self.down[2].forward(p, &x, xs);
        let (os, ch) = (c.os, c.os.c);
        let px = os.h * os.w;
        let mut out = vec![0f32; os.n * ch];
        for n in 0..os.n {
            let mut acc = vec![0f64; ch];
            for q in c.out[n * px * ch..(n + 1) * px * ch].chunks(ch) {
                for k in 0..ch {
                    acc[k] += q[k] as f64;
                }
            }
            for k in 0..ch {
                out[n * ch + k] = (acc[k] / px as f64) as f32;
            }
        }
        out
    }

    /// Everything up to the last up block (the joint network puts its own heads there).
    pub fn forward_body(&self, p: &Params, image: &[f32], is: Shape) -> Activations {
        let (mut x, mut xs) = self.conv_init.forward(p, image, is);
        let (mut down_in, mut down) = (Vec::new(), Vec::new());
        for b in &self.down {
            let c = b.forward(p, &x, xs);
            down_in.push((x, xs));
            match b.down_forward(p, &c) {
                Some((y, ys)) => (x, xs) = (y, ys),
                None => (x, xs) = (c.out.clone(), c.os),
            }
            down.push(c);
        }
        let (mut skips, mut ups_in, mut cats, mut up_blocks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (j, u) in self.ups.iter().enumerate() {
            let enc = &down[DEPTH - 2 - j];
            let (sk, ss) = self.skip[j].forward(p, &enc.out, enc.os);
            let us = Shape { n: xs.n, h: 2 * xs.h, w: 2 * xs.w, c: u.cout };
            let mut up = vec![0f32; us.len()];
            conv_transpose2(&x, xs, u.cout, &p.data[u.w], &p.data[u.b], &mut up);
            let cat = concat(&up, u.cout, &sk, ss.c);
            let cs = us.with_c(u.cout + ss.c);
            let c = u.block.forward(p, &cat, cs);
            ups_in.push((x, xs));
            (x, xs) = (c.out.clone(), c.os);
            skips.push((sk, ss));
            cats.push((cat, cs));
            up_blocks.push(c);
        }
        Activations {
            image: image.to_vec(),
            is,
            down_in,
            down,
            skips,
            ups_in,
            cats,
            up_blocks,
            out_in: (x, xs),
            out_block: None,
            pred: Vec::new(),
        }
    }

    /// Gradients of every parameter from dL/dpred (written into `p.grads`).
    pub fn backward(&self, p: &mut Params, a: &Activations, d_pred: &[f32]) {
        let mut d = d_pred.to_vec();
        sigmoid_backward(&a.pred, &mut d);
        let ob = a.out_block.as_ref().expect("backward after forward (not forward_body)");
        let dx = self.output.backward(p, &a.out_in.0, ob, d, None);
        self.backward_body(p, a, dx);
    }

    /// Gradients of the body's parameters from the gradient at its output.
    pub fn backward_body(&self, p: &mut Params, a: &Activations, d_body: Vec<f32>) {
        let mut dx = d_body;
        let mut d_enc: Vec<Option<Vec<f32>>> = vec![None; DEPTH - 1];
        for j in (0..self.ups.len()).rev() {
            let u = &self.ups[j];
            let (cat, _) = &a.cats[j];
            let d_cat = u.block.backward(p, cat, &a.up_blocks[j], dx, None);
            let (d_up, d_skip) = split(&d_cat, u.cout, a.skips[j].1.c);
            let enc = &a.down[DEPTH - 2 - j];
            d_enc[DEPTH - 2 - j] = self.skip[j].backward(p, &enc.out, enc.os, &d_skip, true);
            let (xin, xs) = &a.ups_in[j];
            let mut dxi = vec![0f32; xs.len()];
            let (mut dw, mut db) = (std::mem::take(&mut p.grads[u.w]), std::mem::take(&mut p.grads[u.b]));
            conv_transpose2_backward(xin, *xs, u.cout, &p.data[u.w], &d_up, Some(&mut dxi), &mut dw, &mut db);
            p.grads[u.w] = dw;
            p.grads[u.b] = db;
            dx = dxi;
        }
        // down path, deepest first: dx is the gradient at the deepest block's output
        let mut d_down: Option<Vec<f32>> = None;
        for i in (0..DEPTH).rev() {
            let b = &self.down[i];
            let c = &a.down[i];
            let (xin, _) = &a.down_in[i];
            let d_out =
                if i == DEPTH - 1 { dx.clone() } else { d_enc[i].take().unwrap_or_else(|| vec![0.0; c.out.len()]) };
            let g = b.backward(p, xin, c, d_out, d_down.as_deref());
            d_down = Some(g);
        }
        self.conv_init.backward(p, &a.image, a.is, d_down.as_deref().unwrap(), false);
    }
}

/// MSE between prediction and target, and its gradient 2(pred − target)/numel.
pub fn mse(pred: &[f32], target: &[f32]) -> (f64, Vec<f32>) {
    let n = pred.len() as f64;
    let mut loss = 0f64;
    let g = pred
        .iter()
        .zip(target)
        .map(|(a, b)| {
            let e = (a - b) as f64;
            loss += e * e;
            (2.0 * e / n) as f32
        })
        .collect();
    (loss / n, g)
}

/// Bilinear resize with align_corners=True (`nn.UpsamplingBilinear2d`), one HWC image.
pub fn resize_bilinear_ac(src: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow * c];
    let ry = if oh > 1 { (h - 1) as f32 / (oh - 1) as f32 } else { 0.0 };
    let rx = if ow > 1 { (w - 1) as f32 / (ow - 1) as f32 } else { 0.0 };
    for y in 0..oh {
        let fy = ry * y as f32;
        let y0 = (fy as usize).min(h - 1);
        let y1 = (y0 + 1).min(h - 1);
        let ly = fy - y0 as f32;
        for x in 0..ow {
            let fx = rx * x as f32;
            let x0 = (fx as usize).min(w - 1);
            let x1 = (x0 + 1).min(w - 1);
            let lx = fx - x0 as f32;
            for k in 0..c {
                let v = |yy: usize, xx: usize| src[(yy * w + xx) * c + k];
                out[(y * ow + x) * c + k] = (1.0 - ly) * ((1.0 - lx) * v(y0, x0) + lx * v(y0, x1))
                    + ly * ((1.0 - lx) * v(y1, x0) + lx * v(y1, x1));
            }
        }
    }
    out
}
