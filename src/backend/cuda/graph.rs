//! Recorded steps (CUDA graphs) for `Backend::capture` / `replay`: the stream is captured in
//! relaxed mode while a body queues its work, and the graph replays it with one launch.
//!
//! A graph bakes in every pointer its kernels were given, so the memory under them must stay
//! its own: the pooled buffers the body took (and gave back) leave the pool for the graph, and
//! the scratch buffers it used must not be reallocated (a generation count: a replay after a
//! reallocation is refused and the step is recorded again). While capturing, anything that
//! cannot be recorded — a host read or upload, a buffer the pool lacks, a scratch buffer that
//! would grow — is not done but marks the recording failed: the graph is thrown away and the
//! caller runs the body eagerly (nothing it queued has run).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use cudarc::driver::{sys, CudaGraph};

use super::device::{Cuda, DBuf};

/// A recording and the buffers it owns.
pub struct CudaGraphRun {
    graph: CudaGraph,
    /// held for the graph's kernels, which read and write them on every replay
    _owned: Vec<DBuf>,
    /// the scratch generation it was recorded in
    generation: u64,
}

// SAFETY: a graph is used from one thread at a time (`Backend::replay` takes it by reference
// from its owner, on the backend's one stream); CUDA graph handles may move between threads.
unsafe impl Send for CudaGraphRun {}

/// What the body did while capturing.
#[derive(Default)]
pub(super) struct CaptureLog {
    /// device pointers of the pooled buffers handed out
    pub taken: HashSet<u64>,
    /// why the recording cannot be used (the first reason)
    pub failed: Option<&'static str>,
}

impl CaptureLog {
    pub fn fail(&mut self, why: &'static str) {
        self.failed.get_or_insert(why);
    }
}

impl Cuda {
    /// Whether a capture is in progress; marks it failed for `why` if so.
    pub(super) fn capture_refuses(&self, why: &'static str) -> bool {
        match self.capture.lock().unwrap().as_mut() {
            Some(log) => {
                log.fail(why);
                true
            }
            None => false,
        }
    }

    pub(super) fn record(&self, body: &mut dyn FnMut()) -> Option<CudaGraphRun> {
        if !self.graphs_on() || self.profile.lock().unwrap().is_some() {
            return None;
        }
        self.bind();
        let generation = self.scratch_generation.load(Ordering::Relaxed);
        *self.capture.lock().unwrap() = Some(CaptureLog::default());
        if self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).is_err() {
            *self.capture.lock().unwrap() = None;
            return None;
        }
        body();
        let end = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let log = self.capture.lock().unwrap().take().expect("capture log");
        let mut pool = self.pool.lock().unwrap();
        // placeholders handed out for pool misses point nowhere: forgotten, never freed
        for v in pool.values_mut() {
            for b in std::mem::take(v) {
                if self.ptr(&b) == 0 {
                    b.forget();
                } else {
                    v.push(b);
                }
            }
        }
        let graph = match (end, log.failed) {
            (Ok(Some(g)), None) => g,
            (Ok(_), Some(why)) => {
                eprintln!("cuda: a step could not be recorded as a graph ({why}); it runs eagerly");
                return None;
            }
            (Ok(None), None) => return None,
            (Err(e), _) => {
                eprintln!("cuda: recording a graph failed ({e}); the step runs eagerly");
                return None;
            }
        };
        // the buffers the body took and gave back are the graph's from now on
        let mut owned = Vec::new();
        for v in pool.values_mut() {
            for b in std::mem::take(v) {
                if log.taken.contains(&self.ptr(&b)) {
                    owned.push(b);
                } else {
                    v.push(b);
                }
            }
        }
        Some(CudaGraphRun { graph, _owned: owned, generation })
    }

    pub(super) fn launch_recording(&self, g: &CudaGraphRun) -> bool {
        if g.generation != self.scratch_generation.load(Ordering::Relaxed) {
            return false;
        }
        let start = self.profile_start();
        g.graph.launch().unwrap_or_else(|e| panic!("CUDA graph launch: {e}"));
        self.profile_end("graph", start);
        true
    }
}
