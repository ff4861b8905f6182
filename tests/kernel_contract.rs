//! What the host assumes of the kernels, checked on nvcc's PTX without a GPU: the table of
//! kernels launched with dynamic shared memory (`cuda::DYNAMIC_SHARED_MEMORY`; past 48 KB they
//! opt in before their first launch) names exactly the entry points of kernels/conv_h16.cu and
//! of the wgmma kernels built on it (kernels/sm90a/conv_wg.cu, which includes it) that stage in
//! the halo kernels' dynamic array, and each fits a block's shared memory on every card of
//! compute 8.0 and up. A kernel missing from the table fails its first launch on a card (a
//! review caught one before it reached a card). Asks the nvcc that built the kernels
//! (`cuda::NVCC`); skips where none did, unless SPAHDMAP_REQUIRE_NVCC=1 (CI).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use spahdmap::backend::cuda::{DYNAMIC_SHARED_MEMORY, FATBIN_SM90A, NVCC};

/// The halo kernels' dynamic array (`HALO_DYNAMIC_SMEM(smem, …)` in namespace h16), mangled.
const HALO_ARRAY: &str = "_ZN3h164smemE";
/// Shared memory a block may opt in to on an A100 (163 KB; an H100 or H200 has 227).
const A100_OPTIN: usize = 166_912;

/// Each entry point's body in `ptx`: the lines from `.entry NAME(` to the closing brace.
fn entries(ptx: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in ptx.lines() {
        if let Some(at) = line.find(".entry ") {
            let name = line[at + 7..].split('(').next().unwrap_or("").trim().to_string();
            current = Some((name, String::new()));
            continue;
        }
        if let Some((name, body)) = current.as_mut() {
            if line == "}" {
                out.insert(std::mem::take(name), std::mem::take(body));
                current = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

/// Bytes of the static shared arrays an entry's body declares (`.shared .align A .b8 NAME[N];`,
/// N elements of the type's width).
fn static_shared(body: &str) -> usize {
    body.lines()
        .map(str::trim)
        .filter(|l| l.starts_with(".shared "))
        .filter_map(|l| {
            let width = [(".b8 ", 1), (".u8 ", 1), (".b16 ", 2), (".b32 ", 4), (".u32 ", 4), (".f32 ", 4)]
                .into_iter()
                .chain([(".b64 ", 8), (".u64 ", 8), (".f64 ", 8)])
                .find(|(t, _)| l.contains(t))
                .map_or(8, |(_, w)| w);
            let n = l.rsplit_once('[')?.1.trim_end_matches("];").parse::<usize>().ok()?;
            Some(n * width)
        })
        .sum()
}

#[test]
fn the_dynamic_shared_memory_table_names_every_kernel_staging_in_it() {
    if NVCC.is_empty() {
        assert!(std::env::var("SPAHDMAP_REQUIRE_NVCC").as_deref() != Ok("1"), "SPAHDMAP_REQUIRE_NVCC=1 but no nvcc");
        eprintln!("skipped: built without nvcc");
        return;
    }
    let nvcc = Path::new(NVCC);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ptx = std::env::temp_dir().join(format!("spahdmap-contract-{}.ptx", std::process::id()));
    // the wgmma file includes conv_h16.cu: its PTX has every entry point, where nvcc built it
    let wg = !FATBIN_SM90A.is_empty();
    let (arch, file) =
        if wg { ("compute_90a", "kernels/sm90a/conv_wg.cu") } else { ("compute_90", "kernels/conv_h16.cu") };
    let out = Command::new(nvcc)
        .args(["-ptx", &format!("-arch={arch}"), "-std=c++17", "-o"])
        .arg(&ptx)
        .arg(root.join(file))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", nvcc.display()));
    assert!(out.status.success(), "nvcc -ptx {file}: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&ptx).unwrap();
    std::fs::remove_file(&ptx).ok();
    let bodies = entries(&text);
    assert!(
        bodies.len() > 20
            && bodies.contains_key("conv3_halo_fwd_h16")
            && (!wg || bodies.contains_key("conv3_halo_fwd_wg_h16")),
        "entry points read: {:?}",
        bodies.keys()
    );
    let staging: BTreeSet<&str> =
        bodies.iter().filter(|(_, b)| b.contains(HALO_ARRAY)).map(|(n, _)| n.as_str()).collect();
    // (the wgmma kernels' rows only where their image was built)
    let table: Vec<(&str, usize)> =
        DYNAMIC_SHARED_MEMORY.iter().copied().filter(|(n, _)| wg || !n.contains("_wg_")).collect();
    let listed: BTreeSet<&str> = table.iter().map(|(n, _)| *n).collect();
    eprintln!("{} entry points, {} staging in the dynamic array", bodies.len(), staging.len());
    assert_eq!(listed.len(), table.len(), "a kernel listed twice");
    let missing: Vec<_> = staging.difference(&listed).collect();
    assert!(missing.is_empty(), "launched without opting in to their shared memory: {missing:?}");
    let stale: Vec<_> = listed.difference(&staging).collect();
    assert!(stale.is_empty(), "listed but no such kernel stages in the dynamic array: {stale:?}");
    for (name, bytes) in table {
        let total = bytes + static_shared(&bodies[name]);
        eprintln!("{name}: {bytes} bytes dynamic, {total} in all");
        assert!(bytes > 0 && bytes % 16 == 0, "{name}: {bytes} bytes");
        assert!(total <= A100_OPTIN, "{name}: {total} bytes of shared memory a block, past an A100's {A100_OPTIN}");
    }
}
