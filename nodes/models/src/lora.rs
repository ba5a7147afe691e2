//! LoRA and LyCORIS files merged into a model's weights, as ComfyUI's `comfy/lora.py` (`model_lora_keys_unet`,
//! `model_lora_keys_clip`, `load_lora`, Comfy-Org/ComfyUI@ec93dcacb96b922f7cb1417b3ba22bccb082df32) and
//! its weight adapters do it ([`adapters`]): plain LoRA and LoCon (with a Tucker `lora_mid`), LoHa,
//! LoKr, DoRA (`dora_scale`, on any of those three), full differences (`.diff`, `.diff_b`, `.w_norm`,
//! `.b_norm`: weights and biases) and replaced weights (`.set_weight`); `alpha / rank` scales as each
//! adapter takes its rank (1 without an `.alpha`). Merged on the GPU ([`merge`]): the patched
//! tensors go into a [`WeightSource`]'s GPU overlay, from which the networks are built again, sharing
//! every tensor the LoRA does not patch with the network they came from; a later LoRA merges onto the
//! earlier one's tensors.
//!
//! Key layouts: kohya-ss / LyCORIS (`lora_unet_<diffusers or LDM module, . as _>`, `lora_te_`/`lora_te1_`
//! `text_model_encoder_layers_N_...`, `lycoris_...`), diffusers/PEFT (`unet.<module>.lora_A.weight` /
//! `.lora_B.weight`, `.lora.down/.lora.up`, `_lora.down/up`, `.lora_linear_layer.down/up`,
//! `text_encoder.<module>...`), LDM-keyed (`diffusion_model.<module>`,
//! `text_encoders.clip_l.transformer.<module>`). GLoRA, OFT/BOFT, `reshape_weight` and PEFT's
//! `lora_magnitude_vector` are refused by name, as is any other part on a module of the model.

mod adapters;

pub use adapters::{Adapter, Factor, LowRank, weight_decompose};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use gpu::ops::binary::add;
use gpu::ops::cast::cast;
use gpu::ops::matmul::{MatmulOptions, matmul};
use gpu::{DType, Gpu, Tensor};

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

/// The parts of a module's keys that ComfyUI's `load_lora` reads, by suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    /// Plain LoRA up/down in one of [`STYLES`] (index), and kohya's LoCon `lora_mid`.
    Up(usize),
    Down(usize),
    Mid,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
    WNorm,
    BNorm,
    Diff,
    DiffB,
    SetWeight,
    Alpha,
    DoraScale,
}

/// The up/down suffix pairs of plain LoRA, in ComfyUI's order of preference.
const STYLES: [(&str, &str); 5] = [
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
];

/// The other parts' suffixes (no suffix ends another: `.lokr_w1` does not end `.lokr_w1_a`).
const SUFFIXES: [(&str, Part); 21] = [
    (".lora_mid.weight", Part::Mid),
    (".hada_w1_a", Part::HadaW1A),
    (".hada_w1_b", Part::HadaW1B),
    (".hada_w2_a", Part::HadaW2A),
    (".hada_w2_b", Part::HadaW2B),
    (".hada_t1", Part::HadaT1),
    (".hada_t2", Part::HadaT2),
    (".lokr_w1", Part::LokrW1),
    (".lokr_w1_a", Part::LokrW1A),
    (".lokr_w1_b", Part::LokrW1B),
    (".lokr_w2", Part::LokrW2),
    (".lokr_w2_a", Part::LokrW2A),
    (".lokr_w2_b", Part::LokrW2B),
    (".lokr_t2", Part::LokrT2),
    (".w_norm", Part::WNorm),
    (".b_norm", Part::BNorm),
    (".diff", Part::Diff),
    (".diff_b", Part::DiffB),
    (".set_weight", Part::SetWeight),
    (".alpha", Part::Alpha),
    (".dora_scale", Part::DoraScale),
];

/// The module name and part of `key`, when its suffix is a part's.
fn split_part(key: &str) -> Option<(&str, Part)> {
    for (i, (up, down)) in STYLES.iter().enumerate() {
        if let Some(x) = key.strip_suffix(up) {
            return Some((x, Part::Up(i)));
        }
        if let Some(x) = key.strip_suffix(down) {
            return Some((x, Part::Down(i)));
        }
    }
    SUFFIXES.iter().find_map(|(s, p)| key.strip_suffix(s).map(|x| (x, *p)))
}

