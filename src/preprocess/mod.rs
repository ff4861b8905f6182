//! Expression and image preprocessing (SPEC §2–4).

pub mod image_type;
