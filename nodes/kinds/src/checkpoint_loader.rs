//! CheckpointLoaderSimple: one checkpoint file (or diffusers folder) to the
//! MODEL, CLIP and VAE values, as ComfyUI's node; VAELoader: a standalone VAE
//! file to a VAE value, loaded as a checkpoint's VAE.

use std::sync::Arc;

use gpu::{DType, Gpu};
use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use crate::payload::{ClipHandle, ModelHandle, VaeHandle};
use crate::runtime;
use crate::settings::Settings;
use models::ModelError;
use models::checkpoint::convert::{CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, VaeLayout, open_checkpoint, open_vae};
use models::checkpoint::weights::WeightSource;
use models::clip::{ClipTextConfig, ClipTextModel};
use models::lora::NetSource;
use models::model_detection::sd2_prediction;
use models::tokenizer::ClipTokenizer;
use models::unet::{Unet, UnetConfig};
use models::unet_blocks::AttentionHeads;
use models::vae::{Vae, VaeConfig};

use models::sampling::samplers::Prediction;

/// What a checkpoint's `__metadata__` may say about the architecture that
/// the tensors cannot (SD 1.x defaults otherwise): `sdgraph.unet.heads`,
/// `sdgraph.clip.heads`, `sdgraph.norm_groups`, `sdgraph.vae.scaling_factor`,
/// and `sdgraph.prediction` or modelspec's `modelspec.prediction_type`
/// (`epsilon` | `v`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigOverrides {
    pub unet_heads: Option<usize>,
    pub clip_heads: Option<usize>,
    pub norm_groups: Option<usize>,
    pub vae_scaling_factor: Option<f32>,
    pub prediction: Prediction,
}

impl ConfigOverrides {
    pub fn read(src: &WeightSource) -> Result<ConfigOverrides, String> {
        fn num<T: std::str::FromStr>(src: &WeightSource, key: &str) -> Result<Option<T>, String> {
            match src.metadata(key) {
                None => Ok(None),
                Some(v) => {
                    v.trim().parse().map(Some).map_err(|_| format!("checkpoint metadata {key}={v:?} is not a number"))
                }
            }
        }
        let prediction = match src.metadata("sdgraph.prediction").or(src.metadata("modelspec.prediction_type")) {
            None | Some("epsilon") | Some("eps") => Prediction::Epsilon,
            Some("v") | Some("v_prediction") => Prediction::V,
            Some(other) => return Err(format!("checkpoint metadata: unknown prediction type {other:?}")),
        };
        Ok(ConfigOverrides {
            unet_heads: num(src, "sdgraph.unet.heads")?,
            clip_heads: num(src, "sdgraph.clip.heads")?,
            norm_groups: num(src, "sdgraph.norm_groups")?,
            vae_scaling_factor: num(src, "sdgraph.vae.scaling_factor")?,
            prediction,
        })
    }
}

/// The three networks of one checkpoint, ready to run.
pub struct LoadedCheckpoint {
    pub model: ModelHandle,
    pub clip: ClipHandle,
    pub vae: VaeHandle,
}

/// Builds the UNet and text encoder in `dtype` and the VAE in f32 from an
/// open checkpoint (what CheckpointLoaderSimple does, also used by
/// `sdgraph bench models`); `done(n)` is called after each of the 3 parts.
pub fn load_checkpoint(
    gpu: &Gpu,
    src: &WeightSource,
    dtype: DType,
    mut done: impl FnMut(usize),
) -> Result<LoadedCheckpoint, String> {
    let err = |e: ModelError| e.to_string();
    // The UNet's and text encoder's tensors stay known by name, so a LoRA'd copy shares them.
    let src = &src.clone().resident();
    let meta = ConfigOverrides::read(src)?;
    let model = load_unet(gpu, src, &meta, dtype)?;
    done(1);

    let w = src.prefix(&format!("{CLIP_PREFIX}text_model."));
    let mut ccfg = ClipTextConfig::detect_from_weights(&w).map_err(err)?;
    if let Some(h) = meta.clip_heads {
        ccfg.num_heads = h;
    }
    let clip = ClipTextModel::load(gpu, &w, &ccfg, dtype).map_err(err)?;
    let clip_source = NetSource { weights: src.clone(), config: ccfg, dtype, loras: Vec::new() };
    let tokenizer = ClipTokenizer::new().map_err(|e| e.to_string())?;
    done(2);

    let vae = load_vae(gpu, src, &meta)?;
    done(3);
    Ok(LoadedCheckpoint { model, clip: ClipHandle::new(clip, tokenizer).with_source(clip_source), vae })
}

