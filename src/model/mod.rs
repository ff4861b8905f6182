//! The U-Net of SPEC §6 and §9 with explicit forward and backward passes: layers (`conv`,
//! `norm`, `act`), on f32 channels-last buffers.

pub mod act;
pub mod checkpoint;
pub mod conv;
pub mod joint;
pub mod norm;
pub mod unet;
