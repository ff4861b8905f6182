//! Binary masks, bit-packed (a 50k × 50k slide's mask is 312 MB, not 2.5 GB), and
//! morphology with a k×k square of ones as OpenCV's `morphologyEx` applies it: anchor at
//! (k/2, k/2), pixels outside the image never change the result, and an empty kernel (k = 0)
//! means OpenCV's default 3×3. Each pass is separable and uses running counts, so the cost
//! per pixel does not depend on k.

use rayon::prelude::*;

/// Row-major bit mask; each row starts on a 64-bit word.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub height: usize,
    pub width: usize,
    words: usize,
    bits: Vec<u64>,
}

impl Mask {
    pub fn new(height: usize, width: usize) -> Mask {
        let words = width.div_ceil(64).max(1);
        Mask { height, width, words, bits: vec![0; height * words] }
    }

    /// All pixels set.
    pub fn full(height: usize, width: usize) -> Mask {
        let mut m = Mask::new(height, width);
        for r in 0..height {
            m.set_range(r, 0, width, true);
        }
        m
    }

    /// From row-major 0/1 (or any non-zero) bytes.
    pub fn from_bytes(height: usize, width: usize, bytes: &[u8]) -> Mask {
        let mut m = Mask::new(height, width);
        m.bits.par_chunks_mut(m.words).zip(bytes.par_chunks(width.max(1))).for_each(|(w, b)| pack(b, w));
        m
    }

    #[inline]
    pub fn get(&self, r: usize, c: usize) -> bool {
        (self.bits[r * self.words + c / 64] >> (c % 64)) & 1 != 0
    }

    #[inline]
    pub fn set(&mut self, r: usize, c: usize, v: bool) {
        let w = &mut self.bits[r * self.words + c / 64];
        if v {
            *w |= 1 << (c % 64);
        } else {
            *w &= !(1 << (c % 64));
        }
    }

    pub fn row_words(&self, r: usize) -> &[u64] {
        &self.bits[r * self.words..(r + 1) * self.words]
    }

    /// Words of rows [r0, r1) and the number of words per row, for filling a band.
    pub fn band_mut(&mut self, r0: usize, r1: usize) -> (&mut [u64], usize) {
        (&mut self.bits[r0 * self.words..r1 * self.words], self.words)
    }

    /// Set or clear columns [c0, c1) of row r.
    pub fn set_range(&mut self, r: usize, c0: usize, c1: usize, v: bool) {
        let row = &mut self.bits[r * self.words..(r + 1) * self.words];
        set_bits(row, c0, c1, v);
    }

    pub fn count(&self) -> usize {
        self.bits.par_iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn row_count(&self, r: usize) -> usize {
        self.row_words(r).iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Set pixels in rows [r0, r1) × cols [c0, c1) (clipped to the mask).
    pub fn count_rect(&self, r0: i64, r1: i64, c0: i64, c1: i64) -> usize {
        let cl = |v: i64, n: usize| v.clamp(0, n as i64) as usize;
        let (r0, r1, c0, c1) = (cl(r0, self.height), cl(r1, self.height), cl(c0, self.width), cl(c1, self.width));
        (r0..r1).map(|r| count_bits(self.row_words(r), c0, c1)).sum()
    }

    /// Column of the j-th set pixel of row r.
    pub fn nth_set_in_row(&self, r: usize, mut j: usize) -> Option<usize> {
        for (k, &w) in self.row_words(r).iter().enumerate() {
            let n = w.count_ones() as usize;
            if j < n {
                let mut w = w;
                for _ in 0..j {
                    w &= w - 1;
                }
                return Some(k * 64 + w.trailing_zeros() as usize);
            }
            j -= n;
        }
        None
    }

    /// First and last set column of row r.
    pub fn row_span(&self, r: usize) -> Option<(usize, usize)> {
        let ws = self.row_words(r);
        let first = ws.iter().position(|&w| w != 0)?;
        let last = ws.iter().rposition(|&w| w != 0)?;
        Some((first * 64 + ws[first].trailing_zeros() as usize, last * 64 + 63 - ws[last].leading_zeros() as usize))
    }

    /// The sub-mask rows [r0, r1) × cols [c0, c1).
    pub fn crop(&self, r0: usize, r1: usize, c0: usize, c1: usize) -> Mask {
        let mut m = Mask::new(r1 - r0, c1 - c0);
        let mut buf = vec![0u8; self.width];
        for r in r0..r1 {
            unpack(self.row_words(r), &mut buf);
            pack(&buf[c0..c1], &mut m.bits[(r - r0) * m.words..(r - r0 + 1) * m.words]);
        }
        m
    }

    /// Pixels in row-major order.
    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.height).flat_map(move |r| (0..self.width).map(move |c| self.get(r, c)))
    }
}