/// Builds the UNet under `model.diffusion_model.` of `src` (a checkpoint, or a standalone diffusion
/// model seen as one) in `dtype`, with the heads, group count and prediction type of `meta`.
pub fn load_unet(gpu: &Gpu, src: &WeightSource, meta: &ConfigOverrides, dtype: DType) -> Result<ModelHandle, String> {
    let err = |e: ModelError| e.to_string();
    let src = &src.clone().resident();
    let w = src.prefix(UNET_PREFIX);
    let mut config = UnetConfig::detect_from_weights(&w).map_err(err)?;
    if let Some(h) = meta.unet_heads {
        config.heads = AttentionHeads::Count(h);
    }
    if let Some(g) = meta.norm_groups {
        config.norm.groups = g;
    }
    // SD 2.x files do not say eps or v: unless the metadata does, probe a weight as ComfyUI's SD20.model_type
    // (SD 2.x shaped: linear proj_in with 1024-wide context, which detection gives 64-channel heads).
    let declared = src.metadata("sdgraph.prediction").or(src.metadata("modelspec.prediction_type")).is_some();
    let prediction = if !declared && config.heads == AttentionHeads::Dim(64) {
        sd2_prediction(&w, config.in_channels).map_err(err)?
    } else {
        meta.prediction
    };
    let unet = Unet::load(gpu, &w, &config, dtype).map_err(err)?;
    let source = NetSource { weights: src.clone(), config, dtype, loras: Vec::new() };
    Ok(ModelHandle { unet, prediction, zsnr: false, source: Some(Arc::new(source)) })
}

/// Builds the VAE under `first_stage_model.` of `src` (a checkpoint, or a standalone VAE
/// seen as one by [`open_vae`]) in f32, with the group count and scaling factor of `meta`.
pub fn load_vae(gpu: &Gpu, src: &WeightSource, meta: &ConfigOverrides) -> Result<VaeHandle, String> {
    let err = |e: ModelError| e.to_string();
    // The SD VAE overflows in f16 at real resolutions (diffusers' force_upcast): keep it f32.
    let w = src.prefix(VAE_PREFIX);
    let mut vcfg = VaeConfig::detect_from_weights(&w).map_err(err)?;
    if let Some(g) = meta.norm_groups {
        vcfg.norm_groups = g;
    }
    if let Some(f) = meta.vae_scaling_factor {
        vcfg.scaling_factor = f;
    }
    let vae = Vae::load(gpu, &w, &vcfg, DType::F32).map_err(err)?;
    Ok(VaeHandle { vae })
}

/// The schema, and the settings the command passed.
pub struct CheckpointLoaderSimple(NodeSchema, Settings);

graph::node_fields! {
    struct CheckpointFields {
        ckpt_name: String = path("Checkpoint file or diffusers folder, relative to the graph file's folder."),
    }
}

impl CheckpointLoaderSimple {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "CheckpointLoaderSimple",
                "loaders",
                "Loads an SD 1.x checkpoint (.safetensors single file or diffusers folder) onto the GPU.",
            )
            .fields(CheckpointFields::declare)
            .output("model", PortType::Model, "The denoising UNet.")
            .output("clip", PortType::Clip, "The text encoder with its tokenizer.")
            .output("vae", PortType::Vae, "The image autoencoder."),
            settings,
        )
    }
}

