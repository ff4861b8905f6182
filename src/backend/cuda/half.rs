//! f16 activation storage (`Backend::half_activations`: inference and pre-training by default;
//! SPAHDMAP_GPU_HALF=1 keeps it to inference, `0` turns it off). Layers run on f16 directly where a kernel takes them —
//! convolutions reading a multiple of 32 channels, forward and both gradients (the 4 × 4 / 2
//! data gradient by phases), the transposed convolution and its gradients (kernels/conv_h16.cu),
//! the image's layer into f16, the half instance norm, the MSE, the VD prior on f16 logits and
//! the element-wise kernels, the few-channel layers' weight gradients and their data gradient
//! from 3 channels (kernels/conv_few.cuh) — and on f32 copies around the f32 kernel everywhere
//! else an f16 buffer reaches (the output block's 3 → 3 layer forward and its data gradient,
//! the low-rank head's rank-20 input). The
//! weights stay f32 parameters; each layer packs an f16 copy of its own when it runs (a few MB
//! per pass against hundreds of MB of activations); statistics and parameter gradients are f32.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use cudarc::driver::LaunchConfig;

use super::device::{
    cfg1, cfg_elems, conv_flop, conv_geom, tiled_grid, up2_flop, within_fast_div, Cuda, DBuf, SMALL_WEIGHTS, THREADS,
};
use crate::backend::{Backend, BlockHead, BlockHeadGrads, BlockTail, ConvSpec, DxEpilogue, Epilogue, Shape};

/// The f16 GEMM's block tiles (kernels/conv_h16.cu: 128 × 64, and 128 × 32 for at most 32
/// columns, `_h16n`) and its K step.
const TILE: (usize, usize) = (128, 64);
const NARROW: (usize, usize) = (128, 32);
const K_STEP: usize = 32;

/// The halo kernels' output tile side and the result columns a block takes (kernels/conv_halo.cuh).
const HALO_T: usize = 16;
const HALO_N: usize = 32;

/// Dynamic shared memory of the halo kernels, as kernels/conv_halo.cuh asserts: a slot of the
/// forward and data gradient holds a 32-channel chunk's halo (18² pixels × 80 bytes) and
/// weights (9 taps × 32 × 32 columns × 2 bytes), and they launch with two; the weight
/// gradient's two slots a tile's halo and dY (16² × 64 bytes).
pub(super) const HALO_FWD_STAGE: usize = 18 * 18 * 80 + 9 * 32 * 32 * 2;
pub(super) const HALO_DW_SMEM: usize = 2 * (18 * 18 * 80 + 16 * 16 * 64);
const _: () = assert!(HALO_FWD_STAGE == 44_352 && HALO_DW_SMEM == 84_608);
/// The 4 × 4 stride-2 halo kernel's two slots (kernels/conv_halo.cuh `Down4x4`): a 16 × 16
/// output tile's 34 × 34 input pixels of a 16-channel chunk at 48 bytes a pixel, and the 16
/// taps' weights of those channels for 32 columns.
pub(super) const DOWN_SMEM: usize = 2 * (34 * 34 * 48 + 16 * 16 * 32 * 2);
const _: () = assert!(DOWN_SMEM == 143_744);
const DOWN_KERNEL: &str = "conv4_down_halo_fwd_h16";
/// The 3 × 3 halo forward from a multiple of 4 channels, not of 32 (`Halo3x3Four`).
const HALO_FWD4: &str = "conv3_halo_fwd4_h16";
/// The 3 × 3 halo kernels on wgmma (kernels/sm90a/conv_wg.cu, conv_halo.cuh `Halo3x3Wg`): the
/// forward, the forward summing half instance norm's statistics, the data gradient. On a
/// compute-capability 9.0 card they replace the mma.sync kernels of the same names without `_wg`.
const HALO_FWD_WG: &str = "conv3_halo_fwd_wg_h16";
const HALO_STATS_WG: &str = "conv3_halo_fwd_stats_wg_h16";
const HALO_DX_WG: &str = "conv3_halo_dx_wg_h16";
/// ... and a residual block's tail (reading a1, or c1 normalised as staged) and head backward.
const HALO_BLOCK_WG: &str = "conv3_halo_block_wg_h16";
const HALO_BLOCK_NORM_WG: &str = "conv3_halo_block_norm_wg_h16";
const HALO_DX_BLOCK_WG: &str = "conv3_halo_dx_block_wg_h16";
/// ... and the weight gradient (dY staged MN-major, read transposed by the tensor cores).
const HALO_DW_WG: &str = "conv3_halo_dw_wg_h16";
/// The block tail reading conv_1's output and normalising it as it stages (`HaloNorm`).
const HALO_BLOCK_NORM: &str = "conv3_halo_block_norm_h16";
/// The block tail with conv2 from a multiple of 4 channels (`Halo3x3Four`).
const HALO_BLOCK4: &str = "conv3_halo_block4_h16";
/// Its data gradient's two slots (`Down4x4Dx`), each as large as a tile's f32 result (16² × 40
/// floats), which outgrows the 18² × 80-byte halo of dY and four taps' weights.
pub(super) const DOWN_DX_SMEM: usize = 2 * 16 * 16 * 40 * 4;
const DOWN_DX_KERNEL: &str = "conv4_down_halo_dx_h16";
/// Its weight gradient's two slots (`down_dw`): the forward's planes of x and a tile's dY.
pub(super) const DOWN_DW_SMEM: usize = 2 * (34 * 34 * 48 + 16 * 16 * 32 * 2);
const DOWN_DW_KERNEL: &str = "conv4_down_halo_dw_h16";

/// 16 × 16 output tiles of n images of h × w.
fn halo_tiles(n: usize, h: usize, w: usize) -> usize {
    let tiles = n * h.div_ceil(HALO_T) * w.div_ceil(HALO_T);
    assert!(tiles < 1 << 31, "{tiles} tiles of 16 x 16 pixels: use smaller batches");
    tiles
}

/// Packed f16 weights: their address, and the buffer when the caller owns it (not frozen).
struct Packed {
    ptr: u64,
    own: Option<DBuf>,
}

impl Packed {
    fn release(self, g: &Cuda) {
        if let Some(b) = self.own {
            g.release(b);
        }
    }
}

/// kernels/conv_few.cuh: output pixels a block of `few_dw` stages at once, and the most
/// (tap, channel) rows and output channels it takes.
const FEW_PC: usize = 32;
const FEW_ROWS: usize = 320;
const FEW_COLS: usize = 32;

/// Whether `few_dw` takes a layer's weight gradient (as `few_dw_fits` in the kernel, which
/// traps otherwise).
pub(super) fn few_dw_fits(spec: &ConvSpec) -> bool {
    let (rows, cols) = ((spec.k * spec.k * spec.cin).div_ceil(4), spec.cout.div_ceil(4));
    4 * rows <= FEW_ROWS && 4 * cols <= FEW_COLS && rows * cols <= THREADS as usize
}

/// Whether `few_direct_dw` takes a layer's weight gradient from f16 dY (as `few_direct_fits` in
/// kernels/conv_few.cuh): 1 × 1 or 3 × 3, f16 x of 8–64 channels (a power of two) into 3, or 3
/// channels (f16, or the f32 image) into 3, 8, 16 or 32.
fn few_direct_fits(spec: &ConvSpec, x_half: bool) -> bool {
    let ci8 = x_half && matches!(spec.cin, 8 | 16 | 32 | 64);
    let co8 = matches!(spec.cout, 8 | 16 | 32);
    matches!(spec.k, 1 | 3) && ((ci8 && spec.cout == 3) || (spec.cin == 3 && (spec.cout == 3 || co8)))
}

