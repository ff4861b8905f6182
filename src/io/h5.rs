//! HDF5 readers and writers: 10x Genomics feature-barcode matrices (v3 layout) and AnnData.
//!
//! Both layouts appear in the wild with fixed-length and variable-length strings and with
//! integer or float data; everything is converted to `Csr<f32>` and `Vec<String>` here.

use std::path::Path;

use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};

use crate::error::{Error, Result};
use crate::io::sparse::Csr;

pub(crate) fn open(path: &Path) -> Result<hdf5::File> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    hdf5::File::open(path).map_err(|e| Error::format(path, "HDF5", format!("not a readable HDF5 file ({e})")))
}

fn dataset(g: &hdf5::Group, path: &Path, name: &str) -> Result<hdf5::Dataset> {
    g.dataset(name).map_err(|_| Error::format(path, full_name(g, name), "dataset missing"))
}

fn full_name(g: &hdf5::Group, name: &str) -> String {
    let base = g.name();
    if base == "/" {
        format!("/{name}")
    } else {
        format!("{base}/{name}")
    }
}

pub(crate) fn read_numbers<T: hdf5::H5Type>(ds: &hdf5::Dataset, path: &Path) -> Result<Vec<T>> {
    ds.read_raw::<T>().map_err(|e| Error::format(path, ds.name(), format!("cannot read ({e})")))
}

macro_rules! read_fixed {
    ($ds:expr, $n:expr, $ty:ident, $($cap:literal),+) => {{
        $( if $n <= $cap {
            $ds.read_raw::<$ty<$cap>>().map(|v| v.iter().map(|s| s.as_str().to_string()).collect::<Vec<_>>())
        } else )+ {
            return Err(hdf5::Error::from(format!("strings of {} bytes are too long", $n)));
        }
    }};
}

/// Read a 1-d string dataset, whatever its string flavour.
pub(crate) fn read_strings(ds: &hdf5::Dataset, path: &Path) -> Result<Vec<String>> {
    let inner = || -> hdf5::Result<Vec<String>> {
        let desc = ds.dtype()?.to_descriptor()?;
        match desc {
            TypeDescriptor::VarLenUnicode => {
                Ok(ds.read_raw::<VarLenUnicode>()?.iter().map(|s| s.to_string()).collect())
            }
            TypeDescriptor::VarLenAscii => Ok(ds.read_raw::<VarLenAscii>()?.iter().map(|s| s.to_string()).collect()),
            TypeDescriptor::FixedAscii(n) => read_fixed!(ds, n, FixedAscii, 16, 32, 64, 256, 1024),
            TypeDescriptor::FixedUnicode(n) => {
                read_fixed!(ds, n, FixedUnicode, 16, 32, 64, 256, 1024)
            }
            other => Err(hdf5::Error::from(format!("expected strings, found {other}"))),
        }
    };
    inner().map_err(|e| Error::format(path, ds.name(), e.to_string()))
}

fn read_shape(g: &hdf5::Group, path: &Path) -> Result<(usize, usize)> {
    let shape: Vec<i64> = read_numbers(&dataset(g, path, "shape")?, path)?;
    if shape.len() != 2 || shape.iter().any(|&v| v < 0) {
        return Err(Error::format(
            path,
            full_name(g, "shape"),
            format!("expected two non-negative values, found {shape:?}"),
        ));
    }
    Ok((shape[0] as usize, shape[1] as usize))
}

/// Compressed arrays (data, indices, indptr) of a sparse matrix group, checked.
struct Compressed {
    data: Vec<f32>,
    indices: Vec<u32>,
    indptr: Vec<usize>,
}

