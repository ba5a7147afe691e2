//! The CLIP text encoders of SD 2.x and SDXL, whatever layout they are stored in: OpenCLIP's ViT-H/14 (SD 2.x)
//! and ViT-bigG/14 (SDXL's second encoder, the refiner's only one), and OpenAI's ViT-L/14 as SDXL's first. The
//! network is [`crate::clip::ClipTextModel`] (transformers' `CLIPTextModel`), plus the bias-free text projection
//! of `CLIPTextModelWithProjection` / open_clip's `text_projection`; what this file adds is finding the weights
//! under a prefix in either layout, detecting the config, and the outputs ComfyUI takes.
//!
//! Layouts ([`ClipTextLayout`]), under the prefix a loader names (SD 2.x `cond_stage_model.model.`, SDXL
//! `conditioner.embedders.1.model.` and `conditioner.embedders.0.transformer.`, a diffusers `text_encoder/` or
//! `text_encoder_2/` file opened on its own with the prefix ``):
//! - open_clip's names (`token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*` with packed
//!   `attn.in_proj_*`, `ln_final`, `text_projection` `[width, proj]`), seen under transformers' names through
//!   [`convert::open_clip_text_key`], ComfyUI's `clip_text_transformers_convert`;
//! - transformers' names (`text_model.*` and `text_projection.weight` `[proj, width]`; transformers 5 writes a
//!   plain `CLIPTextModel` without the `text_model.` level, which [`convert::clip_key`] adds).
//!
//! What ComfyUI takes (Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832, comfy/sd1_clip.py
//! `SDClipModel`, comfy/text_encoders/sd2_clip.py, comfy/sdxl_clip.py, comfy/clip_model.py), as [`ClipOutput`]:
//! SD 2.x's `SD2ClipHModel` the penultimate layer (`layer_idx=-2`) through `final_layer_norm`
//! (`layer_norm_hidden_state` left True); SDXL's `SDXLClipG` and its CLIP-L the penultimate layer raw
//! (`layer_norm_hidden_state=False`). The pooled output is `text_projection(last_hidden_state[eos])` at each row's
//! first end-of-text token (ComfyUI's `num_tokens - 1`, open_clip's `argmax` of the ids, transformers' first
//! `eos_token_id`: the same position for tokenizer output).

use gpu::ops::matmul::Activation;
use gpu::{DType, Gpu, Tensor};

use crate::ModelError;
use crate::checkpoint::convert::{clip_key, open_clip_text_key};
use crate::checkpoint::weights::{View, WeightSource};
use crate::clip::{ClipLayer, ClipTextConfig, ClipTextModel, InputVector};
use crate::nn::Linear;
use crate::tokenizer::END_OF_TEXT;

/// How a text encoder's weights are named under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipTextLayout {
    /// transformers' `CLIPTextModel(WithProjection)`: LDM's `FrozenCLIPEmbedder` (SD 1.x, SDXL's first encoder),
    /// diffusers' `text_encoder/` and `text_encoder_2/`.
    Transformers,
    /// open_clip's text tower: LDM's `FrozenOpenCLIPEmbedder` (SD 2.x) and SGM's `FrozenOpenCLIPEmbedder2` (SDXL).
    OpenClip,
}

impl ClipTextLayout {
    /// The layout of the text encoder under `prefix`, from its names.
    pub fn detect(src: &WeightSource, prefix: &str) -> Result<ClipTextLayout, ModelError> {
        let has = |k: &str| src.contains(&format!("{prefix}{k}"));
        if has("token_embedding.weight") || has("transformer.resblocks.0.attn.in_proj_weight") {
            return Ok(ClipTextLayout::OpenClip);
        }
        if has("text_model.embeddings.token_embedding.weight") || has("embeddings.token_embedding.weight") {
            return Ok(ClipTextLayout::Transformers);
        }
        Err(ModelError::Config(format!(
            "no CLIP text encoder under {prefix:?}: expected open_clip's {prefix}token_embedding.weight and \
             {prefix}transformer.resblocks.N.*, or transformers' {prefix}text_model.embeddings.token_embedding.weight"
        )))
    }
}

/// Which hidden state is the conditioning, as ComfyUI's text encoders take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipOutput {
    pub layer: ClipLayer,
    /// Whether `final_layer_norm` is applied to it (ComfyUI's `layer_norm_hidden_state`).
    pub final_layer_norm: bool,
}

impl ClipOutput {
    /// SD 1.x: the last layer, normed (`SDClipModel`'s default `layer="last"`).
    pub const SD1: ClipOutput = ClipOutput { layer: ClipLayer::Last, final_layer_norm: true };
    /// SD 2.x: the penultimate layer, normed (`SD2ClipHModel`: `layer_idx=-2`, `layer_norm_hidden_state=True`).
    pub const SD2: ClipOutput = ClipOutput { layer: ClipLayer::Penultimate, final_layer_norm: true };
    /// SDXL, both encoders, and the refiner's: the penultimate layer raw (`SDXLClipG` and SDXL's CLIP-L:
    /// `layer_idx=-2`, `layer_norm_hidden_state=False`).
    pub const SDXL: ClipOutput = ClipOutput { layer: ClipLayer::Penultimate, final_layer_norm: false };
}