/// Whether the image's layer runs on tensor cores (kernels/conv_img.cuh `img_mma_fits`, which
/// traps otherwise): 3 × 3, stride 1, padding 1, 1–3 channels of the f32 image into a multiple
/// of 8 of at most 32 f16 channels. Its tiles: 8 × 16 output pixels, a block of 128 threads each.
fn image_mma_fits(spec: &ConvSpec) -> bool {
    spec.k == 3
        && spec.stride == 1
        && spec.pad == 1
        && (1..=3).contains(&spec.cin)
        && (8..=32).contains(&spec.cout)
        && spec.cout % 8 == 0
}
const IMAGE_TILE: (usize, usize) = (8, 16);
const IMAGE_THREADS: u32 = 128;

/// Whether `few_out_dx` takes a layer's data gradient: 1 × 1 or 3 × 3, stride 1, at most 4 output channels, a
/// multiple of 8 input channels, the weights within the 48 KB a block stages, f16 dY and dX
/// (and x where LeakyReLU's derivative is fused).
fn few_out_dx_runs(spec: &ConvSpec, dy: &DBuf, dx: &DBuf, x: &DBuf, dxe: DxEpilogue) -> bool {
    matches!(spec.k, 1 | 3)
        && spec.stride == 1
        && spec.cout <= 4
        && spec.cin % 8 == 0
        && spec.k * spec.k * spec.cout * spec.cin <= SMALL_WEIGHTS
        && dy.is_half()
        && dx.is_half()
        && (!dxe.leaky || x.is_half())
}

/// Where the CUDA backend keeps activations in f16, as (inference, training). Both by default
/// (the reference runs both under autocast; on an H200 it took scoring from 102 to 225
/// megapixels/s and a pre-training iteration from 73 to 39 ms, BENCHMARKS.md);
/// `SPAHDMAP_GPU_HALF=1` (or `on`, `true`, `infer`) keeps it to inference, `train` (or `all`) is
/// the default, and `0` (or `off` or anything else) keeps f32 storage throughout.
pub fn half_from_env() -> (bool, bool) {
    half_setting(std::env::var("SPAHDMAP_GPU_HALF").ok().as_deref())
}

/// What a value of SPAHDMAP_GPU_HALF asks for: (inference, training) on f16 storage.
fn half_setting(v: Option<&str>) -> (bool, bool) {
    match v.map(str::trim) {
        None | Some("train" | "all") => (true, true),
        Some("1" | "on" | "true" | "infer") => (true, false),
        _ => (false, false),
    }
}

impl Cuda {
    /// Turn f16 allocation on or off where f16 storage is allowed; the previous setting.
    pub(super) fn set_half_activations(&self, on: bool) -> bool {
        let on = on && self.half_storage.load(Ordering::Relaxed);
        self.half_acts.swap(on, Ordering::Relaxed)
    }

    /// A device buffer of f16 values rounded from `host` (nearest even).
    pub fn upload_half(&self, host: &[f32]) -> DBuf {
        let f = self.upload(host);
        let h = self.alloc_as(host.len(), true);
        launch!(self, "f32_to_h16", cfg_elems(host.len()), self.ptr(&f), self.hptr(&h), host.len() as i64);
        self.release(f);
        h
    }

    /// An f32 copy of `b` where it is stored as f16 (give it back with `release`).
    pub(super) fn widened(&self, b: &DBuf) -> Option<DBuf> {
        if !b.is_half() {
            return None;
        }
        let w = self.alloc_as(self.len(b), false);
        launch!(self, "h16_to_f32", cfg_elems(self.len(b)), self.hptr(b), self.ptr(&w), self.len(b) as i64);
        Some(w)
    }

    /// An f32 stand-in for an output `y` stored as f16 (None: `y` is f32 and written itself);
    /// `narrowed` puts its values into `y` once written.
    pub(super) fn f32_out(&self, y: &DBuf) -> Option<DBuf> {
        y.is_half().then(|| self.alloc_as(self.len(y), false))
    }
    pub(super) fn narrowed(&self, stand_in: Option<DBuf>, y: &mut DBuf) {
        if let Some(t) = stand_in {
            launch!(self, "f32_to_h16", cfg_elems(self.len(y)), self.ptr(&t), self.hptr(y), self.len(y) as i64);
            self.release(t);
        }
    }
    /// Give back widened copies.
    pub(super) fn release_all(&self, bufs: impl IntoIterator<Item = Option<DBuf>>) {
        for b in bufs.into_iter().flatten() {
            self.release(b);
        }
    }

    /// Whether the f16 GEMM runs a layer reading `cin` channels from `x` into `y`: both f16,
    /// whole K steps of one tap (cin a multiple of 32), the indices within its 32-bit divisions.
    pub(super) fn h16_runs(&self, x: &DBuf, y: &DBuf, cin: usize, residual: Option<&DBuf>) -> bool {
        x.is_half() && y.is_half() && cin % K_STEP == 0 && cin > 0 && residual.is_none_or(|r| r.is_half())
    }

    /// The forward or data-gradient halo kernel's launch: one wave of 256-thread blocks, each
    /// taking 32 result columns and walking 16 × 16 output tiles, with two staging slots.
    fn halo_grid(&self, kernel: &'static str, xs: Shape, cols: usize) -> LaunchConfig {
        let nb = cols.div_ceil(HALO_N);
        let walkers =
            (self.sms * self.resident_blocks(kernel, THREADS) / nb).clamp(1, halo_tiles(xs.n, xs.h, xs.w).max(1));
        let smem = super::device::dynamic_smem(kernel).expect("a halo kernel's shared memory");
        LaunchConfig { shared_mem_bytes: smem as u32, ..cfg1(walkers * nb, THREADS) }
    }

    /// Whether inference's block tails normalise c1 as they stage it (`conv3_halo_block_norm_h16`)
    /// for a block input like x: f16 activations on the halo kernels.
    pub(super) fn tail_norm_runs(&self, x: &DBuf) -> bool {
        x.is_half() && self.halo.load(Ordering::Relaxed) && self.has_kernel(HALO_BLOCK_NORM)
    }

    /// Whether a 4 × 4 stride-2 pad-1 layer's data gradient runs on its halo kernel by phases
    /// (`Down4x4Dx`): dY in whole 32-channel chunks, the input's sides even (the phases then
    /// share one grid). The GEMM by phases ran the U-Net's three at ~65 TFLOP/s (H200).
    fn down_dx_fits(&self, spec: &ConvSpec, xs: Shape) -> bool {
        spec.cout % K_STEP == 0 && xs.h % 2 == 0 && xs.w % 2 == 0 && self.down_runs(spec, DOWN_DX_SMEM, DOWN_DX_KERNEL)
    }

    /// What the three 4 × 4 stride-2 halo kernels share: a 4 × 4 stride-2 pad-1 layer, the halo
    /// kernels on with these among them, `smem` bytes of shared memory a block on this card, and
    /// `kernel` in the loaded image.
    fn down_runs(&self, spec: &ConvSpec, smem: usize, kernel: &'static str) -> bool {
        self.halo.load(Ordering::Relaxed)
            && self.halo_down.load(Ordering::Relaxed)
            && (spec.k, spec.stride, spec.pad) == (4, 2, 1)
            && self.smem_optin >= smem
            && self.has_kernel(kernel)
    }

