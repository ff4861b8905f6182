//! The CUDA side of the backend seam: device discovery through cudarc's dynamically loaded
//! driver API, the kernels `build.rs` compiled into the binary, and the `Cuda` backend. The
//! driver library is probed before any call, so machines without CUDA only get a message.

/// Launch kernel `$name` of the embedded module with scalar arguments (device pointers as u64).
macro_rules! launch {
    ($s:expr, $name:expr, $cfg:expr $(, $arg:expr)* $(,)?) => {{
        // a failed graph capture queues nothing more (src/backend/cuda/graph.rs)
        if !$s.skipping() {
            let f = $s.func($name);
            let mut b = $s.stream.launch_builder(&f);
            $( let a = $arg; cudarc::driver::PushKernelArg::arg(&mut b, &a); )*
            let start = $s.profile_start();
            // SAFETY: argument lists match the kernels' signatures in kernels/*.cu (reviewed
            // together; every kernel is tested against the CPU backend).
            unsafe { b.launch($cfg) }.unwrap_or_else(|e| panic!("CUDA kernel {}: {e}", $name));
            $s.profile_end($name, start);
        }
    }};
}

mod device;
pub mod gcn;
mod graph;
mod half;
pub mod multi;
pub mod nmf;
mod profile;
pub mod tiles;
pub mod vd;
pub use device::{Cuda, DBuf, Precision, DYNAMIC_SHARED_MEMORY, SPEED};
pub use graph::CudaGraphRun;
pub use half::half_from_env;
pub use profile::KernelTime;

use serde::Serialize;

/// Architectures the embedded fatbin holds SASS/PTX for (empty: built without nvcc).
pub const KERNEL_ARCHS: &str = env!("SPAHDMAP_KERNEL_ARCHS");
/// The nvcc that compiled the embedded kernels (empty where none did).
pub const NVCC: &str = env!("SPAHDMAP_NVCC");

/// The fatbin of `kernels/*.cu` (empty when built without nvcc).
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));
/// The sm_90a image of `kernels/sm90a/*.cu` (the wgmma kernels; empty when built without nvcc),
/// loaded beside FATBIN on a compute-capability 9.0 card.
pub static FATBIN_SM90A: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels_sm90a.fatbin"));

#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: usize,
    pub compute_capability: (i32, i32),
}

/// The CUDA devices of this machine, or why there are none.
pub fn probe() -> Result<Vec<DeviceInfo>, String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda) on this machine".into());
    }
    result::init().map_err(|e| format!("CUDA driver failed to initialise: {e}"))?;
    let n = result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    let mut v = Vec::new();
    for i in 0..n {
        let dev = result::device::get(i).map_err(|e| format!("device {i}: {e}"))?;
        let name = result::device::get_name(dev).map_err(|e| format!("device {i}: {e}"))?;
        // SAFETY: `dev` comes from `get`.
        let (mem, major, minor) = unsafe {
            (
                result::device::total_mem(dev).map_err(|e| format!("device {i}: {e}"))?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )
                .map_err(|e| format!("device {i}: {e}"))?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )
                .map_err(|e| format!("device {i}: {e}"))?,
            )
        };
        v.push(DeviceInfo { ordinal: i as usize, name, memory_bytes: mem, compute_capability: (major, minor) });
    }
    Ok(v)
}

/// What `spahdmap devices` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Devices {
    pub cpu_threads: usize,
    pub cuda_devices: Vec<DeviceInfo>,
    /// why there is no CUDA device, when there is none
    pub cuda_unavailable: Option<String>,
    pub kernels_built: bool,
    pub kernel_archs: Vec<String>,
    pub kernel_fatbin_bytes: usize,
}

pub fn devices() -> Devices {
    let (cuda_devices, cuda_unavailable) = match probe() {
        Ok(v) if v.is_empty() => (v, Some("the CUDA driver reports no device".into())),
        Ok(v) => (v, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Devices {
        cpu_threads: rayon::current_num_threads(),
        cuda_devices,
        cuda_unavailable,
        kernels_built: !FATBIN.is_empty(),
        kernel_archs: KERNEL_ARCHS.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
        kernel_fatbin_bytes: FATBIN.len(),
    }
}

impl std::fmt::Display for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "cpu      {} threads", self.cpu_threads)?;
        for d in &self.cuda_devices {
            writeln!(
                f,
                "cuda:{}   {} (sm_{}{}, {:.1} GiB)",
                d.ordinal,
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.memory_bytes as f64 / (1u64 << 30) as f64
            )?;
        }
        if let Some(why) = &self.cuda_unavailable {
            writeln!(f, "cuda     none: {why}")?;
        }
        if self.kernels_built {
            writeln!(f, "kernels  built for {} ({} bytes)", self.kernel_archs.join(", "), self.kernel_fatbin_bytes)
        } else {
            writeln!(f, "kernels  not built (no nvcc at build time)")
        }
    }
}
