//! `spahdmap bench unet`'s modes on the CPU at toy sizes: each prints one JSON line with its
//! timing and the measure the benchmarks table quotes.
mod common;

fn bench(args: &[&str]) -> serde_json::Value {
    let o = common::bin().args(["bench", "unet", "--batch", "2", "--repeat", "1"]).args(args).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn unet_bench_modes_report_their_measures() {
    let v = bench(&["--size", "32"]);
    assert_eq!(v["bench"], "unet_pretrain_iteration");
    let d = &v["detail"];
    let parts = d["forward_s"].as_f64().unwrap() + d["backward_s"].as_f64().unwrap() + d["adam_s"].as_f64().unwrap();
    assert!((v["median_s"].as_f64().unwrap() - parts).abs() < 1e-9 && parts > 0.0);

    let v = bench(&["--size", "32", "--infer"]);
    assert_eq!(v["bench"], "unet_hd_inference");
    let (t, mpx) = (v["median_s"].as_f64().unwrap(), v["detail"]["megapixel_per_s"].as_f64().unwrap());
    assert!(t > 0.0 && (mpx * t - 2.0 * 32.0 * 32.0 / 1e6).abs() < 1e-12, "{v}");
    // with the inputs uploaded each batch, in turn and overlapped (double-buffered)
    let up = &v["detail"]["with_uploads"];
    for k in ["serial_f32_megapixel_per_s", "overlapped_megapixel_per_s"] {
        assert!(up[k].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{k}: {v}");
    }
    // the stage's inputs: the image in f32 and the rank-20 VD prior in f16, against all-f32
    let px = 2.0 * 32.0 * 32.0;
    assert_eq!(v["detail"]["input_mb_per_batch"].as_f64().unwrap(), px * (3.0 * 4.0 + 20.0 * 2.0) / 1e6);
    assert_eq!(up["serial_f32_input_mb_per_batch"].as_f64().unwrap(), px * 23.0 * 4.0 / 1e6);

    let v = bench(&["--size", "32", "--embed-spots", "3"]);
    assert_eq!(v["bench"], "unet_spot_embedding");
    assert_eq!(v["detail"]["spots"], 4, "whole batches");

    let v = bench(&["--size", "96", "--joint"]);
    assert_eq!(v["bench"], "unet_joint_iteration");
    assert_eq!(v["detail"]["spots_per_tile"], 1);
    assert!(v["detail"]["loss"].as_f64().unwrap().is_finite());
}
