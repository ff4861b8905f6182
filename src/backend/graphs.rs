//! Steps recorded once and replayed with one launch (CUDA graphs, `Backend::capture`): a loop
//! hands `Replayed::run` the same body every iteration. The first run of a key is eager — it
//! fills the buffer pool, so the recording allocates nothing — the second records the body and
//! replays it, later ones replay. A recording that cannot be made leaves the key eager; one
//! that went stale (a scratch buffer it reads was reallocated) is dropped and made again.

use super::Backend;

/// What `Backend::capture` / `replay` offer, apart so the schedule is testable without a GPU.
pub trait Recorder {
    type Graph;
    fn graphs(&self) -> bool;
    fn capture(&self, body: &mut dyn FnMut()) -> Option<Self::Graph>;
    fn replay(&self, g: &Self::Graph) -> bool;
}

impl<B: Backend> Recorder for B {
    type Graph = B::Graph;
    fn graphs(&self) -> bool {
        Backend::graphs(self)
    }
    fn capture(&self, body: &mut dyn FnMut()) -> Option<B::Graph> {
        Backend::capture(self, body)
    }
    fn replay(&self, g: &B::Graph) -> bool {
        Backend::replay(self, g)
    }
}

/// How a run's work was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    Eager,
    /// recorded just now, then replayed
    Recorded,
    Replayed,
}

/// A body's recording for one key (the shapes and constants it bakes in: change the key and
/// it is recorded anew).
pub struct Replayed<R: Recorder> {
    key: Option<u64>,
    /// the key's body has run eagerly once since its buffers were last given up
    warm: bool,
    /// recording failed for this key: it stays eager
    eager: bool,
    graph: Option<R::Graph>,
    pub recorded: u64,
    pub replayed: u64,
    pub failed: u64,
}

impl<R: Recorder> Default for Replayed<R> {
    fn default() -> Self {
        Replayed { key: None, warm: false, eager: false, graph: None, recorded: 0, replayed: 0, failed: 0 }
    }
}

impl<R: Recorder> Replayed<R> {
    /// Queue `body`'s work once: eagerly, or from its recording. The body sees the same
    /// buffers every run (inputs written into them beforehand, outputs read after).
    pub fn run(&mut self, r: &R, key: u64, body: &mut dyn FnMut()) -> Ran {
        if !r.graphs() {
            body();
            return Ran::Eager;
        }
        if self.key != Some(key) {
            // the old recording's buffers go with it
            *self = Replayed {
                recorded: self.recorded,
                replayed: self.replayed,
                failed: self.failed,
                ..Default::default()
            };
            self.key = Some(key);
        }
        if let Some(g) = &self.graph {
            if r.replay(g) {
                self.replayed += 1;
                return Ran::Replayed;
            }
            self.graph = None;
            self.warm = false;
        }
        if self.eager || !self.warm {
            body();
            self.warm = true;
            return Ran::Eager;
        }
        match r.capture(body) {
            Some(g) if r.replay(&g) => {
                self.graph = Some(g);
                self.recorded += 1;
                Ran::Recorded
            }
            _ => {
                self.failed += 1;
                self.eager = true;
                body();
                Ran::Eager
            }
        }
    }
}

/// A body from input buffers to one output buffer, recorded per key (the inference batch):
/// with recordings on, the inputs are first copied into buffers of its own (a graph bakes in
/// their addresses, and streamed inputs alternate between slots) and the output is its own,
/// overwritten by the next run.
pub struct RecordedOut<B: Backend> {
    inputs: Vec<B::Buf>,
    out: Option<B::Buf>,
    rec: Replayed<B>,
}

impl<B: Backend> Default for RecordedOut<B> {
    fn default() -> Self {
        RecordedOut { inputs: Vec::new(), out: None, rec: Replayed::default() }
    }
}

