//! Kernel build. Finds nvcc (NVCC, CUDA_HOME/CUDA_PATH, PATH) and compiles `kernels/*.cu`
//! into one fatbin embedded in the binary (and `kernels/sm90a/*.cu` into a second, sm_90a
//! alone). Without nvcc the build succeeds and says so, unless SPAHDMAP_REQUIRE_NVCC=1 (CI),
//! which makes a missing nvcc or a failing kernel fatal.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = std::env::var_os(var) {
            let p = Path::new(&h).join("bin/nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.exists())
}

/// The `*.cu` files of `dir`, in name order.
fn cu_sources(dir: &str) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cu")).collect())
        .unwrap_or_default();
    sources.sort();
    sources
}

/// nvcc takes one input when it writes one output: `path`, an amalgamation including them all.
fn amalgamation(sources: &[PathBuf], path: &Path) -> PathBuf {
    let body: String =
        sources.iter().map(|p| format!("#include \"{}\"\n", std::fs::canonicalize(p).unwrap().display())).collect();
    std::fs::write(path, body).unwrap();
    path.to_path_buf()
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SPAHDMAP_REQUIRE_NVCC");
    let required = std::env::var("SPAHDMAP_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let fatbin = out.join("kernels.fatbin");
    let sources = cu_sources("kernels");
    let archs = "sm_80,sm_90,compute_90";
    let nvcc = find_nvcc();
    let built = match nvcc.clone() {
        None => {
            if required {
                panic!("SPAHDMAP_REQUIRE_NVCC=1 but no nvcc found (set NVCC or CUDA_HOME)");
            }
            println!("cargo:warning=nvcc not found: building without CUDA kernels");
            false
        }
        Some(_) if sources.is_empty() => false,
        Some(nvcc) => {
            let all = amalgamation(&sources, &out.join("kernels_all.cu"));
            let status = Command::new(&nvcc)
                .args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"])
                .args([
                    "-gencode=arch=compute_80,code=sm_80",
                    "-gencode=arch=compute_90,code=sm_90",
                    "-gencode=arch=compute_90,code=compute_90",
                ])
                .arg("-o")
                .arg(&fatbin)
                .arg(&all)
                .status();
            match status {
                Ok(s) if s.success() => true,
                other => {
                    if required {
                        panic!("nvcc failed on kernels/*.cu: {other:?}");
                    }
                    println!("cargo:warning=nvcc failed ({other:?}): building without CUDA kernels");
                    false
                }
            }
        }
    };
    if !built {
        std::fs::write(&fatbin, b"").unwrap();
    }
    // kernels/sm90a/*.cu: wgmma, which exists on compute capability 9.0 alone and only in code
    // built for sm_90a (no PTX: it would not run on a later card either). A second image the
    // backend loads beside the first on such a card; empty where nvcc did not build the first.
    let sm90a = out.join("kernels_sm90a.fatbin");
    let wg_sources = cu_sources("kernels/sm90a");
    let wg_built = match nvcc.clone() {
        Some(nvcc) if built && !wg_sources.is_empty() => {
            let all = amalgamation(&wg_sources, &out.join("kernels_sm90a_all.cu"));
            // ptxas's report read for serialised wgmma and waits it injected (C7511, C7517,
            // C7519: it waits on the tensor cores where the code did not; a silent slowdown an
            // edit could bring)
            let output = Command::new(&nvcc)
                .args(["--fatbin", "-O3", "-std=c++17", "-lineinfo", "-gencode=arch=compute_90a,code=sm_90a"])
                .args(["-Xptxas", "-v", "-o"])
                .arg(&sm90a)
                .arg(&all)
                .output();
            match output {
                Ok(o) if o.status.success() => {
                    // (both streams: the check must not go blind where a toolkit moves the report)
                    let report =
                        format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
                    if required && !report.contains("ptxas info") {
                        panic!(
                            "no ptxas report from nvcc -Xptxas -v on kernels/sm90a/*.cu: the wgmma check cannot run"
                        );
                    }
                    let serialised: Vec<&str> = report
                        .lines()
                        .filter(|l| (l.contains("wgmma") && l.contains("serialized")) || l.contains("is injected"))
                        .collect();
                    if !serialised.is_empty() {
                        if required {
                            panic!("ptxas serialises wgmma in kernels/sm90a/*.cu:\n{}", serialised.join("\n"));
                        }
                        println!("cargo:warning=ptxas serialises wgmma in kernels/sm90a: {}", serialised.join("; "));
                    }
                    true
                }
                other => {
                    if let Ok(o) = &other {
                        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                    }
                    let status = other.map(|o| o.status);
                    if required {
                        panic!("nvcc failed on kernels/sm90a/*.cu: {status:?}");
                    }
                    println!(
                        "cargo:warning=nvcc failed on kernels/sm90a ({status:?}): building without the wgmma kernels"
                    );
                    false
                }
            }
        }
        _ => false,
    };
    if !wg_built {
        std::fs::write(&sm90a, b"").unwrap();
    }
    let archs = match (built, wg_built) {
        (true, true) => format!("{archs},sm_90a"),
        (true, false) => archs.to_string(),
        _ => String::new(),
    };
    println!("cargo:rustc-env=SPAHDMAP_KERNEL_ARCHS={archs}");
    // the nvcc that built them, for tests that ask it more (tests/kernel_contract.rs)
    let used = nvcc.filter(|_| built).map(|p| p.display().to_string()).unwrap_or_default();
    println!("cargo:rustc-env=SPAHDMAP_NVCC={used}");
}
