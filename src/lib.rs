//! spahdmap: the SpaHDmap method — spatial transcriptomics spots fused with the histology
//! image into interpretable, pixel-resolution embeddings — on CPU and CUDA.
//!
//! Data flows one way: `io` (readers, image cache, writers) → `preprocess` → stages →
//! results. `cli` only parses flags and calls into the library.

// Numeric loops index several arrays at once; iterator chains would read worse.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod cli;
pub mod error;
pub mod inspect;
pub mod io;
pub mod linalg;
pub mod model;
pub mod optim;
pub mod preprocess;
pub mod simulate;
pub mod stages;
pub mod util;

pub use error::{Error, Result};
