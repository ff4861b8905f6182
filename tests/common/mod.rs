#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The crate root: where the test was built, or SPAHDMAP_TEST_ROOT (the GPU machine runs test
/// binaries built elsewhere, from its own copy of the tree: scripts/gpu-check).
pub fn root() -> PathBuf {
    std::env::var_os("SPAHDMAP_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

/// `../shared/data/<p>` when present (it is on developer machines and in CI).
pub fn shared(p: &str) -> Option<PathBuf> {
    let d = root().join("../shared/data").join(p);
    if d.exists() {
        Some(d)
    } else {
        eprintln!("skipped: ../shared/data/{p} not present");
        None
    }
}

pub fn bin() -> Command {
    let exe = std::env::var_os("SPAHDMAP_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_spahdmap").into());
    let mut c = Command::new(exe);
    c.env("NO_COLOR", "1");
    c
}

/// Run the binary with its cache in `cache`.
pub fn run(args: &[&str], cache: &Path) -> Output {
    bin().args(args).env("SPAHDMAP_CACHE_DIR", cache).output().expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn read_npy<T: npyz::Deserialize>(p: &Path) -> (Vec<u64>, Vec<T>) {
    let bytes = std::fs::read(p).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec().unwrap())
}

/// Assert a failed run printed one error line naming `file` and `field`, without panicking.
pub fn assert_clean_error(o: &Output, file: &str, field: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {e}");
    assert!(!e.contains("panicked"), "panicked: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {e}");
    assert!(lines[0].contains(file), "error does not name {file}: {e}");
    assert!(lines[0].contains(field), "error does not name {field}: {e}");
}

/// `n` uniform values in [lo, hi) from `seed` (fresh inputs for the kernel tests).
pub fn rnd(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// ‖a − b‖ / ‖b‖; a non-finite value in `a` (an output never written over its NaN poison) or
/// an all-zero reference fails at once.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite value on the GPU (unwritten output?)");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!(den > 0.0, "reference is all zeros");
    (num / den).sqrt()
}
