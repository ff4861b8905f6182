//! CUDA kernels against the CPU backend on fresh random inputs (odd sizes, outputs poisoned
//! with NaN before each launch). Skips with a message where there is no GPU or no kernels.
mod common;

use std::sync::Arc;

use common::{rel, rnd};
use cudarc::driver::{CudaContext, CudaModule, LaunchConfig, PushKernelArg};
use spahdmap::backend::{cuda, Backend, Cpu};
use spahdmap::optim::{adam_update, AdamScalars};

fn gpu() -> Option<(Arc<CudaContext>, Arc<CudaModule>)> {
    match cuda::probe() {
        Ok(v) if !v.is_empty() => {}
        Ok(_) => {
            eprintln!("skipped: no CUDA device");
            return None;
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    }
    if cuda::FATBIN.is_empty() {
        eprintln!("skipped: built without kernels (no nvcc)");
        return None;
    }
    let ctx = CudaContext::new(0).expect("CUDA context");
    let m = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cuda::FATBIN.to_vec())).expect("kernels load");
    Some((ctx, m))
}

#[test]
fn elementwise_kernels_match_the_cpu_backend() {
    let Some((ctx, m)) = gpu() else { return };
    let s = ctx.default_stream();
    let n = 100_003usize;
    let n64 = n as i64;
    let cfg = LaunchConfig::for_num_elems(n as u32);
    let cpu = Cpu::new();
    let (x, l, vd) = (rnd(n, 1, -4.0, 4.0), rnd(n, 2, -3.0, 3.0), rnd(n, 3, 0.0, 1.0));
    let nan = vec![f32::NAN; n];
    let dx = s.clone_htod(&x).unwrap();

    // sigmoid
    let mut dy = s.clone_htod(&nan).unwrap();
    let f = m.load_function("sigmoid_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&dx).arg(&mut dy).arg(&n64);
    unsafe { b.launch(cfg) }.unwrap();
    let mut want = vec![0f32; n];
    cpu.sigmoid(&x, &mut want);
    let e = rel(&s.clone_dtoh(&dy).unwrap(), &want);
    assert!(e < 1e-5, "sigmoid {e}");

    // the VD prior
    let (dl, dvd) = (s.clone_htod(&l).unwrap(), s.clone_htod(&vd).unwrap());
    let mut dhr = s.clone_htod(&nan).unwrap();
    let f = m.load_function("prior_sigmoid_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&dl).arg(&dvd).arg(&mut dhr).arg(&n64);
    unsafe { b.launch(cfg) }.unwrap();
    cpu.prior_sigmoid(&l, &vd, &mut want);
    let e = rel(&s.clone_dtoh(&dhr).unwrap(), &want);
    assert!(e < 1e-5, "prior sigmoid {e}");

    // LeakyReLU backward (in place on dy)
    let g = rnd(n, 4, -1.0, 1.0);
    let mut dg = s.clone_htod(&g).unwrap();
    let f = m.load_function("leaky_relu_backward_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&dx).arg(&mut dg).arg(&n64);
    unsafe { b.launch(cfg) }.unwrap();
    let mut want = g.clone();
    cpu.leaky_relu_backward(&x, &mut want);
    assert_eq!(s.clone_dtoh(&dg).unwrap(), want, "leaky backward is exact");

    // sigmoid backward and y += x (in place)
    let mut dg = s.clone_htod(&g).unwrap();
    let f = m.load_function("sigmoid_backward_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&dhr).arg(&mut dg).arg(&n64);
    unsafe { b.launch(cfg) }.unwrap();
    let hr_host = s.clone_dtoh(&dhr).unwrap();
    let mut want = g.clone();
    cpu.sigmoid_backward(&hr_host, &mut want);
    let e = rel(&s.clone_dtoh(&dg).unwrap(), &want);
    assert!(e < 1e-6, "sigmoid backward {e}");
    let f = m.load_function("add_assign_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&dx).arg(&mut dg).arg(&n64);
    unsafe { b.launch(cfg) }.unwrap();
    cpu.add_assign(&mut want, &x);
    let e = rel(&s.clone_dtoh(&dg).unwrap(), &want);
    assert!(e < 1e-6, "add_assign {e}");

    // concat and split along channels (odd channel counts)
    let (ca, cb, px) = (3usize, 5usize, 20_011usize);
    let (ha, hb) = (rnd(px * ca, 9, -1.0, 1.0), rnd(px * cb, 10, -1.0, 1.0));
    let (da, db) = (s.clone_htod(&ha).unwrap(), s.clone_htod(&hb).unwrap());
    let mut dcat = s.clone_htod(&vec![f32::NAN; px * (ca + cb)]).unwrap();
    let (ca32, cb32, px64) = (ca as i32, cb as i32, px as i64);
    let pcfg = LaunchConfig::for_num_elems((px * (ca + cb)) as u32);
    let f = m.load_function("concat_channels_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&da).arg(&ca32).arg(&db).arg(&cb32).arg(&mut dcat).arg(&px64);
    unsafe { b.launch(pcfg) }.unwrap();
    let mut cat = vec![0f32; px * (ca + cb)];
    cpu.concat_channels(&ha, ca, &hb, cb, &mut cat);
    assert_eq!(s.clone_dtoh(&dcat).unwrap(), cat, "concat is exact");
    let (mut sa, mut sb) =
        (s.clone_htod(&vec![f32::NAN; px * ca]).unwrap(), s.clone_htod(&vec![f32::NAN; px * cb]).unwrap());
    let f = m.load_function("split_channels_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&dcat).arg(&ca32).arg(&cb32).arg(&mut sa).arg(&mut sb).arg(&px64);
    unsafe { b.launch(pcfg) }.unwrap();
    assert_eq!((s.clone_dtoh(&sa).unwrap(), s.clone_dtoh(&sb).unwrap()), (ha, hb), "split is exact");

    // Adam
    let (p, gr) = (rnd(n, 5, -1.0, 1.0), rnd(n, 6, -0.1, 0.1));
    let (m0, v0) = (rnd(n, 7, -0.01, 0.01), rnd(n, 8, 0.0, 0.001));
    let sc = AdamScalars { step_size: 4e-4, bc2_sqrt: 0.7, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-5 };
    let (mut dp, dgr, mut dm, mut dv) =
        (s.clone_htod(&p).unwrap(), s.clone_htod(&gr).unwrap(), s.clone_htod(&m0).unwrap(), s.clone_htod(&v0).unwrap());
    let f = m.load_function("adam_f32").unwrap();
    let mut b = s.launch_builder(&f);
    b.arg(&mut dp).arg(&dgr).arg(&mut dm).arg(&mut dv).arg(&n64);
    b.arg(&sc.step_size).arg(&sc.bc2_sqrt).arg(&sc.beta1).arg(&sc.beta2).arg(&sc.eps).arg(&sc.weight_decay);
    unsafe { b.launch(cfg) }.unwrap();
    let (mut wp, mut wm, mut wv) = (p.clone(), m0.clone(), v0.clone());
    adam_update(&mut wp, &gr, &mut wm, &mut wv, &sc);
    let e = rel(&s.clone_dtoh(&dp).unwrap(), &wp);
    assert!(e < 1e-6, "adam parameters {e}");
}

#[test]
fn devices_reports_threads_devices_and_kernels() {
    let exe = std::env::var_os("SPAHDMAP_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_spahdmap").into());
    let o = std::process::Command::new(exe).args(["devices", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["cpu_threads"].as_u64().unwrap() >= 1);
    // either devices or the reason there are none
    assert!(!v["cuda_devices"].as_array().unwrap().is_empty() || v["cuda_unavailable"].is_string());
    assert_eq!(v["kernels_built"], !cuda::FATBIN.is_empty());
    if v["kernels_built"] == true {
        let archs: Vec<&str> = v["kernel_archs"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        // sm_90a beside them where nvcc built the wgmma kernels (13.0 does: CI requires it)
        let mut want = vec!["sm_80", "sm_90", "compute_90"];
        if !cuda::FATBIN_SM90A.is_empty() {
            want.push("sm_90a");
        }
        assert_eq!(archs, want);
    }
}
