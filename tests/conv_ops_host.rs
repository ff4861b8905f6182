//! The GPU convolutions' index arithmetic (kernels/conv_ops.cuh) checked on the CPU: the C++
//! checker drives each operand policy through a plain GEMM and compares with the layer
//! written out directly (exact, on small integers). Runs wherever a C++ compiler is found
//! (CXX, c++, g++, clang++), so CI checks the gathers of every kernel without a GPU.
use std::process::Command;

#[test]
fn every_convolution_policy_reproduces_its_layer() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<String> =
        std::env::var("CXX").into_iter().chain(["c++", "g++", "clang++"].map(String::from)).collect();
    let Some(cxx) =
        candidates.iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        eprintln!("skipped: no C++ compiler");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("conv_ops_check");
    let o = Command::new(cxx)
        .args(["-std=c++17", "-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(root.join("tests/conv_ops_check.cpp"))
        .output()
        .unwrap();
    assert!(o.status.success(), "compiling the checker: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(&exe).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "{out}");
}
