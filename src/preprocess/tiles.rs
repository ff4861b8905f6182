//! Tissue tiles (SPEC §4): windows of `split_size` with redundancy 0.2 over the crop, the
//! last one flush with the crop's end, kept when they hold more than 255 mask pixels.

use serde::{Deserialize, Serialize};

use super::morphology::Mask;

/// A tile in scaled-image pixels: rows [r0, r1), cols [c0, c1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tile {
    pub r0: i64,
    pub r1: i64,
    pub c0: i64,
    pub c1: i64,
}

/// Windows along one axis of [min, max), as the reference splits it. When the range is
/// shorter than the redundancy the reference has no window at all; here a single window
/// ending at `max` stands in (it reaches before `min`; readers pad with zeros).
pub fn splits(min: i64, max: i64, split: i64, redundant_ratio: f64) -> Vec<(i64, i64)> {
    let redundant = (split as f64 * redundant_ratio).round_ties_even() as i64;
    let step = split - redundant;
    let n = ((max - min - redundant) as f64 / step as f64).ceil() as i64;
    if n <= 0 {
        return vec![(max - split, max)];
    }
    let mut out: Vec<(i64, i64)> = (0..n).map(|i| (min + i * step, min + i * step + split)).collect();
    let last = out.last_mut().unwrap();
    if last.1 > max {
        *last = (max - split, max);
    }
    out
}

/// Tiles over the crop that hold more than 255 tissue pixels (counted with popcounts); `mask` is the cropped mask
/// whose first row/col are `row_range.0` / `col_range.0`.
pub fn tissue_tiles(
    mask: &Mask,
    row_range: (usize, usize),
    col_range: (usize, usize),
    split: usize,
    redundant_ratio: f64,
) -> Vec<Tile> {
    let rs = splits(row_range.0 as i64, row_range.1 as i64, split as i64, redundant_ratio);
    let cs = splits(col_range.0 as i64, col_range.1 as i64, split as i64, redundant_ratio);
    let (ro, co) = (row_range.0 as i64, col_range.0 as i64);
    let mut out = Vec::new();
    for &(r0, r1) in &rs {
        for &(c0, c1) in &cs {
            if mask.count_rect(r0 - ro, r1 - ro, c0 - co, c1 - co) > 255 {
                out.push(Tile { r0, r1, c0, c1 });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_follow_the_reference_rule() {
        // stride 256 − 51 = 205; last window flush with the end
        assert_eq!(splits(21, 367, 256, 0.2), vec![(21, 277), (111, 367)]);
        assert_eq!(splits(0, 1000, 256, 0.2), vec![(0, 256), (205, 461), (410, 666), (615, 871), (744, 1000)]);
        // shorter than a tile: one window ending at the end
        assert_eq!(splits(10, 40, 256, 0.2), vec![(-216, 40)]);
    }
}
