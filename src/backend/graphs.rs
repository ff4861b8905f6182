//! Steps recorded once and replayed with one launch (CUDA graphs, `Backend::capture`): a loop
//! hands `Replayed::run` the same body every iteration. The first run of a key is eager — it
//! fills the buffer pool, so the recording allocates nothing — the second records the body and
//! replays it, later ones replay. A recording that cannot be made is tried again after another
//! eager run (a buffer the pool lacked may be back), at most `TRIES` times per key; one that
//! went stale (a scratch buffer it reads was reallocated) is discarded and made again.
//!
//! A recording bakes in the addresses of every buffer its body touches: the body must see the
//! same buffers on every run — inputs written into them beforehand, outputs read after, and
//! parameters updated in place, never replaced (`RecordedStep`, `RecordedOut` keep their own
//! inputs and outputs per shape).

use super::Backend;

/// What `Backend::capture` / `replay` / `discard` offer, apart so the schedule is testable
/// without a GPU.
pub trait Recorder {
    type Graph;
    fn graphs(&self) -> bool;
    fn capture(&self, body: &mut dyn FnMut()) -> Option<Self::Graph>;
    fn replay(&self, g: &Self::Graph) -> bool;
    fn discard(&self, g: Self::Graph);
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
    fn discard(&self, g: B::Graph) {
        Backend::discard(self, g)
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

/// Recording attempts per key before it stays eager.
pub const TRIES: u32 = 3;

/// A body's recording for one key (the constants it bakes in: change the key and it is
/// recorded anew).
pub struct Replayed<R: Recorder> {
    key: Option<u64>,
    /// the key's body has run eagerly since its recording was last discarded
    warm: bool,
    /// failed recordings of this key
    tries: u32,
    graph: Option<R::Graph>,
    pub recorded: u64,
    pub replayed: u64,
    pub failed: u64,
}

impl<R: Recorder> Default for Replayed<R> {
    fn default() -> Self {
        Replayed { key: None, warm: false, tries: 0, graph: None, recorded: 0, replayed: 0, failed: 0 }
    }
}

impl<R: Recorder> Replayed<R> {
    /// Queue `body`'s work once: eagerly, or from its recording.
    pub fn run(&mut self, r: &R, key: u64, body: &mut dyn FnMut()) -> Ran {
        if !r.graphs() {
            // recordings switched off: one made before must not outlive its buffers' users
            self.discard(r);
            body();
            return Ran::Eager;
        }
        if self.key != Some(key) {
            self.discard(r);
            self.key = Some(key);
            self.tries = 0;
        }
        if let Some(g) = &self.graph {
            if r.replay(g) {
                self.replayed += 1;
                return Ran::Replayed;
            }
            self.discard(r);
        }
        if self.tries >= TRIES || !self.warm {
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
            other => {
                if let Some(g) = other {
                    r.discard(g);
                }
                self.failed += 1;
                self.tries += 1;
                body();
                Ran::Eager
            }
        }
    }

    /// Drop the recording (its buffers go back for reuse); the next run is eager.
    pub fn discard(&mut self, r: &R) {
        if let Some(g) = self.graph.take() {
            r.discard(g);
        }
        self.warm = false;
    }
}

/// A key from the sizes and constants a recording bakes in (FNV-1a over the values).
pub(crate) fn mix(v: &[usize]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| (h ^ v as u64).wrapping_mul(0x100_0000_01b3))
}

/// Recordings kept per user: a full batch and the short one that ends an epoch or a row of
/// tiles, so alternating between them replays instead of recording again.
const KEEP: usize = 2;

/// The most recently used `KEEP` entries by key; `make` builds a missing one, `evict` takes the
/// one it pushes out.
pub(crate) fn lru<T>(v: &mut Vec<(u64, T)>, key: u64, make: impl FnOnce() -> T, evict: impl FnOnce(T)) -> &mut T {
    match v.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            let e = v.remove(i);
            v.insert(0, e);
        }
        None => {
            if v.len() == KEEP {
                evict(v.pop().unwrap().1);
            }
            v.insert(0, (key, make()));
        }
    }
    &mut v[0].1
}

