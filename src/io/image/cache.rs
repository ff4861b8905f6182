//! The decoded-image cache: raw interleaved samples (row-major, channels last, little
//! endian) in one file, memory-mapped for reading. A JSON sidecar records the source's
//! path, size and modification time; a cache is reused only while all three match.
//! Built through a temporary file and renamed, so a killed decode leaves no cache behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::{decode_bands, BandSink, ImageInfo, SampleType};
use crate::error::{Error, Result};
use crate::util::{atomic_write, fnv1a64, progress_bytes};

const CACHE_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CacheKey {
    version: u32,
    source: PathBuf,
    len: u64,
    mtime_ns: u128,
    /// For caches derived from a source (scaled, normalised): what was done to it.
    #[serde(default)]
    derived: Option<serde_json::Value>,
    info: Option<ImageInfo>,
}

/// A decoded image, memory-mapped.
pub struct ImageCache {
    pub info: ImageInfo,
    pub source: PathBuf,
    pub raw_path: PathBuf,
    /// true when this call decoded the source, false when an existing cache was reused.
    pub built: bool,
    map: Option<Mmap>,
    file: Option<File>,
}

/// Where caches go: `$SPAHDMAP_CACHE_DIR`, else `$XDG_CACHE_HOME/spahdmap`, else `~/.cache/spahdmap`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPAHDMAP_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("spahdmap");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("spahdmap"),
        None => std::env::temp_dir().join("spahdmap-cache"),
    }
}

fn key_of(source: &Path) -> Result<CacheKey> {
    let meta = std::fs::metadata(source).map_err(|e| Error::io(source, e))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(CacheKey {
        version: CACHE_VERSION,
        source: source.canonicalize().map_err(|e| Error::io(source, e))?,
        len: meta.len(),
        mtime_ns,
        derived: None,
        info: None,
    })
}

impl ImageCache {
    /// Open the cache of `source` in `cache_dir`, decoding the source first if needed.
    pub fn open(source: &Path, cache_dir: &Path) -> Result<ImageCache> {
        let key = key_of(source)?;
        Self::open_keyed(source, cache_dir, key, |raw_path| {
            let expected = super::probe(source)?;
            build_raw(raw_path, source, expected.total_bytes(), &format!("decoding {}", source.display()), |sink| {
                decode_bands(source, sink)
            })
        })
    }

    /// A cache derived from `base` (e.g. scaled and normalised), keyed by `params`: reused
    /// while the base's source and the params are unchanged, else produced by `produce`,
    /// which hands full-width bands in order and returns the result's layout.
    pub fn open_derived(
        base: &ImageCache,
        cache_dir: &Path,
        params: serde_json::Value,
        expected: &ImageInfo,
        produce: impl FnOnce(&mut BandSink) -> Result<ImageInfo>,
    ) -> Result<ImageCache> {
        let mut key = key_of(&base.source)?;
        key.derived = Some(params);
        Self::open_keyed(&base.source, cache_dir, key, |raw_path| {
            build_raw(raw_path, &base.source, expected.total_bytes(), "preparing image", produce)
        })
    }

    fn open_keyed(
        source: &Path,
        cache_dir: &Path,
        mut key: CacheKey,
        build: impl FnOnce(&Path) -> Result<ImageInfo>,
    ) -> Result<ImageCache> {
        let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        let mut id = key.source.to_string_lossy().to_string();
        if let Some(d) = &key.derived {
            id.push_str(&d.to_string());
        }
        let tag = format!("{stem}-{:016x}", fnv1a64(id.as_bytes()));
        let raw_path = cache_dir.join(format!("{tag}.raw"));
        let key_path = cache_dir.join(format!("{tag}.json"));
        if let Ok(text) = std::fs::read_to_string(&key_path) {
            if let Ok(old) = serde_json::from_str::<CacheKey>(&text) {
                if let Some(info) = old.info.clone() {
                    let same = CacheKey { info: None, ..old } == key;
                    let len_ok = std::fs::metadata(&raw_path).map(|m| m.len() == info.total_bytes()).unwrap_or(false);
                    if same && len_ok {
                        return Self::map(info, source, raw_path, false);
                    }
                }
            }
        }
        std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
        let _ = std::fs::remove_file(&key_path);
        let info = build(&raw_path)?;
        key.info = Some(info.clone());
        atomic_write(&key_path, serde_json::to_string_pretty(&key).unwrap().as_bytes())?;
        Self::map(info, source, raw_path, true)
    }