/// ComfyUI's names for the CLIP text encoders Stable Diffusion uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipName {
    /// OpenAI's ViT-L/14: SD 1.x's, SDXL's first.
    L,
    /// OpenCLIP ViT-H/14: SD 2.x's.
    H,
    /// OpenCLIP ViT-bigG/14: SDXL's second, the refiner's only one.
    G,
}

impl ClipName {
    /// What its tokenizer pads with: the end token for L (`pad_with_end=True`), 0 for OpenCLIP's H and G.
    pub fn pad_token(self) -> u32 {
        match self {
            ClipName::L => crate::tokenizer::PAD,
            ClipName::H | ClipName::G => crate::tokenizer::OPEN_CLIP_PAD,
        }
    }
}

/// A text encoder found in a single-file checkpoint: which one, under which prefix, in which layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEncoderSlot {
    pub name: ClipName,
    pub prefix: &'static str,
    pub layout: ClipTextLayout,
}

/// The text encoders of a single-file checkpoint, where ComfyUI's `process_clip_state_dict` looks for them
/// (comfy/supported_models.py @ a125cd84): `cond_stage_model.transformer.` (SD 1.x, L), `cond_stage_model.model.`
/// (SD 2.x, H), `conditioner.embedders.0.transformer.` and `.1.model.` (SDXL, L and G), `conditioner.embedders.0.model.`
/// (the SDXL refiner's G, or SD 2.x saved in SGM's layout: ComfyUI tells them apart by the UNet; here an OpenCLIP
/// tower 1280 wide is G, any other H). In the checkpoint's order of encoders; empty when none is there.
pub fn find_text_encoders(src: &WeightSource) -> Vec<TextEncoderSlot> {
    const PLACES: [(&str, Option<ClipName>); 5] = [
        ("cond_stage_model.transformer.", Some(ClipName::L)),
        ("cond_stage_model.model.", Some(ClipName::H)),
        ("conditioner.embedders.0.transformer.", Some(ClipName::L)),
        ("conditioner.embedders.0.model.", None),
        ("conditioner.embedders.1.model.", Some(ClipName::G)),
    ];
    PLACES
        .iter()
        .filter_map(|&(prefix, name)| {
            let layout = ClipTextLayout::detect(src, prefix).ok()?;
            let name = name.unwrap_or_else(|| {
                let width = detect_config(src, prefix).map(|c| c.hidden_size).unwrap_or(0);
                if width == 1280 { ClipName::G } else { ClipName::H }
            });
            Some(TextEncoderSlot { name, prefix, layout })
        })
        .collect()
}

/// One encoding: the conditioning `[B, L, C]` and, when asked for, the pooled output `[B, proj]`.
pub struct TextEncoding {
    pub hidden: Tensor,
    pub pooled: Option<Tensor>,
}

/// A CLIP text encoder with its projection (when the weights have one).
pub struct ClipTextEncoder {
    pub layout: ClipTextLayout,
    pub model: ClipTextModel,
    /// `text_projection.weight` `[proj, C]` as a Linear (open_clip's `[C, proj]` matrix, transposed).
    pub text_projection: Option<Linear>,
    /// The token the pooled output is taken at, its first occurrence in each row (SD: 49407).
    pub eos_token_id: u32,
    /// The stored name of the projection, for the error when it is missing.
    projection_key: String,
}

/// The weights under `prefix` seen under transformers' names (`prefix` + `text_model.*`,
/// `text_projection.weight`), and the layout they were stored in.
pub fn canonical_weights(src: &WeightSource, prefix: &str) -> Result<(ClipTextLayout, WeightSource), ModelError> {
    let layout = ClipTextLayout::detect(src, prefix)?;
    let view = match layout {
        ClipTextLayout::OpenClip => src.with_renamed_under(prefix, open_clip_text_key),
        ClipTextLayout::Transformers => {
            src.with_renamed_under(prefix, |k| clip_key(k).map(|name| vec![(name, View::Whole)]))
        }
    };
    Ok((layout, view))
}

/// The config of the text encoder under `prefix`, from its weights: sizes from the shapes
/// ([`ClipTextConfig::detect_from_weights`], heads of 64), and the MLP's activation from the layout: open_clip's
/// towers use exact GELU; transformers-named ones are OpenAI's ViT-L (quick_gelu) unless they are as deep as
/// OpenCLIP's ViT-H (24 layers) or bigG (32), the rule of ComfyUI's `detect_te_model` (comfy/sd.py: a
/// `text_model.encoder.layers.22` means CLIP-H, `.30` CLIP-G). A diffusers `config.json` says it outright:
/// [`apply_transformers_config`].
pub fn detect_config(src: &WeightSource, prefix: &str) -> Result<ClipTextConfig, ModelError> {
    let (layout, view) = canonical_weights(src, prefix)?;
    let mut cfg = ClipTextConfig::detect_from_weights(&view.prefix(&format!("{prefix}text_model.")))?;
    cfg.activation = match layout {
        ClipTextLayout::OpenClip => Activation::Gelu,
        ClipTextLayout::Transformers if cfg.num_layers >= 23 => Activation::Gelu,
        ClipTextLayout::Transformers => Activation::QuickGelu,
    };
    Ok(cfg)
}

