//! The Matrix Market folder of Space Ranger (`filtered_feature_bc_matrix/`):
//! `matrix.mtx[.gz]` (genes × barcodes, 1-based coordinates), `barcodes.tsv[.gz]`,
//! `features.tsv[.gz]` (or `genes.tsv` from older versions).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::h5::TenxMatrix;
use crate::io::sparse::Csr;
use crate::io::text::open_text;

/// The first of `names` (each tried plain and gzipped) that exists in `dir`.
pub fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().flat_map(|n| [dir.join(n), dir.join(format!("{n}.gz"))]).find(|p| p.is_file())
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let r = open_text(path)?;
    r.lines()
        .map(|l| l.map_err(|e| Error::format(path, "content", format!("cannot read ({e})"))))
        .filter(|l| !matches!(l, Ok(s) if s.trim().is_empty()))
        .collect()
}

pub fn read_mtx_dir(dir: &Path) -> Result<TenxMatrix> {
    let missing = |what: &str| {
        Error::io(dir.join(what), std::io::Error::new(std::io::ErrorKind::NotFound, "no such file (also tried .gz)"))
    };
    let mtx = find_file(dir, &["matrix.mtx"]).ok_or_else(|| missing("matrix.mtx"))?;
    let bc = find_file(dir, &["barcodes.tsv"]).ok_or_else(|| missing("barcodes.tsv"))?;
    let feat = find_file(dir, &["features.tsv", "genes.tsv"]).ok_or_else(|| missing("features.tsv"))?;
    let barcodes: Vec<String> =
        read_lines(&bc)?.into_iter().map(|l| l.split('\t').next().unwrap_or("").to_string()).collect();
    let mut gene_ids = Vec::new();
    let mut gene_names = Vec::new();
    for (i, l) in read_lines(&feat)?.into_iter().enumerate() {
        let mut it = l.split('\t');
        let id = it.next().unwrap_or("").to_string();
        let name = it.next().map(str::to_string).unwrap_or_else(|| id.clone());
        if id.is_empty() {
            return Err(Error::format(&feat, format!("line {}", i + 1), "empty feature id"));
        }
        gene_ids.push(id);
        gene_names.push(name);
    }
    let counts = read_mtx(&mtx, gene_names.len(), barcodes.len())?;
    Ok(TenxMatrix { barcodes, gene_ids, gene_names, counts })
}

/// Read a coordinate-format Matrix Market file of genes × barcodes into spots × genes CSR.
fn read_mtx(path: &Path, n_genes: usize, n_spots: usize) -> Result<Csr> {
    let r = open_text(path)?;
    let mut lines = r.lines().enumerate();
    let mut size: Option<(usize, usize, usize)> = None;
    let mut triplets: Vec<(u32, u32, f32)> = Vec::new();
    let bad = |line: usize, msg: String| Error::format(path, format!("line {}", line + 1), msg);
    for (i, l) in &mut lines {
        let l = l.map_err(|e| bad(i, format!("cannot read ({e})")))?;
        let t = l.trim();
        if i == 0 && !t.starts_with("%%MatrixMarket") {
            return Err(bad(i, "missing %%MatrixMarket banner".into()));
        }
        if i == 0 && !t.contains("coordinate") {
            return Err(bad(i, "only the coordinate format is supported".into()));
        }
        if t.starts_with('%') || t.is_empty() {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        let nums: Vec<usize> = f
            .iter()
            .map(|s| s.parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(i, format!("bad size line {t:?}")))?;
        if nums.len() != 3 {
            return Err(bad(i, format!("bad size line {t:?}")));
        }
        size = Some((nums[0], nums[1], nums[2]));
        triplets.reserve(nums[2]);
        break;
    }
    let (rows, cols, nnz) = size.ok_or_else(|| Error::format(path, "size line", "missing"))?;
    if rows != n_genes || cols != n_spots {
        return Err(Error::format(
            path,
            "size line",
            format!("matrix is {rows} × {cols} but there are {n_genes} features and {n_spots} barcodes"),
        ));
    }
    for (i, l) in lines {
        let l = l.map_err(|e| bad(i, format!("cannot read ({e})")))?;
        let mut it = l.split_whitespace();
        let (Some(a), Some(b), Some(c)) = (it.next(), it.next(), it.next()) else {
            if l.trim().is_empty() {
                continue;
            }
            return Err(bad(i, format!("expected 'row col value', found {l:?}")));
        };
        let g: usize = a.parse().map_err(|_| bad(i, format!("bad row {a:?}")))?;
        let s: usize = b.parse().map_err(|_| bad(i, format!("bad column {b:?}")))?;
        let v: f32 = c.parse().map_err(|_| bad(i, format!("bad value {c:?}")))?;
        if g == 0 || g > rows || s == 0 || s > cols {
            return Err(bad(i, format!("entry ({g}, {s}) outside {rows} × {cols}")));
        }
        triplets.push(((s - 1) as u32, (g - 1) as u32, v));
    }
    if triplets.len() != nnz {
        return Err(Error::format(
            path,
            "entries",
            format!("{} entries but the size line promises {nnz} (truncated?)", triplets.len()),
        ));
    }
    triplets.sort_unstable_by_key(|t| (t.0, t.1));
    let mut m = Csr::empty(n_spots, n_genes);
    for &(s, g, v) in &triplets {
        m.indices.push(g);
        m.data.push(v);
        m.indptr[s as usize + 1] += 1;
    }
    for i in 0..n_spots {
        m.indptr[i + 1] += m.indptr[i];
    }
    Ok(m)
}
