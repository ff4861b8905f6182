//! The stage driver of `spahdmap run`: runs the stages in order up to `--to`, records each
//! finished stage in `.stages/STAGE.json` (written last, atomically), and on a rerun resumes
//! after the last finished stage; `--from` redoes a stage and everything after it.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::config::SectionSpec;
use crate::io::spots::TableOptions;
use crate::stages::downstream::{run_downstream, DownstreamSettings};
use crate::stages::preprocess::{run_preprocess, PreprocessSettings};
use crate::stages::pretrain::{run_pretrain, PretrainSettings};
use crate::stages::results::SectionDir;
use crate::stages::score::{run_score, ScoreSettings};
use crate::stages::spot::{run_gcn, run_nmf, run_vd, SpotSettings};
use crate::stages::train::{run_train, TrainSettings};
use crate::stages::Stage;
use crate::util::{atomic_write, peak_rss_bytes};

pub struct Pipeline<'a> {
    pub specs: &'a [SectionSpec],
    pub table: &'a TableOptions,
    pub refs: &'a [(String, String)],
    pub preprocess: &'a PreprocessSettings,
    pub spot: &'a SpotSettings,
    pub pretrain: &'a PretrainSettings,
    pub train: &'a TrainSettings,
    pub score: &'a ScoreSettings,
    pub downstream: &'a DownstreamSettings,
    pub out: &'a Path,
}

fn marker(out: &Path, st: Stage) -> std::path::PathBuf {
    out.join(".stages").join(format!("{}.json", st.name()))
}

impl Pipeline<'_> {
    fn sections(&self) -> Result<Vec<SectionDir>> {
        self.specs.iter().map(|s| SectionDir::open(self.out, &s.name)).collect()
    }

    fn run_stage(&self, st: Stage) -> Result<Value> {
        Ok(match st {
            Stage::Preprocess => {
                let metas = run_preprocess(self.specs, self.table, self.preprocess, self.out)?;
                for m in &metas {
                    eprintln!(
                        "{}: {} spots, {} pseudo spots, {} genes, {} tiles, crop {}×{} at ({}, {}) of the 1/{} image, radius {} px, {:?}",
                        m.section, m.spots, m.pseudo_spots, m.genes, m.tiles.len(), m.height, m.width, m.row0, m.col0, m.scale_rate, m.radius, m.image_type
                    );
                    for w in &m.warnings {
                        eprintln!("warning: {}: {w}", m.section);
                    }
                }
                json!({"sections": metas.len()})
            }
            Stage::Nmf => {
                run_nmf(self.out, &self.sections()?, self.refs, self.spot)?;
                json!({})
            }
            Stage::Gcn => {
                let reports = run_gcn(self.out, &self.sections()?, self.refs, self.spot)?;
                for r in &reports {
                    eprintln!(
                        "gcn {}: {} edges, loss {:.5} → {:.5}, {:.0}% of scores kept ({} embeddings)",
                        r.section,
                        r.edges,
                        r.first_loss,
                        r.final_loss,
                        100.0 * r.nonzero_fraction,
                        r.embedding
                    );
                }
                json!({ "sections": reports })
            }
            Stage::Pretrain => {
                let r = run_pretrain(self.out, &self.sections()?, self.pretrain)?;
                if let Some(src) = &r.imported_from {
                    eprintln!("pretrain: network taken from {src}");
                    return Ok(json!(r));
                }
                eprintln!(
                    "pretrain: {} tiles, {} iterations{}, loss {:.5}",
                    r.tiles,
                    r.iterations,
                    if r.stopped_early { " (converged early)" } else { "" },
                    r.losses.last().copied().unwrap_or(r.last_batch_loss)
                );
                json!(r)
            }
            Stage::Vd => json!({ "sections": run_vd(&self.sections()?, self.spot)? }),
            Stage::Train => {
                let r = run_train(self.out, &self.sections()?, self.refs, self.train)?;
                if let Some(src) = &r.imported_from {
                    eprintln!("train: joint network and metagenes taken from {src}");
                    return Ok(json!(r));
                }
                eprintln!(
                    "train: {} tiles, {} iterations (all parameters from {}), loss {:.5} (image {:.5}, expression {:.5})",
                    r.tiles,
                    r.iterations,
                    r.second_phase_from.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    r.last_loss,
                    r.last_image_loss,
                    r.last_expression_loss
                );
                json!(r)
            }
            Stage::Score => {
                let reports = run_score(self.out, &self.sections()?, self.refs, self.score)?;
                for r in &reports {
                    eprintln!(
                        "score {}: {} tiles, {} × {} × {}, {} low-signal pixels left the mask",
                        r.section, r.tiles, r.rank, r.height, r.width, r.low_signal_pixels
                    );
                }
                json!({ "sections": reports })
            }
            Stage::Downstream => {
                let r = run_downstream(self.out, &self.sections()?, self.downstream)?;
                for sc in &r.sections {
                    eprintln!(
                        "downstream {}: {} spots and {} pixels (1/{} scale) in {} clusters",
                        sc.section, sc.spots, sc.pixels, self.downstream.shrink, r.clusters
                    );
                }
                json!(r)
            }
            _ => unreachable!("not run by this driver"),
        })
    }

    /// Run up to `to`; `from` forces a redo from that stage.
    pub fn run(&self, from: Option<Stage>, to: Stage) -> Result<Vec<Value>> {
        std::fs::create_dir_all(self.out.join(".stages")).map_err(|e| Error::io(self.out, e))?;
        let stale = crate::util::remove_stale_partials(self.out);
        if stale > 0 {
            eprintln!("removed {stale} temporary files of an interrupted run");
        }
        let mut records = Vec::new();
        let mut upstream_ran = false;
        // `load` is part of preprocess here
        for st in crate::stages::ALL.into_iter().filter(|&s| s != Stage::Load) {
            if st > to {
                break;
            }
            let m = marker(self.out, st);
            let forced = from.is_some_and(|f| f <= st);
            if m.exists() && !forced && !upstream_ran {
                eprintln!("{st}: finished in an earlier run, kept (use --from {st} to redo)");
                continue;
            }
            // this stage and everything after it are stale from here on
            for later in crate::stages::ALL.iter().filter(|&&s| s >= st) {
                let _ = std::fs::remove_file(marker(self.out, *later));
            }
            let t = Instant::now();
            let detail = self.run_stage(st)?;
            let rec = json!({"stage": st.name(), "seconds": t.elapsed().as_secs_f64(), "peak_rss_bytes": peak_rss_bytes(), "detail": detail});
            atomic_write(&m, serde_json::to_string_pretty(&rec).unwrap().as_bytes())?;
            eprintln!("{st}: {:.1} s", t.elapsed().as_secs_f64());
            records.push(rec);
            upstream_ran = true;
        }
        Ok(records)
    }

    /// Every finished stage's record, in order (for `run.json`).
    pub fn finished(&self) -> Vec<Value> {
        crate::stages::ALL
            .iter()
            .filter_map(|&st| std::fs::read_to_string(marker(self.out, st)).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect()
    }
}
