//! The U-Net of SPEC §6 and §9 as a graph over `backend` operations, with explicit forward
//! and backward passes, and its checkpoints.

pub mod checkpoint;
pub mod joint;
pub mod unet;