fn read_compressed(g: &hdf5::Group, path: &Path, major: usize, minor: usize) -> Result<Compressed> {
    let data: Vec<f32> = read_numbers(&dataset(g, path, "data")?, path)?;
    let indices: Vec<i64> = read_numbers(&dataset(g, path, "indices")?, path)?;
    let indptr: Vec<i64> = read_numbers(&dataset(g, path, "indptr")?, path)?;
    let field = |n: &str| full_name(g, n);
    if indptr.len() != major + 1 {
        return Err(Error::format(
            path,
            field("indptr"),
            format!("has {} entries, expected {}", indptr.len(), major + 1),
        ));
    }
    if indices.len() != data.len() {
        return Err(Error::format(
            path,
            field("indices"),
            format!("has {} entries but data has {}", indices.len(), data.len()),
        ));
    }
    if indptr[0] != 0 || *indptr.last().unwrap() as usize != data.len() || indptr.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::format(path, field("indptr"), "is not a monotone pointer array over data"));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i < 0 || i as usize >= minor) {
        return Err(Error::format(path, field("indices"), format!("index {bad} out of range 0..{minor}")));
    }
    Ok(Compressed {
        data,
        indices: indices.into_iter().map(|i| i as u32).collect(),
        indptr: indptr.into_iter().map(|i| i as usize).collect(),
    })
}

/// Counts read from a 10x `filtered_feature_bc_matrix.h5`.
#[derive(Debug, Clone)]
pub struct TenxMatrix {
    pub barcodes: Vec<String>,
    pub gene_ids: Vec<String>,
    pub gene_names: Vec<String>,
    /// spots × genes
    pub counts: Csr,
}

/// Read a 10x HDF5 matrix (v3: `matrix/features/...`; v2: `<genome>/genes`, `gene_names`).
pub fn read_10x_h5(path: &Path) -> Result<TenxMatrix> {
    let f = open(path)?;
    let g = match f.group("matrix") {
        Ok(g) => g,
        Err(_) => {
            // v2 layout: a single group named after the genome.
            let names = f.member_names().map_err(|e| Error::format(path, "/", e.to_string()))?;
            let first = names.first().ok_or_else(|| Error::format(path, "/matrix", "group missing (file is empty)"))?;
            f.group(first).map_err(|e| Error::format(path, format!("/{first}"), e.to_string()))?
        }
    };
    let (n_genes, n_spots) = read_shape(&g, path)?;
    let barcodes = read_strings(&dataset(&g, path, "barcodes")?, path)?;
    let (gene_ids, gene_names) = if g.link_exists("features") {
        let fg = g.group("features").map_err(|e| Error::format(path, full_name(&g, "features"), e.to_string()))?;
        (read_strings(&dataset(&fg, path, "id")?, path)?, read_strings(&dataset(&fg, path, "name")?, path)?)
    } else {
        (read_strings(&dataset(&g, path, "genes")?, path)?, read_strings(&dataset(&g, path, "gene_names")?, path)?)
    };
    if barcodes.len() != n_spots {
        return Err(Error::format(
            path,
            full_name(&g, "barcodes"),
            format!("{} barcodes but shape says {n_spots} columns", barcodes.len()),
        ));
    }
    if gene_names.len() != n_genes || gene_ids.len() != n_genes {
        return Err(Error::format(
            path,
            full_name(&g, "features/name"),
            format!("{} features but shape says {n_genes} rows", gene_names.len()),
        ));
    }
    // Stored as CSC of genes × spots, i.e. CSR of spots × genes with pointers per barcode.
    let c = read_compressed(&g, path, n_spots, n_genes)?;
    let counts = Csr { rows: n_spots, cols: n_genes, indptr: c.indptr, indices: c.indices, data: c.data };
    Ok(TenxMatrix { barcodes, gene_ids, gene_names, counts })
}

fn h5err<'a>(path: &'a Path, field: &str) -> impl Fn(hdf5::Error) -> Error + 'a {
    let field = field.to_string();
    move |e| Error::format(path, field.clone(), format!("cannot write ({e})"))
}

fn write_strings(g: &hdf5::Group, name: &str, values: &[String], path: &Path) -> Result<()> {
    let width = values.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    macro_rules! put {
        ($($cap:literal),+) => {{
            $( if width <= $cap {
                let v: Vec<FixedAscii<$cap>> = values
                    .iter()
                    .map(|s| FixedAscii::<$cap>::from_ascii(s.as_bytes()))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::format(path, name, format!("non-ASCII string ({e})")))?;
                g.new_dataset_builder().with_data(&v).create(name).map_err(h5err(path, name))?;
                return Ok(());
            } )+
        }};
    }
    put!(16, 32, 64, 256, 1024);
    Err(Error::format(path, name, "string longer than 1024 bytes"))
}

