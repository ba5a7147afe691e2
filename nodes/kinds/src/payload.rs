//! The values that flow between the SD nodes on opaque ports, one type per
//! port type (`graph::Payload`): the loaded models (MODEL, CLIP, VAE,
//! CONTROL_NET, UPSCALE_MODEL), CONDITIONING and LATENT. Node kinds read them
//! as `Arc<T>` fields of their `graph::node_fields!` structs and make them with `Value::payload`.

use std::path::PathBuf;
use std::sync::Arc;

use gpu::Tensor;
use graph::{Image, Payload, PortType};
use models::clip::ClipTextModel;
use models::controlnet::ControlNet;
use models::sampling::controls::ControlSpec;
use models::tokenizer::ClipTokenizer;
use models::unet::Unet;
use models::upscaler::UpscaleModel;
use models::vae::Vae;

pub use models::sampling::samplers::Prediction;

/// A batch of latents `[B, C, h, w]`, kept on the CPU: samplers, masks and
/// Lua plugins work on it directly; the UNet gets an upload per step.
#[derive(Debug, Clone, PartialEq)]
pub struct Latent {
    pub shape: [usize; 4],
    pub samples: Vec<f32>,
    /// `[B or 1, 1, h, w]` in 0..1: where inpainting may change the latent.
    pub noise_mask: Option<(Vec<usize>, Vec<f32>)>,
}

impl Latent {
    pub fn zeros(shape: [usize; 4]) -> Latent {
        Latent { shape, samples: vec![0.0; shape.iter().product()], noise_mask: None }
    }
}

/// Text conditioning: the text encoder's output `[1, 77 * chunks, C]` on the
/// GPU, and the ControlNets applied to it (ComfyUI's `control` entry).
#[derive(Clone)]
pub struct Conditioning {
    pub cond: Tensor,
    /// The ControlNets applied to this conditioning, the first applied
    /// first (ComfyUI's chain of `previous_controlnet`s): KSampler sums the
    /// residuals of those active at each step.
    pub controls: Vec<Arc<ControlApplication>>,
}

impl Conditioning {
    /// A conditioning without ControlNets.
    pub fn new(cond: Tensor) -> Conditioning {
        Conditioning { cond, controls: Vec::new() }
    }
}

impl std::fmt::Debug for Conditioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditioning")
            .field("cond", &self.cond.shape())
            .field("controls", &self.controls.len())
            .finish()
    }
}

/// A loaded UNet and how to interpret its output.
pub struct ModelHandle {
    pub unet: Unet,
    pub prediction: Prediction,
}

/// The text encoder with its tokenizer.
pub struct ClipHandle {
    pub model: ClipTextModel,
    pub tokenizer: ClipTokenizer,
}

/// The image autoencoder.
pub struct VaeHandle {
    pub vae: Vae,
}

/// A loaded ControlNet.
pub struct ControlNetHandle {
    pub net: ControlNet,
    /// The weights file it came from (for messages).
    pub path: PathBuf,
}

/// One ControlNet applied to a conditioning (ComfyUI's `ControlNet` object
/// after `set_cond_hint`).
pub struct ControlApplication {
    pub control_net: Arc<ControlNetHandle>,
    /// The control image, `[B, H, W, C]` in 0..1, at any size.
    pub image: Arc<Image>,
    pub strength: f64,
    pub start_percent: f64,
    pub end_percent: f64,
}

impl ControlApplication {
    /// This application as the sampler's controls take it.
    pub fn spec(&self) -> ControlSpec<'_> {
        ControlSpec {
            net: &self.control_net.net,
            path: &self.control_net.path,
            image: &self.image,
            strength: self.strength,
            start_percent: self.start_percent,
            end_percent: self.end_percent,
        }
    }
}

/// A loaded upscale model, as the UPSCALE_MODEL value.
pub struct UpscaleModelHandle {
    pub model: UpscaleModel,
}

/// Each payload type's port type.
macro_rules! payloads {
    ($($ty:ty => $port:ident),* $(,)?) => {
        $(impl Payload for $ty {
            const PORT: PortType = PortType::$port;
        })*
    };
}

payloads! {
    ModelHandle => Model,
    ClipHandle => Clip,
    VaeHandle => Vae,
    ControlNetHandle => ControlNet,
    UpscaleModelHandle => UpscaleModel,
    Conditioning => Conditioning,
    Latent => Latent,
}
