//! Reading and writing the results folder (SPEC §12) between stages: a later stage, or a
//! resumed run, reads what the earlier ones left there.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::npy::read_npy;
use crate::io::sparse::Csr;
use crate::preprocess::morphology::Mask;
use crate::stages::preprocess::SectionMeta;
use crate::util::{atomic_write, write_atomically};

/// One section's folder of results.
pub struct SectionDir {
    pub dir: PathBuf,
    pub meta: SectionMeta,
}

impl SectionDir {
    pub fn open(out: &Path, name: &str) -> Result<SectionDir> {
        let dir = out.join(name);
        let p = dir.join("meta.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let meta = serde_json::from_str(&text).map_err(|e| Error::format(&p, "meta.json", e.to_string()))?;
        Ok(SectionDir { dir, meta })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The preprocessed expression (spots × genes) and its gene names.
    pub fn expression(&self) -> Result<(Csr, Vec<String>)> {
        let d = self.dir.join("expression");
        let data = read_npy::<f32>(&d.join("data.npy"))?.1;
        let indices = read_npy::<u32>(&d.join("indices.npy"))?.1;
        let indptr: Vec<usize> = read_npy::<u64>(&d.join("indptr.npy"))?.1.into_iter().map(|v| v as usize).collect();
        let gp = d.join("genes.txt");
        let genes: Vec<String> =
            std::fs::read_to_string(&gp).map_err(|e| Error::io(&gp, e))?.lines().map(String::from).collect();
        let rows = indptr.len().saturating_sub(1);
        if indptr.last() != Some(&data.len()) || indices.len() != data.len() {
            return Err(Error::format(&d, "expression", "indptr, indices and data disagree"));
        }
        Ok((Csr { rows, cols: genes.len(), indptr, indices, data }, genes))
    }

    pub fn barcodes(&self) -> Result<Vec<String>> {
        let p = self.dir.join("expression/barcodes.txt");
        Ok(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?.lines().map(String::from).collect())
    }

    fn points(&self, file: &str) -> Result<Vec<[f64; 2]>> {
        let (_, v) = read_npy::<f64>(&self.dir.join(file))?;
        Ok(v.chunks(2).map(|p| [p[0], p[1]]).collect())
    }

    /// Sequenced spot centres, then pseudo spots, in the scaled image's frame.
    pub fn all_spots(&self) -> Result<(Vec<[f64; 2]>, usize)> {
        let mut s = self.points("spots.npy")?;
        let n = s.len();
        s.extend(self.points("pseudo_spots.npy")?);
        Ok((s, n))
    }

    /// The cropped tissue mask, read in bands into bits.
    pub fn mask(&self) -> Result<Mask> {
        read_mask(&self.dir.join("mask.npy"))
    }
}

fn read_mask(p: &Path) -> Result<Mask> {
    let f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    let npy = npyz::NpyFile::new(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| Error::format(p, "npy header", e.to_string()))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        return Err(Error::format(p, "shape", format!("{shape:?}, expected 2 axes")));
    }
    let (h, w) = (shape[0] as usize, shape[1] as usize);
    let mut m = Mask::new(h, w);
    let mut it = npy.data::<bool>().map_err(|e| Error::format(p, "dtype", e.to_string()))?;
    let mut row = vec![0u8; w];
    for r in 0..h {
        for v in row.iter_mut() {
            *v = it.next().ok_or_else(|| Error::format(p, "data", "short"))?.map_err(|e| Error::io(p, e))? as u8;
        }
        let (words, _) = m.band_mut(r, r + 1);
        crate::preprocess::morphology::pack(&row, words);
    }
    Ok(m)
}

/// Metagenes as CSV, genes × Embedding_1..R (pandas reads it with `index_col=0`).
/// A CSV field, quoted when it holds a comma or a quote.
pub fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

pub fn write_metagenes(path: &Path, genes: &[String], m: &[f64], rank: usize) -> Result<()> {
    let mut s = String::new();
    s.push_str(&(1..=rank).map(|t| format!(",Embedding_{t}")).collect::<String>());
    s.push('\n');
    for (g, row) in genes.iter().zip(m.chunks(rank)) {
        s.push_str(&csv_field(g));
        for v in row {
            s.push_str(&format!(",{}", *v as f32));
        }
        s.push('\n');
    }
    atomic_write(path, s.as_bytes())
}

pub fn read_metagenes(path: &Path) -> Result<(Vec<String>, Vec<f64>, usize)> {
    let mut rd = csv::Reader::from_path(path).map_err(|e| Error::format(path, "csv", e.to_string()))?;
    let rank = rd.headers().map_err(|e| Error::format(path, "header", e.to_string()))?.len() - 1;
    let (mut genes, mut m) = (Vec::new(), Vec::new());
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| Error::format(path, format!("row {}", i + 1), e.to_string()))?;
        genes.push(rec[0].to_string());
        for t in 1..=rank {
            m.push(
                rec[t]
                    .parse::<f64>()
                    .map_err(|e| Error::format(path, format!("row {} column {t}", i + 1), e.to_string()))?,
            );
        }
    }
    Ok((genes, m, rank))
}