fn write_attr_str(loc: &hdf5::Location, name: &str, value: &str, path: &Path) -> Result<()> {
    let v: VarLenUnicode = value.parse().map_err(|e| Error::format(path, name, format!("{e}")))?;
    loc.new_attr::<VarLenUnicode>().create(name).and_then(|a| a.write_scalar(&v)).map_err(h5err(path, name))
}

/// Write a 10x HDF5 v3 matrix, as Space Ranger does (integer counts, fixed-length strings).
pub fn write_10x_h5(path: &Path, m: &TenxMatrix, genome: &str) -> Result<()> {
    let f = hdf5::File::create(path).map_err(h5err(path, "/"))?;
    write_attr_str(&f, "filetype", "matrix", path)?;
    write_attr_str(&f, "software_version", concat!("spahdmap-", env!("CARGO_PKG_VERSION")), path)?;
    write_attr_str(&f, "chemistry_description", "Spatial 3' v1", path)?;
    f.new_attr::<i32>().create("version").and_then(|a| a.write_scalar(&2i32)).map_err(h5err(path, "version"))?;
    // scanpy's read_visium takes the library id from here
    let lib = FixedAscii::<64>::from_ascii(genome.as_bytes())
        .map_err(|e| Error::format(path, "library_ids", e.to_string()))?;
    f.new_attr::<FixedAscii<64>>()
        .shape(1)
        .create("library_ids")
        .and_then(|a| a.write(&[lib]))
        .map_err(h5err(path, "library_ids"))?;
    f.new_attr::<i32>()
        .shape(1)
        .create("original_gem_groups")
        .and_then(|a| a.write(&[1i32]))
        .map_err(h5err(path, "original_gem_groups"))?;
    let g = f.create_group("matrix").map_err(h5err(path, "/matrix"))?;
    write_strings(&g, "barcodes", &m.barcodes, path)?;
    let data: Vec<i32> = m.counts.data.iter().map(|&v| v.round() as i32).collect();
    let indices: Vec<i64> = m.counts.indices.iter().map(|&v| v as i64).collect();
    let indptr: Vec<i64> = m.counts.indptr.iter().map(|&v| v as i64).collect();
    let shape = [m.counts.cols as i32, m.counts.rows as i32];
    g.new_dataset_builder().deflate(4).with_data(&data).create("data").map_err(h5err(path, "/matrix/data"))?;
    g.new_dataset_builder().deflate(4).with_data(&indices).create("indices").map_err(h5err(path, "/matrix/indices"))?;
    g.new_dataset_builder().with_data(&indptr).create("indptr").map_err(h5err(path, "/matrix/indptr"))?;
    g.new_dataset_builder().with_data(&shape).create("shape").map_err(h5err(path, "/matrix/shape"))?;
    let fg = g.create_group("features").map_err(h5err(path, "/matrix/features"))?;
    let n = m.gene_names.len();
    write_strings(&fg, "id", &m.gene_ids, path)?;
    write_strings(&fg, "name", &m.gene_names, path)?;
    write_strings(&fg, "feature_type", &vec!["Gene Expression".to_string(); n], path)?;
    write_strings(&fg, "genome", &vec![genome.to_string(); n], path)?;
    write_strings(&fg, "_all_tag_keys", &["genome".to_string()], path)?;
    Ok(())
}

/// What an `.h5ad` file holds that the pipeline needs.
#[derive(Debug, Clone)]
pub struct AnnDataSpots {
    pub obs_names: Vec<String>,
    pub var_names: Vec<String>,
    /// spots × genes
    pub x: Csr,
    /// `obsm['spatial']`, as stored (x, y for Visium).
    pub spatial: Option<Vec<[f64; 2]>>,
    /// `uns['spatial'][lib]['scalefactors']['spot_diameter_fullres']`, if present.
    pub spot_diameter_fullres: Option<f64>,
}

fn attr_string(loc: &hdf5::Location, name: &str) -> Option<String> {
    let a = loc.attr(name).ok()?;
    if let Ok(s) = a.read_scalar::<VarLenUnicode>() {
        return Some(s.to_string());
    }
    if let Ok(s) = a.read_scalar::<VarLenAscii>() {
        return Some(s.to_string());
    }
    None
}

