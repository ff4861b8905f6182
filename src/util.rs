//! Small shared helpers: atomic writes, progress bars, stable hashing, memory readings.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};

/// A temporary sibling path for writing `path` atomically.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("out");
    path.with_file_name(format!(".{name}.partial.{}", std::process::id()))
}

/// Delete temporary siblings (`partial_path`) left under `dir` by a process that was killed
/// before its rename; returns how many. A results folder has one writer at a time.
pub fn remove_stale_partials(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            n += remove_stale_partials(&p);
        } else if name.starts_with('.') && name.contains(".partial.") && std::fs::remove_file(&p).is_ok() {
            n += 1;
        }
    }
    n
}

/// Write a whole file through a temporary sibling and a rename: readers never see half a file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = partial_path(path);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Run `write` against a temporary sibling of `path`, then rename it into place; on error
/// the temporary is removed and `path` is untouched.
pub fn write_atomically<T>(path: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_path(path);
    match write(&tmp) {
        Ok(v) => {
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(path, e)
            })?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// FNV-1a: a hash that stays the same across Rust versions (cache file names).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A byte-count progress bar on stderr; hidden when stderr is not a terminal.
pub fn progress_bytes(total: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar
}

/// A count progress bar on stderr; hidden when stderr is not a terminal.
pub fn progress_count(total: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})").unwrap().progress_chars("=> "));
    bar.set_message(msg.to_string());
    bar
}

/// Peak resident set size of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
