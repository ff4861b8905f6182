//! The `score` stage (SPEC §10): the trained network's high-definition embedding of each
//! section.
//!
//! The crop is zero-padded by bound = ⌈0.05·split⌉ and cut into split × split tiles at
//! stride split − ⌊0.15·split⌋ (the last row and column flush with the far edge, as the
//! reference's `HE_Score_Dataset`); each tile's HR score is weighted by a frame that is 1
//! except a bound-wide border, overlapping tiles are averaged by the summed frame, and the
//! padding is removed. Tiles run one row of tiles at a time and every padded row is final
//! once the next row of tiles starts below it, so the R × H × W f16 result is written band
//! by band through a memory map and peak memory is one band (split rows × width × R), not
//! the slide. Then the spot-level score (the median of each component over each spot's disk)
//! and the low-signal mask (pixels whose components, as 0–255 values, sum to < 15). The map is
//! also written as a pyramidal OME-TIFF for slide viewers (`io::ome_tiff`).

use std::path::Path;

use half::f16;
use rayon::prelude::*;
use serde::Serialize;

use crate::backend::graphs::RecordedOut;
use crate::backend::streamed::InputRing;
use crate::backend::{Backend, Cpu, FrozenWeights, Host, Shape};
use crate::error::{Error, Result};
use crate::io::image::ImageCache;
use crate::io::npy::write_npy;
use crate::model::checkpoint;
use crate::model::joint::JointHead;
use crate::model::unet::UNet;
use crate::stages::results::{csv_field, read_metagenes, F16NpyWriter, ScoreMap, SectionDir};
use crate::util::atomic_write;