/// The index of an AnnData dataframe group (`obs` / `var`): named by its `_index` attribute.
fn dataframe_index(f: &hdf5::File, group: &str, path: &Path) -> Result<Vec<String>> {
    let g = f.group(group).map_err(|_| Error::format(path, format!("/{group}"), "group missing"))?;
    if let Ok(ds) = g.dataset(group) {
        // very old anndata: a compound dataset; not supported
        let _ = ds;
        return Err(Error::format(
            path,
            format!("/{group}"),
            "legacy compound dataframe layout is not supported; re-save with anndata ≥ 0.7",
        ));
    }
    let index = attr_string(&g, "_index").unwrap_or_else(|| "_index".to_string());
    read_strings(&dataset(&g, path, &index)?, path)
}

/// Read an AnnData `.h5ad`: X dense, CSR or CSC; obs/var names; `obsm['spatial']`.
pub fn read_h5ad(path: &Path) -> Result<AnnDataSpots> {
    let f = open(path)?;
    let obs_names = dataframe_index(&f, "obs", path)?;
    let var_names = dataframe_index(&f, "var", path)?;
    let (n, g) = (obs_names.len(), var_names.len());
    let x = if let Ok(ds) = f.dataset("X") {
        let shape = ds.shape();
        if shape != [n, g] {
            return Err(Error::format(path, "/X", format!("shape {shape:?} does not match {n} obs × {g} var")));
        }
        let dense: Vec<f32> = read_numbers(&ds, path)?;
        Csr::from_dense(n, g, &dense)
    } else if let Ok(xg) = f.group("X") {
        let enc = attr_string(&xg, "encoding-type")
            .or_else(|| attr_string(&xg, "h5sparse_format").map(|s| format!("{s}_matrix")))
            .ok_or_else(|| Error::format(path, "/X", "sparse group without encoding-type attribute"))?;
        match enc.as_str() {
            "csr_matrix" => {
                let c = read_compressed(&xg, path, n, g)?;
                Csr { rows: n, cols: g, indptr: c.indptr, indices: c.indices, data: c.data }
            }
            "csc_matrix" => {
                let c = read_compressed(&xg, path, g, n)?;
                Csr::from_compressed_minor(n, g, &c.indptr, &c.indices, &c.data)
            }
            other => return Err(Error::format(path, "/X", format!("unsupported encoding-type {other:?}"))),
        }
    } else {
        return Err(Error::format(path, "/X", "missing (no expression matrix)"));
    };
    let spatial = match f.dataset("obsm/spatial") {
        Ok(ds) => {
            let shape = ds.shape();
            if shape.len() != 2 || shape[0] != n || shape[1] < 2 {
                return Err(Error::format(path, "/obsm/spatial", format!("shape {shape:?}, expected ({n}, 2)")));
            }
            let v: Vec<f64> = read_numbers(&ds, path)?;
            let w = shape[1];
            Some((0..n).map(|i| [v[i * w], v[i * w + 1]]).collect())
        }
        Err(_) => None,
    };
    let spot_diameter_fullres = f.group("uns/spatial").ok().and_then(|g| {
        let lib = g.member_names().ok()?.into_iter().next()?;
        let ds = g.dataset(&format!("{lib}/scalefactors/spot_diameter_fullres")).ok()?;
        ds.read_scalar::<f64>().ok()
    });
    Ok(AnnDataSpots { obs_names, var_names, x, spatial, spot_diameter_fullres })
}

