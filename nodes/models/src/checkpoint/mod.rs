//! Checkpoint files: the safetensors reader, the canonical (single-file)
//! weight names, and the diffusers-folder conversion onto them; PyTorch
//! `.pth` state dicts through a restricted unpickler (`pth`, `pickle`, `zip`); which model family a
//! checkpoint is, to refuse what sdgraph does not run yet (`family`).

pub mod convert;
pub mod family;
pub mod pickle;
pub mod pth;
pub mod safetensors;
pub mod weights;
pub mod zip;