impl Default for CheckpointLoaderSimple {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for CheckpointLoaderSimple {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = CheckpointFields::read(inputs)?;
        let path = ctx.resolve(f.ckpt_name.as_str());
        let gpu = runtime::gpu()?;
        let dtype = runtime::model_dtype(gpu, self.1.dtype);
        ctx.progress.message(&format!("loading {} ({dtype:?})", path.display()));
        let src = open_checkpoint(&path).map_err(err)?;
        // Provenance: every weight file actually read (a diffusers folder's used components only).
        for p in src.paths() {
            ctx.record_input_file(p);
        }
        let id = ctx.node_id.to_string();
        ctx.progress.step(&id, 0, 3, "models");

        let progress = ctx.progress;
        let loaded = load_checkpoint(gpu, &src, dtype, |done| progress.step(&id, done as u64, 3, "models"))
            .map_err(NodeError::new)?;
        Ok(vec![Value::payload(loaded.model), Value::payload(loaded.clip), Value::payload(loaded.vae)])
    }

    /// Size and modification time: replacing the file reloads it. A folder's
    /// own mtime does not change when a component's weights are replaced in
    /// place, so for a diffusers folder the components' files count too
    /// (else a cached model, and the digests recorded for it, would be stale).
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&CheckpointFields::read(inputs).ok()?.ckpt_name);
        let meta = std::fs::metadata(&path).ok()?;
        let mut fp = format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok());
        if meta.is_dir() {
            for part in ["unet", "vae", "text_encoder"] {
                let Ok(entries) = std::fs::read_dir(path.join(part)) else { continue };
                let mut files: Vec<String> = entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        Some(format!("{part}/{}:{}:{:?}", e.file_name().to_string_lossy(), m.len(), m.modified().ok()))
                    })
                    .collect();
                files.sort();
                fp.extend(files.iter().map(|f| format!("|{f}")));
            }
        }
        Some(fp)
    }
}

// ---------------------------------------------------------------- VAELoader

/// ComfyUI's built-in VAE names (TAESD decoders, pixel space), which are no files.
const COMFY_SPECIAL_VAES: [&str; 10] = [
    "pixel_space",
    "taesd",
    "taesdxl",
    "taesd3",
    "taef1",
    "taehv",
    "lighttaew2_2",
    "lighttaew2_1",
    "lighttaehy1_5",
    "taeltx_2",
];

/// The counts a diffusers component's `config.json` (beside its weights file) gives that the
/// tensors cannot: `attention_head_dim` (a number, or a list of equal ones) and `norm_num_groups`.
#[derive(Debug, Default)]
pub struct DiffusersCounts {
    pub heads: Option<usize>,
    pub norm_groups: Option<usize>,
}

