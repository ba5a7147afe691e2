//! LoraLoader and LoraLoaderModelOnly, as ComfyUI's: a LoRA file (any adapter kind ComfyUI merges:
//! LoRA/LoCon, LoHa, LoKr, DoRA, full diffs) merged into the UNet (and the text encoder) at the given
//! strengths; the networks are built again from their weights with the merged values in the source's
//! overlay (`models::lora`), so chained loaders stack.

use std::path::Path;
use std::sync::Arc;

use gpu::Gpu;
use graph::node::{NodeError, RunContext};
use graph::{PortType, Value};

use crate::payload::{ClipHandle, ModelHandle};
use crate::runtime;
use models::checkpoint::convert::{CLIP_PREFIX, UNET_PREFIX};
use models::clip::ClipTextModel;
use models::lora::{LoraError, Net, NetSource, ParsedLora, clip_key_map, merge, parse_lora, unet_key_map};
use models::unet::Unet;

/// How many unmatched key names a warning lists.
const SHOWN: usize = 5;

/// Reads the LoRA at `path` and matches it against `model` and (when given) `clip`. A file
/// whose modules match neither network is an error.
pub fn read_lora(path: &Path, model: &ModelHandle, clip: Option<&ClipHandle>) -> Result<ParsedLora, String> {
    let unet = model
        .source
        .as_ref()
        .ok_or("the MODEL does not say what it was loaded from, so no LoRA can be merged into it")?;
    let unet_map = unet_key_map(&unet.weights, unet.config.layers_per_block);
    let clip_map = match clip.and_then(|c| c.source.as_ref()) {
        Some(c) => clip_key_map(&c.weights),
        None => Default::default(),
    };
    let lora = parse_lora(path, &unet_map, &clip_map).map_err(|e| e.to_string())?;
    if lora.modules.is_empty() {
        let first: Vec<&str> = lora.not_loaded.iter().take(SHOWN).map(|s| s.as_str()).collect();
        return Err(LoraError {
            file: path.to_path_buf(),
            message: format!(
                "none of its {} keys match this SD 1.x model's UNet or text encoder (first: {first:?})",
                lora.not_loaded.len()
            ),
        }
        .to_string());
    }
    Ok(lora)
}

/// ComfyUI's "lora key not loaded", as one line: the count and the first few keys.
pub fn not_loaded_warning(lora: &ParsedLora) -> Option<String> {
    if lora.not_loaded.is_empty() {
        return None;
    }
    let first: Vec<&str> = lora.not_loaded.iter().take(SHOWN).map(|s| s.as_str()).collect();
    Some(format!(
        "LoRA {}: {} keys not loaded (they match nothing in this model): {}{}",
        lora.path.display(),
        lora.not_loaded.len(),
        first.join(", "),
        if lora.not_loaded.len() > SHOWN { ", ..." } else { "" }
    ))
}

/// `model` with the LoRA's UNet modules merged at `strength`: a new UNet built from the merged weights.
pub fn lora_model(gpu: &Gpu, model: &ModelHandle, lora: &ParsedLora, strength: f64) -> Result<ModelHandle, String> {
    let src = model.source.as_ref().ok_or("the MODEL does not say what it was loaded from")?;
    let weights = merge(gpu, &src.weights, lora, Net::Unet, strength, src.dtype, Some(src.config.context_dim))
        .map_err(|e| e.to_string())?;
    let unet = Unet::load(gpu, &weights.prefix(UNET_PREFIX), &src.config, src.dtype).map_err(|e| e.to_string())?;
    let mut loras = src.loras.clone();
    loras.push((lora.path.clone(), strength));
    let source = NetSource { weights, config: src.config.clone(), dtype: src.dtype, loras };
    Ok(ModelHandle { unet, prediction: model.prediction, source: Some(Arc::new(source)) })
}

/// `clip` with the LoRA's text-encoder modules merged at `strength` (same tokenizer and layer).
pub fn lora_clip(gpu: &Gpu, clip: &ClipHandle, lora: &ParsedLora, strength: f64) -> Result<ClipHandle, String> {
    let src = clip.source.as_ref().ok_or("the CLIP does not say what it was loaded from")?;
    let weights = merge(gpu, &src.weights, lora, Net::Clip, strength, src.dtype, None).map_err(|e| e.to_string())?;
    let w = weights.prefix(&format!("{CLIP_PREFIX}text_model."));
    let model = ClipTextModel::load(gpu, &w, &src.config, src.dtype).map_err(|e| e.to_string())?;
    let mut loras = src.loras.clone();
    loras.push((lora.path.clone(), strength));
    let source = NetSource { weights, config: src.config.clone(), dtype: src.dtype, loras };
    Ok(ClipHandle {
        model: Arc::new(model),
        tokenizer: clip.tokenizer.clone(),
        layer: clip.layer,
        source: Some(Arc::new(source)),
    })
}