fn set_bits(row: &mut [u64], c0: usize, c1: usize, v: bool) {
    if c0 >= c1 {
        return;
    }
    let (w0, w1) = (c0 / 64, (c1 - 1) / 64);
    let lo = u64::MAX << (c0 % 64);
    let hi = if c1 % 64 == 0 { u64::MAX } else { (1u64 << (c1 % 64)) - 1 };
    for (w, word) in row.iter_mut().enumerate().take(w1 + 1).skip(w0) {
        let mut m = u64::MAX;
        if w == w0 {
            m &= lo;
        }
        if w == w1 {
            m &= hi;
        }
        if v {
            *word |= m;
        } else {
            *word &= !m;
        }
    }
}

fn count_bits(row: &[u64], c0: usize, c1: usize) -> usize {
    if c0 >= c1 {
        return 0;
    }
    let (w0, w1) = (c0 / 64, (c1 - 1) / 64);
    let lo = u64::MAX << (c0 % 64);
    let hi = if c1 % 64 == 0 { u64::MAX } else { (1u64 << (c1 % 64)) - 1 };
    if w0 == w1 {
        return (row[w0] & lo & hi).count_ones() as usize;
    }
    let mut n = (row[w0] & lo).count_ones() as usize + (row[w1] & hi).count_ones() as usize;
    for w in &row[w0 + 1..w1] {
        n += w.count_ones() as usize;
    }
    n
}

/// Bytes (0 / non-zero) → bits.
pub fn pack(bytes: &[u8], words: &mut [u64]) {
    words.iter_mut().for_each(|w| *w = 0);
    for (c, &b) in bytes.iter().enumerate() {
        if b != 0 {
            words[c / 64] |= 1 << (c % 64);
        }
    }
}