#[derive(Debug, Clone, Serialize)]
pub struct ScoreSettings {
    pub split_size: usize,
    /// where the network runs
    #[serde(skip)]
    pub device: crate::backend::Device,
    /// tiles per forward pass
    pub batch: usize,
    pub overlap_ratio: f64,
    pub bound_ratio: f64,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings { split_size: 256, batch: 32, overlap_ratio: 0.15, bound_ratio: 0.05, device: Default::default() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    pub section: String,
    pub tiles: usize,
    pub height: usize,
    pub width: usize,
    pub rank: usize,
    /// tissue pixels that left the mask for low signal
    pub low_signal_pixels: usize,
}

/// Tile starts along one padded axis of length `len`: stride split − overlap, the last one
/// flush with the end (a single tile when the axis is shorter than a tile).
pub fn tile_starts(len: usize, split: usize, overlap: usize) -> Vec<usize> {
    if len <= split {
        return vec![0];
    }
    let step = split - overlap;
    let n = (len - split).div_ceil(step) + 1;
    (0..n).map(|i| if i + 1 == n { len - split } else { i * step }).collect()
}

/// A batch of tiles: its row, its columns, the image and the VD prior (channels last).
type Batch<V> = (usize, Vec<usize>, Vec<f32>, Vec<V>);

/// The parts one after another, copied on all threads: a batch is ~100 MB, which one thread
/// copying would take longer over than the GPU takes over the batch.
fn concat_parallel<T: Copy + Default + Send + Sync>(parts: &[Vec<T>]) -> Vec<T> {
    let mut out = vec![T::default(); parts.iter().map(Vec::len).sum()];
    let mut rest = out.as_mut_slice();
    let mut dsts = Vec::with_capacity(parts.len());
    for p in parts {
        let (d, r) = std::mem::take(&mut rest).split_at_mut(p.len());
        dsts.push(d);
        rest = r;
    }
    dsts.into_par_iter().zip(parts.par_iter()).for_each(|(d, p)| d.copy_from_slice(p));
    out
}

/// The tiled, frame-averaged HR map of a crop of `h` × `w`: `tile(r0, c0)` gives the image and
/// VD windows of a tile at crop coordinates (possibly negative: the padding), `infer` the HR
/// of a batch of them on the backend, `emit` each finished crop row (channels last). Returns
/// the tile count.
///
/// Three stages run at once so that the network never waits on the disk: a reader thread
/// prepares the next batch of tiles while this thread runs the network and averages the tiles
/// where the backend keeps them (on a GPU: on the device; only finished rows come back), and a
/// writer thread takes the finished rows. Queues are short (one batch, 64 rows), so memory
/// stays bounded by the batch and the band, not the slide.
#[allow(clippy::too_many_arguments)]
pub fn average_tiles<B: Backend, V: Copy + Default + Send + Sync>(
    b: &B,
    h: usize,
    w: usize,
    rank: usize,
    s: &ScoreSettings,
    tile: impl Fn(i64, i64) -> Result<(Vec<f32>, Vec<V>)> + Sync,
    mut infer: impl FnMut(&[f32], &[V], usize, &mut dyn FnMut(&B::Buf)),
    emit: impl FnMut(usize, &[f32]) -> Result<()> + Send,
    mut progress: impl FnMut(usize),
) -> Result<usize> {
    let ss = s.split_size;
    let bound = (s.bound_ratio * ss as f64).ceil() as usize;
    let overlap = (s.overlap_ratio * ss as f64).floor() as usize;
    let (hp, wp) = (h + 2 * bound, w + 2 * bound);
    let rows = tile_starts(hp, ss, overlap);
    let cols = tile_starts(wp, ss, overlap);
    let batch = s.batch.max(1);
    // a crop narrower than a tile: the band is one tile wide, the rest is padding
    let mut band = b.band(rank, ss, bound, wp.max(ss));
    std::thread::scope(|scope| {
        let (tiles_tx, tiles_rx) = std::sync::mpsc::sync_channel::<Result<Batch<V>>>(1);
        let (rows, cols, tile) = (&rows, &cols, &tile);
        scope.spawn(move || {
            for &r0 in rows {
                for chunk in cols.chunks(batch) {
                    let parts: Result<Vec<(Vec<f32>, Vec<V>)>> =
                        chunk.par_iter().map(|&c0| tile(r0 as i64 - bound as i64, c0 as i64 - bound as i64)).collect();
                    let item = parts.map(|parts| {
                        let (img, vd): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
                        (r0, chunk.to_vec(), concat_parallel(&img), concat_parallel(&vd))
                    });
                    let failed = item.is_err();
                    // a closed queue: the consumer stopped on an error of its own
                    if tiles_tx.send(item).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let (rows_tx, rows_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<f32>)>(64);
        let writer = scope.spawn(move || -> Result<()> {
            let mut emit = emit;
            for (y, row) in rows_rx {
                emit(y, &row)?;
            }
            Ok(())
        });
        // rows of the crop go to the writer; an error once it has stopped (its own error wins)
        let mut emit_crop = |prow: usize, vals: &[f32]| -> Result<()> {
            if prow >= bound && prow < bound + h && rows_tx.send((prow - bound, vals[..w * rank].to_vec())).is_err() {
                return Err(Error::Other("score: the row writer stopped".into()));
            }
            Ok(())
        };
        let mut run = || -> Result<usize> {
            let mut count = 0;
            let mut top = None;
            for item in tiles_rx.iter() {
                let (r0, chunk, img, vd) = item?;
                if top != Some(r0) {
                    b.band_advance(&mut band, r0, &mut emit_crop)?;
                    top = Some(r0);
                }
                infer(&img, &vd, chunk.len(), &mut |hr| {
                    for (i, &c0) in chunk.iter().enumerate() {
                        b.band_add(&mut band, c0, hr, i);
                    }
                });
                count += chunk.len();
                progress(chunk.len());
            }
            let last = *rows.last().unwrap();
            b.band_advance(&mut band, hp.max(last + ss), &mut emit_crop)?;
            b.band_flush(&mut band, &mut emit_crop)?;
            Ok(count)
        };
        let result = run();
        drop(tiles_rx);
        drop(rows_tx);
        let written = writer.join().expect("the row writer panicked");
        // the writer's own error explains a stop better than the closed queue it caused
        written?;
        result
    })
}

/// np.quantile(values, 0.5) of half floats: the middle value, or the two middles' mean
/// rounded to half precision.
fn median_f16(v: &mut [f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        let (a, b) = (v[n / 2 - 1], v[n / 2]);
        f16::from_f32(a + (b - a) * 0.5).to_f32() as f64
    }
}

/// Each spot's median of each component over the disk of radius ⌊r⌋ around its centre
/// truncated to integers (the reference's `_calculate_spot_score`), spots in crop coordinates.
pub fn spot_medians(map: &ScoreMap, spots: &[[f64; 2]], radius: f64) -> Vec<f64> {
    let r = radius as i64;
    let (h, w, rank) = (map.height as i64, map.width as i64, map.rank);
    let median = |s: &[f64; 2], o: &mut [f64]| {
        let (row, col) = (s[0] as i64, s[1] as i64);
        let mut px = Vec::new();
        for y in (row - r).max(0)..(row + r + 1).min(h) {
            for x in (col - r).max(0)..(col + r + 1).min(w) {
                if (y - row).pow(2) + (x - col).pow(2) <= r * r {
                    px.push((y as usize, x as usize));
                }
            }
        }
        let mut vals = Vec::with_capacity(px.len());
        for (k, ok) in o.iter_mut().enumerate() {
            vals.clear();
            vals.extend(px.iter().map(|&(y, x)| map.get(k, y, x)));
            *ok = median_f16(&mut vals);
        }
    };
    // spots top to bottom in bands of rows, so the map's pages can leave memory behind the
    // band: the disks tile the tissue and would otherwise map the whole file in
    let mut order: Vec<usize> = (0..spots.len()).collect();
    order.sort_by(|&a, &b| spots[a][0].total_cmp(&spots[b][0]));
    let mut out = vec![0f64; spots.len() * rank];
    let (mut i, mut released) = (0usize, 0i64);
    while i < order.len() {
        let top = spots[order[i]][0] as i64;
        let j = i + order[i..].partition_point(|&q| (spots[q][0] as i64) < top + 256);
        let done: Vec<(usize, Vec<f64>)> = order[i..j]
            .par_iter()
            .map(|&q| {
                let mut o = vec![0f64; rank];
                median(&spots[q], &mut o);
                (q, o)
            })
            .collect();
        for (q, o) in done {
            out[q * rank..(q + 1) * rank].copy_from_slice(&o);
        }
        let next = if j < order.len() { spots[order[j]][0] as i64 - r } else { h };
        if next > released {
            map.release_rows(released.max(0) as usize, next.clamp(0, h) as usize);
            released = next;
        }
        i = j;
    }
    out
}

/// (score·255 in half precision) as uint8, summed over components, < 15: low signal.
fn low_signal(vals: &[f32]) -> bool {
    let sum: u32 = vals.iter().map(|&v| f16::from_f32(f16::from_f32(v).to_f32() * 255.0).to_f32() as u8 as u32).sum();
    sum < 15
}

/// `spots.csv`: barcode, row, col (the score maps' pixel frame), then each component's spot
/// score.
fn write_spots_csv(path: &Path, barcodes: &[String], spots: &[[f64; 2]], scores: &[f64], rank: usize) -> Result<()> {
    if barcodes.len() != spots.len() {
        return Err(Error::format(path, "barcodes", format!("{} barcodes for {} spots", barcodes.len(), spots.len())));
    }
    let mut s = String::from("barcode,row,col");
    s.extend((1..=rank).map(|k| format!(",SpaHDmap_{k}")));
    s.push('\n');
    for ((b, p), row) in barcodes.iter().zip(spots).zip(scores.chunks(rank)) {
        s.push_str(&format!("{},{},{}", csv_field(b), p[0], p[1]));
        for v in row {
            s.push_str(&format!(",{}", *v as f32));
        }
        s.push('\n');
    }
    atomic_write(path, s.as_bytes())
}

pub fn run_score(
    out: &Path,
    sections: &[SectionDir],
    refs: &[(String, String)],
    s: &ScoreSettings,
) -> Result<Vec<ScoreReport>> {
    crate::on_device!(s.device, b => score_on(b, out, sections, refs, s))
}

/// `run_score` on a given backend.
pub fn score_on<B: Backend>(
    b: &B,
    out: &Path,
    sections: &[SectionDir],
    refs: &[(String, String)],
    s: &ScoreSettings,
) -> Result<Vec<ScoreReport>> {
    let (genes, _, rank) = read_metagenes(&out.join("metagene.csv"))?;
    let channels = sections[0].meta.channels;
    let (net, mut host) = UNet::new(channels, 0);
    let head = JointHead::new(&mut host, channels, rank, genes.len(), refs.len(), 0);
    checkpoint::load(&Cpu::new(), &out.join("models/trained.safetensors"), &mut host, None)?;
    let p = host.upload(b);
    drop(host);
    // the weights stay as loaded for every batch: their f16 packings are made once
    let _frozen = FrozenWeights::on(b);
    let ss = s.split_size;
    let mut reports = Vec::new();
    for sd in sections {
        let m = &sd.meta;
        let (h, w) = (m.height, m.width);
        let image = ImageCache::open_existing(&m.scaled_image_cache)?;
        let vd = ScoreMap::open(&sd.path("VD_score.npy"), rank, h, w)?;
        // rows above the current band of tiles are never read again: their pages leave memory
        let released = std::sync::atomic::AtomicI64::new(0);
        let (row0, col0) = (m.row0 as i64, m.col0 as i64);
        // the reference pads the crop itself: image pixels outside it are zeros
        // the VD prior stays in its file's f16: half the bytes over the bus of widened values
        let tile = |r: i64, c: i64| -> Result<(Vec<f32>, Vec<f16>)> {
            let mut img = image.read_region_unit(row0 + r, col0 + c, ss, ss)?;
            for y in 0..ss {
                for x in 0..ss {
                    let (yy, xx) = (r + y as i64, c + x as i64);
                    if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                        img[(y * ss + x) * channels..(y * ss + x + 1) * channels].fill(0.0);
                    }
                }
            }
            let done = released.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
            if r > done && r > 0 {
                vd.release_rows(done.max(0) as usize, r as usize);
            }
            Ok((img, vd.window_f16(r, c, ss, ss)))
        };
        // a batch's tiles go up while the batch before it computes (double-buffered inputs)
        let mut inputs = InputRing::<B>::default();
        // the network's batch as one recorded launch where recordings are on
        let mut batch = RecordedOut::<B>::default();
        let infer = |img: &[f32], v: &[f16], n: usize, use_hr: &mut dyn FnMut(&B::Buf)| {
            let bufs = inputs.fill(b, &[Host::F32(img), Host::F16(v)]);
            let is = Shape { n, h: ss, w: ss, c: channels };
            let hr = batch.run(b, n as u64, &[&bufs[0], &bufs[1]], &|x| head.hr_scores(b, &net, &p, x[0], is, x[1]));
            use_hr(hr);
            inputs.done(b);
        };
        let mut mask = sd.mask()?;
        let before = mask.count();
        let path = sd.path("SpaHDmap_score.npy");
        let total = {
            let bound = (s.bound_ratio * ss as f64).ceil() as usize;
            let ov = (s.overlap_ratio * ss as f64).floor() as usize;
            tile_starts(h + 2 * bound, ss, ov).len() * tile_starts(w + 2 * bound, ss, ov).len()
        };
        let pb = crate::util::progress_count(total as u64, &format!("score {}", m.section));
        let tiles = F16NpyWriter::create(&path, &[rank, h, w], |wr| {
            let mut planes = vec![0f32; w];
            let mut band_start = 0usize;
            let emit = |y: usize, row: &[f32]| -> Result<()> {
                for k in 0..rank {
                    for x in 0..w {
                        planes[x] = row[x * rank + k];
                    }
                    wr.write((k * h + y) * w, &planes);
                }
                for x in 0..w {
                    if mask.get(y, x) && low_signal(&row[x * rank..(x + 1) * rank]) {
                        mask.set(y, x, false);
                    }
                }
                // finished bands leave memory (whole pages only)
                if y + 1 == h || y + 1 - band_start >= 64 {
                    for k in 0..rank {
                        wr.release((k * h + band_start) * w, (k * h + y + 1) * w)?;
                    }
                    band_start = y + 1;
                }
                Ok(())
            };
            average_tiles(b, h, w, rank, s, tile, infer, emit, |n| pb.inc(n as u64))
        })?;
        inputs.release(b);
        batch.release(b);
        pb.finish_and_clear();
        let (spots, n) = sd.all_spots()?;
        let crop: Vec<[f64; 2]> = spots[..n].iter().map(|q| [q[0] - m.row0 as f64, q[1] - m.col0 as f64]).collect();
        let map = ScoreMap::open(&path, rank, h, w)?;
        let names: Vec<String> = (1..=rank).map(|k| format!("Embedding_{k}")).collect();
        crate::io::ome_tiff::write_ome_tiff(&sd.path("SpaHDmap_score.ome.tif"), h, w, &names, |k, y, x| {
            // each level reads a component top to bottom: drop the rows behind it as it goes
            if x == 0 && y % 256 == 0 && y >= 512 {
                map.release_component_rows(k, y - 512, y - 256);
            }
            map.get(k, y, x)
        })?;
        map.release_rows(0, h);
        let med = spot_medians(&map, &crop, m.radius as f64);
        map.release_rows(0, h);
        write_npy(&sd.path("SpaHDmap_spot_score.npy"), &[n as u64, rank as u64], med.iter().copied())?;
        write_spots_csv(&sd.path("spots.csv"), &sd.barcodes()?, &crop, &med, rank)?;
        write_npy(&sd.path("SpaHDmap_mask.npy"), &[h as u64, w as u64], mask.iter())?;
        let map_meta = serde_json::json!({
            "file": "SpaHDmap_score.npy",
            "shape": [rank, h, w],
            "dtype": "float16",
            "components": names,
            "genes": genes,
            "section": m.section,
            "image": m.image,
            "to_original_image": {
                "row": format!("(row + {}) * {}", m.row0, m.scale_rate),
                "col": format!("(col + {}) * {}", m.col0, m.scale_rate),
                "row0": m.row0, "col0": m.col0, "scale_rate": m.scale_rate,
            },
            "spot_radius_px": m.radius,
            "spot_radius_original_px": m.original_radius,
        });
        atomic_write(&sd.path("SpaHDmap_score.json"), serde_json::to_string_pretty(&map_meta).unwrap().as_bytes())?;
        reports.push(ScoreReport {
            section: m.section.clone(),
            tiles,
            height: h,
            width: w,
            rank,
            low_signal_pixels: before - mask.count(),
        });
    }
    if reports.is_empty() {
        return Err(Error::setting("sections", "no section to score"));
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_follow_the_reference_dataset() {
        // 1000 padded rows, split 256, overlap 38: ceil(744/218)+1 = 5 starts, last flush
        assert_eq!(tile_starts(1000, 256, 38), vec![0, 218, 436, 654, 744]);
        assert_eq!(tile_starts(256, 256, 38), vec![0]);
        assert_eq!(tile_starts(474, 256, 38), vec![0, 218]);
    }

    /// With a "network" that returns its VD input, the frame-weighted average of overlapping
    /// tiles must give the VD map back wherever some frame covers a pixel, streamed in order.
    #[test]
    fn averaging_overlapping_tiles_reproduces_a_map_the_network_passes_through() {
        let (h, w, rank) = (83usize, 61usize, 2usize);
        let truth = |k: usize, y: i64, x: i64| ((y * 7 + x * 3 + k as i64 * 11) % 29) as f32 / 29.0 + 0.01;
        let s = ScoreSettings {
            split_size: 32,
            batch: 3,
            overlap_ratio: 0.15,
            bound_ratio: 0.05,
            device: Default::default(),
        };
        let tile = |r: i64, c: i64| -> Result<(Vec<f32>, Vec<f32>)> {
            let mut v = vec![0f32; 32 * 32 * rank];
            for y in 0..32 {
                for x in 0..32 {
                    let (yy, xx) = (r + y as i64, c + x as i64);
                    if yy >= 0 && xx >= 0 && yy < h as i64 && xx < w as i64 {
                        for k in 0..rank {
                            v[(y * 32 + x) * rank + k] = truth(k, yy, xx);
                        }
                    }
                }
            }
            Ok((vec![0.0; 32 * 32 * 3], v))
        };
        let mut rows = Vec::new();
        let n = average_tiles(
            &Cpu::new(),
            h,
            w,
            rank,
            &s,
            tile,
            |_, vd, _, use_hr| use_hr(&vd.to_vec()),
            |y, row| {
                rows.push((y, row.to_vec()));
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        // padded 87 × 65, stride 28: rows 0, 28, 55; cols 0, 28, 33
        assert_eq!(n, 9);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), (0..h).collect::<Vec<_>>());
        for (y, row) in &rows {
            for x in 0..w {
                for k in 0..rank {
                    let (got, want) = (row[x * rank + k], truth(k, *y as i64, x as i64));
                    assert!((got - want).abs() < 1e-6, "({y}, {x}, {k}): {got} vs {want}");
                }
            }
        }
    }

    /// A failing tile read and a failing row write each stop the stage with their own error,
    /// whichever thread they happen on, and nothing hangs.
    #[test]
    fn reader_and_writer_errors_stop_the_tiling() {
        let s = ScoreSettings { split_size: 32, batch: 2, ..Default::default() };
        let (h, w, rank) = (200usize, 150usize, 2usize);
        let ok = |_: i64, _: i64| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((vec![0.0; 32 * 32 * 3], vec![0.5; 32 * 32 * rank]))
        };
        let bad_tile = |r: i64, _: i64| -> Result<(Vec<f32>, Vec<f32>)> {
            if r > 60 {
                Err(Error::Other("tile read failed".into()))
            } else {
                ok(r, 0)
            }
        };
        let cpu = Cpu::new();
        let mut emitted = 0;
        let e = average_tiles(
            &cpu,
            h,
            w,
            rank,
            &s,
            bad_tile,
            |_, vd, _, use_hr| use_hr(&vd.to_vec()),
            |_, _| {
                emitted += 1;
                Ok(())
            },
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("tile read failed"), "{e}");
        assert!(emitted > 0 && emitted < h, "rows above the failure were written: {emitted}");
        let e = average_tiles(
            &cpu,
            h,
            w,
            rank,
            &s,
            ok,
            |_, vd, _, use_hr| use_hr(&vd.to_vec()),
            |y, _| {
                if y == 40 {
                    return Err(Error::Other("disk full".into()));
                }
                Ok(())
            },
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
    }

    #[test]
    fn batches_concatenate_in_order() {
        let parts: Vec<Vec<u32>> = [5usize, 0, 3, 1 << 16, 7]
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n as u32).map(|i| i * 10 + k as u32).collect())
            .collect();
        assert_eq!(concat_parallel(&parts), parts.concat());
        assert!(concat_parallel::<f16>(&[]).is_empty());
    }

    #[test]
    fn medians_and_the_low_signal_rule() {
        assert_eq!(median_f16(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f16(&mut [0.25, 0.5]), 0.375);
        // 0.03·255 = 7.65 → 7 in uint8; two of them 14 < 15, three 21
        assert!(low_signal(&[0.03, 0.03]));
        assert!(!low_signal(&[0.03, 0.03, 0.03]));
    }
}
