//! The CUDA backend: the `Backend` trait on one device and one stream, kernels from the
//! embedded fatbin (kernels/*.cu). Buffers hold f32 (the exact path the CPU backend is the
//! reference of), or f16 while `Backend::half_activations` is on: inference's activations
//! (kernels/conv_h16.cu; f32-only kernels get widened copies, and a half buffer handed to one
//! directly panics rather than being read as f32).
//!
//! Everything runs in order on one stream (streamed inference's uploads on a second one,
//! ordered by explicit events: `upload_overlapped`), so cudarc's per-buffer event tracking is
//! switched off and kernels take raw device pointers: no event is recorded per launch. Released
//! buffers go back to a pool keyed by length; reduction and index scratch lives in growable
//! buffers owned by the backend, so a training loop allocates nothing after its first step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PinnedHostSlice,
};
use rayon::prelude::*;

use super::half::{few_dw_fits, half_from_env};
use super::tiles::DeviceBandAverager;
use crate::backend::{AdamSource, Backend, ConvSpec, Decoder, DxEpilogue, Epilogue, Host, Shape, TileSpots};
use crate::optim::AdamScalars;

/// A device buffer of `len` values, f32 or (`half`) f16 (the allocation holds at least one, so
/// empty buffers exist too).
pub struct DBuf {
    /// dropped by hand (`Drop`): a graph capture's placeholder points nowhere, and memory
    /// freed while its stream is capturing would become a node of the graph
    mem: std::mem::ManuallyDrop<CudaSlice<f32>>,
    len: usize,
    half: bool,
    /// zeroed by `Backend::zero_grads` and not written since: the next weight gradient summing
    /// into it needs no memset of its own (`Cuda::zero_for_sums`)
    zeroed: bool,
}

impl DBuf {
    fn new(mem: CudaSlice<f32>, len: usize, half: bool) -> DBuf {
        DBuf { mem: std::mem::ManuallyDrop::new(mem), len, half, zeroed: false }
    }
    /// Whether the values are stored as f16.
    pub fn is_half(&self) -> bool {
        self.half
    }
    /// where the pool keeps it when released
    pub(super) fn pool_key(&self) -> (usize, bool) {
        (self.len, self.half)
    }
    fn bytes(&self) -> usize {
        self.len * if self.half { 2 } else { 4 }
    }
}

/// f32 slots an allocation of `len` values takes (two f16 values a slot).
fn slots(len: usize, half: bool) -> usize {
    if half { len.div_ceil(2) } else { len }.max(1)
}

impl Drop for DBuf {
    fn drop(&mut self) {
        // SAFETY: `mem` is taken once, here, and not used after.
        let mem = unsafe { std::mem::ManuallyDrop::take(&mut self.mem) };
        let stream = mem.stream().cu_stream();
        // SAFETY: a stream of this buffer's context, alive while `mem` holds it.
        let capturing = unsafe { result::stream::is_capturing(stream) }
            .is_ok_and(|s| s != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
        let placeholder = {
            let (p, _sync) = mem.device_ptr(mem.stream());
            p == 0
        };
        if placeholder || capturing {
            // a placeholder has nothing to free; a real buffer dropped mid-capture (a panic
            // unwinding through the body) is leaked rather than freed into the graph
            mem.leak();
        }
    }
}

type Grow<T> = Mutex<Option<CudaSlice<T>>>;

/// How the convolutions multiply: `Exact` runs f32 FMAs (the CPU backend's arithmetic up to
/// summation order: tests hold it to 1e-5), `Tf32` runs the tensor cores on TF32 operands
/// with f32 accumulation (≈1e-3 relative, the speed path; PyTorch's `allow_tf32`), and
/// `Tf32Pipelined` the same arithmetic with each step's loads issued before the previous
/// step's MMAs (kernels `*_tf32p`), `Tf32Wide` that on 128 × 64 tiles where channel counts
/// divide by 4 (`*_tf32w`; 128 × 32, `*_tf32n`, for results of at most 32 columns; the
/// pipelined ones elsewhere). `F16Wide` runs those tiles on f16 operands (mma.m16n8k16, f32
/// accumulation and storage: `*_f16w`, `*_f16n`) — PyTorch autocast's arithmetic, which wants a
/// loss scale in training (`Backend::half_operands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Exact,
    Tf32,
    Tf32Pipelined,
    Tf32Wide,
    F16Wide,
}

/// The kernels the pipeline runs unless `SPAHDMAP_GPU_CONV` names others: the wide ones,
/// measured fastest on an H200 (pre-training 113 vs 126 ms for `Tf32`, HD inference 89.6 vs
/// 56.2 Mpx/s; BENCHMARKS.md).
pub const SPEED: Precision = Precision::Tf32Wide;

pub struct Cuda {
    pub(super) ctx: Arc<CudaContext>,
    precision: Precision,
    pub(super) stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    /// the wgmma kernels (`FATBIN_SM90A`, entry points `*_wg_*`) on a compute-capability 9.0 card
    /// running the embedded image; None elsewhere, and their callers take the mma.sync kernels
    module_sm90a: Option<Arc<CudaModule>>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
    /// entry points looked up and absent: a kernel image from an older build
    /// (`SPAHDMAP_GPU_KERNELS`) lacks the later ones, and their callers fall back
    absent: Mutex<std::collections::HashSet<&'static str>>,
    /// entry points treated as absent though the image has them (SPAHDMAP_GPU_WITHOUT;
    /// `withhold`): a card that finds one of them wrong runs and times the rest
    withheld: Mutex<Vec<String>>,
    /// blocks each kernel keeps resident per SM at its block size (the driver's occupancy figure)
    resident: Mutex<HashMap<&'static str, usize>>,
    /// released buffers by (length, f16)
    pub(super) pool: Mutex<HashMap<(usize, bool), Vec<DBuf>>>,
    /// `alloc` hands out f16 buffers (`Backend::half_activations`)
    pub(super) half_acts: AtomicBool,
    /// whether `half_activations` may turn f16 storage on (SPAHDMAP_GPU_HALF; `use_half_storage`)
    pub(super) half_storage: AtomicBool,
    /// whether pre-training asks for it (SPAHDMAP_GPU_HALF=train; `use_half_training`)
    half_train: AtomicBool,
    fresh: AtomicU64,
    /// whether `capture` records (SPAHDMAP_GPU_GRAPHS; `use_graphs`)
    graphs: AtomicBool,
    /// whether the f16 3 × 3 stride-1 and 4 × 4 stride-2 layers run on the halo kernels
    /// (SPAHDMAP_GPU_HALO; `use_halo`)
    pub(super) halo: AtomicBool,
    /// the 4 × 4 stride-2 layers on theirs, where `halo` is on (SPAHDMAP_GPU_HALO_DOWN;
    /// `use_halo_down`)
    pub(super) halo_down: AtomicBool,
    /// what the body being captured did (src/backend/cuda/graph.rs); None when not capturing
    pub(super) capture: Mutex<Option<super::graph::CaptureLog>>,
    /// the capture under way has failed: launches, memsets and copies are skipped
    pub(super) doomed: AtomicBool,
    /// bumped whenever a scratch buffer is reallocated: recordings made before are stale
    pub(super) scratch_generation: AtomicU64,
    pub(super) f64s: Grow<f64>,
    u32s: Grow<u32>,
    pub(super) f32s: Grow<f32>,
    u64s: Grow<u64>,
    /// page-locked staging for large downloads (DMA straight from the device)
    pinned: Mutex<Option<PinnedHostSlice<u8>>>,
    /// overlapped uploads' second stream and page-locked staging (`upload_overlapped`)
    uploads: Mutex<UploadRing>,
    label: String,
    pub(super) sms: usize,
    /// Shared memory a block may opt in to (bytes): the downsampling's halo kernel needs 140 KB
    /// (an A100 or H100 gives 163 or 227 KB a block, a consumer card of compute 8.6 or 8.9 99)
    pub(super) smem_optin: usize,
    /// Per-launch event pairs while profiling (`set_profiling`; src/backend/cuda/profile.rs).
    pub(super) profile: Mutex<Option<Vec<super::profile::Launch>>>,
    /// f16 packings of weights by (address, rows, columns), kept while the weights are frozen
    /// (`Backend::freeze_weights`); None otherwise
    pub(super) frozen: Mutex<Option<FrozenPackings>>,
}

/// f16 packings of frozen weights and their row pitch, by (weights' address, rows, columns,
/// K-major: the wgmma kernels' [tap][cout][cin] of a 3 × 3 layer).
pub(super) type FrozenPackings = HashMap<(u64, usize, usize, bool), (DBuf, usize)>;

/// The copy stream of overlapped uploads and their page-locked staging: a ring of buffers,
/// each written again only once the copy recorded in its event has left it.
#[derive(Default)]
struct UploadRing {
    stream: Option<Arc<CudaStream>>,
    slots: Vec<(Option<PinnedHostSlice<u8>>, Option<CudaEvent>)>,
    next: usize,
}
/// staging buffers of the ring: two batches of two inputs (image and VD windows) in flight
const UPLOAD_SLOTS: usize = 4;

impl Drop for UploadRing {
    /// No page-locked buffer is freed under a copy still reading it.
    fn drop(&mut self) {
        if let Some(s) = &self.stream {
            let _ = s.synchronize();
        }
    }
}

/// A CSR matrix on the device (u32 offsets: fewer than 4 G non-zeros).
pub(super) struct DevCsr {
    pub indptr: CudaSlice<u32>,
    pub indices: CudaSlice<u32>,
    pub data: CudaSlice<f32>,
    pub rows: usize,
}

impl DevCsr {
    pub fn new(g: &Cuda, a: &crate::io::sparse::Csr) -> DevCsr {
        let ip: Vec<u32> = a.indptr.iter().map(|&v| v as u32).collect();
        DevCsr {
            indptr: g.upload_raw(&ip),
            indices: g.upload_raw(&a.indices),
            data: g.upload_raw(&a.data),
            rows: a.rows,
        }
    }
}

pub(super) const THREADS: u32 = 256;
/// floats of weights a block of the direct few-channel kernels stages (conv_small.cuh)
pub(super) const SMALL_WEIGHTS: usize = 12288;
/// Downloads at least this large go through page-locked staging.
const PINNED_ABOVE: usize = 1 << 20;