/// Adapter kinds ComfyUI knows and sdgraph does not merge, by a part of their keys.
const REFUSED: [(&str, &str); 5] = [
    (".oft_blocks", "OFT/BOFT (oft_blocks)"),
    (".a1.weight", "GLoRA (a1/a2/b1/b2)"),
    (".b1.weight", "GLoRA (a1/a2/b1/b2)"),
    (".reshape_weight", "a reshaped weight (reshape_weight)"),
    (".lora_magnitude_vector", "PEFT DoRA (lora_magnitude_vector; ComfyUI reads DoRA as kohya/LyCORIS dora_scale)"),
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

/// One adapter of a file, matched to the weight (or bias) it patches.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// The module's name in the file (`lora_unet_...`, `unet....`).
    pub name: String,
    pub net: Net,
    /// The canonical name of what it patches (`model.diffusion_model....weight`, or `....bias`).
    pub target: String,
    pub adapter: Adapter,
    pub alpha: Option<f32>,
    /// DoRA's magnitude (LoRA, LoHa and LoKr only).
    pub dora_scale: Option<LoraTensor>,
}

impl LoraModule {
    /// `alpha / rank` with the rank as the adapter takes it, or 1 without an alpha (ComfyUI's scale).
    pub fn scale(&self) -> Result<f64, String> {
        match (self.alpha, self.adapter.rank()) {
            (Some(_), Some(0)) => {
                Err(format!("the {} adapter's rank is 0, so its alpha divides by 0", self.adapter.kind()))
            }
            (Some(a), Some(r)) => Ok(a as f64 / r as f64),
            _ => Ok(1.0),
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
    for (part, kind) in REFUSED {
        if let Some(k) = keys.iter().find(|k| k.ends_with(part) || k.contains(&format!("{part}."))) {
            return Err(error(format!("holds {kind} adapters (key {k:?}), which sdgraph does not merge")));
        }
    }
    let lookup = |x: &str| match (unet.get(x), clip.get(x)) {
        (Some(t), _) => Some((Net::Unet, t)),
        (None, Some(t)) => Some((Net::Clip, t)),
        (None, None) => None,
    };
    // Module name -> its parts' keys.
    let mut groups: BTreeMap<&str, BTreeMap<Part, &str>> = BTreeMap::new();
    for k in &keys {
        match split_part(k) {
            Some((x, part)) => {
                groups.entry(x).or_default().insert(part, k);
            }
            None => {
                // A part no adapter has, on a module of this model: an adapter kind nobody merges.
                let module = k.match_indices('.').map(|(i, _)| &k[..i]).find(|x| lookup(x).is_some());
                if let Some(x) = module {
                    return Err(error(format!(
                        "key {k:?}: {:?} is no adapter part sdgraph (or ComfyUI) merges into {x:?} (LoRA lora_up/lora_down/lora_mid, LoHa hada_*, LoKr lokr_*, diff, diff_b, w_norm, b_norm, set_weight, alpha, dora_scale)",
                        &k[x.len() + 1..]
                    )));
                }
            }
        }
    }
    if groups.values().all(|parts| parts.keys().all(|p| matches!(p, Part::Alpha))) {
        let first: Vec<&str> = keys.iter().take(3).copied().collect();
        return Err(error(format!(
            "no LoRA keys (lora_up/lora_down, lora_A/lora_B, hada_*, lokr_*, diff) among its {} keys {first:?}",
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
    // SDXL's transformers hold 2 or 10 blocks, SD 1.x's one: a LoRA for a block this model lacks is SDXL's.
    let deep = |k: &str| {
        let k = k.replace(".transformer_blocks.", "_transformer_blocks_");
        let block = |r: &str| r.chars().take_while(char::is_ascii_digit).collect::<String>();
        k.split("_transformer_blocks_").nth(1).map(block).is_some_and(|b| !b.is_empty() && b != "0")
    };
    if let Some(k) = keys.iter().find(|k| deep(k) && split_part(k).is_some_and(|(x, _)| lookup(x).is_none()))
        && !unet.keys().any(|m| deep(m))
    {
        return Err(error(format!(
            "targets SDXL (key {k:?} patches a transformer block past the first: SDXL's transformers have 2 or 10 blocks, SD 1.x's one); the model is SD 1.x"
        )));
    }
    let read = |key: &str| -> Result<LoraTensor, String> {
        let (shape, values) = st.f32_any(key).map_err(|e| e.to_string())?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(format!("key {key:?} holds {v}"));
        }
        Ok(LoraTensor { key: key.to_string(), shape, values })
    };
    let mut context_width = None;
    let mut loaded: BTreeSet<&str> = BTreeSet::new();
    let mut targets: BTreeSet<String> = BTreeSet::new();
    let mut modules = Vec::new();
    for (x, parts) in &groups {
        let down = parts.iter().find(|(p, _)| matches!(p, Part::Down(_))).map(|(_, k)| *k);
        if x.contains("attn2")
            && (x.contains("to_k") || x.contains("to_v"))
            && let Some(info) = down.and_then(|k| st.info(k))
        {
            context_width = info.shape.get(1).copied();
        }
        let Some((net, target)) = lookup(x) else { continue };
        let bias = format!("{}.bias", target.strip_suffix(".weight").unwrap_or(target));
        // ComfyUI keeps one adapter per weight; so does sdgraph: the first module's, the other is reported.
        if targets.contains(target) || targets.contains(&bias) {
            continue;
        }
        let Patches { weight, bias: bias_patch, alpha, dora_scale } =
            Parts { x, parts, read: &read, loaded: &mut loaded }.patches().map_err(error)?;
        let mut add = |target: &String, adapter: Adapter, dora_scale: Option<LoraTensor>| {
            targets.insert(target.clone());
            let name = x.to_string();
            modules.push(LoraModule { name, net, target: target.clone(), adapter, alpha, dora_scale });
        };
        if let Some(a) = weight {
            let dora =
                dora_scale.filter(|_| matches!(a, Adapter::Lora { .. } | Adapter::Loha { .. } | Adapter::Lokr { .. }));
            add(target, a, dora);
        }
        if let Some(b) = bias_patch {
            add(&bias, b, None);
        }
    }
    let not_loaded = keys.iter().filter(|k| !loaded.contains(**k)).map(|k| k.to_string()).collect();
    Ok(ParsedLora { path: path.to_path_buf(), modules, not_loaded, context_width })
}

/// What ComfyUI's `load_lora` makes of one module: its weight's patch (the last kind found wins:
/// LoRA, LoHa, LoKr, `w_norm`, `diff`, `set_weight`), its bias's (`b_norm` with a `w_norm`, `diff_b`),
/// alpha and `dora_scale`.
#[derive(Default)]
struct Patches {
    weight: Option<Adapter>,
    bias: Option<Adapter>,
    alpha: Option<f32>,
    dora_scale: Option<LoraTensor>,
}

/// Reads one module's parts, counting the keys read as loaded.
struct Parts<'a, 'k> {
    x: &'a str,
    parts: &'a BTreeMap<Part, &'k str>,
    read: &'a dyn Fn(&str) -> Result<LoraTensor, String>,
    loaded: &'a mut BTreeSet<&'k str>,
}

impl<'k> Parts<'_, 'k> {
    fn has(&self, p: Part) -> bool {
        self.parts.contains_key(&p)
    }

    fn get(&mut self, p: Part) -> Result<Option<LoraTensor>, String> {
        let Some(&k) = self.parts.get(&p) else { return Ok(None) };
        self.loaded.insert(k);
        (self.read)(k).map(Some)
    }

    /// The part `p` (key `x` + `suffix`), which the module's `kind` adapter needs.
    fn need(&mut self, p: Part, suffix: &str, kind: &str) -> Result<LoraTensor, String> {
        let x = self.x;
        self.get(p)?.ok_or_else(|| format!("module {x:?} holds {kind} keys but no {:?}", format!("{x}{suffix}")))
    }

    /// LoKr's factor `w` (whole) or `wa @ wb`.
    fn factor(&mut self, w: Part, wa: Part, wb: Part, name: &str) -> Result<Factor, String> {
        if let Some(t) = self.get(w)? {
            return Ok(Factor::Full(t));
        }
        let x = self.x;
        let a = self.get(wa)?.ok_or_else(|| {
            format!("module {x:?} holds LoKr keys but no \"{x}.lokr_{name}\" nor \"{x}.lokr_{name}_a\"")
        })?;
        Ok(Factor::Product(a, self.need(wb, &format!(".lokr_{name}_b"), "LoKr")?))
    }

    fn patches(&mut self) -> Result<Patches, String> {
        let mut out = Patches::default();
        if let Some(a) = self.get(Part::Alpha)? {
            if a.values.len() != 1 {
                return Err(format!("key {:?} has shape {:?}, expected one value", a.key, a.shape));
            }
            out.alpha = Some(a.values[0]);
        }
        out.dora_scale = self.get(Part::DoraScale)?;
        if let Some(style) = (0..STYLES.len()).find(|&i| self.has(Part::Up(i))) {
            let up = self.need(Part::Up(style), STYLES[style].0, "LoRA")?;
            let down = self
                .get(Part::Down(style))?
                .ok_or_else(|| format!("key {:?} has no {:?}", up.key, format!("{}{}", self.x, STYLES[style].1)))?;
            // Only kohya's layout has LoCon's mid weight (lora.py).
            let mid = if style == 0 { self.get(Part::Mid)? } else { None };
            out.weight = Some(Adapter::Lora { up, down, mid });
        }
        if self.has(Part::HadaW1A) {
            let w1a = self.need(Part::HadaW1A, ".hada_w1_a", "LoHa")?;
            let w1b = self.need(Part::HadaW1B, ".hada_w1_b", "LoHa")?;
            let w2a = self.need(Part::HadaW2A, ".hada_w2_a", "LoHa")?;
            let w2b = self.need(Part::HadaW2B, ".hada_w2_b", "LoHa")?;
            let cores = match self.get(Part::HadaT1)? {
                Some(t1) => Some((t1, self.need(Part::HadaT2, ".hada_t2", "LoHa CP (hada_t1)")?)),
                None => None,
            };
            out.weight = Some(Adapter::Loha { w1a, w1b, w2a, w2b, cores });
        }
        if [Part::LokrW1, Part::LokrW2, Part::LokrW1A, Part::LokrW2A].iter().any(|p| self.has(*p)) {
            let w1 = self.factor(Part::LokrW1, Part::LokrW1A, Part::LokrW1B, "w1")?;
            let w2 = self.factor(Part::LokrW2, Part::LokrW2A, Part::LokrW2B, "w2")?;
            // lokr.py uses the Tucker core only to rebuild a factored w2.
            let t2 = if matches!(w2, Factor::Product(..)) { self.get(Part::LokrT2)? } else { None };
            out.weight = Some(Adapter::Lokr { w1, w2, t2 });
        }
        if let Some(w) = self.get(Part::WNorm)? {
            out.weight = Some(Adapter::Diff(w));
            out.bias = self.get(Part::BNorm)?.map(Adapter::Diff);
        }
        if let Some(d) = self.get(Part::Diff)? {
            out.weight = Some(Adapter::Diff(d));
        }
        if let Some(d) = self.get(Part::DiffB)? {
            out.bias = Some(Adapter::Diff(d));
        }
        if let Some(t) = self.get(Part::SetWeight)? {
            out.weight = Some(Adapter::Set(t));
        }
        Ok(out)
    }
}

/// `src` with the LoRA's modules for `net` merged at `strength` on the GPU, stored as `dtype` (the
/// network's): each target's tensor as the network holds it ([`WeightSource::base_tensor`]: an earlier
/// LoRA's, or the file's, uploaded once and kept resident) plus `strength * scale * up @ down`, made by
/// one product with the tensor as its residual (LoRA, LoCon), or plus the adapter's product made on the
/// CPU (LoHa, LoKr, diffs); DoRA and `set_weight`, not linear in the strength, patch the downloaded
/// tensor on the CPU ([`patch`]). Arithmetic in f32, stored once in `dtype`. Returns the new source,
/// whose other tensors are `src`'s; `src` is unchanged.
pub fn merge(
    gpu: &Gpu,
    src: &WeightSource,
    lora: &ParsedLora,
    net: Net,
    strength: f64,
    dtype: DType,
    model_context_width: Option<usize>,
) -> Result<WeightSource, LoraError> {
    let error = |message: String| LoraError { file: lora.path.clone(), message };
    let w = src.prefix("");
    let mut patched = Vec::new();
    for m in lora.modules.iter().filter(|m| m.net == net) {
        let what = |e: String| {
            let mut msg = format!("module {:?} ({}) for {:?}: {e}", m.name, m.adapter.kind(), m.target);
            if let (Some(file), Some(model)) = (lora.context_width, model_context_width)
                && file != model
            {
                let arch = architecture(file).map(|a| format!(" (made for {a})")).unwrap_or_default();
                msg.push_str(&format!(
                    "; the LoRA's cross-attention takes {file}-wide text embeddings{arch}, this SD 1.x model's {model}-wide"
                ));
            }
            error(msg)
        };
        if !w.contains(&m.target) {
            return Err(what("the model has no such tensor".into()));
        }
        let shape = w.shape(&m.target).map_err(|e| error(e.to_string()))?;
        let merged = merge_one(gpu, src, m, &shape, strength, dtype).map_err(what)?;
        patched.push((m.target.clone(), merged));
    }
    Ok(src.with_patched(patched))
}

/// One module's target merged on the GPU (see [`merge`]).
fn merge_one(
    gpu: &Gpu,
    src: &WeightSource,
    m: &LoraModule,
    shape: &[usize],
    strength: f64,
    dtype: DType,
) -> Result<Tensor, String> {
    let gpu_err = |e: gpu::GpuError| e.to_string();
    let base = src.base_tensor(gpu, &m.target, dtype).map_err(|e| e.to_string())?;
    let out = shape.first().copied().unwrap_or(1);
    let rows = base.reshape(&[out, base.numel() / out.max(1)]).map_err(gpu_err)?;
    let linear = m.dora_scale.is_none() && !matches!(m.adapter, Adapter::Set(_));
    // The factors and the sum stay f32 (f16 factors would round the delta by 1e-3 of itself); only
    // the merged weight is stored in `dtype`.
    let rows32 = || cast(gpu, &rows, DType::F32).map_err(gpu_err);
    let max_abs = |v: &[f32]| v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    // A bound on |change| (or on the merged values): past half the dtype's range, the result is checked.
    let bound: f64;
    let merged = match (linear, m.adapter.factors(shape)) {
        (true, Some(factors)) => {
            // W + (strength * scale * up) @ down, the product's residual W added in f32 by the kernel.
            let LowRank { rank: r, up, down } = factors?;
            let s = (strength * m.scale()?) as f32;
            let up: Vec<f32> = up.iter().map(|v| v * s).collect();
            bound = max_abs(&up) * max_abs(&down) * r as f64;
            let up = gpu.upload(&up, &[out, r], DType::F32).map_err(gpu_err)?;
            // down as [in * kh * kw, r], a Linear weight's layout (the product's fast path, transpose_b).
            let cols = rows.dim(1);
            let mut down_t = vec![0f32; down.len()];
            for (i, v) in down.iter().enumerate() {
                down_t[(i % cols) * r + i / cols] = *v;
            }
            let down = gpu.upload(&down_t, &[cols, r], DType::F32).map_err(gpu_err)?;
            let residual = rows32()?;
            let opts = MatmulOptions { residual: Some(&residual), transpose_b: true, ..Default::default() };
            matmul(gpu, &up, &down, &opts).map_err(gpu_err)?
        }
        (true, None) => {
            let s = strength * m.scale()?;
            let d: Vec<f32> = m.adapter.product(shape)?.iter().map(|d| (s * d) as f32).collect();
            bound = max_abs(&d);
            let d = gpu.upload(&d, rows.shape(), DType::F32).map_err(gpu_err)?;
            add(gpu, &rows32()?, &d).map_err(gpu_err)?
        }
        (false, _) => {
            let values = gpu.download(&base).map_err(gpu_err)?;
            let merged = patch(m, shape, &values, strength)?;
            if let Some(v) = merged.iter().find(|v| !v.is_finite()) {
                return Err(format!("the merged weight holds {v}"));
            }
            bound = max_abs(&merged);
            gpu.upload(&merged, shape, dtype).map_err(gpu_err)?
        }
    };
    let merged = cast(gpu, &merged, dtype).map_err(gpu_err)?;
    let limit = match dtype {
        DType::F16 => 32752.0,
        DType::F32 => 1.0e38,
    };
    if (!bound.is_finite() || bound > limit)
        && let Some(v) = gpu.download(&merged).map_err(gpu_err)?.into_iter().find(|v| !v.is_finite())
    {
        return Err(format!("the merged weight holds {v} in {dtype:?} (the change reaches {bound:e})"));
    }
    merged.reshape(shape).map_err(gpu_err)
}

/// `base` (a tensor of `shape`) patched by `m` at `strength`, as ComfyUI's `calculate_weight`.
pub fn patch(m: &LoraModule, shape: &[usize], base: &[f32], strength: f64) -> Result<Vec<f32>, String> {
    let w: Vec<f64> = base.iter().map(|&v| v as f64).collect();
    let merged = match &m.adapter {
        // calculate_weight's "set": the file's tensor, whatever the strength.
        Adapter::Set(_) => m.adapter.product(shape)?,
        Adapter::Diff(_) => {
            let d = m.adapter.product(shape)?;
            w.iter().zip(&d).map(|(w, d)| w + strength * d).collect()
        }
        a => {
            let d = a.product(shape)?;
            let scale = m.scale()?;
            match &m.dora_scale {
                Some(dora) => weight_decompose(dora, &w, &d, scale, strength, shape)?,
                None => w.iter().zip(&d).map(|(w, d)| w + strength * scale * d).collect(),
            }
        }
    };
    Ok(merged.into_iter().map(|v| v as f32).collect())
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
