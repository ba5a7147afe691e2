//! LoraLoader and LoraLoaderModelOnly, as ComfyUI's: a LoRA file (any adapter kind ComfyUI merges:
//! LoRA/LoCon, LoHa, LoKr, DoRA, full diffs) merged into the UNet (and the text encoder) at the given
//! strengths, on the GPU (`models::lora::merge`); the networks are built again sharing every tensor the
//! LoRA does not patch, so chained loaders stack and a changed strength re-merges only the patched
//! weights, onto the same base values. The parsed file is kept per model (by digest, [`PARSED`]), and
//! the cache key follows the file's SHA-256; the CLIP output's key leaves out the model and
//! `strength_model`, so changing them does not encode the prompts again.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use gpu::Gpu;
use graph::exec::provenance::HashCache;
use graph::node::{NodeError, RunContext};
use graph::{PortType, Value};

use crate::payload::{ClipHandle, ModelHandle};
use crate::runtime;
use models::checkpoint::convert::{CLIP_PREFIX, UNET_PREFIX};
use models::checkpoint::weights::{Resident, WeightSource};
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
    Ok(ModelHandle { unet, prediction: model.prediction, zsnr: model.zsnr, source: Some(Arc::new(source)) })
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

/// The LoRA file's SHA-256 (from the process's digest cache while its size and mtime hold): the
/// cache key follows the file's contents, as provenance records them.
fn file_fingerprint(ctx: &RunContext<'_>, name: &str) -> Option<String> {
    let path = std::path::absolute(ctx.resolve(name)).ok()?;
    HashCache::global().sha256(&path).ok().map(|d| format!("sha256:{d}"))
}

/// LoRA files read lately, matched to a model: (file digest and the model's tables, the model's table
/// of resident tensors, the parsed file). A changed strength merges again without reading the file.
type Parsed = Vec<(String, Weak<Resident>, Arc<ParsedLora>)>;
static PARSED: Mutex<Parsed> = Mutex::new(Vec::new());

/// How many parsed LoRA files [`PARSED`] keeps (their tensors in f32 on the CPU: a rank-32 SD 1.5
/// LoRA is about 300 MB), the oldest dropped first; entries of dropped models go first.
const PARSED_KEPT: usize = 4;

/// [`read_lora`], from [`PARSED`] when the same file (by digest) was read for the same model tables.
fn read_lora_cached(path: &Path, model: &ModelHandle, clip: Option<&ClipHandle>) -> Result<Arc<ParsedLora>, String> {
    let table = |w: Option<&WeightSource>| w.and_then(|w| w.resident_table()).cloned();
    let unet = table(model.source.as_ref().map(|s| &s.weights));
    let clip_table = table(clip.and_then(|c| c.source.as_ref()).map(|s| &s.weights));
    let digest = std::path::absolute(path).ok().and_then(|p| HashCache::global().sha256(&p).ok());
    let (Some(unet), Some(digest)) = (unet, digest) else {
        return read_lora(path, model, clip).map(Arc::new);
    };
    let lpb = model.source.as_ref().map(|s| s.config.layers_per_block).unwrap_or(0);
    let clip_id = clip_table.as_ref().map(|c| Arc::as_ptr(c) as usize);
    let key = format!("{digest}:{:x}:{lpb}:{clip_id:?}", Arc::as_ptr(&unet) as usize);
    let mut memo = PARSED.lock().unwrap_or_else(|e| e.into_inner());
    memo.retain(|(_, owner, _)| owner.strong_count() > 0);
    if let Some((_, owner, lora)) = memo.iter().find(|(k, _, _)| *k == key)
        && owner.upgrade().is_some_and(|o| Arc::ptr_eq(&o, &unet))
    {
        let mut lora = lora.clone();
        if lora.path != path {
            Arc::make_mut(&mut lora).path = path.to_path_buf();
        }
        return Ok(lora);
    }
    drop(memo);
    let lora = Arc::new(read_lora(path, model, clip)?);
    let mut memo = PARSED.lock().unwrap_or_else(|e| e.into_inner());
    memo.retain(|(k, _, _)| *k != key);
    memo.push((key, Arc::downgrade(&unet), lora.clone()));
    if memo.len() > PARSED_KEPT {
        memo.remove(0);
    }
    Ok(lora)
}

/// Reads the LoRA `name` for `model` (and `clip`), recording the file and warning about keys not loaded.
fn load(
    ctx: &mut RunContext<'_>,
    name: &str,
    model: &ModelHandle,
    clip: Option<&ClipHandle>,
) -> Result<Arc<ParsedLora>, NodeError> {
    let path = ctx.resolve(name);
    ctx.progress.message(&format!("merging LoRA {}", path.display()));
    let lora = read_lora_cached(&path, model, clip).map_err(NodeError::new)?;
    ctx.record_input_file(&path);
    if let Some(w) = not_loaded_warning(&lora) {
        ctx.progress.message(&format!("warning: node {:?}: {w}", ctx.node_id));
    }
    Ok(lora)
}

/// The last CLIP merged: (its input, the parsed LoRA, strength_clip's bits, the result), all held weakly.
type LastClip = Option<(Weak<ClipHandle>, Weak<ParsedLora>, u64, Weak<ClipHandle>)>;
static LAST_CLIP: Mutex<LastClip> = Mutex::new(None);

/// [`lora_clip`], or the CLIP it made last time for the same input, LoRA and strength while that is
/// alive: when only strength_model changed, the node runs again but the text encoder is not merged
/// again (its output's cache key is unchanged, so the prompts are not encoded again either).
fn merged_clip(
    gpu: &Gpu,
    clip: &Arc<ClipHandle>,
    lora: &Arc<ParsedLora>,
    strength: f64,
) -> Result<Arc<ClipHandle>, NodeError> {
    let mut last = LAST_CLIP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((input, parsed, bits, out)) = last.as_ref()
        && input.upgrade().is_some_and(|i| Arc::ptr_eq(&i, clip))
        && parsed.upgrade().is_some_and(|p| Arc::ptr_eq(&p, lora))
        && *bits == strength.to_bits()
        && let Some(out) = out.upgrade()
    {
        return Ok(out);
    }
    let out = Arc::new(lora_clip(gpu, clip, lora, strength).map_err(NodeError::new)?);
    *last = Some((Arc::downgrade(clip), Arc::downgrade(lora), strength.to_bits(), Arc::downgrade(&out)));
    Ok(out)
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
            Value::shared(merged_clip(gpu, &f.clip, &lora, f.strength_clip)?)
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
        // Its text-encoder modules are not used (merge takes the UNet's only).
        let lora = load(ctx, &f.lora_name, &f.model, None)?;
        let model = lora_model(runtime::gpu()?, &f.model, &lora, f.strength_model).map_err(NodeError::new)?;
        Ok(vec![Value::payload(model)])
    },
    fingerprint = |ctx, f| file_fingerprint(ctx, &f.lora_name)
);
