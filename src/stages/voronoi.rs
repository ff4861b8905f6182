//! The Voronoi score (SPEC §8): every pixel of the crop takes the score of its nearest spot;
//! each component is then box-blurred (kernel radius//2·2+1, OpenCV's `blur`: normalised
//! box, reflect-101 border) until the mean absolute change of the changed pixels drops below
//! the threshold (at most 10 passes), rescaled to keep the mean over the pixels that were
//! non-zero before blurring, clipped to [0, 1], rounded to half precision and masked.
//!
//! The blur uses running sums, so a pass costs O(1) per pixel whatever the kernel size, and
//! works in bands of rows: a band reads its rows plus the kernel's halo from a row store —
//! memory for a crop, scratch files for a whole slide, so that memory stays bounded by a few
//! bands whatever the slide's area. Both run the same code.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::preprocess::morphology::Mask;

/// OpenCV's BORDER_REFLECT_101 (`gfedcb|abcdefgh|gfedcba`), repeated for wide kernels.
fn reflect101(mut i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * n - 2 - i;
        } else {
            return i as usize;
        }
    }
}

/// Plain numbers that can be stored as their bytes.
pub trait Pod: Copy + Default + Send + Sync + 'static {}
impl Pod for f32 {}
impl Pod for u32 {}

/// An H × W plane addressed by rows. Bands running in parallel write disjoint rows and never
/// read rows that another band is writing.
pub trait RowStore<T: Pod>: Sync {
    fn width(&self) -> usize;
    fn read(&self, y0: usize, out: &mut [T]) -> Result<()>;
    fn write(&self, y0: usize, data: &[T]) -> Result<()>;
}

/// A plane in memory.
pub struct MemRows<T> {
    data: Vec<std::cell::UnsafeCell<T>>,
    w: usize,
}

// SAFETY: concurrent access follows the RowStore contract (disjoint rows per writer).
unsafe impl<T: Send> Sync for MemRows<T> {}

impl<T: Pod> MemRows<T> {
    pub fn new(h: usize, w: usize) -> Self {
        MemRows { data: (0..h * w).map(|_| std::cell::UnsafeCell::new(T::default())).collect(), w }
    }
    pub fn from_vec(v: Vec<T>, w: usize) -> Self {
        MemRows { data: v.into_iter().map(std::cell::UnsafeCell::new).collect(), w }
    }
    pub fn into_vec(self) -> Vec<T> {
        self.data.into_iter().map(|c| c.into_inner()).collect()
    }
}

impl<T: Pod> RowStore<T> for MemRows<T> {
    fn width(&self) -> usize {
        self.w
    }
    fn read(&self, y0: usize, out: &mut [T]) -> Result<()> {
        for (o, c) in out.iter_mut().zip(&self.data[y0 * self.w..]) {
            // SAFETY: no band writes these rows while they are read (RowStore contract).
            *o = unsafe { *c.get() };
        }
        Ok(())
    }
    fn write(&self, y0: usize, data: &[T]) -> Result<()> {
        for (c, &v) in self.data[y0 * self.w..].iter().zip(data) {
            // SAFETY: each row is written by one band only (RowStore contract).
            unsafe { *c.get() = v };
        }
        Ok(())
    }
}