/// Bits → bytes (0 / 1), `bytes.len()` columns.
pub fn unpack(words: &[u64], bytes: &mut [u8]) {
    for (c, b) in bytes.iter_mut().enumerate() {
        *b = ((words[c / 64] >> (c % 64)) & 1) as u8;
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
    let words = m.words;
    rows.bits.par_chunks_mut(words).zip(m.bits.par_chunks(words)).for_each_init(
        || (Vec::new(), vec![0u8; w], vec![0u8; w]),
        |(p, src, dst), (out, inp)| {
            unpack(inp, src);
            line_pass(src, dst, k, a, any, p);
            pack(dst, out);
        },
    );
    // columns: a running count per column while sweeping down the rows, in stripes of
    // words so each worker streams through memory row by row
    let stripe = 32usize; // words: 2048 columns
    let stripes: Vec<Vec<u64>> = (0..words.div_ceil(stripe))
        .into_par_iter()
        .map(|si| {
            let (w0, w1) = (si * stripe, ((si + 1) * stripe).min(words));
            let sw = w1 - w0;
            let mut counts = vec![0u32; sw * 64];
            let mut out = vec![0u64; h * sw];
            let add = |counts: &mut [u32], r: usize, sign: i32| {
                for (j, &word) in rows.bits[r * words + w0..r * words + w1].iter().enumerate() {
                    let mut x = word;
                    while x != 0 {
                        let b = x.trailing_zeros() as usize;
                        let c = &mut counts[j * 64 + b];
                        *c = (*c as i32 + sign) as u32;
                        x &= x - 1;
                    }
                }
            };
            let window = |y: usize| (y.saturating_sub(a), (y + k).saturating_sub(a).min(h));
            let (mut lo, mut hi) = (0, 0);
            for y in 0..h {
                let (nlo, nhi) = window(y);
                for r in hi.max(nlo)..nhi {
                    add(&mut counts, r, 1);
                }
                for r in lo..nlo.min(hi) {
                    add(&mut counts, r, -1);
                }
                (lo, hi) = (nlo, nhi);
                let full = (hi - lo) as u32;
                let o = &mut out[y * sw..(y + 1) * sw];
                for (j, word) in o.iter_mut().enumerate() {
                    let mut v = 0u64;
                    for b in 0..64 {
                        let c = counts[j * 64 + b];
                        if if any { c > 0 } else { c == full } {
                            v |= 1 << b;
                        }
                    }
                    *word = v;
                }
            }
            out
        })
        .collect();
    // the horizontal result is no longer needed: its buffer takes the output
    let mut out = rows;
    let tail = if w % 64 == 0 { u64::MAX } else { (1u64 << (w % 64)) - 1 };
    out.bits.par_chunks_mut(words).enumerate().for_each(|(y, row)| {
        for (si, st) in stripes.iter().enumerate() {
            let (w0, w1) = (si * stripe, ((si + 1) * stripe).min(words));
            row[w0..w1].copy_from_slice(&st[y * (w1 - w0)..(y + 1) * (w1 - w0)]);
        }
        // padding bits past the width stay clear
        row[words - 1] &= tail;
    });
    out
}

pub fn dilate(m: &Mask, k: usize) -> Mask {
    pass(m, k, true)
}

pub fn erode(m: &Mask, k: usize) -> Mask {
    pass(m, k, false)
}

/// Closing (dilate, then erode); takes the mask so it is freed as early as possible.
pub fn close(m: Mask, k: usize) -> Mask {
    let d = dilate(&m, k);
    drop(m);
    erode(&d, k)
}

/// Opening (erode, then dilate).
pub fn open(m: Mask, k: usize) -> Mask {
    let e = erode(&m, k);
    drop(m);
    dilate(&e, k)
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
                o.set(r as usize, c as usize, acc);
            }
        }
        o
    }

    #[test]
    fn matches_brute_force_for_odd_even_and_empty_kernels() {
        // 131 columns: three words per row, the last one partial
        let mut m = Mask::new(23, 131);
        let mut s = 12345u64;
        for r in 0..23 {
            for c in 0..131 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                m.set(r, c, (s >> 33) % 3 == 0);
            }
        }
        for k in [0, 1, 2, 3, 4, 7] {
            assert_eq!(dilate(&m, k), brute(&m, k, true), "dilate k={k}");
            assert_eq!(erode(&m, k), brute(&m, k, false), "erode k={k}");
        }
    }

    #[test]
    fn bit_helpers() {
        let mut m = Mask::new(3, 150);
        m.set_range(1, 5, 140, true);
        assert_eq!(m.row_count(1), 135);
        assert_eq!(m.count_rect(0, 3, 60, 70), 10);
        assert_eq!(m.count_rect(-5, 99, -5, 999), 135);
        assert_eq!(m.row_span(1), Some((5, 139)));
        assert_eq!(m.row_span(0), None);
        assert_eq!(m.nth_set_in_row(1, 0), Some(5));
        assert_eq!(m.nth_set_in_row(1, 100), Some(105));
        assert_eq!(m.nth_set_in_row(1, 135), None);
        let c = m.crop(1, 2, 3, 10);
        assert_eq!(c.iter().map(|b| b as u8).collect::<Vec<_>>(), vec![0, 0, 1, 1, 1, 1, 1]);
        m.set_range(1, 0, 150, false);
        assert_eq!(m.count(), 0);
        assert_eq!(Mask::full(2, 70).count(), 140);
    }
}