pub(super) fn cfg1(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// A grid-stride launch over `n` elements.
pub(super) fn cfg_elems(n: usize) -> LaunchConfig {
    cfg1(n.div_ceil(THREADS as usize).clamp(1, 16384), THREADS)
}

/// The grid of a memory pass over `n` values whose kernel moves eight at a time where `runs`
/// (and its operands are aligned, as the pool's are; one at a time otherwise, which this grid
/// also runs, only slower): a thread a run of eight.
fn cfg_runs(n: usize, runs: bool) -> LaunchConfig {
    cfg_elems(if runs { n.div_ceil(8) } else { n })
}

impl Cuda {
    /// The backend on device `ordinal`, or why it cannot run here.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Cuda, String> {
        let devs = super::probe()?;
        let info = devs
            .get(ordinal)
            .ok_or_else(|| format!("cuda:{ordinal}: this machine has {} CUDA device(s)", devs.len()))?;
        if super::FATBIN.is_empty() {
            return Err("this binary was built without CUDA kernels (no nvcc at build time)".into());
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cuda:{ordinal}: {e}"))?;
        // SAFETY: work runs in order on one stream (overlapped uploads' copy stream is ordered
        // against it by explicit events), so the events cudarc records per buffer are moot.
        unsafe { ctx.disable_event_tracking() };
        // SPAHDMAP_GPU_KERNELS: a fatbin or cubin built from kernels/*.cu by hand, in place of
        // the embedded one (kernel experiments on a card without rebuilding the binary; the
        // entries' signatures must be the embedded ones')
        let replaced = std::env::var_os("SPAHDMAP_GPU_KERNELS");
        let image = match &replaced {
            Some(path) => {
                std::fs::read(path).map_err(|e| format!("SPAHDMAP_GPU_KERNELS={}: {e}", path.to_string_lossy()))?
            }
            None => super::FATBIN.to_vec(),
        };
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(|e| format!("cuda:{ordinal}: loading the kernels failed: {e}"))?;
        // the sm_90a image only beside the embedded one (a replaced image is measured as it is);
        // where it does not load, the mma.sync kernels it would replace run, and stderr says so
        let module_sm90a = if replaced.is_none() && info.compute_capability == (9, 0) && !super::FATBIN_SM90A.is_empty()
        {
            match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(super::FATBIN_SM90A.to_vec())) {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("cuda:{ordinal}: the sm_90a (wgmma) kernels did not load ({e}); running without them");
                    None
                }
            }
        } else {
            None
        };
        let stream = ctx.new_stream().map_err(|e| format!("cuda:{ordinal}: {e}"))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| format!("cuda:{ordinal}: {e}"))? as usize;
        let smem_optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| format!("cuda:{ordinal}: {e}"))? as usize;
        Ok(Cuda {
            ctx,
            precision,
            stream,
            module,
            module_sm90a,
            funcs: Mutex::default(),
            absent: Mutex::default(),
            withheld: Mutex::new(kernel_list(&std::env::var("SPAHDMAP_GPU_WITHOUT").unwrap_or_default())),
            resident: Mutex::default(),
            pool: Mutex::default(),
            half_acts: AtomicBool::new(false),
            half_storage: AtomicBool::new(half_from_env().0),
            half_train: AtomicBool::new(half_from_env().1),
            fresh: AtomicU64::new(0),
            graphs: AtomicBool::new(graphs_from_env()),
            halo: AtomicBool::new(halo_from_env()),
            halo_down: AtomicBool::new(halo_down_from_env()),
            capture: Mutex::default(),
            doomed: AtomicBool::new(false),
            scratch_generation: AtomicU64::new(0),
            f64s: Mutex::default(),
            u32s: Mutex::default(),
            f32s: Mutex::default(),
            u64s: Mutex::default(),
            pinned: Mutex::default(),
            uploads: Mutex::default(),
            label: format!(
                "cuda:{ordinal} ({}, {})",
                info.name,
                match precision {
                    Precision::Exact => "f32",
                    Precision::Tf32 => "tf32 tensor cores",
                    Precision::Tf32Pipelined => "tf32 tensor cores, pipelined loads",
                    Precision::Tf32Wide => "tf32 tensor cores, pipelined loads, 128x64 tiles",
                    Precision::F16Wide => "f16 tensor cores, f32 accumulation, 128x64 tiles",
                }
            ),
            sms,
            smem_optin,
            profile: Mutex::default(),
            frozen: Mutex::default(),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Record steps as CUDA graphs (`Backend::capture`) or not, whatever the environment says.
    pub fn use_graphs(&self, on: bool) {
        self.graphs.store(on, Ordering::Relaxed);
    }
    pub fn graphs_on(&self) -> bool {
        self.graphs.load(Ordering::Relaxed)
    }
    /// Run the f16 3 × 3 stride-1 and 4 × 4 stride-2 layers on the halo kernels
    /// (kernels/conv_halo.cuh) or on the implicit GEMM, whatever the environment says.
    pub fn use_halo(&self, on: bool) {
        self.halo.store(on, Ordering::Relaxed);
    }
    /// The 4 × 4 stride-2 layers alone on the GEMM (false) or on their halo kernels where the
    /// others are, whatever the environment says.
    pub fn use_halo_down(&self, on: bool) {
        self.halo_down.store(on, Ordering::Relaxed);
    }
    /// Shared memory a block may opt in to, in bytes (the 4 × 4 stride-2 forward and weight
    /// gradient need 143,744: an A100 or H100 has it, a card of compute 8.6 or 8.9 not).
    pub fn shared_memory_per_block(&self) -> usize {
        self.smem_optin
    }
    /// Let inference keep its activations in f16 (`Backend::half_activations`) or not, whatever
    /// the environment says.
    pub fn use_half_storage(&self, on: bool) {
        self.half_storage.store(on, Ordering::Relaxed);
        if !on {
            self.half_train.store(false, Ordering::Relaxed);
        }
    }
    /// Let pre-training keep its activations and their gradients in f16 too (behind a loss
    /// scaler), or not.
    pub fn use_half_training(&self, on: bool) {
        self.half_train.store(on, Ordering::Relaxed);
        if on {
            self.half_storage.store(true, Ordering::Relaxed);
        }
    }

    /// Treat these entry points as absent from the loaded image, whatever the environment says
    /// (SPAHDMAP_GPU_WITHOUT): the layers that would take them fall back as under an older
    /// image. Only kernels the host asks for by `has_kernel` can be withheld.
    pub fn withhold(&self, names: &[&str]) {
        *self.withheld.lock().unwrap() = names.iter().map(|n| n.to_string()).collect();
    }
    /// Whether this card has the wgmma kernels' image loaded (compute capability 9.0, the
    /// embedded kernels): the 3 × 3 halo layers then run on them.
    pub fn has_wgmma(&self) -> bool {
        self.module_sm90a.is_some()
    }

    /// Whether any entry point is withheld (tests then leave the launch counts that pin the
    /// full set's dispatch unchecked).
    pub fn withholds_any(&self) -> bool {
        !self.withheld.lock().unwrap().is_empty()
    }

    /// Whether the loaded kernel image has entry point `name` (and it is not withheld).
    pub(super) fn has_kernel(&self, name: &'static str) -> bool {
        if self.withheld.lock().unwrap().iter().any(|w| w == name) {
            return false;
        }
        if self.funcs.lock().unwrap().contains_key(name) {
            return true;
        }
        let mut absent = self.absent.lock().unwrap();
        if absent.contains(name) {
            return false;
        }
        let found = self.load_function(name).is_ok();
        if !found {
            absent.insert(name);
        }
        found
    }

    /// Entry point `name` of the image that holds it: the wgmma kernels (`_wg_` in the name)
    /// from the sm_90a one, where loaded.
    fn load_function(&self, name: &str) -> Result<CudaFunction, String> {
        let module = if is_wgmma_kernel(name) {
            self.module_sm90a.as_ref().ok_or("no sm_90a kernel image on this card")?
        } else {
            &self.module
        };
        module.load_function(name).map_err(|e| e.to_string())
    }

    pub(super) fn func(&self, name: &'static str) -> CudaFunction {
        let mut f = self.funcs.lock().unwrap();
        f.entry(name)
            .or_insert_with(|| {
                let f = self.load_function(name).unwrap_or_else(|e| panic!("CUDA kernel {name} missing: {e}"));
                // kernels staging more than 48 KB opt in to it once
                if let Some(bytes) = dynamic_smem(name) {
                    let attr =
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                    f.set_attribute(attr, bytes as i32)
                        .unwrap_or_else(|e| panic!("CUDA kernel {name}: {bytes} bytes of shared memory: {e}"));
                }
                f
            })
            .clone()
    }

    /// The convolution kernel of this precision (one of `variants!(base)`) for a GEMM of
    /// `m` × `n` results over `cin` → `cout` channels reading the operands at `operands`, and
    /// its grid; `reduction` (the weight gradients' K) is split across blocks when given. The
    /// wide kernels load only four channels at a time (16 bytes), so they run where both counts
    /// divide by 4 and both operands are 16-byte aligned; results of at most 32 columns get
    /// their 128 × 32 tiles.
    #[allow(clippy::too_many_arguments)]
    fn conv_launch(
        &self,
        names: [&'static str; 7],
        cin: usize,
        cout: usize,
        operands: [u64; 2],
        m: usize,
        n: usize,
        reduction: Option<usize>,
    ) -> (&'static str, LaunchConfig) {
        within_fast_div(m.max(reduction.unwrap_or(0)));
        let four_wide = cin % 4 == 0 && cout % 4 == 0 && operands.iter().all(|p| p % 16 == 0);
        let (kernel, bm, bn) = match self.precision {
            Precision::Exact => (names[0], 64, 64),
            Precision::Tf32 => (names[1], 64, 64),
            Precision::Tf32Wide if four_wide && n <= 32 => (names[4], 128, 32),
            Precision::Tf32Wide if four_wide => (names[3], 128, 64),
            Precision::F16Wide if four_wide && n <= 32 => (names[6], 128, 32),
            Precision::F16Wide if four_wide => (names[5], 128, 64),
            Precision::Tf32Pipelined | Precision::Tf32Wide | Precision::F16Wide => (names[2], 64, 64),
        };
        let splits = reduction.map_or(1, |k| self.wave_splits(kernel, m.div_ceil(bm) * n.div_ceil(bn), k));
        (kernel, tiled_grid(m, n, splits, (bm, bn)))
    }

    /// Whether the wide (speed-path) kernels run, against the exact and plain TF32 references.
    pub(super) fn wide(&self) -> bool {
        matches!(self.precision, Precision::Tf32Wide | Precision::F16Wide)
    }

    /// The direct kernel (kernels/conv_small.cuh) the speed path runs a layer on whose channel
    /// counts the wide kernels cannot load four at a time — the image's 3 channels in and out —
    /// with its grid: `names` by 1, 2, 4, 8 groups of four channels on the small side (`small`
    /// channels, each with `per_channel` weights; all of them within the 48 KB a block stages),
    /// for `pixels` pixels, one per thread. None: the GEMM kernels (other precisions, other
    /// layers).
    pub(super) fn small_conv(
        &self,
        spec: &ConvSpec,
        names: &[&'static str],
        small: usize,
        per_channel: usize,
        pixels: usize,
    ) -> Option<(&'static str, LaunchConfig)> {
        if !self.wide() || (spec.cin % 4 == 0 && spec.cout % 4 == 0) {
            return None;
        }
        let groups = &[1usize, 2, 4, 8][..names.len()];
        let at = groups.iter().position(|g| 4 * g >= small)?;
        if 4 * groups[at] * per_channel > SMALL_WEIGHTS {
            return None;
        }
        within_fast_div(pixels);
        Some((names[at], cfg1(pixels.div_ceil(THREADS as usize).clamp(1, 16 * self.sms), THREADS)))
    }

    /// The device address of an f32 buffer, for a kernel that reads or writes f32: an f16
    /// buffer here is a bug (its bytes would be read as other numbers), so it panics.
    pub(super) fn ptr(&self, b: &DBuf) -> u64 {
        assert!(!b.half, "CUDA: an f16 buffer reached a kernel that takes only f32 (it has no f16 form or f32 copies)");
        self.addr(b)
    }
    /// The same for kernels that take f16 (kernels/conv_h16.cu).
    pub(super) fn hptr(&self, b: &DBuf) -> u64 {
        assert!(b.half, "CUDA: an f32 buffer reached a kernel that takes f16");
        self.addr(b)
    }
    /// The address of a buffer of either kind (copies, the pool, recordings).
    pub(super) fn addr(&self, b: &DBuf) -> u64 {
        let (p, _sync) = b.mem.device_ptr(&self.stream);
        p
    }
    /// A device copy of host values in its own allocation (index arrays, setup data).
    pub(super) fn upload_raw<T: DeviceRepr>(&self, host: &[T]) -> CudaSlice<T> {
        // an allocation here would become a node of the graph being captured
        assert!(self.capture.lock().unwrap().is_none(), "CUDA: setup upload during a graph capture");
        let mut s = unsafe { self.stream.alloc::<T>(host.len().max(1)) }
            .unwrap_or_else(|e| self.oom("an index array", std::mem::size_of_val(host), e));
        let p = {
            let (p, _sync) = s.device_ptr_mut(&self.stream);
            p
        };
        self.htod(p, host);
        s
    }
    pub(super) fn raw<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }
    pub(super) fn optr(&self, b: Option<&DBuf>) -> u64 {
        b.map_or(0, |b| self.ptr(b))
    }

    fn oom(&self, what: &str, bytes: usize, e: impl std::fmt::Display) -> ! {
        let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
        panic!(
            "CUDA out of memory on {}: {what} asked for {:.1} MiB, {:.1} MiB free of {:.1} MiB ({e})",
            self.label,
            bytes as f64 / 1048576.0,
            free as f64 / 1048576.0,
            total as f64 / 1048576.0
        )
    }

    /// A device pointer to at least `len` values of the growable scratch `cell`.
    pub(super) fn scratch<T: DeviceRepr>(&self, cell: &Grow<T>, len: usize) -> u64 {
        let mut g = cell.lock().unwrap();
        if g.as_ref().is_none_or(|s| s.len() < len) {
            if self.capture_refuses("a scratch buffer would grow") {
                return g.as_ref().map_or(0, |s| s.device_ptr(&self.stream).0);
            }
            self.scratch_generation.fetch_add(1, Ordering::Relaxed);
            let n = len.max(1).next_power_of_two();
            // SAFETY: scratch is written by a kernel or a copy before it is read.
            let s = unsafe { self.stream.alloc::<T>(n) }
                .unwrap_or_else(|e| self.oom("scratch", n * std::mem::size_of::<T>(), e));
            *g = Some(s);
        }
        let (p, _sync) = g.as_ref().unwrap().device_ptr(&self.stream);
        p
    }

    pub(super) fn bind(&self) {
        self.ctx.bind_to_thread().unwrap_or_else(|e| panic!("CUDA: {e}"));
    }

    /// Zero `b` before a kernel sums into it by atomics, unless `Backend::zero_grads` left it
    /// zeroed and nothing wrote it since; either way it is written next (the flag is cleared).
    pub(super) fn zero_for_sums(&self, b: &mut DBuf) {
        if !std::mem::take(&mut b.zeroed) {
            self.zero_bytes(self.addr(b), b.bytes());
        }
    }
    pub(super) fn zero_bytes(&self, ptr: u64, bytes: usize) {
        if bytes == 0 || self.skipping() {
            return;
        }
        self.bind();
        let start = self.profile_start();
        // SAFETY: ptr addresses at least `bytes` bytes of a live allocation of this context.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA memset: {e}"));
        self.profile_end("memset", start);
    }

    pub(super) fn htod<T: DeviceRepr>(&self, ptr: u64, host: &[T]) {
        if host.is_empty() || self.capture_refuses("an upload") {
            return;
        }
        self.bind();
        // SAFETY: ptr addresses at least host.len() values; pageable copies are staged before
        // the call returns, so `host` may go away after it.
        unsafe { result::memcpy_htod_async(ptr, host, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA upload: {e}"));
    }

    pub(super) fn dtoh<T: DeviceRepr + Default + Clone>(&self, ptr: u64, len: usize) -> Vec<T> {
        let mut v = vec![T::default(); len];
        let bytes = std::mem::size_of_val(&v[..]);
        if bytes == 0 || self.capture_refuses("a read-back") {
            return v;
        }
        self.bind();
        if bytes >= PINNED_ABOVE {
            // through page-locked memory: the copy runs at DMA speed, then one host memcpy
            let mut g = self.pinned.lock().unwrap();
            if g.as_ref().is_none_or(|p| p.len() < bytes) {
                // SAFETY: written by the copy below before it is read; flags 0 = cacheable
                // (write-combined memory is slow to read on the host)
                let p = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.next_power_of_two(), 0) }
                    .unwrap_or_else(|e| panic!("CUDA: cannot page-lock {} MiB of host memory: {e}", bytes >> 20));
                *g = Some(p);
            }
            let host = g.as_mut().unwrap().as_mut_ptr().unwrap_or_else(|e| panic!("CUDA: {e}"));
            // SAFETY: the staging buffer holds at least `bytes`; the stream is synchronised
            // before the bytes are read, and T is a plain numeric type (DeviceRepr).
            unsafe {
                let staging = std::slice::from_raw_parts_mut(host, bytes);
                result::memcpy_dtoh_async(staging, ptr, self.stream.cu_stream())
                    .unwrap_or_else(|e| panic!("CUDA download: {e}"));
                self.synchronize();
                std::ptr::copy_nonoverlapping(host as *const u8, v.as_mut_ptr() as *mut u8, bytes);
            }
            return v;
        }
        // SAFETY: ptr addresses at least len values; the stream is synchronised before the
        // host reads them.
        unsafe { result::memcpy_dtoh_async(&mut v, ptr, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA download: {e}"));
        self.synchronize();
        v
    }

    /// Device time of the work `f` queues, measured with CUDA events on the stream (ms).
    pub fn time_ms(&self, f: impl FnOnce()) -> f32 {
        let ev = || {
            self.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).unwrap_or_else(|e| panic!("CUDA event: {e}"))
        };
        let (a, b) = (ev(), ev());
        a.record(&self.stream).unwrap_or_else(|e| panic!("CUDA event: {e}"));
        f();
        b.record(&self.stream).unwrap_or_else(|e| panic!("CUDA event: {e}"));
        a.elapsed_ms(&b).unwrap_or_else(|e| panic!("CUDA event: {e}"))
    }

    /// Per-(image, channel) f64 sums of an NHWC tensor (kernels/norm.cu `pixel_sums_f64`)
    /// into s0 (and s1), zeroed here.
    #[allow(clippy::too_many_arguments)]
    fn pixel_sums(&self, x: u64, dy: u64, mean: u64, rstd: u64, mode: i32, s: Shape, cn: usize, s0: u64, s1: u64) {
        self.pixel_sums_of("pixel_sums_f64", x, dy, mean, rstd, mode, s, cn, s0, s1);
    }
    /// The same by `kernel`: `pixel_sums_f64`, or `pixel_sums_f64_h16` where x is f16; each
    /// as `pixel_runs_*` (eight channels a thread) where the layout allows it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pixel_sums_of(
        &self,
        kernel: &'static str,
        x: u64,
        dy: u64,
        mean: u64,
        rstd: u64,
        mode: i32,
        s: Shape,
        cn: usize,
        s0: u64,
        s1: u64,
    ) {
        let at = s.n * cn;
        self.zero_bytes(s0, at * 8);
        if mode >= 2 {
            self.zero_bytes(s1, at * 8);
        }
        let hw = s.h * s.w;
        // the operands the mode reads (mean and rstd are f32 rows of cn per image)
        let read = match mode {
            0 | 3 => vec![x],
            1 => vec![x, mean],
            _ => vec![x, dy, mean, rstd],
        };
        let runs = cn / 8;
        let by_runs = match kernel {
            "pixel_sums_f64" => "pixel_runs_f64",
            "pixel_sums_f64_h16" => "pixel_runs_f64_h16",
            other => unreachable!("pixel sums by {other}"),
        };
        if cn % 8 == 0
            && s.c % 8 == 0
            && (1..=32).contains(&runs)
            && 256 % runs == 0
            && read.iter().all(|p| p % 16 == 0)
            && self.has_kernel(by_runs)
        {
            let kernel = by_runs;
            // eight blocks an SM, each thread a few runs or more
            let chunks = (8 * self.sms).div_ceil(s.n).clamp(1, hw.div_ceil(4 * 256 / runs).max(1));
            let chunk = hw.div_ceil(chunks).max(1);
            let grid = (hw.div_ceil(chunk).max(1) as u32, 1, s.n as u32);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            launch!(self, kernel, cfg, x, dy, mean, rstd, mode, hw as i64, s.c as i32, cn as i32, chunk as i64, s0, s1);
            return;
        }
        let groups = cn.div_ceil(32);
        let chunks = (4 * self.sms).div_ceil(s.n * groups).clamp(1, hw.div_ceil(64).max(1));
        let chunk = hw.div_ceil(chunks).max(1);
        let cfg = LaunchConfig {
            grid_dim: (hw.div_ceil(chunk).max(1) as u32, groups as u32, s.n as u32),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, kernel, cfg, x, dy, mean, rstd, mode, hw as i64, s.c as i32, cn as i32, chunk as i64, s0, s1);
    }

    /// Column sums (the bias gradients): out (zeroed here) = Σ over rows of x.
    pub(super) fn colsum(&self, x: u64, rows: usize, cols: usize, out: u64) {
        self.zero_bytes(out, cols * 4);
        self.colsum_of("colsum_f32", x, rows, cols, out);
    }
    /// Into a bias gradient, by `kernel` (`colsum_f32`, or `colsum_h16` where x is f16): zeroed
    /// here unless `Backend::zero_grads` left it so.
    pub(super) fn colsum_into(&self, kernel: &'static str, x: u64, rows: usize, cols: usize, out: &mut DBuf) {
        assert_eq!(out.len, cols, "a column sum per column");
        self.zero_for_sums(out);
        self.colsum_of(kernel, x, rows, cols, self.ptr(out));
    }
    /// The column sums by `kernel` added into `out`. Where cols is a multiple of eight (at most
    /// 256, its runs of eight dividing 256) and x aligned, as `colsum_runs_*`: eight columns a
    /// thread.
    fn colsum_of(&self, kernel: &'static str, x: u64, rows: usize, cols: usize, out: u64) {
        let runs = cols / 8;
        let by_runs = match kernel {
            "colsum_f32" => "colsum_runs_f32",
            "colsum_h16" => "colsum_runs_h16",
            other => unreachable!("column sums by {other}"),
        };
        if cols % 8 == 0 && (1..=32).contains(&runs) && 256 % runs == 0 && x % 16 == 0 && self.has_kernel(by_runs) {
            let kernel = by_runs;
            // eight blocks an SM, each thread a few runs or more
            let chunk = rows.div_ceil(8 * self.sms).max(4 * 256 / runs);
            launch!(self, kernel, cfg1(rows.div_ceil(chunk), THREADS), x, rows as i64, cols as i32, chunk as i64, out);
            return;
        }
        let chunk = 4096usize;
        let cfg = LaunchConfig {
            grid_dim: (cols.div_ceil(32) as u32, rows.div_ceil(chunk).max(1) as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, kernel, cfg, x, rows as i64, cols as i32, chunk as i64, out);
    }

    /// K splits of a weight gradient's `tiles` result tiles for `kernel`: as many as fill the
    /// card's resident blocks once. The blocks of a split GEMM do equal work, so a last wave
    /// that is partly full idles the rest of the card for a whole block's time (4 blocks per SM
    /// over 3 resident took two waves for 1.33 of work).
    pub(super) fn wave_splits(&self, kernel: &'static str, tiles: usize, reduction: usize) -> usize {
        let per_sm = self.resident_blocks(kernel, THREADS);
        (self.sms * per_sm / tiles.max(1)).clamp(1, reduction.div_ceil(256).max(1))
    }

    /// Blocks of `threads` threads of `kernel` an SM keeps resident (the driver's occupancy
    /// figure, asked once per kernel; each kernel runs at one block size).
    pub(super) fn resident_blocks(&self, kernel: &'static str, threads: u32) -> usize {
        *self.resident.lock().unwrap().entry(kernel).or_insert_with(|| {
            let f = self.func(kernel);
            let smem = dynamic_smem(kernel).unwrap_or(0);
            f.occupancy_max_active_blocks_per_multiprocessor(threads, smem, None).map_or(1, |b| b.max(1) as usize)
        })
    }

    /// Splits of a GEMM's reduction so the grid fills the device (NMF, GCN).
    pub(super) fn splits(&self, tiles: usize, reduction: usize) -> usize {
        (4 * self.sms).div_ceil(tiles).clamp(1, reduction.div_ceil(256).max(1))
    }

    /// Image chunks per image for the loss kernels.
    fn loss_grid(&self, per: usize, images: usize) -> LaunchConfig {
        let chunks = (8 * self.sms).div_ceil(images.max(1)).clamp(1, per.div_ceil(THREADS as usize).max(1));
        LaunchConfig {
            grid_dim: (chunks as u32, images.max(1) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The seven kernels of a convolution operation (kernels/conv.cu's CONV_KERNELS): f32, TF32,
/// pipelined, wide and narrow, wide and narrow on f16 operands, in `Cuda::conv_launch`'s order.
macro_rules! variants {
    ($base:literal) => {
        [
            concat!($base, "_f32"),
            concat!($base, "_tf32"),
            concat!($base, "_tf32p"),
            concat!($base, "_tf32w"),
            concat!($base, "_tf32n"),
            concat!($base, "_f16w"),
            concat!($base, "_f16n"),
        ]
    };
}

/// A convolution's geometry as the kernels take it: n, h, w, cin, cout, k, stride, pad.
type ConvGeom = (i32, i32, i32, i32, i32, i32, i32, i32);

/// The convolution kernels decompose pixel and reduction indices in 32 bits (FastDiv in
/// conv_ops.cuh).
pub(super) fn within_fast_div(rows: usize) {
    assert!(
        rows < (1 << 31) - 1024,
        "a convolution over {rows} pixels at once is more than the kernels index: use smaller batches"
    );
}

pub(super) fn conv_geom(xs: Shape, spec: &ConvSpec) -> ConvGeom {
    let c = |v: usize| v as i32;
    (c(xs.n), c(xs.h), c(xs.w), c(spec.cin), c(spec.cout), c(spec.k), c(spec.stride), c(spec.pad))
}

pub(super) fn gemm_grid(m: usize, n: usize, z: usize) -> LaunchConfig {
    tiled_grid(m, n, z, (64, 64))
}

/// Useful floating-point operations of a convolution producing `pixels` output pixels (its
/// forward pass; each gradient does as many).
pub(super) fn conv_flop(pixels: usize, spec: &ConvSpec) -> f64 {
    2.0 * pixels as f64 * (spec.k * spec.k * spec.cin * spec.cout) as f64
}

/// The same for the 2 × 2 / 2 transposed convolution of `pixels` input pixels.
pub(super) fn up2_flop(pixels: usize, cin: usize, cout: usize) -> f64 {
    2.0 * pixels as f64 * (cin * 4 * cout) as f64
}

/// Blocks of `bm` × `bn` over an m × n result, `z` K splits.
pub(super) fn tiled_grid(m: usize, n: usize, z: usize, (bm, bn): (usize, usize)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (m.div_ceil(bm).max(1) as u32, n.div_ceil(bn).max(1) as u32, z.max(1) as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// What a kernel with an f32 and an f16 form (`forms`: f32 first) takes for buffers stored as
/// `half`, with the address function that checks that kind (`Cuda::ptr` or `Cuda::hptr`).
fn by_kind<T>(half: bool, forms: [T; 2]) -> (T, fn(&Cuda, &DBuf) -> u64) {
    let [f32_form, h16_form] = forms;
    if half {
        (h16_form, Cuda::hptr)
    } else {
        (f32_form, Cuda::ptr)
    }
}

/// `SPAHDMAP_GPU_GRAPHS=1` (or `on`, `true`) records training steps and inference batches as
/// CUDA graphs; off by default until a card has measured it.
fn graphs_from_env() -> bool {
    std::env::var("SPAHDMAP_GPU_GRAPHS").is_ok_and(|v| matches!(v.trim(), "1" | "on" | "true"))
}

/// The kernels launched with dynamic shared memory and the bytes (at most): those past 48 KB opt
/// in before their first launch (`func`), and a kernel staging in the halo kernels' dynamic
/// array without its row here fails that launch. tests/kernel_contract.rs holds this table to
/// the entry points of nvcc's PTX.
pub const DYNAMIC_SHARED_MEMORY: [(&str, usize); 19] = [
    ("conv3_halo_dw_h16", super::half::HALO_DW_SMEM),
    ("conv4_down_halo_fwd_h16", super::half::DOWN_SMEM),
    ("conv4_down_halo_dx_h16", super::half::DOWN_DX_SMEM),
    ("conv4_down_halo_dw_h16", super::half::DOWN_DW_SMEM),
    // two slots (the block tail's as the forward's)
    ("conv3_halo_fwd_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_fwd4_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_fwd_stats_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_dx_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_block_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_block_norm_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_block4_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_dx_block_h16", 2 * super::half::HALO_FWD_STAGE),
    // the same on wgmma (kernels/sm90a/conv_wg.cu)
    ("conv3_halo_fwd_wg_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_fwd_stats_wg_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_dx_wg_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_block_wg_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_block_norm_wg_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_dx_block_wg_h16", 2 * super::half::HALO_FWD_STAGE),
    ("conv3_halo_dw_wg_h16", super::half::HALO_DW_SMEM),
];

/// Dynamic shared memory a kernel may be launched with (at most), where it has any.
pub(super) fn dynamic_smem(kernel: &str) -> Option<usize> {
    DYNAMIC_SHARED_MEMORY.iter().find(|(name, _)| *name == kernel).map(|&(_, bytes)| bytes)
}

/// The f16 3 × 3 stride-1 layers (forward, data, weight and bias gradients) run on the halo
/// kernels unless `SPAHDMAP_GPU_HALO=0` (or `off`, `false`, `no`, any case) puts them on the
/// implicit GEMM: on an H200, the rest of the code the same, a pre-training iteration took
/// 25.0 ms with them and 35.1 without, scoring 306 megapixels/s and 253 (BENCHMARKS.md).
fn halo_from_env() -> bool {
    !off_in_env("SPAHDMAP_GPU_HALO")
}

/// `SPAHDMAP_GPU_HALO_DOWN=0` (the same words) keeps the 4 × 4 stride-2 layers on the GEMM while
/// the 3 × 3 ones stay on the halo kernels: one binary measures either way on a card.
fn halo_down_from_env() -> bool {
    !off_in_env("SPAHDMAP_GPU_HALO_DOWN")
}

/// Whether entry point `name` is one of kernels/sm90a's (wgmma): those are looked up in the
/// sm_90a image alone.
fn is_wgmma_kernel(name: &str) -> bool {
    name.contains("_wg_")
}

/// Kernel names in a list separated by commas or white space (SPAHDMAP_GPU_WITHOUT).
fn kernel_list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace()).filter(|n| !n.is_empty()).map(str::to_string).collect()
}

fn off_in_env(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "off" | "false" | "no"))
}

impl Cuda {
    /// `Backend::hin_forward`, and its statistics alone where y is None (`conv2d_hin` without y).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hin_norm(
        &self,
        x: &DBuf,
        s: Shape,
        gamma: &DBuf,
        beta: &DBuf,
        leaky: bool,
        mut y: Option<&mut DBuf>,
        stats: &mut DBuf,
    ) {
        // x and y of one kind (f32 or f16, statistics either); otherwise on f32 copies
        let kind = x.is_half();
        if y.as_ref().is_some_and(|y| y.is_half() != kind) || (stats.is_half() && !kind) {
            let (xw, mut sw) = (self.widened(x), self.f32_out(stats));
            let mut yw = y.as_deref().and_then(|y| self.f32_out(y));
            let y32 = match (yw.as_mut(), y.as_deref_mut()) {
                (Some(w), _) => Some(w),
                (None, y) => y,
            };
            self.hin_norm(xw.as_ref().unwrap_or(x), s, gamma, beta, leaky, y32, sw.as_mut().unwrap_or(&mut *stats));
            if let Some(y) = y {
                self.narrowed(yw, y);
            }
            self.narrowed(sw, stats);
            return self.release_all([xw]);
        }
        let (names, at_of) = by_kind(
            kind,
            [
                ["pixel_sums_f64", "finish_moments_f32", "hin_apply_f32"],
                ["pixel_sums_f64_h16", "finish_moments_h16", "hin_apply_h16"],
            ],
        );
        let half = s.c / 2;
        let at = s.n * half;
        let hw = s.h * s.w;
        assert_eq!(stats.len, 2 * at, "statistics of another shape");
        // statistics are computed in f32 (f16 ones narrowed from scratch after)
        let st = if stats.is_half() { self.scratch(&self.f32s, 2 * at) } else { self.ptr(stats) };
        let xp = at_of(self, x);
        let rstd = st + (at * 4) as u64;
        if half > 0 {
            // mean and variance in one pass over x (shifted sums: mode 3)
            let s0 = self.scratch(&self.f64s, 2 * at);
            let s1 = s0 + (at * 8) as u64;
            self.pixel_sums_of(names[0], xp, 0, 0, 0, 3, s, half, s0, s1);
            launch!(self, names[1], cfg_elems(at), s0, s1, xp, at as i64, half as i32, hw as i64, s.c as i32, st, rstd);
        }
        if let Some(y) = y {
            self.hin_apply_at(names[2], xp, s, st, gamma, beta, leaky, at_of(self, y));
        }
        if stats.is_half() {
            launch!(self, "f32_to_h16", cfg_elems(2 * at), st, self.hptr(stats), (2 * at) as i64);
        }
    }

    /// Half instance norm's apply pass (`hin_apply_{f32,h16}` as `kernel`): y (at `yp`) =
    /// leaky?(HIN(x)) from the means and 1/σ at `st` (then `st` + images × half floats).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hin_apply_at(
        &self,
        kernel: &'static str,
        xp: u64,
        s: Shape,
        st: u64,
        gamma: &DBuf,
        beta: &DBuf,
        leaky: bool,
        yp: u64,
    ) {
        let hw = s.h * s.w;
        let (g, b) = (self.ptr(gamma), self.ptr(beta));
        launch!(
            self,
            kernel,
            cfg_runs(s.len(), s.c % 16 == 0),
            xp,
            st,
            g,
            b,
            leaky as i32,
            s.n as i64,
            hw as i64,
            s.c as i32,
            yp
        );
    }

    /// Every gradient times `inv_scale`; the u32 at `flag` zeroed, then set where one is inf/NaN.
    fn unscale_flagging(&self, grads: &[DBuf], inv_scale: f32, flag: u64) {
        self.zero_bytes(flag, 4);
        self.unscale_multi(grads, inv_scale, flag);
    }

    /// The MSE kernel: d = scale·2(pred − target)/(H·W·C), per-image squared-error sums into
    /// the f64s at `sums` (zeroed first).
    fn mse_into(&self, pred: &DBuf, target: &DBuf, s: Shape, scale: f64, d: &mut DBuf, sums: u64) {
        if pred.is_half() && !target.is_half() && d.is_half() {
            let per = s.h * s.w * s.c;
            self.zero_bytes(sums, s.n * 8);
            let cfg = self.loss_grid(per, s.n);
            launch!(self, "mse_h16", cfg, self.hptr(pred), self.ptr(target), per as i64, scale, self.hptr(d), sums);
            return;
        }
        if pred.is_half() || target.is_half() || d.is_half() {
            let (pw, tw, mut dw) = (self.widened(pred), self.widened(target), self.f32_out(d));
            let d32 = dw.as_mut().unwrap_or(&mut *d);
            self.mse_into(pw.as_ref().unwrap_or(pred), tw.as_ref().unwrap_or(target), s, scale, d32, sums);
            self.narrowed(dw, d);
            return self.release_all([pw, tw]);
        }
        let per = s.h * s.w * s.c;
        self.zero_bytes(sums, s.n * 8);
        launch!(
            self,
            "mse_f32",
            self.loss_grid(per, s.n),
            self.ptr(pred),
            self.ptr(target),
            per as i64,
            scale,
            self.ptr(d),
            sums
        );
    }
}

impl Cuda {
    /// A two-operand element-wise kernel (`names`: its f32 and f16 forms) over `a` and `b` (b
    /// written; read first where `b_in`): the f16 form where both are f16, the f32 one on f32
    /// copies where the kinds differ.
    fn elementwise2(&self, names: [&'static str; 2], a: &DBuf, b: &mut DBuf, b_in: bool) {
        assert_eq!(a.len, b.len, "element-wise operands of different lengths");
        match (a.half, b.half) {
            (k, l) if k == l => {
                let (kernel, at_of) = by_kind(k, names);
                launch!(self, kernel, cfg_runs(a.len, true), at_of(self, a), at_of(self, b), a.len as i64);
            }
            _ => {
                let aw = self.widened(a);
                let mut bw = if b_in { self.widened(b) } else { self.f32_out(b) };
                self.elementwise2(names, aw.as_ref().unwrap_or(a), bw.as_mut().unwrap_or(&mut *b), b_in);
                self.narrowed(bw, b);
                self.release_all([aw]);
            }
        }
    }

    /// A buffer of `len` values, f16 where `half`: from the pool, or fresh.
    pub(super) fn alloc_as(&self, len: usize, half: bool) -> DBuf {
        let hit = self.pool.lock().unwrap().get_mut(&(len, half)).and_then(|v| v.pop());
        let capturing = match self.capture.lock().unwrap().as_mut() {
            Some(log) => {
                if let Some(b) = &hit {
                    log.taken.insert(self.addr(b));
                }
                true
            }
            None => false,
        };
        if capturing && hit.is_none() {
            // allocating now would put an allocation into the graph: a placeholder instead,
            // and the recording is thrown away
            self.capture_refuses("a buffer the pool did not hold");
            // SAFETY: never dereferenced: a failed capture queues nothing more and its graph is
            // destroyed unrun; the handle is forgotten, not freed (`release`).
            return DBuf::new(unsafe { self.stream.upgrade_device_ptr::<f32>(0, slots(len, half)) }, len, half);
        }
        if let Some(mut b) = hit {
            b.zeroed = false;
            return b;
        }
        self.fresh.fetch_add(1, Ordering::Relaxed);
        let n = slots(len, half);
        // SAFETY: every operation writes its outputs before they are read (trait contract).
        let mem = unsafe { self.stream.alloc::<f32>(n) }.unwrap_or_else(|e| self.oom("a buffer", n * 4, e));
        DBuf::new(mem, len, half)
    }
}

impl Cuda {
    /// `conv2d_backward`'s data gradient on f32 storage.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_dx_f32(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        dy: &DBuf,
        dx: &mut DBuf,
        dxe: DxEpilogue,
    ) {
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        let operands = [self.ptr(dy), self.ptr(w)];
        // into at most 4 channels only: wider, the GEMM wins (conv_small.cuh)
        let small = ["conv2d_bwd_data_small1"];
        let direct = self.small_conv(spec, &small, spec.cin, spec.k * spec.k * spec.cout, xs.n * xs.h * xs.w);
        let (kernel, cfg) = if let Some(d) = direct {
            d
        } else if spec.stride > 1 && spec.k % spec.stride == 0 {
            // one phase of input pixels per grid layer: each reads only the (k / s)² taps
            // that reach it instead of all k² masked (kernels/conv_ops.cuh, BwdDataPhased)
            let s = spec.stride;
            let m = xs.n * xs.h.div_ceil(s) * xs.w.div_ceil(s);
            let names = variants!("conv2d_bwd_data_phased");
            let (kernel, mut cfg) = self.conv_launch(names, spec.cin, spec.cout, operands, m, spec.cin, None);
            cfg.grid_dim.2 = (s * s) as u32;
            (kernel, cfg)
        } else {
            let m = xs.n * xs.h * xs.w;
            self.conv_launch(variants!("conv2d_bwd_data"), spec.cin, spec.cout, operands, m, spec.cin, None)
        };
        // the epilogue (conv_ops.cuh DxOut): x for LeakyReLU's derivative, the old dx added
        let xin = if dxe.leaky { self.ptr(x) } else { 0 };
        let acc = dxe.accumulate as i32;
        launch!(self, kernel, cfg, self.ptr(dy), self.ptr(w), self.ptr(dx), n, h, wd, cin, cout, k, st, pd, xin, acc);
        self.profile_flop(conv_flop(xs.n * oh * ow, spec));
    }

    /// `conv2d_backward`'s weight and bias gradients on f32 storage.
    pub(super) fn conv_dw_f32(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        dy: &DBuf,
        dw: &mut DBuf,
        db: Option<&mut DBuf>,
    ) {
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        let (kw, p) = (spec.weight_len() / spec.cout, xs.n * oh * ow);
        // few channels on one side (no four-wide loads): the direct kernel of conv_few.cuh
        if self.wide() && (spec.cin % 4 != 0 || spec.cout % 4 != 0) && few_dw_fits(spec) {
            return self.conv_dw_few(x, xs, spec, dy, dw, db);
        }
        self.zero_for_sums(dw);
        let names = variants!("conv2d_bwd_weight");
        let operands = [self.ptr(x), self.ptr(dy)];
        let (kernel, cfg) = self.conv_launch(names, spec.cin, spec.cout, operands, kw, spec.cout, Some(p));
        // the wide bodies sum dY's columns (the bias gradient) from the values they load for
        // dW; the others leave it to colsum
        let fused = names[3..].contains(&kernel);
        let mut db = db;
        let dbp = match db.as_deref_mut() {
            Some(d) if fused => {
                self.zero_for_sums(d);
                self.ptr(d)
            }
            _ => 0,
        };
        launch!(self, kernel, cfg, self.ptr(x), self.ptr(dy), self.ptr(dw), n, h, wd, cin, cout, k, st, pd, dbp);
        self.profile_flop(conv_flop(p, spec));
        if let (Some(db), false) = (db, fused) {
            self.colsum_into("colsum_f32", self.ptr(dy), p, spec.cout, db);
        }
    }
}

impl Backend for Cuda {
    type Buf = DBuf;
    type Fence = CudaEvent;
    type Band = DeviceBandAverager;
    type Sums = CudaSlice<f64>;
    type Graph = super::graph::CudaGraphRun;

    fn name(&self) -> String {
        // benchmark lines say which convolution kernels ran
        let halo = match (self.halo.load(Ordering::Relaxed), self.module_sm90a.is_some()) {
            (true, true) => ", halo 3x3 kernels (wgmma where written)",
            (true, false) => ", halo 3x3 kernels",
            _ => "",
        };
        let withheld = self.withheld.lock().unwrap();
        let without = if withheld.is_empty() { String::new() } else { format!(", without {}", withheld.join(" ")) };
        format!("{}{halo}{without}", self.label)
    }
    fn synchronize(&self) {
        if self.capture_refuses("a synchronisation") {
            return;
        }
        self.stream.synchronize().unwrap_or_else(|e| panic!("CUDA: {e}"));
    }

    fn alloc(&self, len: usize) -> DBuf {
        self.alloc_as(len, self.half_acts.load(Ordering::Relaxed))
    }
    fn alloc_f32(&self, len: usize) -> DBuf {
        self.alloc_as(len, false)
    }
    fn freeze_weights(&self, on: bool) {
        self.set_frozen(on)
    }
    fn holds_half(&self, buf: &DBuf) -> bool {
        buf.half
    }
    fn alloc_like(&self, buf: &DBuf) -> DBuf {
        self.alloc_as(buf.len, buf.half)
    }
    fn zeros(&self, len: usize) -> DBuf {
        let b = self.alloc(len);
        self.zero_bytes(self.addr(&b), b.bytes());
        b
    }
    fn release(&self, buf: DBuf) {
        if self.addr(&buf) == 0 {
            return; // a capture's placeholder: dropping it frees nothing
        }
        self.pool.lock().unwrap().entry(buf.pool_key()).or_default().push(buf);
    }
    fn fresh_allocations(&self) -> u64 {
        self.fresh.load(Ordering::Relaxed)
    }
    fn upload(&self, host: &[f32]) -> DBuf {
        let b = self.alloc_as(host.len(), false);
        self.htod(self.ptr(&b), host);
        b
    }
    fn download(&self, buf: &DBuf) -> Vec<f32> {
        match self.widened(buf) {
            Some(w) => {
                let v = self.dtoh(self.ptr(&w), w.len);
                self.release(w);
                v
            }
            None => self.dtoh(self.ptr(buf), buf.len),
        }
    }
    fn len(&self, buf: &DBuf) -> usize {
        buf.len
    }
    fn fence(&self) -> CudaEvent {
        self.bind();
        if self.capture_refuses("a fence") {
            return self.ctx.new_event(None).unwrap_or_else(|e| panic!("CUDA event: {e}"));
        }
        self.stream.record_event(None).unwrap_or_else(|e| panic!("CUDA event: {e}"))
    }
    fn alloc_upload(&self, host: Host<'_>) -> DBuf {
        self.alloc_as(host.len(), matches!(host, Host::F16(_)))
    }
    fn upload_overlapped(&self, host: Host<'_>, dst: &mut DBuf, after: Option<&CudaEvent>) {
        assert_eq!(host.len(), dst.len, "upload into a buffer of another length");
        assert_eq!(
            matches!(host, Host::F16(_)),
            dst.half,
            "upload into a buffer of the other precision: use alloc_upload"
        );
        if host.is_empty() || self.capture_refuses("an upload") {
            return;
        }
        self.bind();
        let bytes = host.bytes().len();
        let mut ring = self.uploads.lock().unwrap();
        let copy = match &ring.stream {
            Some(s) => s.clone(),
            None => {
                let s = self.ctx.new_stream().unwrap_or_else(|e| panic!("CUDA copy stream: {e}"));
                ring.slots.resize_with(UPLOAD_SLOTS, Default::default);
                ring.stream = Some(s.clone());
                s
            }
        };
        let i = ring.next;
        ring.next = (i + 1) % UPLOAD_SLOTS;
        let (pinned, copied) = &mut ring.slots[i];
        if let Some(e) = copied.take() {
            e.synchronize().unwrap_or_else(|e| panic!("CUDA event: {e}"));
        }
        if pinned.as_ref().is_none_or(|p| p.len() < bytes) {
            // SAFETY: written below before the copy reads it; flags 0 = cacheable
            let p = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.next_power_of_two(), 0) }
                .unwrap_or_else(|e| panic!("CUDA: cannot page-lock {} MiB of host memory: {e}", bytes >> 20));
            *pinned = Some(p);
        }
        let p = pinned.as_mut().unwrap().as_mut_ptr().unwrap_or_else(|e| panic!("CUDA: {e}"));
        // SAFETY: the staging buffer holds at least `bytes` and no copy reads it any more (its
        // event was waited for).
        let (staging, src) = (unsafe { std::slice::from_raw_parts_mut(p, bytes) }, host.bytes());
        // a batch is ~100 MB: the host copy in parallel, while the GPU computes the last batch
        staging.par_chunks_mut(1 << 20).zip(src.par_chunks(1 << 20)).for_each(|(d, s)| d.copy_from_slice(s));
        match after {
            Some(f) => copy.wait(f),
            None => copy.join(&self.stream),
        }
        .unwrap_or_else(|e| panic!("CUDA stream wait: {e}"));
        // SAFETY: dst holds bytes; the staging buffer stays untouched until the event recorded
        // after this copy has completed (checked above before the next write).
        unsafe { result::memcpy_htod_async(self.addr(dst), &*staging, copy.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA upload: {e}"));
        let done = copy.record_event(None).unwrap_or_else(|e| panic!("CUDA event: {e}"));
        // the work queued from now on reads dst after the copy; the work queued before does not wait
        self.stream.wait(&done).unwrap_or_else(|e| panic!("CUDA stream wait: {e}"));
        *copied = Some(done);
    }
    fn copy(&self, src: &DBuf, dst: &mut DBuf) {
        assert_eq!(src.len, dst.len, "copy between buffers of different lengths");
        assert_eq!(src.half, dst.half, "copy between f16 and f32 buffers");
        if src.len == 0 || self.skipping() {
            return;
        }
        self.bind();
        // SAFETY: both buffers hold len values of the same kind.
        unsafe { result::memcpy_dtod_async(self.addr(dst), self.addr(src), src.bytes(), self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA copy: {e}"));
    }

    fn add_assign(&self, y: &mut DBuf, x: &DBuf) {
        self.elementwise2(["add_assign_f32", "add_assign_h16"], x, y, true);
    }
    fn leaky_relu_backward(&self, y: &DBuf, dy: &mut DBuf) {
        self.elementwise2(["leaky_relu_backward_f32", "leaky_relu_backward_h16"], y, dy, true);
    }
    fn leaky_relu_grad(&self, y: &DBuf, dy: &DBuf, g: &mut DBuf) {
        assert!(y.len == dy.len && dy.len == g.len, "leaky_relu_grad: lengths differ");
        assert_eq!(dy.half, g.half, "leaky_relu_grad: g of dy's storage");
        let kernel = if y.half { "leaky_relu_grad_h16" } else { "leaky_relu_grad_f32" };
        if y.half != dy.half || !self.has_kernel(kernel) {
            // y of the other storage (or kernels built before this one): a copy, then in place
            self.copy(dy, g);
            return self.leaky_relu_backward(y, g);
        }
        launch!(self, kernel, cfg_runs(y.len, true), self.addr(y), self.addr(dy), self.addr(g), y.len as i64);
    }
    fn sigmoid(&self, x: &DBuf, y: &mut DBuf) {
        self.elementwise2(["sigmoid_f32", "sigmoid_h16"], x, y, false);
    }
    fn sigmoid_backward(&self, y: &DBuf, dy: &mut DBuf) {
        self.elementwise2(["sigmoid_backward_f32", "sigmoid_backward_h16"], y, dy, true);
    }
    fn prior_sigmoid(&self, l: &DBuf, vd: &DBuf, hr: &mut DBuf) {
        assert!(l.len == vd.len && l.len == hr.len, "prior_sigmoid: lengths differ");
        if hr.is_half() {
            let mut hw = self.f32_out(hr);
            self.prior_sigmoid(l, vd, hw.as_mut().unwrap());
            return self.narrowed(hw, hr);
        }
        let kernel = match (l.is_half(), vd.is_half()) {
            (false, false) => "prior_sigmoid_f32",
            (true, false) => "prior_sigmoid_h16",
            (false, true) => "prior_sigmoid_f32_vh16",
            (true, true) => "prior_sigmoid_h16_vh16",
        };
        launch!(self, kernel, cfg_runs(l.len, true), self.addr(l), self.addr(vd), self.ptr(hr), l.len as i64);
    }

    fn conv2d(
        &self,
        x: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        bias: Option<&DBuf>,
        epi: Epilogue<DBuf>,
        y: &mut DBuf,
    ) {
        if x.is_half() || y.is_half() || epi.residual.is_some_and(DBuf::is_half) {
            if self.h16_runs(x, y, spec.cin, epi.residual) || self.h16_fwd4_runs(x, y, spec.cin, epi.residual) {
                return self.conv2d_h16(x, None, xs, spec, w, bias, epi, y);
            }
            if self.image_into_h16(x, xs, spec, w, bias, Epilogue { leaky: epi.leaky, residual: epi.residual }, y) {
                return;
            }
            let (xw, rw, mut yw) = (self.widened(x), epi.residual.and_then(|r| self.widened(r)), self.f32_out(y));
            let epi32 = Epilogue { leaky: epi.leaky, residual: rw.as_ref().or(epi.residual) };
            self.conv2d(xw.as_ref().unwrap_or(x), xs, spec, w, bias, epi32, yw.as_mut().unwrap_or(&mut *y));
            self.narrowed(yw, y);
            return self.release_all([xw, rw]);
        }
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let operands = [self.ptr(x), self.ptr(w)];
        let pixels = xs.n * oh * ow;
        let small = ["conv2d_fwd_small1", "conv2d_fwd_small2", "conv2d_fwd_small4", "conv2d_fwd_small8"];
        let (kernel, cfg) =
            self.small_conv(spec, &small, spec.cout, spec.k * spec.k * spec.cin, pixels).unwrap_or_else(|| {
                self.conv_launch(variants!("conv2d_fwd"), spec.cin, spec.cout, operands, pixels, spec.cout, None)
            });
        let (xp, wp, bp, rp, yp) = (self.ptr(x), self.ptr(w), self.optr(bias), self.optr(epi.residual), self.ptr(y));
        let (n, h, wd, cin, cout, k, st, pd) = conv_geom(xs, spec);
        launch!(self, kernel, cfg, xp, wp, bp, rp, yp, epi.leaky as i32, n, h, wd, cin, cout, k, st, pd);
        self.profile_flop(conv_flop(pixels, spec));
    }
    fn conv2d_cat(
        &self,
        a: &DBuf,
        ca: usize,
        b: &DBuf,
        xs: Shape,
        spec: &ConvSpec,
        w: &DBuf,
        bias: Option<&DBuf>,
        epi: Epilogue<DBuf>,
        y: &mut DBuf,
    ) {
        assert_eq!(xs.c, spec.cin, "conv2d_cat: the parts' channels are the layer's input");
        if self.cat_runs(a, ca, b, xs.c - ca) && y.is_half() && epi.residual.is_none_or(DBuf::is_half) {
            return self.conv2d_h16(a, Some((b, ca)), xs, spec, w, bias, epi, y);
        }
        crate::backend::conv2d_via_concat(self, a, ca, b, xs, spec, w, bias, epi, y)
    }
    fn reads_concatenations(&self, a: &DBuf, ca: usize, b: &DBuf, cb: usize) -> bool {
        self.cat_runs(a, ca, b, cb)
    }
    fn tail_normalises(&self, x: &DBuf) -> bool {
        self.tail_norm_runs(x)
    }
    fn block_head_backward(
        &self,
        h: crate::backend::BlockHead<DBuf>,
        g: crate::backend::BlockHeadGrads<DBuf>,
        dx: Option<(&mut DBuf, Option<&mut DBuf>)>,
    ) {
        if self.halo_head_runs(&h, dx.as_ref().map(|(a, b)| (&**a, b.as_deref()))) {
            return self.halo_head(h, g, dx);
        }
        crate::backend::block_head_backward_composed(self, h, g, dx)
    }
    fn block_tail(&self, t: crate::backend::BlockTail<DBuf>, a2: Option<&mut DBuf>, out: &mut DBuf) {
        if self.halo_block_runs(&t, a2.as_deref(), out) {
            return self.halo_block(t, a2, out);
        }
        if let Some(n) = &t.norm {
            // no kernel normalises as it stages here: a1 written, then the tail without the norm
            let (stats, gamma, beta) = (n.stats, n.gamma, n.beta);
            let a1s = t.os.with_c(t.conv2.cin);
            let mut a1 = self.alloc_like(t.a1);
            self.hin_apply(t.a1, a1s, stats, gamma, beta, true, &mut a1);
            self.block_tail(crate::backend::BlockTail { a1: &a1, norm: None, ..t }, a2, out);
            return self.release(a1);
        }
        crate::backend::block_tail_composed(self, t, a2, out)
    }
    fn conv2d_backward(
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
        if x.is_half() || dy.is_half() || dx.as_ref().is_some_and(|d| d.is_half()) {
            return self.conv2d_backward_h16(x, xs, spec, w, dy, dx, dxe, dw, db);
        }
        if let Some(dx) = dx {
            self.conv_dx_f32(x, xs, spec, w, dy, dx, dxe);
        }
        self.conv_dw_f32(x, xs, spec, dy, dw, db);
    }
    fn conv_transpose2(&self, x: &DBuf, xs: Shape, cout: usize, w: &DBuf, b: &DBuf, y: &mut DBuf) {
        if x.is_half() || y.is_half() {
            if self.h16_runs(x, y, xs.c, None) {
                return self.up2_h16(x, xs, cout, w, b, y);
            }
            let (xw, mut yw) = (self.widened(x), self.f32_out(y));
            self.conv_transpose2(xw.as_ref().unwrap_or(x), xs, cout, w, b, yw.as_mut().unwrap_or(&mut *y));
            self.narrowed(yw, y);
            return self.release_all([xw]);
        }
        let operands = [self.ptr(x), self.ptr(w)];
        let (kernel, cfg) =
            self.conv_launch(variants!("up2_fwd"), xs.c, cout, operands, xs.n * xs.h * xs.w, 4 * cout, None);
        launch!(
            self,
            kernel,
            cfg,
            self.ptr(x),
            self.ptr(w),
            self.ptr(b),
            self.ptr(y),
            xs.n as i32,
            xs.h as i32,
            xs.w as i32,
            xs.c as i32,
            cout as i32
        );
        self.profile_flop(up2_flop(xs.n * xs.h * xs.w, xs.c, cout));
    }
    fn conv_transpose2_backward(
        &self,
        x: &DBuf,
        xs: Shape,
        cout: usize,
        w: &DBuf,
        dy: &DBuf,
        dx: Option<&mut DBuf>,
        dw: &mut DBuf,
        db: &mut DBuf,
    ) {
        if x.is_half() || dy.is_half() || dx.as_ref().is_some_and(|d| d.is_half()) {
            let mut dx = dx;
            if self.up2_backward_h16(x, xs, cout, w, dy, dx.as_deref_mut(), dw, db) {
                return;
            }
            let (xw, dyw) = (self.widened(x), self.widened(dy));
            let (x32, dy32) = (xw.as_ref().unwrap_or(x), dyw.as_ref().unwrap_or(dy));
            match dx {
                Some(dx) => {
                    let mut dxw = self.f32_out(dx);
                    self.conv_transpose2_backward(
                        x32,
                        xs,
                        cout,
                        w,
                        dy32,
                        Some(dxw.as_mut().unwrap_or(&mut *dx)),
                        dw,
                        db,
                    );
                    self.narrowed(dxw, dx);
                }
                None => self.conv_transpose2_backward(x32, xs, cout, w, dy32, None, dw, db),
            }
            return self.release_all([xw, dyw]);
        }
        let (n, h, wd, cin, co) = (xs.n as i32, xs.h as i32, xs.w as i32, xs.c as i32, cout as i32);
        let p = xs.n * xs.h * xs.w;
        if let Some(dx) = dx {
            let operands = [self.ptr(dy), self.ptr(w)];
            let (kernel, cfg) = self.conv_launch(variants!("up2_bwd_data"), xs.c, cout, operands, p, xs.c, None);
            launch!(self, kernel, cfg, self.ptr(dy), self.ptr(w), self.ptr(dx), n, h, wd, cin, co);
            self.profile_flop(up2_flop(p, xs.c, cout));
        }
        self.zero_for_sums(dw);
        let operands = [self.ptr(x), self.ptr(dy)];
        let (kernel, cfg) =
            self.conv_launch(variants!("up2_bwd_weight"), xs.c, cout, operands, xs.c, 4 * cout, Some(p));
        launch!(self, kernel, cfg, self.ptr(x), self.ptr(dy), self.ptr(dw), n, h, wd, cin, co);
        self.profile_flop(up2_flop(p, xs.c, cout));
        self.colsum_into("colsum_f32", self.ptr(dy), 4 * p, cout, db);
    }
    fn hin_forward(&self, x: &DBuf, s: Shape, gamma: &DBuf, beta: &DBuf, leaky: bool, y: &mut DBuf, stats: &mut DBuf) {
        self.hin_norm(x, s, gamma, beta, leaky, Some(y), stats)
    }
    fn hin_apply(&self, x: &DBuf, s: Shape, stats: &DBuf, gamma: &DBuf, beta: &DBuf, leaky: bool, y: &mut DBuf) {
        // x and y of one kind, statistics f32; otherwise on f32 copies
        if x.is_half() != y.is_half() || stats.is_half() {
            let (xw, sw, mut yw) = (self.widened(x), self.widened(stats), self.f32_out(y));
            let (x32, s32) = (xw.as_ref().unwrap_or(x), sw.as_ref().unwrap_or(stats));
            self.hin_apply(x32, s, s32, gamma, beta, leaky, yw.as_mut().unwrap_or(&mut *y));
            self.narrowed(yw, y);
            return self.release_all([xw, sw]);
        }
        assert_eq!(stats.len, 2 * s.n * (s.c / 2), "statistics of another shape");
        let (kernel, at_of) = by_kind(x.is_half(), ["hin_apply_f32", "hin_apply_h16"]);
        self.hin_apply_at(kernel, at_of(self, x), s, self.ptr(stats), gamma, beta, leaky, at_of(self, y));
    }
    fn conv2d_hin(
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
        if self.halo_stats_runs(x, xs, spec, c1, y.as_deref(), stats) {
            return self.halo_hin(x, xs, spec, w, bias, norm, leaky, c1, y, stats);
        }
        if y.is_none() {
            // c1 and the statistics alone: no y written to be thrown away
            self.conv2d(x, xs, spec, w, bias, Epilogue::NONE, c1);
            let (oh, ow) = spec.out_hw(xs.h, xs.w);
            return self.hin_norm(
                c1,
                Shape { n: xs.n, h: oh, w: ow, c: spec.cout },
                norm.0,
                norm.1,
                leaky,
                None,
                stats,
            );
        }
        crate::backend::conv2d_hin_composed(self, x, xs, spec, w, bias, norm, leaky, c1, y, stats)
    }
    fn hin_backward(
        &self,
        x: &DBuf,
        s: Shape,
        gamma: &DBuf,
        stats: &DBuf,
        dy: &DBuf,
        dx: &mut DBuf,
        dgamma: &mut DBuf,
        dbeta: &mut DBuf,
    ) {
        // x, dy and dx of one kind (f32 or f16), statistics f32; otherwise on f32 copies
        let kind = x.is_half();
        if dy.is_half() != kind || dx.is_half() != kind || stats.is_half() {
            let (xw, sw, dyw, mut dxw) = (self.widened(x), self.widened(stats), self.widened(dy), self.f32_out(dx));
            let dx32 = dxw.as_mut().unwrap_or(&mut *dx);
            let (x32, s32, dy32) = (xw.as_ref().unwrap_or(x), sw.as_ref().unwrap_or(stats), dyw.as_ref().unwrap_or(dy));
            self.hin_backward(x32, s, gamma, s32, dy32, dx32, dgamma, dbeta);
            self.narrowed(dxw, dx);
            return self.release_all([xw, sw, dyw]);
        }
        let (names, at_of) =
            by_kind(kind, [["pixel_sums_f64", "hin_backward_f32"], ["pixel_sums_f64_h16", "hin_backward_h16"]]);
        let half = s.c / 2;
        let at = s.n * half;
        let hw = s.h * s.w;
        let s0 = self.scratch(&self.f64s, (2 * at).max(1));
        let s1 = s0 + (at * 8) as u64;
        let (xp, st, dyp) = (at_of(self, x), self.ptr(stats), at_of(self, dy));
        if half > 0 {
            self.pixel_sums_of(names[0], xp, dyp, st, st + (at * 4) as u64, 2, s, half, s0, s1);
        }
        launch!(
            self,
            names[1],
            cfg_runs(s.len(), s.c % 16 == 0),
            xp,
            st,
            self.ptr(gamma),
            dyp,
            s0,
            s1,
            s.n as i64,
            hw as i64,
            s.c as i32,
            at_of(self, dx)
        );
        if half > 0 {
            launch!(
                self,
                "hin_param_grads_f32",
                cfg1(half.div_ceil(THREADS as usize), THREADS),
                s0,
                s1,
                s.n as i32,
                half as i32,
                self.ptr(dgamma),
                self.ptr(dbeta)
            );
        }
    }
    fn concat_channels(&self, a: &DBuf, ca: usize, b: &DBuf, cb: usize, out: &mut DBuf) {
        let kind = out.is_half();
        if a.is_half() != kind || b.is_half() != kind {
            let (aw, bw, mut ow) = (self.widened(a), self.widened(b), self.f32_out(out));
            self.concat_channels(
                aw.as_ref().unwrap_or(a),
                ca,
                bw.as_ref().unwrap_or(b),
                cb,
                ow.as_mut().unwrap_or(&mut *out),
            );
            self.narrowed(ow, out);
            return self.release_all([aw, bw]);
        }
        let px = out.len / (ca + cb);
        let (kernel, at_of) = by_kind(kind, ["concat_channels_f32", "concat_channels_h16"]);
        launch!(
            self,
            kernel,
            cfg_runs(out.len, ca % 8 == 0 && cb % 8 == 0),
            at_of(self, a),
            ca as i32,
            at_of(self, b),
            cb as i32,
            at_of(self, out),
            px as i64
        );
    }
    fn split_channels(&self, d: &DBuf, ca: usize, cb: usize, a: &mut DBuf, b: &mut DBuf) {
        let half = d.is_half();
        if a.is_half() != half || b.is_half() != half {
            let (dw, mut aw, mut bw) = (self.widened(d), self.f32_out(a), self.f32_out(b));
            let (a32, b32) = (aw.as_mut().unwrap_or(&mut *a), bw.as_mut().unwrap_or(&mut *b));
            self.split_channels(dw.as_ref().unwrap_or(d), ca, cb, a32, b32);
            self.narrowed(aw, a);
            self.narrowed(bw, b);
            return self.release_all([dw]);
        }
        let px = d.len / (ca + cb);
        let (kernel, ptr) = by_kind(half, ["split_channels_f32", "split_channels_h16"]);
        launch!(
            self,
            kernel,
            cfg_runs(d.len, ca % 8 == 0 && cb % 8 == 0),
            ptr(self, d),
            ca as i32,
            cb as i32,
            ptr(self, a),
            ptr(self, b),
            px as i64
        );
    }
    fn spatial_mean(&self, x: &DBuf, s: Shape, out: &mut DBuf) {
        let at = s.n * s.c;
        let s0 = self.scratch(&self.f64s, at.max(1));
        self.pixel_sums(self.ptr(x), 0, 0, 0, 0, s, s.c, s0, 0);
        launch!(self, "finish_means_f32", cfg_elems(at), s0, at as i64, (s.h * s.w) as i64, self.ptr(out));
    }

    fn mse_per_image(&self, pred: &DBuf, target: &DBuf, s: Shape, scale: f64, d: &mut DBuf) -> f64 {
        let per = s.h * s.w * s.c;
        let sums = self.scratch(&self.f64s, s.n.max(1));
        self.mse_into(pred, target, s, scale, d, sums);
        self.dtoh::<f64>(sums, s.n).iter().map(|v| v / per as f64).sum()
    }
    fn sums(&self, n: usize) -> CudaSlice<f64> {
        self.upload_raw(&vec![0f64; n.max(1)])
    }
    fn mse_sums(&self, pred: &DBuf, target: &DBuf, s: Shape, scale: f64, d: &mut DBuf, sums: &mut CudaSlice<f64>) {
        assert!(sums.len() >= s.n, "loss sums for {} images, batch of {}", sums.len(), s.n);
        self.mse_into(pred, target, s, scale, d, self.raw(sums));
    }
    fn read_sums(&self, sums: &CudaSlice<f64>) -> Vec<f64> {
        self.dtoh::<f64>(self.raw(sums), sums.len())
    }
    fn hr_regulariser(&self, hr: &DBuf, vd: &DBuf, s: Shape, scale: f64, d_hr: &mut DBuf) -> f64 {
        let per = s.h * s.w * s.c;
        let counts = self.scratch(&self.u64s, s.n.max(1));
        let sums = self.scratch(&self.f64s, s.n.max(1));
        self.zero_bytes(counts, s.n * 8);
        self.zero_bytes(sums, s.n * 8);
        let cfg = self.loss_grid(per, s.n);
        launch!(self, "over_threshold_count", cfg, self.ptr(hr), per as i64, counts);
        launch!(
            self,
            "hr_regulariser_f32",
            cfg,
            self.ptr(hr),
            self.ptr(vd),
            per as i64,
            scale,
            counts,
            self.ptr(d_hr),
            sums
        );
        let (m, v) = (self.dtoh::<u64>(counts, s.n), self.dtoh::<f64>(sums, s.n));
        m.iter().zip(&v).filter(|(m, _)| **m > 0).map(|(m, v)| v / *m as f64).sum()
    }
    fn expression_loss(
        &self,
        hr: &DBuf,
        s: Shape,
        tiles: &[TileSpots],
        dec: Decoder<DBuf>,
        scale: f64,
        d_hr: &mut DBuf,
    ) -> f64 {
        let r = s.c;
        let g = dec.d.len / r.max(1);
        let px = s.h * s.w;
        // the batch's spots, concatenated: offsets, pixels, then per spot tile, ns, query
        let (mut off, mut pix, mut tile, mut ns, mut query) =
            (vec![0u32], Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut expr: Vec<f32> = Vec::new();
        for (n, t) in tiles.iter().enumerate() {
            for set in t.pixels {
                pix.extend_from_slice(set);
                off.push(pix.len() as u32);
                tile.push(n as u32);
                ns.push(t.pixels.len() as u32);
                query.push(match (dec.gamma, t.query) {
                    (Some(_), Some(q)) => q as u32,
                    _ => u32::MAX, // −1 as i32
                });
            }
            expr.extend_from_slice(&t.expression[..t.pixels.len() * g]);
        }
        let spots = tile.len();
        let d_dec = self.ptr(dec.grad_d);
        if let Some(gg) = dec.grad_gamma.as_deref() {
            self.zero_bytes(self.ptr(gg), gg.len * 4);
        }
        if spots == 0 {
            self.zero_bytes(d_dec, dec.d.len * 4);
            return 0.0;
        }
        // index scratch: [off | pix | tile | ns | query]
        let ints = self.scratch(&self.u32s, off.len() + pix.len() + 3 * spots);
        let mut at = ints;
        let mut put = |v: &[u32]| {
            self.htod(at, v);
            let p = at;
            at += (v.len() * 4) as u64;
            p
        };
        let (offp, pixp, tilep, nsp, queryp) = (put(&off), put(&pix), put(&tile), put(&ns), put(&query));
        // f32 scratch: [expression | scores]
        let fl = self.scratch(&self.f32s, expr.len() + spots * r);
        self.htod(fl, &expr);
        let scores = fl + (expr.len() * 4) as u64;
        // f64 scratch: [dpre | d_scores | loss]
        let db = self.scratch(&self.f64s, spots * g + spots * r + 1);
        let (dpre, dsc, lsum) = (db, db + (spots * g * 8) as u64, db + ((spots * g + spots * r) * 8) as u64);
        self.zero_bytes(lsum, 8);
        let hrp = self.ptr(hr);
        let mut cfg = cfg1(spots, THREADS);
        cfg.shared_mem_bytes = (r * 8) as u32;
        launch!(self, "spot_means_f32", cfg, hrp, px as i64, r as i32, offp, pixp, tilep, scores);
        let (gam, dgam) = (self.optr(dec.gamma), dec.grad_gamma.as_deref().map_or(0, |b| self.ptr(b)));
        launch!(
            self,
            "poisson_nll_f32",
            cfg1((spots * g).div_ceil(THREADS as usize), THREADS),
            scores,
            self.ptr(dec.d),
            gam,
            fl,
            nsp,
            queryp,
            spots as i32,
            g as i32,
            r as i32,
            scale,
            dpre,
            dgam,
            lsum
        );
        launch!(
            self,
            "decoder_grad_f32",
            cfg1((g * r).div_ceil(THREADS as usize), THREADS),
            dpre,
            scores,
            self.ptr(dec.d),
            spots as i32,
            g as i32,
            r as i32,
            d_dec
        );
        launch!(
            self,
            "score_grad_f64",
            cfg1((spots * r * 32).div_ceil(THREADS as usize), THREADS),
            dpre,
            self.ptr(dec.d),
            spots as i32,
            g as i32,
            r as i32,
            dsc
        );
        launch!(
            self,
            "spot_scatter_f32",
            cfg1(spots, THREADS),
            dsc,
            px as i64,
            r as i32,
            offp,
            pixp,
            tilep,
            self.ptr(d_hr)
        );
        self.dtoh::<f64>(lsum, 1)[0]
    }

    fn adam(&self, p: &mut DBuf, g: &DBuf, m: &mut DBuf, v: &mut DBuf, s: &AdamScalars) {
        launch!(
            self,
            "adam_f32",
            cfg_elems(p.len),
            self.ptr(p),
            self.ptr(g),
            self.ptr(m),
            self.ptr(v),
            p.len as i64,
            s.step_size,
            s.bc2_sqrt,
            s.beta1,
            s.beta2,
            s.eps,
            s.weight_decay
        );
    }
    fn band(&self, rank: usize, split: usize, bound: usize, wp: usize) -> DeviceBandAverager {
        DeviceBandAverager::new(self, rank, split, bound, wp)
    }
    fn band_add(&self, band: &mut DeviceBandAverager, c0: usize, hr: &DBuf, index: usize) {
        band.add(self, c0, hr, index)
    }
    fn band_advance(
        &self,
        band: &mut DeviceBandAverager,
        until: usize,
        emit: &mut dyn FnMut(usize, &[f32]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        band.advance(self, until, emit)
    }
    fn band_flush(
        &self,
        band: &mut DeviceBandAverager,
        emit: &mut dyn FnMut(usize, &[f32]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        band.flush(emit)
    }
    fn half_activations(&self, on: bool) -> bool {
        self.set_half_activations(on)
    }
    fn half_training(&self) -> bool {
        self.half_train.load(Ordering::Relaxed)
    }
    fn half_operands(&self) -> bool {
        self.precision == Precision::F16Wide
    }
    fn graphs(&self) -> bool {
        // per-launch profiling events cannot be recorded: profiled runs stay eager
        self.graphs_on() && self.profile.lock().unwrap().is_none()
    }
    fn capture(&self, body: &mut dyn FnMut()) -> Option<super::graph::CudaGraphRun> {
        self.record(body)
    }
    fn replay(&self, g: &super::graph::CudaGraphRun) -> bool {
        self.launch_recording(g)
    }
    fn discard(&self, g: super::graph::CudaGraphRun) {
        self.discard_recording(g)
    }
    fn zero_grads(&self, grads: &mut [DBuf]) {
        const KERNEL: &str = "zero_multi_f32";
        if !self.has_kernel(KERNEL) {
            return; // an older kernel image: each layer zeroes its own
        }
        let all: Vec<(u64, usize)> = grads.iter().filter(|g| !g.half).map(|g| (self.addr(g), g.len)).collect();
        for (list, grid) in super::multi::grad_lists(&all) {
            launch!(self, KERNEL, cfg1(grid, THREADS), list);
        }
        for g in grads.iter_mut().filter(|g| !g.half) {
            g.zeroed = true;
        }
    }
    fn grads_written(&self, grads: &mut [DBuf]) {
        for g in grads {
            g.zeroed = false;
        }
    }
    fn unscale_grads_into(&self, grads: &mut [DBuf], inv_scale: f32, flag: &mut DBuf) {
        // the flag's word holds a u32 (1 when found): `flag_set` reads its bits
        self.unscale_flagging(grads, inv_scale, self.ptr(flag));
    }
    fn flag_set(&self, flag: &DBuf) -> bool {
        self.dtoh::<u32>(self.ptr(flag), 1)[0] != 0
    }
    fn adam_at(
        &self,
        p: &mut DBuf,
        g: &DBuf,
        m: &mut DBuf,
        v: &mut DBuf,
        scalars: &DBuf,
        at: usize,
        skip: Option<&DBuf>,
    ) {
        assert!(scalars.len >= 6 * (at + 1), "Adam scalars for tensor {at} missing");
        launch!(
            self,
            "adam_dev_f32",
            cfg_elems(p.len),
            self.ptr(p),
            self.ptr(g),
            self.ptr(m),
            self.ptr(v),
            p.len as i64,
            self.ptr(scalars) + (24 * at) as u64,
            self.optr(skip)
        );
    }
    fn adam_many(
        &self,
        params: &mut [DBuf],
        grads: &[DBuf],
        opt: &mut crate::optim::Adam<DBuf>,
        tensors: &[usize],
        scalars: AdamSource<'_, DBuf>,
    ) {
        assert_eq!(tensors.len(), opt.m.len(), "one set of Adam moments per tensor");
        let (host, dev, skip) = match scalars {
            AdamSource::Host(s) => (Some(s), 0, 0),
            AdamSource::Device { scalars, skip } => {
                assert!(scalars.len >= 6 * tensors.len(), "Adam scalars for {} tensors missing", tensors.len());
                (None, self.ptr(scalars), self.optr(skip))
            }
        };
        let list = self.adam_tensors(params, grads, &opt.m, &opt.v, tensors, host);
        self.adam_multi(&list, dev, skip);
    }
    fn unscale_grads(&self, grads: &mut [DBuf], inv_scale: f32) -> bool {
        // every tensor ORs into one flag; one 4-byte read-back per step, as PyTorch's
        // GradScaler reads its found-inf flag once
        let flag = self.scratch(&self.u32s, 1);
        self.unscale_flagging(grads, inv_scale, flag);
        self.dtoh::<u32>(flag, 1)[0] != 0
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_list;

    #[test]
    fn withheld_kernels_are_listed_by_commas_or_spaces() {
        assert_eq!(kernel_list(""), Vec::<String>::new());
        assert_eq!(kernel_list(" , "), Vec::<String>::new());
        assert_eq!(
            kernel_list("conv3_halo_block_h16, conv4_down_halo_fwd_h16 pixel_runs_f64,,\n x"),
            ["conv3_halo_block_h16", "conv4_down_halo_fwd_h16", "pixel_runs_f64", "x"]
        );
    }
}