/// Size and modification time of the LoRA file: replacing it merges it again.
fn file_fingerprint(ctx: &RunContext<'_>, name: &str) -> Option<String> {
    let path = ctx.resolve(name);
    let meta = std::fs::metadata(&path).ok()?;
    Some(format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok()))
}

/// Reads the LoRA `name` for `model` (and `clip`), recording the file and warning about keys not loaded.
fn load(
    ctx: &mut RunContext<'_>,
    name: &str,
    model: &ModelHandle,
    clip: Option<&ClipHandle>,
) -> Result<ParsedLora, NodeError> {
    let path = ctx.resolve(name);
    ctx.progress.message(&format!("merging LoRA {}", path.display()));
    let lora = read_lora(&path, model, clip).map_err(NodeError::new)?;
    ctx.record_input_file(&path);
    if let Some(w) = not_loaded_warning(&lora) {
        ctx.progress.message(&format!("warning: node {:?}: {w}", ctx.node_id));
    }
    Ok(lora)
}

const STRENGTH_DOC: &str =
    "How strongly the LoRA changes the weights, -100..100: 1 as trained, 0 not at all, negative the opposite way.";
const LORA_NAME_DOC: &str = "LoRA file (.safetensors: LoRA/LoCon, LoHa, LoKr, DoRA, full diffs; kohya-ss, LyCORIS or diffusers/PEFT keys), relative to the graph file's folder.";

graph::node_fields! {
    struct LoraLoaderFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet (from CheckpointLoaderSimple or another LoraLoader)."),
        clip: Arc<ClipHandle> = input(PortType::Clip, "The text encoder (from CheckpointLoaderSimple or another LoraLoader)."),
        lora_name: String = path(LORA_NAME_DOC),
        strength_model: f64 = float(-100.0, 100.0, 1.0, STRENGTH_DOC),
        strength_clip: f64 = float(-100.0, 100.0, 1.0, STRENGTH_DOC),
    }
}

node_kind!(
    LoraLoader,
    "LoraLoader",
    "loaders",
    "Merges a LoRA (LoRA/LoCon, LoHa, LoKr, DoRA, full diffs; linear and conv) into the UNet and the text encoder.",
    LoraLoaderFields,
    [("model", Model, "The UNet with the LoRA merged."), ("clip", Clip, "The text encoder with the LoRA merged.")],
    |ctx, f| {
        // As ComfyUI: both strengths 0 give the inputs back (no file is read).
        if f.strength_model == 0.0 && f.strength_clip == 0.0 {
            return Ok(vec![Value::shared(f.model), Value::shared(f.clip)]);
        }
        let lora = load(ctx, &f.lora_name, &f.model, Some(&f.clip))?;
        let gpu = runtime::gpu()?;
        let model = if f.strength_model == 0.0 {
            Value::shared(f.model.clone())
        } else {
            Value::payload(lora_model(gpu, &f.model, &lora, f.strength_model).map_err(NodeError::new)?)
        };
        let clip = if f.strength_clip == 0.0 {
            Value::shared(f.clip.clone())
        } else {
            Value::payload(lora_clip(gpu, &f.clip, &lora, f.strength_clip).map_err(NodeError::new)?)
        };
        Ok(vec![model, clip])
    },
    fingerprint = |ctx, f| file_fingerprint(ctx, &f.lora_name),
    // The CLIP does not depend on the model or strength_model: changing them leaves the prompts' encodings cached.
    output_depends = |o| (o == 1).then_some(&["clip", "lora_name", "strength_clip"][..])
);

graph::node_fields! {
    struct LoraModelOnlyFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet (from CheckpointLoaderSimple or another LoRA loader)."),
        lora_name: String = path(LORA_NAME_DOC),
        strength_model: f64 = float(-100.0, 100.0, 1.0, STRENGTH_DOC),
    }
}

node_kind!(
    LoraLoaderModelOnly,
    "LoraLoaderModelOnly",
    "loaders",
    "Merges a LoRA into the UNet only.",
    LoraModelOnlyFields,
    [("model", Model, "The UNet with the LoRA merged.")],
    |ctx, f| {
        if f.strength_model == 0.0 {
            return Ok(vec![Value::shared(f.model)]);
        }
        let mut lora = load(ctx, &f.lora_name, &f.model, None)?;
        // Its text-encoder modules are not used.
        lora.modules.retain(|m| m.net == Net::Unet);
        let model = lora_model(runtime::gpu()?, &f.model, &lora, f.strength_model).map_err(NodeError::new)?;
        Ok(vec![Value::payload(model)])
    },
    fingerprint = |ctx, f| file_fingerprint(ctx, &f.lora_name)
);
