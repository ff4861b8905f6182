//! The GPU convolutions checked on the CPU, wherever a C++ compiler is found (CXX, c++, g++,
//! clang++), so CI checks them without a GPU:
//! - `conv_ops_check.cpp` drives each operand policy of kernels/conv_ops.cuh (gathers, scalar
//!   and four-wide, and epilogues) through a plain GEMM against the layer written out directly;
//! - `conv_kernels_emu.cpp` runs kernels/conv.cu itself — every GEMM body, 256 threads per
//!   block, barriers and warp-collective MMAs emulated — against the same plain GEMM;
//! - `memory_kernels_emu.cpp` runs the element-wise, channel and half instance norm kernels'
//!   eight-wide paths (kernels/elementwise.cu, norm.cu) against their one-at-a-time loops;
//! - `multi_tensor_emu.cpp` runs the multi-tensor Adam, unscale and zeroing blocks against the
//!   single-tensor updates, and prints their lists' layout for the Rust side to compare.
//!
//! All compare exactly, on small integers (the multi-tensor and memory checks: the same arithmetic).
use std::path::{Path, PathBuf};
use std::process::Command;

fn compiler() -> Option<String> {
    let candidates: Vec<String> =
        std::env::var("CXX").into_iter().chain(["c++", "g++", "clang++"].map(String::from)).collect();
    candidates.into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Compile `tests/SOURCE` with `flags` and run it; its output on success.
fn build_and_run(source: &str, flags: &[&str]) -> Option<String> {
    let Some(cxx) = compiler() else {
        eprintln!("skipped: no C++ compiler");
        return None;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let exe: PathBuf = dir.path().join("check");
    let o = Command::new(&cxx).args(flags).arg("-o").arg(&exe).arg(root.join("tests").join(source)).output().unwrap();
    assert!(o.status.success(), "compiling {source}: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(&exe).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{out}");
    assert!(o.status.success(), "{out}");
    Some(out)
}

#[test]
fn every_convolution_policy_reproduces_its_layer() {
    if let Some(out) = build_and_run("conv_ops_check.cpp", &["-std=c++17", "-O1", "-Wall"]) {
        assert!(out.contains("every policy reproduces its layer exactly"), "{out}");
    }
}

#[test]
fn every_convolution_kernel_body_reproduces_its_layer_on_emulated_threads() {
    let flags = ["-std=c++20", "-O1", "-Wall", "-Wno-unknown-pragmas", "-pthread"];
    if let Some(out) = build_and_run("conv_kernels_emu.cpp", &flags) {
        assert!(out.contains("reproduce every operation exactly"), "{out}");
        // cp.async landing at its wait, barriers and waits checked on shared memory
        assert!(out.contains("no shared-memory hazard"), "{out}");
    }
}

#[test]
fn memory_passes_eight_wide_give_the_one_at_a_time_bits() {
    let flags = ["-std=c++20", "-O1", "-Wall", "-Wno-unknown-pragmas", "-pthread"];
    if let Some(out) = build_and_run("memory_kernels_emu.cpp", &flags) {
        assert!(out.contains("give the one-at-a-time loops' bits"), "{out}");
    }
}

/// The multi-tensor Adam and unscale (kernels/multi_tensor.cuh) on emulated blocks against
/// the single-tensor updates, and the lists' C layout against the Rust structs that fill the
/// kernel parameter (`backend::cuda::multi`): a field out of place would hand the GPU wrong
/// addresses.
#[test]
fn multi_tensor_updates_match_single_tensor_ones_and_the_rust_layout() {
    use spahdmap::backend::cuda::multi::{AdamList, GradList, ADAM_TENSORS, CHUNK, GRAD_TENSORS};
    use std::mem::{offset_of, size_of};
    let Some(out) = build_and_run("multi_tensor_emu.cpp", &["-std=c++17", "-O1", "-Wall"]) else { return };
    assert!(out.contains("match the single-tensor updates exactly"), "{out}");
    assert!(out.contains("the zeroing clears every listed gradient"), "{out}");
    let adam = format!(
        "layout AdamList p={} g={} m={} v={} n={} s={} at={} first={} count={} size={}",
        offset_of!(AdamList, p),
        offset_of!(AdamList, g),
        offset_of!(AdamList, m),
        offset_of!(AdamList, v),
        offset_of!(AdamList, n),
        offset_of!(AdamList, s),
        offset_of!(AdamList, at),
        offset_of!(AdamList, first),
        offset_of!(AdamList, count),
        size_of::<AdamList>()
    );
    let grads = format!(
        "layout GradList g={} n={} first={} count={} size={}",
        offset_of!(GradList, g),
        offset_of!(GradList, n),
        offset_of!(GradList, first),
        offset_of!(GradList, count),
        size_of::<GradList>()
    );
    let constants = format!("constants chunk={CHUNK} adam={ADAM_TENSORS} grads={GRAD_TENSORS}");
    for line in [adam, grads, constants] {
        assert!(out.lines().any(|l| l == line), "C++ and Rust disagree: Rust has\n{line}\nC++ printed\n{out}");
    }
    // within the 4 KiB of kernel parameters every driver takes
    assert!(size_of::<AdamList>() + 16 <= 4096 && size_of::<GradList>() + 16 <= 4096);
}
