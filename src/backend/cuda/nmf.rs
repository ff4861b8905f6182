//! `stages::nmf::nmf` on the GPU: the same NNDSVD start (computed on the CPU), the same
//! dense-or-sparse choice of operand, the same coordinate-descent sweeps and stopping rule,
//! with X, its transpose and both factors resident on the device. One f64 (the violation) is
//! read back per iteration for the stopping test.

use cudarc::driver::CudaSlice;

use super::device::{cfg1, cfg_elems, gemm_grid, Cuda, DBuf, DevCsr, THREADS};
use crate::backend::Backend;
use crate::io::sparse::Csr;
use crate::linalg::transpose;
use crate::stages::nmf::{nndsvd, Factors, NmfSettings};

enum Operand {
    /// X and Xᵀ dense f32 (a quarter or more non-zero), products in f32 as the reference's BLAS
    Dense { x: DBuf, xt: DBuf },
    /// X and Xᵀ in CSR, products in f64
    Sparse { x: Box<DevCsr>, xt: Box<DevCsr> },
}

struct Nmf<'a> {
    g: &'a Cuda,
    r: usize,
    op: Operand,
    m32: DBuf,
    prod32: DBuf,
    prod: CudaSlice<f64>,
    gram: CudaSlice<f64>,
    viol: CudaSlice<f64>,
}

impl Nmf<'_> {
    /// prod (rows × r) = X · M (`transposed`: Xᵀ · M) for M (cols × r, f64 on the device);
    /// returns which product buffer holds it: (f64 pointer, f32 pointer), one of them 0.
    fn times(&self, transposed: bool, m: u64, rows: usize, cols: usize) -> (u64, u64) {
        let (g, r) = (self.g, self.r);
        match &self.op {
            Operand::Dense { x, xt } => {
                let a = if transposed { xt } else { x };
                let m32 = g.ptr(&self.m32);
                launch!(g, "f64_to_f32", cfg_elems(cols * r), m, (cols * r) as i64, m32);
                let c = g.ptr(&self.prod32);
                let splits = g.splits(rows.div_ceil(64) * r.div_ceil(64), cols);
                if splits > 1 {
                    g.zero_bytes(c, rows * r * 4);
                }
                launch!(
                    g,
                    "dense_f32",
                    gemm_grid(rows, r, splits),
                    g.ptr(a),
                    cols as i64,
                    1i64,
                    m32,
                    r as i64,
                    1i64,
                    0u64,
                    c,
                    r as i32,
                    rows as i64,
                    r as i32,
                    cols as i64,
                    (splits > 1) as i32
                );
                (0, c)
            }
            Operand::Sparse { x, xt } => {
                let a = if transposed { xt } else { x };
                let y = g.raw(&self.prod);
                let cfg = cfg1((a.rows * 32).div_ceil(THREADS as usize), THREADS);
                launch!(
                    g,
                    "spmm_f64",
                    cfg,
                    g.raw(&a.indptr),
                    g.raw(&a.indices),
                    g.raw(&a.data),
                    a.rows as i64,
                    r as i32,
                    m,
                    y
                );
                (y, 0)
            }
        }
    }

    /// One sweep over the rows of `a` (rows × r) against the product just formed and the Gram
    /// matrix of `b` (brows × r); adds to the violation.
    fn sweep(&self, a: u64, rows: usize, prod: (u64, u64), b: u64, brows: usize) {
        let (g, r) = (self.g, self.r);
        let gram = g.raw(&self.gram);
        launch!(g, "gram_f64", cfg1(r * r, THREADS), b, brows as i64, r as i32, gram);
        let mut cfg = cfg1(rows.div_ceil(THREADS as usize), THREADS);
        cfg.shared_mem_bytes = (r * r * 8) as u32;
        launch!(g, "cd_sweep_f64", cfg, a, rows as i64, r as i32, prod.0, prod.1, gram, g.raw(&self.viol));
    }
}

/// Factorise X (spots × genes) on the GPU.
pub fn nmf_cuda(g: &Cuda, x: &Csr, s: &NmfSettings) -> Factors {
    let r = s.rank.min(x.rows).min(x.cols).max(1);
    let xt = x.transpose();
    let (w, h) = nndsvd(x, &xt, r, s.seed);
    let op = if x.nnz() * 4 >= x.rows * x.cols {
        let d = x.to_dense();
        let t = transpose(&d, x.rows, x.cols);
        Operand::Dense { x: g.upload(&d), xt: g.upload(&t) }
    } else {
        Operand::Sparse { x: Box::new(DevCsr::new(g, x)), xt: Box::new(DevCsr::new(g, &xt)) }
    };
    let big = x.rows.max(x.cols) * r;
    let n = Nmf {
        g,
        r,
        op,
        m32: g.alloc(big),
        prod32: g.alloc(big),
        prod: g.upload_raw(&vec![0f64; big]),
        gram: g.upload_raw(&vec![0f64; r * r]),
        viol: g.upload_raw(&[0f64]),
    };
    let wd = g.upload_raw(&w);
    let htd = g.upload_raw(&transpose(&h, r, x.cols));
    let (wp, hp) = (g.raw(&wd), g.raw(&htd));
    let mut first = None;
    let mut iterations = 0;
    for it in 1..=s.max_iter {
        iterations = it;
        g.zero_bytes(g.raw(&n.viol), 8);
        // W step: X Hᵀ and H Hᵀ; H step on the transposed problem: Xᵀ W and Wᵀ W
        let p = n.times(false, hp, x.rows, x.cols);
        n.sweep(wp, x.rows, p, hp, x.cols);
        let p = n.times(true, wp, x.cols, x.rows);
        n.sweep(hp, x.cols, p, wp, x.rows);
        let viol = g.dtoh::<f64>(g.raw(&n.viol), 1)[0];
        let v0 = *first.get_or_insert(viol);
        if v0 == 0.0 || viol / v0 <= s.tol {
            break;
        }
    }
    let w = g.dtoh::<f64>(wp, x.rows * r);
    let ht = g.dtoh::<f64>(hp, x.cols * r);
    Factors { rank: r, w, h: transpose(&ht, x.cols, r), iterations }
}
