//! The reference's U-Net (SPEC §6) with explicit forward and backward passes on the CPU:
//! conv_init 3×3 → four down blocks (32, 64, 128, 256 channels; half instance norm; 4×4
//! stride-2 downsampling after the first three) → three up blocks (2×2 transposed conv,
//! concatenation with a 3×3-convolved skip) → output block + sigmoid. Parameters are named as
//! in the reference's PyTorch state dict; values are stored in our layouts (see `backend`).
//! Every operation goes through a `Backend`; this file holds only the graph and its order.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::backend::{
    AdamSource, Backend, BlockHead, BlockHeadGrads, BlockTail, ConvSpec, DxEpilogue, Epilogue, Shape, TailNorm,
};
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

/// Named parameter tensors with their gradients, on the host (`Vec<f32>`, where they are made
/// and checkpointed) or in a backend's buffers.
#[derive(Debug, Clone, Default)]
pub struct Params<T = Vec<f32>> {
    pub names: Vec<String>,
    pub kinds: Vec<Kind>,
    pub data: Vec<T>,
    pub grads: Vec<T>,
}

impl<T> Params<T> {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// One Adam step on tensors `tensors` (in the optimiser's order) from their gradients,
    /// with a learning rate per tensor.
    pub fn adam_step<B: Backend<Buf = T>>(&mut self, b: &B, opt: &mut Adam<T>, tensors: &[usize], lrs: &[f64]) {
        assert_eq!(tensors.len(), opt.m.len());
        let scalars = opt.next_step(lrs);
        b.adam_many(&mut self.data, &self.grads, opt, tensors, AdamSource::Host(&scalars));
    }

    /// `adam_step` behind a loss scaler (`GradScaler.step` + `update`): the gradients are
    /// unscaled, and the step is skipped — the optimiser's step count too — when any is inf or
    /// NaN. True when the step was taken.
    pub fn scaled_adam_step<B: Backend<Buf = T>>(
        &mut self,
        b: &B,
        opt: &mut Adam<T>,
        scaler: &mut crate::optim::LossScaler,
        tensors: &[usize],
        lrs: &[f64],
    ) -> bool {
        let found_inf = b.unscale_grads(&mut self.grads, scaler.inv_scale());
        if !found_inf {
            self.adam_step(b, opt, tensors, lrs);
        }
        scaler.update(found_inf);
        !found_inf
    }

    /// The host copy of a backend's parameters (gradients are not copied: zeros).
    pub fn download<B: Backend<Buf = T>>(&self, b: &B) -> Params {
        Params {
            names: self.names.clone(),
            kinds: self.kinds.clone(),
            data: self.data.iter().map(|d| b.download(d)).collect(),
            grads: self.data.iter().map(|d| vec![0.0; b.len(d)]).collect(),
        }
    }
}

/// Two different elements of a slice, both mutable (a layer's weight and bias gradients).
pub(crate) fn pair_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

/// N different elements of a slice, all mutable (the gradients a block's head writes).
pub(crate) fn many_mut<T, const N: usize>(v: &mut [T], at: [usize; N]) -> [&mut T; N] {
    let mut refs: Vec<Option<&mut T>> = v.iter_mut().map(Some).collect();
    at.map(|i| refs[i].take().expect("distinct indices"))
}

impl Params {
    pub(crate) fn add(&mut self, name: String, kind: Kind, data: Vec<f32>) -> usize {
        self.grads.push(vec![0.0; data.len()]);
        self.names.push(name);
        self.kinds.push(kind);
        self.data.push(data);
        self.names.len() - 1
    }

    /// These parameters in a backend's buffers (gradients zeroed).
    pub fn upload<B: Backend>(&self, b: &B) -> Params<B::Buf> {
        Params {
            names: self.names.clone(),
            kinds: self.kinds.clone(),
            data: self.data.iter().map(|d| b.upload(d)).collect(),
            grads: self.data.iter().map(|d| b.zeros(d.len())).collect(),
        }
    }
}