/// A transformers `config.json` (diffusers' `text_encoder/config.json`) over a detected config: `hidden_act`,
/// `num_attention_heads` and `layer_norm_eps` when present; sizes it states must match the weights'.
pub fn apply_transformers_config(cfg: &mut ClipTextConfig, json: &serde_json::Value) -> Result<(), ModelError> {
    let bad = |what: String| ModelError::Config(format!("text encoder config.json: {what}"));
    if let Some(act) = json.get("hidden_act").and_then(|v| v.as_str()) {
        cfg.activation = match act {
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            other => return Err(bad(format!("hidden_act {other:?} is not supported (gelu, quick_gelu)"))),
        };
    }
    if let Some(h) = json.get("num_attention_heads").and_then(|v| v.as_u64()) {
        cfg.num_heads = h as usize;
    }
    if let Some(eps) = json.get("layer_norm_eps").and_then(|v| v.as_f64()) {
        cfg.layer_norm_eps = eps as f32;
    }
    for (key, have) in [
        ("hidden_size", cfg.hidden_size),
        ("num_hidden_layers", cfg.num_layers),
        ("intermediate_size", cfg.intermediate_size),
        ("vocab_size", cfg.vocab_size),
    ] {
        if let Some(said) = json.get(key).and_then(|v| v.as_u64())
            && said as usize != have
        {
            return Err(bad(format!("{key} is {said}, the weights have {have}")));
        }
    }
    Ok(())
}

impl ClipTextEncoder {
    /// Loads the text encoder under `prefix` of `src` in either layout, checking every shape against `cfg`; the
    /// projection is loaded when the weights have one (`[proj, C]` after conversion).
    pub fn load(
        gpu: &Gpu,
        src: &WeightSource,
        prefix: &str,
        cfg: &ClipTextConfig,
        dtype: DType,
    ) -> Result<ClipTextEncoder, ModelError> {
        let (layout, view) = canonical_weights(src, prefix)?;
        let model = ClipTextModel::load(gpu, &view.prefix(&format!("{prefix}text_model.")), cfg, dtype)?;
        let w = view.prefix(prefix);
        let projection_key = match layout {
            ClipTextLayout::OpenClip => format!("{prefix}text_projection"),
            ClipTextLayout::Transformers => format!("{prefix}text_projection.weight"),
        };
        let c = cfg.hidden_size;
        let text_projection = if w.contains("text_projection.weight") {
            let shape = w.shape("text_projection.weight")?;
            let [proj, width] = shape[..] else {
                return Err(ModelError::Config(format!("{projection_key} must be 2-D, got {shape:?}")));
            };
            if width != c {
                return Err(ModelError::Config(format!(
                    "{projection_key} projects from width {width} (read as [proj, width] = {shape:?}), the encoder is {c} wide"
                )));
            }
            Some(Linear::load_sized(gpu, &w.pp("text_projection"), c, proj, dtype)?)
        } else {
            None
        };
        Ok(ClipTextEncoder { layout, model, text_projection, eos_token_id: END_OF_TEXT, projection_key })
    }

    /// Encodes token rows (all of one length, at most 77; `vectors` replace token embeddings, as textual-inversion
    /// embeddings do): the hidden state `output` names, `[B, L, C]`, and with `pooled` the projected pooled output
    /// `[B, proj]`, which needs every layer and the projection (an error naming the projection's key when the
    /// weights have none, as SD 2.x's diffusers `text_encoder/`).
    pub fn encode<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        ids: &[T],
        vectors: &[InputVector<'_>],
        output: ClipOutput,
        pooled: bool,
    ) -> Result<TextEncoding, ModelError> {
        let projection = match (pooled, &self.text_projection) {
            (false, _) => None,
            (true, Some(p)) => Some(p),
            (true, None) => {
                return Err(ModelError::Config(format!(
                    "{} is missing: the pooled output (SDXL's) needs the text projection",
                    self.projection_key
                )));
            }
        };
        let (h, last) = self.model.forward_hidden_and_last(gpu, ids, vectors, output.layer, pooled)?;
        let hidden = if output.final_layer_norm { self.model.final_layer_norm.forward(gpu, &h)? } else { h };
        let pooled = match (projection, last) {
            (Some(p), Some(last)) => {
                // [B, L, C] -> [B, C] at each row's first end token, then [B, C] -> [B, proj].
                let eos = self.model.pooled(gpu, &last, ids, self.eos_token_id)?;
                Some(p.forward(gpu, &eos)?)
            }
            _ => None,
        };
        Ok(TextEncoding { hidden, pooled })
    }
}