/// One section's AnnData (`section.h5ad`, readable by anndata/scanpy): X = the preprocessed
/// expression (CSR), obs = spots with integer columns, var = genes, obsm and uns = named
/// row-major f64 matrices.
pub struct AnnDataOut<'a> {
    pub barcodes: &'a [String],
    pub genes: &'a [String],
    pub x: &'a crate::io::sparse::Csr,
    pub obs_int: Vec<(&'a str, Vec<i64>)>,
    /// (name, values, columns)
    pub obsm: Vec<(&'a str, Vec<f64>, usize)>,
    pub uns: Vec<(&'a str, Vec<f64>, usize)>,
}

fn set_encoding(loc: &hdf5::Location, kind: &str, version: &str, path: &Path) -> Result<()> {
    write_attr_str(loc, "encoding-type", kind, path)?;
    write_attr_str(loc, "encoding-version", version, path)
}

fn write_unicode(g: &hdf5::Group, name: &str, values: &[String], path: &Path) -> Result<()> {
    let v: Vec<VarLenUnicode> = values
        .iter()
        .map(|s| s.parse().map_err(|e| Error::format(path, name, format!("{e}"))))
        .collect::<Result<_>>()?;
    let ds = g.new_dataset_builder().with_data(&v).create(name).map_err(h5err(path, name))?;
    set_encoding(&ds, "string-array", "0.2.0", path)
}

fn write_matrix(g: &hdf5::Group, name: &str, v: &[f64], cols: usize, path: &Path) -> Result<()> {
    let rows = v.len() / cols.max(1);
    let ds = g.new_dataset::<f64>().shape((rows, cols)).create(name).map_err(h5err(path, name))?;
    ds.write_raw(v).map_err(h5err(path, name))?;
    set_encoding(&ds, "array", "0.2.0", path)
}

fn dataframe(f: &hdf5::File, name: &str, index: &[String], columns: &[&str], path: &Path) -> Result<hdf5::Group> {
    let g = f.create_group(name).map_err(h5err(path, name))?;
    set_encoding(&g, "dataframe", "0.2.0", path)?;
    write_attr_str(&g, "_index", "_index", path)?;
    if columns.is_empty() {
        g.new_attr::<f64>().shape(0).create("column-order").map_err(h5err(path, "column-order"))?;
    } else {
        let v: Vec<VarLenUnicode> = columns.iter().map(|c| c.parse().unwrap()).collect();
        g.new_attr::<VarLenUnicode>()
            .shape(v.len())
            .create("column-order")
            .and_then(|a| a.write(&v))
            .map_err(h5err(path, "column-order"))?;
    }
    write_unicode(&g, "_index", index, path)?;
    Ok(g)
}

/// Write `a` to `path` atomically.
pub fn write_h5ad(path: &Path, a: &AnnDataOut) -> Result<()> {
    crate::util::write_atomically(path, |tmp| {
        let f = hdf5::File::create(tmp).map_err(h5err(tmp, "/"))?;
        set_encoding(&f, "anndata", "0.1.0", tmp)?;
        let x = f.create_group("X").map_err(h5err(tmp, "X"))?;
        set_encoding(&x, "csr_matrix", "0.1.0", tmp)?;
        x.new_attr::<i64>()
            .shape(2)
            .create("shape")
            .and_then(|at| at.write(&[a.x.rows as i64, a.x.cols as i64]))
            .map_err(h5err(tmp, "X/shape"))?;
        x.new_dataset_builder().deflate(4).with_data(&a.x.data).create("data").map_err(h5err(tmp, "X/data"))?;
        let indices: Vec<i32> = a.x.indices.iter().map(|&v| v as i32).collect();
        x.new_dataset_builder().deflate(4).with_data(&indices).create("indices").map_err(h5err(tmp, "X/indices"))?;
        let indptr: Vec<i64> = a.x.indptr.iter().map(|&v| v as i64).collect();
        x.new_dataset_builder().with_data(&indptr).create("indptr").map_err(h5err(tmp, "X/indptr"))?;
        let cols: Vec<&str> = a.obs_int.iter().map(|c| c.0).collect();
        let obs = dataframe(&f, "obs", a.barcodes, &cols, tmp)?;
        for (name, v) in &a.obs_int {
            let ds = obs.new_dataset_builder().with_data(v).create(*name).map_err(h5err(tmp, name))?;
            set_encoding(&ds, "array", "0.2.0", tmp)?;
        }
        dataframe(&f, "var", a.genes, &[], tmp)?;
        for (group, items) in [("obsm", &a.obsm), ("uns", &a.uns)] {
            let g = f.create_group(group).map_err(h5err(tmp, group))?;
            set_encoding(&g, "dict", "0.1.0", tmp)?;
            for (name, v, c) in items.iter() {
                write_matrix(&g, name, v, *c, tmp)?;
            }
        }
        for group in ["layers", "obsp", "varm", "varp"] {
            let g = f.create_group(group).map_err(h5err(tmp, group))?;
            set_encoding(&g, "dict", "0.1.0", tmp)?;
        }
        Ok(())
    })
}
