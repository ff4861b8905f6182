//! Expression and image preprocessing (SPEC §2–4).

pub mod image_type;
pub mod morphology;
pub mod nearest;
pub mod otsu;
pub mod pseudo_spots;
pub mod resize;
pub mod tiles;
pub mod tissue;
