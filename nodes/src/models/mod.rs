//! The networks of Stable Diffusion 1.x on sdgraph's GPU kernels, one per
//! file, with fields named after the single-file checkpoint keys.
//!
//! - [`nn`]: the layers they are built from (Linear, Conv2d, GroupNorm, LayerNorm)

pub mod nn;

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
