//! The networks of Stable Diffusion 1.x on sdgraph's GPU kernels, one per
//! file, with fields named after the single-file checkpoint keys.
//!
//! - [`nn`]: the layers they are built from (Linear, Conv2d, GroupNorm, LayerNorm)
//! - [`clip`]: the SD 1.x text encoder (transformers' `CLIPTextModel`)
//! - [`unet`]: the SD 1.x denoising UNet (`model.diffusion_model.`); its blocks in [`unet_blocks`]
//! - [`controlnet`]: ControlNet (`control_model.`, diffusers' `ControlNetModel`), sharing the UNet's down path
//! - [`vae`]: the SD 1.x VAE (`first_stage_model.`, diffusers' `AutoencoderKL`); its blocks in [`vae_blocks`]
//! - [`upscaler`]: image upscale models, [`esrgan`] (RRDBNet) and [`srvgg`] (SRVGGNetCompact)

pub mod clip;
pub mod controlnet;
pub mod esrgan;
pub mod nn;
pub mod srvgg;
pub mod unet;
pub mod unet_blocks;
pub mod upscaler;
pub mod vae;
pub mod vae_blocks;

use engine::gpu::GpuError;

use crate::checkpoint::safetensors::CheckpointError;
use crate::checkpoint::weights::WeightError;

/// Building or running a model failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weight(#[from] WeightError),
    #[error("GPU: {0}")]
    Gpu(#[from] GpuError),
    /// The weights do not describe a network this code can run.
    #[error("unsupported model: {0}")]
    Config(String),
}

impl From<CheckpointError> for ModelError {
    fn from(e: CheckpointError) -> Self {
        ModelError::Weight(WeightError::Checkpoint(e))
    }
}
