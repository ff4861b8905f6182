//! The CUDA backend against the CPU backend, operation by operation and through whole
//! training steps: fresh random inputs, odd sizes, outputs poisoned with NaN before each run,
//! ‖gpu − cpu‖ / ‖cpu‖ < 1e-5 (f32 storage). Skips with a message where there is no GPU.
mod common;

use common::{rel, rnd};
use rand::{Rng, SeedableRng};
use spahdmap::backend::cuda::{Cuda, DBuf, Precision};
use spahdmap::backend::{
    Backend, BlockHead, BlockHeadGrads, BlockTail, ConvSpec, Cpu, Decoder, DxEpilogue, Epilogue, Host, Shape, TailNorm,
    TileSpots,
};
use spahdmap::model::joint::{JointBatch, JointHead, LossWeights};
use spahdmap::model::unet::UNet;
use spahdmap::optim::{Adam, AdamConfig};

fn gpu() -> Option<Cuda> {
    gpu_with(Precision::Exact)
}

/// The speed path as the pipeline gets it: the wide TF32 kernels, or the kernel variant SPAHDMAP_GPU_CONV names
/// (scripts/gpu-check runs the long tests once per variant).
fn speed_gpu() -> Option<Cuda> {
    match spahdmap::backend::Device::Cuda(0).gpu(spahdmap::backend::cuda::SPEED) {
        Ok(g) => g.map(f32_storage_unless_asked),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn gpu_with(p: Precision) -> Option<Cuda> {
    match Cuda::new(0, p) {
        Ok(c) => Some(f32_storage_unless_asked(c)),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// The pipeline keeps activations in f16 by default; these tests hold the backend to f32
/// storage (their bounds are f32's) unless SPAHDMAP_GPU_HALF asks otherwise (scripts/gpu-check's
/// `half` and `halftrain` variants). The f16 tests turn it on themselves.
fn f32_storage_unless_asked(g: Cuda) -> Cuda {
    if std::env::var_os("SPAHDMAP_GPU_HALF").is_none() {
        g.use_half_storage(false);
    }
    g
}

fn nan(g: &Cuda, n: usize) -> DBuf {
    g.upload(&vec![f32::NAN; n])
}

fn check(what: &str, g: &Cuda, got: &DBuf, want: &[f32], tol: f64) {
    let e = rel(&g.download(got), want);
    eprintln!("{what}: relative error {e:.3e}");
    assert!(e < tol, "{what}: relative error {e} ≥ {tol}");
}

#[test]
fn convolutions_and_their_gradients() {
    let Some(g) = gpu() else { return };
    convolutions_within(&g, 1e-5);
}

/// TF32 operands carry 11 significant bits: products are exact to ~2.4e-4 each, sums of
/// hundreds of them land near 1e-3 relative.
#[test]
fn tensor_core_convolutions_within_tf32_rounding() {
    let Some(g) = gpu_with(Precision::Tf32) else { return };
    convolutions_within(&g, 5e-3);
}

/// The pipelined tensor-core kernels (loads one step ahead, double-buffered shared memory,
/// four-wide loads where channel counts divide by 4): the same arithmetic as `Tf32`, so the
/// same bound.
#[test]
fn pipelined_tensor_core_convolutions_within_tf32_rounding() {
    let Some(g) = gpu_with(Precision::Tf32Pipelined) else { return };
    convolutions_within(&g, 5e-3);
    transposed_within(&g, 5e-3);
}

/// The wide pipelined kernels (128 × 64 tiles where channel counts divide by 4, the
/// pipelined 64 × 64 ones elsewhere): the same arithmetic as `Tf32`, so the same bound.
#[test]
fn wide_tensor_core_convolutions_within_tf32_rounding() {
    let Some(g) = gpu_with(Precision::Tf32Wide) else { return };
    convolutions_within(&g, 5e-3);
    transposed_within(&g, 5e-3);
}

/// The wide and narrow tiles on f16 operands (mma.m16n8k16, f32 accumulation and storage):
/// half precision keeps 11 significant bits, as TF32 does, so the same rounding; held to the
/// project's half-precision bound. The layers whose channel counts do not divide by 4 run on
/// the TF32 pipelined kernels, the 3-channel ones on the direct f32 kernels.
#[test]
fn half_precision_tensor_core_convolutions_within_f16_rounding() {
    let Some(g) = gpu_with(Precision::F16Wide) else { return };
    assert!(g.half_operands());
    convolutions_within(&g, 1e-2);
    transposed_within(&g, 1e-2);
    let cases = [
        // the U-Net's shapes: 32-column results (narrow tiles), 64 and more (wide), 4 × 4 / 2
        (Shape { n: 2, h: 24, w: 20, c: 32 }, ConvSpec { cin: 32, cout: 32, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 2, h: 17, w: 15, c: 64 }, ConvSpec { cin: 64, cout: 128, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 2, h: 18, w: 14, c: 32 }, ConvSpec { cin: 32, cout: 64, k: 4, stride: 2, pad: 1 }),
        (Shape { n: 2, h: 13, w: 11, c: 3 }, ConvSpec { cin: 3, cout: 32, k: 3, stride: 1, pad: 1 }),
    ];
    conv_cases_within(&g, &cases, [1e-2, 1e-2]);
}

/// The layers with 3 channels in or out run forward (and their data gradient into ≤ 4
/// channels) on the direct f32 kernels of kernels/conv_small.cuh on the speed path, and their
/// weight gradient on conv_few.cuh's: the U-Net's first layer and its output block at a small
/// size, the 4 × 4 stride-2 shape; f32 bound for the forward, TF32 for the GEMM-run data
/// gradients (and so for all gradients: one bound).
#[test]
fn few_channel_convolutions_run_direct_in_f32() {
    let Some(g) = gpu_with(Precision::Tf32Wide) else { return };
    let cases = [
        (Shape { n: 3, h: 17, w: 19, c: 3 }, ConvSpec { cin: 3, cout: 32, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 3, h: 17, w: 19, c: 32 }, ConvSpec { cin: 32, cout: 3, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 3, h: 17, w: 19, c: 3 }, ConvSpec { cin: 3, cout: 3, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 3, h: 17, w: 19, c: 32 }, ConvSpec { cin: 32, cout: 3, k: 1, stride: 1, pad: 0 }),
        (Shape { n: 2, h: 15, w: 13, c: 6 }, ConvSpec { cin: 6, cout: 7, k: 4, stride: 2, pad: 1 }),
        (Shape { n: 1, h: 12, w: 9, c: 20 }, ConvSpec { cin: 20, cout: 7, k: 4, stride: 2, pad: 1 }),
        // four-wide output stores at 16 channels; the stride-2 data gradient into 3 channels
        (Shape { n: 2, h: 13, w: 11, c: 3 }, ConvSpec { cin: 3, cout: 16, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 2, h: 11, w: 10, c: 3 }, ConvSpec { cin: 3, cout: 7, k: 4, stride: 2, pad: 1 }),
    ];
    conv_cases_within(&g, &cases, [1e-5, 5e-3]);
}

fn convolutions_within(g: &Cuda, tol: f64) {
    let cases = [
        (Shape { n: 2, h: 9, w: 11, c: 5 }, ConvSpec { cin: 5, cout: 7, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 3, h: 10, w: 14, c: 6 }, ConvSpec { cin: 6, cout: 70, k: 4, stride: 2, pad: 1 }),
        (Shape { n: 1, h: 13, w: 7, c: 67 }, ConvSpec { cin: 67, cout: 33, k: 1, stride: 1, pad: 0 }),
        (Shape { n: 2, h: 32, w: 32, c: 32 }, ConvSpec { cin: 32, cout: 64, k: 3, stride: 1, pad: 1 }),
        // the first layer: 3 channels, K = 27 in a single step of the tensor-core kernels
        (Shape { n: 1, h: 5, w: 6, c: 3 }, ConvSpec { cin: 3, cout: 9, k: 3, stride: 1, pad: 1 }),
        // channel counts divisible by 4 (the pipelined kernels' four-wide loads), odd sizes
        (Shape { n: 2, h: 11, w: 9, c: 8 }, ConvSpec { cin: 8, cout: 12, k: 4, stride: 2, pad: 1 }),
        (Shape { n: 1, h: 13, w: 7, c: 68 }, ConvSpec { cin: 68, cout: 36, k: 1, stride: 1, pad: 0 }),
    ];
    conv_cases_within(g, &cases, [tol, tol]);
}

/// Each convolution against the CPU: forward without and with leaky + residual (within
/// `tol[0]`), dX, dW, dB (`tol[1]`).
fn conv_cases_within(g: &Cuda, cases: &[(Shape, ConvSpec)], [tol, grad_tol]: [f64; 2]) {
    let cpu = Cpu::new();
    for (i, (xs, spec)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        let (oh, ow) = spec.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: spec.cout };
        let x = rnd(xs.len(), seed, -1.0, 1.0);
        let w = rnd(spec.weight_len(), seed + 1, -0.5, 0.5);
        let b = rnd(spec.cout, seed + 2, -0.5, 0.5);
        let res = rnd(ys.len(), seed + 3, -1.0, 1.0);
        let dy = rnd(ys.len(), seed + 4, -1.0, 1.0);
        let (gx, gw, gb, gr, gdy) = (g.upload(&x), g.upload(&w), g.upload(&b), g.upload(&res), g.upload(&dy));
        for (leaky, residual) in [(false, false), (true, true)] {
            let mut want = vec![0f32; ys.len()];
            let epi = Epilogue { leaky, residual: residual.then_some(&res) };
            cpu.conv2d(&x, *xs, spec, &w, Some(&b), epi, &mut want);
            let mut got = nan(g, ys.len());
            let epi = Epilogue { leaky, residual: residual.then_some(&gr) };
            g.conv2d(&gx, *xs, spec, &gw, Some(&gb), epi, &mut got);
            check(&format!("conv {spec:?} leaky {leaky} residual {residual}"), g, &got, &want, tol);
        }
        let (mut dx, mut dw, mut db) = (vec![0f32; xs.len()], vec![0f32; w.len()], vec![0f32; spec.cout]);
        cpu.conv2d_backward(&x, *xs, spec, &w, &dy, Some(&mut dx), DxEpilogue::NONE, &mut dw, Some(&mut db));
        let (mut gdx, mut gdw, mut gdb) = (nan(g, xs.len()), nan(g, w.len()), nan(g, spec.cout));
        g.conv2d_backward(&gx, *xs, spec, &gw, &gdy, Some(&mut gdx), DxEpilogue::NONE, &mut gdw, Some(&mut gdb));
        check(&format!("conv dX {spec:?}"), g, &gdx, &dx, grad_tol);
        check(&format!("conv dW {spec:?}"), g, &gdw, &dw, grad_tol);
        check(&format!("conv dB {spec:?}"), g, &gdb, &db, grad_tol);
        // dX through LeakyReLU's backward at x (x has both signs), and added to a given dx
        for dxe in [DxEpilogue::LEAKY, DxEpilogue::ACCUMULATE] {
            let old = rnd(xs.len(), seed + 5, -1.0, 1.0);
            let mut want = old.clone();
            cpu.conv2d_backward(&x, *xs, spec, &w, &dy, Some(&mut want), dxe, &mut dw, None);
            let mut got = g.upload(&old);
            g.conv2d_backward(&gx, *xs, spec, &gw, &gdy, Some(&mut got), dxe, &mut gdw, None);
            check(&format!("conv dX {dxe:?} {spec:?}"), g, &got, &want, grad_tol);
        }
    }
}

#[test]
fn transposed_convolution_and_its_gradients() {
    let Some(g) = gpu() else { return };
    transposed_within(&g, 1e-5);
    let Some(g) = gpu_with(Precision::Tf32) else { return };
    transposed_within(&g, 5e-3);
}

fn transposed_within(g: &Cuda, tol: f64) {
    let cpu = Cpu::new();
    for (i, (xs, cout)) in [
        (Shape { n: 2, h: 5, w: 7, c: 9 }, 6),
        (Shape { n: 3, h: 8, w: 8, c: 128 }, 64),
        (Shape { n: 1, h: 7, w: 5, c: 12 }, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 100 + 10 * i as u64;
        let ys = Shape { n: xs.n, h: 2 * xs.h, w: 2 * xs.w, c: cout };
        let x = rnd(xs.len(), seed, -1.0, 1.0);
        let w = rnd(xs.c * 4 * cout, seed + 1, -0.5, 0.5);
        let b = rnd(cout, seed + 2, -0.5, 0.5);
        let dy = rnd(ys.len(), seed + 3, -1.0, 1.0);
        let mut want = vec![0f32; ys.len()];
        cpu.conv_transpose2(&x, xs, cout, &w, &b, &mut want);
        let (gx, gw, gb, gdy) = (g.upload(&x), g.upload(&w), g.upload(&b), g.upload(&dy));
        let mut got = nan(g, ys.len());
        g.conv_transpose2(&gx, xs, cout, &gw, &gb, &mut got);
        check("transposed conv", g, &got, &want, tol);
        let (mut dx, mut dw, mut db) = (vec![0f32; xs.len()], vec![0f32; w.len()], vec![0f32; cout]);
        cpu.conv_transpose2_backward(&x, xs, cout, &w, &dy, Some(&mut dx), &mut dw, &mut db);
        let (mut gdx, mut gdw, mut gdb) = (nan(g, xs.len()), nan(g, w.len()), nan(g, cout));
        g.conv_transpose2_backward(&gx, xs, cout, &gw, &gdy, Some(&mut gdx), &mut gdw, &mut gdb);
        check("transposed conv dX", g, &gdx, &dx, tol);
        check("transposed conv dW", g, &gdw, &dw, tol);
        check("transposed conv dB", g, &gdb, &db, tol);
    }
}

#[test]
fn half_instance_norm_means_and_channel_moves() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let s = Shape { n: 3, h: 17, w: 9, c: 70 };
    let half = s.c / 2;
    let x: Vec<f32> = rnd(s.len(), 1, -1.0, 3.0);
    let (gamma, beta) = (rnd(half, 2, 0.5, 1.5), rnd(half, 3, -0.5, 0.5));
    let dy = rnd(s.len(), 4, -1.0, 1.0);
    let (gx, gg, gbeta, gdy) = (g.upload(&x), g.upload(&gamma), g.upload(&beta), g.upload(&dy));
    for leaky in [false, true] {
        let (mut y, mut st) = (vec![0f32; s.len()], vec![0f32; 2 * s.n * half]);
        cpu.hin_forward(&x, s, &gamma, &beta, leaky, &mut y, &mut st);
        let (mut gy, mut gst) = (nan(&g, s.len()), nan(&g, st.len()));
        g.hin_forward(&gx, s, &gg, &gbeta, leaky, &mut gy, &mut gst);
        check(&format!("HIN leaky {leaky}"), &g, &gy, &y, 1e-5);
        check("HIN statistics", &g, &gst, &st, 1e-5);
        let (mut dx, mut dgm, mut dbt) = (vec![0f32; s.len()], vec![0f32; half], vec![0f32; half]);
        cpu.hin_backward(&x, s, &gamma, &st, &dy, &mut dx, &mut dgm, &mut dbt);
        let (mut gdx, mut gdgm, mut gdbt) = (nan(&g, s.len()), nan(&g, half), nan(&g, half));
        g.hin_backward(&gx, s, &gg, &gst, &gdy, &mut gdx, &mut gdgm, &mut gdbt);
        check("HIN dX", &g, &gdx, &dx, 1e-5);
        check("HIN dgamma", &g, &gdgm, &dgm, 1e-5);
        check("HIN dbeta", &g, &gdbt, &dbt, 1e-5);
    }
    // one pass for mean and variance (shifted sums): channels far from zero with a small
    // spread, where unshifted f64 sums of squares would lose digits
    let far: Vec<f32> = rnd(s.len(), 5, -1.0, 1.0).iter().map(|v| 300.0 + 0.01 * v).collect();
    let (mut y, mut st) = (vec![0f32; s.len()], vec![0f32; 2 * s.n * half]);
    cpu.hin_forward(&far, s, &gamma, &beta, false, &mut y, &mut st);
    let gf = g.upload(&far);
    let (mut gy, mut gst) = (nan(&g, s.len()), nan(&g, st.len()));
    g.hin_forward(&gf, s, &gg, &gbeta, false, &mut gy, &mut gst);
    check("HIN statistics, offset channels", &g, &gst, &st, 1e-5);
    check("HIN, offset channels", &g, &gy, &y, 1e-4);
    let mut m = vec![0f32; s.n * s.c];
    cpu.spatial_mean(&x, s, &mut m);
    let mut gm = nan(&g, m.len());
    g.spatial_mean(&gx, s, &mut gm);
    check("spatial mean", &g, &gm, &m, 1e-6);
}

#[test]
fn losses_and_adam() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let s = Shape { n: 3, h: 19, w: 21, c: 5 };
    let pred = rnd(s.len(), 1, 0.0, 1.0);
    let target = rnd(s.len(), 2, 0.0, 1.0);
    let mut d = vec![0f32; s.len()];
    let l = cpu.mse_per_image(&pred, &target, s, 0.25, &mut d);
    let mut gd = nan(&g, s.len());
    let gl = g.mse_per_image(&g.upload(&pred), &g.upload(&target), s, 0.25, &mut gd);
    assert!(((gl - l) / l).abs() < 1e-9, "mse {gl} vs {l}");
    check("mse gradient", &g, &gd, &d, 1e-6);

    // the regulariser over confident pixels (about a quarter above 0.95); gradients accumulate
    let hr = rnd(s.len(), 3, 0.75, 1.0);
    let vd = rnd(s.len(), 4, 0.0, 1.0);
    let base = rnd(s.len(), 5, -1.0, 1.0);
    let mut d = base.clone();
    let l = cpu.hr_regulariser(&hr, &vd, s, 0.5, &mut d);
    let mut gd = g.upload(&base);
    let gl = g.hr_regulariser(&g.upload(&hr), &g.upload(&vd), s, 0.5, &mut gd);
    assert!(((gl - l) / l).abs() < 1e-9, "regulariser {gl} vs {l}");
    check("regulariser gradient (accumulated)", &g, &gd, &d, 1e-6);

    // the expression loss: three tiles, one of them a query tile with gamma, odd gene count
    let (r, genes, h, w) = (4usize, 37usize, 12usize, 10usize);
    let hs = Shape { n: 3, h, w, c: r };
    let hr = rnd(hs.len(), 6, 0.0, 1.0);
    let dec = rnd(genes * r, 7, -0.5, 2.0);
    let gamma = rnd(2 * genes, 8, -1.0, 1.0);
    let px: Vec<Vec<Vec<u32>>> = (0..3u32)
        .map(|t| (0..2 + t).map(|s| (0..5 + 3 * s).map(|i| (i * 7 + s * 11 + t) % (h * w) as u32).collect()).collect())
        .collect();
    let exprs: Vec<Vec<f32>> = px
        .iter()
        .enumerate()
        .map(|(t, p)| rnd(p.len() * genes, 20 + t as u64, 0.0, 5.0).iter().map(|v| v.floor()).collect())
        .collect();
    let tiles: Vec<TileSpots> =
        (0..3).map(|t| TileSpots { pixels: &px[t], expression: &exprs[t], query: (t == 1).then_some(1) }).collect();
    let base = rnd(hs.len(), 9, -1.0, 1.0);
    let (mut dhr, mut ddec, mut dgam) = (base.clone(), vec![0f32; dec.len()], vec![0f32; gamma.len()]);
    let l = cpu.expression_loss(
        &hr,
        hs,
        &tiles,
        Decoder { d: &dec, gamma: Some(&gamma), grad_d: &mut ddec, grad_gamma: Some(&mut dgam) },
        0.7,
        &mut dhr,
    );
    let (ghr, gdec, ggam) = (g.upload(&hr), g.upload(&dec), g.upload(&gamma));
    let (mut gdhr, mut gddec, mut gdgam) = (g.upload(&base), nan(&g, dec.len()), nan(&g, gamma.len()));
    let gl = g.expression_loss(
        &ghr,
        hs,
        &tiles,
        Decoder { d: &gdec, gamma: Some(&ggam), grad_d: &mut gddec, grad_gamma: Some(&mut gdgam) },
        0.7,
        &mut gdhr,
    );
    assert!(((gl - l) / l).abs() < 1e-6, "expression loss {gl} vs {l}");
    check("expression loss dHR (accumulated)", &g, &gdhr, &dhr, 1e-6);
    check("expression loss dD", &g, &gddec, &ddec, 1e-5);
    check("expression loss dgamma", &g, &gdgam, &dgam, 1e-5);

    // Adam through the trait
    let n = 10_007;
    let (p, gr, m0, v0) =
        (rnd(n, 30, -1.0, 1.0), rnd(n, 31, -0.1, 0.1), rnd(n, 32, -0.01, 0.01), rnd(n, 33, 0.0, 1e-3));
    let sc = spahdmap::optim::AdamScalars {
        step_size: 4e-4,
        bc2_sqrt: 0.7,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-5,
    };
    let (mut cp, mut cm, mut cv) = (p.clone(), m0.clone(), v0.clone());
    cpu.adam(&mut cp, &gr, &mut cm, &mut cv, &sc);
    let (mut gp, mut gm, mut gv) = (g.upload(&p), g.upload(&m0), g.upload(&v0));
    g.adam(&mut gp, &g.upload(&gr), &mut gm, &mut gv, &sc);
    check("adam parameters", &g, &gp, &cp, 1e-6);
    check("adam second moments", &g, &gv, &cv, 1e-6);
}

/// Loss scaling's unscale on the GPU: the same values as the CPU, every inf and NaN found in
/// any tensor (one flag over all of them), a clean set reports none after a dirty one.
#[test]
fn unscale_grads_match_the_cpu_and_find_non_finite_values() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let base = vec![rnd(100_003, 1, -4.0, 4.0), rnd(77, 2, -1.0, 1.0), rnd(4096, 3, -9.0, 9.0)];
    let mut c = base.clone();
    let mut d: Vec<DBuf> = base.iter().map(|v| g.upload(v)).collect();
    assert!(!cpu.unscale_grads(&mut c, 1.0 / 65536.0));
    assert!(!g.unscale_grads(&mut d, 1.0 / 65536.0));
    for (k, (a, b)) in d.iter().zip(&c).enumerate() {
        assert!(g.download(a) == *b, "tensor {k}");
    }
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        for (t, at) in [(0, 0), (0, 100_002), (1, 40), (2, 4095)] {
            let mut host = base.clone();
            host[t][at] = bad;
            let mut d: Vec<DBuf> = host.iter().map(|v| g.upload(v)).collect();
            assert!(g.unscale_grads(&mut d, 0.5), "{bad} in tensor {t} at {at}");
            assert!(!g.unscale_grads(&mut d[t + 1..], 0.5), "flag not cleared");
        }
    }
    let mut d = vec![g.upload(&[3e38f32, 1.0])];
    assert!(g.unscale_grads(&mut d, 2.0), "overflow by the unscale itself");
}