/// A plane in an unlinked scratch file: positioned reads and writes, so its pages are page
/// cache, not this process's memory.
pub struct FileRows<T> {
    file: File,
    w: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> FileRows<T> {
    /// A zero-filled h × w plane in a file under `dir`, removed from the directory at once.
    pub fn new(dir: &Path, h: usize, w: usize) -> Result<Self> {
        let path = dir.join(format!(".scratch-{}-{}", std::process::id(), rand::random::<u64>()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let _ = std::fs::remove_file(&path);
        file.set_len((h * w * size_of::<T>()) as u64).map_err(|e| Error::io(&path, e))?;
        Ok(FileRows { file, w, _t: std::marker::PhantomData })
    }
}

fn bytes_of<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: T is a plain number type (f32/u32) without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn bytes_of_mut<T: Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is a valid f32/u32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

impl<T: Pod> RowStore<T> for FileRows<T> {
    fn width(&self) -> usize {
        self.w
    }
    fn read(&self, y0: usize, out: &mut [T]) -> Result<()> {
        let off = (y0 * self.w * size_of::<T>()) as u64;
        self.file.read_exact_at(bytes_of_mut(out), off).map_err(|e| Error::io(Path::new("<scratch>"), e))
    }
    fn write(&self, y0: usize, data: &[T]) -> Result<()> {
        let off = (y0 * self.w * size_of::<T>()) as u64;
        self.file.write_all_at(bytes_of(data), off).map_err(|e| Error::io(Path::new("<scratch>"), e))
    }
}

/// Rows per band: a few times the halo so that re-read halo rows stay a small share.
fn band_rows(h: usize, k: usize) -> usize {
    (4 * k).max(64).min(h.max(1))
}

/// One box-blur pass over rows [y0, y1) of `src` (h rows) into `dst`; returns the sum and
/// count of the non-zero absolute changes in the band.
fn blur_band(
    src: &dyn RowStore<f32>,
    dst: &dyn RowStore<f32>,
    h: usize,
    k: usize,
    y0: usize,
    y1: usize,
) -> Result<(f64, usize)> {
    let w = src.width();
    let a = (k / 2) as i64;
    // rows y0-a .. y1+a, reflected at the borders
    let first = y0 as i64 - a;
    let n_in = (y1 - y0) + 2 * a as usize;
    let mut rows = vec![0f32; n_in * w];
    let (lo, hi) = ((y0 as i64 - a).max(0) as usize, ((y1 as i64 + a) as usize).min(h));
    src.read(lo, &mut rows[(lo as i64 - first) as usize * w..(hi as i64 - first) as usize * w])?;
    for i in 0..n_in {
        let y = first + i as i64;
        if y < 0 || y >= h as i64 {
            let r = reflect101(y, h as i64);
            src.read(r, &mut rows[i * w..(i + 1) * w])?;
        }
    }
    // horizontal running sums in f64, as OpenCV accumulates float data in double
    let mut hs = vec![0f64; n_in * w];
    for (out, row) in hs.chunks_mut(w).zip(rows.chunks(w)) {
        let mut s: f64 = (-a..=a).map(|d| row[reflect101(d, w as i64)] as f64).sum();
        for x in 0..w {
            out[x] = s;
            let (add, sub) = (x as i64 + a + 1, x as i64 - a);
            s += row[reflect101(add, w as i64)] as f64 - row[reflect101(sub, w as i64)] as f64;
        }
    }
    let scale = 1.0 / (k * k) as f64;
    let mut vs: Vec<f64> = vec![0f64; w];
    for i in 0..=2 * a as usize {
        for (v, &x) in vs.iter_mut().zip(&hs[i * w..(i + 1) * w]) {
            *v += x;
        }
    }
    let mut out = vec![0f32; (y1 - y0) * w];
    let (mut sum, mut count) = (0f64, 0usize);
    for y in 0..y1 - y0 {
        let srow = &rows[(y + a as usize) * w..(y + a as usize + 1) * w];
        let orow = &mut out[y * w..(y + 1) * w];
        for x in 0..w {
            let v = (vs[x] * scale) as f32;
            orow[x] = v;
            let d = (srow[x] - v).abs();
            if d != 0.0 {
                sum += d as f64;
                count += 1;
            }
        }
        if y + 1 < y1 - y0 {
            let (add, sub) = (&hs[(y + 2 * a as usize + 1) * w..(y + 2 * a as usize + 2) * w], &hs[y * w..(y + 1) * w]);
            for x in 0..w {
                vs[x] += add[x] - sub[x];
            }
        }
    }
    dst.write(y0, &out)?;
    Ok((sum, count))
}

/// Run `f` over bands of rows [y0, y1) in parallel; partial results come back in band order.
fn bands<R: Send>(h: usize, b: usize, f: impl Fn(usize, usize) -> Result<R> + Sync) -> Result<Vec<R>> {
    (0..h.div_ceil(b.max(1))).into_par_iter().map(|i| f(i * b, ((i + 1) * b).min(h))).collect()
}

/// `cv2.blur(src, (k, k))` for an h × w f32 plane.
pub fn box_blur(src: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
    let s = MemRows::from_vec(src.to_vec(), w);
    let d = MemRows::new(h, w);
    bands(h, band_rows(h, k), |y0, y1| blur_band(&s, &d, h, k, y0, y1)).expect("memory rows do not fail");
    d.into_vec()
}

/// Receives finished rows: (component, first row, values).
pub type Emit<'a> = dyn Fn(usize, usize, &[f32]) -> Result<()> + Sync + 'a;

/// What the Voronoi score of a crop needs besides its row stores.
pub struct VdJob<'a> {
    /// spot scores, spots × rank, row-major
    pub scores: &'a [f32],
    pub rank: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub threshold: f32,
    pub mask: &'a Mask,
}

/// Per-component summary (passes run, input mean).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VdComponent {
    pub passes: usize,
    pub mean_in: f32,
    pub mean_out: f32,
}

impl VdJob<'_> {
    /// The spot score of every pixel of rows [y0, y1) for component t, in half precision as
    /// the reference casts the scores.
    fn fill(&self, nearest: &dyn RowStore<u32>, t: usize, y0: usize, y1: usize) -> Result<Vec<f32>> {
        let mut near = vec![0u32; (y1 - y0) * self.width];
        nearest.read(y0, &mut near)?;
        Ok(near.iter().map(|&s| f16::from_f32(self.scores[s as usize * self.rank + t]).to_f32()).collect())
    }

