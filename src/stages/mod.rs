//! Pipeline stages, in order (SPEC §12). Each writes its results into the results folder
//! so that a later run resumes after the last finished stage.

pub mod cluster;
pub mod downstream;
pub mod embed;
pub mod gcn;
pub mod genes;
pub mod gmm;
pub mod graph;
pub mod nmf;
pub mod pipeline;
pub mod preprocess;
pub mod pretrain;
pub mod results;
pub mod score;
pub mod spot;
pub mod train;
pub mod voronoi;

use std::fmt;
use std::str::FromStr;

/// The stages of `spahdmap run`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Load,
    Preprocess,
    Nmf,
    Pretrain,
    Gcn,
    Vd,
    Train,
    Score,
    Downstream,
}

pub const ALL: [Stage; 9] = [
    Stage::Load,
    Stage::Preprocess,
    Stage::Nmf,
    Stage::Pretrain,
    Stage::Gcn,
    Stage::Vd,
    Stage::Train,
    Stage::Score,
    Stage::Downstream,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Load => "load",
            Stage::Preprocess => "preprocess",
            Stage::Nmf => "nmf",
            Stage::Pretrain => "pretrain",
            Stage::Gcn => "gcn",
            Stage::Vd => "vd",
            Stage::Train => "train",
            Stage::Score => "score",
            Stage::Downstream => "downstream",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter()
            .copied()
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("unknown stage {s:?} (stages: {})", ALL.map(|s| s.name()).join(", ")))
    }
}
