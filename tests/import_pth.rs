//! tools/import_pth.py: the published package's `.pth` state dicts → spahdmap's safetensors.
//! The fixture (tools/make_import_fixtures.py) is written by torch itself and covers the
//! storage types and views a state dict can hold; the script needs only python3.
mod common;

use std::process::Command;

use common::{fixture, root};

fn python() -> Option<Command> {
    let ok = Command::new("python3").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipped: python3 not found");
    }
    ok.then(|| Command::new("python3"))
}

#[test]
fn converts_every_tensor_of_a_torch_state_dict() {
    let Some(mut py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("models/pretrained.safetensors");
    let o = py
        .arg(root().join("tools/import_pth.py"))
        .arg(fixture("import/small.pth"))
        .arg(&out)
        .arg("--stage")
        .arg("pretrain")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("import/small.json")).unwrap()).unwrap();
    let want = want.as_object().unwrap();
    assert_eq!(st.len(), want.len());
    for (name, w) in want {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape(), &shape[..], "{name}");
        let got: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let w: Vec<f32> = w["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(got, w, "{name}");
    }
    // the non-contiguous one really was gathered: (4, 3) view of a row-major (3, 4) matrix
    let t = st.tensor("transposed").unwrap();
    let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(v[1], 4.0 / 7.0);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["stage"], "pretrain");
    assert_eq!(meta["source"], "small.pth");
}

#[test]
fn a_file_that_is_not_a_checkpoint_is_refused_by_name() {
    let Some(mut py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.pth");
    std::fs::write(&bad, b"not a zip").unwrap();
    let out = dir.path().join("x.safetensors");
    let o = py.arg(root().join("tools/import_pth.py")).arg(&bad).arg(&out).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("notes.pth") && err.contains("zip"), "{err}");
    assert!(!out.exists(), "no output for a failed conversion");
}