/// An .npy header for a little-endian array (format 1.0, data 64-byte aligned).
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    dict.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h
}

/// A half-precision .npy of `shape` filled through a memory map in parallel, row band by
/// row band, then renamed into place: a reader never sees a partial file.
pub struct F16NpyWriter {
    map: memmap2::MmapMut,
    /// address of the mapping, taken once through `as_mut_ptr`
    base: usize,
    offset: usize,
    len: usize,
}

// SAFETY: writers touch disjoint element ranges (see `write`).
unsafe impl Sync for F16NpyWriter {}

impl F16NpyWriter {
    /// Fill `path` with the array `fill` produces; `fill` gets the writer to call `write` on.
    pub fn create<T>(path: &Path, shape: &[usize], fill: impl FnOnce(&F16NpyWriter) -> Result<T>) -> Result<T> {
        write_atomically(path, |tmp| {
            let header = npy_header("<f2", shape);
            let len: usize = shape.iter().product();
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(tmp)
                .map_err(|e| Error::io(tmp, e))?;
            f.write_all(&header).map_err(|e| Error::io(tmp, e))?;
            f.set_len((header.len() + 2 * len) as u64).map_err(|e| Error::io(tmp, e))?;
            // SAFETY: the file is ours (a fresh temporary) for the mapping's lifetime.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.map_err(|e| Error::io(tmp, e))?;
            let base = map.as_mut_ptr() as usize;
            let w = F16NpyWriter { map, base, offset: header.len(), len };
            let r = fill(&w)?;
            w.map.flush().map_err(|e| Error::io(tmp, e))?;
            f.sync_all().map_err(|e| Error::io(tmp, e))?;
            Ok(r)
        })
    }

    /// Write elements [from, to) back to the file and drop their pages from this process
    /// (a shared file mapping rereads them from the page cache if touched again).
    pub fn release(&self, from: usize, to: usize) -> Result<()> {
        let page = 4096;
        let (a, b) = (self.offset + 2 * from, self.offset + 2 * to.min(self.len));
        let (a, b) = (a.div_ceil(page) * page, b / page * page);
        if b <= a {
            return Ok(());
        }
        self.map.flush_range(a, b - a).map_err(|e| Error::io(Path::new("<VD map>"), e))?;
        // SAFETY: MADV_DONTNEED on a shared file mapping only drops resident pages; their
        // contents were just written back and stay in the file.
        unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) }
            .map_err(|e| Error::io(Path::new("<VD map>"), e))
    }

    /// Store `values` at flat element index `at`. Concurrent calls must cover disjoint ranges.
    pub fn write(&self, at: usize, values: &[f32]) {
        assert!(at + values.len() <= self.len);
        let base = self.base;
        values.par_chunks(1 << 16).enumerate().for_each(|(c, vs)| {
            let base = base as *mut u8;
            for (i, &v) in vs.iter().enumerate() {
                let b = f16::from_f32(v).to_bits().to_le_bytes();
                let off = self.offset + 2 * (at + c * (1 << 16) + i);
                // SAFETY: off is inside the mapping (asserted above) and no other writer
                // touches this element.
                unsafe {
                    *base.add(off) = b[0];
                    *base.add(off + 1) = b[1];
                }
            }
        });
    }
}

/// A finished R × H × W half-precision score map (VD or SpaHDmap score), memory-mapped.
pub struct ScoreMap {
    map: memmap2::Mmap,
    offset: usize,
    pub rank: usize,
    pub height: usize,
    pub width: usize,
}

