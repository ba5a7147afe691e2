//! LoRA files merged into a model's weights, as ComfyUI's `comfy/lora.py` (`model_lora_keys_unet`,
//! `model_lora_keys_clip`, `load_lora`) and `comfy/weight_adapter/lora.py` do it:
//! `W' = W + strength * (alpha / rank) * up.flatten(1) @ down.flatten(1)` (reshaped to W; `alpha / rank`
//! is 1 without an `.alpha`), in f32. The merged values go into a [`WeightSource`]'s overlay, from
//! which the networks are built again; a later LoRA merges onto the earlier one's values.
//!
//! Key layouts: kohya-ss (`lora_unet_<diffusers or LDM module, . as _>`, `lora_te_`/`lora_te1_`
//! `text_model_encoder_layers_N_...`, `.lora_down.weight` / `.lora_up.weight` / `.alpha`),
//! diffusers/PEFT (`unet.<module>.lora_A.weight` / `.lora_B.weight`, `.lora.down/.lora.up`,
//! `_lora.down/up`, `.lora_linear_layer.down/up`, `text_encoder.<module>...`), LDM-keyed
//! (`diffusion_model.<module>`, `text_encoders.clip_l.transformer.<module>`). Adapter kinds other
//! than plain LoRA are refused by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::checkpoint::convert::{CLIP_PREFIX, UNET_PREFIX, unet_key_to_diffusers};
use crate::checkpoint::safetensors::SafeTensors;
use crate::checkpoint::weights::WeightSource;

/// ComfyUI's `LORA_CLIP_MAP`: the text encoder modules kohya names, with their kohya spelling.
pub const CLIP_MODULES: [(&str, &str); 6] = [
    ("mlp.fc1", "mlp_fc1"),
    ("mlp.fc2", "mlp_fc2"),
    ("self_attn.k_proj", "self_attn_k_proj"),
    ("self_attn.q_proj", "self_attn_q_proj"),
    ("self_attn.v_proj", "self_attn_v_proj"),
    ("self_attn.out_proj", "self_attn_out_proj"),
];

/// The up/down suffix pairs of plain LoRA, in ComfyUI's order of preference.
const PAIRS: [(&str, &str); 5] = [
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
];

/// Key parts of the adapter kinds not merged yet, with their names.
const NOT_YET: [(&str, &str); 9] = [
    (".hada_", "LoHa (hada_*)"),
    (".lokr_", "LoKr (lokr_*)"),
    (".lora_mid.weight", "LoCon with a Tucker mid weight (lora_mid)"),
    (".dora_scale", "DoRA (dora_scale)"),
    (".diff_b", "a full bias difference (diff_b)"),
    (".diff", "a full weight difference (diff)"),
    (".w_norm", "a norm weight difference (w_norm)"),
    (".set_weight", "a replaced weight (set_weight)"),
    (".reshape_weight", "a reshaped weight (reshape_weight)"),
];

/// Which network a LoRA module patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Unet,
    Clip,
}

/// LoRA module name -> canonical weight name, for the UNet of `src` (LDM names under
/// `model.diffusion_model.`) with `layers_per_block` resnets per down block; as ComfyUI's
/// `model_lora_keys_unet`, plus the PEFT form `unet.<diffusers module>` diffusers writes today.
pub fn unet_key_map(src: &WeightSource, layers_per_block: usize) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let weights: Vec<&str> = src.names().filter(|n| n.starts_with(UNET_PREFIX) && n.ends_with(".weight")).collect();
    for name in &weights {
        let ldm = &name[UNET_PREFIX.len()..name.len() - ".weight".len()];
        map.insert(format!("lora_unet_{}", ldm.replace('.', "_")), name.to_string());
        map.insert(format!("diffusion_model.{ldm}"), name.to_string());
    }
    for name in &weights {
        let Some(diff) = unet_key_to_diffusers(&name[UNET_PREFIX.len()..], layers_per_block) else { continue };
        let module = &diff[..diff.len() - ".weight".len()];
        let underscored = module.replace('.', "_");
        map.insert(format!("lora_unet_{underscored}"), name.to_string());
        map.insert(format!("lycoris_{underscored}"), name.to_string());
        let mut processor = module.replace(".to_", ".processor.to_");
        if processor.ends_with(".to_out.0") {
            processor.truncate(processor.len() - 2);
        }
        for p in ["", "unet."] {
            map.insert(format!("{p}{processor}"), name.to_string());
        }
        map.insert(format!("unet.{module}"), name.to_string());
    }
    map
}

