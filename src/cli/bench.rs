//! `spahdmap bench`: timings reported as medians of several runs.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use crate::error::Result;
use crate::io::image::decode_bands;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Decode an image (no cache) and report pixel throughput.
    Decode {
        image: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        BenchWhat::Decode { image, repeat, json } => {
            let mut times = Vec::new();
            let mut bytes = 0u64;
            for _ in 0..repeat.max(1) {
                let t = Instant::now();
                bytes = 0;
                let mut checksum = 0u64;
                decode_bands(&image, &mut |band| {
                    bytes += band.len() as u64;
                    checksum = checksum.wrapping_add(band[band.len() / 2] as u64);
                    Ok(())
                })?;
                std::hint::black_box(checksum);
                times.push(t.elapsed().as_secs_f64());
            }
            let m = median(times);
            let mbps = bytes as f64 / 1e6 / m;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "decode", "image": image, "bytes": bytes, "median_s": m, "mb_per_s": mbps, "repeat": repeat})
                );
            } else {
                println!(
                    "decode {}: {:.1} MB of pixels, median {:.3} s over {} runs, {:.0} MB/s",
                    image.display(),
                    bytes as f64 / 1e6,
                    m,
                    repeat,
                    mbps
                );
            }
        }
    }
    Ok(())
}
