//! Expression and image preprocessing (SPEC §2–4).

pub mod color_norm;
pub mod expression;
pub mod image_type;
pub mod morphology;
pub mod nearest;
pub mod otsu;
pub mod pseudo_spots;
pub mod resize;
pub mod spot_pixels;
pub mod svg;
pub mod tiles;
pub mod tissue;
