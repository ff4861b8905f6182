//! The U-Net against the published package's SpaHDmapUnet in PyTorch: the pre-training
//! network (tests/fixtures/unet, tools/make_unet_fixtures.py) and the joint network with its
//! three losses (tests/fixtures/joint, tools/make_joint_fixtures.py) — forward, loss, every
//! parameter gradient, and every parameter after 3 Adam steps.
mod common;

use common::{fixture, read_npy};
use spahdmap::backend::{Backend, Cpu, Shape};
use spahdmap::model::joint::{JointBatch, JointHead, LossWeights, TileSpots};
use spahdmap::model::unet::{resize_bilinear_ac, Params, UNet};
use spahdmap::optim::{Adam, AdamConfig};
use spahdmap::stages::pretrain::pretrain_step;

/// splitmix64 uniforms in [0, 1), as the fixture script draws them.
fn splitmix_uniform(seed: u64, n: usize) -> Vec<f64> {
    (1..=n as u64)
        .map(|i| {
            let x = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// The script's `fill`, in PyTorch layout.
fn fill(name: &str, shape: &[usize], t: usize) -> Vec<f32> {
    let n: usize = shape.iter().product();
    splitmix_uniform(1000 + t as u64, n)
        .into_iter()
        .map(|u| {
            let u = 2.0 * u - 1.0;
            let v = if name.ends_with("norm.weight") {
                1.0 + 0.1 * u
            } else if name.ends_with("weight") && shape.len() == 4 && !name.contains(".up.") {
                u * 3f64.sqrt() * (2.0 / 1.04f64).sqrt() / ((shape[0] * shape[2] * shape[3]) as f64).sqrt()
            } else if name.contains(".up.weight") {
                u / ((shape[1] * 4) as f64).sqrt()
            } else if name == "nmf_decoder" {
                0.5 + 0.5 * u
            } else {
                0.05 * u
            };
            v as f32
        })
        .collect()
}

fn fingerprint(a: &[f32]) -> Vec<f64> {
    let n = a.len();
    let m = n.min(512);
    let mut idx: Vec<usize> =
        (0..m).map(|i| if m == 1 { 0 } else { ((i as f64) * ((n - 1) as f64) / ((m - 1) as f64)) as usize }).collect();
    idx.dedup();
    let mut f = vec![a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()];
    f.extend(idx.iter().map(|&i| a[i] as f64));
    f
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("unet/reference.json")).unwrap()).unwrap()
}

fn setup() -> (UNet, Params, Vec<f32>, Shape, serde_json::Value) {
    let r = reference();
    let names: Vec<String> = r["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let (net, mut p) = UNet::new(3, 0);
    let used: Vec<&str> = r["used"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut ours: Vec<&str> = p.names.iter().map(|s| s.as_str()).collect();
    ours.sort();
    let mut theirs = used.clone();
    theirs.sort();
    assert_eq!(ours, theirs, "parameter names");
    for i in 0..p.names.len() {
        let t = names.iter().position(|n| *n == p.names[i]).unwrap();
        let shape = p.kinds[i].torch_shape(p.data[i].len());
        p.data[i] = p.kinds[i].from_torch(&fill(&p.names[i], &shape, t));
    }
    let is = Shape { n: 2, h: 64, w: 64, c: 3 };
    let nchw = splitmix_uniform(7, is.len());
    let mut image = vec![0f32; is.len()];
    for b in 0..2 {
        for c in 0..3 {
            for y in 0..64 {
                for x in 0..64 {
                    image[((b * 64 + y) * 64 + x) * 3 + c] = nchw[((b * 3 + c) * 64 + y) * 64 + x] as f32;
                }
            }
        }
    }
    (net, p, image, is, r)
}

#[test]
fn forward_loss_and_gradients_match_pytorch() {
    let (net, mut p, image, is, r) = setup();
    let cpu = Cpu::new();
    let a = net.forward(&cpu, &p, &image, is);
    let pred = a.pred.as_ref().unwrap();
    let want: Vec<f64> = read_npy::<f32>(&fixture("unet/pred_nhwc.npy")).1.iter().map(|&v| v as f64).collect();
    let got: Vec<f64> = pred.iter().map(|&v| v as f64).collect();
    let e = rel(&got, &want);
    eprintln!("prediction relative error {e:e}");
    assert!(e < 1e-5, "forward {e}");
    let mut d = vec![0f32; is.len()];
    let loss = cpu.mse_per_image(pred, &image, is, 1.0 / is.n as f64, &mut d) / is.n as f64;
    let want_loss = r["loss"].as_f64().unwrap();
    assert!((loss - want_loss).abs() < 1e-5 * want_loss, "loss {loss} vs {want_loss}");
    net.backward(&cpu, &mut p, &a, &image, d);
    let mut worst = (0f64, String::new());
    for i in 0..p.names.len() {
        let g = fingerprint(&p.kinds[i].to_torch(&p.grads[i]));
        let w: Vec<f64> = r["grads"][&p.names[i]].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let e = rel(&g[1..], &w[1..]).max(((g[0] - w[0]) / w[0]).abs());
        if e > worst.0 {
            worst = (e, p.names[i].clone());
        }
        assert!(e < 1e-4, "gradient of {}: {e}", p.names[i]);
    }
    eprintln!("worst gradient relative error {:e} ({})", worst.0, worst.1);
}

#[test]
fn three_adam_steps_match_pytorch() {
    let (net, mut p, image, is, r) = setup();
    let sizes: Vec<usize> = p.data.iter().map(|d| d.len()).collect();
    let mut opt = Adam::new(AdamConfig { weight_decay: 1e-5, ..Default::default() }, &sizes);
    let mut losses = Vec::new();
    let cpu = Cpu::new();
    for _ in 0..3 {
        losses.push(pretrain_step(&cpu, &net, &mut p, &image, is));
        let all: Vec<usize> = (0..p.names.len()).collect();
        p.adam_step(&cpu, &mut opt, &all, &vec![4e-4; all.len()]);
    }
    let want: Vec<f64> = r["losses_3_steps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (a, b) in losses.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5 * b, "losses {losses:?} vs {want:?}");
    }
    // Adam's first steps are ±lr per element whatever the gradient's size, so elements with
    // near-zero gradients turn f32 round-off into whole steps: PyTorch's own float32 run is
    // 6.6e-5 (median tensor) and 1.7e-4 (worst) from its float64 run after these 3 steps
    // (measured with the fixture's weights). Hence: median below 1e-4, every tensor below 3e-4.
    let mut errs: Vec<(f64, String)> = Vec::new();
    for i in 0..p.names.len() {
        let g = fingerprint(&p.kinds[i].to_torch(&p.data[i]));
        let w: Vec<f64> =
            r["after_3_steps"][&p.names[i]].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let e = rel(&g[1..], &w[1..]);
        assert!(e < 3e-4, "{} after 3 steps: {e}", p.names[i]);
        errs.push((e, p.names[i].clone()));
    }
    errs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = errs[errs.len() / 2].0;
    let worst = errs.last().unwrap();
    eprintln!("after 3 Adam steps: median {median:e}, worst {:e} ({}); losses {losses:?}", worst.0, worst.1);
    assert!(median < 1e-4, "median {median}");
}

fn nchw_to_nhwc(v: &[f64], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for b in 0..n {
        for k in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[((b * h + y) * w + x) * c + k] = v[((b * c + k) * h + y) * w + x] as f32;
                }
            }
        }
    }
    out
}