    /// Whether a 4 × 4 stride-2 pad-1 layer's weight gradient runs on its halo kernel
    /// (`down_dw`): x of one tensor in whole 16-channel chunks, dY's columns in eights.
    fn down_dw_fits(&self, spec: &ConvSpec, second: bool) -> bool {
        spec.cin % 16 == 0 && spec.cout % 8 == 0 && !second && self.down_runs(spec, DOWN_DW_SMEM, DOWN_DW_KERNEL)
    }

    /// Whether a 4 × 4 stride-2 pad-1 forward runs on its halo kernel (`Down4x4`): f16 in whole
    /// 16-channel chunks of one tensor, where the card gives a block its 140 KB of shared memory
    /// and the loaded kernels have it (the GEMM's 4 × 4 K steps ran the first down block's at
    /// ~41 TFLOP/s on an H200).
    fn down_fits(&self, spec: &ConvSpec, second: bool) -> bool {
        spec.cin % 16 == 0 && !second && self.down_runs(spec, DOWN_SMEM, DOWN_KERNEL)
    }

    /// Whether a layer whose GEMM gathers a multiple of 32 channels runs on the halo kernels
    /// (kernels/conv_halo.cuh; `use_halo`): 3 × 3, stride 1, pad 1.
    fn halo_fits(&self, spec: &ConvSpec) -> bool {
        self.halo.load(Ordering::Relaxed) && spec.k == 3 && spec.stride == 1 && spec.pad == 1
    }

    /// Whether a block's tail runs as one halo kernel (`conv3_halo_block_h16`): conv2 a halo
    /// layer, the identity 1 × 1 over the same pixels from whole 32-channel chunks of f16 (each
    /// part of a concatenation too), a multiple of 8 output channels, every buffer f16; with a
    /// `TailNorm` (`conv3_halo_block_norm_h16`), a2 not kept and the norm's operands f32; conv2
    /// from a multiple of 4 channels (`conv3_halo_block4_h16`) with any output channels where
    /// a2 is not kept.
    pub(super) fn halo_block_runs(&self, t: &BlockTail<DBuf>, a2: Option<&DBuf>, out: &DBuf) -> bool {
        let (c2, id) = (t.conv2, t.identity);
        let parts_ok = match t.x2 {
            None => t.x.is_half(),
            Some((x2, ca)) => self.cat_runs(t.x, ca, x2, id.cin - ca),
        };
        // conv2 from a multiple of 4 channels, not of 32 (the low-rank head's): `conv3_halo_block4_h16`
        let four = c2.cin % K_STEP != 0;
        self.halo_fits(c2)
            && (!four || (c2.cin % 4 == 0 && t.norm.is_none() && self.has_kernel(HALO_BLOCK4)))
            && (c2.cout % 8 == 0 || (four && a2.is_none()))
            && t.os.c == c2.cout
            && (id.k, id.stride, id.pad, id.cout) == (1, 1, 0, c2.cout)
            && id.cin % K_STEP == 0
            && (t.xs.n, t.xs.h, t.xs.w, t.xs.c) == (t.os.n, t.os.h, t.os.w, id.cin)
            && t.a1.is_half()
            && out.is_half()
            && a2.is_none_or(DBuf::is_half)
            && parts_ok
            && self.has_kernel("conv3_halo_block_h16")
            && t.norm.as_ref().is_none_or(|n| {
                // c1 normalised as staged: inference's (a2 not kept), statistics and parameters f32
                a2.is_none()
                    && !n.stats.is_half()
                    && !n.gamma.is_half()
                    && !n.beta.is_half()
                    && self.len(n.stats) == 2 * t.os.n * (c2.cin / 2)
                    && self.len(n.gamma) == c2.cin / 2
                    && self.len(n.beta) == c2.cin / 2
                    && self.has_kernel(HALO_BLOCK_NORM)
            })
    }

    /// A block's tail in one halo kernel (kernels/conv_halo.cuh `halo_block`), as
    /// `halo_block_runs` allows.
    pub(super) fn halo_block(&self, t: BlockTail<DBuf>, a2: Option<&mut DBuf>, out: &mut DBuf) {
        let (c2, id, os) = (t.conv2, t.identity, t.os);
        // on wgmma (kernels/sm90a/conv_wg.cu) where the card has it: both weights K-major
        let wg =
            c2.cin % K_STEP == 0 && self.has_kernel(if t.norm.is_some() { HALO_BLOCK_NORM_WG } else { HALO_BLOCK_WG });
        let ((w2, np), wid) = if wg {
            let wid = self.packed_weights_k(t.w_id, 1, id.cin, id.cout);
            assert_eq!(wid.1, id.cin, "the kernel takes the identity's rows cid apart");
            (self.packed_weights_k(t.w2, 9, c2.cin, c2.cout), wid.0)
        } else {
            let (p2, pid) =
                (self.packed_weights(t.w2, 9 * c2.cin, c2.cout), self.packed_weights(t.w_id, id.cin, id.cout));
            assert_eq!(p2.1, pid.1, "both weights packed to the same columns");
            (p2, pid.0)
        };
        let (x2, ca) = match t.x2 {
            Some((x2, ca)) => {
                assert!(self.len(t.x) == os.n * os.h * os.w * ca, "block tail: parts of another shape");
                (self.hptr(x2), ca)
            }
            None => (0, 0),
        };
        let c = |v: usize| v as i32;
        let (xp, outp) = (self.hptr(t.x), self.hptr(out));
        if let Some(nm) = &t.norm {
            // the same tail reading c1, normalised as conv2 stages it
            let kernel = if wg { HALO_BLOCK_NORM_WG } else { HALO_BLOCK_NORM };
            let cfg = self.halo_grid(kernel, os, c2.cout);
            let (st, g, b) = (self.ptr(nm.stats), self.ptr(nm.gamma), self.ptr(nm.beta));
            launch!(
                self,
                kernel,
                cfg,
                self.hptr(t.a1),
                w2.ptr,
                c(np),
                self.optr(t.b2),
                xp,
                x2,
                c(ca),
                c(id.cin),
                wid.ptr,
                self.optr(t.b_id),
                outp,
                c(os.n),
                c(os.h),
                c(os.w),
                c(c2.cin),
                c(c2.cout),
                st,
                g,
                b,
                c(c2.cin / 2)
            );
        } else {
            let kernel = match (wg, c2.cin % K_STEP == 0) {
                (true, _) => HALO_BLOCK_WG,
                (false, true) => "conv3_halo_block_h16",
                (false, false) => HALO_BLOCK4,
            };
            let cfg = self.halo_grid(kernel, os, c2.cout);
            let a2p = a2.map_or(0, |a| self.hptr(a));
            launch!(
                self,
                kernel,
                cfg,
                self.hptr(t.a1),
                w2.ptr,
                c(np),
                self.optr(t.b2),
                a2p,
                xp,
                x2,
                c(ca),
                c(id.cin),
                wid.ptr,
                self.optr(t.b_id),
                outp,
                c(os.n),
                c(os.h),
                c(os.w),
                c(c2.cin),
                c(c2.cout)
            );
        }
        self.profile_flop(conv_flop(os.n * os.h * os.w, c2) + conv_flop(os.n * os.h * os.w, id));
        w2.release(self);
        wid.release(self);
    }

    /// Whether the forward f16 GEMM runs a layer in four-channel pieces (`conv2d_fwd4_*`; a
    /// 3 × 3 stride-1 one runs on `conv3_halo_fwd4_h16` where the halo kernels are on): as
    /// `h16_runs`, for cin a multiple of 4 (the low-rank head's 20 channels), where an f32 copy
    /// of x and y would otherwise go around the f32 kernel.
    pub(super) fn h16_fwd4_runs(&self, x: &DBuf, y: &DBuf, cin: usize, residual: Option<&DBuf>) -> bool {
        x.is_half() && y.is_half() && cin % 4 == 0 && cin > 0 && residual.is_none_or(|r| r.is_half())
    }

