//! Model and optimiser state as safetensors (SPEC §12: `models/pretrained.safetensors`,
//! `models/trained.safetensors`). Parameters are stored under the reference's state-dict names
//! in PyTorch's layouts and shapes, so `safetensors.torch.load_file` gives a state dict the
//! published package's model loads; Adam's moments go under `adam.m.NAME` / `adam.v.NAME`, the
//! step count and the caller's progress in the metadata. Loading restores the exact bits.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::unet::{Kind, Params};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::optim::Adam;
use crate::util::atomic_write;

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Write parameters (and the optimiser over tensors `trained`, if given) from a backend's
/// buffers to `path` atomically.
pub fn save<B: Backend>(
    b: &B,
    path: &Path,
    p: &Params<B::Buf>,
    opt: Option<(&Adam<B::Buf>, &[usize])>,
    mut meta: HashMap<String, String>,
) -> Result<()> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let torch = |i: usize, t: &B::Buf| le_bytes(&p.kinds[i].to_torch(&b.download(t)));
    for i in 0..p.names.len() {
        let shape = p.kinds[i].torch_shape(b.len(&p.data[i]));
        bufs.push((p.names[i].clone(), shape, torch(i, &p.data[i])));
    }
    if let Some((adam, trained)) = opt {
        for (k, &i) in trained.iter().enumerate() {
            let shape = p.kinds[i].torch_shape(b.len(&p.data[i]));
            bufs.push((format!("adam.m.{}", p.names[i]), shape.clone(), torch(i, &adam.m[k])));
            bufs.push((format!("adam.v.{}", p.names[i]), shape, torch(i, &adam.v[k])));
        }
        meta.insert("adam.step".into(), adam.step.to_string());
        meta.insert("adam.config".into(), serde_json::to_string(&adam.cfg).unwrap());
        meta.insert(
            "adam.tensors".into(),
            serde_json::to_string(&trained.iter().map(|&i| &p.names[i]).collect::<Vec<_>>()).unwrap(),
        );
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("sizes agree")))
        .collect();
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::format(path, "safetensors", e.to_string()))?;
    let bytes = canonical_header(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    atomic_write(path, &bytes)
}

/// The same file with its JSON header's keys sorted (the metadata map's order is random per
/// process), so equal models give byte-identical files. Offsets are relative to the data.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote JSON");
    // serde_json's map is ordered by key
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + h.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Read parameters into `p` (every tensor of `p` must be present with its shape) and, when
/// asked, the optimiser state (for tensors `trained`, in order). Returns the metadata.
pub fn load<B: Backend>(
    b: &B,
    path: &Path,
    p: &mut Params<B::Buf>,
    opt: Option<(&mut Adam<B::Buf>, &[usize])>,
) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, "safetensors", e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, "safetensors", e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |name: &str, kind: &Kind, len: usize| -> Result<B::Buf> {
        let t = st.tensor(name).map_err(|_| Error::format(path, name, "missing"))?;
        if t.dtype() != Dtype::F32 || t.shape() != kind.torch_shape(len).as_slice() {
            return Err(Error::format(
                path,
                name,
                format!("{:?} {:?}, expected F32 {:?}", t.dtype(), t.shape(), kind.torch_shape(len)),
            ));
        }
        Ok(b.upload(&kind.from_torch(&floats(t.data()))))
    };
    for i in 0..p.names.len() {
        let t = get(&p.names[i], &p.kinds[i], b.len(&p.data[i]))?;
        b.release(std::mem::replace(&mut p.data[i], t));
    }
    if let Some((adam, trained)) = opt {
        let step = meta.get("adam.step").ok_or_else(|| Error::format(path, "adam.step", "missing"))?;
        adam.step = step.parse().map_err(|_| Error::format(path, "adam.step", step.clone()))?;
        for (k, &i) in trained.iter().enumerate() {
            let len = b.len(&p.data[i]);
            let m = get(&format!("adam.m.{}", p.names[i]), &p.kinds[i], len)?;
            b.release(std::mem::replace(&mut adam.m[k], m));
            let v = get(&format!("adam.v.{}", p.names[i]), &p.kinds[i], len)?;
            b.release(std::mem::replace(&mut adam.v[k], v));
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::unet::UNet;
    use crate::optim::AdamConfig;

    #[test]
    fn round_trip_is_bit_exact_and_names_follow_the_reference() {
        let (_, mut p) = UNet::new(3, 5);
        for (i, g) in p.grads.iter_mut().enumerate() {
            g.iter_mut().enumerate().for_each(|(j, v)| *v = ((i * 31 + j) % 17) as f32 * 1e-3 - 0.008);
        }
        let trained: Vec<usize> = (0..p.names.len()).collect();
        let mut adam = Adam::new(
            AdamConfig { weight_decay: 1e-5, ..Default::default() },
            &p.data.iter().map(|d| d.len()).collect::<Vec<_>>(),
        );
        let cpu = crate::backend::Cpu::new();
        p.adam_step(&cpu, &mut adam, &trained, &vec![1e-3; trained.len()]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models/m.safetensors");
        let meta = HashMap::from([("iteration".to_string(), "1".to_string())]);
        save(&cpu, &path, &p, Some((&adam, &trained)), meta).unwrap();
        let (_, mut q) = UNet::new(3, 99);
        let mut adam2 = Adam::new(adam.cfg, &q.data.iter().map(|d| d.len()).collect::<Vec<_>>());
        let meta = load(&cpu, &path, &mut q, Some((&mut adam2, &trained))).unwrap();
        assert_eq!(meta["iteration"], "1");
        assert_eq!(q.data, p.data);
        assert_eq!((adam2.step, &adam2.m, &adam2.v), (adam.step, &adam.m, &adam.v));
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("down_path.2.conv_1.weight").unwrap().shape(), &[128, 64, 3, 3]);
        assert_eq!(st.tensor("up_path.0.up.weight").unwrap().shape(), &[256, 128, 2, 2]);
        // a truncated file is an error naming it, not a panic
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(&cpu, &path, &mut q, None).unwrap_err().to_string();
        assert!(err.contains("m.safetensors"), "{err}");
    }
}