impl ScoreMap {
    /// Open `path`, which must hold `rank` × `height` × `width` half floats.
    pub fn open(path: &Path, rank: usize, height: usize, width: usize) -> Result<ScoreMap> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: score files are finished results, replaced only by rename.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        if map.len() < 10 || &map[..6] != b"\x93NUMPY" {
            return Err(Error::format(path, "npy header", "not an .npy file"));
        }
        let offset = u16::from_le_bytes([map[8], map[9]]) as usize + 10;
        if map.len() != offset + 2 * rank * height * width {
            return Err(Error::format(path, "shape", format!("expected {rank} × {height} × {width} half floats")));
        }
        Ok(ScoreMap { map, offset, rank, height, width })
    }

    #[inline]
    pub fn get(&self, k: usize, y: usize, x: usize) -> f32 {
        self.get_f16(k, y, x).to_f32()
    }
    #[inline]
    pub fn get_f16(&self, k: usize, y: usize, x: usize) -> f16 {
        let at = self.offset + 2 * ((k * self.height + y) * self.width + x);
        f16::from_bits(u16::from_le_bytes([self.map[at], self.map[at + 1]]))
    }

    /// Drop this process's resident pages of rows [y0, y1) of component k (whole pages inside
    /// the range): readers that walk the map top to bottom call this behind them, so their
    /// resident memory stays a band deep whatever the slide's area. The data stays in the file
    /// (and the page cache); a later read maps it in again.
    pub fn release_component_rows(&self, k: usize, y0: usize, y1: usize) {
        let page = 4096;
        let row = |y: usize| self.offset + 2 * ((k * self.height + y.min(self.height)) * self.width);
        let (a, b) = (row(y0).div_ceil(page) * page, row(y1) / page * page);
        if b > a {
            // SAFETY: MADV_DONTNEED on a read-only file mapping only drops resident pages; the
            // next access reads them from the file again. Failure only means they stay.
            let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
        }
    }

    /// `release_component_rows` for every component.
    pub fn release_rows(&self, y0: usize, y1: usize) {
        for k in 0..self.rank {
            self.release_component_rows(k, y0, y1);
        }
    }

    /// The `rows` × `cols` window at (r0, c0) of the map's frame, channels last, zeros outside.
    pub fn window(&self, r0: i64, c0: i64, rows: usize, cols: usize) -> Vec<f32> {
        self.window_as(r0, c0, rows, cols, f16::to_f32)
    }

    /// `window` in the file's half precision (what the score stage uploads).
    pub fn window_f16(&self, r0: i64, c0: i64, rows: usize, cols: usize) -> Vec<f16> {
        self.window_as(r0, c0, rows, cols, |v| v)
    }

    /// The window with each value through `to` (one pass, whichever the element type).
    fn window_as<T: Copy + Default>(
        &self,
        r0: i64,
        c0: i64,
        rows: usize,
        cols: usize,
        to: impl Fn(f16) -> T,
    ) -> Vec<T> {
        let mut out = vec![T::default(); rows * cols * self.rank];
        let (x0, x1) = (c0.max(0), (c0 + cols as i64).min(self.width as i64));
        for y in 0..rows {
            let r = r0 + y as i64;
            if r < 0 || r >= self.height as i64 || x0 >= x1 {
                continue;
            }
            for k in 0..self.rank {
                for c in x0..x1 {
                    out[(y * cols + (c - c0) as usize) * self.rank + k] = to(self.get_f16(k, r as usize, c as usize));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_npy_reads_back_with_npyz_and_metagenes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        F16NpyWriter::create(&p, &[2, 3, 5], |w| {
            w.write(15, &[0.5; 15]);
            w.write(0, &(0..15).map(|i| i as f32 / 16.0).collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
        let (shape, bits) = read_npy::<u16>(&p).unwrap_or_else(|_| {
            // npyz may not know f2; read the raw bytes after the header instead
            let b = std::fs::read(&p).unwrap();
            let hl = u16::from_le_bytes([b[8], b[9]]) as usize + 10;
            (vec![2, 3, 5], b[hl..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
        });
        assert_eq!(shape, vec![2, 3, 5]);
        let v: Vec<f32> = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
        assert_eq!(v[3], 3.0 / 16.0);
        assert_eq!(v[29], 0.5);
        let b = std::fs::read(&p).unwrap();
        assert_eq!((u16::from_le_bytes([b[8], b[9]]) as usize + 10) % 64, 0);
        assert!(String::from_utf8_lossy(&b[10..80]).contains("'<f2'"));

        let m = dir.path().join("m.csv");
        write_metagenes(&m, &["A".into(), "B,1".into()], &[1.0, 0.5, 0.0, 2.0], 2).unwrap();
        let (g, v, r) = read_metagenes(&m).unwrap();
        assert_eq!((g, v, r), (vec!["A".to_string(), "B,1".to_string()], vec![1.0, 0.5, 0.0, 2.0], 2));
    }

    /// Resident set (kB) of this process, from /proc (Linux).
    fn vm_rss_kb() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Readers walking a map drop the pages behind them: reading a 64 MiB map raises the
    /// resident set by about its size, releasing its rows takes that back.
    #[test]
    fn released_rows_leave_the_resident_set() {
        let Some(_) = vm_rss_kb() else { return };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.npy");
        let (rank, h, w) = (4usize, 2048usize, 4096usize);
        F16NpyWriter::create(&p, &[rank, h, w], |wr| {
            let row = vec![0.25f32; w];
            for k in 0..rank {
                for y in 0..h {
                    wr.write((k * h + y) * w, &row);
                }
                wr.release(k * h * w, (k + 1) * h * w)?;
            }
            Ok(())
        })
        .unwrap();
        let map = ScoreMap::open(&p, rank, h, w).unwrap();
        let before = vm_rss_kb().unwrap();
        let mut sum = 0f64;
        for k in 0..rank {
            for y in 0..h {
                for x in (0..w).step_by(1024) {
                    sum += map.get(k, y, x) as f64;
                }
            }
        }
        assert_eq!(sum, 0.25 * (rank * h * 4) as f64);
        let read = vm_rss_kb().unwrap();
        map.release_rows(0, h);
        let after = vm_rss_kb().unwrap();
        eprintln!("resident: {before} kB, after reading 64 MiB {read} kB, after release {after} kB");
        assert!(read > before + 48 * 1024, "reading did not map the file in ({before} → {read} kB)");
        assert!(after + 48 * 1024 < read, "release kept the pages ({read} → {after} kB)");
        // and the data is still there
        assert_eq!(map.get(3, h - 1, w - 1), 0.25);
    }
}
