//! Double-buffered device inputs for streamed inference: batch k is uploaded into slot k mod 2
//! while batch k − 1 computes, each upload waiting only for the work that last read its slot
//! (batch k − 2), never for the batch in flight (`Backend::upload_overlapped`).

use super::Backend;

/// One slot: a device buffer per input of a batch, and the fence after the batch that last
/// read them.
struct Slot<B: Backend> {
    bufs: Vec<B::Buf>,
    read_until: Option<B::Fence>,
}

pub struct InputRing<B: Backend> {
    slots: [Option<Slot<B>>; 2],
    next: usize,
}

impl<B: Backend> Default for InputRing<B> {
    fn default() -> Self {
        InputRing { slots: [None, None], next: 0 }
    }
}

impl<B: Backend> InputRing<B> {
    /// Upload a batch's inputs (one host slice per device buffer) into the next slot; the
    /// buffers are for the work queued before `done`.
    pub fn fill(&mut self, b: &B, hosts: &[&[f32]]) -> &[B::Buf] {
        let i = self.next;
        self.next ^= 1;
        let fits = self.slots[i]
            .as_ref()
            .is_some_and(|s| s.bufs.len() == hosts.len() && s.bufs.iter().zip(hosts).all(|(d, h)| b.len(d) == h.len()));
        if !fits {
            if let Some(s) = self.slots[i].take() {
                s.bufs.into_iter().for_each(|d| b.release(d));
            }
            // pooled buffers may still be read by queued work: a fresh slot waits for all of it
            let bufs = hosts.iter().map(|h| b.alloc(h.len())).collect();
            self.slots[i] = Some(Slot { bufs, read_until: Some(b.fence()) });
        }
        let s = self.slots[i].as_mut().unwrap();
        for (d, h) in s.bufs.iter_mut().zip(hosts) {
            b.upload_overlapped(h, d, s.read_until.as_ref());
        }
        &s.bufs
    }

    /// Mark the slot just filled as read by the work queued so far.
    pub fn done(&mut self, b: &B) {
        if let Some(s) = self.slots[self.next ^ 1].as_mut() {
            s.read_until = Some(b.fence());
        }
    }

    /// Give the buffers back to the backend.
    pub fn release(self, b: &B) {
        for s in self.slots.into_iter().flatten() {
            s.bufs.into_iter().for_each(|d| b.release(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    /// Slots alternate, keep their buffers while the batch shape holds, and take new ones
    /// (for a short last batch) when it changes.
    #[test]
    fn batches_alternate_between_two_slots() {
        let b = Cpu::new();
        let mut ring = InputRing::<Cpu>::default();
        let (a, c) = (vec![1.0f32; 6], vec![2.0f32; 4]);
        let first = ring.fill(&b, &[&a, &c]).to_vec();
        ring.done(&b);
        assert_eq!(first, vec![a.clone(), c.clone()]);
        let second = ring.fill(&b, &[&c, &a]).to_vec();
        ring.done(&b);
        assert_eq!(second, vec![c.clone(), a.clone()]);
        let fresh = b.fresh_allocations();
        let third = ring.fill(&b, &[&[3.0; 6], &[4.0; 4]]).to_vec();
        ring.done(&b);
        assert_eq!(third, vec![vec![3.0; 6], vec![4.0; 4]]);
        assert_eq!(b.fresh_allocations(), fresh, "the first slot's buffers are reused");
        let last = ring.fill(&b, &[&[5.0; 2], &[6.0; 1]]).to_vec();
        assert_eq!(last, vec![vec![5.0; 2], vec![6.0; 1]]);
        ring.release(&b);
    }
}
