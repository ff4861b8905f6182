//! Device time per kernel, for finding where an iteration goes (`spahdmap bench unet` with
//! `SPAHDMAP_GPU_PROFILE=1`). Off by default: while on, every launch and memset is bracketed by
//! a pair of CUDA events on the stream, which costs a little host time per launch but leaves
//! the device's work and its order unchanged.
use std::collections::HashMap;

use cudarc::driver::{sys, CudaEvent};
use serde::Serialize;

use super::Cuda;

pub(crate) struct Launch {
    name: &'static str,
    start: CudaEvent,
    end: CudaEvent,
    flop: f64,
}

/// One kernel's share of the profiled work: launches, summed device milliseconds and the
/// useful floating-point operations of its launches (convolutions: 2 · output elements ·
/// taps · input channels for the forward pass and both gradients; 0 where not counted).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KernelTime {
    pub kernel: String,
    pub launches: usize,
    pub ms: f64,
    pub flop: f64,
}

impl Cuda {
    /// Start (or stop) recording each launch's device time; starting clears what was recorded.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap() = on.then(Vec::new);
    }

    fn event(&self) -> CudaEvent {
        let e = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap_or_else(|e| panic!("CUDA event: {e}"));
        e.record(&self.stream).unwrap_or_else(|e| panic!("CUDA event: {e}"));
        e
    }

    /// An event recorded before a launch, when profiling.
    pub(super) fn profile_start(&self) -> Option<CudaEvent> {
        self.profile.lock().unwrap().is_some().then(|| self.event())
    }

    /// Pairs the start event with one recorded after the launch of `name`.
    pub(super) fn profile_end(&self, name: &'static str, start: Option<CudaEvent>) {
        let Some(start) = start else { return };
        let end = self.event();
        if let Some(v) = self.profile.lock().unwrap().as_mut() {
            v.push(Launch { name, start, end, flop: 0.0 });
        }
    }

    /// The useful work of the launch just recorded, when profiling.
    pub(super) fn profile_flop(&self, flop: f64) {
        if let Some(l) = self.profile.lock().unwrap().as_mut().and_then(|v| v.last_mut()) {
            l.flop = flop;
        }
    }

    /// What was recorded since profiling started (or since the last call), kernel by kernel,
    /// the most expensive first; recording goes on. Empty when not profiling.
    pub fn take_profile(&self) -> Vec<KernelTime> {
        let launches = match self.profile.lock().unwrap().as_mut() {
            Some(v) => std::mem::take(v),
            None => return Vec::new(),
        };
        let mut by: HashMap<&'static str, (usize, f64, f64)> = HashMap::new();
        for l in &launches {
            l.end.synchronize().unwrap_or_else(|e| panic!("CUDA event: {e}"));
            let ms = l.start.elapsed_ms(&l.end).unwrap_or_else(|e| panic!("CUDA event: {e}"));
            let t = by.entry(l.name).or_default();
            t.0 += 1;
            t.1 += ms as f64;
            t.2 += l.flop;
        }
        let mut out: Vec<KernelTime> = by
            .into_iter()
            .map(|(k, (launches, ms, flop))| KernelTime { kernel: k.to_string(), launches, ms, flop })
            .collect();
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.kernel.cmp(&b.kernel)));
        out
    }
}