/// Pre-training steps behind a loss scaler on the GPU follow the CPU's, skipped steps included.
#[test]
fn scaled_pretraining_steps_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let (net, mut pc) = UNet::new(3, 5);
    let mut pg = pc.upload(&g);
    let sizes: Vec<usize> = pc.data.iter().map(|d| d.len()).collect();
    let cfg = AdamConfig { weight_decay: 1e-5, ..Default::default() };
    let mut oc = Adam::new(cfg, &sizes);
    let mut og = Adam::with(cfg, &sizes, |n| g.zeros(n));
    let all: Vec<usize> = (0..sizes.len()).collect();
    let lrs = vec![4e-4; all.len()];
    let is = Shape { n: 2, h: 64, w: 64, c: 3 };
    let image = rnd(is.len(), 9, 0.0, 1.0);
    let mut bad = image.clone();
    bad[5] = f32::NAN;
    let (mut sc, mut sg) = (spahdmap::optim::LossScaler::default(), spahdmap::optim::LossScaler::default());
    for (step, im) in [&image, &bad, &image].into_iter().enumerate() {
        let lc = spahdmap::stages::pretrain::pretrain_step_scaled(&cpu, &net, &mut pc, im, is, sc.scale);
        let gi = g.upload(im);
        let lg = spahdmap::stages::pretrain::pretrain_step_scaled(&g, &net, &mut pg, &gi, is, sg.scale);
        let (tc, tg) = (
            pc.scaled_adam_step(&cpu, &mut oc, &mut sc, &all, &lrs),
            pg.scaled_adam_step(&g, &mut og, &mut sg, &all, &lrs),
        );
        assert_eq!((tc, tg), (step != 1, step != 1), "step {step}");
        if step != 1 {
            assert!(((lg - lc) / lc).abs() < 1e-6, "loss {lg} vs {lc}");
        }
    }
    assert_eq!((sc, oc.step), (sg, og.step));
    // the whole parameter vector, as in the unscaled steps' test (Adam amplifies rounding noise)
    let (a, b): (Vec<f32>, Vec<f32>) =
        (pg.data.iter().flat_map(|d| g.download(d)).collect(), pc.data.iter().flat_map(|d| d.clone()).collect());
    let e = rel(&a, &b);
    eprintln!("parameters after scaled steps: relative error {e:.3e}");
    assert!(e < 5e-3, "parameters {e}");
}

/// Three pre-training + joint-training + Adam steps of the real network on both backends: the
/// losses and every parameter agree, and after the first step the GPU allocates nothing.
#[test]
fn training_steps_match_the_cpu_and_allocate_nothing_after_the_first() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let (rank, genes) = (3, 11);
    let (net, mut host) = UNet::new(3, 4);
    let head = JointHead::new(&mut host, 3, rank, genes, 0, 4);
    let sizes: Vec<usize> = host.data.iter().map(|d| d.len()).collect();
    let all: Vec<usize> = (0..sizes.len()).collect();
    let (mut pc, mut pg) = (host.upload(&cpu), host.upload(&g));
    let mut oc = Adam::with(AdamConfig::default(), &sizes, |n| cpu.zeros(n));
    let mut og = Adam::with(AdamConfig::default(), &sizes, |n| g.zeros(n));
    let is = Shape { n: 2, h: 32, w: 24, c: 3 };
    let image = rnd(is.len(), 1, 0.0, 1.0);
    let vd = rnd(2 * 32 * 24 * rank, 2, 0.0, 1.0);
    let pixels = vec![(0u32..40).collect::<Vec<_>>(), (300u32..333).collect()];
    let exp: Vec<f32> = rnd(2 * genes, 3, 0.0, 4.0).iter().map(|v| v.floor()).collect();
    let tiles: Vec<TileSpots> = (0..2).map(|_| TileSpots { pixels: &pixels, expression: &exp, query: None }).collect();
    let mut fresh = Vec::new();
    for step in 0..3 {
        let (ic, vc) = (cpu.upload(&image), cpu.upload(&vd));
        let (ig, vg) = (g.upload(&image), g.upload(&vd));
        let lc = spahdmap::stages::pretrain::pretrain_step(&cpu, &net, &mut pc, &ic, is);
        let lg = spahdmap::stages::pretrain::pretrain_step(&g, &net, &mut pg, &ig, is);
        eprintln!("step {step}: pre-training loss cpu {lc} gpu {lg}");
        // step 0 is the same function of the same parameters; later steps follow parameters
        // that Adam moved by ±lr where a gradient is rounding noise (see below)
        let tol = if step == 0 { 1e-6 } else { 5e-4 };
        assert!(((lg - lc) / lc).abs() < tol, "pre-training loss {lg} vs {lc}");
        if step == 0 {
            // every gradient after the first backward pass, as one vector and per tensor
            // (per tensor only where the gradient is not zero in exact arithmetic: the bias of a
            // conv that feeds an instance norm gets rounding noise on both sides)
            let (mut a, mut b, mut worst) = (Vec::new(), Vec::new(), (0f64, String::new()));
            let norms: Vec<f64> =
                pc.grads.iter().map(|y| y.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()).collect();
            let top = norms.iter().cloned().fold(0.0, f64::max);
            for (i, name) in pc.names.iter().enumerate() {
                let (x, y) = (g.download(&pg.grads[i]), pc.grads[i].clone());
                if norms[i] > 1e-4 * top {
                    let e = rel(&x, &y);
                    if e > worst.0 {
                        worst = (e, name.clone());
                    }
                }
                a.extend(x);
                b.extend(y);
            }
            let e = rel(&a, &b);
            eprintln!("pre-training gradients: relative error {e:.3e}, worst tensor {:.3e} ({})", worst.0, worst.1);
            // every kernel is within 1e-5 on its own (tests above); through ~60 layers the
            // f32 summation orders differ enough to reach ~1e-5 (measured 9.7e-6 on an H200)
            assert!(e < 5e-5, "gradients {e}");
            assert!(worst.0 < 1e-3, "worst gradient tensor {worst:?}");
        }
        let oc_ = head.step(
            &cpu,
            &net,
            &mut pc,
            &JointBatch { image: &ic, shape: is, vd: &vc, tiles: &tiles },
            &LossWeights::default(),
            true,
        );
        let og_ = head.step(
            &g,
            &net,
            &mut pg,
            &JointBatch { image: &ig, shape: is, vd: &vg, tiles: &tiles },
            &LossWeights::default(),
            true,
        );
        eprintln!("step {step}: joint loss cpu {} gpu {}", oc_.loss, og_.loss);
        assert!(((og_.loss - oc_.loss) / oc_.loss).abs() < 10.0 * tol, "joint loss {} vs {}", og_.loss, oc_.loss);
        pc.adam_step(&cpu, &mut oc, &all, &vec![1e-3; all.len()]);
        pg.adam_step(&g, &mut og, &all, &vec![1e-3; all.len()]);
        for b in [ic, vc] {
            cpu.release(b);
        }
        for b in [ig, vg] {
            g.release(b);
        }
        fresh.push(g.fresh_allocations());
    }
    let (a, b): (Vec<f32>, Vec<f32>) =
        (pg.data.iter().flat_map(|d| g.download(d)).collect(), pc.data.iter().flat_map(|d| d.clone()).collect());
    // Adam turns a gradient of pure rounding noise (biases before an instance norm) into a
    // full ±lr step on either side, so parameters agree to ~lr·√(such entries)/‖p‖, not 1e-5
    let e = rel(&a, &b);
    eprintln!("parameters after 3 steps: relative error {e:.3e}");
    // (measured 1.2e-3 on an H200)
    assert!(e < 5e-3, "parameters {e}");
    assert_eq!(fresh[1], fresh[0], "second iteration allocated on the GPU");
    assert_eq!(fresh[2], fresh[0], "third iteration allocated on the GPU");
}

/// Issue 8's check of the fast path: 50 pre-training iterations (Adam at the reference's
/// pre-training lr 4e-4, batch 4) on TF32 tensor cores against the CPU's f32 loss curve.
/// Two f32 runs that differ only in summation order part too, once Adam has turned rounding
/// noise on gradients that are zero in exact arithmetic (biases before an instance norm) into
/// ±lr steps — on an H200 the GPU's exact path drifted up to 4.3–8.3% from the CPU within
/// these 50 steps, and single steps of either curve cross 2% at random. So the GPU's exact
/// path runs alongside as the control and the check is on the whole curve. Five runs on an
/// H200 (2026-11-26): mean distance TF32 0.79–2.42% (worst steps 3.9–8.0%), f32 control
/// 1.32–1.86% (worst 4.3–8.3%); one run in five had the TF32 mean above both 2% and 1.5× the
/// control's. The bound is therefore on the mean: under 5%, and no step beyond 20%.
#[test]
fn fifty_tensor_core_pretraining_iterations_follow_the_cpu_curve() {
    let Some(g) = speed_gpu() else { return };
    eprintln!("speed path: {}", g.name());
    let Some(ge) = gpu() else { return };
    // the control stays on f32 storage whatever SPAHDMAP_GPU_HALF says
    ge.use_half_storage(false);
    let cpu = Cpu::new();
    let (net, host) = UNet::new(3, 7);
    let sizes: Vec<usize> = host.data.iter().map(|d| d.len()).collect();
    let all: Vec<usize> = (0..sizes.len()).collect();
    let (mut pc, mut pg, mut pe) = (host.upload(&cpu), host.upload(&g), host.upload(&ge));
    let mut oc = Adam::with(AdamConfig::default(), &sizes, |n| cpu.zeros(n));
    let mut og = Adam::with(AdamConfig::default(), &sizes, |n| g.zeros(n));
    let mut oe = Adam::with(AdamConfig::default(), &sizes, |n| ge.zeros(n));
    let is = Shape { n: 4, h: 64, w: 64, c: 3 };
    // image-like: smooth fields plus a little noise
    let noise = rnd(is.len(), 11, 0.0, 0.1);
    let image: Vec<f32> = (0..is.len())
        .map(|i| {
            let (c, x, y, img) = (i % 3, (i / 3) % 64, (i / 192) % 64, i / (192 * 64));
            0.5 + 0.3 * ((x as f32 * 0.11 + c as f32 + img as f32).sin() * (y as f32 * 0.07).cos()) + noise[i]
        })
        .collect();
    let (ic, ig, ie) = (cpu.upload(&image), g.upload(&image), ge.upload(&image));
    let (mut worst, mut control) = (0f64, 0f64);
    let (mut mean, mut mean_control) = (0f64, 0f64);
    // f16 operands (SPAHDMAP_GPU_CONV=f16w) or f16 activations (SPAHDMAP_GPU_HALF=train) train
    // behind a loss scaler, as the pipeline runs them
    let mut scaler = g.scales_loss().then(spahdmap::optim::LossScaler::default);
    let mut skipped = 0;
    let lrs = vec![4e-4; all.len()];
    for step in 0..50 {
        let lc = spahdmap::stages::pretrain::pretrain_step(&cpu, &net, &mut pc, &ic, is);
        let scale = scaler.as_ref().map_or(1.0, |s| s.scale);
        let lg = spahdmap::stages::pretrain::pretrain_step_scaled(&g, &net, &mut pg, &ig, is, scale);
        let le = spahdmap::stages::pretrain::pretrain_step(&ge, &net, &mut pe, &ie, is);
        pc.adam_step(&cpu, &mut oc, &all, &lrs);
        match &mut scaler {
            None => pg.adam_step(&g, &mut og, &all, &lrs),
            Some(s) => {
                if !pg.scaled_adam_step(&g, &mut og, s, &all, &lrs) {
                    eprintln!("iteration {step}: gradients overflowed at loss scale {scale}: step skipped");
                    skipped += 1;
                }
            }
        }
        pe.adam_step(&ge, &mut oe, &all, &lrs);
        let (d, de) = (((lg - lc) / lc).abs(), ((le - lc) / lc).abs());
        worst = worst.max(d);
        control = control.max(de);
        mean += d / 50.0;
        mean_control += de / 50.0;
        if step % 10 == 0 || step == 49 {
            eprintln!(
                "iteration {step}: loss cpu {lc:.6} gpu tf32 {lg:.6} ({:.2}%) gpu f32 {le:.6} ({:.2}%)",
                100.0 * d,
                100.0 * de
            );
        }
        assert!(lg.is_finite(), "iteration {step}: tf32 loss {lg}");
    }
    eprintln!(
        "50 iterations: relative loss difference from the CPU, mean (worst): tf32 {:.3}% ({:.3}%), f32 control {:.3}% ({:.3}%)",
        100.0 * mean,
        100.0 * worst,
        100.0 * mean_control,
        100.0 * control
    );
    assert!(mean < 0.05 && worst < 0.2, "tf32 curve: mean distance {mean}, worst {worst} (control {mean_control})");
    // GradScaler's first 2^16 may overflow a step or two; more would mean the scaled gradients
    // leave f16's range in this network
    assert!(skipped <= 2, "{skipped} steps skipped for overflow");
}

/// A random symmetric graph with self loops, normalised as D^-1/2 (A + I) D^-1/2.
fn random_graph(total: usize, seed: u64) -> spahdmap::io::sparse::Csr {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut nb: Vec<std::collections::BTreeSet<u32>> = (0..total).map(|i| [i as u32].into()).collect();
    for i in 0..total {
        for _ in 0..4 {
            let j = r.random_range(0..total);
            nb[i].insert(j as u32);
            nb[j].insert(i as u32);
        }
    }
    let deg: Vec<f32> = nb.iter().map(|s| s.len() as f32).collect();
    let mut a = spahdmap::io::sparse::Csr::empty(total, total);
    for (i, s) in nb.iter().enumerate() {
        for &j in s {
            a.indices.push(j);
            a.data.push(1.0 / (deg[i] * deg[j as usize]).sqrt());
        }
        a.indptr[i + 1] = a.indices.len();
    }
    a
}

/// The GCN autoencoder on the GPU: one loss and gradient against `Gcn::loss_and_grad`, then
/// 300 training iterations against `train_gcn` (the same Adam and cosine schedule). The two
/// trajectories agree to 1e-6 for the first tens of steps and then part slowly, as any two
/// summation orders do under Adam (H200: 7e-5 at step 100, 0.5% at step 299); the end points
/// must fit the data equally well.
#[test]
fn gcn_gradients_and_training_match_the_cpu() {
    use spahdmap::backend::cuda::gcn::{train_gcn_cuda, GcnCuda};
    use spahdmap::stages::gcn::{train_gcn, Gcn, GcnParams, GcnSettings};
    let Some(g) = gpu() else { return };
    let (total, n, r) = (1500usize, 900usize, 7usize);
    let adj = random_graph(total, 3);
    let score = rnd(n * r, 4, 0.0, 1.0);
    let p = GcnParams::init(total - n, r, 5);
    let mut want = p.clone();
    let lc = Gcn::new(&adj, n, r).loss_and_grad(&p, &score, &mut want);
    let (lg, got) = GcnCuda::new(&g, &adj, n, &score, &p, 1).loss_and_grad();
    eprintln!("GCN loss cpu {lc} gpu {lg}");
    assert!(((lg - lc) / lc).abs() < 1e-6, "GCN loss {lg} vs {lc}");
    let (a, b): (Vec<f32>, Vec<f32>) = (
        got.tensors().iter().flat_map(|t| t.to_vec()).collect(),
        want.tensors().iter().flat_map(|t| t.to_vec()).collect(),
    );
    let e = rel(&a, &b);
    eprintln!("GCN gradients: relative error {e:.3e}");
    assert!(e < 1e-5, "GCN gradients {e}");
    for (i, (x, y)) in got.tensors().iter().zip(want.tensors()).enumerate() {
        let e = rel(x, y);
        assert!(e < 1e-4, "GCN gradient tensor {i}: {e}");
    }
    let s = GcnSettings { iterations: 300, ..Default::default() };
    let rc = train_gcn(&adj, &score, n, p.clone(), &s, |_, _| {});
    let mut seen = 0;
    let rg = train_gcn_cuda(&g, &adj, &score, n, p, &s, |_, _| seen += 1);
    assert_eq!(seen, 300, "every iteration reported");
    for (it, tol) in [(0, 1e-6), (1, 1e-6), (10, 1e-5), (100, 1e-3), (299, 2e-2)] {
        eprintln!("GCN iteration {it}: loss cpu {:.6e} gpu {:.6e}", rc.losses[it], rg.losses[it]);
        let d = ((rg.losses[it] - rc.losses[it]) / rc.losses[it]).abs();
        assert!(d < tol, "GCN loss at iteration {it}: {} vs {}", rg.losses[it], rc.losses[it]);
    }
    let e = rel(&rg.output, &rc.output);
    eprintln!("GCN outputs after 300 iterations: relative error {e:.3e}");
    assert!(e < 5e-2, "GCN outputs {e}");
}