/// A body from input buffers to one output buffer, recorded per input shape (the inference
/// batch): with recordings on, the inputs are first copied into buffers of its own (a graph
/// bakes in their addresses, and streamed inputs alternate between slots) and the output is its
/// own, overwritten by the next run of that shape.
pub struct RecordedOut<B: Backend> {
    out: Option<B::Buf>,
    shapes: Vec<(u64, OutSlot<B>)>,
}

struct OutSlot<B: Backend> {
    inputs: Vec<B::Buf>,
    out: Option<B::Buf>,
    rec: Replayed<B>,
}

impl<B: Backend> Default for RecordedOut<B> {
    fn default() -> Self {
        RecordedOut { out: None, shapes: Vec::new() }
    }
}

impl<B: Backend> OutSlot<B> {
    fn release(mut self, b: &B) {
        self.rec.discard(b);
        for x in self.inputs.drain(..).chain(self.out.take()) {
            b.release(x);
        }
    }
}

impl<B: Backend> RecordedOut<B> {
    /// `body(srcs)`, queued eagerly or replayed; the output stays valid until the next run.
    pub fn run(&mut self, b: &B, key: u64, srcs: &[&B::Buf], body: &dyn Fn(&[&B::Buf]) -> B::Buf) -> &B::Buf {
        if let Some(o) = self.out.take() {
            b.release(o);
        }
        if !b.graphs() {
            for (_, slot) in self.shapes.drain(..) {
                slot.release(b);
            }
            return self.out.insert(body(srcs));
        }
        // a shape is the inputs' lengths and precisions (the score stage's VD prior is f16)
        let kinds: Vec<usize> = srcs.iter().map(|x| 2 * b.len(x) + b.holds_half(x) as usize).collect();
        let slot = lru(
            &mut self.shapes,
            mix(&kinds),
            || OutSlot { inputs: srcs.iter().map(|x| b.alloc_like(x)).collect(), out: None, rec: Replayed::default() },
            |old| old.release(b),
        );
        for (src, dst) in srcs.iter().zip(slot.inputs.iter_mut()) {
            b.copy(src, dst);
        }
        let (inputs, out) = (&slot.inputs, &mut slot.out);
        slot.rec.run(b, key, &mut || {
            let refs: Vec<&B::Buf> = inputs.iter().collect();
            // the old output first, so a recording finds its buffer in the pool (a replay
            // writes into the output it was recorded with: the one kept here)
            if let Some(o) = out.take() {
                b.release(o);
            }
            *out = Some(body(&refs));
        });
        slot.out.as_ref().expect("the body ran or was replayed")
    }

    pub fn release(mut self, b: &B) {
        if let Some(o) = self.out.take() {
            b.release(o);
        }
        for (_, slot) in self.shapes.drain(..) {
            slot.release(b);
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
        fn discard(&self, _g: u32) {}
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
        // a recording refused: tried again after each eager run, TRIES times, then eager
        m.refuse.set(true);
        for _ in 0..2 * TRIES + 3 {
            assert_eq!(run(&mut r, 9), Ran::Eager);
        }
        assert_eq!((r.recorded, r.failed), (3, TRIES as u64));
        // a refusal that passes (a buffer back in the pool) records at the next try
        assert_eq!(run(&mut r, 10), Ran::Eager);
        assert_eq!(run(&mut r, 10), Ran::Eager);
        m.refuse.set(false);
        assert_eq!(run(&mut r, 10), Ran::Recorded);
        assert_eq!(r.replayed, 3);
    }

    /// The least recently used entry goes once more than two are kept.
    #[test]
    fn two_recordings_are_kept() {
        let mut v: Vec<(u64, u32)> = Vec::new();
        let mut gone = Vec::new();
        for k in [1, 2, 1, 3, 1, 2] {
            *lru(&mut v, k, || 0, |e| gone.push(e)) += 1;
        }
        assert_eq!(v, [(2, 1), (1, 3)]);
        assert_eq!(gone, [1, 1]);
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
