//! Dynamic loss scaling in pre-training (GradScaler semantics, src/optim/scaler.rs) on the
//! CPU backend: a power-of-two scale changes no value, an overflowing step is skipped and
//! backs the scale off, and the gradients' unscale finds every inf and NaN.
mod common;

use common::rnd;
use spahdmap::backend::{Backend, Cpu, Shape};
use spahdmap::model::unet::{Params, UNet};
use spahdmap::optim::{Adam, AdamConfig, LossScaler};
use spahdmap::stages::pretrain::{pretrain_step, pretrain_step_scaled};

fn setup() -> (UNet, Params, Adam, Vec<f32>, Shape) {
    let (net, p) = UNet::new(3, 5);
    let sizes: Vec<usize> = p.data.iter().map(|d| d.len()).collect();
    let opt = Adam::new(AdamConfig { weight_decay: 1e-5, ..Default::default() }, &sizes);
    let is = Shape { n: 2, h: 64, w: 64, c: 3 };
    (net, p, opt, rnd(is.len(), 9, 0.0, 1.0), is)
}

fn bits(p: &Params) -> Vec<Vec<u32>> {
    p.data.iter().map(|d| d.iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn power_of_two_scale_changes_no_value() {
    let cpu = Cpu::new();
    let (net, mut p, mut opt, image, is) = setup();
    let (_, mut q, mut qopt, _, _) = setup();
    let all: Vec<usize> = (0..p.names.len()).collect();
    let lrs = vec![4e-4; all.len()];
    let mut sc = LossScaler::default();
    for step in 0..3 {
        let a = pretrain_step(&cpu, &net, &mut p, &image, is);
        p.adam_step(&cpu, &mut opt, &all, &lrs);
        let b = pretrain_step_scaled(&cpu, &net, &mut q, &image, is, sc.scale);
        assert!(q.scaled_adam_step(&cpu, &mut qopt, &mut sc, &all, &lrs), "step {step} skipped");
        assert_eq!(a.to_bits(), b.to_bits(), "loss at step {step}");
        assert!(bits(&p) == bits(&q), "parameters differ after step {step}");
    }
    assert_eq!((sc.scale, sc.skipped, qopt.step), (65536.0, 0, 3));
}

#[test]
fn overflowing_steps_are_skipped_and_back_off() {
    let cpu = Cpu::new();
    let (net, mut p, mut opt, image, is) = setup();
    let all: Vec<usize> = (0..p.names.len()).collect();
    let lrs = vec![4e-4; all.len()];
    // a scale near f32's largest on a batch of large values overflows the gradients' sums
    // (normalised images do not: each pixel's gradient carries 1 / the batch's elements)
    let mut image: Vec<f32> = image.iter().map(|v| v * 1000.0).collect();
    let mut sc = LossScaler::new(2f32.powi(127), 2000);
    let start = bits(&p);
    let mut taken = 0;
    for _ in 0..40 {
        pretrain_step_scaled(&cpu, &net, &mut p, &image, is, sc.scale);
        if p.scaled_adam_step(&cpu, &mut opt, &mut sc, &all, &lrs) {
            taken += 1;
            break;
        }
        assert!(bits(&p) == start, "a skipped step moved the parameters");
    }
    assert!(sc.skipped >= 1, "2^127 did not overflow: the test needs a larger scale");
    assert_eq!(taken, 1, "never recovered: scale {}", sc.scale);
    assert_eq!(sc.scale, 2f32.powi(127 - sc.skipped as i32));
    assert_eq!(opt.step, 1, "skipped steps do not count");
    // a NaN in the batch: skipped, scale halved, Adam's state untouched
    image[17] = f32::NAN;
    let (before, m0) = (bits(&p), opt.m.clone());
    let scale = sc.scale;
    pretrain_step_scaled(&cpu, &net, &mut p, &image, is, sc.scale);
    assert!(!p.scaled_adam_step(&cpu, &mut opt, &mut sc, &all, &lrs));
    assert!(bits(&p) == before && opt.m == m0 && opt.step == 1);
    assert_eq!(sc.scale, scale / 2.0);
}

#[test]
fn unscale_finds_every_non_finite_value() {
    let cpu = Cpu::new();
    let base = vec![rnd(10_001, 1, -4.0, 4.0), rnd(77, 2, -1.0, 1.0)];
    let mut g = base.clone();
    assert!(!cpu.unscale_grads(&mut g, 0.25));
    for (a, b) in g.iter().flatten().zip(base.iter().flatten()) {
        assert_eq!(*a, b * 0.25);
    }
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        for at in [0, 5_000, 10_000] {
            let mut g = base.clone();
            g[0][at] = bad;
            assert!(cpu.unscale_grads(&mut g, 0.5), "{bad} at {at}");
        }
        let mut g = base.clone();
        g[1][76] = bad;
        assert!(cpu.unscale_grads(&mut g, 0.5));
    }
    // finite gradients that overflow once unscaled count too
    let mut g = vec![vec![3e38f32, 1.0]];
    assert!(cpu.unscale_grads(&mut g, 2.0));
}

/// The stage's iteration (`RecordedStep`: its own input buffer, loss sums left where the
/// kernel wrote them, Adam's scalars read from a buffer, the found-inf flag on the device) is
/// `pretrain_step_scaled` + `adam_step` / `scaled_adam_step` bit for bit: unscaled, scaled,
/// an overflowing batch skipped (Adam's step count too), and across a batch-size change; on
/// the CPU it always runs eagerly.
#[test]
fn the_recordable_step_is_the_plain_step() {
    use spahdmap::backend::graphs::Ran;
    use spahdmap::stages::pretrain::RecordedStep;
    let cpu = Cpu::new();
    let (net, mut p, mut opt, image, is) = setup();
    let (_, mut q, mut qopt, _, _) = setup();
    let all: Vec<usize> = (0..p.names.len()).collect();
    let lrs = vec![4e-4; all.len()];
    let mut step = RecordedStep::<Cpu>::default();
    let small = Shape { n: 1, ..is };
    let mut bad = image.clone();
    bad[7] = f32::INFINITY;
    let (mut sp, mut sq) = (LossScaler::new(1024.0, 2), LossScaler::new(1024.0, 2));
    let cases = [(is, false, &image), (is, true, &image), (is, true, &bad), (small, true, &image), (is, true, &image)];
    for (k, (s, scaled, im)) in cases.into_iter().enumerate() {
        let im = &im[..s.len()];
        let (a, stepped_a) = if scaled {
            let a = pretrain_step_scaled(&cpu, &net, &mut p, &im.to_vec(), s, sp.scale);
            (a, p.scaled_adam_step(&cpu, &mut opt, &mut sp, &all, &lrs))
        } else {
            let a = pretrain_step(&cpu, &net, &mut p, &im.to_vec(), s);
            p.adam_step(&cpu, &mut opt, &all, &lrs);
            (a, true)
        };
        step.load(&cpu, im, s);
        let (b, how, stepped_b) = step.step(&cpu, &net, &mut q, &mut qopt, &all, &lrs, scaled.then_some(&mut sq));
        assert_eq!(how, Ran::Eager);
        assert_eq!((stepped_a, stepped_b), (k != 2, k != 2), "step {k}");
        if k != 2 {
            assert_eq!(a.to_bits(), b.to_bits(), "loss at step {k}");
        }
        assert!(bits(&p) == bits(&q), "parameters differ after step {k}");
        assert_eq!((opt.step, sp), (qopt.step, sq), "Adam's count or the scaler after step {k}");
    }
    assert_eq!(sq.skipped, 1);
    step.release(&cpu);
}
