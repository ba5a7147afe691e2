//! The values that flow between the SD nodes on opaque ports, one type per
//! port type (`graph::Payload`): the loaded models (MODEL, CLIP, VAE,
//! CONTROL_NET, UPSCALE_MODEL, GLIGEN), CONDITIONING, LATENT and the custom-sampling values (SAMPLER, SIGMAS, GUIDER,
//! NOISE). Node kinds read them
//! as `Arc<T>` fields of their `graph::node_fields!` structs and make them with `Value::payload`.

use std::path::PathBuf;
use std::sync::Arc;

use gpu::Tensor;
use graph::{Image, Mask, Payload, PortType};
use models::clip::{ClipLayer, ClipTextConfig, ClipTextModel};
use models::gligen::{Gligen, TextBox};
use models::lora::NetSource;
use models::sampling::controls::{ControlModel, ControlSpec};
use models::tokenizer::ClipTokenizer;
use models::unet::{Unet, UnetConfig};
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
    /// Each latent's place in the batch it came from (ComfyUI's `batch_index`, set by LatentFromBatch and
    /// RepeatLatentBatch): KSampler draws each item's initial noise as it would have in that batch.
    pub batch_index: Option<Vec<usize>>,
}

impl Latent {
    pub fn zeros(shape: [usize; 4]) -> Latent {
        Latent { shape, samples: vec![0.0; shape.iter().product()], noise_mask: None, batch_index: None }
    }
}

/// Where a conditioning entry applies (ConditioningSetArea and its kin), as ComfyUI keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CondArea {
    /// `(h, w, y, x)` in latent pixels (the node's pixel values divided by 8, rounded down).
    Latent { h: usize, w: usize, y: usize, x: usize },
    /// `(h, w, y, x)` as fractions of the latent, resolved when sampling starts.
    Percent { h: f64, w: f64, y: f64, x: f64 },
}

impl CondArea {
    /// `(h, w, y, x)` in latent pixels for a latent of `height` x `width`: ComfyUI's
    /// `resolve_areas_and_cond_masks` rounds fractions (`max(1, round(h * H))` for the size).
    pub fn resolve(&self, height: usize, width: usize) -> (usize, usize, usize, usize) {
        match *self {
            CondArea::Latent { h, w, y, x } => (h, w, y, x),
            CondArea::Percent { h, w, y, x } => {
                let r = |f: f64, n: usize| python_round(f * n as f64);
                (r(h, height).max(1), r(w, width).max(1), r(y, height), r(x, width))
            }
        }
    }
}

/// Python's `round` (halves to even) of a non-negative value, as a count.
fn python_round(v: f64) -> usize {
    v.round_ties_even().max(0.0) as usize
}

/// One entry of a conditioning (ComfyUI's `[cond, {options}]` pair): the text
/// encoder's output `[1, 77 * chunks, C]` on the GPU, the ControlNets applied
/// to it (its `control` chain), and where and how strongly it applies.
#[derive(Clone)]
pub struct CondEntry {
    pub cond: Tensor,
    /// The ControlNets applied to this entry, the first applied first (ComfyUI's chain of
    /// `previous_controlnet`s): KSampler sums the residuals of those active at each step.
    pub controls: Vec<Arc<ControlApplication>>,
    /// `None`: the whole picture.
    pub area: Option<CondArea>,
    pub strength: f64,
    /// ConditioningSetTimestepRange's `(start, end)` as fractions of the schedule; `None`: all of it.
    pub range: Option<(f64, f64)>,
    /// ConditioningSetMask's mask.
    pub mask: Option<CondMask>,
    /// GLIGENTextBoxApply's text boxes and the GLIGEN that grounds them (ComfyUI's `gligen` option).
    pub gligen: Option<Arc<GligenBoxes>>,
    /// InpaintModelConditioning's `concat_latent_image` and `concat_mask`: what an inpainting model takes
    /// besides the latent (a plain model ignores them).
    pub inpaint: Option<Arc<InpaintConcat>>,
}

/// InpaintModelConditioning's extra input for inpainting models (ComfyUI's `concat_latent_image`, `concat_mask`).
pub struct InpaintConcat {
    /// The masked picture's latent `[B, 4, h, w]`.
    pub latent: Arc<Latent>,
    /// The mask at the picture's size (resized to the latent and rounded when sampling).
    pub mask: Arc<Mask>,
}

/// A conditioning entry's GLIGEN grounding: ComfyUI's `("position", gligen_model, [(pooled, h, w, y, x), ...])`.
pub struct GligenBoxes {
    pub model: Arc<GligenHandle>,
    /// In the order applied; the box in latent pixels (the node's pixels // 8).
    pub boxes: Vec<TextBox>,
}

/// A loaded GLIGEN (GLIGENLoader), as the GLIGEN value.
pub struct GligenHandle {
    pub gligen: Gligen,
    /// The weights file it came from (for messages).
    pub path: PathBuf,
}

/// A conditioning entry's mask (ConditioningSetMask): where, and how much, it applies.
#[derive(Debug, Clone)]
pub struct CondMask {
    /// At any size: resized to the latent (bilinear) when sampling starts.
    pub mask: Arc<Mask>,
    /// Multiplies the mask (ComfyUI's `mask_strength`).
    pub strength: f64,
    /// "mask bounds": the entry's area becomes the mask's bounding box (ComfyUI's `set_area_to_bounds`).
    pub to_bounds: bool,
}

/// CONDITIONING: a list of entries, as ComfyUI's. KSampler runs the model once per
/// entry (batching those it can) over the entry's area and averages the results
/// weighted by strength; ConditioningCombine concatenates lists.
#[derive(Clone)]
pub struct Conditioning {
    pub entries: Vec<CondEntry>,
}

