//! The seam between the trainer and the hardware: the operations the U-Net trainer needs on
//! device buffers. `model` holds only indices, shapes and schedules and calls these; `cpu` is
//! the reference implementation (rayon + matrixmultiply), the CUDA backend implements the same
//! trait and is tested against it.
//!
//! Choices made for the GPU's sake:
//! - Layout: activations are channels-last (N, H, W, C). A pixel's channels are contiguous, so
//!   a convolution is an implicit GEMM whose K dimension (ky, kx, ci) reads contiguous channel
//!   runs — what tensor-core MMA tiles load — and conv weights are stored [ky][kx][ci][co], the
//!   GEMM's B operand as is (PyTorch's layouts are converted at the checkpoint boundary only).
//! - Storage: a `Buf` holds f32 *values*; how it stores them is the backend's business. The
//!   CPU keeps f32; a GPU backend may keep activations in f16 and accumulate in f32. Every
//!   reduction (norm statistics, losses, weight gradients) is specified as an f32/f64 sum so
//!   both sides agree to storage precision.
//! - Fusion: operations are whole layers with their epilogues (bias, activation, residual add;
//!   norm + activation; the VD prior + sigmoid), so a GPU backend runs each as one kernel and
//!   never writes an intermediate that the backward pass does not need.
//! - Memory: buffers come from `alloc` and go back with `release`; a backend keeps released
//!   buffers and hands them out again, so after the first iteration a training loop allocates
//!   nothing (tested through `fresh_allocations`).
//! - Outputs: every operation overwrites its outputs unless its doc says it accumulates, so
//!   buffers from `alloc` need no clearing.

pub mod cpu;
pub mod cuda;
pub mod graphs;
pub mod streamed;

pub use cpu::Cpu;

/// Where the network runs (`--device`). On a GPU the convolutions use TF32 tensor cores (f16
/// ones where `SPAHDMAP_GPU_CONV=f16w` asks: pre-training then scales its loss, joint training
/// stays on TF32 as the reference keeps it in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu ({} threads)", rayon::current_num_threads()),
            Device::Cuda(n) => match cuda::probe() {
                Ok(v) if *n < v.len() => write!(f, "cuda:{n} ({})", v[*n].name),
                _ => write!(f, "cuda:{n}"),
            },
        }
    }
}

/// Why CUDA device `n` cannot run the network here, if it cannot.
fn cuda_unusable(n: usize) -> Option<String> {
    match cuda::probe() {
        Err(e) => Some(e),
        Ok(v) if v.len() <= n => Some(format!("this machine has {} CUDA device(s)", v.len())),
        Ok(_) if cuda::FATBIN.is_empty() => Some("this binary was built without CUDA kernels (no nvcc)".into()),
        Ok(_) => None,
    }
}

/// `--device auto|cpu|cuda[:N]`: `auto` takes the first GPU when one is usable and otherwise
/// the CPU, saying why; `cuda` that cannot run is an error that says why.
pub fn resolve_device(spec: &str) -> crate::Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    let cuda_n = match s.as_str() {
        "cuda" => Some(0),
        _ => s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()),
    };
    match (s.as_str(), cuda_n) {
        ("cpu", _) => Ok(Device::Cpu),
        ("auto", _) => match cuda_unusable(0) {
            None => Ok(Device::Cuda(0)),
            Some(why) => {
                eprintln!("device auto: running on the CPU ({why})");
                Ok(Device::Cpu)
            }
        },
        (_, Some(n)) => match cuda_unusable(n) {
            None => Ok(Device::Cuda(n)),
            Some(why) => Err(crate::Error::setting("--device", format!("{spec}: {why}"))),
        },
        _ => Err(crate::Error::setting("--device", format!("{spec}: expected auto, cpu, cuda or cuda:N"))),
    }
}

impl Device {
    /// The GPU backend of `Cuda(n)` (None for the CPU), or an error naming `--device`. Where
    /// the speed path (`cuda::SPEED`) is asked for, `SPAHDMAP_GPU_CONV=f32|tf32|tf32p|tf32w|f16w`
    /// picks the convolution kernels instead (A/B runs of kernel variants through the whole
    /// pipeline).
    pub fn gpu(self, precision: cuda::Precision) -> crate::Result<Option<cuda::Cuda>> {
        if !matches!(self, Device::Cuda(_)) {
            return Ok(None);
        }
        self.gpu_exactly(if precision == cuda::SPEED { speed_precision()? } else { precision })
    }

    /// The speed path for a stage that trains without a loss scale (joint training, which the
    /// reference runs in f32): as `gpu(cuda::SPEED)`, but f16 operands become TF32 ones.
    pub fn gpu_unscaled(self) -> crate::Result<Option<cuda::Cuda>> {
        if !matches!(self, Device::Cuda(_)) {
            return Ok(None);
        }
        self.gpu_exactly(unscaled(speed_precision()?))
    }

    /// The GPU backend with these kernels, whatever SPAHDMAP_GPU_CONV says.
    fn gpu_exactly(self, precision: cuda::Precision) -> crate::Result<Option<cuda::Cuda>> {
        let Device::Cuda(n) = self else { return Ok(None) };
        cuda::Cuda::new(n, precision).map(Some).map_err(|e| crate::Error::setting("--device", format!("cuda:{n}: {e}")))
    }
}

/// The kernels a stage without a loss scale runs instead of `p`: TF32 for f16 operands.
fn unscaled(p: cuda::Precision) -> cuda::Precision {
    match p {
        cuda::Precision::F16Wide => cuda::Precision::Tf32Wide,
        p => p,
    }
}