/// A random non-negative spots × genes matrix with about `density` of its entries non-zero,
/// of low rank plus noise (counts-like after rounding).
fn low_rank_counts(rows: usize, cols: usize, density: f64, seed: u64) -> spahdmap::io::sparse::Csr {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let k = 4;
    let a: Vec<f32> = (0..rows * k).map(|_| r.random_range(0.0..2.0)).collect();
    let b: Vec<f32> = (0..k * cols).map(|_| r.random_range(0.0..2.0)).collect();
    let mut x = spahdmap::io::sparse::Csr::empty(rows, cols);
    for i in 0..rows {
        for j in 0..cols {
            if r.random_bool(density) {
                let v: f32 = (0..k).map(|t| a[i * k + t] * b[t * cols + j]).sum::<f32>() + r.random_range(0.0..1.0);
                x.indices.push(j as u32);
                x.data.push(v.round().max(1.0));
            }
        }
        x.indptr[i + 1] = x.indices.len();
    }
    x
}

/// NMF on the GPU against the CPU's: both operand paths (dense f32 products above a quarter
/// non-zero, sparse f64 below), same start, same sweeps, same stopping rule.
#[test]
fn nmf_matches_the_cpu() {
    use spahdmap::backend::cuda::nmf::nmf_cuda;
    use spahdmap::stages::nmf::{nmf, reconstruction_error, NmfSettings};
    let Some(g) = gpu() else { return };
    for (density, seed) in [(0.4, 1u64), (0.1, 2)] {
        let x = low_rank_counts(301, 203, density, seed);
        let s = NmfSettings { rank: 6, max_iter: 300, ..Default::default() };
        let (c, d) = (nmf(&x, &s), nmf_cuda(&g, &x, &s));
        let (ec, ed) = (reconstruction_error(&x, &c), reconstruction_error(&x, &d));
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (ew, eh) = (rel(&f(&d.w), &f(&c.w)), rel(&f(&d.h), &f(&c.h)));
        eprintln!(
            "NMF density {density}: iterations cpu {} gpu {}; error cpu {ec:.6} gpu {ed:.6}; W {ew:.2e} H {eh:.2e}",
            c.iterations, d.iterations
        );
        assert!(((ed - ec) / ec).abs() < 1e-5, "reconstruction error {ed} vs {ec}");
        assert!(ew < 1e-3 && eh < 1e-3, "factors W {ew} H {eh}");
        assert!(c.iterations.abs_diff(d.iterations) <= 2, "iterations {} vs {}", d.iterations, c.iterations);
    }
}

/// The Voronoi score on the GPU against `vd_score`: fill, blur passes, rescale and mask.
#[test]
fn voronoi_score_matches_the_cpu() {
    use spahdmap::backend::cuda::vd::vd_score_cuda;
    use spahdmap::preprocess::morphology::Mask;
    use spahdmap::stages::voronoi::vd_score;
    let Some(g) = gpu() else { return };
    let (h, w, r, spots) = (123usize, 157usize, 5usize, 40usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let centres: Vec<(f32, f32)> =
        (0..spots).map(|_| (rng.random_range(0.0..h as f32), rng.random_range(0.0..w as f32))).collect();
    let nearest: Vec<u32> = (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f32, (i % w) as f32);
            (0..spots)
                .min_by(|&a, &b| {
                    let d = |s: usize| (centres[s].0 - y).powi(2) + (centres[s].1 - x).powi(2);
                    d(a).total_cmp(&d(b))
                })
                .unwrap() as u32
        })
        .collect();
    // scores with zeros (some spots carry nothing in a component)
    let scores: Vec<f32> = (0..spots * r).map(|i| if i % 7 == 3 { 0.0 } else { rng.random_range(0.0..1.0) }).collect();
    let bytes: Vec<u8> =
        (0..h * w).map(|i| ((i / w) as f32 - 60.0).hypot((i % w) as f32 - 80.0) < 55.0).map(u8::from).collect();
    let mask = Mask::from_bytes(h, w, &bytes);
    for k in [9usize, 21] {
        let want = vd_score(&scores, r, &nearest, &mask, k, 0.01);
        let (got, summary) = vd_score_cuda(&g, &scores, r, &nearest, &mask, k, 0.01);
        for t in 0..r {
            let e = rel(&got[t], &want[t]);
            eprintln!("VD kernel {k} component {t}: {} passes, relative error {e:.2e}", summary[t].passes);
            assert!(e < 1e-4, "VD component {t}: {e}");
        }
    }
}

/// Bilinear upsampling (align_corners) of spot windows against `resize_bilinear_ac`.
#[test]
fn bilinear_resize_matches_the_cpu() {
    use spahdmap::backend::cuda::tiles::resize_bilinear_ac;
    let Some(g) = gpu() else { return };
    let (n, h, w, c, oh, ow) = (3usize, 19usize, 23usize, 3usize, 64usize, 61usize);
    let src = rnd(n * h * w * c, 40, 0.0, 1.0);
    let want: Vec<f32> = (0..n)
        .flat_map(|i| {
            spahdmap::model::unet::resize_bilinear_ac(&src[i * h * w * c..(i + 1) * h * w * c], h, w, c, oh, ow)
        })
        .collect();
    let mut out = nan(&g, want.len());
    let gsrc = g.upload(&src);
    // timed with CUDA events on the backend's stream
    let ms = g.time_ms(|| resize_bilinear_ac(&g, &gsrc, n, h, w, c, oh, ow, &mut out));
    assert!(ms.is_finite() && ms >= 0.0, "event time {ms}");
    check("bilinear resize", &g, &out, &want, 1e-6);
    // a download past the page-locked threshold (4 MiB) comes back whole
    let big = rnd(1 << 20, 42, -1.0, 1.0);
    assert_eq!(g.download(&g.upload(&big)), big, "large download through pinned staging");
}

/// Overlapping tiles accumulated on the device against `BandAverager`: two bands of three
/// tiles each, frames and padding columns included, finished rows downloaded in blocks of 5.
#[test]
fn tile_accumulation_matches_the_cpu() {
    use spahdmap::backend::cpu::band::BandAverager;
    use spahdmap::backend::cuda::tiles::DeviceBandAverager;
    let Some(g) = gpu() else { return };
    let (rank, split, bound, wp) = (3usize, 16usize, 2usize, 40usize);
    let cols = [0usize, 12, 24];
    let tiles = rnd(6 * split * split * rank, 41, 0.0, 1.0);
    let per = split * split * rank;
    let (mut cpu, mut dev) =
        (BandAverager::new(rank, split, bound, wp), DeviceBandAverager::new(&g, rank, split, bound, wp));
    dev.limit_copy_rows(5);
    let batch = g.upload(&tiles);
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for band in 0..2 {
        for (j, &c0) in cols.iter().enumerate() {
            let i = band * 3 + j;
            cpu.add(c0, &tiles[i * per..(i + 1) * per]);
            dev.add(&g, c0, &batch, i);
        }
        let until = (band + 1) * 12;
        cpu.advance(until, |y, row| {
            want.push((y, row.to_vec()));
            Ok(())
        })
        .unwrap();
        dev.advance(&g, until, |y, row| {
            got.push((y, row.to_vec()));
            Ok(())
        })
        .unwrap();
        // each advance's rows (blocks of 5, 5 and 2) travel while the next tiles compute and
        // come out at the next advance
        assert_eq!(got.len(), 12 * band, "rows handed over one advance behind");
    }
    dev.flush(|y, row| {
        got.push((y, row.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), want.len(), "rows emitted");
    for ((gy, gr), (wy, wr)) in got.iter().zip(&want) {
        assert_eq!(gy, wy, "row order");
        // (rows inside the first tile's frame are zeros on both sides)
        let worst = gr.iter().zip(wr).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "row {gy}: {worst}");
    }
    eprintln!("tile accumulation: {} rows equal", got.len());
}

/// The kernel profile (`bench unet` with SPAHDMAP_GPU_PROFILE=1) counts each launch under its
/// kernel's name with its device time, and records nothing while off.
#[test]
fn kernel_profile_counts_each_launch() {
    let Some(g) = gpu_with(Precision::Tf32Wide) else { return };
    let (xs, spec) = (Shape { n: 2, h: 64, w: 64, c: 32 }, ConvSpec { cin: 32, cout: 64, k: 3, stride: 1, pad: 1 });
    let ys = Shape { n: 2, h: 64, w: 64, c: 64 };
    let (x, w) = (g.upload(&rnd(xs.len(), 1, -1.0, 1.0)), g.upload(&rnd(spec.weight_len(), 2, -0.5, 0.5)));
    let (dy, mut y, mut dw) = (g.upload(&rnd(ys.len(), 3, -1.0, 1.0)), nan(&g, ys.len()), nan(&g, spec.weight_len()));
    g.conv2d(&x, xs, &spec, &w, None, Epilogue { leaky: false, residual: None }, &mut y);
    assert!(g.take_profile().is_empty(), "recorded while off");
    g.set_profiling(true);
    for _ in 0..3 {
        g.conv2d(&x, xs, &spec, &w, None, Epilogue { leaky: true, residual: None }, &mut y);
    }
    g.conv2d_backward(&x, xs, &spec, &w, &dy, None, DxEpilogue::NONE, &mut dw, None);
    let p = g.take_profile();
    eprintln!("{p:?}");
    let find = |k: &str| p.iter().find(|t| t.kernel == k).unwrap_or_else(|| panic!("{k} missing from {p:?}"));
    assert_eq!(find("conv2d_fwd_tf32w").launches, 3);
    assert_eq!(find("conv2d_bwd_weight_tf32w").launches, 1);
    assert_eq!(find("memset").launches, 1);
    assert!(p.iter().all(|t| t.ms > 0.0 && t.ms.is_finite()), "{p:?}");
    // useful work: 2 · output pixels · taps · channels in and out, per launch
    let flop = 2.0 * (2 * 64 * 64) as f64 * (9 * 32 * 64) as f64;
    assert_eq!(find("conv2d_fwd_tf32w").flop, 3.0 * flop);
    assert_eq!(find("conv2d_bwd_weight_tf32w").flop, flop);
    assert_eq!(find("memset").flop, 0.0);
    assert!(p.windows(2).all(|w| w[0].ms >= w[1].ms), "most expensive first: {p:?}");
    // taken: recording goes on from empty
    assert!(g.take_profile().is_empty());
    g.set_profiling(false);
    g.conv2d(&x, xs, &spec, &w, None, Epilogue { leaky: false, residual: None }, &mut y);
    assert!(g.take_profile().is_empty());
    // the wide weight gradient sums the bias gradient itself: no colsum pass
    g.set_profiling(true);
    let mut db = nan(&g, spec.cout);
    g.conv2d_backward(&x, xs, &spec, &w, &dy, None, DxEpilogue::NONE, &mut dw, Some(&mut db));
    let p = g.take_profile();
    g.set_profiling(false);
    assert!(p.iter().all(|t| !t.kernel.starts_with("colsum")), "{p:?}");
    assert!(g.download(&db).iter().all(|v| v.is_finite()), "bias gradient written");
}

/// A CUDA error is a readable message: running out of device memory says how much was asked
/// for and how much was free.
#[test]
fn out_of_memory_says_what_was_asked_and_what_was_free() {
    let Some(g) = gpu() else { return };
    // 4 TiB of f32: more than any card has
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.alloc(1 << 40)));
    let msg = match r {
        Ok(_) => panic!("a 4 TiB allocation succeeded"),
        Err(e) => e.downcast::<String>().map(|s| *s).unwrap_or_default(),
    };
    eprintln!("{msg}");
    assert!(msg.contains("out of memory") && msg.contains("asked for") && msg.contains("free of"), "{msg}");
    // the device still works afterwards
    let v = rnd(1000, 50, -1.0, 1.0);
    assert_eq!(g.download(&g.upload(&v)), v);
}

/// The score stage's tiling through the backend: a "network" that returns its VD input,
/// averaged on the device, gives the CPU's rows exactly (batches of 3 tiles, a crop wider and
/// taller than a tile, padding on every side).
#[test]
fn streamed_tile_averaging_matches_the_cpu() {
    use spahdmap::stages::score::{average_tiles, ScoreSettings};
    let Some(g) = gpu() else { return };
    let (h, w, rank, ss) = (150usize, 97usize, 3usize, 32usize);
    let s = ScoreSettings { split_size: ss, batch: 3, ..Default::default() };
    let map = rnd(h * w * rank, 43, 0.0, 1.0);
    let tile = |r: i64, c: i64| -> spahdmap::Result<(Vec<f32>, Vec<f32>)> {
        let mut v = vec![0f32; ss * ss * rank];
        for y in 0..ss {
            for x in 0..ss {
                let (yy, xx) = (r + y as i64, c + x as i64);
                if yy >= 0 && xx >= 0 && yy < h as i64 && xx < w as i64 {
                    let at = (yy as usize * w + xx as usize) * rank;
                    v[(y * ss + x) * rank..(y * ss + x + 1) * rank].copy_from_slice(&map[at..at + rank]);
                }
            }
        }
        Ok((vec![0.0; ss * ss * 3], v))
    };
    let mut want = Vec::new();
    let nc = average_tiles(
        &Cpu::new(),
        h,
        w,
        rank,
        &s,
        tile,
        |_, vd, _, use_hr| use_hr(&vd.to_vec()),
        |y, row| {
            want.push((y, row.to_vec()));
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    let mut got = Vec::new();
    let ng = average_tiles(
        &g,
        h,
        w,
        rank,
        &s,
        tile,
        |_, vd, _, use_hr| {
            let x = g.upload(vd);
            use_hr(&x);
            g.release(x);
        },
        |y, row| {
            got.push((y, row.to_vec()));
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(nc, ng);
    assert_eq!(got.len(), h);
    for ((yc, rc), (yg, rg)) in want.iter().zip(&got) {
        assert_eq!(yc, yg);
        assert!(rel(rg, rc) < 1e-6, "row {yc}: {}", rel(rg, rc));
    }
}

/// Streamed inference's double-buffered inputs (`InputRing`, `upload_overlapped`): eight
/// batches queued without a synchronisation, each upload on the copy stream waiting only for
/// the batch that last read its slot. Each batch's result must come from its own inputs: a
/// copy that overtook the work still reading its slot, or work that did not wait for its copy,
/// shows as another batch's values. Large inputs and a chain of kernels per batch give the
/// copies time to race; a fresh (pooled) buffer is covered by a short last batch.
#[test]
fn overlapped_uploads_keep_each_batch_its_own_inputs() {
    use spahdmap::backend::streamed::InputRing;
    let Some(g) = gpu() else { return };
    let n = 1 << 22;
    let hosts: Vec<Vec<f32>> = (0..8).map(|k| rnd(if k == 7 { n / 2 } else { n }, 60 + k, -2.0, 2.0)).collect();
    let mut ring = InputRing::<Cuda>::default();
    let mut outs = Vec::new();
    for h in &hosts {
        let bufs = ring.fill(&g, &[Host::F32(h)]);
        // sigmoid, then ten leaky-ReLU backward passes against itself: reads the input late
        let mut y = g.alloc(h.len());
        g.sigmoid(&bufs[0], &mut y);
        for _ in 0..10 {
            g.leaky_relu_backward(&bufs[0], &mut y);
        }
        ring.done(&g);
        outs.push(y);
    }
    for (k, (h, y)) in hosts.iter().zip(&outs).enumerate() {
        let (cpu, mut want) = (Cpu::new(), vec![0f32; h.len()]);
        cpu.sigmoid(h, &mut want);
        for _ in 0..10 {
            cpu.leaky_relu_backward(h, &mut want);
        }
        let e = rel(&g.download(y), &want);
        assert!(e < 1e-5, "batch {k}: relative error {e}");
    }
    eprintln!("8 overlapped batches of {n} values: each computed on its own inputs");
    ring.release(&g);
    // the plain path agrees
    let mut d = g.alloc(hosts[0].len());
    g.upload_overlapped(Host::F32(&hosts[0]), &mut d, None);
    assert_eq!(g.download(&d), hosts[0]);
}

/// Issue 8 item 4: the pre-training iteration (forward, loss, backward, unscale, Adam)
/// recorded as a CUDA graph and replayed, against the same iteration run eagerly on a twin of
/// the parameters and Adam state copied in before each step: the loss (1e-12), the gradients
/// (1e-6) and, after Adam, the parameters (5e-3: Adam turns gradients of pure rounding noise
/// into ±lr steps on either side) agree, so a replay reads the batch loaded that step, the
/// current parameters and that step's learning rate. The schedule is eager, recorded, then
/// replays; a new batch size is recorded anew and the first size's recording is still there
/// when it comes back; under a loss scaler an overflowing batch is skipped on the device.
#[test]
fn recorded_pretraining_steps_replay_the_eager_ones() {
    use spahdmap::backend::graphs::Ran;
    use spahdmap::optim::LossScaler;
    use spahdmap::stages::pretrain::{pretrain_step_scaled, RecordedStep};
    let Some(g) = gpu() else { return };
    g.use_graphs(true);
    let (net, host) = UNet::new(3, 11);
    let (mut p, mut q) = (host.upload(&g), host.upload(&g));
    let sizes: Vec<usize> = host.data.iter().map(|d| d.len()).collect();
    let all: Vec<usize> = (0..sizes.len()).collect();
    let (mut op, mut oq) = (
        Adam::with(AdamConfig::default(), &sizes, |n| g.zeros(n)),
        Adam::with(AdamConfig::default(), &sizes, |n| g.zeros(n)),
    );
    let mut step = RecordedStep::<Cuda>::default();
    let (mut hows, mut fresh, mut stepped) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sp, mut sq) = (LossScaler::new(1024.0, 1000), LossScaler::new(1024.0, 1000));
    let plan = [
        (2usize, false),
        (2, false),
        (2, false),
        (2, false),
        (2, false),
        (1, false),
        (1, false),
        (1, false),
        (2, false),
    ]
    .into_iter()
    .chain([(2, true), (2, true), (2, true), (2, true)]);
    for (k, (n, scaled)) in plan.enumerate() {
        let is = Shape { n, h: 64, w: 48, c: 3 };
        let mut image = rnd(is.len(), 100 + k as u64, 0.0, 1.0);
        if k == 11 {
            image[3] = f32::NAN; // a recorded step whose gradients overflow
        }
        // the twin starts this step where the recorded side is
        for i in 0..sizes.len() {
            g.copy(&p.data[i], &mut q.data[i]);
            g.copy(&op.m[i], &mut oq.m[i]);
            g.copy(&op.v[i], &mut oq.v[i]);
        }
        oq.step = op.step;
        let lrs: Vec<f64> = vec![1e-3 * (1.0 + k as f64 / 10.0); all.len()];
        step.load(&g, &image, is);
        let (lr, how, did) = step.step(&g, &net, &mut p, &mut op, &all, &lrs, scaled.then_some(&mut sp));
        hows.push(how);
        stepped.push(did);
        let gr: Vec<f32> = p.grads.iter().flat_map(|d| g.download(d)).collect();
        let x = g.upload(&image);
        let le = pretrain_step_scaled(&g, &net, &mut q, &x, is, if scaled { sq.scale } else { 1.0 });
        g.release(x);
        let twin_stepped = if scaled {
            q.scaled_adam_step(&g, &mut oq, &mut sq, &all, &lrs)
        } else {
            q.adam_step(&g, &mut oq, &all, &lrs);
            true
        };
        assert_eq!(did, twin_stepped, "step {k}");
        assert_eq!(op.step, oq.step, "step {k}: Adam's count");
        if did {
            let ge: Vec<f32> = q.grads.iter().flat_map(|d| g.download(d)).collect();
            let e = rel(&gr, &ge);
            let (a, b): (Vec<f32>, Vec<f32>) = (
                p.data.iter().flat_map(|d| g.download(d)).collect(),
                q.data.iter().flat_map(|d| g.download(d)).collect(),
            );
            let ep = rel(&a, &b);
            eprintln!("step {k} ({how:?}): loss {lr} vs eager {le}, gradients {e:.3e}, parameters {ep:.3e}");
            assert!(((lr - le) / le).abs() < 1e-12, "step {k}: loss {lr} vs {le}");
            assert!(e < 1e-6, "step {k}: gradients {e}");
            assert!(ep < 5e-3, "step {k}: parameters {ep}");
        } else {
            // skipped on the device: parameters and moments as they were (the twin's are)
            for i in 0..sizes.len() {
                assert_eq!(g.download(&p.data[i]), g.download(&q.data[i]), "step {k}: parameter {i} moved");
                assert_eq!(g.download(&op.m[i]), g.download(&oq.m[i]), "step {k}: moment {i} moved");
                assert_eq!(g.download(&op.v[i]), g.download(&oq.v[i]), "step {k}: moment {i} moved");
            }
        }
        fresh.push(g.fresh_allocations());
    }
    assert_eq!((sp, op.step), (sq, oq.step));
    use Ran::*;
    assert_eq!(
        hows,
        // the full batch's recording is kept beside the short one's; scaling is a new key, and
        // so is the scale the overflow halved
        [
            Eager, Recorded, Replayed, Replayed, Replayed, Eager, Recorded, Replayed, Replayed, Eager, Recorded,
            Replayed, Eager
        ]
    );
    assert_eq!(stepped, [true, true, true, true, true, true, true, true, true, true, true, false, true]);
    assert_eq!(fresh[3], fresh[4], "a replayed step allocated");
    step.release(&g);
}

/// A body that cannot be recorded (a read-back, a buffer the pool lacks) gives no recording
/// and leaves the stream and the pool fine; one that can replays on the values its buffers
/// hold at replay time.
#[test]
fn a_step_that_cannot_be_recorded_runs_eagerly_and_leaves_the_backend_usable() {
    let Some(g) = gpu() else { return };
    g.use_graphs(true);
    let n = 1000;
    let mut x = g.upload(&rnd(n, 1, -3.0, 3.0));
    let mut y = g.alloc(n);
    assert!(g
        .capture(&mut || {
            g.sigmoid(&x, &mut y);
            let _ = g.download(&y);
        })
        .is_none());
    // zeroed and copied placeholders: nothing may be queued on them
    assert!(g
        .capture(&mut || {
            let z = g.zeros(12345);
            let mut w = g.zeros(12345);
            g.copy(&z, &mut w);
            g.sigmoid(&z, &mut w);
            g.release(z);
            g.release(w);
        })
        .is_none());
    // a panic inside the body ends the capture on its way out
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.capture(&mut || {
            // a buffer held while unwinding is leaked, not freed into the graph
            let _t = g.alloc(n);
            g.sigmoid(&x, &mut y);
            panic!("inside the body");
        })
    }));
    assert!(caught.is_err());
    // the placeholder never reached the pool: this length gets real memory
    let z = g.upload(&vec![2.0; 12345]);
    assert_eq!(g.download(&z)[12344], 2.0);
    let rec = g.capture(&mut || g.sigmoid(&x, &mut y)).expect("a sigmoid records");
    for k in 0..3 {
        let host = rnd(n, 10 + k, -3.0, 3.0);
        g.upload_overlapped(Host::F32(&host), &mut x, None);
        assert!(g.replay(&rec));
        let mut want = vec![0f32; n];
        Cpu::new().sigmoid(&host, &mut want);
        let e = rel(&g.download(&y), &want);
        assert!(e < 1e-6, "replay {k}: {e}");
    }
}

