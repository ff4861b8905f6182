//! Multi-tensor Adam and gradient unscale (kernels/multi_tensor.cuh): the tensors of a step go
//! to the GPU as lists in a kernel parameter, one launch per list of up to 40 (Adam) or 96
//! (unscale) tensors instead of one per tensor. A step of the U-Net has some seventy tensors,
//! and each per-tensor launch cost more than its work (0.4 ms of launches per pass).

use cudarc::driver::DeviceRepr;

use super::device::{cfg1, Cuda, DBuf, THREADS};
use crate::backend::Backend;
use crate::optim::AdamScalars;

/// Elements a block updates (MT_CHUNK).
pub const CHUNK: usize = 8192;
/// Tensors per Adam list (MT_ADAM).
pub const ADAM_TENSORS: usize = 40;
/// Gradients per unscale list (MT_GRADS).
pub const GRAD_TENSORS: usize = 96;

/// `AdamList` of kernels/multi_tensor.cuh, field for field (tests/conv_ops_host.rs compares
/// the offsets with the C++ compiler's).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AdamList {
    pub p: [u64; ADAM_TENSORS],
    pub g: [u64; ADAM_TENSORS],
    pub m: [u64; ADAM_TENSORS],
    pub v: [u64; ADAM_TENSORS],
    pub n: [i64; ADAM_TENSORS],
    pub s: [[f32; 6]; ADAM_TENSORS],
    pub at: [i32; ADAM_TENSORS],
    pub first: [i32; ADAM_TENSORS + 1],
    pub count: i32,
}

/// `GradList` of kernels/multi_tensor.cuh.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GradList {
    pub g: [u64; GRAD_TENSORS],
    pub n: [i64; GRAD_TENSORS],
    pub first: [i32; GRAD_TENSORS + 1],
    pub count: i32,
}

// SAFETY: plain C layouts of integers, floats and device addresses, passed by value.
unsafe impl DeviceRepr for AdamList {}
unsafe impl DeviceRepr for GradList {}

/// One tensor of an Adam step: device addresses of parameter, gradient and moments, its
/// length, its scalars, and where its scalars lie in a device array (`Backend::adam_at`).
#[derive(Clone, Copy, Debug)]
pub struct AdamTensor {
    pub p: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    pub n: usize,
    pub s: [f32; 6],
    pub at: usize,
}

/// Blocks for `n` elements.
fn blocks(n: usize) -> i32 {
    i32::try_from(n.div_ceil(CHUNK)).expect("a tensor of more than 2^31 chunks")
}

/// The non-empty tensors in lists of up to ADAM_TENSORS, each with its grid.
pub fn adam_lists(tensors: &[AdamTensor]) -> Vec<(AdamList, usize)> {
    let live: Vec<&AdamTensor> = tensors.iter().filter(|t| t.n > 0).collect();
    live.chunks(ADAM_TENSORS)
        .map(|part| {
            let mut l = AdamList {
                p: [0; ADAM_TENSORS],
                g: [0; ADAM_TENSORS],
                m: [0; ADAM_TENSORS],
                v: [0; ADAM_TENSORS],
                n: [0; ADAM_TENSORS],
                s: [[0.0; 6]; ADAM_TENSORS],
                at: [0; ADAM_TENSORS],
                first: [0; ADAM_TENSORS + 1],
                count: part.len() as i32,
            };
            for (j, t) in part.iter().enumerate() {
                (l.p[j], l.g[j], l.m[j], l.v[j], l.n[j], l.s[j]) = (t.p, t.g, t.m, t.v, t.n as i64, t.s);
                l.at[j] = i32::try_from(t.at).expect("tensor index");
                l.first[j + 1] = l.first[j] + blocks(t.n);
            }
            let grid = l.first[part.len()] as usize;
            (l, grid)
        })
        .collect()
}

/// The non-empty gradients (address, length) in lists of up to GRAD_TENSORS, each with its grid.
pub fn grad_lists(grads: &[(u64, usize)]) -> Vec<(GradList, usize)> {
    let live: Vec<&(u64, usize)> = grads.iter().filter(|g| g.1 > 0).collect();
    live.chunks(GRAD_TENSORS)
        .map(|part| {
            let mut l = GradList {
                g: [0; GRAD_TENSORS],
                n: [0; GRAD_TENSORS],
                first: [0; GRAD_TENSORS + 1],
                count: part.len() as i32,
            };
            for (j, &&(g, n)) in part.iter().enumerate() {
                (l.g[j], l.n[j]) = (g, n as i64);
                l.first[j + 1] = l.first[j] + blocks(n);
            }
            let grid = l.first[part.len()] as usize;
            (l, grid)
        })
        .collect()
}

