//! Readers and writers. Knows nothing of training.

pub mod config;
pub mod figures;
pub mod h5;
pub mod image;
pub mod mtx;
pub mod npy;
pub mod ome_tiff;
pub mod pdf;
pub mod positions;
pub mod sparse;
pub mod spots;
pub mod text;
