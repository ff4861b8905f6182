//! Spot-disk pixel sets per tile (SPEC §4, §9): for each training tile, the sequenced spots
//! whose centre lies inside it and, for each, the tile pixels within the spot radius — the
//! pixels the joint loss averages the high-resolution score over. Computed once per run
//! and reused by every training iteration (the reference recomputes them per tile load).

use rayon::prelude::*;

use super::tiles::Tile;

/// Spots of one tile and their disk pixels (row-major indices into the tile), as CSR.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TileSpots {
    pub spots: Vec<u32>,
    /// pixels of spot k are pixels[offsets[k]..offsets[k + 1]]
    pub offsets: Vec<u32>,
    pub pixels: Vec<u32>,
}

impl TileSpots {
    pub fn pixels_of(&self, k: usize) -> &[u32] {
        &self.pixels[self.offsets[k] as usize..self.offsets[k + 1] as usize]
    }
}

/// Disk pixels of every spot centred in each tile. A pixel (r, c) belongs to a spot centred
/// at (y, x) when (r − y)² + (c − x)² ≤ radius², searched around the centre rounded half to
/// even, as the reference does; pixels outside the tile are dropped.
pub fn spot_disk_pixels(tiles: &[Tile], spots: &[[f64; 2]], radius: f64) -> Vec<TileSpots> {
    let width = radius.ceil() as i64 + 1;
    let r2 = radius * radius;
    tiles
        .par_iter()
        .map(|t| {
            let tw = t.c1 - t.c0;
            let mut out = TileSpots { offsets: vec![0], ..Default::default() };
            for (i, s) in spots.iter().enumerate() {
                if !(s[0] >= t.r0 as f64 && s[0] < t.r1 as f64 && s[1] >= t.c0 as f64 && s[1] < t.c1 as f64) {
                    continue;
                }
                let (rc, cc) = (s[0].round_ties_even() as i64, s[1].round_ties_even() as i64);
                for r in rc - width..=rc + width {
                    for c in cc - width..=cc + width {
                        let d = (r as f64 - s[0]).powi(2) + (c as f64 - s[1]).powi(2);
                        if d <= r2 && r >= t.r0 && r < t.r1 && c >= t.c0 && c < t.c1 {
                            out.pixels.push(((r - t.r0) * tw + (c - t.c0)) as u32);
                        }
                    }
                }
                out.spots.push(i as u32);
                out.offsets.push(out.pixels.len() as u32);
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_exact_clipped_and_only_for_spots_inside() {
        let tiles = [Tile { r0: 10, r1: 40, c0: 20, c1: 60 }];
        let spots = [[12.5, 21.0], [25.3, 40.7], [39.9, 59.5], [5.0, 30.0], [40.0, 30.0]];
        let radius = 4.0;
        let t = &spot_disk_pixels(&tiles, &spots, radius)[0];
        assert_eq!(t.spots, vec![0, 1, 2]); // 3 and 4 lie outside the tile
        for (k, &si) in t.spots.iter().enumerate() {
            let s = spots[si as usize];
            let mut want = Vec::new();
            for r in 10..40i64 {
                for c in 20..60i64 {
                    if (r as f64 - s[0]).powi(2) + (c as f64 - s[1]).powi(2) <= 16.0 {
                        want.push(((r - 10) * 40 + (c - 20)) as u32);
                    }
                }
            }
            let mut got = t.pixels_of(k).to_vec();
            got.sort();
            assert_eq!(got, want, "spot {si}");
        }
        // an interior spot keeps its whole disk, an edge spot loses the part outside
        let full = |s: [f64; 2]| {
            (-10..=10i64)
                .flat_map(|a| (-10..=10i64).map(move |b| (a, b)))
                .filter(|&(a, b)| {
                    let (r, c) = (s[0].round() as i64 + a, s[1].round() as i64 + b);
                    (r as f64 - s[0]).powi(2) + (c as f64 - s[1]).powi(2) <= 16.0
                })
                .count()
        };
        assert_eq!(t.pixels_of(1).len(), full(spots[1]));
        assert!(t.pixels_of(2).len() < full(spots[2]));
    }
}
