//! Image and tile movement on the GPU: the spot windows' bilinear upsampling and the
//! frame-weighted band of overlapping inference tiles (`stages::score::BandAverager`'s
//! semantics) held on the device, so tiles never travel back before they are averaged.

use std::sync::Arc;

use cudarc::driver::{result, CudaEvent, CudaStream, PinnedHostSlice};

use super::device::{cfg_elems, Cuda, DBuf};
use crate::backend::Backend;
use crate::error::Result;

/// out (n × oh × ow × c) = bilinear (align_corners) resize of src (n × h × w × c).
#[allow(clippy::too_many_arguments)]
pub fn resize_bilinear_ac(
    g: &Cuda,
    src: &DBuf,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    out: &mut DBuf,
) {
    launch!(
        g,
        "resize_bilinear_ac_f32",
        cfg_elems(n * oh * ow * c),
        g.ptr(src),
        n as i32,
        h as i32,
        w as i32,
        c as i32,
        oh as i32,
        ow as i32,
        g.ptr(out)
    );
}

/// The padded rows [top, top + split) of every component and their summed frame weights.
/// Finished rows go back to the host while the GPU computes the next row of tiles: the blocks
/// of an `advance` are averaged in turn into two device buffers on the compute stream (which
/// waits, on the device, for a buffer's last copy out before refilling it) and copied into
/// page-locked host buffers of their own on the band's stream; all of them are handed to
/// `emit` at the next `advance` (or `flush`), by when their copies have run beside that row's
/// tiles. Device memory: two blocks (≤ 128 MiB) beyond the band; host: one row of tiles'
/// finished rows.
pub struct DeviceBandAverager {
    rank: usize,
    split: usize,
    bound: usize,
    wp: usize,
    top: usize,
    acc: DBuf,
    weight: DBuf,
    spare_acc: DBuf,
    spare_weight: DBuf,
    /// rows per download block
    copy_rows: usize,
    /// averaged blocks on the device: block j of an advance in buffer j mod 2
    dev: [DBuf; 2],
    /// page-locked copies, block j of an advance in buffer j (grown to the blocks of one)
    hosts: Vec<PinnedHostSlice<f32>>,
    /// the blocks in flight, in row order: first padded row, rows, the event after the copy
    inflight: Vec<(usize, usize, CudaEvent)>,
    stream: Arc<CudaStream>,
}

impl DeviceBandAverager {
    pub fn new(g: &Cuda, rank: usize, split: usize, bound: usize, wp: usize) -> DeviceBandAverager {
        let copy_rows = rows_per_copy(split, (wp - 2 * bound) * rank);
        let block = copy_rows * (wp - 2 * bound) * rank;
        DeviceBandAverager {
            rank,
            split,
            bound,
            wp,
            top: 0,
            acc: g.zeros(split * wp * rank),
            weight: g.zeros(split * wp),
            spare_acc: g.alloc(split * wp * rank),
            spare_weight: g.alloc(split * wp),
            copy_rows,
            dev: [g.alloc(block), g.alloc(block)],
            hosts: Vec::new(),
            inflight: Vec::new(),
            stream: g.ctx.new_stream().unwrap_or_else(|e| panic!("CUDA stream: {e}")),
        }
    }

    /// Hand every block still on its way to `emit`, in row order, each once its copy is done.
    pub fn flush(&mut self, mut emit: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let row = (self.wp - 2 * self.bound) * self.rank;
        for (j, (first, n, copied)) in std::mem::take(&mut self.inflight).into_iter().enumerate() {
            copied.synchronize().unwrap_or_else(|e| panic!("CUDA event: {e}"));
            let host = self.hosts[j].as_slice().unwrap_or_else(|e| panic!("CUDA: {e}"));
            for (y, vals) in host[..n * row].chunks(row).enumerate() {
                emit(first + y, vals)?;
            }
        }
        Ok(())
    }

    /// Download finished rows in blocks of at most `n` (tests of the block loop; ≥ 1).
    pub fn limit_copy_rows(&mut self, n: usize) {
        self.copy_rows = self.copy_rows.min(n.max(1));
    }