impl Cuda {
    /// Adam on each tensor: scalars from the list, or from `dev` (6 per tensor at its `at`)
    /// with the step skipped where `skip` is set.
    pub(super) fn adam_multi(&self, tensors: &[AdamTensor], dev: u64, skip: u64) {
        for (list, grid) in adam_lists(tensors) {
            launch!(self, "adam_multi_f32", cfg1(grid, THREADS), list, dev, skip);
        }
    }

    /// Every gradient times `inv_scale`; the u32 at `flag` set where a result is inf or NaN
    /// (not cleared here).
    pub(super) fn unscale_multi(&self, grads: &[DBuf], inv_scale: f32, flag: u64) {
        let all: Vec<(u64, usize)> = grads.iter().map(|g| (self.ptr(g), self.len(g))).collect();
        for (list, grid) in grad_lists(&all) {
            launch!(self, "unscale_multi_f32", cfg1(grid, THREADS), list, inv_scale, flag);
        }
    }

    /// `AdamTensor`s for tensors `tensors` of `params`/`grads` with moments `m[k]`, `v[k]`.
    pub(super) fn adam_tensors(
        &self,
        params: &[DBuf],
        grads: &[DBuf],
        m: &[DBuf],
        v: &[DBuf],
        tensors: &[usize],
        scalars: Option<&[AdamScalars]>,
    ) -> Vec<AdamTensor> {
        tensors
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let n = self.len(&params[i]);
                let same = [&grads[i], &m[k], &v[k]].iter().all(|b| self.len(b) == n);
                assert!(same, "Adam: tensor {i}'s buffers differ in length");
                AdamTensor {
                    p: self.ptr(&params[i]),
                    g: self.ptr(&grads[i]),
                    m: self.ptr(&m[k]),
                    v: self.ptr(&v[k]),
                    n,
                    s: scalars.map_or([0.0; 6], |s| s[k].to_array()),
                    at: k,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(n: usize, at: usize) -> AdamTensor {
        AdamTensor { p: 1000 + at as u64, g: 2000, m: 3000, v: 4000, n, s: [at as f32; 6], at }
    }

    /// Lists take the non-empty tensors in order, ADAM_TENSORS at most, each tensor
    /// ⌈n / CHUNK⌉ blocks from the running count; the grid is the last count.
    #[test]
    fn tensors_fill_lists_in_order_with_running_block_counts() {
        let sizes: Vec<usize> = (0..90).map(|k| if k % 10 == 3 { 0 } else { 1 + k * 3001 }).collect();
        let ts: Vec<AdamTensor> = sizes.iter().enumerate().map(|(k, &n)| tensor(n, k)).collect();
        let lists = adam_lists(&ts);
        let live: Vec<usize> = (0..90).filter(|k| k % 10 != 3).collect();
        assert_eq!(lists.len(), live.len().div_ceil(ADAM_TENSORS));
        let mut seen = Vec::new();
        for (l, grid) in &lists {
            let mut first = 0;
            for j in 0..l.count as usize {
                let k = l.at[j] as usize;
                seen.push(k);
                assert_eq!((l.p[j], l.n[j] as usize, l.s[j][0]), (1000 + k as u64, sizes[k], k as f32));
                assert_eq!(l.first[j], first);
                first += sizes[k].div_ceil(CHUNK) as i32;
            }
            assert_eq!(l.first[l.count as usize], first);
            assert_eq!(*grid, first as usize);
        }
        assert_eq!(seen, live);
        assert!(adam_lists(&[tensor(0, 0)]).is_empty(), "nothing to launch for empty tensors");

        let grads: Vec<(u64, usize)> =
            (0..200).map(|k| (k as u64, if k == 7 { 0 } else { CHUNK * (k % 3) + 1 })).collect();
        let lists = grad_lists(&grads);
        assert_eq!(lists.iter().map(|(l, _)| l.count).collect::<Vec<_>>(), vec![96, 96, 7]);
        assert_eq!(lists[0].0.g[7], 8, "the empty gradient is left out");
        assert_eq!(lists[2].1, lists[2].0.first[7] as usize);
        assert_eq!(lists[0].0.first[2] - lists[0].0.first[1], 2, "CHUNK + 1 values: two blocks");
    }
}
