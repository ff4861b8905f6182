//! Compressed sparse row matrix: spots × genes counts stay sparse from reading on.

#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub data: Vec<f32>,
}

impl Csr {
    pub fn empty(rows: usize, cols: usize) -> Self {
        Csr { rows, cols, indptr: vec![0; rows + 1], indices: Vec::new(), data: Vec::new() }
    }

    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// Build from a dense row-major array, dropping exact zeros.
    pub fn from_dense(rows: usize, cols: usize, dense: &[f32]) -> Self {
        let mut m = Csr::empty(rows, cols);
        for r in 0..rows {
            for (c, &v) in dense[r * cols..(r + 1) * cols].iter().enumerate() {
                if v != 0.0 {
                    m.indices.push(c as u32);
                    m.data.push(v);
                }
            }
            m.indptr[r + 1] = m.data.len();
        }
        m
    }

    /// Interpret compressed arrays whose major axis is the other one (CSC of the
    /// same matrix, or CSR of its transpose) and convert them to CSR.
    pub fn from_compressed_minor(rows: usize, cols: usize, col_ptr: &[usize], row_idx: &[u32], vals: &[f32]) -> Self {
        let mut counts = vec![0usize; rows + 1];
        for &r in row_idx {
            counts[r as usize + 1] += 1;
        }
        for i in 0..rows {
            counts[i + 1] += counts[i];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut indices = vec![0u32; vals.len()];
        let mut data = vec![0f32; vals.len()];
        for c in 0..cols {
            for k in col_ptr[c]..col_ptr[c + 1] {
                let r = row_idx[k] as usize;
                let dst = next[r];
                indices[dst] = c as u32;
                data[dst] = vals[k];
                next[r] += 1;
            }
        }
        Csr { rows, cols, indptr, indices, data }
    }

    /// The transposed matrix in CSR form (equivalently this matrix in CSC form).
    pub fn transpose(&self) -> Csr {
        Csr::from_compressed_minor(self.cols, self.rows, &self.indptr, &self.indices, &self.data)
    }

    /// Keep the given rows, in the given order.
    pub fn select_rows(&self, rows: &[usize]) -> Csr {
        let mut m = Csr::empty(rows.len(), self.cols);
        for (i, &r) in rows.iter().enumerate() {
            let (idx, val) = self.row(r);
            m.indices.extend_from_slice(idx);
            m.data.extend_from_slice(val);
            m.indptr[i + 1] = m.data.len();
        }
        m
    }

    /// The columns `cols` in that order; `None` makes an all-zero column.
    pub fn select_cols(&self, cols: &[Option<usize>]) -> Csr {
        let mut map = vec![u32::MAX; self.cols];
        for (new, old) in cols.iter().enumerate() {
            if let Some(old) = old {
                map[*old] = new as u32;
            }
        }
        let mut m = Csr::empty(self.rows, cols.len());
        let mut row: Vec<(u32, f32)> = Vec::new();
        for r in 0..self.rows {
            let (idx, val) = self.row(r);
            row.clear();
            row.extend(
                idx.iter().zip(val).filter(|(j, _)| map[**j as usize] != u32::MAX).map(|(j, v)| (map[*j as usize], *v)),
            );
            row.sort_unstable_by_key(|e| e.0);
            for &(j, v) in &row {
                m.indices.push(j);
                m.data.push(v);
            }
            m.indptr[r + 1] = m.data.len();
        }
        m
    }

    /// Rows of `parts` one after the other (same column count).
    pub fn vstack(parts: &[Csr]) -> Csr {
        let cols = parts.first().map_or(0, |p| p.cols);
        let mut m = Csr { rows: 0, cols, indptr: vec![0], indices: Vec::new(), data: Vec::new() };
        for p in parts {
            assert_eq!(p.cols, cols);
            let base = m.data.len();
            m.indices.extend_from_slice(&p.indices);
            m.data.extend_from_slice(&p.data);
            m.indptr.extend(p.indptr[1..].iter().map(|&v| v + base));
            m.rows += p.rows;
        }
        m
    }

    pub fn to_dense(&self) -> Vec<f32> {
        let mut d = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            let (idx, val) = self.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                d[r * self.cols + c as usize] = v;
            }
        }
        d
    }

    pub fn max_value(&self) -> f32 {
        self.data.iter().copied().fold(0.0, f32::max)
    }

    /// Check structural invariants; `what` names the source in the message.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.indptr.len() != self.rows + 1 {
            return Err(format!("indptr has {} entries, expected {}", self.indptr.len(), self.rows + 1));
        }
        if self.indptr[0] != 0 || *self.indptr.last().unwrap() != self.data.len() {
            return Err("indptr does not span the data".into());
        }
        if self.indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err("indptr is not monotone".into());
        }
        if self.indices.len() != self.data.len() {
            return Err("indices and data differ in length".into());
        }
        if let Some(&c) = self.indices.iter().find(|&&c| c as usize >= self.cols) {
            return Err(format!("index {c} out of range for {} columns", self.cols));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_roundtrip_and_dense() {
        let dense = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0, 5.0, 0.0];
        let m = Csr::from_dense(3, 3, &dense);
        assert_eq!(m.to_dense(), dense);
        let t = m.transpose();
        assert_eq!(t.to_dense(), vec![1.0, 0.0, 4.0, 0.0, 0.0, 5.0, 2.0, 3.0, 0.0]);
        assert_eq!(t.transpose(), m);
        assert_eq!(m.select_rows(&[2, 0]).to_dense(), vec![4.0, 5.0, 0.0, 1.0, 0.0, 2.0]);
        assert!(m.validate().is_ok());
        let c = m.select_cols(&[Some(2), None, Some(0)]);
        assert_eq!(c.to_dense(), vec![2.0, 0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0]);
        assert!(c.validate().is_ok());
    }
}