    /// Add tile `index` of the batch `hr` (tiles of split × split × R) at padded column c0.
    pub fn add(&mut self, g: &Cuda, c0: usize, hr: &DBuf, index: usize) {
        let (s, r) = (self.split, self.rank);
        let at = g.ptr(hr) + (index * s * s * r * 4) as u64;
        launch!(
            g,
            "tile_accumulate_f32",
            cfg_elems(s * s * r),
            at,
            s as i32,
            self.bound as i32,
            r as i32,
            self.wp as i32,
            c0 as i32,
            g.ptr(&self.acc),
            g.ptr(&self.weight)
        );
    }

    /// Hand padded rows [top, until) to `emit` (averaged, channels last, padding columns
    /// removed) at the next call or at `flush`, then move the band down to start at `until`.
    pub fn advance(&mut self, g: &Cuda, until: usize, mut emit: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        // the last advance's rows travelled while this row of tiles computed
        self.flush(&mut emit)?;
        let (r, wp, b) = (self.rank, self.wp, self.bound);
        let done = until.saturating_sub(self.top).min(self.split);
        let w = wp - 2 * b;
        // finished rows come back in blocks (about 64 MiB each): the device buffer and the
        // host's copy stay small however wide the slide
        let per = self.copy_rows;
        let mut y0 = 0;
        while y0 < done {
            let n = per.min(done - y0);
            // block j: device buffer j mod 2, host buffer j (all free: flushed above)
            let (j, k) = (self.inflight.len(), self.inflight.len() % 2);
            if j == self.hosts.len() {
                // SAFETY: written by the copies before it is read; flags 0 = cacheable (read here)
                let h = unsafe { g.ctx.alloc_pinned_with_flags::<f32>((per * w * r).max(1), 0) }.unwrap_or_else(|e| {
                    panic!("CUDA: cannot page-lock {} MiB of host memory: {e}", (per * w * r) >> 18)
                });
                self.hosts.push(h);
            }
            if j >= 2 {
                // on the device: block j − 2 has left the buffer (earlier advances' blocks were
                // waited for by the flush)
                g.stream.wait(&self.inflight[j - 2].2).unwrap_or_else(|e| panic!("CUDA stream wait: {e}"));
            }
            launch!(
                g,
                "band_average_f32",
                cfg_elems(n * w * r),
                g.ptr(&self.acc) + (y0 * wp * r * 4) as u64,
                g.ptr(&self.weight) + (y0 * wp * 4) as u64,
                n as i32,
                wp as i32,
                b as i32,
                r as i32,
                g.ptr(&self.dev[k])
            );
            // copied on the band's stream once the compute stream has averaged the block
            let averaged = g.stream.record_event(None).unwrap_or_else(|e| panic!("CUDA event: {e}"));
            self.stream.wait(&averaged).unwrap_or_else(|e| panic!("CUDA stream wait: {e}"));
            let host = self.hosts[j].as_mut_slice().unwrap_or_else(|e| panic!("CUDA: {e}"));
            // SAFETY: the device buffer holds at least n·w·r values and is not refilled before
            // this copy's event (block j + 2 waits for it); the host buffer is not read before
            // it (flush) nor written again before a flush
            unsafe { result::memcpy_dtoh_async(&mut host[..n * w * r], g.ptr(&self.dev[k]), self.stream.cu_stream()) }
                .unwrap_or_else(|e| panic!("CUDA download: {e}"));
            let copied = self.stream.record_event(None).unwrap_or_else(|e| panic!("CUDA event: {e}"));
            self.inflight.push((self.top + y0, n, copied));
            y0 += n;
        }
        let keep = self.split - done;
        for (src, dst, per) in [(&self.acc, &self.spare_acc, wp * r), (&self.weight, &self.spare_weight, wp)] {
            let total = self.split * per;
            launch!(
                g,
                "band_shift_f32",
                cfg_elems(total),
                g.ptr(src),
                (done * per) as i64,
                (keep * per) as i64,
                total as i64,
                g.ptr(dst)
            );
        }
        std::mem::swap(&mut self.acc, &mut self.spare_acc);
        std::mem::swap(&mut self.weight, &mut self.spare_weight);
        self.top = until;
        Ok(())
    }
}

impl Drop for DeviceBandAverager {
    /// No buffer is freed under a copy still reading or writing it (a run stopped early).
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
    }
}

/// Rows of `row_len` floats per block of the band's download: about 64 MiB, at least one.
fn rows_per_copy(split: usize, row_len: usize) -> usize {
    ((64 << 20) / (4 * row_len.max(1))).clamp(1, split)
}
