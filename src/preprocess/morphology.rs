//! Binary morphology with a k×k square of ones, as OpenCV's `morphologyEx` applies it:
//! anchor at (k/2, k/2), pixels outside the image never change the result, and an empty
//! kernel (k = 0) means OpenCV's default 3×3. Each pass is separable and uses running
//! counts, so the cost per pixel does not depend on k.

use rayon::prelude::*;

/// Row-major binary mask (0 / 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn new(height: usize, width: usize) -> Mask {
        Mask { height, width, data: vec![0; height * width] }
    }
    pub fn count(&self) -> usize {
        self.data.iter().map(|&v| v as usize).sum()
    }
    #[inline]
    pub fn get(&self, r: usize, c: usize) -> bool {
        self.data[r * self.width + c] != 0
    }
}

/// For each i: does window [i - a, i - a + k) hold any one (`any`) / only ones (`!any`),
/// counting only indices inside the line.
fn line_pass(src: &[u8], dst: &mut [u8], k: usize, a: usize, any: bool, prefix: &mut Vec<u32>) {
    let n = src.len();
    prefix.clear();
    prefix.push(0);
    for &v in src {
        let last = *prefix.last().unwrap();
        prefix.push(last + v as u32);
    }
    for i in 0..n {
        let lo = i.saturating_sub(a);
        let hi = (i + k - a).min(n); // exclusive
        let ones = prefix[hi] - prefix[lo];
        dst[i] = if any { (ones > 0) as u8 } else { (ones as usize == hi - lo) as u8 };
    }
}

fn pass(m: &Mask, k: usize, any: bool) -> Mask {
    let (k, a) = if k == 0 { (3, 1) } else { (k, k / 2) };
    let (h, w) = (m.height, m.width);
    let mut rows = Mask::new(h, w);
    rows.data
        .par_chunks_mut(w.max(1))
        .zip(m.data.par_chunks(w.max(1)))
        .for_each_init(Vec::new, |p, (d, s)| line_pass(s, d, k, a, any, p));
    // columns: a running count per column while sweeping down the rows, in stripes of
    // columns so each worker streams through memory row by row
    let stripe = 2048usize;
    let stripes: Vec<Vec<u8>> = (0..w.div_ceil(stripe))
        .into_par_iter()
        .map(|si| {
            let (c0, c1) = (si * stripe, ((si + 1) * stripe).min(w));
            let sw = c1 - c0;
            let mut counts = vec![0u32; sw];
            let mut out = vec![0u8; h * sw];
            let window = |y: usize| (y.saturating_sub(a), (y + k).saturating_sub(a).min(h));
            let (lo0, hi0) = window(0);
            for r in lo0..hi0 {
                for (c, &v) in counts.iter_mut().zip(&rows.data[r * w + c0..r * w + c1]) {
                    *c += v as u32;
                }
            }
            let (mut lo, mut hi) = (lo0, hi0);
            for y in 0..h {
                let (nlo, nhi) = window(y);
                for r in hi..nhi {
                    for (c, &v) in counts.iter_mut().zip(&rows.data[r * w + c0..r * w + c1]) {
                        *c += v as u32;
                    }
                }
                for r in lo..nlo {
                    for (c, &v) in counts.iter_mut().zip(&rows.data[r * w + c0..r * w + c1]) {
                        *c -= v as u32;
                    }
                }
                (lo, hi) = (nlo, nhi);
                let full = (hi - lo) as u32;
                let o = &mut out[y * sw..(y + 1) * sw];
                if any {
                    o.iter_mut().zip(&counts).for_each(|(d, &c)| *d = (c > 0) as u8);
                } else {
                    o.iter_mut().zip(&counts).for_each(|(d, &c)| *d = (c == full) as u8);
                }
            }
            out
        })
        .collect();
    let mut out = Mask::new(h, w);
    out.data.par_chunks_mut(w.max(1)).enumerate().for_each(|(y, row)| {
        for (si, st) in stripes.iter().enumerate() {
            let (c0, c1) = (si * stripe, ((si + 1) * stripe).min(w));
            row[c0..c1].copy_from_slice(&st[y * (c1 - c0)..(y + 1) * (c1 - c0)]);
        }
    });
    out
}

pub fn dilate(m: &Mask, k: usize) -> Mask {
    pass(m, k, true)
}

pub fn erode(m: &Mask, k: usize) -> Mask {
    pass(m, k, false)
}

/// Closing (dilate, then erode).
pub fn close(m: &Mask, k: usize) -> Mask {
    erode(&dilate(m, k), k)
}

/// Opening (erode, then dilate).
pub fn open(m: &Mask, k: usize) -> Mask {
    dilate(&erode(m, k), k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(m: &Mask, k: usize, any: bool) -> Mask {
        let (k, a) = if k == 0 { (3, 1) } else { (k, k / 2) };
        let mut o = Mask::new(m.height, m.width);
        for r in 0..m.height as i64 {
            for c in 0..m.width as i64 {
                let mut acc = !any;
                for i in 0..k as i64 {
                    for j in 0..k as i64 {
                        let (y, x) = (r + i - a as i64, c + j - a as i64);
                        if y < 0 || x < 0 || y >= m.height as i64 || x >= m.width as i64 {
                            continue;
                        }
                        let v = m.get(y as usize, x as usize);
                        acc = if any { acc || v } else { acc && v };
                    }
                }
                o.data[(r * m.width as i64 + c) as usize] = acc as u8;
            }
        }
        o
    }

    #[test]
    fn matches_brute_force_for_odd_even_and_empty_kernels() {
        let mut m = Mask::new(23, 31);
        let mut s = 12345u64;
        for v in m.data.iter_mut() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *v = ((s >> 33) % 3 == 0) as u8;
        }
        for k in [0, 1, 2, 3, 4, 7] {
            assert_eq!(dilate(&m, k), brute(&m, k, true), "dilate k={k}");
            assert_eq!(erode(&m, k), brute(&m, k, false), "erode k={k}");
        }
    }
}