/// The score stage's recorded batch (`RecordedOut`): inputs from alternating slots — the
/// second in f16, as the VD prior comes — are copied into the recording's own, and every
/// batch's output follows its own inputs.
#[test]
fn recorded_batches_follow_their_inputs() {
    use spahdmap::backend::graphs::RecordedOut;
    let Some(g) = gpu() else { return };
    g.use_graphs(true);
    let n = 1 << 16;
    let mut rec = RecordedOut::<Cuda>::default();
    let body = |x: &[&DBuf]| {
        let mut t = g.alloc(n);
        g.sigmoid(x[0], &mut t);
        let mut y = g.alloc(n);
        g.prior_sigmoid(&t, x[1], &mut y);
        g.leaky_relu_backward(&t, &mut y);
        g.add_assign(&mut y, &t);
        g.release(t);
        y
    };
    let cpu = Cpu::new();
    let mut slots: Vec<[DBuf; 2]> =
        (0..2).map(|_| [g.alloc(n), g.alloc_upload(Host::F16(&[half::f16::ZERO; 1 << 16]))]).collect();
    for k in 0..6u64 {
        let a = rnd(n, 200 + k, -3.0, 3.0);
        let b16: Vec<half::f16> = rnd(n, 300 + k, 0.0, 1.0).into_iter().map(half::f16::from_f32).collect();
        let s = &mut slots[k as usize % 2];
        g.upload_overlapped(Host::F32(&a), &mut s[0], None);
        g.upload_overlapped(Host::F16(&b16), &mut s[1], None);
        let got = g.download(rec.run(&g, 0, &[&s[0], &s[1]], &body));
        let mut t = vec![0f32; n];
        cpu.sigmoid(&a, &mut t);
        let mut want = vec![0f32; n];
        let b: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
        cpu.prior_sigmoid(&t, &b, &mut want);
        cpu.leaky_relu_backward(&t, &mut want);
        cpu.add_assign(&mut want, &t);
        let e = rel(&got, &want);
        assert!(e < 1e-6, "batch {k}: {e}");
    }
    rec.release(&g);
}

/// `adam_at` (scalars read from the device, skipped on a set flag: Adam inside a recorded
/// step) against the CPU's `adam`; `unscale_grads_into` leaves the found-inf flag on the device.
#[test]
fn adam_with_device_scalars_matches_the_cpu_and_skips_on_the_flag() {
    use spahdmap::optim::AdamScalars;
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let n = 10_007;
    let (p0, gr, m0, v0) = (rnd(n, 1, -1.0, 1.0), rnd(n, 2, -0.1, 0.1), rnd(n, 3, -0.01, 0.01), rnd(n, 4, 0.0, 1e-4));
    let s = [
        AdamScalars { step_size: 1e-3, bc2_sqrt: 0.3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        AdamScalars { step_size: 4e-4, bc2_sqrt: 0.7, beta1: 0.8, beta2: 0.99, eps: 1e-7, weight_decay: 1e-5 },
    ];
    let flat: Vec<f32> = s.iter().flat_map(|x| x.to_array()).collect();
    let sb = g.upload(&flat);
    let mut flag = g.zeros(1);
    let mut grads = vec![g.upload(&gr)];
    g.unscale_grads_into(&mut grads, 0.5, &mut flag);
    assert!(!g.flag_set(&flag));
    let gh: Vec<f32> = gr.iter().map(|v| v * 0.5).collect();
    for (at, sc) in s.iter().enumerate() {
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        cpu.adam(&mut p, &gh, &mut m, &mut v, sc);
        let (mut gp, mut gm, mut gv) = (g.upload(&p0), g.upload(&m0), g.upload(&v0));
        g.adam_at(&mut gp, &grads[0], &mut gm, &mut gv, &sb, at, Some(&flag));
        check(&format!("adam_at {at}: p"), &g, &gp, &p, 1e-6);
        check(&format!("adam_at {at}: m"), &g, &gm, &m, 1e-6);
        check(&format!("adam_at {at}: v"), &g, &gv, &v, 1e-6);
    }
    // an inf among the gradients: the flag is set, and Adam leaves everything as it was
    let mut bad = gr.clone();
    bad[17] = f32::INFINITY;
    let mut grads = vec![g.upload(&bad)];
    g.unscale_grads_into(&mut grads, 0.5, &mut flag);
    assert!(g.flag_set(&flag));
    let (mut gp, mut gm, mut gv) = (g.upload(&p0), g.upload(&m0), g.upload(&v0));
    g.adam_at(&mut gp, &grads[0], &mut gm, &mut gv, &sb, 1, Some(&flag));
    assert_eq!((g.download(&gp), g.download(&gm), g.download(&gv)), (p0, m0, v0));
}

/// The multi-tensor optimiser (`adam_many`: lists of up to 40 tensors a launch, scalars from
/// the host or the device) and unscale (lists of 96) over more tensors than one list holds,
/// of odd and empty sizes and a tensor left out, against the CPU tensor by tensor.
#[test]
fn multi_tensor_adam_and_unscale_match_the_cpu_over_many_tensors() {
    use spahdmap::backend::AdamSource;
    use spahdmap::optim::{Adam, AdamConfig};
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let sizes: Vec<usize> = (0..130).map(|k| if k % 23 == 5 { 0 } else { 1 + (k * 7919) % 20_011 }).collect();
    let params: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(k, &n)| rnd(n, 100 + k as u64, -1.0, 1.0)).collect();
    let grads: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(k, &n)| rnd(n, 400 + k as u64, -8.0, 8.0)).collect();
    // every tensor but the third, in an order of their own
    let tensors: Vec<usize> = (0..130).rev().filter(|&k| k != 2).collect();
    let lrs: Vec<f64> = tensors.iter().map(|&k| 1e-3 * (1.0 + (k % 7) as f64)).collect();
    let cfg = AdamConfig { weight_decay: 1e-4, ..AdamConfig::default() };
    let moments: Vec<usize> = tensors.iter().map(|&k| sizes[k]).collect();
    let (mut cp, mut cg) = (params.clone(), grads.clone());
    assert!(!cpu.unscale_grads(&mut cg, 0.25));
    let mut copt = Adam::with(cfg, &moments, |n| vec![0f32; n]);
    for _ in 0..3 {
        let s = copt.next_step(&lrs);
        cpu.adam_many(&mut cp, &cg, &mut copt, &tensors, AdamSource::Host(&s));
    }
    for device_scalars in [false, true] {
        let mut gp: Vec<DBuf> = params.iter().map(|v| g.upload(v)).collect();
        let mut gg: Vec<DBuf> = grads.iter().map(|v| g.upload(v)).collect();
        assert!(!g.unscale_grads(&mut gg, 0.25));
        for (k, (d, want)) in gg.iter().zip(&cg).enumerate() {
            assert!(g.download(d) == *want, "unscaled gradient {k}");
        }
        let mut gopt = Adam::with(cfg, &moments, |n| g.zeros(n));
        for _ in 0..3 {
            let s = gopt.next_step(&lrs);
            if device_scalars {
                let flat: Vec<f32> = s.iter().flat_map(|x| x.to_array()).collect();
                let (sb, flag) = (g.upload(&flat), g.zeros(1));
                g.adam_many(&mut gp, &gg, &mut gopt, &tensors, AdamSource::Device { scalars: &sb, skip: Some(&flag) });
            } else {
                g.adam_many(&mut gp, &gg, &mut gopt, &tensors, AdamSource::Host(&s));
            }
        }
        for k in 0..130 {
            let what = format!("tensor {k} of {} (device scalars {device_scalars})", sizes[k]);
            if sizes[k] == 0 {
                continue;
            }
            check(&what, &g, &gp[k], &cp[k], 1e-6);
        }
        assert!(g.download(&gp[2]) == params[2], "a tensor not listed stays as it was");
    }
    // an inf in the last list of gradients only
    let mut gg: Vec<DBuf> = grads.iter().map(|v| g.upload(v)).collect();
    let last = (0..130).rev().find(|&k| sizes[k] > 0).unwrap();
    let mut bad = grads[last].clone();
    bad[0] = f32::INFINITY;
    gg[last] = g.upload(&bad);
    assert!(g.unscale_grads(&mut gg, 0.25), "an inf in gradient {last}");
}

/// Whether launch counts pin the dispatch: not while a card triages a failure with kernels
/// withheld (SPAHDMAP_GPU_WITHOUT) or an older image loaded (SPAHDMAP_GPU_KERNELS: the
/// baseline cubin of scripts/gpu-check), when only the numbers are checked.
fn full_kernel_set(g: &Cuda) -> bool {
    !g.withholds_any() && std::env::var_os("SPAHDMAP_GPU_KERNELS").is_none()
}

/// Launches of `kernel` in a profile (`Cuda::take_profile`).
fn launches(p: &[spahdmap::backend::cuda::KernelTime], kernel: &str) -> usize {
    p.iter().filter(|t| t.kernel == kernel).map(|t| t.launches).sum()
}

/// That a 3 × 3 halo kernel of kernels/conv_h16.cu ran `n` times, as itself or as its wgmma
/// twin (kernels/sm90a/conv_wg.cu, `_wg_h16`), and as the twin alone on a card that has it
/// (compute capability 9.0; with the full kernel set, as the callers check counts).
fn assert_halo_launches(g: &Cuda, p: &[spahdmap::backend::cuda::KernelTime], kernel: &str, n: usize) {
    let twin = kernel.strip_suffix("_h16").map(|k| format!("{k}_wg_h16")).expect("an f16 kernel's name");
    assert_eq!(launches(p, kernel) + launches(p, &twin), n, "{kernel} and {twin}: {p:?}");
    if g.has_wgmma() {
        assert_eq!(launches(p, &twin), n, "{twin} on a card with the sm_90a kernels: {p:?}");
    }
}

/// Values as f16 storage holds them (nearest even).
fn f16_rounded(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect()
}

/// An f16 buffer of NaN: a layer that leaves an element unwritten shows.
fn nan_half(g: &Cuda, n: usize) -> DBuf {
    g.upload_half(&vec![f32::NAN; n])
}