impl DiffusersCounts {
    /// Reads the `config.json` beside `file`; all `None` when there is none.
    pub fn beside(file: &std::path::Path) -> Result<DiffusersCounts, String> {
        let config_json = file.with_file_name("config.json");
        if !config_json.is_file() {
            return Ok(DiffusersCounts::default());
        }
        let text = std::fs::read_to_string(&config_json).map_err(|e| format!("{}: {e}", config_json.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", config_json.display()))?;
        let bad = |key: &str, x: &serde_json::Value| {
            format!("{}: {key} {x} is not a positive integer (or a list of equal ones)", config_json.display())
        };
        let count = |x: &serde_json::Value| x.as_u64().filter(|&n| n > 0).map(|n| n as usize);
        let heads = match v.get("attention_head_dim") {
            None | Some(serde_json::Value::Null) => None,
            Some(x @ serde_json::Value::Array(a)) => {
                let n: Vec<Option<usize>> = a.iter().map(count).collect();
                match n.first() {
                    Some(&Some(first)) if n.iter().all(|&c| c == Some(first)) => Some(first),
                    _ => return Err(bad("attention_head_dim", x)),
                }
            }
            Some(x) => Some(count(x).ok_or_else(|| bad("attention_head_dim", x))?),
        };
        let norm_groups = match v.get("norm_num_groups") {
            None => None,
            Some(x) => Some(count(x).ok_or_else(|| bad("norm_num_groups", x))?),
        };
        Ok(DiffusersCounts { heads, norm_groups })
    }
}

/// What a standalone VAE's files may say beyond the tensors: the `sdgraph.*` metadata a
/// checkpoint may carry ([`ConfigOverrides`]), and for the diffusers layout
/// `norm_num_groups` from the `config.json` beside the weights (the metadata wins). The
/// scaling factor is SD 1.x's unless the metadata says otherwise: as in ComfyUI, it belongs
/// to the model family, not to the VAE file (a diffusers config's `scaling_factor` is not read).
fn vae_overrides(src: &WeightSource, layout: VaeLayout, file: &std::path::Path) -> Result<ConfigOverrides, String> {
    let mut meta = ConfigOverrides::read(src).map_err(|e| format!("{}: {e}", file.display()))?;
    if layout == VaeLayout::Diffusers && meta.norm_groups.is_none() {
        meta.norm_groups = DiffusersCounts::beside(file)?.norm_groups;
    }
    Ok(meta)
}

/// Loads a standalone VAE file (any layout, see [`open_vae`]) onto the GPU in f32.
pub fn load_vae_file(gpu: &Gpu, path: &std::path::Path) -> Result<(VaeHandle, std::path::PathBuf), String> {
    let (src, layout, file) = open_vae(path).map_err(|e| e.to_string())?;
    let meta = vae_overrides(&src, layout, &file)?;
    let vae = load_vae(gpu, &src, &meta).map_err(|e| format!("{}: {e}", file.display()))?;
    let c = vae.vae.config.latent_channels;
    if c != 4 {
        return Err(format!(
            "{}: a VAE with {c} latent channels; SD 1.x VAEs have 4 (SD3 and Flux VAEs, with 16, are not supported)",
            file.display()
        ));
    }
    Ok((vae, file))
}

/// The schema (no settings: the VAE is always f32).
pub struct VaeLoader(NodeSchema);

graph::node_fields! {
    struct VaeLoaderFields {
        vae_name: String = path("VAE file (.safetensors; .pt/.ckpt in PyTorch's zip format), relative to the graph file's folder."),
    }
}

impl VaeLoader {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "VAELoader",
                "loaders",
                "Loads a standalone SD 1.x VAE (LDM or diffusers layout), e.g. vae-ft-mse-840000-ema-pruned.",
            )
            .fields(VaeLoaderFields::declare)
            .output("vae", PortType::Vae, "The image autoencoder."),
        )
    }
}

impl Default for VaeLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for VaeLoader {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = VaeLoaderFields::read(inputs)?;
        let name = f.vae_name.as_str();
        if COMFY_SPECIAL_VAES.contains(&name) {
            return Err(err(format!(
                "vae_name {name:?} is one of ComfyUI's built-in VAEs (TAESD previews, pixel space), which sdgraph does not have: give a VAE file"
            )));
        }
        let path = ctx.resolve(name);
        let gpu = runtime::gpu()?;
        ctx.progress.message(&format!("loading {}", path.display()));
        let (vae, file) = load_vae_file(gpu, &path).map_err(NodeError::new)?;
        ctx.record_input_file(&file);
        Ok(vec![Value::payload(vae)])
    }

    /// Size and modification time of the weights file: replacing it reloads it.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&VaeLoaderFields::read(inputs).ok()?.vae_name);
        let file = models::checkpoint::tensor_file::component_weights(&path, "VAE").ok()?;
        let meta = std::fs::metadata(&file).ok()?;
        let config = std::fs::metadata(file.with_file_name("config.json")).ok().and_then(|m| m.modified().ok());
        Some(format!("{}:{}:{:?}:{config:?}", file.display(), meta.len(), meta.modified().ok()))
    }
}