    /// The f16 copy of f32 weights [rows][cols] the f16 GEMM reads: rows `np` apart (cols
    /// rounded up to 8, zero past them), so each 16-byte copy of a row stays aligned.
    /// While the weights are frozen (`Backend::freeze_weights`: inference) each packing is
    /// kept and handed out again; the copy is then the cache's (None to release).
    fn packed_weights(&self, w: &DBuf, rows: usize, cols: usize) -> (Packed, usize) {
        self.packed_as(w, 1, rows, cols, false)
    }

    /// A layer's f32 weights [tap][cin][cout] packed K-major for the wgmma kernels
    /// ([tap][cout][cin] f16, rows cin rounded up to 8 apart: `pack_weights_t_h16`), kept as
    /// `packed_weights`'.
    fn packed_weights_k(&self, w: &DBuf, taps: usize, cin: usize, cout: usize) -> (Packed, usize) {
        self.packed_as(w, taps, cin, cout, true)
    }

    /// `taps` × `cin` rows of `cols` columns, as [rows][np] or K-major.
    fn packed_as(&self, w: &DBuf, taps: usize, cin: usize, cols: usize, k_major: bool) -> (Packed, usize) {
        let rows = taps * cin;
        let key = (self.addr(w), rows, cols, k_major);
        // a capture records the packing instead: the cache is not touched under it
        let cache = self.capture.lock().unwrap().is_none();
        if cache {
            if let Some((p, np)) = self.frozen.lock().unwrap().as_ref().and_then(|m| m.get(&key)) {
                return (Packed { ptr: self.hptr(p), own: None }, *np);
            }
        }
        let (p, np) = if k_major {
            self.packed_weights_t(w, taps, cin, cols, (cin * cols, cols))
        } else {
            self.pack_weights(w, rows, cols)
        };
        let ptr = self.hptr(&p);
        if cache {
            if let Some(m) = self.frozen.lock().unwrap().as_mut() {
                m.insert(key, (p, np));
                return (Packed { ptr, own: None }, np);
            }
        }
        (Packed { ptr, own: Some(p) }, np)
    }

    /// Drop the frozen packings (`Backend::freeze_weights`), or start keeping them.
    pub(super) fn set_frozen(&self, on: bool) {
        let old = std::mem::replace(&mut *self.frozen.lock().unwrap(), on.then(HashMap::new));
        for (p, _) in old.into_iter().flat_map(|m| m.into_values()) {
            self.release(p);
        }
    }

    fn pack_weights(&self, w: &DBuf, rows: usize, cols: usize) -> (DBuf, usize) {
        assert_eq!(self.len(w), rows * cols, "weights of another shape");
        let np = cols.next_multiple_of(8);
        let p = self.alloc_as(rows * np, true);
        launch!(
            self,
            "pack_weights_h16",
            cfg_elems(rows * np),
            self.ptr(w),
            rows as i64,
            cols as i32,
            np as i32,
            self.hptr(&p)
        );
        (p, np)
    }