/// `cuda::SPEED`, or the kernels `SPAHDMAP_GPU_CONV` names.
fn speed_precision() -> crate::Result<cuda::Precision> {
    let Ok(v) = std::env::var("SPAHDMAP_GPU_CONV") else { return Ok(cuda::SPEED) };
    Ok(match v.as_str() {
        "f32" => cuda::Precision::Exact,
        "tf32" => cuda::Precision::Tf32,
        "tf32p" => cuda::Precision::Tf32Pipelined,
        "tf32w" => cuda::Precision::Tf32Wide,
        "f16w" => cuda::Precision::F16Wide,
        _ => {
            return Err(crate::Error::setting(
                "SPAHDMAP_GPU_CONV",
                format!("{v}: expected f32, tf32, tf32p, tf32w or f16w"),
            ))
        }
    })
}

/// Run `$body` with `$b` bound to the backend of `$dev` (a `Device`); `?` inside works on
/// `crate::Result`. The one place a stage turns a device choice into a concrete backend;
/// `unscaled` for a stage that trains without a loss scale (`Device::gpu_unscaled`).
#[macro_export]
macro_rules! on_device {
    (unscaled $dev:expr, $b:ident => $body:expr) => {
        $crate::on_device!(@with $dev.gpu_unscaled()?, $b => $body)
    };
    ($dev:expr, $b:ident => $body:expr) => {
        $crate::on_device!(@with $dev.gpu($crate::backend::cuda::SPEED)?, $b => $body)
    };
    (@with $gpu:expr, $b:ident => $body:expr) => {
        match $gpu {
            None => {
                let $b = &$crate::backend::Cpu::new();
                $body
            }
            Some(g) => {
                let $b = &g;
                $body
            }
        }
    };
}

use crate::optim::AdamScalars;

/// Where `Backend::adam_many` takes each tensor's Adam scalars from: the host, or a device
/// array (`Backend::adam_at`) with an optional found-inf flag that skips the step.
#[derive(Clone, Copy)]
pub enum AdamSource<'a, B> {
    Host(&'a [AdamScalars]),
    Device { scalars: &'a B, skip: Option<&'a B> },
}

/// Host values to upload: f32, or f16 where they are half floats already (the VD prior, read
/// from its f16 file), so that only half the bytes cross the bus.
#[derive(Clone, Copy, Debug)]
pub enum Host<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl Host<'_> {
    pub fn len(&self) -> usize {
        match self {
            Host::F32(v) => v.len(),
            Host::F16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as they lie in memory (little-endian f32 or f16).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Host::F32(v) => pod_bytes(v),
            Host::F16(v) => pod_bytes(v),
        }
    }
    /// The values widened to f32, into `dst` (as long).
    pub fn widen_into(&self, dst: &mut [f32]) {
        assert_eq!(dst.len(), self.len(), "upload into a buffer of another length");
        match self {
            Host::F32(v) => dst.copy_from_slice(v),
            Host::F16(v) => dst.iter_mut().zip(v.iter()).for_each(|(d, s)| *d = s.to_f32()),
        }
    }
}

/// The bytes of f32 or f16 values (only those: neither has padding, and any byte is a u8).
fn pod_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: called on f32 and f16 slices only; the length covers the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// A 2-D convolution: k × k kernel, stride, zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvSpec {
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad - self.k) / self.stride + 1, (w + 2 * self.pad - self.k) / self.stride + 1)
    }
    pub fn weight_len(&self) -> usize {
        self.k * self.k * self.cin * self.cout
    }
}

/// Activation shape (N, H, W, C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn with_c(self, c: usize) -> Shape {
        Shape { c, ..self }
    }
}

/// `Backend::half_activations` on for a scope: the previous setting comes back when it ends,
/// a panic included.
pub struct HalfActivations<'a, B: Backend> {
    b: &'a B,
    /// the setting before; None: nothing was changed
    before: Option<bool>,
}

impl<'a, B: Backend> HalfActivations<'a, B> {
    pub fn on(b: &'a B) -> Self {
        Self::set(b, true)
    }
    /// On where `on`, else nothing changes.
    pub fn set(b: &'a B, on: bool) -> Self {
        HalfActivations { b, before: on.then(|| b.half_activations(true)) }
    }
}

impl<B: Backend> Drop for HalfActivations<'_, B> {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            self.b.half_activations(before);
        }
    }
}

/// `Backend::conv2d_cat` by writing the concatenation and convolving it.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_via_concat<B: Backend + ?Sized>(
    be: &B,
    a: &B::Buf,
    ca: usize,
    b: &B::Buf,
    xs: Shape,
    spec: &ConvSpec,
    w: &B::Buf,
    bias: Option<&B::Buf>,
    epi: Epilogue<B::Buf>,
    y: &mut B::Buf,
) {
    let mut cat = be.alloc(xs.len());
    be.concat_channels(a, ca, b, xs.c - ca, &mut cat);
    be.conv2d(&cat, xs, spec, w, bias, epi, y);
    be.release(cat);
}

/// A residual block's tail (model/unet.rs `Block`): a2 = LeakyReLU(conv2(a1) + b2) and the
/// block's output a2 + identity(x) + b_id, where x is one tensor or the concatenation [x | x2]
/// (x2's channels after x's `ca`), of shape `xs`; a2 and the output of shape `os` (conv2's
/// output channels), a1 of the same pixels with conv2's input channels.
pub struct BlockTail<'a, T> {
    /// conv2's input; where `norm` is set, conv_1's output c1, and conv2 reads LeakyReLU(HIN(c1))
    pub a1: &'a T,
    pub os: Shape,
    pub conv2: &'a ConvSpec,
    pub w2: &'a T,
    pub b2: Option<&'a T>,
    pub x: &'a T,
    pub x2: Option<(&'a T, usize)>,
    pub xs: Shape,
    pub identity: &'a ConvSpec,
    pub w_id: &'a T,
    pub b_id: Option<&'a T>,
    pub norm: Option<TailNorm<'a, T>>,
}

