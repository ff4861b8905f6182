//! Double-buffered device inputs for streamed inference: batch k is uploaded into one of two
//! slots while batch k − 1 computes, each upload waiting only for the work that last read its
//! slot (two batches of that shape before), never for the batch in flight
//! (`Backend::upload_overlapped`).

use super::{Backend, Host};

/// One slot: a device buffer per input of a batch, and the fence after the batch that last
/// read them (none: never read yet, so the first upload waits for all queued work).
struct Slot<B: Backend> {
    bufs: Vec<B::Buf>,
    read_until: Option<B::Fence>,
}

/// The two slots of one batch shape (its inputs' lengths), taken in turn.
struct Pair<B: Backend> {
    lens: Vec<usize>,
    slots: [Option<Slot<B>>; 2],
    next: usize,
}

/// Two slots per batch shape: the score stage's rows of tiles end in a shorter batch, and
/// alternating shapes must not cost fresh buffers — whose first upload waits for everything
/// queued — at every row.
pub struct InputRing<B: Backend> {
    shapes: Vec<Pair<B>>,
    /// (shape, slot) of the last fill, for `done`
    last: Option<(usize, usize)>,
}

impl<B: Backend> Default for InputRing<B> {
    fn default() -> Self {
        InputRing { shapes: Vec::new(), last: None }
    }
}

impl<B: Backend> InputRing<B> {
    /// Upload a batch's inputs (one host slice per device buffer) into the next slot of their
    /// shape; the buffers are for the work queued before `done`, which must follow.
    pub fn fill(&mut self, b: &B, hosts: &[Host<'_>]) -> &[B::Buf] {
        // a shape is the inputs' lengths and precisions
        let lens: Vec<usize> = hosts.iter().map(|h| 2 * h.len() + matches!(h, Host::F16(_)) as usize).collect();
        let si = match self.shapes.iter().position(|p| p.lens == lens) {
            Some(i) => i,
            None => {
                self.shapes.push(Pair { lens, slots: [None, None], next: 0 });
                self.shapes.len() - 1
            }
        };
        let pair = &mut self.shapes[si];
        let i = pair.next;
        pair.next ^= 1;
        self.last = Some((si, i));
        let s = pair.slots[i]
            .get_or_insert_with(|| Slot { bufs: hosts.iter().map(|&h| b.alloc_upload(h)).collect(), read_until: None });
        for (d, &h) in s.bufs.iter_mut().zip(hosts) {
            b.upload_overlapped(h, d, s.read_until.as_ref());
        }
        &s.bufs
    }

    /// Mark the slot just filled as read by the work queued so far.
    pub fn done(&mut self, b: &B) {
        if let Some((si, i)) = self.last.take() {
            if let Some(s) = self.shapes[si].slots[i].as_mut() {
                s.read_until = Some(b.fence());
            }
        }
    }

    /// Give the buffers back to the backend.
    pub fn release(self, b: &B) {
        for pair in self.shapes {
            for s in pair.slots.into_iter().flatten() {
                s.bufs.into_iter().for_each(|d| b.release(d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    /// Slots alternate within a shape and keep their buffers; a second shape (a row's short
    /// last batch) gets slots of its own, so alternating shapes allocate nothing after the
    /// first two batches of each.
    #[test]
    fn batches_alternate_between_two_slots_per_shape() {
        let b = Cpu::new();
        let mut ring = InputRing::<Cpu>::default();
        // the second input in f16, as the score stage sends the VD prior: widened on the CPU
        let run = |ring: &mut InputRing<Cpu>, k: f32, n: usize| {
            let a = vec![k; n];
            let c: Vec<half::f16> = (0..n / 2).map(|i| half::f16::from_f32(-k - i as f32 / 8.0)).collect();
            let got = ring.fill(&b, &[Host::F32(&a), Host::F16(&c)]).to_vec();
            ring.done(&b);
            assert_eq!(got, vec![a, c.iter().map(|v| v.to_f32()).collect()]);
        };
        for row in 0..3 {
            for k in 0..3 {
                run(&mut ring, (10 * row + k) as f32, 8);
            }
            run(&mut ring, -1.0 - row as f32, 4);
            if row == 1 {
                // full and short slots exist: nothing new from here on
                let fresh = b.fresh_allocations();
                run(&mut ring, 99.0, 8);
                run(&mut ring, 98.0, 4);
                assert_eq!(b.fresh_allocations(), fresh);
            }
        }
        assert_eq!(b.fresh_allocations(), 8, "two slots of two buffers for each of two shapes");
        // the same lengths in another precision are another shape
        let a = vec![1.0f32; 4];
        ring.fill(&b, &[Host::F32(&a), Host::F32(&a[..2])]);
        ring.done(&b);
        assert_eq!(b.fresh_allocations(), 10);
        ring.release(&b);
    }
}
