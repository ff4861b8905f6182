//! Space Ranger spot positions (`tissue_positions_list.csv` v1 without header,
//! `tissue_positions.csv` v2 with header, or `.parquet`) and `scalefactors_json.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::text::{parse_f64, read_table};

#[derive(Debug, Clone, PartialEq)]
pub struct SpotPosition {
    pub barcode: String,
    pub in_tissue: bool,
    pub array_row: i64,
    pub array_col: i64,
    pub pxl_row: f64,
    pub pxl_col: f64,
}

pub const POSITION_COLUMNS: [&str; 6] =
    ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"];

pub fn read_positions(path: &Path) -> Result<Vec<SpotPosition>> {
    if path.extension().is_some_and(|e| e == "parquet") {
        return read_positions_parquet(path);
    }
    let t = read_table(path, None)?;
    // v2 has a header naming the columns; v1 has none and the fixed order.
    let order: Vec<usize> = match &t.header {
        Some(h) => POSITION_COLUMNS
            .iter()
            .map(|c| h.iter().position(|x| x == c).ok_or_else(|| Error::format(path, *c, "column missing from header")))
            .collect::<Result<_>>()?,
        None => (0..6).collect(),
    };
    let mut out = Vec::with_capacity(t.rows.len());
    for (i, r) in t.rows.iter().enumerate() {
        let line = i + 1 + t.header.is_some() as usize;
        if r.len() < 6 {
            return Err(Error::format(path, format!("line {line}"), format!("{} fields, expected 6", r.len())));
        }
        let num = |k: usize| parse_f64(&r[order[k]], path, || format!("line {line}: {}", POSITION_COLUMNS[k]));
        out.push(SpotPosition {
            barcode: r[order[0]].clone(),
            in_tissue: num(1)? != 0.0,
            array_row: num(2)? as i64,
            array_col: num(3)? as i64,
            pxl_row: num(4)?,
            pxl_col: num(5)?,
        });
    }
    Ok(out)
}

fn read_positions_parquet(path: &Path) -> Result<Vec<SpotPosition>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(f).map_err(|e| Error::format(path, "parquet", e.to_string()))?;
    let rows = reader.get_row_iter(None).map_err(|e| Error::format(path, "parquet", e.to_string()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::format(path, format!("row {i}"), e.to_string()))?;
        let mut p = SpotPosition {
            barcode: String::new(),
            in_tissue: false,
            array_row: 0,
            array_col: 0,
            pxl_row: f64::NAN,
            pxl_col: f64::NAN,
        };
        let mut seen = [false; 6];
        for (name, field) in row.get_column_iter() {
            let Some(k) = POSITION_COLUMNS.iter().position(|c| c == name) else {
                continue;
            };
            let num = match field {
                Field::Bool(b) => *b as i64 as f64,
                Field::Byte(v) => *v as f64,
                Field::Short(v) => *v as f64,
                Field::Int(v) => *v as f64,
                Field::Long(v) => *v as f64,
                Field::UByte(v) => *v as f64,
                Field::UShort(v) => *v as f64,
                Field::UInt(v) => *v as f64,
                Field::ULong(v) => *v as f64,
                Field::Float(v) => *v as f64,
                Field::Double(v) => *v,
                Field::Str(s) if k == 0 => {
                    p.barcode = s.clone();
                    seen[0] = true;
                    continue;
                }
                other => {
                    return Err(Error::format(path, format!("row {i}: {name}"), format!("unexpected value {other}")))
                }
            };
            seen[k] = true;
            match k {
                1 => p.in_tissue = num != 0.0,
                2 => p.array_row = num as i64,
                3 => p.array_col = num as i64,
                4 => p.pxl_row = num,
                5 => p.pxl_col = num,
                _ => {}
            }
        }
        if let Some(k) = seen.iter().position(|s| !s) {
            return Err(Error::format(path, POSITION_COLUMNS[k], "column missing"));
        }
        out.push(p);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleFactors {
    pub spot_diameter_fullres: f64,
    #[serde(default)]
    pub fiducial_diameter_fullres: Option<f64>,
    #[serde(default)]
    pub tissue_hires_scalef: Option<f64>,
    #[serde(default)]
    pub tissue_lowres_scalef: Option<f64>,
}

pub fn read_scalefactors(path: &Path) -> Result<ScaleFactors> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(path, "JSON", e.to_string()))?;
    let d = v.get("spot_diameter_fullres").ok_or_else(|| Error::format(path, "spot_diameter_fullres", "missing"))?;
    if !d.is_number() {
        return Err(Error::format(path, "spot_diameter_fullres", format!("expected a number, found {d}")));
    }
    serde_json::from_value(v).map_err(|e| Error::format(path, "JSON", e.to_string()))
}