/// Half instance norm then LeakyReLU between conv_1 and conv_2 (`BlockTail::norm`): the
/// statistics `hin_forward` or `conv2d_hin` wrote (means, then 1/σ) and the affine parameters.
/// Inference hands c1 to the tail with these, so that a backend may normalise as conv2 reads
/// (the GPU's halo kernel does) rather than write a1 and read it back.
pub struct TailNorm<'a, T> {
    pub stats: &'a T,
    pub gamma: &'a T,
    pub beta: &'a T,
}

/// `Backend::block_tail` as two convolutions: conv2 with LeakyReLU into a2 (a buffer of the
/// pool where the caller keeps none), then the identity with a2 as its residual; where `norm`
/// is set, a1 = LeakyReLU(HIN(c1)) written first (`hin_apply`).
pub fn block_tail_composed<B: Backend + ?Sized>(
    be: &B,
    t: BlockTail<B::Buf>,
    a2: Option<&mut B::Buf>,
    out: &mut B::Buf,
) {
    let mut own = None;
    let a2 = match a2 {
        Some(a2) => a2,
        None => own.insert(be.alloc(t.os.len())),
    };
    let a1s = t.os.with_c(t.conv2.cin);
    let normed = t.norm.as_ref().map(|n| {
        let mut a1 = be.alloc_like(t.a1);
        be.hin_apply(t.a1, a1s, n.stats, n.gamma, n.beta, true, &mut a1);
        a1
    });
    be.conv2d(normed.as_ref().unwrap_or(t.a1), a1s, t.conv2, t.w2, t.b2, Epilogue::LEAKY, a2);
    if let Some(a1) = normed {
        be.release(a1);
    }
    let epi = Epilogue { leaky: false, residual: Some(&*a2) };
    match t.x2 {
        None => be.conv2d(t.x, t.xs, t.identity, t.w_id, t.b_id, epi, out),
        Some((x2, ca)) => be.conv2d_cat(t.x, ca, x2, t.xs, t.identity, t.w_id, t.b_id, epi, out),
    }
    if let Some(a2) = own {
        be.release(a2);
    }
}

/// The head of a residual block's backward pass (model/unet.rs `Block`): conv_1 (3 × 3 in the
/// U-Net) and the 1 × 1 identity both read the block's input x — one tensor, or the
/// concatenation [x | x2] (x2's channels after x's `ca`) — of shape `xs`; dc1 is the gradient
/// at conv_1's output, d_out the one at the block's output (the identity's).
pub struct BlockHead<'a, T> {
    pub x: &'a T,
    pub x2: Option<(&'a T, usize)>,
    pub xs: Shape,
    pub conv1: &'a ConvSpec,
    pub w1: &'a T,
    pub dc1: &'a T,
    pub identity: &'a ConvSpec,
    pub w_id: &'a T,
    pub d_out: &'a T,
}

/// Where `Backend::block_head_backward` writes the weight and bias gradients (overwritten).
pub struct BlockHeadGrads<'a, T> {
    pub w1: &'a mut T,
    pub b1: &'a mut T,
    pub w_id: &'a mut T,
    pub b_id: &'a mut T,
}

/// `Backend::block_head_backward` as the two layers' backward passes in turn: the identity's
/// dX, then conv_1's added onto it; a two-part input concatenated first and its gradient split
/// after.
pub fn block_head_backward_composed<B: Backend + ?Sized>(
    be: &B,
    h: BlockHead<B::Buf>,
    g: BlockHeadGrads<B::Buf>,
    dx: Option<(&mut B::Buf, Option<&mut B::Buf>)>,
) {
    let cat = h.x2.map(|(x2, ca)| {
        let mut c = be.alloc(h.xs.len());
        be.concat_channels(h.x, ca, x2, h.xs.c - ca, &mut c);
        c
    });
    let x = cat.as_ref().unwrap_or(h.x);
    let (mut first, second) = match dx {
        Some((a, b)) => (Some(a), b),
        None => (None, None),
    };
    // the whole gradient, where it goes out in two parts
    let mut whole = second.as_ref().map(|_| be.alloc(h.xs.len()));
    let mut target = match whole.as_mut() {
        Some(w) => Some(w),
        None => first.as_deref_mut(),
    };
    let (ci, c1) = (h.identity, h.conv1);
    be.conv2d_backward(x, h.xs, ci, h.w_id, h.d_out, target.as_deref_mut(), DxEpilogue::NONE, g.w_id, Some(g.b_id));
    be.conv2d_backward(x, h.xs, c1, h.w1, h.dc1, target, DxEpilogue::ACCUMULATE, g.w1, Some(g.b1));
    if let (Some(w), Some(a), Some(b)) = (whole.take(), first, second) {
        let ca = h.x2.expect("two output parts for a two-part input").1;
        be.split_channels(&w, ca, h.xs.c - ca, a, b);
        be.release(w);
    }
    if let Some(c) = cat {
        be.release(c);
    }
}

/// `Backend::conv2d_hin` as the convolution, then the norm with its own statistics pass.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_hin_composed<B: Backend + ?Sized>(
    be: &B,
    x: &B::Buf,
    xs: Shape,
    spec: &ConvSpec,
    w: &B::Buf,
    bias: Option<&B::Buf>,
    norm: (&B::Buf, &B::Buf),
    leaky: bool,
    c1: &mut B::Buf,
    y: Option<&mut B::Buf>,
    stats: &mut B::Buf,
) {
    be.conv2d(x, xs, spec, w, bias, Epilogue::NONE, c1);
    let (oh, ow) = spec.out_hw(xs.h, xs.w);
    let os = Shape { n: xs.n, h: oh, w: ow, c: spec.cout };
    let mut own = None;
    let y = match y {
        Some(y) => y,
        None => own.insert(be.alloc(os.len())),
    };
    be.hin_forward(c1, os, norm.0, norm.1, leaky, y, stats);
    if let Some(y) = own {
        be.release(y);
    }
}

