//! The score stage's band of overlapping inference tiles on the host (the CPU backend's
//! `Backend::band`; the CUDA backend keeps the same band on the device).

use crate::error::Result;

/// The frame-weighted average over overlapping tiles, streamed by rows of tiles: holds the
/// padded rows [top, top + split) of every component and their summed frame weights.
pub struct BandAverager {
    rank: usize,
    split: usize,
    bound: usize,
    /// padded width
    wp: usize,
    top: usize,
    acc: Vec<f32>,
    weight: Vec<f32>,
}

impl BandAverager {
    pub fn new(rank: usize, split: usize, bound: usize, wp: usize) -> BandAverager {
        BandAverager {
            rank,
            split,
            bound,
            wp,
            top: 0,
            acc: vec![0.0; split * wp * rank],
            weight: vec![0.0; split * wp],
        }
    }

    /// Values of one tile: split × split × rank.
    pub fn tile_len(&self) -> usize {
        self.split * self.split * self.rank
    }

    fn frame(&self, v: usize) -> f32 {
        if v >= self.bound && v + self.bound < self.split {
            1.0
        } else {
            0.0
        }
    }

    /// Add one tile's HR (split × split × R, channels last) at padded (row top, col c0).
    pub fn add(&mut self, c0: usize, hr: &[f32]) {
        let (r, s, wp) = (self.rank, self.split, self.wp);
        for y in 0..s {
            let fy = self.frame(y);
            for x in 0..s.min(wp - c0) {
                let f = fy * self.frame(x);
                if f == 0.0 {
                    continue;
                }
                let at = y * wp + c0 + x;
                self.weight[at] += f;
                let src = &hr[(y * s + x) * r..(y * s + x + 1) * r];
                for (a, v) in self.acc[at * r..(at + 1) * r].iter_mut().zip(src) {
                    *a += f * v;
                }
            }
        }
    }

    /// Hand padded rows [top, until) to `emit` (padded row, R × width values averaged, channels
    /// last, padding columns removed), then move the band down so that it starts at `until`.
    pub fn advance(&mut self, until: usize, mut emit: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let (r, wp, b) = (self.rank, self.wp, self.bound);
        let done = until.saturating_sub(self.top).min(self.split);
        let w = wp - 2 * b;
        let mut row = vec![0f32; w * r];
        for y in 0..done {
            for x in 0..w {
                let at = y * wp + b + x;
                let wt = self.weight[at];
                let inv = if wt == 0.0 { 1.0 } else { 1.0 / wt };
                for k in 0..r {
                    row[x * r + k] = self.acc[at * r + k] * inv;
                }
            }
            emit(self.top + y, &row)?;
        }
        self.acc.copy_within(done * wp * r.., 0);
        self.weight.copy_within(done * wp.., 0);
        let keep = self.split - done;
        self.acc[keep * wp * r..].fill(0.0);
        self.weight[keep * wp..].fill(0.0);
        self.top = until;
        Ok(())
    }
}
