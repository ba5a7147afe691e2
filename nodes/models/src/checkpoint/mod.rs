//! Checkpoint files: the safetensors reader, the canonical (single-file)
//! weight names, and the diffusers-folder conversion onto them; PyTorch
//! `.pth` state dicts through a restricted unpickler (`pth`, `pickle`, `zip`); standalone VAE and UNet files (`tensor_file`, `unet_file`); which model family a
//! checkpoint is, to refuse what sdgraph does not run yet (`family`).

pub mod convert;
pub mod family;
pub mod pickle;
pub mod pth;
pub mod safetensors;
pub mod tensor_file;
pub mod unet_file;
pub mod weights;
pub mod zip;