/// `Backend::freeze_weights` for a scope: on from `on` until dropped.
pub struct FrozenWeights<'a, B: Backend> {
    b: &'a B,
}

impl<'a, B: Backend> FrozenWeights<'a, B> {
    pub fn on(b: &'a B) -> Self {
        b.freeze_weights(true);
        FrozenWeights { b }
    }
}

impl<B: Backend> Drop for FrozenWeights<'_, B> {
    fn drop(&mut self) {
        self.b.freeze_weights(false);
    }
}

/// What a convolution does to its result before storing it: y = act(conv(x) + bias) + residual.
#[derive(Clone, Copy)]
pub struct Epilogue<'a, T> {
    pub leaky: bool,
    pub residual: Option<&'a T>,
}

impl<T> Epilogue<'_, T> {
    pub const NONE: Self = Epilogue { leaky: false, residual: None };
    pub const LEAKY: Self = Epilogue { leaky: true, residual: None };
}

/// What a data gradient does on its way out (`conv2d_backward`): dx = [dx +] leaky'(x) ⊙ dX,
/// where x, the convolution's input, is a LeakyReLU output (same sign as its input) when
/// `leaky`, and the old dx is added when `accumulate`. The activation's backward pass and a
/// residual branch's sum, fused into the data gradient so a GPU writes dX once; the same
/// multiply and add as `leaky_relu_backward` and `add_assign` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DxEpilogue {
    pub leaky: bool,
    pub accumulate: bool,
}

impl DxEpilogue {
    pub const NONE: Self = DxEpilogue { leaky: false, accumulate: false };
    pub const LEAKY: Self = DxEpilogue { leaky: true, accumulate: false };
    pub const ACCUMULATE: Self = DxEpilogue { leaky: false, accumulate: true };
}

/// One tile's spots for the expression loss: each spot's pixel set (flat y·W + x in the tile),
/// their expression (spots × genes) and, for a query section, its row of gamma.
pub struct TileSpots<'a> {
    pub pixels: &'a [Vec<u32>],
    pub expression: &'a [f32],
    pub query: Option<usize>,
}

/// The decoder side of the expression loss: D (genes × R, used as relu(D)) and gamma
/// (queries × genes), with their gradient buffers (overwritten).
pub struct Decoder<'a, T> {
    pub d: &'a T,
    pub gamma: Option<&'a T>,
    pub grad_d: &'a mut T,
    pub grad_gamma: Option<&'a mut T>,
}

pub trait Backend: Sync {
    /// A buffer of f32 values on the device.
    type Buf: Send + Sync;
    /// The score stage's band of overlapping inference tiles, where the tiles are (host or
    /// device), so a batch's scores never travel before they are averaged.
    type Band: Send;
    /// A point in the queued work (`fence`), which an overlapped upload can wait for.
    type Fence: Send;
    /// Per-image loss sums (f64) left where the loss kernel wrote them (`mse_sums`), so a
    /// recorded step reads them after its replay instead of inside it.
    type Sums: Send;
    /// The work of a closure recorded once and replayed with one launch (CUDA graphs:
    /// `capture`); the CPU has none.
    type Graph: Send;

    fn name(&self) -> String;
    /// Wait until every queued operation has finished (for timing; the CPU is synchronous).
    fn synchronize(&self) {}

    // --- memory -------------------------------------------------------------------------
    /// A buffer of `len` values, contents unspecified (reused when one was released).
    fn alloc(&self, len: usize) -> Self::Buf;
    /// `alloc`, but f32 even where `half_activations` is on (statistics kept at full precision).
    fn alloc_f32(&self, len: usize) -> Self::Buf {
        self.alloc(len)
    }
    fn zeros(&self, len: usize) -> Self::Buf;
    /// `on`: no parameter changes until `freeze_weights(false)` (inference), so the backend
    /// may keep what it derives from the weights — a GPU its f16 packings — instead of
    /// deriving it at every layer of every batch. `false` lets them go.
    fn freeze_weights(&self, on: bool) {
        let _ = on;
    }
    /// Whether `buf` holds f16 values (a GPU's f16 storage; never on the CPU).
    fn holds_half(&self, buf: &Self::Buf) -> bool {
        let _ = buf;
        false
    }
    /// A buffer of `buf`'s length and precision (`copy` takes it as a destination).
    fn alloc_like(&self, buf: &Self::Buf) -> Self::Buf {
        self.alloc_f32(self.len(buf))
    }
    /// Give a buffer back for reuse.
    fn release(&self, buf: Self::Buf);
    /// Buffers created (not reused) so far.
    fn fresh_allocations(&self) -> u64;
    fn upload(&self, host: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf);
    /// The work queued so far.
    fn fence(&self) -> Self::Fence;
    /// Fill `dst` (as long as `host`) for the work queued after this call, waiting not for the
    /// work already queued but only for `after`: the fence taken after the last work that read
    /// `dst` (none: all work queued so far, which a buffer fresh from `alloc` needs — the pool
    /// hands out buffers queued work may still read). On a GPU the copy runs from page-locked
    /// memory on a second stream, so a batch's upload overlaps the previous batch's network
    /// (`streamed::InputRing`).
    fn upload_overlapped(&self, host: Host<'_>, dst: &mut Self::Buf, after: Option<&Self::Fence>);
    /// A buffer for `upload_overlapped` of `host`: f16 on a GPU for f16 values, which then
    /// cross the bus at two bytes each; f32 elsewhere (the CPU widens them on upload).
    fn alloc_upload(&self, host: Host<'_>) -> Self::Buf {
        self.alloc_f32(host.len())
    }

    // --- element-wise -------------------------------------------------------------------
    /// y += x
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf);
    /// dy *= leaky'(y), from the activation's output (same sign as its input)
    fn leaky_relu_backward(&self, y: &Self::Buf, dy: &mut Self::Buf);
    /// g = dy ⊙ leaky'(y), dy kept (`leaky_relu_backward` out of place; g of dy's storage)
    fn leaky_relu_grad(&self, y: &Self::Buf, dy: &Self::Buf, g: &mut Self::Buf) {
        self.copy(dy, g);
        self.leaky_relu_backward(y, g);
    }
    /// y = sigmoid(x)
    fn sigmoid(&self, x: &Self::Buf, y: &mut Self::Buf);
    /// dy *= y (1 − y), from the sigmoid's output
    fn sigmoid_backward(&self, y: &Self::Buf, dy: &mut Self::Buf);
    /// hr = sigmoid(logit(vd, eps) + l): the VD prior of the joint network
    fn prior_sigmoid(&self, l: &Self::Buf, vd: &Self::Buf, hr: &mut Self::Buf);