impl Conditioning {
    /// One entry over the whole picture, without ControlNets.
    pub fn new(cond: Tensor) -> Conditioning {
        Conditioning {
            entries: vec![CondEntry {
                cond,
                controls: Vec::new(),
                area: None,
                strength: 1.0,
                range: None,
                mask: None,
                gligen: None,
                inpaint: None,
            }],
        }
    }

    /// The same entries, each changed by `f` (ComfyUI's `conditioning_set_values`).
    pub fn map_entries(&self, f: impl Fn(&mut CondEntry)) -> Conditioning {
        let mut c = self.clone();
        c.entries.iter_mut().for_each(f);
        c
    }
}

impl std::fmt::Debug for Conditioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for e in &self.entries {
            l.entry(&format_args!(
                "{:?} controls {} area {:?} strength {} range {:?} mask {:?} gligen boxes {} inpaint {:?}",
                e.cond.shape(),
                e.controls.len(),
                e.area,
                e.strength,
                e.range,
                e.mask.as_ref().map(|m| (m.mask.batch, m.mask.height, m.mask.width, m.strength, m.to_bounds)),
                e.gligen.as_ref().map_or(0, |g| g.boxes.len()),
                e.inpaint.as_ref().map(|i| i.latent.shape)
            ));
        }
        l.finish()
    }
}

/// A loaded UNet and how to interpret its output.
pub struct ModelHandle {
    pub unet: Unet,
    pub prediction: Prediction,
    /// Whether the noise levels are rescaled to zero terminal SNR (ModelSamplingDiscrete's `zsnr`; false as loaded).
    pub zsnr: bool,
    /// What the UNet was built from (LoraLoader builds it again with merged weights); `None` when unknown.
    pub source: Option<Arc<NetSource<UnetConfig>>>,
}

/// The text encoder with its tokenizer, and which hidden state it encodes with
/// (ComfyUI's CLIP object after `clip_layer`). CLIPSetLastLayer makes a new
/// handle sharing the same loaded model.
pub struct ClipHandle {
    pub model: Arc<ClipTextModel>,
    pub tokenizer: Arc<ClipTokenizer>,
    /// The hidden state CLIPTextEncode takes: [`ClipLayer::Last`] as loaded,
    /// `Skip(n)` after CLIPSetLastLayer `-n`.
    pub layer: ClipLayer,
    /// What the encoder was built from (LoraLoader builds it again with merged weights); `None` when unknown.
    pub source: Option<Arc<NetSource<ClipTextConfig>>>,
}

impl ClipHandle {
    /// A freshly loaded encoder, encoding with its last layer.
    pub fn new(model: ClipTextModel, tokenizer: ClipTokenizer) -> ClipHandle {
        ClipHandle { model: Arc::new(model), tokenizer: Arc::new(tokenizer), layer: ClipLayer::Last, source: None }
    }

    /// This handle, recording what its encoder was built from.
    pub fn with_source(mut self, source: NetSource<ClipTextConfig>) -> ClipHandle {
        self.source = Some(Arc::new(source));
        self
    }

    /// The same model and tokenizer (shared, not copied), encoding with `layer`.
    pub fn with_layer(&self, layer: ClipLayer) -> ClipHandle {
        ClipHandle { model: self.model.clone(), tokenizer: self.tokenizer.clone(), layer, source: self.source.clone() }
    }
}

/// The image autoencoder.
pub struct VaeHandle {
    pub vae: Vae,
}

/// A loaded ControlNet or T2I-adapter (ComfyUI's CONTROL_NET holds either).
pub struct ControlNetHandle {
    pub net: ControlModel,
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

/// SAMPLER (KSamplerSelect): the sampler a custom-sampling node runs, with its ComfyUI defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerChoice(pub models::sampling::samplers::Sampler);

/// SIGMAS: a noise schedule from the first sigma down, as ComfyUI's float32 tensor (each value an f32, kept as
/// f64). May be empty (BasicScheduler at denoise 0, SplitSigmas past the end).
#[derive(Debug, Clone, PartialEq)]
pub struct Sigmas(pub Vec<f64>);

/// GUIDER (BasicGuider, CFGGuider): a model with its conditionings and guidance scale, bound to the latent when a
/// custom sampler runs it.
pub struct Guider {
    pub model: Arc<ModelHandle>,
    pub positive: Arc<Conditioning>,
    /// `None` for BasicGuider: the positive alone, at cfg 1.
    pub negative: Option<Arc<Conditioning>>,
    pub cfg: f64,
}

/// NOISE (RandomNoise, DisableNoise): ComfyUI's `Noise_RandomNoise` / `Noise_EmptyNoise`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialNoise {
    /// `prepare_noise(latent, seed)`: ComfyUI's CPU `torch.randn` from `manual_seed(seed)`.
    Random { seed: u64 },
    /// Zeros (`prepare_empty_noise`); its seed, for the sampler's own noise, is 0 as ComfyUI's.
    Disabled,
}

impl InitialNoise {
    /// The seed ComfyUI's sampler gets with this noise (`noise.seed`): the sampler's own noise comes from seed + 1.
    pub fn seed(self) -> u64 {
        match self {
            InitialNoise::Random { seed } => seed,
            InitialNoise::Disabled => 0,
        }
    }
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
    SamplerChoice => Sampler,
    Sigmas => Sigmas,
    Guider => Guider,
    InitialNoise => Noise,
    GligenHandle => Gligen,
}