/// LoRA module name -> canonical weight name for the text encoder of `src` (under
/// `cond_stage_model.transformer.text_model.`), as ComfyUI's `model_lora_keys_clip` for SD 1.x's
/// `clip_l`, plus `text_encoder.encoder.layers...` (diffusers' names from transformers 5).
pub fn clip_key_map(src: &WeightSource) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for name in src.names().filter(|n| n.starts_with(CLIP_PREFIX) && n.ends_with(".weight")) {
        let rest = &name[CLIP_PREFIX.len()..name.len() - ".weight".len()];
        map.insert(format!("text_encoders.clip_l.transformer.{rest}"), name.to_string());
        let Some(layer) = rest.strip_prefix("text_model.encoder.layers.") else { continue };
        let Some((b, module)) = layer.split_once('.') else { continue };
        let Some((_, kohya)) = CLIP_MODULES.iter().find(|(m, _)| *m == module) else { continue };
        for p in ["lora_te", "lora_te1"] {
            map.insert(format!("{p}_text_model_encoder_layers_{b}_{kohya}"), name.to_string());
        }
        map.insert(format!("text_encoder.text_model.encoder.layers.{b}.{module}"), name.to_string());
        map.insert(format!("text_encoder.encoder.layers.{b}.{module}"), name.to_string());
    }
    map
}

/// A tensor read from a LoRA file: its shape and values in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTensor {
    pub key: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// One plain LoRA module of a file, matched to the weight it patches.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// The module's name in the file (`lora_unet_...`, `unet....`).
    pub name: String,
    pub net: Net,
    /// The canonical weight name (`model.diffusion_model....weight`).
    pub target: String,
    pub up: LoraTensor,
    pub down: LoraTensor,
    pub alpha: Option<f32>,
}

impl LoraModule {
    /// The rank: the down matrix's rows.
    pub fn rank(&self) -> usize {
        self.down.shape.first().copied().unwrap_or(0)
    }

    /// `alpha / rank`, or 1 without an alpha (ComfyUI's scale).
    pub fn scale(&self) -> f64 {
        match self.alpha {
            Some(a) => a as f64 / self.rank() as f64,
            None => 1.0,
        }
    }
}

/// A LoRA file matched to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLora {
    pub path: PathBuf,
    pub modules: Vec<LoraModule>,
    /// Keys of the file that match nothing of the model (ComfyUI: "lora key not loaded"), sorted.
    pub not_loaded: Vec<String>,
    /// The text-embedding width the file's cross-attention LoRAs take (to name the architecture).
    pub context_width: Option<usize>,
}

/// A LoRA file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("LoRA {}: {message}", file.display())]
pub struct LoraError {
    pub file: PathBuf,
    pub message: String,
}

/// The architecture whose text embeddings are `width` wide.
fn architecture(width: usize) -> Option<&'static str> {
    match width {
        768 => Some("SD 1.x"),
        1024 => Some("SD 2.x"),
        2048 => Some("SDXL"),
        _ => None,
    }
}

/// Reads the LoRA at `path` and matches its modules against `unet` and `clip` key maps
/// ([`unet_key_map`], [`clip_key_map`]).
pub fn parse_lora(
    path: &Path,
    unet: &HashMap<String, String>,
    clip: &HashMap<String, String>,
) -> Result<ParsedLora, LoraError> {
    let st = SafeTensors::open(path).map_err(|e| LoraError { file: path.to_path_buf(), message: e.to_string() })?;
    parse_tensors(path, &st, unet, clip)
}

/// [`parse_lora`] on an open file.
pub fn parse_tensors(
    path: &Path,
    st: &SafeTensors,
    unet: &HashMap<String, String>,
    clip: &HashMap<String, String>,
) -> Result<ParsedLora, LoraError> {
    let error = |message: String| LoraError { file: path.to_path_buf(), message };
    let keys: BTreeSet<&str> = st.names().collect();
    for (part, kind) in NOT_YET {
        let hit = |k: &&&str| k.ends_with(part) || (part.ends_with('_') && k.contains(part));
        if let Some(k) = keys.iter().find(hit) {
            return Err(error(format!("holds {kind} adapters (key {k:?}), which sdgraph does not merge yet")));
        }
    }
    let ups: Vec<(&str, &str, &str)> = keys
        .iter()
        .filter_map(|k| PAIRS.iter().find_map(|(up, down)| k.strip_suffix(up).map(|x| (*k, x, *down))))
        .collect();
    if ups.is_empty() {
        let first: Vec<&str> = keys.iter().take(3).copied().collect();
        return Err(error(format!(
            "no LoRA keys (lora_up/lora_down, lora_A/lora_B) among its {} keys {first:?}",
            keys.len()
        )));
    }
    if let Some(k) = keys.iter().find(|k| {
        k.starts_with("lora_te2_")
            || k.starts_with("text_encoder_2.")
            || k.contains("label_emb")
            || k.contains("add_embedding")
    }) {
        return Err(error(format!(
            "targets SDXL (key {k:?} belongs to SDXL's second text encoder or its size conditioning); the model is SD 1.x"
        )));
    }
    let read = |key: &str| -> Result<LoraTensor, LoraError> {
        let (shape, values) = st.f32_any(key).map_err(|e| error(e.to_string()))?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(error(format!("key {key:?} holds {v}")));
        }
        Ok(LoraTensor { key: key.to_string(), shape, values })
    };
    let mut context_width = None;
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    let mut modules = Vec::new();
    for (up_key, x, down_suffix) in ups {
        let down_key = format!("{x}{down_suffix}");
        if (x.contains("attn2") && (x.contains("to_k") || x.contains("to_v")))
            && let Some(info) = st.info(&down_key)
        {
            context_width = info.shape.get(1).copied();
        }
        let (net, target) = match (unet.get(x), clip.get(x)) {
            (Some(t), _) => (Net::Unet, t),
            (None, Some(t)) => (Net::Clip, t),
            (None, None) => continue,
        };
        if targets.contains_key(target) {
            // ComfyUI keeps one adapter per weight; so does sdgraph: the first, the other is reported.
            continue;
        }
        if !keys.contains(down_key.as_str()) {
            return Err(error(format!("key {up_key:?} has no {down_key:?}")));
        }
        let up = read(up_key)?;
        let down = read(&down_key)?;
        let alpha_key = format!("{x}.alpha");
        let alpha = if keys.contains(alpha_key.as_str()) {
            let a = read(&alpha_key)?;
            if a.values.len() != 1 {
                return Err(error(format!("key {alpha_key:?} has shape {:?}, expected one value", a.shape)));
            }
            loaded.insert(alpha_key);
            Some(a.values[0])
        } else {
            None
        };
        loaded.insert(up_key.to_string());
        loaded.insert(down_key);
        targets.insert(target.clone(), x.to_string());
        modules.push(LoraModule { name: x.to_string(), net, target: target.clone(), up, down, alpha });
    }
    let not_loaded = keys.iter().filter(|k| !loaded.contains(**k)).map(|k| k.to_string()).collect();
    Ok(ParsedLora { path: path.to_path_buf(), modules, not_loaded, context_width })
}