/// f16 activation storage (inference, `Backend::half_activations`): the layers the f16 kernels
/// run (convolutions reading a multiple of 32 channels, the transposed convolution, the
/// concatenation) and the ones an f16 buffer reaches through f32 copies (the image's 3
/// channels, 20 channels in, the half instance norm), against the CPU on the same f16-rounded
/// inputs and weights: what differs is the output's rounding to f16 (≤ 2⁻¹¹ relative) and the
/// summation order.
#[test]
fn f16_storage_layers_match_the_cpu() {
    let Some(g) = gpu() else { return };
    // the implicit GEMM's 3 × 3 layers (the halo kernels, the default for them, have their own test)
    g.use_halo(false);
    let cpu = Cpu::new();
    let spec = |cin, cout, k, stride, pad| ConvSpec { cin, cout, k, stride, pad };
    let cases = [
        (Shape { n: 2, h: 19, w: 21, c: 32 }, spec(32, 64, 3, 1, 1), true, true),
        (Shape { n: 1, h: 16, w: 17, c: 64 }, spec(64, 64, 4, 2, 1), false, false),
        (Shape { n: 2, h: 9, w: 13, c: 32 }, spec(32, 20, 1, 1, 0), false, true),
        (Shape { n: 1, h: 12, w: 10, c: 96 }, spec(96, 5, 3, 1, 1), true, true),
        // cin a multiple of 4, not of 32: the GEMM in four-channel pieces (`conv2d_fwd4_*`)
        (Shape { n: 1, h: 17, w: 11, c: 20 }, spec(20, 20, 3, 1, 1), true, true),
        (Shape { n: 2, h: 13, w: 12, c: 12 }, spec(12, 72, 4, 2, 1), false, true),
        (Shape { n: 1, h: 9, w: 10, c: 4 }, spec(4, 8, 1, 1, 0), true, false),
        (Shape { n: 2, h: 15, w: 14, c: 3 }, spec(3, 32, 3, 1, 1), false, false),
    ];
    // the image's layer once more on the speed path, where the direct kernel writes f16 itself
    let wide = gpu_with(Precision::Tf32Wide).expect("a second backend on the same device");
    let image_layer = (Shape { n: 2, h: 15, w: 14, c: 3 }, spec(3, 32, 3, 1, 1), true, true);
    for (i, (xs, sp, leaky, with_res)) in cases.into_iter().chain([image_layer]).enumerate() {
        let g = if i == cases.len() { &wide } else { &g };
        let i = i as u64;
        let (oh, ow) = sp.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: sp.cout };
        let x = f16_rounded(rnd(xs.len(), 10 + i, -1.0, 1.0));
        let w = f16_rounded(rnd(sp.weight_len(), 20 + i, -0.2, 0.2));
        let b = rnd(sp.cout, 30 + i, -0.5, 0.5);
        let res = with_res.then(|| f16_rounded(rnd(ys.len(), 40 + i, -1.0, 1.0)));
        let mut want = vec![0f32; ys.len()];
        cpu.conv2d(&x, xs, &sp, &w, Some(&b), Epilogue { leaky, residual: res.as_ref() }, &mut want);
        // the image arrives in f32; every activation after it is f16
        let xg = if xs.c == 3 { g.upload(&x) } else { g.upload_half(&x) };
        let (wg, bg, rg) = (g.upload(&w), g.upload(&b), res.as_ref().map(|r| g.upload_half(r)));
        let mut y = nan_half(g, ys.len());
        g.conv2d(&xg, xs, &sp, &wg, Some(&bg), Epilogue { leaky, residual: rg.as_ref() }, &mut y);
        assert!(y.is_half());
        check(&format!("f16 storage conv {} -> {}, k {} ({})", sp.cin, sp.cout, sp.k, g.name()), g, &y, &want, 2e-3);
    }
    // a layer reading the concatenation [a | b] without it written (the decoder's inference
    // path: `conv2d_fwd_cat_*`), and through the written concatenation where a part is f32
    for (i, (xs, ca, sp, with_res)) in [
        (Shape { n: 2, h: 17, w: 13, c: 64 }, 32, spec(64, 32, 3, 1, 1), true),
        (Shape { n: 1, h: 9, w: 12, c: 64 }, 32, spec(64, 32, 1, 1, 0), true),
        (Shape { n: 2, h: 10, w: 11, c: 96 }, 64, spec(96, 72, 4, 2, 1), false),
    ]
    .into_iter()
    .enumerate()
    {
        let i = i as u64;
        let (oh, ow) = sp.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: sp.cout };
        let px = xs.n * xs.h * xs.w;
        let (a, bb) =
            (f16_rounded(rnd(px * ca, 110 + i, -1.0, 1.0)), f16_rounded(rnd(px * (xs.c - ca), 120 + i, -1.0, 1.0)));
        let mut x = vec![0f32; xs.len()];
        cpu.concat_channels(&a, ca, &bb, xs.c - ca, &mut x);
        let w = f16_rounded(rnd(sp.weight_len(), 130 + i, -0.2, 0.2));
        let b = rnd(sp.cout, 140 + i, -0.5, 0.5);
        let res = with_res.then(|| f16_rounded(rnd(ys.len(), 150 + i, -1.0, 1.0)));
        let mut want = vec![0f32; ys.len()];
        cpu.conv2d(&x, xs, &sp, &w, Some(&b), Epilogue { leaky: true, residual: res.as_ref() }, &mut want);
        let (wg, bg, rg) = (g.upload(&w), g.upload(&b), res.as_ref().map(|r| g.upload_half(r)));
        for halves in [true, false] {
            let (ag, bgp) =
                if halves { (g.upload_half(&a), g.upload_half(&bb)) } else { (g.upload(&a), g.upload(&bb)) };
            assert_eq!(g.reads_concatenations(&ag, ca, &bgp, xs.c - ca), halves);
            let mut y = nan_half(&g, ys.len());
            g.conv2d_cat(
                &ag,
                ca,
                &bgp,
                xs,
                &sp,
                &wg,
                Some(&bg),
                Epilogue { leaky: true, residual: rg.as_ref() },
                &mut y,
            );
            let what = format!("conv of [{ca} | {}] -> {}, k {} (f16 parts {halves})", xs.c - ca, sp.cout, sp.k);
            check(&what, &g, &y, &want, 2e-3);
        }
    }
    for (i, (xs, cout)) in
        [(Shape { n: 2, h: 5, w: 7, c: 64 }, 32), (Shape { n: 1, h: 9, w: 6, c: 32 }, 20)].into_iter().enumerate()
    {
        let i = i as u64;
        let x = f16_rounded(rnd(xs.len(), 50 + i, -1.0, 1.0));
        let w = f16_rounded(rnd(xs.c * 4 * cout, 60 + i, -0.2, 0.2));
        let b = rnd(cout, 70 + i, -0.5, 0.5);
        let mut want = vec![0f32; 4 * xs.n * xs.h * xs.w * cout];
        cpu.conv_transpose2(&x, xs, cout, &w, &b, &mut want);
        let mut y = nan_half(&g, want.len());
        g.conv_transpose2(&g.upload_half(&x), xs, cout, &g.upload(&w), &g.upload(&b), &mut y);
        check(&format!("f16 storage transposed conv {} -> {cout}", xs.c), &g, &y, &want, 2e-3);
    }
    let (pa, pb) = (rnd(7 * 32, 80, -1.0, 1.0), rnd(7 * 32, 81, -1.0, 1.0));
    let (pa, pb) = (f16_rounded(pa), f16_rounded(pb));
    let mut want = vec![0f32; 7 * 64];
    cpu.concat_channels(&pa, 32, &pb, 32, &mut want);
    let mut cat = nan_half(&g, want.len());
    g.concat_channels(&g.upload_half(&pa), 32, &g.upload_half(&pb), 32, &mut cat);
    check("f16 storage concatenation", &g, &cat, &want, 1e-7);
    // the half instance norm through f32 copies, statistics included
    let s = Shape { n: 2, h: 11, w: 9, c: 64 };
    let x = f16_rounded(rnd(s.len(), 90, -2.0, 3.0));
    let (gamma, beta) = (rnd(32, 91, 0.5, 1.5), rnd(32, 92, -0.5, 0.5));
    let (mut want, mut stats) = (vec![0f32; s.len()], vec![0f32; 2 * s.n * 32]);
    cpu.hin_forward(&x, s, &gamma, &beta, true, &mut want, &mut stats);
    let (mut y, mut st) = (nan_half(&g, s.len()), nan_half(&g, stats.len()));
    g.hin_forward(&g.upload_half(&x), s, &g.upload(&gamma), &g.upload(&beta), true, &mut y, &mut st);
    check("f16 storage half instance norm", &g, &y, &want, 2e-3);
    check("f16 storage half instance norm statistics", &g, &st, &stats, 2e-3);
    // the VD prior on f16 or f32 logits, from an f16 or f32 VD map, into f32 scores; the f16
    // map comes up as the score stage sends it (`upload_overlapped` of f16 values)
    let l = f16_rounded(rnd(999, 93, -4.0, 4.0));
    let vd = f16_rounded(rnd(999, 94, 0.0, 1.0));
    let mut want = vec![0f32; 999];
    cpu.prior_sigmoid(&l, &vd, &mut want);
    let vd16: Vec<half::f16> = vd.iter().map(|&v| half::f16::from_f32(v)).collect();
    for (lh, vh) in [(true, false), (true, true), (false, true), (false, false)] {
        let lb = if lh { g.upload_half(&l) } else { g.upload(&l) };
        let vb = if vh {
            let mut d = g.alloc_upload(Host::F16(&vd16));
            g.upload_overlapped(Host::F16(&vd16), &mut d, None);
            assert!(d.is_half());
            d
        } else {
            g.upload(&vd)
        };
        let mut hr = nan(&g, 999);
        g.prior_sigmoid(&lb, &vb, &mut hr);
        assert!(!hr.is_half());
        check(&format!("VD prior, f16 logits {lh}, f16 map {vh}"), &g, &hr, &want, 1e-6);
        assert_eq!(g.download(&vb), vd, "the f16 map reads back exactly");
    }
}

/// A residual block's tail (`Backend::block_tail`: a2 = LeakyReLU(conv2(a1) + b2), out = a2 +
/// identity(x) + b_id) as one halo kernel (`conv3_halo_block_h16`), x one tensor or a
/// concatenation read in place, a2 kept or not; against the CPU's two convolutions on the same
/// f16-rounded values (the GPU rounds a2 to f16 before adding the identity, as the two-kernel
/// path reads it); conv2 from 20 channels on `conv3_halo_block4_h16`. Tails the kernels do not
/// take (3 channels; 20 output channels with a2 kept) run as two layers.
#[test]
fn block_tails_run_as_one_halo_kernel() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    let cpu = Cpu::new();
    g.set_profiling(true);
    let c3 = |cin, cout| ConvSpec { cin, cout, k: 3, stride: 1, pad: 1 };
    let c1 = |cin, cout| ConvSpec { cin, cout, k: 1, stride: 1, pad: 0 };
    // (pixels, conv2's channels, the identity's input channels, second part's (0: one tensor),
    // out channels, a2 kept)
    let cases = [
        ((2, 35, 37), 32, 32, 0, 32, true),
        ((1, 18, 17), 64, 32, 0, 64, false),
        ((2, 17, 13), 32, 64, 32, 32, true),
        ((1, 20, 19), 64, 128, 64, 64, false),
        ((1, 16, 21), 32, 32, 0, 72, true),
        ((2, 9, 11), 3, 32, 0, 3, true),
        // conv2 from 20 channels (`conv3_halo_block4_h16`): the low-rank head's tail in inference,
        // then kept for training, where 20 output channels take the two layers
        ((2, 17, 19), 20, 32, 0, 20, false),
        ((1, 9, 18), 20, 32, 0, 20, true),
    ];
    for (i, ((n, h, w), c2, cid, cb, cout, keep)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let os = Shape { n, h, w, c: cout };
        let (a1s, xs) = (os.with_c(c2), os.with_c(cid));
        let px = n * h * w;
        let ca = cid - cb;
        let a1 = f16_rounded(rnd(a1s.len(), 400 + i, -1.0, 1.0));
        let (xa, xb) = (f16_rounded(rnd(px * ca, 410 + i, -1.0, 1.0)), f16_rounded(rnd(px * cb, 420 + i, -1.0, 1.0)));
        let (sp2, spi) = (c3(c2, cout), c1(cid, cout));
        let w2 = f16_rounded(rnd(sp2.weight_len(), 430 + i, -0.2, 0.2));
        let wi = f16_rounded(rnd(spi.weight_len(), 440 + i, -0.2, 0.2));
        let (b2, bi) = (rnd(cout, 450 + i, -0.5, 0.5), rnd(cout, 460 + i, -0.5, 0.5));
        let (mut a2, mut out) = (vec![0f32; os.len()], vec![0f32; os.len()]);
        let tail = |a1, x, x2| BlockTail {
            a1,
            os,
            conv2: &sp2,
            w2: &w2,
            b2: Some(&b2),
            x,
            x2,
            xs,
            identity: &spi,
            w_id: &wi,
            b_id: Some(&bi),
            norm: None,
        };
        cpu.block_tail(tail(&a1, &xa, (cb > 0).then_some((&xb, ca))), Some(&mut a2), &mut out);
        let (a1g, xag, xbg) = (g.upload_half(&a1), g.upload_half(&xa), g.upload_half(&xb));
        let (w2g, wig, b2g, big) = (g.upload(&w2), g.upload(&wi), g.upload(&b2), g.upload(&bi));
        let (mut a2g, mut outg) = (nan_half(&g, os.len()), nan_half(&g, os.len()));
        let t = BlockTail {
            a1: &a1g,
            os,
            conv2: &sp2,
            w2: &w2g,
            b2: Some(&b2g),
            x: &xag,
            x2: (cb > 0).then_some((&xbg, ca)),
            xs,
            identity: &spi,
            w_id: &wig,
            b_id: Some(&big),
            norm: None,
        };
        g.block_tail(t, keep.then_some(&mut a2g), &mut outg);
        let what = format!("block tail {c2} -> {cout}, identity from {ca} + {cb}, a2 kept: {keep}");
        check(&format!("{what}: out"), &g, &outg, &out, 2e-3);
        if keep {
            check(&format!("{what}: a2"), &g, &a2g, &a2, 2e-3);
        } else {
            assert!(g.download(&a2g).iter().all(|v| v.is_nan()), "{what}: a2 written where not kept");
        }
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        assert_halo_launches(&g, &p, "conv3_halo_block_h16", 5);
        assert_eq!(launches(&p, "conv3_halo_block4_h16"), 1, "{p:?}");
        // the 3-channel tail and the kept 20-channel one: the identity on its own kernel (the
        // GEMM's narrow tile)
        assert_eq!(launches(&p, "conv2d_fwd_h16n"), 2, "{p:?}");
    }
}

/// Inference's block tail from conv_1's output c1 with half instance norm and LeakyReLU applied
/// as conv2 stages it (`TailNorm`, `conv3_halo_block_norm_h16`): against the CPU's tail on
/// a1 = LeakyReLU(HIN(c1)) rounded to f16 (what the kernel stages), the statistics the CPU's
/// norm wrote; a tail kept for training (a2 wanted) writes a1 first and runs the plain kernel.
#[test]
fn block_tails_normalise_c1_as_they_stage() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    let cpu = Cpu::new();
    g.set_profiling(true);
    let c3 = |cin, cout| ConvSpec { cin, cout, k: 3, stride: 1, pad: 1 };
    let c1s = |cin, cout| ConvSpec { cin, cout, k: 1, stride: 1, pad: 0 };
    // (pixels, conv2's channels, the identity's input channels, out channels, a2 kept)
    let cases = [
        ((2, 35, 37), 32, 32, 32, false),
        ((1, 18, 17), 64, 32, 64, false),
        ((2, 20, 19), 128, 64, 128, false),
        ((1, 17, 16), 32, 32, 32, true),
    ];
    for (i, ((n, h, w), c2, cid, cout, keep)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let os = Shape { n, h, w, c: cout };
        let (c1s_, xs) = (os.with_c(c2), os.with_c(cid));
        let c1 = f16_rounded(rnd(c1s_.len(), 800 + i, -2.0, 3.0));
        let (gamma, beta) = (rnd(c2 / 2, 810 + i, 0.5, 1.5), rnd(c2 / 2, 820 + i, -0.5, 0.5));
        let (mut a1, mut stats) = (vec![0f32; c1s_.len()], vec![0f32; 2 * n * (c2 / 2)]);
        cpu.hin_forward(&c1, c1s_, &gamma, &beta, true, &mut a1, &mut stats);
        let a1 = f16_rounded(a1);
        let x = f16_rounded(rnd(xs.len(), 830 + i, -1.0, 1.0));
        let (sp2, spi) = (c3(c2, cout), c1s(cid, cout));
        let w2 = f16_rounded(rnd(sp2.weight_len(), 840 + i, -0.2, 0.2));
        let wi = f16_rounded(rnd(spi.weight_len(), 850 + i, -0.2, 0.2));
        let (b2, bi) = (rnd(cout, 860 + i, -0.5, 0.5), rnd(cout, 870 + i, -0.5, 0.5));
        let mut out = vec![0f32; os.len()];
        let t = BlockTail {
            a1: &a1,
            os,
            conv2: &sp2,
            w2: &w2,
            b2: Some(&b2),
            x: &x,
            x2: None,
            xs,
            identity: &spi,
            w_id: &wi,
            b_id: Some(&bi),
            norm: None,
        };
        cpu.block_tail(t, None, &mut out);
        let (c1g, xg, sg, gg, btg) =
            (g.upload_half(&c1), g.upload_half(&x), g.upload(&stats), g.upload(&gamma), g.upload(&beta));
        let (w2g, wig, b2g, big) = (g.upload(&w2), g.upload(&wi), g.upload(&b2), g.upload(&bi));
        let (mut a2g, mut outg) = (nan_half(&g, os.len()), nan_half(&g, os.len()));
        let t = BlockTail {
            a1: &c1g,
            os,
            conv2: &sp2,
            w2: &w2g,
            b2: Some(&b2g),
            x: &xg,
            x2: None,
            xs,
            identity: &spi,
            w_id: &wig,
            b_id: Some(&big),
            norm: Some(TailNorm { stats: &sg, gamma: &gg, beta: &btg }),
        };
        g.block_tail(t, keep.then_some(&mut a2g), &mut outg);
        check(&format!("block tail from c1, {c2} -> {cout}, a2 kept: {keep}"), &g, &outg, &out, 2e-3);
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        assert_halo_launches(&g, &p, "conv3_halo_block_norm_h16", 3);
        // the kept tail: a1 written, then the plain kernel
        assert_eq!(launches(&p, "hin_apply_h16"), 1, "{p:?}");
        assert_halo_launches(&g, &p, "conv3_halo_block_h16", 1);
    }
}

/// A layer with half instance norm after it (`conv2d_hin`): the halo forward sums the norm's
/// statistics as it writes c1 (`conv3_halo_fwd_stats_h16`, `finish_moments_shifted`), no
/// pass reading c1 back for them; against the CPU's convolution, then its norm of the same
/// f16-rounded c1. A layer the kernel does not take (20 output channels) runs as the two.
#[test]
fn norm_statistics_ride_on_the_halo_forward() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    let cpu = Cpu::new();
    g.set_profiling(true);
    let c3 = |cin, cout| ConvSpec { cin, cout, k: 3, stride: 1, pad: 1 };
    let cases = [((2, 35, 37), 32, 32), ((1, 18, 17), 32, 64), ((3, 20, 19), 64, 128), ((2, 9, 11), 32, 20)];
    for (i, ((n, h, w), cin, cout)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let (xs, sp) = (Shape { n, h, w, c: cin }, c3(cin, cout));
        let os = xs.with_c(cout);
        let half = cout / 2;
        let x = f16_rounded(rnd(xs.len(), 600 + i, -1.0, 1.0));
        let (wt, bias) = (rnd(sp.weight_len(), 610 + i, -0.2, 0.2), rnd(cout, 620 + i, -0.5, 0.5));
        let (gamma, beta) = (rnd(half, 630 + i, 0.5, 1.5), rnd(half, 640 + i, -0.5, 0.5));
        let mut c1 = vec![0f32; os.len()];
        cpu.conv2d(&x, xs, &sp, &wt, Some(&bias), Epilogue::NONE, &mut c1);
        let c1h = f16_rounded(c1.clone());
        let (mut y, mut st) = (vec![0f32; os.len()], vec![0f32; 2 * n * half]);
        cpu.hin_forward(&c1h, os, &gamma, &beta, true, &mut y, &mut st);
        let (wg, bg, gg, btg) = (g.upload(&wt), g.upload(&bias), g.upload(&gamma), g.upload(&beta));
        let (mut c1g, mut yg, mut stg) = (nan_half(&g, os.len()), nan_half(&g, os.len()), nan(&g, st.len()));
        g.conv2d_hin(&g.upload_half(&x), xs, &sp, &wg, Some(&bg), (&gg, &btg), true, &mut c1g, Some(&mut yg), &mut stg);
        let what = format!("conv + norm {cin} -> {cout} ({n} x {h} x {w})");
        check(&format!("{what}: c1"), &g, &c1g, &c1, 2e-3);
        check(&format!("{what}: statistics"), &g, &stg, &st, 1e-4);
        check(&format!("{what}: y"), &g, &yg, &y, 2e-3);
        // without y (inference's blocks whose tail normalises): the same c1 and statistics
        let (mut c1n, mut stn) = (nan_half(&g, os.len()), nan(&g, st.len()));
        g.conv2d_hin(&g.upload_half(&x), xs, &sp, &wg, Some(&bg), (&gg, &btg), true, &mut c1n, None, &mut stn);
        assert_eq!(g.download(&c1n), g.download(&c1g), "{what}: c1 without y");
        // (f64 atomics in another order: equal to a few f32 units)
        check(&format!("{what}: statistics without y"), &g, &stn, &g.download(&stg), 1e-6);
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        assert_halo_launches(&g, &p, "conv3_halo_fwd_stats_h16", 6);
        assert_eq!(launches(&p, "finish_moments_shifted"), 6, "{p:?}");
        // the 20-channel layer: the plain forward, then the norm's own statistics pass (twice);
        // its apply pass only where y is wanted
        assert_halo_launches(&g, &p, "conv3_halo_fwd_h16", 2);
        assert_eq!(launches(&p, "finish_moments_h16"), 2, "{p:?}");
        assert_eq!(launches(&p, "hin_apply_h16"), 4, "{p:?}");
    }
}

/// `zero_grads` zeroes a backward pass's gradients in one launch and the layers then sum into
/// them without a memset each (gradients of NaN before it: any value left would show); once
/// `grads_written` closes the pass, a layer writing the same buffers zeroes them again.
#[test]
fn gradients_zeroed_at_once_skip_the_layers_memsets() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    let cpu = Cpu::new();
    // a 3 × 3 halo layer (dW and dB on its kernel) and a 1 × 1 one (dW on the GEMM, dB by column sums)
    let cases = [
        (Shape { n: 2, h: 17, w: 19, c: 32 }, ConvSpec { cin: 32, cout: 32, k: 3, stride: 1, pad: 1 }),
        (Shape { n: 1, h: 9, w: 12, c: 64 }, ConvSpec { cin: 64, cout: 32, k: 1, stride: 1, pad: 0 }),
    ];
    for (i, (xs, sp)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let (oh, ow) = sp.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: sp.cout };
        let x = f16_rounded(rnd(xs.len(), 800 + i, -1.0, 1.0));
        let w = f16_rounded(rnd(sp.weight_len(), 810 + i, -0.2, 0.2));
        let dy = f16_rounded(rnd(ys.len(), 820 + i, -1.0, 1.0));
        let (mut dw, mut db) = (vec![0f32; sp.weight_len()], vec![0f32; sp.cout]);
        cpu.conv2d_backward(&x, xs, &sp, &w, &dy, None, DxEpilogue::NONE, &mut dw, Some(&mut db));
        let (xg, wg, dyg) = (g.upload_half(&x), g.upload(&w), g.upload_half(&dy));
        let mut grads = vec![nan(&g, sp.weight_len()), nan(&g, sp.cout)];
        for zeroed in [true, false] {
            g.set_profiling(true);
            if zeroed {
                g.zero_grads(&mut grads);
            }
            let [gw, gb] = &mut grads[..] else { unreachable!() };
            g.conv2d_backward(&xg, xs, &sp, &wg, &dyg, None, DxEpilogue::NONE, gw, Some(gb));
            g.grads_written(&mut grads);
            let p = g.take_profile();
            g.set_profiling(false);
            let what = format!("{} x {} layer, gradients zeroed at once: {zeroed}", sp.k, sp.k);
            check(&format!("{what}: dW"), &g, &grads[0], &dw, 1e-4);
            check(&format!("{what}: dB"), &g, &grads[1], &db, 1e-5);
            if full_kernel_set(&g) {
                assert_eq!(launches(&p, "zero_multi_f32"), usize::from(zeroed), "{what}: {p:?}");
                assert_eq!(launches(&p, "memset"), if zeroed { 0 } else { 2 }, "{what}: {p:?}");
            }
        }
    }
    // more tensors than a list holds (two launches), empty ones among them
    let sizes: Vec<usize> = (0..130).map(|k| if k % 17 == 0 { 0 } else { 1 + (k * 7919) % 20000 }).collect();
    let mut many: Vec<DBuf> = sizes.iter().map(|&n| nan(&g, n)).collect();
    g.zero_grads(&mut many);
    g.grads_written(&mut many);
    for (k, t) in many.iter().enumerate() {
        assert!(g.download(t).iter().all(|&v| v == 0.0), "tensor {k} of {} values not zeroed", sizes[k]);
    }
}