    /// `Backend::conv2d` on f16 x, residual and y (`h16_runs` or `h16_fwd4_runs`), or with
    /// `second` = (b, ca) `Backend::conv2d_cat` of [x | b] (`cat_runs`; x the first ca channels).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_h16(
        &self,
        x: &DBuf,
        second: Option<(&DBuf, usize)>,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        bias: Option<&DBuf>,
        epi: Epilogue<DBuf>,
        y: &mut DBuf,
    ) {
        let wg = self.wg_fwd_runs(spec);
        let (wh, np) = if wg {
            self.packed_weights_k(w, 9, spec.cin, spec.cout)
        } else {
            self.packed_weights(w, spec.k * spec.k * spec.cin, spec.cout)
        };
        self.conv2d_h16_packed(x, second, xs, spec, wh.ptr, np, bias, epi, y, wg);
        wh.release(self);
    }

    /// Whether a layer's f16 forward runs on wgmma (`conv3_halo_fwd_wg_h16`, weights K-major):
    /// a halo layer from whole 32-channel chunks on a card whose sm_90a image has the kernel.
    fn wg_fwd_runs(&self, spec: &ConvSpec) -> bool {
        spec.cin % K_STEP == 0 && self.halo_fits(spec) && self.has_kernel(HALO_FWD_WG)
    }

    /// Whether the f16 GEMM reads [a | b] itself (`conv2d_fwd_cat_*`): both f16 with whole K
    /// steps in each (channels multiples of 32).
    pub(super) fn cat_runs(&self, a: &DBuf, ca: usize, b: &DBuf, cb: usize) -> bool {
        a.is_half() && b.is_half() && ca % K_STEP == 0 && cb % K_STEP == 0 && ca > 0 && cb > 0
    }

    /// The f16 forward on weights packed already ([K][np] f16 at `wh`): the halo kernels for 3 × 3
    /// stride-1 layers (from whole 32-channel chunks, or from a multiple of 4 channels zero-filled
    /// to a chunk) and 4 × 4 stride-2 ones; else the GEMM in whole K steps of one tap, in
    /// four-channel pieces (cin not a multiple of 32), or from two parts.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_h16_packed(
        &self,
        x: &DBuf,
        second: Option<(&DBuf, usize)>,
        xs: Shape,
        spec: &ConvSpec,
        wh: u64,
        np: usize,
        bias: Option<&DBuf>,
        epi: Epilogue<DBuf>,
        y: &mut DBuf,
        k_major: bool,
    ) {
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let pixels = xs.n * oh * ow;
        within_fast_div(pixels);
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        let res = epi.residual.map_or(0, |r| self.hptr(r));
        let (x2, ca) = match second {
            Some((b, ca)) => {
                let px = xs.n * xs.h * xs.w;
                assert!(
                    self.len(x) == px * ca && self.len(b) == px * (xs.c - ca),
                    "conv2d_cat: parts of another shape"
                );
                (self.hptr(b), ca)
            }
            None => (0, 0),
        };
        let (kernel, cfg) = if k_major {
            // weights packed for it (`wg_fwd_runs`)
            (HALO_FWD_WG, self.halo_grid(HALO_FWD_WG, xs, spec.cout))
        } else if spec.cin % K_STEP == 0 && self.halo_fits(spec) {
            ("conv3_halo_fwd_h16", self.halo_grid("conv3_halo_fwd_h16", xs, spec.cout))
        } else if spec.cin % 4 == 0 && second.is_none() && self.halo_fits(spec) && self.has_kernel(HALO_FWD4) {
            // 32-channel chunks, zero past cin (the low-rank head's 20 → 20 layer: one)
            (HALO_FWD4, self.halo_grid(HALO_FWD4, xs, spec.cout))
        } else if self.down_fits(spec, second.is_some()) {
            (DOWN_KERNEL, self.halo_grid(DOWN_KERNEL, Shape { h: oh, w: ow, ..xs }, spec.cout))
        } else {
            let names = match (second.is_some(), spec.cin % K_STEP == 0) {
                (true, _) => ["conv2d_fwd_cat_h16n", "conv2d_fwd_cat_h16"],
                (false, true) => ["conv2d_fwd_h16n", "conv2d_fwd_h16"],
                (false, false) => ["conv2d_fwd4_h16n", "conv2d_fwd4_h16"],
            };
            let (kernel, tile) = if spec.cout <= 32 { (names[0], NARROW) } else { (names[1], TILE) };
            (kernel, tiled_grid(pixels, spec.cout, 1, tile))
        };
        launch!(
            self,
            kernel,
            cfg,
            self.hptr(x),
            wh,
            np as i32,
            self.optr(bias),
            res,
            self.hptr(y),
            epi.leaky as i32,
            n,
            h,
            wd,
            cin,
            cout,
            k,
            st,
            pd,
            x2,
            ca as i32
        );
        self.profile_flop(conv_flop(pixels, spec));
    }

    /// A data gradient's weights packed [tap][co][ci] f16 (rows np = cin rounded up to 8) from
    /// f32 weights whose element (tap, ci, co) sits at tap·tap_stride + ci·ci_stride + co.
    fn packed_weights_t(
        &self,
        w: &DBuf,
        taps: usize,
        cin: usize,
        cout: usize,
        strides: (usize, usize),
    ) -> (DBuf, usize) {
        assert_eq!(self.len(w), taps * cin * cout, "weights of another shape");
        let np = cin.next_multiple_of(8);
        let wt = self.alloc_as(taps * cout * np, true);
        launch!(
            self,
            "pack_weights_t_h16",
            cfg_elems(taps * cout * np),
            self.ptr(w),
            taps as i32,
            cin as i32,
            cout as i32,
            strides.0 as i64,
            strides.1 as i64,
            np as i32,
            self.hptr(&wt)
        );
        (wt, np)
    }

    /// `Backend::conv_transpose2_backward` on f16 x, dY (and dX): false where the f16 kernels do
    /// not take it (then nothing ran). The 2 × 2 / 2 transposed convolution's data gradient is
    /// the forward convolution of dY (2h × 2w, cout channels; k 2, stride 2) into cin channels,
    /// and its weight gradient that convolution's weight gradient with X in dY's place.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn up2_backward_h16(
        &self,
        x: &DBuf,
        xs: Shape,
        cout: usize,
        w: &DBuf,
        dy: &DBuf,
        dx: Option<&mut DBuf>,
        dw: &mut DBuf,
        db: &mut DBuf,
    ) -> bool {
        let takes = x.is_half() && dy.is_half() && dx.as_ref().is_none_or(|d| d.is_half());
        if !takes || cout % K_STEP != 0 || xs.c % 8 != 0 {
            return false;
        }
        let spec = ConvSpec { cin: cout, cout: xs.c, k: 2, stride: 2, pad: 0 };
        let ys = Shape { n: xs.n, h: 2 * xs.h, w: 2 * xs.w, c: cout };
        if let Some(dx) = dx {
            let (wt, np) = self.packed_weights_t(w, 4, xs.c, cout, (cout, 4 * cout));
            self.conv2d_h16_packed(dy, None, ys, &spec, self.hptr(&wt), np, None, Epilogue::NONE, dx, false);
            self.release(wt);
        }
        // [(tap, co)][ci], then into the weights' [ci][tap][co]
        let mut t = self.alloc_as(self.len(dw), false);
        self.conv_dw_h16(dy, None, ys, &spec, x, &mut t, None);
        launch!(
            self,
            "up2_dw_unpack_f32",
            cfg_elems(self.len(dw)),
            self.ptr(&t),
            xs.c as i32,
            cout as i32,
            self.ptr(dw)
        );
        self.release(t);
        self.colsum_into("colsum_h16", self.hptr(dy), ys.n * ys.h * ys.w, cout, db);
        true
    }

    /// The image's layer (f32 x, few channels) into f16 y on the speed path: on tensor cores
    /// (`conv2d_fwd_image_mma_h16`) where it takes the layer, else the direct kernel
    /// (`conv2d_fwd_small*_h16`); false where neither does.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn image_into_h16(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        bias: Option<&DBuf>,
        epi: Epilogue<DBuf>,
        y: &mut DBuf,
    ) -> bool {
        if x.is_half() || !y.is_half() || epi.residual.is_some_and(|r| !r.is_half()) {
            return false;
        }
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        const IMAGE_FWD: &str = "conv2d_fwd_image_mma_h16";
        if self.wide() && epi.residual.is_none() && image_mma_fits(spec) && self.has_kernel(IMAGE_FWD) {
            let (n, h, wd, cin, cout, ..) = conv_geom(xs, spec);
            let blocks = self.image_blocks(IMAGE_FWD, xs);
            let (xp, wp, bp, yp) = (self.ptr(x), self.ptr(w), self.optr(bias), self.hptr(y));
            launch!(
                self,
                IMAGE_FWD,
                cfg1(blocks, IMAGE_THREADS),
                xp,
                wp,
                bp,
                yp,
                epi.leaky as i32,
                n,
                h,
                wd,
                cin,
                cout
            );
            self.profile_flop(conv_flop(xs.n * oh * ow, spec));
            return true;
        }
        let names =
            ["conv2d_fwd_small1_h16", "conv2d_fwd_small2_h16", "conv2d_fwd_small4_h16", "conv2d_fwd_small8_h16"];
        let pixels = xs.n * oh * ow;
        let Some((kernel, cfg)) = self.small_conv(spec, &names, spec.cout, spec.k * spec.k * spec.cin, pixels) else {
            return false;
        };
        let res = epi.residual.map_or(0, |r| self.hptr(r));
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        launch!(
            self,
            kernel,
            cfg,
            self.ptr(x),
            self.ptr(w),
            self.optr(bias),
            res,
            self.hptr(y),
            epi.leaky as i32,
            n,
            h,
            wd,
            cin,
            cout,
            k,
            st,
            pd
        );
        self.profile_flop(conv_flop(pixels, spec));
        true
    }

    /// `Backend::conv2d_backward` where any of x, dY, dX is f16: the data gradient of a layer
    /// reading a multiple of 32 channels of dY whose kernel its stride divides (stride 1, or by
    /// phases), and the weight gradient where both channel counts divide by 8, on f16 directly;
    /// the others on f32 copies.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_backward_h16(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        dy: &DBuf,
        dx: Option<&mut DBuf>,
        dxe: DxEpilogue,
        dw: &mut DBuf,
        db: Option<&mut DBuf>,
    ) {
        if let Some(dx) = dx {
            let native = dy.is_half()
                && dx.is_half()
                && spec.k % spec.stride == 0
                && spec.cout % K_STEP == 0
                && (!dxe.leaky || x.is_half());
            if native {
                self.conv_dx_h16(x, xs, spec, w, dy, dx, dxe);
            } else if few_out_dx_runs(spec, dy, dx, x, dxe) {
                self.conv_dx_few(x, xs, spec, w, dy, dx, dxe);
            } else {
                let (dyw, xw) = (self.widened(dy), if dxe.leaky { self.widened(x) } else { None });
                // the old values where the gradient adds to them
                let mut dxw = match (dx.is_half(), dxe.accumulate) {
                    (false, _) => None,
                    (true, true) => self.widened(dx),
                    (true, false) => self.f32_out(dx),
                };
                self.conv_dx_f32(
                    xw.as_ref().unwrap_or(x),
                    xs,
                    spec,
                    w,
                    dyw.as_ref().unwrap_or(dy),
                    dxw.as_mut().unwrap_or(&mut *dx),
                    dxe,
                );
                self.narrowed(dxw, dx);
                self.release_all([dyw, xw]);
            }
        }
        if x.is_half() && dy.is_half() && spec.cin % 8 == 0 && spec.cout % 8 == 0 {
            self.conv_dw_h16(x, None, xs, spec, dy, dw, db);
        } else if dy.is_half() && (few_dw_fits(spec) || few_direct_fits(spec, x.is_half())) {
            self.conv_dw_few(x, xs, spec, dy, dw, db);
        } else {
            let (xw, dyw) = (self.widened(x), self.widened(dy));
            self.conv_dw_f32(xw.as_ref().unwrap_or(x), xs, spec, dyw.as_ref().unwrap_or(dy), dw, db);
            self.release_all([xw, dyw]);
        }
    }

    /// The f16 data gradient (kernels/conv_h16.cu `conv2d_bwd_data_h16[n]`).
    #[allow(clippy::too_many_arguments)]
    fn conv_dx_h16(&self, x: &DBuf, xs: Shape, spec: &ConvSpec, w: &DBuf, dy: &DBuf, dx: &mut DBuf, dxe: DxEpilogue) {
        let pixels = xs.n * xs.h * xs.w;
        within_fast_div(pixels);
        let taps = spec.k * spec.k;
        // the wgmma kernel reads the forward's packing, [tap][ci][co]: K-major for dX
        let wg = self.halo_fits(spec) && self.has_kernel(HALO_DX_WG);
        let (wt, np) = if wg {
            self.pack_weights(w, taps * spec.cin, spec.cout)
        } else {
            self.packed_weights_t(w, taps, spec.cin, spec.cout, (spec.cin * spec.cout, spec.cout))
        };
        let narrow = spec.cin <= 32;
        let tile = if narrow { NARROW } else { TILE };
        let xin = if dxe.leaky { self.hptr(x) } else { 0 };
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        let (dyp, wtp, dxp, acc) = (self.hptr(dy), self.hptr(&wt), self.hptr(dx), dxe.accumulate as i32);
        // strided layers by phases (their kernel divides by the stride): one grid layer each
        let s = spec.stride;
        let (kernel, grid) = match (s > 1, narrow) {
            _ if wg => (HALO_DX_WG, self.halo_grid(HALO_DX_WG, xs, spec.cin)),
            _ if self.halo_fits(spec) => ("conv3_halo_dx_h16", self.halo_grid("conv3_halo_dx_h16", xs, spec.cin)),
            // the phases' grid: four (image, phase) pairs an image over dY's pixels
            _ if self.down_dx_fits(spec, xs) => {
                let phases = Shape { n: 4 * xs.n, h: xs.h / 2, w: xs.w / 2, ..xs };
                (DOWN_DX_KERNEL, self.halo_grid(DOWN_DX_KERNEL, phases, spec.cin))
            }
            (false, true) => ("conv2d_bwd_data_h16n", tiled_grid(pixels, spec.cin, 1, tile)),
            (false, false) => ("conv2d_bwd_data_h16", tiled_grid(pixels, spec.cin, 1, tile)),
            (true, n) => {
                let rows = xs.n * xs.h.div_ceil(s) * xs.w.div_ceil(s);
                let name = if n { "conv2d_bwd_data_phased_h16n" } else { "conv2d_bwd_data_phased_h16" };
                (name, tiled_grid(rows, spec.cin, s * s, tile))
            }
        };
        launch!(self, kernel, grid, dyp, wtp, np as i32, xin, dxp, acc, n, h, wd, cin, cout, k, st, pd);
        self.release(wt);
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        self.profile_flop(conv_flop(xs.n * oh * ow, spec));
    }

    /// The f16 weight gradient (`conv2d_bwd_weight_h16[n]`, K split across blocks into the
    /// zeroed f32 dW) and the bias gradient (`colsum_h16`). (Summing dY's columns in the
    /// weight gradient's first row of blocks instead, from a second load of the dY they copy,
    /// cost those kernels 2.5 ms an iteration on the H200 for the 0.9 ms colsum took.)
    /// With `second` = (x2, ca), x is the concatenation [x (ca channels) | x2], read in place
    /// (ca a multiple of 32 on the halo kernel, of 8 on the GEMM).
    #[allow(clippy::too_many_arguments)]
    fn conv_dw_h16(
        &self,
        x: &DBuf,
        second: Option<(&DBuf, usize)>,
        xs: Shape,
        spec: &ConvSpec,
        dy: &DBuf,
        dw: &mut DBuf,
        db: Option<&mut DBuf>,
    ) {
        let (x2, ca) = second.map_or((0, 0), |(b, ca)| (self.hptr(b), ca as i32));
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let p = xs.n * oh * ow;
        let rows = spec.k * spec.k * spec.cin;
        within_fast_div(p.max(rows));
        self.zero_for_sums(dw);
        if spec.cin % K_STEP == 0 && self.halo_fits(spec) {
            // one wave of blocks walking the tiles, a grid row per (32 channels, 32 columns),
            // the bias gradient on their MMAs (no colsum); on wgmma where the card has it
            let kernel = if self.has_kernel(HALO_DW_WG) { HALO_DW_WG } else { "conv3_halo_dw_h16" };
            let tiles = halo_tiles(xs.n, xs.h, xs.w);
            let rows = spec.cin / K_STEP * spec.cout.div_ceil(HALO_N);
            let wave = self.sms * self.resident_blocks(kernel, THREADS);
            let blocks = tiles.min(wave.div_ceil(rows));
            let dbp = db.map_or(0, |d| {
                self.zero_for_sums(d);
                self.ptr(d)
            });
            let (xp, dyp, dwp) = (self.hptr(x), self.hptr(dy), self.ptr(dw));
            let (h, wd, cin, cout) = (xs.h as i32, xs.w as i32, spec.cin as i32, spec.cout as i32);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, rows as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: HALO_DW_SMEM as u32,
            };
            launch!(self, kernel, cfg, xp, dyp, dwp, dbp, tiles as i32, h, wd, cin, cout, x2, ca);
            self.profile_flop(conv_flop(p, spec));
            return;
        }
        if self.down_dw_fits(spec, second.is_some()) {
            // as the 3 × 3 layers': a wave of tile walkers, a grid row per (16 channels, 32
            // columns); the bias gradient (the U-Net's downsampling has none) by column sums
            let tiles = halo_tiles(xs.n, oh, ow);
            let rows = spec.cin / 16 * spec.cout.div_ceil(HALO_N);
            let wave = self.sms * self.resident_blocks(DOWN_DW_KERNEL, THREADS);
            let cfg = LaunchConfig {
                grid_dim: (tiles.min(wave.div_ceil(rows)) as u32, rows as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: DOWN_DW_SMEM as u32,
            };
            let (xp, dyp, dwp) = (self.hptr(x), self.hptr(dy), self.ptr(dw));
            let (h, wd, cin, cout) = (xs.h as i32, xs.w as i32, spec.cin as i32, spec.cout as i32);
            launch!(self, DOWN_DW_KERNEL, cfg, xp, dyp, dwp, tiles as i32, h, wd, cin, cout);
            self.profile_flop(conv_flop(p, spec));
            if let Some(db) = db {
                self.colsum_into("colsum_h16", dyp, p, spec.cout, db);
            }
            return;
        }
        let (kernel, tile) =
            if spec.cout <= 32 { ("conv2d_bwd_weight_h16n", NARROW) } else { ("conv2d_bwd_weight_h16", TILE) };
        let tiles = rows.div_ceil(tile.0) * spec.cout.div_ceil(tile.1);
        let splits = self.wave_splits(kernel, tiles, p);
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        launch!(
            self,
            kernel,
            tiled_grid(rows, spec.cout, splits, tile),
            self.hptr(x),
            self.hptr(dy),
            self.ptr(dw),
            n,
            h,
            wd,
            cin,
            cout,
            k,
            st,
            pd,
            x2,
            ca
        );
        self.profile_flop(conv_flop(p, spec));
        if let Some(db) = db {
            self.colsum_into("colsum_h16", self.hptr(dy), p, spec.cout, db);
        }
    }

    /// Whether a layer with half instance norm after it runs as the halo forward summing the
    /// statistics (`halo_hin`): a halo layer, stride 1, from whole 32-channel chunks of f16 into
    /// f16 c1 and y of a multiple of 8 channels, the statistics f32.
    pub(super) fn halo_stats_runs(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        c1: &DBuf,
        y: Option<&DBuf>,
        stats: &DBuf,
    ) -> bool {
        let os = xs.with_c(spec.cout);
        self.halo_fits(spec)
            && xs.c == spec.cin
            && spec.cin % K_STEP == 0
            && spec.cout % 8 == 0
            && x.is_half()
            && c1.is_half()
            && y.is_none_or(|y| y.is_half() && self.len(y) == os.len())
            && !stats.is_half()
            && self.len(x) == xs.len()
            && self.len(c1) == os.len()
            && self.len(stats) == 2 * os.n * (os.c / 2)
            // (the wgmma twin runs in its place where the card has it; withholding this one
            // withholds both)
            && self.has_kernel("conv3_halo_fwd_stats_h16")
            && self.has_kernel("finish_moments_shifted")
    }

    /// `Backend::conv2d_hin` as `halo_stats_runs` allows: the halo forward into c1 adding
    /// the statistics' shifted sums as it writes (`conv3_halo_fwd_stats_h16`), the moments from
    /// them (`finish_moments_shifted`), then half instance norm's apply pass.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn halo_hin(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        bias: Option<&DBuf>,
        norm: (&DBuf, &DBuf),
        leaky: bool,
        c1: &mut DBuf,
        y: Option<&mut DBuf>,
        stats: &mut DBuf,
    ) {
        let os = xs.with_c(spec.cout);
        within_fast_div(xs.n * xs.h * xs.w);
        let half = os.c / 2;
        let at = os.n * half;
        let s0 = self.scratch(&self.f64s, 2 * at);
        let s1 = s0 + (at * 8) as u64;
        self.zero_bytes(s0, 2 * at * 8);
        let wg = self.has_kernel(HALO_STATS_WG);
        let (wt, np) = if wg {
            self.packed_weights_k(w, 9, spec.cin, spec.cout)
        } else {
            self.packed_weights(w, 9 * spec.cin, spec.cout)
        };
        let kernel = if wg { HALO_STATS_WG } else { "conv3_halo_fwd_stats_h16" };
        let cfg = self.halo_grid(kernel, xs, spec.cout);
        let c = |v: usize| v as i32;
        let (xp, bp, c1p) = (self.hptr(x), self.optr(bias), self.hptr(c1));
        let (n, h, wd, cin, cout) = (c(xs.n), c(xs.h), c(xs.w), c(spec.cin), c(spec.cout));
        launch!(self, kernel, cfg, xp, wt.ptr, c(np), bp, c1p, n, h, wd, cin, cout, s0, s1, c(half));
        self.profile_flop(conv_flop(xs.n * xs.h * xs.w, spec));
        wt.release(self);
        let st = self.ptr(stats);
        let rstd = st + (at * 4) as u64;
        let hw = (os.h * os.w) as i64;
        launch!(self, "finish_moments_shifted", cfg_elems(at), s0, s1, bp, at as i64, c(half), hw, st, rstd);
        if let Some(y) = y {
            self.hin_apply_at("hin_apply_h16", c1p, os, st, norm.0, norm.1, leaky, self.hptr(y));
        }
    }

    /// Whether a residual block's head backward runs on the halo kernels (`halo_head`): conv_1
    /// a halo layer, the identity 1 × 1 over the same pixels, both reading whole 32-channel
    /// chunks of f16 input (each part of a concatenation too) and of f16 gradients, the input's
    /// gradient (where wanted) in f16 parts shaped as the input's.
    pub(super) fn halo_head_runs(&self, h: &BlockHead<DBuf>, dx: Option<(&DBuf, Option<&DBuf>)>) -> bool {
        let (c1, id, xs) = (h.conv1, h.identity, h.xs);
        let px = xs.n * xs.h * xs.w;
        let parts_ok = match h.x2 {
            None => h.x.is_half() && self.len(h.x) == xs.len(),
            Some((x2, ca)) => {
                self.cat_runs(h.x, ca, x2, xs.c - ca) && self.len(h.x) == px * ca && self.len(x2) == px * (xs.c - ca)
            }
        };
        let dx_ok = match dx {
            None => true,
            Some((a, b)) => {
                let first = h.x2.map_or(xs.c, |(_, ca)| ca);
                a.is_half()
                    && self.len(a) == px * first
                    && b.is_none_or(|b| b.is_half() && self.len(b) == px * (xs.c - first))
                    && b.is_some() == h.x2.is_some()
            }
        };
        self.halo_fits(c1)
            && c1.cin == xs.c
            && xs.c % K_STEP == 0
            && c1.cout % K_STEP == 0
            && (id.k, id.stride, id.pad, id.cin) == (1, 1, 0, xs.c)
            && id.cout % K_STEP == 0
            && h.dc1.is_half()
            && h.d_out.is_half()
            && self.len(h.dc1) == px * c1.cout
            && self.len(h.d_out) == px * id.cout
            && parts_ok
            && dx_ok
            // kernels of this version (the weight gradients' two-part reads came with it)
            && self.has_kernel("conv3_halo_dx_block_h16")
    }

    /// A residual block's head backward on the halo kernels, as `halo_head_runs` allows: the
    /// identity's dW (GEMM) and dB (column sums), conv_1's dW and dB (`conv3_halo_dw_h16`), each
    /// reading a two-part input in place, and the input's gradient conv_1ᵀ(dc1) + identityᵀ(d_out)
    /// from one kernel (`conv3_halo_dx_block_h16`), written in the input's parts.
    pub(super) fn halo_head(
        &self,
        h: BlockHead<DBuf>,
        g: BlockHeadGrads<DBuf>,
        dx: Option<(&mut DBuf, Option<&mut DBuf>)>,
    ) {
        let (c1, id, xs) = (h.conv1, h.identity, h.xs);
        within_fast_div(xs.n * xs.h * xs.w);
        self.conv_dw_h16(h.x, h.x2, xs, id, h.d_out, g.w_id, Some(g.b_id));
        self.conv_dw_h16(h.x, h.x2, xs, c1, h.dc1, g.w1, Some(g.b1));
        let Some((dx, dx2)) = dx else { return };
        // on wgmma where the card has it: the forward's packings, K-major for dX
        let wg = self.has_kernel(HALO_DX_BLOCK_WG);
        let ((w1, np), wid) = if wg {
            let wid = self.pack_weights(h.w_id, xs.c, id.cout);
            assert_eq!(wid.1, id.cout, "the kernel takes the identity's rows cid apart");
            (self.pack_weights(h.w1, 9 * xs.c, c1.cout), wid.0)
        } else {
            let w1 = self.packed_weights_t(h.w1, 9, xs.c, c1.cout, (xs.c * c1.cout, c1.cout));
            let wid = self.packed_weights_t(h.w_id, 1, xs.c, id.cout, (xs.c * id.cout, id.cout));
            assert_eq!(w1.1, wid.1, "both weights packed to the same columns");
            (w1, wid.0)
        };
        let (dx2p, ca) = match (dx2, h.x2) {
            (Some(d), Some((_, ca))) => (self.hptr(d), ca),
            _ => (0, 0),
        };
        let kernel = if wg { HALO_DX_BLOCK_WG } else { "conv3_halo_dx_block_h16" };
        let cfg = self.halo_grid(kernel, xs, xs.c);
        let c = |v: usize| v as i32;
        let (dc1, d_out, dxp) = (self.hptr(h.dc1), self.hptr(h.d_out), self.hptr(dx));
        let (wp, widp) = (self.hptr(&w1), self.hptr(&wid));
        launch!(
            self,
            kernel,
            cfg,
            dc1,
            wp,
            c(np),
            d_out,
            widp,
            c(id.cout),
            dxp,
            dx2p,
            c(ca),
            c(xs.n),
            c(xs.h),
            c(xs.w),
            c(xs.c),
            c(c1.cout)
        );
        let px = xs.n * xs.h * xs.w;
        self.profile_flop(conv_flop(px, c1) + conv_flop(px, id));
        self.release(w1);
        self.release(wid);
    }

    /// The weight and bias gradients of a few-channel layer (kernels/conv_few.cuh `few_direct_dw`
    /// where it takes the layer, else `few_dw`): x and dY f16, the f32 image of the first layer
    /// with f16 dY, or both f32 (f32 storage).
    pub(super) fn conv_dw_few(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        dy: &DBuf,
        dw: &mut DBuf,
        db: Option<&mut DBuf>,
    ) {
        let (kernel, colsum) = match (x.is_half(), dy.is_half()) {
            (true, true) => ("conv2d_bwd_weight_few_h16", "colsum_h16"),
            (false, true) => ("conv2d_bwd_weight_few_img_h16", "colsum_h16"),
            (false, false) => ("conv2d_bwd_weight_few_f32", "colsum_f32"),
            (true, false) => unreachable!("f16 x with f32 dY: conv2d_backward_h16 widens x first"),
        };
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let p = xs.n * oh * ow;
        within_fast_div(p);
        self.zero_for_sums(dw);
        const IMAGE_DW: &str = "conv2d_bwd_weight_image_mma_h16";
        if self.wide() && !x.is_half() && dy.is_half() && image_mma_fits(spec) && self.has_kernel(IMAGE_DW) {
            // the image's layer on tensor cores: the bias gradient rides on the same product
            let dbp = db.map_or(0, |d| {
                self.zero_for_sums(d);
                self.ptr(d)
            });
            let (n, h, wd, cin, cout, ..) = conv_geom(xs, spec);
            let blocks = self.image_blocks(IMAGE_DW, xs);
            let (xp, dyp, dwp) = (self.ptr(x), self.hptr(dy), self.ptr(dw));
            launch!(self, IMAGE_DW, cfg1(blocks, IMAGE_THREADS), xp, dyp, dwp, dbp, n, h, wd, cin, cout);
            self.profile_flop(conv_flop(p, spec));
            return;
        }
        if dy.is_half() && few_direct_fits(spec, x.is_half()) {
            // the U-Net's few-channel layers without staging: one wave of blocks, a grid row per
            // tap row, each block's sums added with one atomic per weight; the bias on the way
            let kernel = if x.is_half() { "conv2d_bwd_weight_direct_h16" } else { "conv2d_bwd_weight_direct_img_h16" };
            let wave = self.sms * self.resident_blocks(kernel, THREADS);
            let blocks = wave.div_ceil(spec.k).clamp(1, p.div_ceil(THREADS as usize).max(1));
            let dbp = db.map_or(0, |d| {
                self.zero_for_sums(d);
                self.ptr(d)
            });
            let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
            let (xp, dyp, dwp) = (self.addr(x), self.hptr(dy), self.ptr(dw));
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, spec.k as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, kernel, cfg, xp, dyp, dwp, dbp, n, h, wd, cin, cout, k, st, pd);
            self.profile_flop(conv_flop(p, spec));
            return;
        }
        // one wave (three blocks an SM) staging FEW_PC pixels at a time, grid-strided: each block's
        // sums reach dW with one atomic per weight
        let blocks = p.div_ceil(FEW_PC).clamp(1, 3 * self.sms);
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        let (xp, dyp, dwp) = (self.addr(x), self.addr(dy), self.ptr(dw));
        launch!(self, kernel, cfg1(blocks, THREADS), xp, dyp, dwp, n, h, wd, cin, cout, k, st, pd);
        self.profile_flop(conv_flop(p, spec));
        if let Some(db) = db {
            self.colsum_into(colsum, dyp, p, spec.cout, db);
        }
    }

    /// Blocks of an image-layer kernel (kernels/conv_img.cuh) over the 8 × 16 tiles of xs: one
    /// wave, each block walking tiles grid-strided (the weights staged once a block).
    fn image_blocks(&self, kernel: &'static str, xs: Shape) -> usize {
        let tiles = xs.n * xs.h.div_ceil(IMAGE_TILE.0) * xs.w.div_ceil(IMAGE_TILE.1);
        tiles.clamp(1, self.sms * self.resident_blocks(kernel, IMAGE_THREADS))
    }

    /// The data gradient of a stride-1 layer from at most 4 f16 channels into f16 (kernels/conv_few.cuh
    /// `few_out_dx`), one thread per 8 input channels of a pixel, the epilogue fused.
    #[allow(clippy::too_many_arguments)]
    fn conv_dx_few(&self, x: &DBuf, xs: Shape, spec: &ConvSpec, w: &DBuf, dy: &DBuf, dx: &mut DBuf, dxe: DxEpilogue) {
        let pixels = xs.n * xs.h * xs.w;
        within_fast_div(pixels);
        let blocks = (pixels * spec.cin / 8).div_ceil(THREADS as usize).clamp(1, 16 * self.sms);
        let xin = if dxe.leaky { self.hptr(x) } else { 0 };
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        let (dyp, wp, dxp, acc) = (self.hptr(dy), self.ptr(w), self.hptr(dx), dxe.accumulate as i32);
        launch!(
            self,
            "conv2d_bwd_data_fewout_h16",
            cfg1(blocks, THREADS),
            dyp,
            wp,
            dxp,
            n,
            h,
            wd,
            cin,
            cout,
            k,
            st,
            pd,
            xin,
            acc
        );
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        self.profile_flop(conv_flop(xs.n * oh * ow, spec));
    }

    /// `Backend::conv_transpose2` on f16 x and y (`h16_runs`).
    pub(super) fn up2_h16(&self, x: &DBuf, xs: Shape, cout: usize, w: &DBuf, b: &DBuf, y: &mut DBuf) {
        let pixels = xs.n * xs.h * xs.w;
        within_fast_div(pixels);
        let (wh, np) = self.packed_weights(w, xs.c, 4 * cout);
        launch!(
            self,
            "up2_fwd_h16",
            tiled_grid(pixels, 4 * cout, 1, TILE),
            self.hptr(x),
            wh.ptr,
            np as i32,
            self.ptr(b),
            self.hptr(y),
            xs.n as i32,
            xs.h as i32,
            xs.w as i32,
            xs.c as i32,
            cout as i32
        );
        wh.release(self);
        self.profile_flop(up2_flop(pixels, xs.c, cout));
    }
}

#[cfg(test)]
mod tests {
    use super::half_setting;

    #[test]
    fn f16_storage_is_on_unless_the_environment_keeps_it_to_inference_or_turns_it_off() {
        assert_eq!(half_setting(None), (true, true));
        for v in ["1", "on", "true", " 1 ", "infer"] {
            assert_eq!(half_setting(Some(v)), (true, false), "{v:?}");
        }
        for v in ["train", "all"] {
            assert_eq!(half_setting(Some(v)), (true, true), "{v:?}");
        }
        for v in ["0", "off", "", "yes", "TRAIN"] {
            assert_eq!(half_setting(Some(v)), (false, false), "{v:?}");
        }
    }
}
