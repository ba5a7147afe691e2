//! Checkpoint files: the safetensors reader, the canonical (single-file)
//! weight names, and the diffusers-folder conversion onto them.

pub mod convert;
pub mod safetensors;
pub mod weights;