/// `up.flatten(1) @ down.flatten(1)` for a weight of `shape` (its elements in order), checked.
pub fn lora_product(m: &LoraModule, shape: &[usize]) -> Result<Vec<f32>, String> {
    let flat = |s: &[usize]| (s.first().copied().unwrap_or(0), s.iter().skip(1).product::<usize>());
    let (out, rank) = flat(&m.up.shape);
    let (rank_d, inner) = flat(&m.down.shape);
    let (w_out, w_inner) = flat(shape);
    if m.up.shape.len() < 2 || m.down.shape.len() < 2 || rank != rank_d || out != w_out || inner != w_inner {
        return Err(format!(
            "up {:?} {:?} and down {:?} {:?} do not make the weight's shape {shape:?}",
            m.up.key, m.up.shape, m.down.key, m.down.shape
        ));
    }
    let mut diff = vec![0f32; out * inner];
    for o in 0..out {
        let row = &mut diff[o * inner..(o + 1) * inner];
        for k in 0..rank {
            let u = m.up.values[o * rank + k];
            let d = &m.down.values[k * inner..(k + 1) * inner];
            for (r, dv) in row.iter_mut().zip(d) {
                *r += u * dv;
            }
        }
    }
    Ok(diff)
}

/// `src` with `modules` merged at `strength` into its overlay: each target's current value
/// (the overlay's, from an earlier LoRA, or the file's) plus `strength * scale * up @ down`,
/// in f32 as ComfyUI. Returns the new source; `src` is unchanged.
pub fn merge(
    src: &WeightSource,
    lora: &ParsedLora,
    net: Net,
    strength: f64,
    model_context_width: Option<usize>,
) -> Result<WeightSource, LoraError> {
    let error = |message: String| LoraError { file: lora.path.clone(), message };
    let w = src.prefix("");
    let mut patched = Vec::new();
    for m in lora.modules.iter().filter(|m| m.net == net) {
        let shape = w.shape(&m.target).map_err(|e| error(e.to_string()))?;
        let diff = lora_product(m, &shape).map_err(|e| {
            let mut msg = format!("module {:?} for {:?}: {e}", m.name, m.target);
            if let (Some(file), Some(model)) = (lora.context_width, model_context_width)
                && file != model
            {
                let arch = architecture(file).map(|a| format!(" (made for {a})")).unwrap_or_default();
                msg.push_str(&format!(
                    "; the LoRA's cross-attention takes {file}-wide text embeddings{arch}, this model's {model}-wide"
                ));
            }
            error(msg)
        })?;
        let mut base = match src.overlaid(&m.target) {
            Some(v) => v.to_vec(),
            None => w.f32(&m.target, &shape).map_err(|e| error(e.to_string()))?,
        };
        let scale = (strength * m.scale()) as f32;
        for (b, d) in base.iter_mut().zip(&diff) {
            *b += scale * d;
        }
        if let Some(v) = base.iter().find(|v| !v.is_finite()) {
            return Err(error(format!("module {:?} makes {:?} hold {v}", m.name, m.target)));
        }
        patched.push((m.target.clone(), base));
    }
    Ok(src.with_overlay(patched))
}

/// What a network was built from, so that a LoRA can build it again with merged weights: the
/// weights (their overlay holding the LoRAs merged so far), the network's config, its storage
/// type, and the LoRAs applied (file, strength), in order.
#[derive(Debug, Clone)]
pub struct NetSource<C> {
    pub weights: WeightSource,
    pub config: C,
    pub dtype: gpu::DType,
    pub loras: Vec<(PathBuf, f64)>,
}