fn disk(cy: i64, cx: i64) -> Vec<u32> {
    let mut v = Vec::new();
    for y in cy - 5..=cy + 5 {
        for x in cx - 5..=cx + 5 {
            if (y - cy).pow(2) + (x - cx).pow(2) <= 25 {
                v.push((y * 64 + x) as u32);
            }
        }
    }
    v
}

#[test]
fn joint_network_losses_gradients_and_adam_groups_match_pytorch() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("joint/reference.json")).unwrap()).unwrap();
    let names: Vec<String> = r["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let used: Vec<String> = r["used"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let (rank, genes) = (4, 50);
    let (net, mut p) = UNet::new(3, 0);
    let head = JointHead::new(&mut p, 3, rank, genes, 1, 0);
    for i in 0..p.names.len() {
        let t = names
            .iter()
            .position(|n| *n == p.names[i])
            .unwrap_or_else(|| panic!("{} not in the reference", p.names[i]));
        let shape = p.kinds[i].torch_shape(p.data[i].len());
        p.data[i] = p.kinds[i].from_torch(&fill(&p.names[i], &shape, t));
    }
    let trained: Vec<usize> = used.iter().map(|n| p.index(n).unwrap_or_else(|| panic!("{n} missing"))).collect();
    let is = Shape { n: 2, h: 64, w: 64, c: 3 };
    let image = nchw_to_nhwc(&splitmix_uniform(7, is.len()), 2, 3, 64, 64);
    let vd = nchw_to_nhwc(&splitmix_uniform(8, 2 * rank * 64 * 64), 2, rank, 64, 64);
    let centres = r["centres"].as_array().unwrap();
    let pixels: Vec<Vec<Vec<u32>>> = centres
        .iter()
        .map(|tile| {
            tile.as_array().unwrap().iter().map(|c| disk(c[0].as_i64().unwrap(), c[1].as_i64().unwrap())).collect()
        })
        .collect();
    let exps: Vec<Vec<f32>> = (0..2)
        .map(|k| {
            splitmix_uniform(9 + k as u64, pixels[k].len() * genes).iter().map(|u| (5.0 * u).floor() as f32).collect()
        })
        .collect();
    let tiles = |_: ()| -> Vec<TileSpots> {
        (0..2).map(|k| TileSpots { pixels: &pixels[k], expression: &exps[k], query: (k == 0).then_some(0) }).collect()
    };
    let w = LossWeights::default();
    let cpu = Cpu::new();
    let hr = head.hr_scores(&cpu, &net, &p, &image, is, &vd);
    let out =
        head.step(&cpu, &net, &mut p, &JointBatch { image: &image, shape: is, vd: &vd, tiles: &tiles(()) }, &w, true);
    let want = r["loss"].as_f64().unwrap();
    eprintln!(
        "joint loss {} vs {want} (image {}, expression {}, regulariser {})",
        out.loss, out.loss_image, out.loss_exp, out.loss_reg
    );
    assert!((out.loss - want).abs() < 1e-5 * want);
    let hw: Vec<f64> = r["hr"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let e = rel(&fingerprint(&hr)[1..], &hw[1..]);
    eprintln!("HR relative error {e:e}");
    assert!(e < 1e-5);
    let mut worst = (0f64, String::new());
    for &i in &trained {
        let g = fingerprint(&p.kinds[i].to_torch(&p.grads[i]));
        let wv: Vec<f64> = r["grads"][&p.names[i]].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let e = rel(&g[1..], &wv[1..]).max(((g[0] - wv[0]) / wv[0]).abs());
        if e > worst.0 {
            worst = (e, p.names[i].clone());
        }
        assert!(e < 1e-4, "gradient of {}: {e}", p.names[i]);
    }
    eprintln!("joint: worst gradient relative error {:e} ({})", worst.0, worst.1);

    // 3 Adam steps, second phase: decoder and gamma at 1/100 of the others' rate
    let sizes: Vec<usize> = trained.iter().map(|&i| p.data[i].len()).collect();
    let lrs: Vec<f64> = trained
        .iter()
        .map(|&i| if p.names[i] == "nmf_decoder" || p.names[i] == "gamma" { 4e-6 } else { 4e-4 })
        .collect();
    let mut opt = Adam::new(AdamConfig { weight_decay: 1e-5, ..Default::default() }, &sizes);
    let mut losses = Vec::new();
    for _ in 0..3 {
        let batch = JointBatch { image: &image, shape: is, vd: &vd, tiles: &tiles(()) };
        let out = head.step(&cpu, &net, &mut p, &batch, &w, true);
        losses.push(out.loss);
        p.adam_step(&cpu, &mut opt, &trained, &lrs);
    }
    let want: Vec<f64> = r["losses_3_steps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (a, b) in losses.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4 * b, "losses {losses:?} vs {want:?}");
    }
    let mut errs: Vec<f64> = Vec::new();
    for &i in &trained {
        let g = fingerprint(&p.kinds[i].to_torch(&p.data[i]));
        let wv: Vec<f64> =
            r["after_3_steps"][&p.names[i]].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let e = rel(&g[1..], &wv[1..]);
        // PyTorch's own float32 run is 1.55e-3 from its float64 run on one tensor here
        // (down_path.0.conv_1.bias: an element whose gradient is ~0 takes a ±lr step either
        // way; median over tensors 1.2e-5); see the pre-training test for why.
        assert!(e < 3e-3, "{} after 3 steps: {e}", p.names[i]);
        errs.push(e);
    }
    errs.sort_by(f64::total_cmp);
    eprintln!(
        "joint after 3 steps: median {:e}, worst {:e}; losses {losses:?}",
        errs[errs.len() / 2],
        errs.last().unwrap()
    );
    assert!(errs[errs.len() / 2] < 1e-4);
}

#[test]
fn embedding_pass_and_bilinear_upsampling_match_pytorch() {
    let (net, p, image, is, _) = setup();
    let emb = net.embed(&Cpu::new(), &p, &image, is);
    let want: Vec<f64> = read_npy::<f32>(&fixture("unet/embedding.npy")).1.iter().map(|&v| v as f64).collect();
    let e = rel(&emb.iter().map(|&v| v as f64).collect::<Vec<_>>(), &want);
    eprintln!("embedding (2 × 128) relative error {e:e}");
    assert_eq!(emb.len(), 2 * 128);
    assert!(e < 1e-5, "{e}");
    // the 21 × 21 window at rows 3.., cols 5.. of each image, upsampled to 64 × 64
    let mut got = Vec::new();
    for n in 0..2 {
        let mut win = Vec::new();
        for y in 3..24 {
            for x in 5..26 {
                win.extend_from_slice(&image[((n * 64 + y) * 64 + x) * 3..((n * 64 + y) * 64 + x + 1) * 3]);
            }
        }
        got.extend(resize_bilinear_ac(&win, 21, 21, 3, 64, 64).into_iter().map(|v| v as f64));
    }
    let want: Vec<f64> = read_npy::<f32>(&fixture("unet/upsampled_nhwc.npy")).1.iter().map(|&v| v as f64).collect();
    let e = rel(&got, &want);
    eprintln!("align_corners bilinear upsampling relative error {e:e}");
    assert!(e < 1e-6, "{e}");
}

/// The package's own saved model, converted by tools/import_pth.py and loaded by our
/// checkpoint reader, reproduces the package's prediction: names, shapes and layouts agree.
/// The 10 MB `.pth` is not stored: `python tools/make_import_fixtures.py --full DIR` writes it,
/// and SPAHDMAP_FULL_PTH=DIR/pretrained_model.pth runs this check.
#[test]
fn an_imported_reference_model_reproduces_its_forward() {
    let Ok(pth) = std::env::var("SPAHDMAP_FULL_PTH") else {
        eprintln!("skipped: SPAHDMAP_FULL_PTH not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pretrained.safetensors");
    let o = std::process::Command::new("python3")
        .arg(common::root().join("tools/import_pth.py"))
        .arg(&pth)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (net, want_p, image, is, _) = setup();
    let (_, mut p) = UNet::new(3, 99);
    let cpu = Cpu::new();
    spahdmap::model::checkpoint::load(&cpu, &out, &mut p, None).unwrap();
    assert_eq!(p.data, want_p.data, "imported weights");
    let a = net.forward(&cpu, &p, &image, is);
    let want: Vec<f64> = read_npy::<f32>(&fixture("unet/pred_nhwc.npy")).1.iter().map(|&v| v as f64).collect();
    let e = rel(&a.pred.as_ref().unwrap().iter().map(|&v| v as f64).collect::<Vec<_>>(), &want);
    eprintln!("imported model: prediction relative error {e:e}");
    assert!(e < 1e-5);
}