/// A withheld kernel (`Cuda::withhold`, SPAHDMAP_GPU_WITHOUT) is not launched: its layers take
/// the path an image without it would, to the same numbers; handing it back restores it.
#[test]
fn withheld_kernels_fall_back_to_the_older_path() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    g.use_halo_down(true);
    let cpu = Cpu::new();
    let (xs, sp) = (Shape { n: 2, h: 34, w: 30, c: 32 }, ConvSpec { cin: 32, cout: 32, k: 4, stride: 2, pad: 1 });
    let os = Shape { n: 2, h: 17, w: 15, c: 32 };
    let x = f16_rounded(rnd(xs.len(), 790, -1.0, 1.0));
    let wt = f16_rounded(rnd(sp.weight_len(), 791, -0.2, 0.2));
    let bias = rnd(32, 792, -0.5, 0.5);
    let mut y = vec![0f32; os.len()];
    cpu.conv2d(&x, xs, &sp, &wt, Some(&bias), Epilogue { leaky: true, residual: None }, &mut y);
    let (xg, wg, bg) = (g.upload_half(&x), g.upload(&wt), g.upload(&bias));
    let halo = "conv4_down_halo_fwd_h16";
    let big = g.shared_memory_per_block() >= 143_744;
    for withheld in [true, false] {
        let names: &[&str] = if withheld { &["conv4_down_halo_fwd_h16"] } else { &[] };
        g.withhold(names);
        assert_eq!(g.withholds_any(), withheld);
        g.set_profiling(true);
        let mut yg = nan_half(&g, os.len());
        g.conv2d(&xg, xs, &sp, &wg, Some(&bg), Epilogue { leaky: true, residual: None }, &mut yg);
        let p = g.take_profile();
        g.set_profiling(false);
        check(&format!("4 x 4 / 2 forward, {halo} withheld: {withheld}"), &g, &yg, &y, 2e-3);
        if std::env::var_os("SPAHDMAP_GPU_KERNELS").is_some() {
            continue; // an older image may lack the kernel: the numbers alone
        }
        assert_eq!(launches(&p, halo), usize::from(big && !withheld), "{p:?}");
        if withheld {
            assert!(p.iter().any(|t| t.kernel.starts_with("conv2d_fwd")), "the GEMM ran it: {p:?}");
        }
    }
}

/// The 3 × 3 halo kernels on wgmma (kernels/sm90a/conv_wg.cu: B read by the tensor cores from
/// shared memory through a descriptor, weights packed K-major) against the CPU and against the
/// mma.sync kernels they replace (withheld, the same layers again): forward with bias, LeakyReLU
/// and a residual, a concatenation read in place, N past a column block's last, the statistics
/// forward, the data gradient with LeakyReLU's derivative and accumulation. Skips where the card
/// has no sm_90a image (not compute capability 9.0).
#[test]
fn halo_layers_on_wgmma_match_the_cpu_and_the_mma_kernels() {
    let Some(g) = gpu() else { return };
    // a 9.0 card running the embedded kernels must have loaded the sm_90a image (Cuda::new
    // otherwise runs without it, and the halo tests' counts would not notice)
    let card = spahdmap::backend::cuda::probe().ok().and_then(|d| d.into_iter().next());
    if card.is_some_and(|c| c.compute_capability == (9, 0))
        && !spahdmap::backend::cuda::FATBIN_SM90A.is_empty()
        && std::env::var_os("SPAHDMAP_GPU_KERNELS").is_none()
    {
        assert!(g.has_wgmma(), "the sm_90a image did not load on {}", g.name());
    }
    if !g.has_wgmma() {
        eprintln!("skipped: no sm_90a kernels on {}", g.name());
        return;
    }
    // gpu-check's triage withholding them: a failure here must clear with the wg family
    if std::env::var("SPAHDMAP_GPU_WITHOUT").is_ok_and(|v| v.contains("_wg_")) {
        eprintln!("skipped: the wgmma kernels are withheld (SPAHDMAP_GPU_WITHOUT)");
        return;
    }
    g.use_halo(true);
    let cpu = Cpu::new();
    let wg = ["conv3_halo_fwd_wg_h16", "conv3_halo_fwd_stats_wg_h16", "conv3_halo_dx_wg_h16", "conv3_halo_dw_wg_h16"];
    let c3 = |cin, cout| ConvSpec { cin, cout, k: 3, stride: 1, pad: 1 };
    // (n, h, w), cin (ca: a concatenation's first part, 0: one tensor), cout
    let cases =
        [((2, 35, 37), 32, 0, 32), ((1, 18, 33), 64, 32, 72), ((3, 20, 19), 64, 0, 20), ((1, 16, 16), 128, 0, 128)];
    for (i, ((n, h, w), cin, ca, cout)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let (xs, sp) = (Shape { n, h, w, c: cin }, c3(cin, cout));
        let os = xs.with_c(cout);
        let x = f16_rounded(rnd(xs.len(), 900 + i, -1.0, 1.0));
        let wt = f16_rounded(rnd(sp.weight_len(), 910 + i, -0.2, 0.2));
        let bias = rnd(cout, 920 + i, -0.5, 0.5);
        let res = f16_rounded(rnd(os.len(), 930 + i, -1.0, 1.0));
        let mut y = vec![0f32; os.len()];
        cpu.conv2d(&x, xs, &sp, &wt, Some(&bias), Epilogue { leaky: true, residual: Some(&res) }, &mut y);
        let (wg_, bg, rg) = (g.upload(&wt), g.upload(&bias), g.upload_half(&res));
        let px = n * h * w;
        let (xa, xb): (Vec<f32>, Vec<f32>) = if ca > 0 {
            let a = (0..px).flat_map(|q| x[q * cin..q * cin + ca].to_vec()).collect();
            let b = (0..px).flat_map(|q| x[q * cin + ca..(q + 1) * cin].to_vec()).collect();
            (a, b)
        } else {
            (x.clone(), Vec::new())
        };
        let (xag, xbg) = (g.upload_half(&xa), g.upload_half(&xb));
        let mut got = Vec::new();
        for withheld in [false, true] {
            g.withhold(if withheld { &wg[..] } else { &[] });
            g.set_profiling(true);
            let mut yg = nan_half(&g, os.len());
            let epi = Epilogue { leaky: true, residual: Some(&rg) };
            if ca > 0 {
                g.conv2d_cat(&xag, ca, &xbg, xs, &sp, &wg_, Some(&bg), epi, &mut yg);
            } else {
                g.conv2d(&xag, xs, &sp, &wg_, Some(&bg), epi, &mut yg);
            }
            let p = g.take_profile();
            g.set_profiling(false);
            let what = format!("wgmma forward {cin} -> {cout} ({n} x {h} x {w}), withheld: {withheld}");
            check(&what, &g, &yg, &y, 2e-3);
            assert_eq!(launches(&p, wg[0]), usize::from(!withheld), "{what}: {p:?}");
            got.push(g.download(&yg));
        }
        let diff = rel(&got[0], &got[1]);
        assert!(diff < 2e-3, "wgmma and mma.sync forwards {cin} -> {cout}: {diff:e}");
        // the weight and bias gradients (cout a multiple of 8: 72 has a partial column block),
        // and where dY has a multiple of 32 channels the data gradient with LeakyReLU' at x and
        // accumulation into dX
        if cout % 8 == 0 {
            let want_dx = cout % 32 == 0;
            let dy = f16_rounded(rnd(os.len(), 940 + i, -1.0, 1.0));
            let old = f16_rounded(rnd(xs.len(), 950 + i, -1.0, 1.0));
            let dxe = DxEpilogue { leaky: true, accumulate: true };
            let (mut dx, mut dw, mut db) = (old.clone(), vec![0f32; sp.weight_len()], vec![0f32; cout]);
            let dx_cpu = want_dx.then_some(&mut dx);
            cpu.conv2d_backward(&x, xs, &sp, &wt, &dy, dx_cpu, dxe, &mut dw, Some(&mut db));
            let (xg, dyg) = (g.upload_half(&x), g.upload_half(&dy));
            for withheld in [false, true] {
                g.withhold(if withheld { &wg[..] } else { &[] });
                g.set_profiling(true);
                let (mut dxg, mut dwg, mut dbg) = (g.upload_half(&old), nan(&g, sp.weight_len()), nan(&g, cout));
                let dx_gpu = want_dx.then_some(&mut dxg);
                g.conv2d_backward(&xg, xs, &sp, &wg_, &dyg, dx_gpu, dxe, &mut dwg, Some(&mut dbg));
                let p = g.take_profile();
                g.set_profiling(false);
                let what = format!("wgmma gradients {cin} <- {cout}, withheld: {withheld}");
                if want_dx {
                    check(&format!("{what}: dX"), &g, &dxg, &dx, 2e-3);
                }
                check(&format!("{what}: dW"), &g, &dwg, &dw, 1e-4);
                check(&format!("{what}: dB"), &g, &dbg, &db, 1e-5);
                assert_eq!(launches(&p, wg[2]), usize::from(want_dx && !withheld), "{what}: {p:?}");
                assert_eq!(launches(&p, wg[3]), usize::from(!withheld), "{what}: {p:?}");
            }
        }
    }
    // the statistics forward
    let (xs, sp) = (Shape { n: 2, h: 35, w: 37, c: 32 }, c3(32, 32));
    let os = xs.with_c(32);
    let x = f16_rounded(rnd(xs.len(), 960, -1.0, 1.0));
    let (wt, bias) = (rnd(sp.weight_len(), 961, -0.2, 0.2), rnd(32, 962, -0.5, 0.5));
    let (gamma, beta) = (rnd(16, 963, 0.5, 1.5), rnd(16, 964, -0.5, 0.5));
    let mut c1 = vec![0f32; os.len()];
    cpu.conv2d(&x, xs, &sp, &wt, Some(&bias), Epilogue::NONE, &mut c1);
    let c1h = f16_rounded(c1.clone());
    let (mut y, mut st) = (vec![0f32; os.len()], vec![0f32; 2 * 2 * 16]);
    cpu.hin_forward(&c1h, os, &gamma, &beta, true, &mut y, &mut st);
    let (wgt, bg, gg, btg) = (g.upload(&wt), g.upload(&bias), g.upload(&gamma), g.upload(&beta));
    g.withhold(&[]);
    g.set_profiling(true);
    let (mut c1g, mut yg, mut stg) = (nan_half(&g, os.len()), nan_half(&g, os.len()), nan(&g, st.len()));
    g.conv2d_hin(&g.upload_half(&x), xs, &sp, &wgt, Some(&bg), (&gg, &btg), true, &mut c1g, Some(&mut yg), &mut stg);
    let p = g.take_profile();
    g.set_profiling(false);
    check("wgmma forward with statistics: c1", &g, &c1g, &c1, 2e-3);
    check("wgmma forward with statistics: statistics", &g, &stg, &st, 1e-4);
    check("wgmma forward with statistics: y", &g, &yg, &y, 2e-3);
    assert_eq!(launches(&p, wg[1]), 1, "{p:?}");
}

/// The 4 × 4 stride-2 downsampling on its halo kernels (`conv4_down_halo_fwd_h16`: planes of
/// even and odd input columns; `conv4_down_halo_dx_h16`: the data gradient's four phases over
/// one halo of dY; `conv4_down_halo_dw_h16`: the weight gradient from the forward's planes),
/// against the CPU's convolution of the same f16-rounded values; odd sides,
/// several chunks and column blocks, the epilogues, and layers the kernels do not take (20
/// input channels forward: the GEMM's four-channel pieces; odd sides backward: the GEMM by
/// phases).
#[test]
fn downsampling_runs_on_its_halo_kernels() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    g.use_halo_down(true);
    // the forward's and weight gradient's 143,744 bytes a block: a card of compute 8.6 or 8.9
    // runs them on the GEMM
    let big = g.shared_memory_per_block() >= 143_744;
    let cpu = Cpu::new();
    g.set_profiling(true);
    // (pixels, input channels, output channels, bias + LeakyReLU + residual)
    let cases = [
        ((2, 64, 64), 32, 32, false),
        ((2, 35, 41), 32, 32, true),
        ((1, 40, 66), 64, 72, true),
        ((3, 18, 18), 16, 20, false),
        ((1, 34, 30), 128, 128, true),
        ((1, 18, 20), 48, 32, false),
        ((2, 18, 22), 20, 32, true),
    ];
    for (i, ((n, h, w), cin, cout, epilogue)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let (xs, sp) = (Shape { n, h, w, c: cin }, ConvSpec { cin, cout, k: 4, stride: 2, pad: 1 });
        let os = Shape { n, h: h / 2, w: w / 2, c: cout };
        let x = f16_rounded(rnd(xs.len(), 700 + i, -1.0, 1.0));
        let wt = f16_rounded(rnd(sp.weight_len(), 710 + i, -0.2, 0.2));
        let (bias, res) = (rnd(cout, 720 + i, -0.5, 0.5), f16_rounded(rnd(os.len(), 730 + i, -1.0, 1.0)));
        let mut y = vec![0f32; os.len()];
        let epi = Epilogue { leaky: epilogue, residual: epilogue.then_some(&res) };
        cpu.conv2d(&x, xs, &sp, &wt, epilogue.then_some(&bias), epi, &mut y);
        let (wg, bg, rg) = (g.upload(&wt), g.upload(&bias), g.upload_half(&res));
        let mut yg = nan_half(&g, os.len());
        let epi = Epilogue { leaky: epilogue, residual: epilogue.then_some(&rg) };
        g.conv2d(&g.upload_half(&x), xs, &sp, &wg, epilogue.then_some(&bg), epi, &mut yg);
        check(&format!("4 x 4 / 2 {cin} -> {cout} ({n} x {h} x {w}), epilogue: {epilogue}"), &g, &yg, &y, 2e-3);
    }
    // the data gradient by phases (`conv4_down_halo_dx_h16`) where the input's sides are even,
    // the GEMM by phases where they are not; dW and dB as before
    let both = DxEpilogue { leaky: true, accumulate: true };
    let grad_cases = [
        ((2, 64, 64), 32, 32, both),
        ((1, 34, 30), 128, 128, DxEpilogue::LEAKY),
        ((2, 18, 22), 20, 32, DxEpilogue::NONE),
        ((1, 20, 36), 72, 64, both),
        ((1, 18, 20), 48, 32, DxEpilogue::LEAKY),
        ((2, 35, 41), 32, 32, DxEpilogue::ACCUMULATE),
    ];
    for (i, ((n, h, w), cin, cout, dxe)) in grad_cases.into_iter().enumerate() {
        let i = i as u64;
        let (xs, sp) = (Shape { n, h, w, c: cin }, ConvSpec { cin, cout, k: 4, stride: 2, pad: 1 });
        let ys = Shape { n, h: h / 2, w: w / 2, c: cout };
        let x = f16_rounded(rnd(xs.len(), 740 + i, -1.0, 1.0));
        let wt = f16_rounded(rnd(sp.weight_len(), 750 + i, -0.2, 0.2));
        let dy = f16_rounded(rnd(ys.len(), 760 + i, -1.0, 1.0));
        let old = f16_rounded(rnd(xs.len(), 770 + i, -1.0, 1.0));
        let (mut dx, mut dw, mut db) = (old.clone(), vec![0f32; sp.weight_len()], vec![0f32; cout]);
        cpu.conv2d_backward(&x, xs, &sp, &wt, &dy, Some(&mut dx), dxe, &mut dw, Some(&mut db));
        let (xg, wg, dyg) = (g.upload_half(&x), g.upload(&wt), g.upload_half(&dy));
        let (mut dxg, mut dwg, mut dbg) = (g.upload_half(&old), nan(&g, sp.weight_len()), nan(&g, cout));
        g.conv2d_backward(&xg, xs, &sp, &wg, &dyg, Some(&mut dxg), dxe, &mut dwg, Some(&mut dbg));
        let what = format!("4 x 4 / 2 gradients {cin} -> {cout} ({n} x {h} x {w})");
        check(&format!("{what}: dX"), &g, &dxg, &dx, 2e-3);
        check(&format!("{what}: dW"), &g, &dwg, &dw, 1e-4);
        check(&format!("{what}: dB"), &g, &dbg, &db, 1e-5);
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        assert_eq!(launches(&p, "conv4_down_halo_fwd_h16"), if big { 6 } else { 0 }, "{p:?}");
        if big {
            assert_eq!(launches(&p, "conv2d_fwd4_h16n"), 1, "{p:?}");
        }
        assert_eq!(launches(&p, "conv4_down_halo_dx_h16"), 5, "{p:?}");
        assert_eq!(launches(&p, "conv2d_bwd_data_phased_h16n"), 1, "{p:?}");
        // dW on the halo kernel wherever x has whole 16-channel chunks (cin 72: the f16 GEMM; cin
        // 20: the GEMM on f32 copies), dB by column sums
        assert_eq!(launches(&p, "conv4_down_halo_dw_h16"), if big { 4 } else { 0 }, "{p:?}");
        if big {
            assert_eq!(launches(&p, "conv2d_bwd_weight_h16"), 1, "{p:?}");
        }
    }
}

