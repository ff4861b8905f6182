//! The Voronoi score of a crop on the GPU (`stages::voronoi::vd_score`'s semantics): per
//! component, nearest-spot fill, up to ten separable box-blur passes until the mean change
//! falls under the threshold, rescale to the input mean, mask. The crop's nearest-spot map and
//! mask stay on the device; three planes (two ping-pong buffers and the row sums) are reused
//! across components, and each finished component comes back as one plane.

use super::device::{cfg_elems, Cuda};
use crate::backend::Backend;
use crate::preprocess::morphology::Mask;
use crate::stages::voronoi::VdComponent;

/// R planes (H × W each) and the per-component summary, as `vd_score` + `VdJob::run` give.
pub fn vd_score_cuda(
    g: &Cuda,
    scores: &[f32],
    r: usize,
    nearest: &[u32],
    mask: &Mask,
    k: usize,
    threshold: f32,
) -> (Vec<Vec<f32>>, Vec<VdComponent>) {
    let (h, w) = (mask.height, mask.width);
    let n = h * w;
    assert_eq!(nearest.len(), n, "VD: the nearest-spot map is H × W");
    let bytes: Vec<u8> = (0..n).map(|i| mask.get(i / w, i % w) as u8).collect();
    let (near, mk, sc) = (g.upload_raw(nearest), g.upload_raw(&bytes), g.upload(scores));
    let (mut cur, mut next, out) = (g.alloc(n), g.alloc(n), g.alloc(n));
    let hs = g.upload_raw(&vec![0f64; n]);
    let stats = g.upload_raw(&[0f64; 2]);
    let (nearp, mkp, scp, hsp, st) = (g.raw(&near), g.raw(&mk), g.ptr(&sc), g.raw(&hs), g.raw(&stats));
    let cfg = cfg_elems(n);
    let a = (k / 2) as i32;
    let scale = 1.0 / (k * k) as f64;
    let read_stats = || {
        let v = g.dtoh::<f64>(st, 2);
        g.zero_bytes(st, 16);
        (v[0], v[1] as usize)
    };
    g.zero_bytes(st, 16);
    let (mut planes, mut summary) = (Vec::with_capacity(r), Vec::with_capacity(r));
    for t in 0..r {
        launch!(g, "vd_fill_f32", cfg, nearp, n as i64, scp, r as i32, t as i32, g.ptr(&cur), st);
        let (sum_in, n_in) = read_stats();
        if n_in == 0 {
            planes.push(vec![0f32; n]);
            summary.push(VdComponent { passes: 0, mean_in: 0.0, mean_out: 0.0 });
            continue;
        }
        let mean_in = (sum_in / n_in as f64) as f32;
        let mut passes = 0;
        for _ in 0..10 {
            launch!(g, "box_rows_f64", cfg, g.ptr(&cur), h as i64, w as i32, a, hsp);
            launch!(g, "box_cols_f32", cfg, hsp, g.ptr(&cur), h as i64, w as i32, a, scale, g.ptr(&next), st);
            passes += 1;
            std::mem::swap(&mut cur, &mut next);
            let (sum, changed) = read_stats();
            // no changed pixel: numpy's mean of nothing is NaN, which never stops the loop
            if changed > 0 && ((sum / changed as f64) as f32) < threshold {
                break;
            }
        }
        launch!(g, "vd_masked_sum", cfg, nearp, scp, r as i32, t as i32, g.ptr(&cur), n as i64, st);
        let (s, _) = read_stats();
        let mut mean_out = (s / n_in as f64) as f32;
        if mean_out < 0.01 {
            mean_out = mean_in;
        }
        launch!(g, "vd_finish_f32", cfg, g.ptr(&cur), mkp, n as i64, mean_in, mean_out, g.ptr(&out));
        planes.push(g.download(&out));
        summary.push(VdComponent { passes, mean_in, mean_out });
    }
    for b in [cur, next, out, sc] {
        g.release(b);
    }
    (planes, summary)
}
