//! Text inputs: plain or gzip (detected by magic bytes, not by name), CSV or TSV.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// Open a text file, transparently decompressing gzip.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(f))))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

/// Guess the delimiter from the first line: tab if it has more tabs than commas.
pub fn sniff_delimiter(first_line: &str) -> u8 {
    let tabs = first_line.matches('\t').count();
    let commas = first_line.matches(',').count();
    if tabs > commas {
        b'\t'
    } else {
        b','
    }
}

/// A delimited table read fully as strings: header (if any) and records.
pub struct Table {
    pub header: Option<Vec<String>>,
    pub rows: Vec<Vec<String>>,
}

/// Read a delimited table. `has_header`: None = guess (first row has a non-numeric field
/// beyond the first column).
pub fn read_table(path: &Path, has_header: Option<bool>) -> Result<Table> {
    let mut r = open_text(path)?;
    let mut text = String::new();
    r.read_to_string(&mut text).map_err(|e| Error::format(path, "content", format!("cannot read ({e})")))?;
    let first = text.lines().next().unwrap_or("");
    let delim = sniff_delimiter(first);
    let mut rdr =
        csv::ReaderBuilder::new().delimiter(delim).has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| Error::format(path, format!("line {}", i + 1), e.to_string()))?;
        rows.push(rec.iter().map(|s| s.trim().to_string()).collect::<Vec<_>>());
    }
    let is_header = has_header.unwrap_or_else(|| {
        rows.first().map(|r| r.iter().skip(1).any(|f| !f.is_empty() && f.parse::<f64>().is_err())).unwrap_or(false)
    });
    let header = if is_header && !rows.is_empty() { Some(rows.remove(0)) } else { None };
    Ok(Table { header, rows })
}

pub fn parse_f64(s: &str, path: &Path, field: impl FnOnce() -> String) -> Result<f64> {
    s.trim().parse::<f64>().map_err(|_| Error::format(path, field(), format!("{s:?} is not a number")))
}
