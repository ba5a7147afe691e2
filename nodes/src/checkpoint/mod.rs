//! Checkpoint files: the safetensors reader (layouts and conversions of
//! model weights build on it).

pub mod safetensors;
pub mod weights;
