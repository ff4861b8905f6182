//! Image and tile movement on the GPU: the spot windows' bilinear upsampling and the
//! frame-weighted band of overlapping inference tiles (`stages::score::BandAverager`'s
//! semantics) held on the device, so tiles never travel back before they are averaged.

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
    rows: DBuf,
    /// rows per download block
    copy_rows: usize,
}

impl DeviceBandAverager {
    pub fn new(g: &Cuda, rank: usize, split: usize, bound: usize, wp: usize) -> DeviceBandAverager {
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
            rows: g.alloc(rows_per_copy(split, (wp - 2 * bound) * rank) * (wp - 2 * bound) * rank),
            copy_rows: rows_per_copy(split, (wp - 2 * bound) * rank),
        }
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
    /// removed), then move the band down to start at `until`.
    pub fn advance(&mut self, g: &Cuda, until: usize, mut emit: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let (r, wp, b) = (self.rank, self.wp, self.bound);
        let done = until.saturating_sub(self.top).min(self.split);
        let w = wp - 2 * b;
        // finished rows come back in blocks (about 64 MiB each): the device buffer and the
        // host's copy stay small however wide the slide
        let per = self.copy_rows;
        let mut y0 = 0;
        while y0 < done {
            let n = per.min(done - y0);
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
                g.ptr(&self.rows)
            );
            let rows = g.dtoh::<f32>(g.ptr(&self.rows), n * w * r);
            for (y, row) in rows.chunks(w * r).enumerate() {
                emit(self.top + y0 + y, row)?;
            }
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

/// Rows of `row_len` floats per block of the band's download: about 64 MiB, at least one.
fn rows_per_copy(split: usize, row_len: usize) -> usize {
    ((64 << 20) / (4 * row_len.max(1))).clamp(1, split)
}