/// A residual block's head backward on the halo kernels: conv_1's and the identity's weight and
/// bias gradients reading the input (one tensor, or a concatenation in place), and the input's
/// gradient conv_1ᵀ(dc1) + identityᵀ(d_out) from one kernel (`conv3_halo_dx_block_h16`), written
/// in the input's parts; against the CPU's two layers in turn on the same f16-rounded values.
/// A head the kernels do not take (3 channels at conv_1's output) runs as the two layers.
#[test]
fn block_heads_run_as_one_halo_kernel() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    let cpu = Cpu::new();
    g.set_profiling(true);
    let c3 = |cin, cout| ConvSpec { cin, cout, k: 3, stride: 1, pad: 1 };
    let c1 = |cin, cout| ConvSpec { cin, cout, k: 1, stride: 1, pad: 0 };
    // (pixels, input channels, second part's (0: one tensor), output channels, dX wanted)
    let cases = [
        ((2, 35, 37), 32, 0, 32, true),
        ((1, 18, 17), 32, 0, 64, true),
        ((2, 17, 13), 64, 32, 32, true),
        ((1, 20, 19), 128, 64, 64, true),
        ((1, 16, 21), 64, 32, 32, false),
        ((2, 9, 11), 32, 0, 3, true),
    ];
    for (i, ((n, h, w), cin, cb, cout, want_dx)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let xs = Shape { n, h, w, c: cin };
        let os = xs.with_c(cout);
        let px = n * h * w;
        let ca = cin - cb;
        let (xa, xb) = (f16_rounded(rnd(px * ca, 500 + i, -1.0, 1.0)), f16_rounded(rnd(px * cb, 510 + i, -1.0, 1.0)));
        let (dc1, d_out) =
            (f16_rounded(rnd(os.len(), 520 + i, -1.0, 1.0)), f16_rounded(rnd(os.len(), 530 + i, -1.0, 1.0)));
        let (sp1, spi) = (c3(cin, cout), c1(cin, cout));
        let w1 = rnd(sp1.weight_len(), 540 + i, -0.2, 0.2);
        let wi = rnd(spi.weight_len(), 550 + i, -0.2, 0.2);
        fn head<'a, T>(x: [&'a T; 6], x2: Option<usize>, xs: Shape, sp: [&'a ConvSpec; 2]) -> BlockHead<'a, T> {
            let [x, xb, dc1, d_out, w1, w_id] = x;
            BlockHead { x, x2: x2.map(|ca| (xb, ca)), xs, conv1: sp[0], w1, dc1, identity: sp[1], w_id, d_out }
        }
        let x2 = (cb > 0).then_some(ca);
        let zeros = |n: usize| vec![0f32; n];
        let (mut gw1, mut gb1, mut gwi, mut gbi) =
            (zeros(sp1.weight_len()), zeros(cout), zeros(spi.weight_len()), zeros(cout));
        let (mut dxa, mut dxb) = (zeros(px * ca), zeros(px * cb));
        let grads = BlockHeadGrads { w1: &mut gw1, b1: &mut gb1, w_id: &mut gwi, b_id: &mut gbi };
        let dx = want_dx.then_some((&mut dxa, (cb > 0).then_some(&mut dxb)));
        cpu.block_head_backward(head([&xa, &xb, &dc1, &d_out, &w1, &wi], x2, xs, [&sp1, &spi]), grads, dx);

        let (xag, xbg, dc1g, doutg) =
            (g.upload_half(&xa), g.upload_half(&xb), g.upload_half(&dc1), g.upload_half(&d_out));
        let (w1g, wig) = (g.upload(&w1), g.upload(&wi));
        let (mut gw1g, mut gb1g) = (nan(&g, gw1.len()), nan(&g, cout));
        let (mut gwig, mut gbig) = (nan(&g, gwi.len()), nan(&g, cout));
        let (mut dxag, mut dxbg) = (nan_half(&g, px * ca), (cb > 0).then(|| nan_half(&g, px * cb)));
        let grads = BlockHeadGrads { w1: &mut gw1g, b1: &mut gb1g, w_id: &mut gwig, b_id: &mut gbig };
        let dx = want_dx.then_some((&mut dxag, dxbg.as_mut()));
        g.block_head_backward(head([&xag, &xbg, &dc1g, &doutg, &w1g, &wig], x2, xs, [&sp1, &spi]), grads, dx);
        let what = format!("block head {ca} + {cb} -> {cout}, dX wanted: {want_dx}");
        check(&format!("{what}: conv_1 dW"), &g, &gw1g, &gw1, 1e-4);
        check(&format!("{what}: conv_1 dB"), &g, &gb1g, &gb1, 1e-4);
        check(&format!("{what}: identity dW"), &g, &gwig, &gwi, 1e-4);
        check(&format!("{what}: identity dB"), &g, &gbig, &gbi, 1e-4);
        if want_dx {
            check(&format!("{what}: dX"), &g, &dxag, &dxa, 2e-3);
            if let Some(d) = &dxbg {
                check(&format!("{what}: dX, second part"), &g, d, &dxb, 2e-3);
            }
        } else {
            assert!(g.download(&dxag).iter().all(|v| v.is_nan()), "{what}: dX written where not wanted");
        }
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        assert_halo_launches(&g, &p, "conv3_halo_dx_block_h16", 4);
        // conv_1's weight gradients on the halo kernel, concatenations read in place, nothing split
        assert_halo_launches(&g, &p, "conv3_halo_dw_h16", 5);
        assert_eq!(launches(&p, "concat_channels_h16") + launches(&p, "split_channels_h16"), 0, "{p:?}");
    }
}

/// The 3 × 3 stride-1 layers on the halo kernels (kernels/conv_halo.cuh, `use_halo`): forward
/// from one tensor and from a concatenation read in place, data gradient with and without the
/// fused epilogue, weight and bias gradients, odd sizes, partial tiles and column blocks,
/// against the CPU; the profile shows they ran there and not on the implicit GEMM.
#[test]
fn halo_convolutions_match_the_cpu() {
    let Some(g) = gpu() else { return };
    g.use_halo(true);
    let cpu = Cpu::new();
    let spec = |cin, cout| ConvSpec { cin, cout, k: 3, stride: 1, pad: 1 };
    g.set_profiling(true);
    // (x, layer, second part's channels (0: one tensor), bias + LeakyReLU + residual)
    let fwd = [
        (Shape { n: 2, h: 35, w: 37, c: 32 }, spec(32, 32), 0, true),
        (Shape { n: 1, h: 16, w: 16, c: 64 }, spec(64, 20), 0, false),
        (Shape { n: 1, h: 20, w: 33, c: 32 }, spec(32, 3), 0, true),
        (Shape { n: 2, h: 17, w: 13, c: 64 }, spec(64, 32), 32, true),
        (Shape { n: 1, h: 18, w: 17, c: 64 }, spec(64, 72), 0, true),
        // a multiple of 4 channels, not of 32 (`conv3_halo_fwd4_h16`): the low-rank head's
        (Shape { n: 2, h: 17, w: 19, c: 20 }, spec(20, 20), 0, true),
        (Shape { n: 1, h: 18, w: 9, c: 36 }, spec(36, 40), 0, false),
    ];
    for (i, (xs, sp, cb, epi)) in fwd.into_iter().enumerate() {
        let i = i as u64;
        let ys = Shape { c: sp.cout, ..xs };
        let px = xs.n * xs.h * xs.w;
        let ca = xs.c - cb;
        let (a, bb) = (f16_rounded(rnd(px * ca, 210 + i, -1.0, 1.0)), f16_rounded(rnd(px * cb, 220 + i, -1.0, 1.0)));
        let mut x = a.clone();
        if cb > 0 {
            x = vec![0f32; xs.len()];
            cpu.concat_channels(&a, ca, &bb, cb, &mut x);
        }
        let w = f16_rounded(rnd(sp.weight_len(), 230 + i, -0.2, 0.2));
        let b = rnd(sp.cout, 240 + i, -0.5, 0.5);
        let res = epi.then(|| f16_rounded(rnd(ys.len(), 250 + i, -1.0, 1.0)));
        let mut want = vec![0f32; ys.len()];
        let bias = epi.then_some(&b);
        cpu.conv2d(&x, xs, &sp, &w, bias, Epilogue { leaky: epi, residual: res.as_ref() }, &mut want);
        let (wg, bg, rg) = (g.upload(&w), g.upload(&b), res.as_ref().map(|r| g.upload_half(r)));
        let mut y = nan_half(&g, ys.len());
        let e = Epilogue { leaky: epi, residual: rg.as_ref() };
        let bias = epi.then_some(&bg);
        if cb > 0 {
            let (ag, bgp) = (g.upload_half(&a), g.upload_half(&bb));
            g.conv2d_cat(&ag, ca, &bgp, xs, &sp, &wg, bias, e, &mut y);
        } else {
            g.conv2d(&g.upload_half(&x), xs, &sp, &wg, bias, e, &mut y);
        }
        check(&format!("halo conv {ca} + {cb} -> {} ({} x {})", sp.cout, xs.h, xs.w), &g, &y, &want, 2e-3);
    }
    // gradients: dX on the halo kernel where dY has a multiple of 32 channels, dW and dB where x
    // does (the 20-channel layer's: on f32 copies, its bias by a column-sum pass)
    let both = DxEpilogue { leaky: true, accumulate: true };
    let grad_cases = [
        (Shape { n: 2, h: 33, w: 19, c: 32 }, spec(32, 32), both),
        (Shape { n: 1, h: 18, w: 21, c: 32 }, spec(32, 64), DxEpilogue::LEAKY),
        (Shape { n: 1, h: 12, w: 10, c: 20 }, spec(20, 32), DxEpilogue::NONE),
        (Shape { n: 3, h: 20, w: 33, c: 64 }, spec(64, 24), DxEpilogue::ACCUMULATE),
    ];
    for (i, (xs, sp, dxe)) in grad_cases.into_iter().enumerate() {
        let i = i as u64;
        let ys = Shape { c: sp.cout, ..xs };
        let x = f16_rounded(rnd(xs.len(), 260 + i, -1.0, 1.0));
        let w = f16_rounded(rnd(sp.weight_len(), 270 + i, -0.2, 0.2));
        let dy = f16_rounded(rnd(ys.len(), 280 + i, -1.0, 1.0));
        let old = f16_rounded(rnd(xs.len(), 290 + i, -1.0, 1.0));
        let (mut dx, mut dw, mut db) = (old.clone(), vec![0f32; sp.weight_len()], vec![0f32; sp.cout]);
        cpu.conv2d_backward(&x, xs, &sp, &w, &dy, Some(&mut dx), dxe, &mut dw, Some(&mut db));
        let (xg, wg, dyg) = (g.upload_half(&x), g.upload(&w), g.upload_half(&dy));
        let (mut dxg, mut dwg, mut dbg) = (g.upload_half(&old), nan(&g, sp.weight_len()), nan(&g, sp.cout));
        g.conv2d_backward(&xg, xs, &sp, &wg, &dyg, Some(&mut dxg), dxe, &mut dwg, Some(&mut dbg));
        let what = format!("halo gradients {} -> {} ({} x {})", sp.cin, sp.cout, xs.h, xs.w);
        check(&format!("{what}: dX"), &g, &dxg, &dx, 2e-3);
        check(&format!("{what}: dW"), &g, &dwg, &dw, 1e-4);
        check(&format!("{what}: dB"), &g, &dbg, &db, 1e-5);
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        let fours = fwd.iter().filter(|f| f.1.cin % 32 != 0).count();
        assert_halo_launches(&g, &p, "conv3_halo_fwd_h16", fwd.len() - fours);
        assert_eq!(launches(&p, "conv3_halo_fwd4_h16"), fours, "{p:?}");
        assert_halo_launches(&g, &p, "conv3_halo_dx_h16", 3);
        assert_halo_launches(&g, &p, "conv3_halo_dw_h16", 3);
        assert_eq!(launches(&p, "colsum_runs_f32"), 1, "{p:?}");
        let gemm =
            ["conv2d_fwd_h16", "conv2d_fwd_h16n", "conv2d_fwd_cat_h16n", "conv2d_bwd_data_h16", "conv2d_bwd_data_h16n"];
        assert_eq!(gemm.iter().map(|k| launches(&p, k)).sum::<usize>(), 0, "{p:?}");
    }
}

/// Inference with f16 activations (SPAHDMAP_GPU_HALF) against the CPU's f32 scores: the
/// reference's autocast inference rounds the same way, so 1e-2 bounds it; the scores come back
/// in f32 and `alloc` hands out f32 again after the network.
#[test]
fn half_inference_scores_match_the_cpu() {
    let Some(g) = speed_gpu() else { return };
    g.use_half_storage(true);
    let cpu = Cpu::new();
    let (net, mut host) = UNet::new(3, 5);
    let head = JointHead::new(&mut host, 3, 20, 50, 0, 6);
    let is = Shape { n: 2, h: 64, w: 64, c: 3 };
    let image = rnd(is.len(), 1, 0.0, 1.0);
    let vd = rnd(is.n * is.h * is.w * 20, 2, 0.05, 0.95);
    let (pc, pg) = (host.upload(&cpu), host.upload(&g));
    let want = head.hr_scores(&cpu, &net, &pc, &image, is, &vd);
    let (im, v) = (g.upload(&image), g.upload(&vd));
    // the last pass with the 3 × 3 layers on the halo kernels (the decoder's concatenations read
    // in place by them too)
    for round in 0..3 {
        g.use_halo(round == 2);
        let hr = head.hr_scores(&g, &net, &pg, &im, is, &v);
        assert!(!hr.is_half(), "scores in f32");
        check(&format!("f16-storage inference, pass {round} (halo {})", round == 2), &g, &hr, &want, 1e-2);
        g.release(hr);
    }
    g.use_halo(false);
    let after = g.alloc(16);
    assert!(!after.is_half(), "f16 allocation ends with the network");
    // frozen weights, as the score stage holds them: the same scores, the f16 packings made
    // in the first batch only, and dropped again after
    let unfrozen = g.download(&head.hr_scores(&g, &net, &pg, &im, is, &v));
    let packs = |g: &Cuda| launches(&g.take_profile(), "pack_weights_h16");
    {
        let _frozen = spahdmap::backend::FrozenWeights::on(&g);
        g.set_profiling(true);
        for round in 0..3 {
            let hr = head.hr_scores(&g, &net, &pg, &im, is, &v);
            // the same kernels on the same packed values (f64 atomics may reorder the norm sums)
            check(&format!("frozen weights, pass {round}"), &g, &hr, &unfrozen, 1e-6);
            g.release(hr);
            let n = packs(&g);
            assert!(if round == 0 { n > 0 } else { n == 0 }, "pass {round}: {n} packings");
        }
        g.set_profiling(false);
    }
    g.set_profiling(true);
    let hr = head.hr_scores(&g, &net, &pg, &im, is, &v);
    assert!(packs(&g) > 0, "packed at every batch again once thawed");
    check("thawed weights", &g, &hr, &unfrozen, 1e-6);
    g.set_profiling(false);
    // off, the same call keeps f32 activations
    g.use_half_storage(false);
    let hr = head.hr_scores(&g, &net, &pg, &im, is, &v);
    check("f32-storage inference", &g, &hr, &want, 5e-3);
}

/// An f16 buffer handed to a kernel that reads f32 is refused before anything runs, and the
/// backend stays usable.
#[test]
fn an_f16_buffer_never_reaches_an_f32_kernel() {
    let Some(g) = gpu() else { return };
    let x = g.upload_half(&[0.5; 64]);
    let mut y = g.alloc(64);
    // spatial means have no f16 form and take no f32 copies (only the encoder's f32 pass uses them)
    let mut mean = g.alloc(1);
    let s = Shape { n: 1, h: 8, w: 8, c: 1 };
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.spatial_mean(&x, s, &mut mean)));
    assert!(refused.is_err(), "an f16 buffer went into an f32 reduction");
    // the f32 copy goes through
    let back = g.download(&x);
    assert_eq!(back, vec![0.5; 64]);
    let z = g.upload(&back);
    g.sigmoid(&z, &mut y);
    let got = g.download(&y);
    assert!((got[0] - 1.0 / (1.0 + (-0.5f32).exp())).abs() < 1e-6);
}

/// The image's layer on tensor cores (kernels/conv_img.cuh): an f32 image of 1–3 channels (not
/// rounded to f16 here) into f16 activations, and its weight and bias gradients from f16 dY.
/// The f32 operands go in as hi + lo halves, so the results keep the f32 kernels' precision:
/// each f16 output is the CPU's f32 result rounded (or, within f32 error of a rounding edge, its
/// neighbour), and dW and dB meet the f32 bound (with hi halves alone dW is off by ~2e-4).
#[test]
fn the_image_layer_runs_on_tensor_cores_at_f32_precision() {
    let Some(g) = gpu_with(Precision::Tf32Wide) else { return };
    let cpu = Cpu::new();
    g.set_profiling(true);
    for (i, (xs, cout, leaky)) in [
        (Shape { n: 3, h: 37, w: 45, c: 3 }, 32, false),
        (Shape { n: 2, h: 16, w: 32, c: 3 }, 32, true),
        (Shape { n: 1, h: 23, w: 19, c: 1 }, 16, true),
        (Shape { n: 2, h: 9, w: 40, c: 2 }, 24, false),
    ]
    .into_iter()
    .enumerate()
    {
        let i = i as u64;
        let sp = ConvSpec { cin: xs.c, cout, k: 3, stride: 1, pad: 1 };
        let ys = xs.with_c(cout);
        let x = rnd(xs.len(), 300 + i, 0.0, 1.0);
        let w = rnd(sp.weight_len(), 310 + i, -0.2, 0.2);
        let b = rnd(cout, 320 + i, -0.1, 0.1);
        let dy = f16_rounded(rnd(ys.len(), 330 + i, -1e-2, 1e-2));
        let mut want = vec![0f32; ys.len()];
        cpu.conv2d(&x, xs, &sp, &w, Some(&b), Epilogue { leaky, residual: None }, &mut want);
        let (mut dw, mut db) = (vec![0f32; sp.weight_len()], vec![0f32; cout]);
        cpu.conv2d_backward(&x, xs, &sp, &w, &dy, None, DxEpilogue::NONE, &mut dw, Some(&mut db));
        let (xg, wg, bg, dyg) = (g.upload(&x), g.upload(&w), g.upload(&b), g.upload_half(&dy));
        let mut y = nan_half(&g, ys.len());
        g.conv2d(&xg, xs, &sp, &wg, Some(&bg), Epilogue { leaky, residual: None }, &mut y);
        let got = g.download(&y);
        let (mut off, mut far) = (0usize, 0usize);
        // f16 bits in value order (±0 together): neighbours differ by one, across zero too
        let ordered = |v: f32| {
            let b = half::f16::from_f32(v).to_bits() as i32;
            if b & 0x8000 != 0 {
                -(b & 0x7fff)
            } else {
                b
            }
        };
        for (gv, wv) in got.iter().zip(&want) {
            let (a, e) = (ordered(*gv), ordered(*wv));
            off += usize::from(a != e);
            far += usize::from((a - e).abs() > 1);
        }
        let what = format!("image layer {} -> {cout} on tensor cores, {xs:?}", xs.c);
        eprintln!("{what}: {off} of {} f16 outputs one unit off the CPU's rounded f32 result", got.len());
        assert!(far == 0 && off * 100 <= got.len(), "{what}: {off} outputs off, {far} by more than one unit");
        let (mut dwg, mut dbg) = (nan(&g, sp.weight_len()), nan(&g, cout));
        g.conv2d_backward(&xg, xs, &sp, &wg, &dyg, None, DxEpilogue::NONE, &mut dwg, Some(&mut dbg));
        check(&format!("{what}: dW"), &g, &dwg, &dw, 1e-5);
        check(&format!("{what}: dB"), &g, &dbg, &db, 1e-5);
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        assert_eq!(launches(&p, "conv2d_fwd_image_mma_h16"), 4, "{p:?}");
        assert_eq!(launches(&p, "conv2d_bwd_weight_image_mma_h16"), 4, "{p:?}");
    }
}