/// A convolution and the indices of its weight (and bias) tensors.
#[derive(Debug, Clone, Copy)]
struct Conv {
    spec: ConvSpec,
    w: usize,
    b: Option<usize>,
}

/// A layer's input: one tensor, or two read as their concatenation along channels (the first
/// with the given channel count, the second with the rest).
enum Input<'a, T> {
    One(&'a T),
    Cat(&'a T, usize, &'a T),
}

// by hand: references copy whatever T is (derive would ask T: Copy)
impl<T> Clone for Input<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Input<'_, T> {}

impl Conv {
    fn new(p: &mut Params, init: &mut Init, name: &str, spec: ConvSpec, bias: bool) -> Conv {
        let w = p.add(format!("{name}.weight"), Kind::Conv(spec), init.kaiming_conv(&spec));
        let b = bias.then(|| p.add(format!("{name}.bias"), Kind::Vector, vec![0.0; spec.cout]));
        Conv { spec, w, b }
    }

    fn forward<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        x: &B::Buf,
        xs: Shape,
        epi: Epilogue<B::Buf>,
    ) -> (B::Buf, Shape) {
        self.forward_in(b, p, Input::One(x), xs, epi)
    }

    fn forward_in<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        x: Input<B::Buf>,
        xs: Shape,
        epi: Epilogue<B::Buf>,
    ) -> (B::Buf, Shape) {
        let (oh, ow) = self.spec.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: self.spec.cout };
        let mut y = b.alloc(ys.len());
        let (w, bias) = (&p.data[self.w], self.b.map(|i| &p.data[i]));
        match x {
            Input::One(x) => b.conv2d(x, xs, &self.spec, w, bias, epi, &mut y),
            Input::Cat(a, ca, c) => b.conv2d_cat(a, ca, c, xs, &self.spec, w, bias, epi, &mut y),
        }
        (y, ys)
    }

    /// Writes this layer's gradients; returns dX when asked.
    fn backward<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        x: &B::Buf,
        xs: Shape,
        dy: &B::Buf,
        want_dx: bool,
    ) -> Option<B::Buf> {
        let mut dx = want_dx.then(|| b.alloc(xs.len()));
        self.backward_into(b, p, x, xs, dy, dx.as_mut(), DxEpilogue::NONE);
        dx
    }

    /// Writes this layer's gradients and, when given, dX into `dx` through `dxe`
    /// (LeakyReLU's backward at x, or added to what dx holds).
    #[allow(clippy::too_many_arguments)]
    fn backward_into<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        x: &B::Buf,
        xs: Shape,
        dy: &B::Buf,
        dx: Option<&mut B::Buf>,
        dxe: DxEpilogue,
    ) {
        let w = &p.data[self.w];
        match self.b {
            Some(bi) => {
                let (dw, db) = pair_mut(&mut p.grads, self.w, bi);
                b.conv2d_backward(x, xs, &self.spec, w, dy, dx, dxe, dw, Some(db));
            }
            None => b.conv2d_backward(x, xs, &self.spec, w, dy, dx, dxe, &mut p.grads[self.w], None),
        }
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

/// What a block's backward pass reads. `c1` and `stats` only with half instance norm; `a2` only
/// where the forward pass was asked to keep it (training); `a1` unless inference handed c1 to
/// the tail with its norm (`TailNorm`, where the backend normalises as it reads).
pub(crate) struct BlockCache<T> {
    xs: Shape,
    pub(crate) os: Shape,
    c1: Option<T>,
    stats: Option<T>,
    a1: Option<T>,
    a2: Option<T>,
    pub(crate) out: T,
}

impl<T> BlockCache<T> {
    /// The block's output; everything kept for the backward pass goes back to the pool.
    pub(crate) fn into_out<B: Backend<Buf = T>>(self, b: &B) -> (T, Shape) {
        for t in [self.c1, self.stats, self.a1, self.a2].into_iter().flatten() {
            b.release(t);
        }
        (self.out, self.os)
    }

    pub(crate) fn release<B: Backend<Buf = T>>(self, b: &B) {
        for t in [self.c1, self.stats, self.a1, self.a2].into_iter().flatten() {
            b.release(t);
        }
        b.release(self.out);
    }
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

    pub(crate) fn forward<B: Backend>(&self, b: &B, p: &Params<B::Buf>, x: &B::Buf, xs: Shape) -> BlockCache<B::Buf> {
        self.forward_in(b, p, Input::One(x), xs, true)
    }

    /// `forward` for inference: the same output, without what only the backward pass reads
    /// (conv_2's activation, which the GPU then never writes).
    pub(crate) fn forward_infer<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        x: &B::Buf,
        xs: Shape,
    ) -> BlockCache<B::Buf> {
        self.forward_in(b, p, Input::One(x), xs, false)
    }

    /// `forward` of a one- or two-part input (conv_1 and the identity read it alike); conv_2's
    /// activation kept for the backward pass where `keep`.
    fn forward_in<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        x: Input<B::Buf>,
        xs: Shape,
        keep: bool,
    ) -> BlockCache<B::Buf> {
        let (c1, stats, a1, os) = match self.hin {
            Some((g, bt)) => {
                let c = &self.conv1;
                let (oh, ow) = c.spec.out_hw(xs.h, xs.w);
                let os = Shape { n: xs.n, h: oh, w: ow, c: c.spec.cout };
                // inference of one input writes no a1 where the tail normalises c1 (`TailNorm`)
                let fused = match x {
                    Input::One(x) => !keep && b.tail_normalises(x),
                    Input::Cat(..) => false,
                };
                let mut a1 = (!fused).then(|| b.alloc(os.len()));
                // the statistics stay f32 where activations are f16 (backward reads them)
                let mut stats = b.alloc_f32(2 * os.n * (os.c / 2));
                let norm = (&p.data[g], &p.data[bt]);
                let c1 = match x {
                    // one call, so that a backend can sum the statistics as it writes c1
                    Input::One(x) => {
                        let mut c1 = b.alloc(os.len());
                        let (w, bias) = (&p.data[c.w], c.b.map(|i| &p.data[i]));
                        b.conv2d_hin(x, xs, &c.spec, w, bias, norm, true, &mut c1, a1.as_mut(), &mut stats);
                        c1
                    }
                    Input::Cat(..) => {
                        let c1 = c.forward_in(b, p, x, xs, Epilogue::NONE).0;
                        let a1 = a1.as_mut().expect("a1 of a two-part input");
                        b.hin_forward(&c1, os, norm.0, norm.1, true, a1, &mut stats);
                        c1
                    }
                };
                (Some(c1), Some(stats), a1, os)
            }
            None => {
                let (a1, os) = self.conv1.forward_in(b, p, x, xs, Epilogue::LEAKY);
                (None, None, Some(a1), os)
            }
        };
        // out = a2 + identity(x), a2 = leaky(conv_2(a1)): one call, so that a backend can run
        // both in one pass (the GPU's halo kernels do)
        let mut a2 = keep.then(|| b.alloc(os.len()));
        let mut out = b.alloc(os.len());
        let (x, x2) = match x {
            Input::One(x) => (x, None),
            Input::Cat(a, ca, c) => (a, Some((c, ca))),
        };
        let (c2, id) = (&self.conv2, &self.identity);
        // a1, or c1 with the norm the tail applies as it reads
        let (tail_in, norm) = match (&a1, &c1, &stats, self.hin) {
            (Some(a1), ..) => (a1, None),
            (None, Some(c1), Some(stats), Some((g, bt))) => {
                (c1, Some(TailNorm { stats, gamma: &p.data[g], beta: &p.data[bt] }))
            }
            _ => unreachable!("a1 is written unless half instance norm hands c1 on"),
        };
        let tail = BlockTail {
            a1: tail_in,
            os,
            conv2: &c2.spec,
            w2: &p.data[c2.w],
            b2: c2.b.map(|i| &p.data[i]),
            x,
            x2,
            xs,
            identity: &id.spec,
            w_id: &p.data[id.w],
            b_id: id.b.map(|i| &p.data[i]),
            norm,
        };
        b.block_tail(tail, a2.as_mut(), &mut out);
        BlockCache { xs, os, c1, stats, a1, a2, out }
    }

    fn down_forward<B: Backend>(&self, b: &B, p: &Params<B::Buf>, c: &BlockCache<B::Buf>) -> Option<(B::Buf, Shape)> {
        self.down.map(|d| d.forward(b, p, &c.out, c.os, Epilogue::NONE))
    }

    /// dX from the gradient at `out` (and at the downsampled output, if any); dX only when
    /// `want_dx` (a frozen input needs none). Consumes `d_out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        x: &B::Buf,
        c: &BlockCache<B::Buf>,
        d_out: B::Buf,
        d_down: Option<&B::Buf>,
        want_dx: bool,
    ) -> Option<B::Buf> {
        self.backward_in(b, p, Input::One(x), c, d_out, d_down, want_dx).map(|(dx, _)| dx)
    }

    /// `backward` of a one- or two-part input: dX in as many parts (the second None for one).
    #[allow(clippy::too_many_arguments)]
    fn backward_in<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        x: Input<B::Buf>,
        c: &BlockCache<B::Buf>,
        mut d_out: B::Buf,
        d_down: Option<&B::Buf>,
        want_dx: bool,
    ) -> Option<(B::Buf, Option<B::Buf>)> {
        // the downsampling's dX adds into d_out, conv2's passes LeakyReLU's backward at a1, and
        // the input's gradient is written once for conv1 and the identity (block_head_backward)
        if let (Some(d), Some(dd)) = (self.down, d_down) {
            d.backward_into(b, p, &c.out, c.os, dd, Some(&mut d_out), DxEpilogue::ACCUMULATE);
        }
        // conv2 reads LeakyReLU's backward of d_out; d_out itself stays for the identity
        let mut g2 = b.alloc(c.os.len());
        b.leaky_relu_grad(c.a2.as_ref().expect("a training forward pass keeps a2"), &d_out, &mut g2);
        let mut d1 = b.alloc(c.os.len());
        let a1 = c.a1.as_ref().expect("a training forward pass keeps a1");
        self.conv2.backward_into(b, p, a1, c.os, &g2, Some(&mut d1), DxEpilogue::LEAKY);
        b.release(g2);
        let dc1 = match (self.hin, &c.c1, &c.stats) {
            (Some((g, bt)), Some(c1), Some(stats)) => {
                let mut dc = b.alloc(c.os.len());
                let gamma = &p.data[g];
                let (dg, dbt) = pair_mut(&mut p.grads, g, bt);
                b.hin_backward(c1, c.os, gamma, stats, &d1, &mut dc, dg, dbt);
                b.release(d1);
                dc
            }
            _ => d1,
        };
        let (x, x2) = match x {
            Input::One(x) => (x, None),
            Input::Cat(a, ca, x2) => (a, Some((x2, ca))),
        };
        let xs = c.xs;
        let px = xs.n * xs.h * xs.w;
        let mut dx = want_dx.then(|| match x2 {
            None => (b.alloc(xs.len()), None),
            Some((_, ca)) => (b.alloc(px * ca), Some(b.alloc(px * (xs.c - ca)))),
        });
        let (c1, id) = (&self.conv1, &self.identity);
        let bias = |cv: &Conv| cv.b.expect("a block's convolutions have biases");
        let [gw1, gb1, gwi, gbi] = many_mut(&mut p.grads, [c1.w, bias(c1), id.w, bias(id)]);
        let head = BlockHead {
            x,
            x2,
            xs,
            conv1: &c1.spec,
            w1: &p.data[c1.w],
            dc1: &dc1,
            identity: &id.spec,
            w_id: &p.data[id.w],
            d_out: &d_out,
        };
        let grads = BlockHeadGrads { w1: gw1, b1: gb1, w_id: gwi, b_id: gbi };
        b.block_head_backward(head, grads, dx.as_mut().map(|(a, d2)| (a, d2.as_mut())));
        b.release(dc1);
        b.release(d_out);
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

/// An up block's input [up | skip]: written out, or — where the backend reads concatenations
/// in place, forward and backward — its first part, the skip feature being in `skips`.
enum UpInput<T> {
    Cat(T),
    Up(T),
}

/// Activations of one forward pass, kept for the backward pass; `release` gives their buffers
/// back to the backend for the next iteration.
pub struct Activations<T> {
    is: Shape,
    /// inputs of the down blocks: conv_init's output, then each downsampled output
    down_in: Vec<(T, Shape)>,
    down: Vec<BlockCache<T>>,
    skips: Vec<(T, Shape)>,
    /// each up block's input, with its shape
    cats: Vec<(UpInput<T>, Shape)>,
    up_blocks: Vec<BlockCache<T>>,
    out_block: Option<BlockCache<T>>,
    /// the reconstructed image (N, H, W, C); none after `forward_body`
    pub pred: Option<T>,
}

impl<T> Activations<T> {
    /// The body's output (32 channels at full resolution): the heads' input.
    pub fn body_out(&self) -> (&T, Shape) {
        let c = self.up_blocks.last().expect("up blocks");
        (&c.out, c.os)
    }

    /// The input of up block `j`'s transposed convolution.
    fn up_input(&self, j: usize) -> (&T, Shape) {
        let c = if j == 0 { self.down.last().expect("down blocks") } else { &self.up_blocks[j - 1] };
        (&c.out, c.os)
    }

    pub fn release<B: Backend<Buf = T>>(self, b: &B) {
        let cats = self.cats.into_iter().map(|(u, s)| match u {
            UpInput::Cat(t) | UpInput::Up(t) => (t, s),
        });
        for (t, _) in self.down_in.into_iter().chain(self.skips).chain(cats) {
            b.release(t);
        }
        for c in self.down.into_iter().chain(self.up_blocks).chain(self.out_block) {
            c.release(b);
        }
        if let Some(t) = self.pred {
            b.release(t);
        }
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
    /// Parameters initialised as the reference does (drawn from our own generator), on the host.
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
    pub fn forward<B: Backend>(&self, b: &B, p: &Params<B::Buf>, image: &B::Buf, is: Shape) -> Activations<B::Buf> {
        let mut a = self.forward_body(b, p, image, is);
        let (x, xs) = a.body_out();
        let ob = self.output.forward(b, p, x, xs);
        let mut pred = b.alloc(ob.os.len());
        b.sigmoid(&ob.out, &mut pred);
        a.out_block = Some(ob);
        a.pred = Some(pred);
        a
    }

    /// The spot-embedding pass (SPEC §7): only the layers that feed the third down block's
    /// skip feature (conv_init, two down blocks with their downsampling, the third block),
    /// averaged over space: N × 128. The reference runs the whole network for this.
    pub fn embed<B: Backend>(&self, b: &B, p: &Params<B::Buf>, image: &B::Buf, is: Shape) -> B::Buf {
        let (mut x, mut xs) = self.conv_init.forward(b, p, image, is, Epilogue::NONE);
        for blk in &self.down[..2] {
            let c = blk.forward_infer(b, p, &x, xs);
            let (y, ys) = blk.down_forward(b, p, &c).expect("the first blocks downsample");
            b.release(std::mem::replace(&mut x, y));
            xs = ys;
            c.release(b);
        }
        let c = self.down[2].forward_infer(b, p, &x, xs);
        b.release(x);
        let mut out = b.alloc(c.os.n * c.os.c);
        b.spatial_mean(&c.out, c.os, &mut out);
        c.release(b);
        out
    }

    /// Everything up to the last up block (the joint network puts its own heads there).
    pub fn forward_body<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        image: &B::Buf,
        is: Shape,
    ) -> Activations<B::Buf> {
        let mut down_in = vec![self.conv_init.forward(b, p, image, is, Epilogue::NONE)];
        let mut down = Vec::new();
        for blk in &self.down {
            let (x, xs) = down_in.last().unwrap();
            let c = blk.forward(b, p, x, *xs);
            if let Some(d) = blk.down_forward(b, p, &c) {
                down_in.push(d);
            }
            down.push(c);
        }
        let mut a = Activations {
            is,
            down_in,
            down,
            skips: Vec::new(),
            cats: Vec::new(),
            up_blocks: Vec::new(),
            out_block: None,
            pred: None,
        };
        for (j, u) in self.ups.iter().enumerate() {
            let enc = &a.down[DEPTH - 2 - j];
            let (sk, ss) = self.skip[j].forward(b, p, &enc.out, enc.os, Epilogue::NONE);
            let (x, xs) = a.up_input(j);
            let us = Shape { n: xs.n, h: 2 * xs.h, w: 2 * xs.w, c: u.cout };
            let mut up = b.alloc(us.len());
            b.conv_transpose2(x, xs, u.cout, &p.data[u.w], &p.data[u.b], &mut up);
            let cs = us.with_c(u.cout + ss.c);
            // [up | skip] read in place where the backend can (its backward too); else written
            let (c, input) = if b.reads_concatenations(&up, u.cout, &sk, ss.c) {
                (u.block.forward_in(b, p, Input::Cat(&up, u.cout, &sk), cs, true), UpInput::Up(up))
            } else {
                let mut cat = b.alloc(cs.len());
                b.concat_channels(&up, u.cout, &sk, ss.c, &mut cat);
                b.release(up);
                (u.block.forward(b, p, &cat, cs), UpInput::Cat(cat))
            };
            a.skips.push((sk, ss));
            a.cats.push((input, cs));
            a.up_blocks.push(c);
        }
        a
    }

    /// `forward_body` for inference: the same values, but each layer's intermediates go back to
    /// the pool as soon as the next layer has read them, so only the skip features and two or
    /// three activations are alive at a time (a fraction of what training keeps for backward).
    pub fn forward_body_infer<B: Backend>(
        &self,
        b: &B,
        p: &Params<B::Buf>,
        image: &B::Buf,
        is: Shape,
    ) -> (B::Buf, Shape) {
        let (mut x, mut xs) = self.conv_init.forward(b, p, image, is, Epilogue::NONE);
        let mut enc = Vec::new();
        for blk in &self.down {
            let c = blk.forward_infer(b, p, &x, xs);
            let next = blk.down_forward(b, p, &c);
            b.release(x);
            let out = c.into_out(b);
            match next {
                Some((y, ys)) => {
                    enc.push(out);
                    (x, xs) = (y, ys);
                }
                None => (x, xs) = out,
            }
        }
        for (j, u) in self.ups.iter().enumerate() {
            let (e, es) = enc.pop().expect("one encoder feature per up block");
            debug_assert_eq!(enc.len(), DEPTH - 2 - j);
            let (sk, ss) = self.skip[j].forward(b, p, &e, es, Epilogue::NONE);
            b.release(e);
            let us = Shape { n: xs.n, h: 2 * xs.h, w: 2 * xs.w, c: u.cout };
            let mut up = b.alloc(us.len());
            b.conv_transpose2(&x, xs, u.cout, &p.data[u.w], &p.data[u.b], &mut up);
            b.release(x);
            let cs = us.with_c(u.cout + ss.c);
            // [up | skip] read in place where the backend can; else written once for both layers
            let c = if b.reads_concatenations(&up, u.cout, &sk, ss.c) {
                u.block.forward_in(b, p, Input::Cat(&up, u.cout, &sk), cs, false)
            } else {
                let mut cat = b.alloc(cs.len());
                b.concat_channels(&up, u.cout, &sk, ss.c, &mut cat);
                let c = u.block.forward_infer(b, p, &cat, cs);
                b.release(cat);
                c
            };
            b.release(up);
            b.release(sk);
            (x, xs) = c.into_out(b);
        }
        (x, xs)
    }

    /// Gradients of every parameter from dL/dpred (written into `p.grads`); consumes `d_pred`.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        a: &Activations<B::Buf>,
        image: &B::Buf,
        mut d_pred: B::Buf,
    ) {
        // every gradient is written below: zeroed at once where the backend sums into zeros
        b.zero_grads(&mut p.grads);
        b.sigmoid_backward(a.pred.as_ref().expect("backward after forward (not forward_body)"), &mut d_pred);
        let ob = a.out_block.as_ref().unwrap();
        let (x, _) = a.body_out();
        let dx = self.output.backward(b, p, x, ob, d_pred, None, true).unwrap();
        self.backward_body(b, p, a, image, dx);
        b.grads_written(&mut p.grads);
    }

    /// Gradients of the body's parameters from the gradient at its output; consumes `d_body`.
    pub fn backward_body<B: Backend>(
        &self,
        b: &B,
        p: &mut Params<B::Buf>,
        a: &Activations<B::Buf>,
        image: &B::Buf,
        d_body: B::Buf,
    ) {
        let mut dx = d_body;
        let mut d_enc: Vec<Option<B::Buf>> = (0..DEPTH - 1).map(|_| None).collect();
        for j in (0..self.ups.len()).rev() {
            let u = &self.ups[j];
            let (sk, ss) = &a.skips[j];
            let x = match &a.cats[j].0 {
                UpInput::Cat(cat) => Input::One(cat),
                UpInput::Up(up) => Input::Cat(up, u.cout, sk),
            };
            let (d_up, d_skip) = match u.block.backward_in(b, p, x, &a.up_blocks[j], dx, None, true).unwrap() {
                (d_up, Some(d_skip)) => (d_up, d_skip),
                (d_cat, None) => {
                    let (mut d_up, mut d_skip) = (b.alloc(ss.with_c(u.cout).len()), b.alloc(ss.len()));
                    b.split_channels(&d_cat, u.cout, ss.c, &mut d_up, &mut d_skip);
                    b.release(d_cat);
                    (d_up, d_skip)
                }
            };
            let enc = &a.down[DEPTH - 2 - j];
            d_enc[DEPTH - 2 - j] = self.skip[j].backward(b, p, &enc.out, enc.os, &d_skip, true);
            b.release(d_skip);
            let (xin, xs) = a.up_input(j);
            let mut dxi = b.alloc(xs.len());
            let w = &p.data[u.w];
            let (dw, db) = pair_mut(&mut p.grads, u.w, u.b);
            b.conv_transpose2_backward(xin, xs, u.cout, w, &d_up, Some(&mut dxi), dw, db);
            b.release(d_up);
            dx = dxi;
        }
        // down path, deepest first: dx is the gradient at the deepest block's output
        let mut deepest = Some(dx);
        let mut d_down: Option<B::Buf> = None;
        for i in (0..DEPTH).rev() {
            let c = &a.down[i];
            let d_out = match deepest.take() {
                Some(d) => d,
                None => d_enc[i].take().unwrap_or_else(|| b.zeros(c.os.len())),
            };
            let g = self.down[i].backward(b, p, &a.down_in[i].0, c, d_out, d_down.as_ref(), true).unwrap();
            if let Some(old) = d_down.replace(g) {
                b.release(old);
            }
        }
        let d = d_down.unwrap();
        self.conv_init.backward(b, p, image, a.is, &d, false);
        b.release(d);
    }
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