    // --- layers -------------------------------------------------------------------------
    /// y = epilogue(conv(x) + bias); y is (N, OH, OW, Cout)
    #[allow(clippy::too_many_arguments)]
    fn conv2d(
        &self,
        x: &Self::Buf,
        xs: Shape,
        spec: &ConvSpec,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        epi: Epilogue<Self::Buf>,
        y: &mut Self::Buf,
    );
    /// `conv2d` of the concatenation [a | b] along channels (`ca` channels of a, xs.c − ca of
    /// b), without writing it where `reads_concatenations` says so (the GPU's f16 GEMM reads
    /// both tensors in turn).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_cat(
        &self,
        a: &Self::Buf,
        ca: usize,
        b: &Self::Buf,
        xs: Shape,
        spec: &ConvSpec,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        epi: Epilogue<Self::Buf>,
        y: &mut Self::Buf,
    ) {
        conv2d_via_concat(self, a, ca, b, xs, spec, w, bias, epi, y)
    }
    /// A residual block's tail (`BlockTail`): the block's output into `out`, and a2 into `a2`
    /// where given (training's backward reads it). The GPU's f16 path runs both convolutions in
    /// one kernel (the identity's sums added onto conv2's activation, rounded to f16 first as
    /// the second convolution would read it; the sums' order differs, so an output may differ
    /// by one f16 unit); elsewhere, and as the reference, the two convolutions in turn.
    fn block_tail(&self, t: BlockTail<Self::Buf>, a2: Option<&mut Self::Buf>, out: &mut Self::Buf) {
        block_tail_composed(self, t, a2, out)
    }
    /// A residual block's head backward (`BlockHead`): conv_1's and the identity's weight and
    /// bias gradients, and — where `dx` is given — the input's gradient conv_1ᵀ(dc1) +
    /// identityᵀ(d_out), into one buffer, or into two (the parts of a two-part input) where a
    /// second is given. The GPU's f16 path writes it once from one halo kernel (no identity GEMM,
    /// no pass adding onto its result, no split) and reads a two-part input in place; the sums'
    /// order differs, so a value may differ by one f16 unit. Elsewhere, and as the reference,
    /// the two layers in turn (`block_head_backward_composed`).
    fn block_head_backward(
        &self,
        h: BlockHead<Self::Buf>,
        g: BlockHeadGrads<Self::Buf>,
        dx: Option<(&mut Self::Buf, Option<&mut Self::Buf>)>,
    ) {
        block_head_backward_composed(self, h, g, dx)
    }
    /// Whether `block_tail` applies a `TailNorm` as conv2 reads c1 for a block whose input is
    /// like x, so that inference need not write a1 (where not, writing a1 with `conv2d_hin`
    /// costs no more than the tail's own `hin_apply`, and `conv2d_hin` without y may cost more).
    fn tail_normalises(&self, x: &Self::Buf) -> bool {
        let _ = x;
        false
    }
    /// Whether `conv2d_cat` of a (`ca` channels) and b (`cb`) skips the concatenation; where it
    /// does not, callers that read one concatenation twice had better write it once.
    fn reads_concatenations(&self, a: &Self::Buf, ca: usize, b: &Self::Buf, cb: usize) -> bool {
        let _ = (a, ca, b, cb);
        false
    }
    /// dX (when asked, through `dxe`), dW, dB (when asked) from dY at the convolution's output
    /// (before any epilogue: the caller applies the activation's backward first)
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        x: &Self::Buf,
        xs: Shape,
        spec: &ConvSpec,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dxe: DxEpilogue,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
    );
    /// 2×2 stride-2 transposed convolution + bias; y is (N, 2H, 2W, Cout)
    fn conv_transpose2(&self, x: &Self::Buf, xs: Shape, cout: usize, w: &Self::Buf, b: &Self::Buf, y: &mut Self::Buf);
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose2_backward(
        &self,
        x: &Self::Buf,
        xs: Shape,
        cout: usize,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    );
    /// y = leaky?(HIN(x)): the first C/2 channels normalised per image (biased variance, eps
    /// 1e-5, affine), the rest passed through. `stats` (2·N·C/2: means, then 1/σ) is kept for
    /// the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn hin_forward(
        &self,
        x: &Self::Buf,
        s: Shape,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        leaky: bool,
        y: &mut Self::Buf,
        stats: &mut Self::Buf,
    );
    /// y = leaky?(HIN(x)) from statistics `hin_forward` wrote (means, then 1/σ)
    #[allow(clippy::too_many_arguments)]
    fn hin_apply(
        &self,
        x: &Self::Buf,
        s: Shape,
        stats: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        leaky: bool,
        y: &mut Self::Buf,
    );
    /// A layer with half instance norm after it: c1 = conv(x) + bias (`conv2d`), then
    /// y = leaky?(HIN(c1)) with its statistics (`hin_forward`; c1 of the layer's output shape);
    /// only c1 and the statistics where y is None (a block tail then normalises, `TailNorm`).
    /// The GPU's halo kernel sums the statistics as it writes c1, so that no pass reads c1
    /// back for them (sums of a few pixels in f32, of a tile's in f64, shifted by the bias
    /// rather than by a first pixel); elsewhere, and as the reference, the two in turn.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_hin(
        &self,
        x: &Self::Buf,
        xs: Shape,
        spec: &ConvSpec,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        norm: (&Self::Buf, &Self::Buf),
        leaky: bool,
        c1: &mut Self::Buf,
        y: Option<&mut Self::Buf>,
        stats: &mut Self::Buf,
    ) {
        conv2d_hin_composed(self, x, xs, spec, w, bias, norm, leaky, c1, y, stats)
    }
    /// dx, dgamma, dbeta from dy at HIN's output (before its activation)
    #[allow(clippy::too_many_arguments)]
    fn hin_backward(
        &self,
        x: &Self::Buf,
        s: Shape,
        gamma: &Self::Buf,
        stats: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        dgamma: &mut Self::Buf,
        dbeta: &mut Self::Buf,
    );
    /// out = [a | b] along channels (`px` pixels)
    fn concat_channels(&self, a: &Self::Buf, ca: usize, b: &Self::Buf, cb: usize, out: &mut Self::Buf);
    /// the inverse of `concat_channels`
    fn split_channels(&self, d: &Self::Buf, ca: usize, cb: usize, a: &mut Self::Buf, b: &mut Self::Buf);
    /// out (N × C) = mean over each image's pixels
    fn spatial_mean(&self, x: &Self::Buf, s: Shape, out: &mut Self::Buf);

    // --- losses (values summed in f64; gradients scaled by `scale`) -----------------------
    /// Σ over images of mean((pred − target)²); d_pred = scale · 2(pred − target)/(H·W·C)
    fn mse_per_image(&self, pred: &Self::Buf, target: &Self::Buf, s: Shape, scale: f64, d_pred: &mut Self::Buf) -> f64;
    /// Zeroed per-image sums for `n` images.
    fn sums(&self, n: usize) -> Self::Sums;
    /// `mse_per_image`'s work with each image's sum of squared errors (not yet divided by
    /// H·W·C) left in `sums` (overwritten), not read back.
    fn mse_sums(
        &self,
        pred: &Self::Buf,
        target: &Self::Buf,
        s: Shape,
        scale: f64,
        d_pred: &mut Self::Buf,
        sums: &mut Self::Sums,
    );
    fn read_sums(&self, sums: &Self::Sums) -> Vec<f64>;
    /// Σ over images of the mean over pixels with HR > 0.95 of ((1−vd)²·(hr − vd))²;
    /// d_hr += scale · its gradient (accumulates)
    fn hr_regulariser(&self, hr: &Self::Buf, vd: &Self::Buf, s: Shape, scale: f64, d_hr: &mut Self::Buf) -> f64;
    /// Σ over tiles of the Poisson NLL (log_input=False) of relu(D)·(spot means of HR)
    /// (+ gamma, relu'd, for query tiles) against the spots' expression; d_hr += scale · its
    /// gradient (accumulates), the decoder's gradients are overwritten.
    fn expression_loss(
        &self,
        hr: &Self::Buf,
        s: Shape,
        tiles: &[TileSpots],
        dec: Decoder<Self::Buf>,
        scale: f64,
        d_hr: &mut Self::Buf,
    ) -> f64;

    // --- optimiser ----------------------------------------------------------------------
    /// One Adam update of `p` from `g` with moments `m`, `v` (PyTorch's single-tensor Adam).
    fn adam(&self, p: &mut Self::Buf, g: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, s: &AdamScalars);
    // --- whole-slide inference -----------------------------------------------------------
    /// A band of `split` padded rows × `wp` columns × `rank` components (frame `bound`).
    fn band(&self, rank: usize, split: usize, bound: usize, wp: usize) -> Self::Band;
    /// Add tile `index` of the batch `hr` (split × split × rank, channels last) at padded
    /// column `c0` of the band's rows, weighted by its frame.
    fn band_add(&self, band: &mut Self::Band, c0: usize, hr: &Self::Buf, index: usize);
    /// Hand the band's finished padded rows [top, until) to `emit` (frame-weighted averages,
    /// channels last, padding columns removed, in order), then move the band down to start at
    /// `until`. A GPU copies them back while it computes the next tiles and hands them over
    /// at the next call or at `band_flush`.
    fn band_advance(
        &self,
        band: &mut Self::Band,
        until: usize,
        emit: &mut dyn FnMut(usize, &[f32]) -> crate::Result<()>,
    ) -> crate::Result<()>;
    /// Hand every finished row still on its way to `emit` (after the last `band_advance`).
    fn band_flush(
        &self,
        band: &mut Self::Band,
        emit: &mut dyn FnMut(usize, &[f32]) -> crate::Result<()>,
    ) -> crate::Result<()>;

    // --- optimiser, continued -------------------------------------------------------------
    /// Zero `grads` at once before a backward pass writes them, where this backend's layers
    /// would otherwise zero each (the GPU's weight gradients add into zeroed f32 by atomics:
    /// one launch for all instead of a memset a tensor); `grads_written` closes the pass, so
    /// that no gradient is taken as zeroed past it. The CPU's layers overwrite theirs: nothing.
    fn zero_grads(&self, _grads: &mut [Self::Buf]) {}
    /// The backward pass after `zero_grads` has written its gradients.
    fn grads_written(&self, _grads: &mut [Self::Buf]) {}
    /// Multiply every gradient by `inv_scale` (undoing a loss scale); true when any value
    /// is then inf or NaN (PyTorch's `_amp_foreach_non_finite_check_and_unscale_`).
    fn unscale_grads(&self, grads: &mut [Self::Buf], inv_scale: f32) -> bool;
    /// `unscale_grads` with the found-inf flag left in `flag` (one value, non-zero when found;
    /// overwritten), not read back: for a recorded step, read after its replay (`flag_set`).
    fn unscale_grads_into(&self, grads: &mut [Self::Buf], inv_scale: f32, flag: &mut Self::Buf);
    fn flag_set(&self, flag: &Self::Buf) -> bool;
    /// `adam` with its scalars read from the device — `AdamScalars`' six fields in order at
    /// `scalars[6·at..]` — and skipped when `skip` holds a set flag (`unscale_grads_into`):
    /// the optimiser's step inside a recording, whose scalars change every step.
    #[allow(clippy::too_many_arguments)]
    fn adam_at(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        scalars: &Self::Buf,
        at: usize,
        skip: Option<&Self::Buf>,
    );
    /// `adam` on tensors `tensors` of `params` (gradients in `grads`), the k-th of them with
    /// moments `m[k]`, `v[k]` and scalars — `scalars[k]`, or with `Device` read as `adam_at`
    /// reads them — in as few launches as the backend can (the GPU lists tensors by the
    /// dozen in one launch).
    fn adam_many(
        &self,
        params: &mut [Self::Buf],
        grads: &[Self::Buf],
        opt: &mut crate::optim::Adam<Self::Buf>,
        tensors: &[usize],
        scalars: AdamSource<'_, Self::Buf>,
    ) {
        assert_eq!(tensors.len(), opt.m.len(), "one set of Adam moments per tensor");
        for (k, &i) in tensors.iter().enumerate() {
            let (m, v) = (&mut opt.m[k], &mut opt.v[k]);
            match scalars {
                AdamSource::Host(s) => self.adam(&mut params[i], &grads[i], m, v, &s[k]),
                AdamSource::Device { scalars, skip } => self.adam_at(&mut params[i], &grads[i], m, v, scalars, k, skip),
            }
        }
    }
    /// Hand out f16 buffers from `alloc` and `zeros` (`on`) or f32 ones again, where the backend
    /// stores activations in half precision (CUDA, unless `SPAHDMAP_GPU_HALF=0`; for inference,
    /// the layers of a forward pass take them, gradients and losses do not). The previous
    /// setting, to restore after.
    fn half_activations(&self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// Whether pre-training keeps its activations in f16 (`half_activations` around each step;
    /// CUDA by default, not with `SPAHDMAP_GPU_HALF=0` or `1`): gradients then want a loss scale, as with
    /// `half_operands`.
    fn half_training(&self) -> bool {
        false
    }
    /// Whether the convolutions round their operands to half precision (then gradients below
    /// its range vanish unless the loss is scaled: training turns a loss scaler on).
    fn half_operands(&self) -> bool {
        false
    }
    /// Whether training wants a loss scale: half-precision operands or activations, whose small
    /// gradients would underflow unscaled.
    fn scales_loss(&self) -> bool {
        self.half_operands() || self.half_training()
    }

    // --- recorded work (`graphs::Replayed`) ----------------------------------------------
    /// Whether `capture` records work (CUDA with `SPAHDMAP_GPU_GRAPHS=1`).
    fn graphs(&self) -> bool {
        false
    }
    /// Record the work `body` queues, without running it, for `replay`. The body must read
    /// nothing back to the host, upload nothing, and allocate only buffers the pool holds (a
    /// step run once eagerly before leaves them there); the buffers it takes and gives back
    /// become the recording's own. None when it could not be recorded (the body's work has
    /// then not run: run it again eagerly).
    fn capture(&self, body: &mut dyn FnMut()) -> Option<Self::Graph> {
        let _ = body;
        None
    }
    /// Queue a recording's work again, on the buffers it was recorded on; false (nothing
    /// queued) when it may no longer run: a scratch buffer it uses has been reallocated since.
    fn replay(&self, g: &Self::Graph) -> bool;
    /// Drop a recording; the buffers it owned go back for reuse by work queued after.
    fn discard(&self, g: Self::Graph) {
        drop(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The composed head backward of a two-part input gives the one-part result on the
    /// concatenation, its gradient split at the parts; without dX the weight gradients alone.
    #[test]
    fn a_block_head_of_two_parts_is_the_head_of_their_concatenation() {
        let cpu = Cpu::new();
        let (n, h, w, ca, cb, cout) = (2, 5, 6, 3, 5, 4);
        let xs = Shape { n, h, w, c: ca + cb };
        let px = n * h * w;
        let vals =
            |len: usize, k: usize| (0..len).map(|i| ((i * 7 + k * 13) % 23) as f32 / 11.0 - 1.0).collect::<Vec<_>>();
        let (xa, xb) = (vals(px * ca, 1), vals(px * cb, 2));
        let (dc1, d_out) = (vals(px * cout, 3), vals(px * cout, 4));
        let c1 = ConvSpec { cin: ca + cb, cout, k: 3, stride: 1, pad: 1 };
        let id = ConvSpec { cin: ca + cb, cout, k: 1, stride: 1, pad: 0 };
        let (w1, wi) = (vals(c1.weight_len(), 5), vals(id.weight_len(), 6));
        let mut cat = vec![0f32; xs.len()];
        cpu.concat_channels(&xa, ca, &xb, cb, &mut cat);
        let head =
            |x, x2| BlockHead { x, x2, xs, conv1: &c1, w1: &w1, dc1: &dc1, identity: &id, w_id: &wi, d_out: &d_out };
        fn grads(g: &mut [Vec<f32>; 4]) -> BlockHeadGrads<'_, Vec<f32>> {
            let [a, b, c, d] = g;
            BlockHeadGrads { w1: a, b1: b, w_id: c, b_id: d }
        }
        let fresh = || [vec![0f32; c1.weight_len()], vec![0f32; cout], vec![0f32; id.weight_len()], vec![0f32; cout]];
        let (mut g1, mut g2, mut g3) = (fresh(), fresh(), fresh());
        let mut whole = vec![0f32; xs.len()];
        cpu.block_head_backward(head(&cat, None), grads(&mut g1), Some((&mut whole, None)));
        let (mut da, mut db) = (vec![0f32; px * ca], vec![0f32; px * cb]);
        cpu.block_head_backward(head(&xa, Some((&xb, ca))), grads(&mut g2), Some((&mut da, Some(&mut db))));
        cpu.block_head_backward(head(&xa, Some((&xb, ca))), grads(&mut g3), None);
        let (mut wa, mut wb) = (vec![0f32; px * ca], vec![0f32; px * cb]);
        cpu.split_channels(&whole, ca, cb, &mut wa, &mut wb);
        assert!(whole.iter().any(|v| *v != 0.0), "a gradient to compare");
        assert_eq!((da, db), (wa, wb));
        assert_eq!(g1, g2);
        assert_eq!(g1, g3);
    }

    /// A tail handed c1 with its norm (`TailNorm`) is the tail of a1 = LeakyReLU(HIN(c1)), and
    /// `conv2d_hin` without y writes the same c1 and statistics as with it.
    #[test]
    fn a_tail_handed_c1_and_its_norm_is_the_tail_of_the_normalised_a1() {
        let cpu = Cpu::new();
        let (n, h, w, cin, c, cout) = (2, 5, 6, 3, 8, 4);
        let (xs, cs, os) = (Shape { n, h, w, c: cin }, Shape { n, h, w, c }, Shape { n, h, w, c: cout });
        let vals =
            |len: usize, k: usize| (0..len).map(|i| ((i * 7 + k * 13) % 23) as f32 / 11.0 - 1.0).collect::<Vec<_>>();
        let x = vals(xs.len(), 1);
        let conv1 = ConvSpec { cin, cout: c, k: 3, stride: 1, pad: 1 };
        let (w1, b1, gamma, beta) = (vals(conv1.weight_len(), 2), vals(c, 3), vals(c / 2, 4), vals(c / 2, 5));
        let (mut c1, mut a1, mut stats) = (vec![0f32; cs.len()], vec![0f32; cs.len()], vec![0f32; 2 * n * (c / 2)]);
        cpu.conv2d_hin(&x, xs, &conv1, &w1, Some(&b1), (&gamma, &beta), true, &mut c1, Some(&mut a1), &mut stats);
        let (mut c1b, mut statsb) = (vec![0f32; cs.len()], vec![0f32; stats.len()]);
        cpu.conv2d_hin(&x, xs, &conv1, &w1, Some(&b1), (&gamma, &beta), true, &mut c1b, None, &mut statsb);
        assert_eq!((&c1, &stats), (&c1b, &statsb));
        let conv2 = ConvSpec { cin: c, cout, k: 3, stride: 1, pad: 1 };
        let id = ConvSpec { cin, cout, k: 1, stride: 1, pad: 0 };
        let (w2, wi) = (vals(conv2.weight_len(), 6), vals(id.weight_len(), 7));
        let tail = |a1, norm| BlockTail {
            a1,
            os,
            conv2: &conv2,
            w2: &w2,
            b2: None,
            x: &x,
            x2: None,
            xs,
            identity: &id,
            w_id: &wi,
            b_id: None,
            norm,
        };
        let (mut want, mut got) = (vec![0f32; os.len()], vec![0f32; os.len()]);
        cpu.block_tail(tail(&a1, None), None, &mut want);
        let norm = TailNorm { stats: &stats, gamma: &gamma, beta: &beta };
        cpu.block_tail(tail(&c1, Some(norm)), None, &mut got);
        assert!(want.iter().any(|v| *v != 0.0), "a result to compare");
        assert_eq!(got, want);
        assert!(!cpu.tail_normalises(&x), "the CPU writes a1");
    }

    /// A kernel choice that is not one is refused before any GPU is touched, naming the variable;
    /// `f16w` reaches pre-training and inference but not joint training (one test: the
    /// variable is process-wide).
    #[test]
    fn a_bad_convolution_kernel_choice_is_a_clear_error() {
        std::env::set_var("SPAHDMAP_GPU_CONV", "f16w");
        assert_eq!(speed_precision().unwrap(), cuda::Precision::F16Wide);
        assert_eq!(unscaled(speed_precision().unwrap()), cuda::Precision::Tf32Wide);
        std::env::set_var("SPAHDMAP_GPU_CONV", "tf32");
        assert_eq!(unscaled(speed_precision().unwrap()), cuda::Precision::Tf32);
        std::env::remove_var("SPAHDMAP_GPU_CONV");
        assert_eq!(speed_precision().unwrap(), cuda::SPEED);
        std::env::set_var("SPAHDMAP_GPU_CONV", "tf16");
        let e = Device::Cuda(0).gpu(cuda::SPEED).err().expect("an error");
        // the CPU needs no kernels: the variable does not concern it
        assert!(Device::Cpu.gpu(cuda::SPEED).unwrap().is_none());
        std::env::remove_var("SPAHDMAP_GPU_CONV");
        let msg = e.to_string();
        assert!(msg.contains("SPAHDMAP_GPU_CONV") && msg.contains("tf16"), "{msg}");
    }
}