impl<B: Backend> RecordedOut<B> {
    /// `body(srcs)`, queued eagerly or replayed; the output stays valid until the next run.
    pub fn run(&mut self, b: &B, key: u64, srcs: &[&B::Buf], body: &dyn Fn(&[&B::Buf]) -> B::Buf) -> &B::Buf {
        if !b.graphs() {
            if let Some(o) = self.out.take() {
                b.release(o);
            }
            self.out = Some(body(srcs));
            return self.out.as_ref().unwrap();
        }
        let lens: Vec<usize> = srcs.iter().map(|x| b.len(x)).collect();
        if self.inputs.iter().map(|x| b.len(x)).ne(lens.iter().copied()) {
            for x in self.inputs.drain(..) {
                b.release(x);
            }
            self.inputs = lens.iter().map(|&n| b.alloc(n)).collect();
        }
        for (src, dst) in srcs.iter().zip(self.inputs.iter_mut()) {
            b.copy(src, dst);
        }
        let key = lens.iter().fold(key, |h, &n| (h ^ n as u64).wrapping_mul(0x100_0000_01b3));
        let (inputs, out) = (&self.inputs, &mut self.out);
        self.rec.run(b, key, &mut || {
            let refs: Vec<&B::Buf> = inputs.iter().collect();
            // the old output first, so a recording finds its buffer in the pool (a replay
            // writes into the output it was recorded with: the one kept here)
            if let Some(o) = out.take() {
                b.release(o);
            }
            *out = Some(body(&refs));
        });
        self.out.as_ref().expect("the body ran or was replayed")
    }

    pub fn release(mut self, b: &B) {
        for x in self.inputs.drain(..).chain(self.out.take()) {
            b.release(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Records by running nothing; a recording is valid while `generation` is unchanged.
    struct Mock {
        on: bool,
        refuse: Cell<bool>,
        generation: Cell<u32>,
        replays: Cell<u32>,
    }

    impl Recorder for Mock {
        type Graph = u32;
        fn graphs(&self) -> bool {
            self.on
        }
        fn capture(&self, _body: &mut dyn FnMut()) -> Option<u32> {
            (!self.refuse.get()).then_some(self.generation.get())
        }
        fn replay(&self, g: &u32) -> bool {
            let ok = *g == self.generation.get();
            self.replays.set(self.replays.get() + ok as u32);
            ok
        }
    }

    fn mock(on: bool) -> Mock {
        Mock { on, refuse: Cell::new(false), generation: Cell::new(0), replays: Cell::new(0) }
    }

    /// The body's work is queued exactly once per run, whichever way: eagerly on the first run
    /// of a key, by a replay after that; a new key, a stale recording and a refused one fall
    /// back to running the body.
    #[test]
    fn each_run_queues_the_body_once() {
        let m = mock(true);
        let mut r = Replayed::default();
        let eager = Cell::new(0);
        let run = |r: &mut Replayed<Mock>, key| {
            let before = (eager.get(), m.replays.get());
            let how = r.run(&m, key, &mut || eager.set(eager.get() + 1));
            let after = (eager.get(), m.replays.get());
            assert_eq!(after.0 - before.0 + after.1 - before.1, 1, "{how:?}");
            how
        };
        assert_eq!(run(&mut r, 7), Ran::Eager);
        assert_eq!(run(&mut r, 7), Ran::Recorded);
        assert_eq!(run(&mut r, 7), Ran::Replayed);
        assert_eq!(run(&mut r, 7), Ran::Replayed);
        // a new key (another batch size or loss scale): eager once, then recorded
        assert_eq!(run(&mut r, 8), Ran::Eager);
        assert_eq!(run(&mut r, 8), Ran::Recorded);
        // stale (scratch reallocated): warmed again, recorded again
        m.generation.set(1);
        assert_eq!(run(&mut r, 8), Ran::Eager);
        assert_eq!(run(&mut r, 8), Ran::Recorded);
        assert_eq!(run(&mut r, 8), Ran::Replayed);
        // a recording refused: that key stays eager
        m.refuse.set(true);
        assert_eq!(run(&mut r, 9), Ran::Eager);
        assert_eq!(run(&mut r, 9), Ran::Eager);
        assert_eq!(run(&mut r, 9), Ran::Eager);
        assert_eq!((r.recorded, r.failed), (3, 1));
        assert_eq!(r.replayed, 3);
    }

    #[test]
    fn without_graphs_every_run_is_eager() {
        let m = mock(false);
        let mut r = Replayed::default();
        let mut n = 0;
        for _ in 0..4 {
            assert_eq!(r.run(&m, 1, &mut || n += 1), Ran::Eager);
        }
        assert_eq!((n, r.recorded, m.replays.get()), (4, 0, 0));
    }
}
