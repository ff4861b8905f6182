//! Expression and image preprocessing (SPEC §2–4).

pub mod image_type;
pub mod morphology;
pub mod otsu;
pub mod resize;
pub mod tissue;