    fn map(info: ImageInfo, source: &Path, raw_path: PathBuf, built: bool) -> Result<ImageCache> {
        let (map, file) = if info.total_bytes() == 0 {
            (None, None)
        } else {
            let f = File::open(&raw_path).map_err(|e| Error::io(&raw_path, e))?;
            // SAFETY: the cache file is ours and only replaced by rename, never modified in place.
            let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&raw_path, e))?;
            (Some(m), Some(f))
        };
        Ok(ImageCache { info, source: source.to_path_buf(), raw_path, built, map, file })
    }

    /// An existing cache file (e.g. the scaled image a finished `preprocess` stage recorded),
    /// with its layout from the key beside it.
    pub fn open_existing(raw_path: &Path) -> Result<ImageCache> {
        let key_path = raw_path.with_extension("json");
        let text = std::fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?;
        let key: CacheKey =
            serde_json::from_str(&text).map_err(|e| Error::format(&key_path, "cache key", e.to_string()))?;
        let info = key.info.ok_or_else(|| Error::format(&key_path, "info", "missing"))?;
        let len = std::fs::metadata(raw_path).map_err(|e| Error::io(raw_path, e))?.len();
        if len != info.total_bytes() {
            return Err(Error::format(raw_path, "size", format!("{len} bytes, expected {}", info.total_bytes())));
        }
        Self::map(info, &key.source, raw_path.to_path_buf(), false)
    }

    /// A second handle on the same cache file.
    pub fn reopen(&self) -> Result<ImageCache> {
        Self::map(self.info.clone(), &self.source, self.raw_path.clone(), false)
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Copy rows [r0, r0 + n) into `buf` with positioned reads. Whole-image passes use this
    /// instead of the mapping: pages touched through a mapping count as resident memory
    /// until unmapped, pages read here do not.
    pub fn read_rows(&self, r0: usize, n: usize, buf: &mut Vec<u8>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let rb = self.info.row_bytes();
        buf.resize(n * rb, 0);
        if let Some(f) = &self.file {
            f.read_exact_at(buf, (r0 * rb) as u64).map_err(|e| Error::io(&self.raw_path, e))?;
        }
        Ok(())
    }

    /// A region as f32 in [0, 1] (samples / the type's maximum), rows × cols × channels, read
    /// with positioned reads of each row's span (no mapped pages stay resident); pixels outside
    /// the image are 0.
    pub fn read_region_unit(&self, r0: i64, c0: i64, rows: usize, cols: usize) -> Result<Vec<f32>> {
        use std::os::unix::fs::FileExt;
        let (ch, bps) = (self.info.channels, self.info.sample.bytes());
        let inv = 1.0 / self.info.sample.max_value();
        let mut out = vec![0f32; rows * cols * ch];
        let (x0, x1) = (c0.max(0), (c0 + cols as i64).min(self.info.width as i64));
        if x0 >= x1 {
            return Ok(out);
        }
        let mut buf = vec![0u8; (x1 - x0) as usize * ch * bps];
        for y in 0..rows {
            let r = r0 + y as i64;
            if r < 0 || r >= self.info.height as i64 {
                continue;
            }
            if let Some(f) = &self.file {
                let off = r as u64 * self.info.row_bytes() as u64 + (x0 as usize * ch * bps) as u64;
                f.read_exact_at(&mut buf, off).map_err(|e| Error::io(&self.raw_path, e))?;
            }
            let dst = &mut out[(y * cols + (x0 - c0) as usize) * ch..(y * cols + (x1 - c0) as usize) * ch];
            for (k, v) in dst.iter_mut().enumerate() {
                *v = self.sample(&buf, k) * inv;
            }
        }
        Ok(out)
    }

    /// The raw bytes of one row.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.info.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Sample `k` of a row's raw bytes as f32 in sample units (0–255 or 0–65535).
    #[inline]
    pub fn sample(&self, row: &[u8], k: usize) -> f32 {
        match self.info.sample {
            SampleType::U8 => row[k] as f32,
            SampleType::U16 => u16::from_le_bytes([row[2 * k], row[2 * k + 1]]) as f32,
        }
    }

    /// A region as f32, rows × cols × channels; pixels outside the image are 0.
    pub fn region_f32(&self, r0: i64, c0: i64, rows: usize, cols: usize) -> Vec<f32> {
        let ch = self.info.channels;
        let mut out = vec![0f32; rows * cols * ch];
        for y in 0..rows {
            let r = r0 + y as i64;
            if r < 0 || r >= self.info.height as i64 {
                continue;
            }
            let row = self.row(r as usize);
            for x in 0..cols {
                let c = c0 + x as i64;
                if c < 0 || c >= self.info.width as i64 {
                    continue;
                }
                for k in 0..ch {
                    out[(y * cols + x) * ch + k] = self.sample(row, c as usize * ch + k);
                }
            }
        }
        out
    }
}

/// Write bands from `produce` to `raw_path` through a temporary file; checks the total.
/// `source` names the image in messages.
fn build_raw(
    raw_path: &Path,
    source: &Path,
    expected: u64,
    label: &str,
    produce: impl FnOnce(&mut BandSink) -> Result<ImageInfo>,
) -> Result<ImageInfo> {
    let tmp = raw_path.with_extension(format!("raw.partial.{}", std::process::id()));
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(4 << 20, file);
    let bar = progress_bytes(expected, label);
    let mut written = 0u64;
    let result = produce(&mut |band: &[u8]| {
        written += band.len() as u64;
        if written > expected {
            return Err(Error::format(source, "image data", "more pixel data than the header declares"));
        }
        bar.inc(band.len() as u64);
        w.write_all(band).map_err(|e| Error::io(&tmp, e))
    })
    .and_then(|info| {
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        if written != info.total_bytes() {
            return Err(Error::format(
                source,
                "image data",
                format!("produced {written} bytes, expected {} (truncated?)", info.total_bytes()),
            ));
        }
        Ok(info)
    });
    bar.finish_and_clear();
    drop(w);
    match result {
        Ok(info) => {
            std::fs::rename(&tmp, raw_path).map_err(|e| Error::io(raw_path, e))?;
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
