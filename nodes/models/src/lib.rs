//! sdgraph's model library: the networks of Stable Diffusion 1.x on the GPU
//! kernels (one per file, fields named after the single-file checkpoint
//! keys), the checkpoint formats, the tokenizer, the sampling maths and the
//! image operations. No node kinds and no graph types: the node kinds are
//! thin adapters over this crate.
//!
//! - [`checkpoint`]: safetensors, `.pth` and diffusers folders, and weight layouts
//! - [`tokenizer`]: CLIP's byte-level BPE; [`prompt_weights`]: ComfyUI's `(word:1.2)`
//!   and `embedding:name`, whose files [`embeddings`] finds and reads
//! - [`sampling`]: noise, schedulers and samplers (k-diffusion's, as ComfyUI runs them)
//! - [`image_ops`]: the pure pixel operations behind the image nodes
//! - [`nn`]: the layers they are built from (Linear, Conv2d, GroupNorm, LayerNorm), and
//!   [`resblock`]: the ResNet block the UNet and the VAE share
//! - [`clip`]: the SD 1.x text encoder (transformers' `CLIPTextModel`); [`text_encoder`]: SD 2.x's and SDXL's
//!   (OpenCLIP ViT-H / bigG and ViT-L) in the open_clip or transformers layout, with the projected pooled output
//! - [`model_detection`]: what the weights say beyond the architecture (SD 2.x eps or v, as ComfyUI probes it)
//! - [`unet`]: the SD 1.x denoising UNet (`model.diffusion_model.`); its blocks in [`unet_blocks`]
//! - [`controlnet`]: ControlNet (`control_model.`, diffusers' `ControlNetModel`), sharing the UNet's down path
//! - [`gligen`]: GLIGEN text-box grounding (ComfyUI's `comfy/gligen.py`), a patch in the UNet's transformer blocks
//! - [`t2i_adapter`]: T2I-Adapter (ComfyUI's `Adapter` / `Adapter_light`), features for the UNet's input blocks
//! - [`vae`]: the SD 1.x VAE (`first_stage_model.`, diffusers' `AutoencoderKL`); its blocks in [`vae_blocks`]
//! - [`upscaler`]: image upscale models, [`esrgan`] (RRDBNet) and [`srvgg`] (SRVGGNetCompact)
//! - [`tiling`]: the one tiler, run by [`vae_tiling`] (tiled and fallback VAE passes) and
//!   [`upscale_tiling`] (tiled upscaling)

pub mod checkpoint;
pub mod clip;
pub mod controlnet;
pub mod embeddings;
pub mod esrgan;
pub mod gligen;
pub mod image_ops;
pub mod lora;
pub mod model_detection;
pub mod nn;
pub mod prompt_weights;
pub mod resblock;
pub mod sampling;
pub mod srvgg;
pub mod t2i_adapter;
pub mod text_encoder;
pub mod tiling;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod upscale_tiling;
pub mod upscaler;
pub mod vae;
pub mod vae_blocks;
pub mod vae_tiling;

use gpu::GpuError;

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
