//! `.npy` files, written atomically (temporary sibling, then rename).

use std::io::BufWriter;
use std::path::Path;

use npyz::WriterBuilder;

use crate::error::{Error, Result};
use crate::util::write_atomically;

pub fn write_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: impl IntoIterator<Item = T>,
) -> Result<()> {
    write_atomically(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(BufWriter::with_capacity(1 << 20, f))
            .begin_nd()
            .map_err(|e| Error::io(tmp, e))?;
        w.extend(data).map_err(|e| Error::io(tmp, e))?;
        w.finish().map_err(|e| Error::io(tmp, e))
    })
}

pub fn read_npy<T: npyz::Deserialize>(path: &Path) -> Result<(Vec<u64>, Vec<T>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| Error::format(path, "npy header", e.to_string()))?;
    let shape = npy.shape().to_vec();
    let v = npy.into_vec().map_err(|e| Error::format(path, "npy data", e.to_string()))?;
    Ok((shape, v))
}