/// Gradients on f16 storage (`conv2d_backward` with f16 x, dY and dX): the data gradient (by
/// phases for the 4 × 4 / 2 layer) and the weight gradient on the f16 kernels, the rest
/// (channel counts they do not take, the f32 image as x) on f32 copies; then the transposed
/// convolution's and the half instance norm's; against the CPU on the same f16-rounded values. dX is rounded to f16 (bound 2e-3); dW and dB are f32 sums of exact
/// products (bound 1e-4).
#[test]
fn f16_storage_gradients_match_the_cpu() {
    let Some(g) = gpu() else { return };
    // the implicit GEMM's 3 × 3 layers (the halo kernels, the default for them, have their own test)
    g.use_halo(false);
    let cpu = Cpu::new();
    let spec = |cin, cout, k, stride, pad| ConvSpec { cin, cout, k, stride, pad };
    let both = DxEpilogue { leaky: true, accumulate: true };
    // (x, layer, dX's epilogue, x is the f32 image: no dX)
    let cases = [
        (Shape { n: 2, h: 19, w: 21, c: 32 }, spec(32, 64, 3, 1, 1), both, false),
        (Shape { n: 1, h: 16, w: 17, c: 64 }, spec(64, 32, 3, 1, 1), DxEpilogue::NONE, false),
        (Shape { n: 2, h: 9, w: 13, c: 32 }, spec(32, 32, 1, 1, 0), DxEpilogue::ACCUMULATE, false),
        (Shape { n: 1, h: 16, w: 18, c: 32 }, spec(32, 32, 4, 2, 1), DxEpilogue::ACCUMULATE, false),
        (Shape { n: 2, h: 15, w: 13, c: 64 }, spec(64, 64, 4, 2, 1), both, false),
        (Shape { n: 1, h: 12, w: 10, c: 32 }, spec(32, 20, 3, 1, 1), DxEpilogue::LEAKY, false),
        // the few-channel layers (kernels/conv_few.cuh), over many staged chunks of pixels:
        // the image's layer, the output block's 3 × 3 and 1 × 1 into 3 channels, its 3 → 3
        (Shape { n: 2, h: 15, w: 14, c: 3 }, spec(3, 32, 3, 1, 1), DxEpilogue::NONE, true),
        (Shape { n: 3, h: 41, w: 37, c: 3 }, spec(3, 32, 3, 1, 1), DxEpilogue::NONE, true),
        (Shape { n: 2, h: 33, w: 31, c: 32 }, spec(32, 3, 3, 1, 1), both, false),
        (Shape { n: 2, h: 29, w: 35, c: 32 }, spec(32, 3, 1, 1, 0), DxEpilogue::ACCUMULATE, false),
        (Shape { n: 2, h: 30, w: 27, c: 3 }, spec(3, 3, 3, 1, 1), DxEpilogue::LEAKY, false),
        // 64 channels into 3 by stride 2: the direct weight gradient's eight input groups
        (Shape { n: 1, h: 23, w: 21, c: 64 }, spec(64, 3, 3, 2, 1), DxEpilogue::NONE, false),
    ];
    g.set_profiling(true);
    for (i, (xs, sp, dxe, image)) in cases.into_iter().enumerate() {
        let i = i as u64;
        let (oh, ow) = sp.out_hw(xs.h, xs.w);
        let ys = Shape { n: xs.n, h: oh, w: ow, c: sp.cout };
        let x = f16_rounded(rnd(xs.len(), 110 + i, -1.0, 1.0));
        let w = f16_rounded(rnd(sp.weight_len(), 120 + i, -0.2, 0.2));
        let dy = f16_rounded(rnd(ys.len(), 130 + i, -1.0, 1.0));
        let old = f16_rounded(rnd(xs.len(), 140 + i, -1.0, 1.0));
        let (mut dx, mut dw, mut db) = (old.clone(), vec![0f32; sp.weight_len()], vec![0f32; sp.cout]);
        let want_dx = (!image).then_some(&mut dx);
        cpu.conv2d_backward(&x, xs, &sp, &w, &dy, want_dx, dxe, &mut dw, Some(&mut db));
        let xg = if image { g.upload(&x) } else { g.upload_half(&x) };
        let (wg, dyg) = (g.upload(&w), g.upload_half(&dy));
        let mut dxg = g.upload_half(&old);
        let (mut dwg, mut dbg) = (nan(&g, sp.weight_len()), nan(&g, sp.cout));
        let got_dx = (!image).then_some(&mut dxg);
        g.conv2d_backward(&xg, xs, &sp, &wg, &dyg, got_dx, dxe, &mut dwg, Some(&mut dbg));
        let what = format!("f16 storage gradients {} -> {}, k {} / {}", sp.cin, sp.cout, sp.k, sp.stride);
        if !image {
            assert!(dxg.is_half());
            check(&format!("{what}: dX"), &g, &dxg, &dx, 2e-3);
        }
        check(&format!("{what}: dW"), &g, &dwg, &dw, 1e-4);
        check(&format!("{what}: dB"), &g, &dbg, &db, 1e-5);
    }
    // the U-Net's few-channel weight gradients ran without staging (few_direct_dw)
    let p = g.take_profile();
    g.set_profiling(false);
    // (the image's layer here on the f32 kernel: this backend is the exact one; the speed path's
    // tensor-core form has its own test)
    if full_kernel_set(&g) {
        assert_eq!(launches(&p, "conv2d_bwd_weight_direct_img_h16"), 2, "{p:?}");
        assert_eq!(launches(&p, "conv2d_bwd_weight_image_mma_h16"), 0, "{p:?}");
        assert_eq!(launches(&p, "conv2d_bwd_weight_direct_h16"), 4, "{p:?}");
    }
    // the transposed convolution's gradients: on the f16 bodies (cout 32), on f32 copies (cout 20)
    for (i, (xs, cout)) in
        [(Shape { n: 2, h: 5, w: 7, c: 64 }, 32), (Shape { n: 1, h: 9, w: 6, c: 32 }, 20)].into_iter().enumerate()
    {
        let i = i as u64;
        let x = f16_rounded(rnd(xs.len(), 160 + i, -1.0, 1.0));
        let w = f16_rounded(rnd(xs.c * 4 * cout, 170 + i, -0.2, 0.2));
        let dy = f16_rounded(rnd(4 * xs.n * xs.h * xs.w * cout, 180 + i, -1.0, 1.0));
        let (mut dx, mut dw, mut db) = (vec![0f32; xs.len()], vec![0f32; w.len()], vec![0f32; cout]);
        cpu.conv_transpose2_backward(&x, xs, cout, &w, &dy, Some(&mut dx), &mut dw, &mut db);
        let (mut dxg, mut dwg, mut dbg) = (nan_half(&g, xs.len()), nan(&g, w.len()), nan(&g, cout));
        let (xg, wg, dyg) = (g.upload_half(&x), g.upload(&w), g.upload_half(&dy));
        g.conv_transpose2_backward(&xg, xs, cout, &wg, &dyg, Some(&mut dxg), &mut dwg, &mut dbg);
        let what = format!("f16 storage transposed conv gradients {} <- {cout}", xs.c);
        check(&format!("{what}: dX"), &g, &dxg, &dx, 2e-3);
        check(&format!("{what}: dW"), &g, &dwg, &dw, 1e-4);
        check(&format!("{what}: dB"), &g, &dbg, &db, 1e-5);
    }
    // the half instance norm's backward on f16 x, dY, dX (statistics f32, as the forward keeps them)
    let s = Shape { n: 2, h: 11, w: 9, c: 64 };
    let x = f16_rounded(rnd(s.len(), 150, -2.0, 3.0));
    let (gamma, beta) = (rnd(32, 151, 0.5, 1.5), rnd(32, 152, -0.5, 0.5));
    let (mut y, mut stats) = (vec![0f32; s.len()], vec![0f32; 2 * s.n * 32]);
    cpu.hin_forward(&x, s, &gamma, &beta, true, &mut y, &mut stats);
    let dy = f16_rounded(rnd(s.len(), 153, -1.0, 1.0));
    let (mut dx, mut dg, mut dbeta) = (vec![0f32; s.len()], vec![0f32; 32], vec![0f32; 32]);
    cpu.hin_backward(&x, s, &gamma, &stats, &dy, &mut dx, &mut dg, &mut dbeta);
    let (mut dxg, mut dgg, mut dbg) = (nan_half(&g, s.len()), nan(&g, 32), nan(&g, 32));
    let (xg, sg, dyg) = (g.upload_half(&x), g.upload(&stats), g.upload_half(&dy));
    g.hin_backward(&xg, s, &g.upload(&gamma), &sg, &dyg, &mut dxg, &mut dgg, &mut dbg);
    check("f16 storage half instance norm backward: dX", &g, &dxg, &dx, 2e-3);
    check("f16 storage half instance norm backward: dγ", &g, &dgg, &dg, 1e-4);
    check("f16 storage half instance norm backward: dβ", &g, &dbg, &dbeta, 1e-5);
}

/// Pre-training with f16 activations and activation gradients (SPAHDMAP_GPU_HALF=train) against
/// the CPU's f32 step from the same parameters: forward in f16 (every layer's output rounded),
/// the loss within 1e-2, the gradients — both scaled by 1024, as a loss scaler would keep f16
/// activation gradients above their range's floor — within 5e-2 over the whole vector (f16
/// activation gradients carry 11 bits); the parameters' gradients stay f32, and from the second
/// step on nothing is allocated. A fourth step runs the 3 × 3 layers on the halo kernels.
#[test]
fn half_storage_pretraining_steps_follow_the_cpu() {
    let Some(g) = speed_gpu() else { return };
    g.use_half_training(true);
    let cpu = Cpu::new();
    let (net, host) = UNet::new(3, 7);
    let (mut pc, mut pg) = (host.upload(&cpu), host.upload(&g));
    let is = Shape { n: 2, h: 64, w: 64, c: 3 };
    let image = rnd(is.len(), 11, 0.0, 1.0);
    let scale = 1024.0f32;
    let lc = spahdmap::stages::pretrain::pretrain_step_scaled(&cpu, &net, &mut pc, &image, is, scale);
    let gi = g.upload(&image);
    let mut fresh = 0;
    // the last step with every 3 × 3 stride-1 layer on the halo kernels (kernels/conv_halo.cuh)
    for step in 0..4 {
        g.use_halo(step == 3);
        let lg = spahdmap::stages::pretrain::pretrain_step_scaled(&g, &net, &mut pg, &gi, is, scale);
        eprintln!("f16-storage pre-training step {step} (halo {}): loss {lg} vs CPU {lc}", step == 3);
        assert!(((lg - lc) / lc).abs() < 1e-2, "loss {lg} vs {lc}");
        assert!(pg.grads.iter().all(|d| !d.is_half()), "parameter gradients in f32");
        let got: Vec<f32> = pg.grads.iter().flat_map(|d| g.download(d)).collect();
        let want: Vec<f32> = pc.grads.iter().flat_map(|d| d.clone()).collect();
        let e = rel(&got, &want);
        eprintln!("f16-storage gradients: relative error {e:.3e}");
        assert!(e < 5e-2, "gradients {e}");
        if step == 1 {
            fresh = g.fresh_allocations();
        }
        if step == 2 {
            assert_eq!(g.fresh_allocations(), fresh, "allocations after the first step");
        }
    }
    assert!(!g.alloc(8).is_half(), "f16 allocation ends with the step");
}

/// The memory passes where channel counts allow eight values a thread (kernels/elementwise.cu,
/// norm.cu: `pixel_runs_*`, `colsum_runs_*`, the eight-wide loops of the channel moves and the
/// half instance norm) against the CPU, beside shapes that must take the one-at-a-time loops;
/// the profile says which kernels ran.
#[test]
fn memory_passes_move_eight_values_a_thread_where_the_channels_allow() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    g.set_profiling(true);
    // HIN forward and backward, f16 storage: 16 normalised channels of 32 (runs), 10 of 20 (not)
    for (i, c) in [32usize, 20].into_iter().enumerate() {
        let i = i as u64;
        let s = Shape { n: 2, h: 13, w: 11, c };
        let half = c / 2;
        let x = f16_rounded(rnd(s.len(), 400 + i, -2.0, 3.0));
        let dy = f16_rounded(rnd(s.len(), 410 + i, -1.0, 1.0));
        let (gamma, beta) = (rnd(half, 420 + i, 0.5, 1.5), rnd(half, 430 + i, -0.5, 0.5));
        let (mut y, mut st) = (vec![0f32; s.len()], vec![0f32; 2 * s.n * half]);
        cpu.hin_forward(&x, s, &gamma, &beta, true, &mut y, &mut st);
        let (mut dx, mut dgm, mut dbt) = (vec![0f32; s.len()], vec![0f32; half], vec![0f32; half]);
        cpu.hin_backward(&x, s, &gamma, &st, &dy, &mut dx, &mut dgm, &mut dbt);
        let (xg, gg) = (g.upload_half(&x), g.upload(&gamma));
        let (mut yg, mut stg) = (nan_half(&g, s.len()), nan(&g, st.len()));
        g.hin_forward(&xg, s, &gg, &g.upload(&beta), true, &mut yg, &mut stg);
        check(&format!("HIN {c} channels"), &g, &yg, &y, 2e-3);
        check(&format!("HIN {c} channels: statistics"), &g, &stg, &st, 1e-5);
        let (mut dxg, mut dgg, mut dbg) = (nan_half(&g, s.len()), nan(&g, half), nan(&g, half));
        g.hin_backward(&xg, s, &gg, &stg, &g.upload_half(&dy), &mut dxg, &mut dgg, &mut dbg);
        check(&format!("HIN {c} channels: dX"), &g, &dxg, &dx, 2e-3);
        check(&format!("HIN {c} channels: dγ"), &g, &dgg, &dgm, 1e-4);
        check(&format!("HIN {c} channels: dβ"), &g, &dbg, &dbt, 1e-5);
    }
    // the decoder's split of a concatenation's gradient, 64 + 32 channels, f16
    let (ca, cb, px) = (64usize, 32usize, 1_003usize);
    let d = f16_rounded(rnd(px * (ca + cb), 440, -1.0, 1.0));
    let (mut wa, mut wb) = (vec![0f32; px * ca], vec![0f32; px * cb]);
    cpu.split_channels(&d, ca, cb, &mut wa, &mut wb);
    let (mut ga, mut gb) = (nan_half(&g, px * ca), nan_half(&g, px * cb));
    g.split_channels(&g.upload_half(&d), ca, cb, &mut ga, &mut gb);
    check("f16 split 64 + 32: first part", &g, &ga, &wa, 1e-7);
    check("f16 split 64 + 32: second part", &g, &gb, &wb, 1e-7);
    // channel means over 64 channels (runs) and 70 (not), f32
    for (i, c) in [64usize, 70].into_iter().enumerate() {
        let s = Shape { n: 3, h: 9, w: 17, c };
        let x = rnd(s.len(), 450 + i as u64, -1.0, 2.0);
        let mut m = vec![0f32; s.n * c];
        cpu.spatial_mean(&x, s, &mut m);
        let mut gm = nan(&g, m.len());
        g.spatial_mean(&g.upload(&x), s, &mut gm);
        check(&format!("spatial mean of {c} channels"), &g, &gm, &m, 1e-6);
    }
    let p = g.take_profile();
    g.set_profiling(false);
    if full_kernel_set(&g) {
        // eight-wide: the 32-channel HIN's statistics (forward and backward) and the 64 means; one at
        // a time: the 20-channel HIN's and the 70 means
        assert_eq!(launches(&p, "pixel_runs_f64_h16"), 2, "{p:?}");
        assert_eq!(launches(&p, "pixel_sums_f64_h16"), 2, "{p:?}");
        assert_eq!(launches(&p, "pixel_runs_f64"), 1, "{p:?}");
        assert_eq!(launches(&p, "pixel_sums_f64"), 1, "{p:?}");
    }
}

/// The f16 forms of the element-wise kernels and the MSE (`*_h16`: add_assign, LeakyReLU's and
/// the sigmoid's backward, the sigmoid, split_channels, mse_h16) against the CPU on the same
/// f16-rounded values: the output's rounding to f16 bounds them (2e-3); split moves values
/// exactly, and the MSE's loss is an f64 sum of exact differences.
#[test]
fn f16_storage_elementwise_kernels_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = Cpu::new();
    let n = 20_011;
    let (x, y) = (f16_rounded(rnd(n, 190, -2.0, 2.0)), f16_rounded(rnd(n, 191, -2.0, 2.0)));
    let xg = g.upload_half(&x);
    let mut want = y.clone();
    cpu.add_assign(&mut want, &x);
    let mut got = g.upload_half(&y);
    g.add_assign(&mut got, &xg);
    check("f16 add_assign", &g, &got, &want, 2e-3);
    let mut want = y.clone();
    cpu.leaky_relu_backward(&x, &mut want);
    let mut got = g.upload_half(&y);
    g.leaky_relu_backward(&xg, &mut got);
    check("f16 LeakyReLU backward", &g, &got, &want, 2e-3);
    // out of place, dY kept, on the kernel of its own (not a copy and the in-place one)
    let (yg, mut gg) = (g.upload_half(&y), nan_half(&g, n));
    g.set_profiling(true);
    g.leaky_relu_grad(&xg, &yg, &mut gg);
    let p = g.take_profile();
    g.set_profiling(false);
    check("f16 LeakyReLU gradient out of place", &g, &gg, &want, 2e-3);
    check("f16 LeakyReLU gradient keeps dY", &g, &yg, &y, 1e-7);
    if full_kernel_set(&g) {
        assert_eq!(launches(&p, "leaky_relu_grad_h16"), 1, "{p:?}");
    }
    let mut s = vec![0f32; n];
    cpu.sigmoid(&x, &mut s);
    let mut sg = nan_half(&g, n);
    g.sigmoid(&xg, &mut sg);
    check("f16 sigmoid", &g, &sg, &s, 2e-3);
    let s = f16_rounded(s);
    let mut want = y.clone();
    cpu.sigmoid_backward(&s, &mut want);
    let mut got = g.upload_half(&y);
    g.sigmoid_backward(&g.upload_half(&s), &mut got);
    check("f16 sigmoid backward", &g, &got, &want, 2e-3);
    // split along channels (odd counts)
    let (ca, cb, px) = (3usize, 5usize, 2_001usize);
    let d = f16_rounded(rnd(px * (ca + cb), 192, -1.0, 1.0));
    let (mut wa, mut wb) = (vec![0f32; px * ca], vec![0f32; px * cb]);
    cpu.split_channels(&d, ca, cb, &mut wa, &mut wb);
    let (mut ga, mut gb) = (nan_half(&g, px * ca), nan_half(&g, px * cb));
    g.split_channels(&g.upload_half(&d), ca, cb, &mut ga, &mut gb);
    check("f16 split a", &g, &ga, &wa, 1e-7);
    check("f16 split b", &g, &gb, &wb, 1e-7);
    // the MSE on an f16 prediction against the f32 image
    let is = Shape { n: 2, h: 13, w: 11, c: 3 };
    let pred = f16_rounded(rnd(is.len(), 193, 0.0, 1.0));
    let target = rnd(is.len(), 194, 0.0, 1.0);
    let mut dw = vec![0f32; is.len()];
    let lw = cpu.mse_per_image(&pred, &target, is, 512.0, &mut dw);
    let mut dg = nan_half(&g, is.len());
    let lg = g.mse_per_image(&g.upload_half(&pred), &g.upload(&target), is, 512.0, &mut dg);
    assert!(((lg - lw) / lw).abs() < 1e-9, "f16 MSE loss {lg} vs {lw}");
    check("f16 MSE gradient", &g, &dg, &dw, 2e-3);
}