    /// Smooth every component; `emit(t, y0, rows)` receives the finished, masked values
    /// band by band (bands of one component in parallel, components in order), and
    /// `finished(t)` follows the last band of component t.
    pub fn run(
        &self,
        nearest: &dyn RowStore<u32>,
        a: &dyn RowStore<f32>,
        b: &dyn RowStore<f32>,
        emit: &Emit,
        finished: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Vec<VdComponent>> {
        let (h, w, k) = (self.height, self.width, self.kernel);
        let band = band_rows(h, k);
        let mut summary = Vec::with_capacity(self.rank);
        for t in 0..self.rank {
            let parts = bands(h, band, |y0, y1| {
                let v = self.fill(nearest, t, y0, y1)?;
                a.write(y0, &v)?;
                let nz: Vec<f32> = v.into_iter().filter(|&x| x != 0.0).collect();
                Ok((nz.iter().map(|&x| x as f64).sum::<f64>(), nz.len()))
            })?;
            let (sum_in, n_in) = parts.iter().fold((0.0, 0), |(s, n), p| (s + p.0, n + p.1));
            if n_in == 0 {
                bands(h, band, |y0, y1| emit(t, y0, &vec![0f32; (y1 - y0) * w]))?;
                finished(t)?;
                summary.push(VdComponent { passes: 0, mean_in: 0.0, mean_out: 0.0 });
                continue;
            }
            let mean_in = (sum_in / n_in as f64) as f32;
            let (mut cur, mut next) = (a, b);
            let mut passes = 0;
            for _ in 0..10 {
                let parts = bands(h, band, |y0, y1| blur_band(cur, next, h, k, y0, y1))?;
                passes += 1;
                std::mem::swap(&mut cur, &mut next);
                let (sum, n) = parts.iter().fold((0.0, 0), |(s, n), p| (s + p.0, n + p.1));
                // no changed pixel: numpy's mean of nothing is NaN, which never stops the loop
                if n > 0 && ((sum / n as f64) as f32) < self.threshold {
                    break;
                }
            }
            // mean of the result over the pixels that were non-zero before blurring
            let parts = bands(h, band, |y0, y1| {
                let v = self.fill(nearest, t, y0, y1)?;
                let mut s = vec![0f32; v.len()];
                cur.read(y0, &mut s)?;
                Ok(v.iter().zip(&s).filter(|(x, _)| **x != 0.0).map(|(_, &y)| y as f64).sum::<f64>())
            })?;
            let mut mean_out = (parts.iter().sum::<f64>() / n_in as f64) as f32;
            if mean_out < 0.01 {
                mean_out = mean_in;
            }
            bands(h, band, |y0, y1| {
                let mut s = vec![0f32; (y1 - y0) * w];
                cur.read(y0, &mut s)?;
                for (i, v) in s.iter_mut().enumerate() {
                    let x = if mean_out > 0.0 { (*v / mean_out * mean_in).clamp(0.0, 1.0) } else { *v };
                    *v = if self.mask.get(y0 + i / w, i % w) { f16::from_f32(x).to_f32() } else { 0.0 };
                }
                emit(t, y0, &s)
            })?;
            finished(t)?;
            summary.push(VdComponent { passes, mean_in, mean_out });
        }
        Ok(summary)
    }
}

/// VD scores of a crop in memory: `scores` N × R (row-major), `nearest` the crop's
/// nearest-spot map (rows × cols), `mask` the cropped tissue mask. Returns R planes.
pub fn vd_score(scores: &[f32], r: usize, nearest: &[u32], mask: &Mask, k: usize, threshold: f32) -> Vec<Vec<f32>> {
    let (h, w) = (mask.height, mask.width);
    let job = VdJob { scores, rank: r, height: h, width: w, kernel: k, threshold, mask };
    let near = MemRows::from_vec(nearest.to_vec(), w);
    let (a, b) = (MemRows::new(h, w), MemRows::new(h, w));
    let out: Vec<MemRows<f32>> = (0..r).map(|_| MemRows::new(h, w)).collect();
    job.run(&near, &a, &b, &|t, y0, rows| out[t].write(y0, rows), &mut |_| Ok(())).expect("memory rows do not fail");
    out.into_iter().map(|m| m.into_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_matches_a_direct_reflect101_box() {
        for (h, w) in [(9, 13), (150, 7), (1, 5)] {
            let src: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
            for k in [1, 3, 5, 11, 19] {
                let got = box_blur(&src, h, w, k);
                let a = (k / 2) as i64;
                for y in 0..h as i64 {
                    for x in 0..w as i64 {
                        let mut s = 0f64;
                        for dy in -a..=a {
                            for dx in -a..=a {
                                s += src[reflect101(y + dy, h as i64) * w + reflect101(x + dx, w as i64)] as f64;
                            }
                        }
                        let want = (s / (k * k) as f64) as f32;
                        assert!((got[y as usize * w + x as usize] - want).abs() < 1e-6, "{h}x{w} k={k} ({y},{x})");
                    }
                }
            }
        }
        assert_eq!(reflect101(-1, 5), 1);
        assert_eq!(reflect101(5, 5), 3);
        assert_eq!(reflect101(-7, 5), 1);
    }

    #[test]
    fn scratch_files_give_the_memory_result() {
        let (h, w, r) = (300, 41, 2);
        let nearest: Vec<u32> = (0..h * w).map(|i| ((i / w) / 20 * 3 + (i % w) / 15) as u32 % 7).collect();
        let scores: Vec<f32> = (0..7 * r).map(|i| (i % 5) as f32 / 5.0).collect();
        let mut mask = Mask::full(h, w);
        mask.set(3, 4, false);
        let mem = vd_score(&scores, r, &nearest, &mask, 9, 0.01);
        let dir = tempfile::tempdir().unwrap();
        let job = VdJob { scores: &scores, rank: r, height: h, width: w, kernel: 9, threshold: 0.01, mask: &mask };
        let near = FileRows::<u32>::new(dir.path(), h, w).unwrap();
        near.write(0, &nearest).unwrap();
        let (a, b) = (FileRows::new(dir.path(), h, w).unwrap(), FileRows::new(dir.path(), h, w).unwrap());
        let out: Vec<MemRows<f32>> = (0..r).map(|_| MemRows::new(h, w)).collect();
        let mut done = Vec::new();
        job.run(&near, &a, &b, &|t, y0, rows| out[t].write(y0, rows), &mut |t| {
            done.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(done, vec![0, 1]);
        for (t, o) in out.into_iter().enumerate() {
            assert_eq!(o.into_vec(), mem[t]);
        }
        assert_eq!(mem[0][3 * w + 4], 0.0);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "scratch files are unlinked");
    }
}
