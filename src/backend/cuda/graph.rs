//! Recorded steps (CUDA graphs) for `Backend::capture` / `replay`: the stream is captured in
//! relaxed mode while a body queues its work, and the graph replays it with one launch.
//!
//! A graph bakes in every pointer its kernels were given, so the memory under them must stay
//! its own: the pooled buffers the body took (and gave back) leave the pool for the graph until
//! it is discarded, and the scratch buffers it used must not be reallocated (a generation
//! count: a replay after a reallocation is refused and the step is recorded again). While
//! capturing, anything that cannot be recorded — a host read or upload, a buffer the pool
//! lacks, a scratch buffer that would grow — is not done but fails the recording, and from then
//! on the body's launches, memsets and copies are skipped (a placeholder buffer points nowhere);
//! the caller runs the body eagerly (nothing it queued has run). A panic inside the body ends
//! the capture on the way out, so the stream is usable again (buffers dropped while unwinding
//! are leaked, not freed into the graph: `DBuf`'s `Drop`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use cudarc::driver::{result, sys};

use super::device::{Cuda, DBuf};

/// A recording and the buffers it owns.
pub struct CudaGraphRun {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    /// read and written by the graph's kernels on every replay
    owned: Vec<DBuf>,
    /// the scratch generation it was recorded in
    generation: u64,
}

// SAFETY: a graph is used from one thread at a time (`Backend::replay` takes it by reference
// from its owner, launches on the backend's one stream); CUDA graph handles may move between
// threads.
unsafe impl Send for CudaGraphRun {}

impl Drop for CudaGraphRun {
    fn drop(&mut self) {
        // SAFETY: both handles came from a successful capture and instantiation and are
        // destroyed once; launches already queued keep their own reference to the executable.
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

/// What the body did while capturing.
#[derive(Default)]
pub(super) struct CaptureLog {
    /// device pointers of the pooled buffers handed out
    pub taken: HashSet<u64>,
    /// why the recording cannot be used (the first reason)
    pub failed: Option<&'static str>,
}

/// Ends a capture however the body leaves (a panic included) and clears the log.
struct Capturing<'a>(&'a Cuda);

impl Capturing<'_> {
    /// The captured graph (null if none) and the log.
    fn end(self) -> (Result<sys::CUgraph, result::DriverError>, CaptureLog) {
        let out = self.finish();
        std::mem::forget(self);
        out
    }
    fn finish(&self) -> (Result<sys::CUgraph, result::DriverError>, CaptureLog) {
        let g = self.0;
        // straight to the driver: cudarc's wrapper checks for earlier errors first and would
        // leave the stream capturing
        // SAFETY: the stream is this backend's and is capturing (begun in `record`).
        let end = unsafe { result::stream::end_capture(g.stream.cu_stream()) };
        g.doomed.store(false, Ordering::Relaxed);
        let log = g.capture.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        (end, log)
    }
}

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        if let (Ok(graph), _) = self.finish() {
            if !graph.is_null() {
                // SAFETY: a graph the capture just returned, never instantiated.
                unsafe {
                    let _ = result::graph::destroy(graph);
                }
            }
        }
    }
}

impl Cuda {
    /// Whether a capture is in progress; fails it for `why` if so.
    pub(super) fn capture_refuses(&self, why: &'static str) -> bool {
        match self.capture.lock().unwrap().as_mut() {
            Some(log) => {
                log.failed.get_or_insert(why);
                self.doomed.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// A failed capture is under way: queue nothing more (its pointers may be placeholders).
    pub(super) fn skipping(&self) -> bool {
        self.doomed.load(Ordering::Relaxed)
    }

    pub(super) fn record(&self, body: &mut dyn FnMut()) -> Option<CudaGraphRun> {
        if !self.graphs_on() || self.profile.lock().unwrap().is_some() {
            return None;
        }
        self.bind();
        let generation = self.scratch_generation.load(Ordering::Relaxed);
        {
            let mut log = self.capture.lock().unwrap();
            if let Some(outer) = log.as_mut() {
                // captures do not nest: the outer one fails, this one is not made
                outer.failed.get_or_insert("a capture inside a capture");
                self.doomed.store(true, Ordering::Relaxed);
                return None;
            }
            *log = Some(CaptureLog::default());
        }
        // SAFETY: the backend's own stream, not capturing (a nested call was refused above).
        let begun = unsafe {
            result::stream::begin_capture(
                self.stream.cu_stream(),
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
            )
        };
        if begun.is_err() {
            *self.capture.lock().unwrap() = None;
            return None;
        }
        let guard = Capturing(self);
        body();
        let (end, log) = guard.end();
        let graph = match end {
            Ok(g) if g.is_null() => return None,
            Ok(g) => g,
            Err(e) => {
                eprintln!("cuda: recording a graph failed ({e}); the step runs eagerly");
                return None;
            }
        };
        if let Some(why) = log.failed {
            eprintln!("cuda: a step could not be recorded as a graph ({why}); it runs eagerly");
            // SAFETY: the graph the capture returned, never instantiated.
            unsafe {
                let _ = result::graph::destroy(graph);
            }
            return None;
        }
        // SAFETY: a complete graph from the capture above.
        let exec = match unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cuda: instantiating a recorded graph failed ({e}); the step runs eagerly");
                // SAFETY: as above.
                unsafe {
                    let _ = result::graph::destroy(graph);
                }
                return None;
            }
        };
        // the buffers the body took and gave back are the graph's from now on
        let mut owned = Vec::new();
        let mut pool = self.pool.lock().unwrap();
        for v in pool.values_mut() {
            for b in std::mem::take(v) {
                if log.taken.contains(&self.addr(&b)) {
                    owned.push(b);
                } else {
                    v.push(b);
                }
            }
        }
        Some(CudaGraphRun { graph, exec, owned, generation })
    }

    pub(super) fn launch_recording(&self, g: &CudaGraphRun) -> bool {
        if g.generation != self.scratch_generation.load(Ordering::Relaxed) {
            return false;
        }
        self.bind();
        let start = self.profile_start();
        // SAFETY: an executable graph of this context, on the stream it was recorded from.
        unsafe { result::graph::launch(g.exec, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA graph launch: {e}"));
        self.profile_end("graph", start);
        true
    }

    /// The recording's buffers back into the pool (work queued before reads them first: the
    /// pool hands them out for work queued after), then the graph itself.
    pub(super) fn discard_recording(&self, mut g: CudaGraphRun) {
        let mut pool = self.pool.lock().unwrap();
        for b in g.owned.drain(..) {
            pool.entry(b.pool_key()).or_default().push(b);
        }
    }
}
