//! The diffusers folder layout mapped onto single-file (LDM/CompVis) names,
//! which the models use. The rules are the inverse of diffusers'
//! `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
//! `convert_ldm_clip_checkpoint` (diffusers 0.42.1,
//! `src/diffusers/loaders/single_file_utils.py`); the fixture generator checks
//! them against those functions and `tests/models/checkpoints.rs` checks this file
//! against the fixture's table.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::safetensors::{CheckpointError, SafeTensors};
use super::weights::{View, WeightSource};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// Structure of a diffusers UNet that its key names imply.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetLayout {
    /// Resnets per down block (SD: 2); up blocks have one more.
    pub layers_per_block: usize,
    /// Up blocks that have attention (their upsampler sits one slot later).
    pub up_with_attention: BTreeSet<usize>,
}

impl UnetLayout {
    pub fn from_keys<'a>(keys: impl Iterator<Item = &'a str>) -> UnetLayout {
        let mut resnets = BTreeSet::new();
        let mut up_with_attention = BTreeSet::new();
        for k in keys {
            if let Some(rest) = k.strip_prefix("down_blocks.0.resnets.")
                && let Some(j) = rest.split('.').next().and_then(|j| j.parse::<usize>().ok())
            {
                resnets.insert(j);
            }
            if let Some(rest) = k.strip_prefix("up_blocks.") {
                let mut parts = rest.split('.');
                if let (Some(b), Some("attentions")) = (parts.next().and_then(|b| b.parse().ok()), parts.next()) {
                    up_with_attention.insert(b);
                }
            }
        }
        UnetLayout { layers_per_block: resnets.len().max(1), up_with_attention }
    }
}

/// `norm1` -> `in_layers.0` and so on, for the first part of a resnet key.
fn unet_resnet(rest: &str) -> String {
    let (head, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let head = match head {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "time_emb_proj" => "emb_layers.1",
        "conv_shortcut" => "skip_connection",
        other => other,
    };
    format!("{head}.{tail}")
}

/// Splits `"3.rest.of.key"` into `(3, "rest.of.key")`.
fn index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// A diffusers UNet key as its single-file name (without the model prefix).
pub fn unet_key(key: &str, layout: &UnetLayout) -> Option<String> {
    let l = layout.layers_per_block;
    let fixed = match key {
        k if k.starts_with("time_embedding.linear_1.") => {
            Some(k.replacen("time_embedding.linear_1", "time_embed.0", 1))
        }
        k if k.starts_with("time_embedding.linear_2.") => {
            Some(k.replacen("time_embedding.linear_2", "time_embed.2", 1))
        }
        k if k.starts_with("conv_in.") => Some(k.replacen("conv_in", "input_blocks.0.0", 1)),
        k if k.starts_with("conv_norm_out.") => Some(k.replacen("conv_norm_out", "out.0", 1)),
        k if k.starts_with("conv_out.") => Some(k.replacen("conv_out", "out.2", 1)),
        _ => None,
    };
    if fixed.is_some() {
        return fixed;
    }
    if let Some(rest) = key.strip_prefix("down_blocks.") {
        let (b, rest) = index(rest)?;
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, rest) = index(rest)?;
            return Some(format!("input_blocks.{}.0.{}", 1 + b * (l + 1) + j, unet_resnet(rest)));
        }
        if let Some(rest) = rest.strip_prefix("attentions.") {
            let (j, rest) = index(rest)?;
            return Some(format!("input_blocks.{}.1.{rest}", 1 + b * (l + 1) + j));
        }
        if let Some(rest) = rest.strip_prefix("downsamplers.0.conv.") {
            return Some(format!("input_blocks.{}.0.op.{rest}", (b + 1) * (l + 1)));
        }
        return None;
    }
    if let Some(rest) = key.strip_prefix("mid_block.") {
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, rest) = index(rest)?;
            return Some(format!("middle_block.{}.{}", j * 2, unet_resnet(rest)));
        }
        if let Some(rest) = rest.strip_prefix("attentions.0.") {
            return Some(format!("middle_block.1.{rest}"));
        }
        return None;
    }
    if let Some(rest) = key.strip_prefix("up_blocks.") {
        let (b, rest) = index(rest)?;
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, rest) = index(rest)?;
            return Some(format!("output_blocks.{}.0.{}", b * (l + 1) + j, unet_resnet(rest)));
        }
        if let Some(rest) = rest.strip_prefix("attentions.") {
            let (j, rest) = index(rest)?;
            return Some(format!("output_blocks.{}.1.{rest}", b * (l + 1) + j));
        }
        if let Some(rest) = rest.strip_prefix("upsamplers.0.conv.") {
            let slot = if layout.up_with_attention.contains(&b) { 2 } else { 1 };
            return Some(format!("output_blocks.{}.{slot}.conv.{rest}", b * (l + 1) + l));
        }
    }
    None
}

/// `in_layers.0` -> `norm1` and so on: [`unet_resnet`] backwards.
fn unet_resnet_to_diffusers(rest: &str) -> Option<String> {
    let pairs = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    pairs.iter().find_map(|(ldm, diff)| rest.strip_prefix(ldm).map(|tail| format!("{diff}{tail}")))
}

/// A single-file UNet name (without the model prefix) as its diffusers key: [`unet_key`]
/// backwards, for a UNet with `layers_per_block` resnets per down block. Upsamplers are told
/// apart from attentions by their `conv.` (LDM puts a block's upsampler at `.1.conv` without
/// attention and `.2.conv` with it). `None` for names diffusers has no key for.
pub fn unet_key_to_diffusers(key: &str, layers_per_block: usize) -> Option<String> {
    let l = layers_per_block;
    for (ldm, diff) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ] {
        if let Some(rest) = key.strip_prefix(ldm) {
            return Some(format!("{diff}{rest}"));
        }
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (i, rest) = index(rest)?;
        let (b, j) = ((i.checked_sub(1)?) / (l + 1), (i - 1) % (l + 1));
        let (slot, rest) = index(rest)?;
        return match (slot, j == l) {
            (0, true) => rest.strip_prefix("op.").map(|r| format!("down_blocks.{b}.downsamplers.0.conv.{r}")),
            (0, false) => Some(format!("down_blocks.{b}.resnets.{j}.{}", unet_resnet_to_diffusers(rest)?)),
            (1, false) => Some(format!("down_blocks.{b}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (slot, rest) = index(rest)?;
        return match slot {
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", slot / 2, unet_resnet_to_diffusers(rest)?)),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (i, rest) = index(rest)?;
        let (b, j) = (i / (l + 1), i % (l + 1));
        let (slot, rest) = index(rest)?;
        if slot > 0
            && let Some(r) = rest.strip_prefix("conv.")
        {
            return (j == l).then(|| format!("up_blocks.{b}.upsamplers.0.conv.{r}"));
        }
        return match slot {
            0 => Some(format!("up_blocks.{b}.resnets.{j}.{}", unet_resnet_to_diffusers(rest)?)),
            1 => Some(format!("up_blocks.{b}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    None
}

/// A diffusers VAE key as its single-file name (without the model prefix);
/// `up_blocks` is the decoder's number of up blocks (numbered in reverse in LDM).
pub fn vae_key(key: &str, up_blocks: usize) -> Option<String> {
    let renames = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")];
    for (from, to) in renames {
        if let Some(rest) = key.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    for same in [
        "encoder.conv_in.",
        "encoder.conv_out.",
        "decoder.conv_in.",
        "decoder.conv_out.",
        "quant_conv.",
        "post_quant_conv.",
    ] {
        if key.starts_with(same) {
            return Some(key.to_string());
        }
    }
    let shortcut = |s: &str| s.replacen("conv_shortcut", "nin_shortcut", 1);
    let (part, rest) = key.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    if let Some(rest) = rest.strip_prefix("down_blocks.") {
        let (i, rest) = index(rest)?;
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, rest) = index(rest)?;
            return Some(format!("{part}.down.{i}.block.{j}.{}", shortcut(rest)));
        }
        return rest.strip_prefix("downsamplers.0.conv.").map(|r| format!("{part}.down.{i}.downsample.conv.{r}"));
    }
    if let Some(rest) = rest.strip_prefix("up_blocks.") {
        let (i, rest) = index(rest)?;
        let ldm = up_blocks.checked_sub(i + 1)?;
        if let Some(rest) = rest.strip_prefix("resnets.") {
            let (j, rest) = index(rest)?;
            return Some(format!("{part}.up.{ldm}.block.{j}.{}", shortcut(rest)));
        }
        return rest.strip_prefix("upsamplers.0.conv.").map(|r| format!("{part}.up.{ldm}.upsample.conv.{r}"));
    }
    if let Some(rest) = rest.strip_prefix("mid_block.resnets.") {
        let (j, rest) = index(rest)?;
        return Some(format!("{part}.mid.block_{}.{}", j + 1, shortcut(rest)));
    }
    if let Some(rest) = rest.strip_prefix("mid_block.attentions.0.") {
        // Current names, then the deprecated ones older diffusers files carry.
        let (head, tail) = rest.rsplit_once('.')?;
        let ldm = match head {
            "group_norm" => "norm",
            "to_q" | "query" => "q",
            "to_k" | "key" => "k",
            "to_v" | "value" => "v",
            "to_out.0" | "proj_attn" => "proj_out",
            _ => return None,
        };
        return Some(format!("{part}.mid.attn_1.{ldm}.{tail}"));
    }
    None
}

/// A diffusers text-encoder key as its single-file name (without the model
/// prefix). transformers 5 writes the names without `text_model.`.
pub fn clip_key(key: &str) -> Option<String> {
    if key.ends_with("position_ids") {
        return None;
    }
    if key.starts_with("text_model.") {
        return Some(key.to_string());
    }
    ["embeddings.", "encoder.", "final_layer_norm."]
        .iter()
        .any(|p| key.starts_with(p))
        .then(|| format!("text_model.{key}"))
}

/// open_clip's text-tower names (SD 2.x's `cond_stage_model.model.`, SDXL's `conditioner.embedders.1.model.`, the
/// refiner's `conditioner.embedders.0.model.`: open_clip's `CLIP` with its visual tower deleted) as transformers'
/// `CLIPTextModelWithProjection` names, relative to the model's prefix, each with how it takes its values. ComfyUI's
/// `transformers_convert` and `clip_text_transformers_convert` (comfy/utils.py, Comfy-Org/ComfyUI @
/// a125cd84b054a57729b5eecab930ca9408719832): `attn.in_proj_{weight,bias}` (q, k and v stacked along the first
/// axis) becomes `self_attn.{q,k,v}_proj`, the `[width, proj]` matrix `text_projection` (used as `x @ P`) becomes
/// the Linear `text_projection.weight` `[proj, width]`. `None` for other names (`logit_scale`).
pub fn open_clip_text_key(key: &str) -> Option<Vec<(String, View)>> {
    const TOP: [(&str, &str); 5] = [
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
        ("text_projection.weight", "text_projection.weight"),
    ];
    const RESBLOCK: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
        ("attn.out_proj.", "self_attn.out_proj."),
    ];
    if let Some((_, to)) = TOP.iter().find(|(from, _)| *from == key) {
        return Some(vec![(to.to_string(), View::Whole)]);
    }
    if key == "text_projection" {
        return Some(vec![("text_projection.weight".into(), View::Transposed)]);
    }
    let (i, rest) = index(key.strip_prefix("transformer.resblocks.")?)?;
    let layer = format!("text_model.encoder.layers.{i}.");
    if let Some(tail) = rest.strip_prefix("attn.in_proj_") {
        let kind = ["weight", "bias"].into_iter().find(|k| *k == tail)?;
        let parts = ["q_proj", "k_proj", "v_proj"].iter().enumerate();
        return Some(
            parts.map(|(index, p)| (format!("{layer}self_attn.{p}.{kind}"), View::Split { index, parts: 3 })).collect(),
        );
    }
    RESBLOCK
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|tail| vec![(format!("{layer}{to}{tail}"), View::Whole)]))
}

/// The first existing file among a component's usual weight file names.
fn component_file(dir: &Path, component: &str, names: &[&str]) -> Option<std::path::PathBuf> {
    names.iter().map(|n| dir.join(component).join(n)).find(|p| p.is_file())
}

/// Opens a diffusers folder (`unet/`, `vae/`, `text_encoder/`) under
/// single-file names. Components that are absent are simply missing; the
/// model that needs one reports the missing key.
pub fn open_diffusers_folder(dir: &Path) -> Result<WeightSource, CheckpointError> {
    let unet = component_file(
        dir,
        "unet",
        &["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"],
    );
    let vae = component_file(
        dir,
        "vae",
        &["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"],
    );
    let clip = component_file(dir, "text_encoder", &["model.safetensors", "model.fp16.safetensors"]);
    if unet.is_none() && vae.is_none() && clip.is_none() {
        return Err(CheckpointError {
            file: dir.to_path_buf(),
            key: None,
            message: "no unet/, vae/ or text_encoder/ .safetensors weights in this folder (is it a diffusers model folder? .bin weights are not read: convert them to safetensors)".into(),
        });
    }
    let mut files = Vec::new();
    let mut table = Vec::new();
    if let Some(p) = unet {
        let st = SafeTensors::open(&p)?;
        let layout = UnetLayout::from_keys(st.names());
        let fi = files.len();
        for k in st.names() {
            if let Some(n) = unet_key(k, &layout) {
                table.push((format!("{UNET_PREFIX}{n}"), fi, k.to_string(), None));
            }
        }
        files.push(Arc::new(st));
    }
    if let Some(p) = vae {
        let st = SafeTensors::open(&p)?;
        table.extend(diffusers_vae_table(&st, files.len()));
        files.push(Arc::new(st));
    }
    if let Some(p) = clip {
        let st = SafeTensors::open(&p)?;
        let fi = files.len();
        for k in st.names() {
            if let Some(n) = clip_key(k) {
                table.push((format!("{CLIP_PREFIX}{n}"), fi, k.to_string(), None));
            }
        }
        files.push(Arc::new(st));
    }
    Ok(WeightSource::from_parts(files, table))
}

/// The `WeightSource::from_parts` table of a diffusers `AutoencoderKL` file (file index
/// `fi`): each key under `first_stage_model.` + its LDM name, the mid-attention
/// projections (diffusers' `[C, C]` linears) seen as LDM's `[C, C, 1, 1]` convs.
fn diffusers_vae_table(st: &SafeTensors, fi: usize) -> Vec<(String, usize, String, Option<Vec<usize>>)> {
    let up_blocks = st
        .names()
        .filter_map(|k| k.strip_prefix("decoder.up_blocks.").and_then(index).map(|(i, _)| i + 1))
        .max()
        .unwrap_or(0);
    let mut table = Vec::new();
    for k in st.names() {
        if let Some(n) = vae_key(k, up_blocks) {
            // LDM stores the mid-attention projections as 1x1 convs.
            let conv_shape = match st.info(k) {
                Some(i) if n.contains(".mid.attn_1.") && i.shape.len() == 2 => Some(vec![i.shape[0], i.shape[1], 1, 1]),
                _ => None,
            };
            table.push((format!("{VAE_PREFIX}{n}"), fi, k.to_string(), conv_shape));
        }
    }
    table
}

/// The layout a standalone VAE file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    /// LDM names without a prefix: `encoder.*`, `decoder.*`, `quant_conv.*`,
    /// `post_quant_conv.*` (vae-ft-mse-840000-ema-pruned and most downloads).
    Ldm,
    /// diffusers' `AutoencoderKL` names (`encoder.down_blocks.*`, `decoder.up_blocks.*`).
    Diffusers,
    /// A checkpoint's `first_stage_model.*` part, prefix and all.
    CheckpointPart,
}

/// Opens a standalone VAE (what ComfyUI's VAELoader reads from `models/vae`): a
/// `.safetensors` file, or a PyTorch zip archive (`.pt`, `.pth`, `.ckpt`, any
/// extension) through the restricted reader of [`super::pth`], in the LDM layout or
/// diffusers' (a diffusers `vae/` folder is read from its weights file). Its weights are
/// seen as a checkpoint's VAE, under [`VAE_PREFIX`] + LDM names, so what loads a
/// checkpoint's VAE loads it. Also returns the layout and the file read. A file that
/// is no SD VAE is refused naming the keys expected and some it has.
pub fn open_vae(path: &Path) -> Result<(WeightSource, VaeLayout, std::path::PathBuf), CheckpointError> {
    let file = super::tensor_file::component_weights(path, "VAE")?;
    let st = super::tensor_file::open_tensors(&file)?;
    let has = |k: &str| st.info(k).is_some();
    let (layout, table): (VaeLayout, Vec<_>) = if has("first_stage_model.encoder.conv_in.weight") {
        let table = st.names().map(|k| (k.to_string(), 0, k.to_string(), None)).collect();
        (VaeLayout::CheckpointPart, table)
    } else if st.names().any(|k| k.starts_with("decoder.up_blocks.") || k.starts_with("encoder.down_blocks.")) {
        (VaeLayout::Diffusers, diffusers_vae_table(&st, 0))
    } else if has("encoder.conv_in.weight") || has("decoder.conv_in.weight") {
        let table = st.names().map(|k| (format!("{VAE_PREFIX}{k}"), 0, k.to_string(), None)).collect();
        (VaeLayout::Ldm, table)
    } else {
        let some: Vec<&str> = st.names().take(3).collect();
        let what = if st.names().any(|k| k.starts_with(UNET_PREFIX)) {
            "a checkpoint without a VAE (model.diffusion_model.* but no first_stage_model.*)".to_string()
        } else if some.is_empty() {
            "no tensors".to_string()
        } else {
            format!("keys such as {}", some.join(", "))
        };
        return Err(CheckpointError {
            file,
            key: None,
            message: format!(
                "not an SD VAE: expected the LDM layout (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*, as vae-ft-mse-840000-ema-pruned.safetensors) or diffusers' AutoencoderKL (encoder.down_blocks.*, decoder.up_blocks.*), found {what}"
            ),
        });
    };
    Ok((WeightSource::from_parts(vec![Arc::new(st)], table), layout, file))
}

/// Opens a checkpoint: a `.safetensors` single file, or a diffusers folder.
/// What sdgraph does not run yet (SD 2.x, SDXL, ...) is refused with an error naming the family
/// ([`super::family`]).
pub fn open_checkpoint(path: &Path) -> Result<WeightSource, CheckpointError> {
    if path.is_dir() {
        super::family::check_diffusers_folder(path)?;
        open_diffusers_folder(path)
    } else {
        let src = WeightSource::single_file(path)?.with_clip_text_model_level();
        super::family::check_single_file(&src, path)?;
        Ok(src)
    }
}

/// Where a ControlNet's weights are seen, under LDM's `cldm.ControlNet` names.
pub const CONTROLNET_PREFIX: &str = "control_model.";

/// A diffusers `ControlNetModel` key as its LDM name (without
/// `control_model.`): `controlnet_cond_embedding.{conv_in, blocks.j,
/// conv_out}` are `input_hint_block.{0, 2(j + 1), 2(blocks + 1)}` (the
/// Sequential has a SiLU between convs), `controlnet_down_blocks.N` is
/// `zero_convs.N.0`, `controlnet_mid_block` is `middle_block_out.0`, and the
/// rest is the UNet's encoder half ([`unet_key`]). The inverse of diffusers
/// 0.42.1 `convert_controlnet_checkpoint` (which fixes conv_out at index 14,
/// SD's); `hint_blocks` is the number of `blocks.j` in the file.
pub fn controlnet_key(key: &str, layout: &UnetLayout, hint_blocks: usize) -> Option<String> {
    if let Some(rest) = key.strip_prefix("controlnet_cond_embedding.") {
        if let Some(tail) = rest.strip_prefix("conv_in.") {
            return Some(format!("input_hint_block.0.{tail}"));
        }
        if let Some(tail) = rest.strip_prefix("conv_out.") {
            return Some(format!("input_hint_block.{}.{tail}", 2 * (hint_blocks + 1)));
        }
        let (j, tail) = index(rest.strip_prefix("blocks.")?)?;
        return Some(format!("input_hint_block.{}.{tail}", 2 * (j + 1)));
    }
    if let Some(rest) = key.strip_prefix("controlnet_down_blocks.") {
        let (n, tail) = index(rest)?;
        return Some(format!("zero_convs.{n}.0.{tail}"));
    }
    if let Some(tail) = key.strip_prefix("controlnet_mid_block.") {
        return Some(format!("middle_block_out.0.{tail}"));
    }
    if key.starts_with("up_blocks.") || key.starts_with("conv_out.") || key.starts_with("conv_norm_out.") {
        return None;
    }
    unet_key(key, layout)
}

/// The layout a ControlNet file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlNetLayout {
    /// `control_model.` + LDM names (ComfyUI's and A1111's downloads).
    SingleFile,
    /// LDM names without the prefix (lllyasviel's `.pth` converted as is).
    SingleFileUnprefixed,
    /// diffusers' `ControlNetModel` names (a `save_pretrained` folder or its weights file).
    Diffusers,
    /// A T2I-adapter (ComfyUI loads these through ControlNetLoader too), seen under ComfyUI's names
    /// without a prefix (`conv_in`, `body.N...`; see `models::t2i_adapter`); `diffusers`: renamed from
    /// diffusers' `T2IAdapter` names, whose ResBlocks per level were `nums_rb`.
    T2iAdapter { diffusers: bool, nums_rb: Option<usize> },
}

/// A diffusers `T2IAdapter` (full adapter) key as ComfyUI's `load_t2i_adapter` renames it
/// (`comfy/controlnet.py`, Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832):
/// `adapter.body.{i}.resnets.{j}.` -> `body.{i * nums_rb + j}.`, `adapter.body.{i}.` (its `in_conv`)
/// -> `body.{i * nums_rb}.`, `adapter.` -> ``. ComfyUI writes `nums_rb` as 2 and `i` below 4; here both
/// are what the file holds.
pub fn t2i_adapter_key(key: &str, nums_rb: usize) -> Option<String> {
    let rest = key.strip_prefix("adapter.")?;
    let Some(body) = rest.strip_prefix("body.") else { return Some(rest.to_string()) };
    let (i, tail) = index(body)?;
    match tail.strip_prefix("resnets.").and_then(index) {
        Some((j, tail)) => Some(format!("body.{}.{tail}", i * nums_rb + j)),
        None => Some(format!("body.{}.{tail}", i * nums_rb)),
    }
}

/// The T2I-adapter layout of a file's keys (see [`ControlNetLayout::T2iAdapter`]) and its table, or
/// `None` when the keys are no T2I-adapter's. diffusers' light adapters are refused by name (ComfyUI
/// maps them onto the full adapter's names and fails to load them).
#[allow(clippy::type_complexity)]
fn t2i_adapter_table(
    st: &SafeTensors,
) -> Result<Option<(ControlNetLayout, Vec<(String, usize, String, Option<Vec<usize>>)>)>, String> {
    let has = |k: &str| st.info(k).is_some();
    if has("adapter.body.0.resnets.0.block1.weight") {
        if has("adapter.body.0.out_conv.weight") {
            return Err("a diffusers light T2I-adapter (adapter.body.0.out_conv): not supported (ComfyUI does not load these either); the original layout (body.0.in_conv, body.0.body.0.block1, ...) is".into());
        }
        let nums_rb = (0..).take_while(|j| has(&format!("adapter.body.0.resnets.{j}.block1.weight"))).count();
        let table =
            st.names().filter_map(|k| t2i_adapter_key(k, nums_rb).map(|n| (n, 0, k.to_string(), None))).collect();
        return Ok(Some((ControlNetLayout::T2iAdapter { diffusers: true, nums_rb: Some(nums_rb) }, table)));
    }
    // ComfyUI's tests (`conv_in.weight` alone would also take a diffusers UNet for an adapter).
    if (has("conv_in.weight") && has("body.0.block1.weight")) || has("body.0.in_conv.weight") {
        let table = st.names().map(|k| (k.to_string(), 0, k.to_string(), None)).collect();
        return Ok(Some((ControlNetLayout::T2iAdapter { diffusers: false, nums_rb: None }, table)));
    }
    Ok(None)
}

/// Opens a ControlNet or a T2I-adapter: a `.safetensors` file or a PyTorch zip
/// (`.pth`, read without running code) in any layout, or a diffusers folder
/// holding `diffusion_pytorch_model(.fp16).safetensors`. A ControlNet's weights
/// are seen under `control_model.` + LDM names, a T2I-adapter's under ComfyUI's
/// (see [`ControlNetLayout::T2iAdapter`]). Also returns the layout and the
/// weights file actually read.
pub fn open_controlnet(path: &Path) -> Result<(WeightSource, ControlNetLayout, std::path::PathBuf), CheckpointError> {
    // A diffusers ControlNet's config sits beside its weights: in the folder given, or beside a
    // `diffusion_pytorch_model*` file given by itself.
    let diffusers_file =
        path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("diffusion_pytorch_model"));
    if path.is_dir() {
        super::family::check_controlnet_config(path)?;
    } else if diffusers_file && let Some(dir) = path.parent() {
        super::family::check_controlnet_config(dir)?;
    }
    let file = super::tensor_file::component_weights(path, "ControlNet")?;
    // safetensors, or a PyTorch zip (lllyasviel's control_sd15_*.pth, TencentARC's t2iadapter_*.pth).
    let st = super::tensor_file::open_tensors(&file)?;
    let has = |k: &str| st.info(k).is_some();
    if has("control_model.zero_convs.0.0.weight") {
        return Ok((WeightSource::from_tensors(st), ControlNetLayout::SingleFile, file));
    }
    let (layout, table): (ControlNetLayout, Vec<_>) = if has("zero_convs.0.0.weight") {
        let table = st.names().map(|k| (format!("{CONTROLNET_PREFIX}{k}"), 0, k.to_string(), None)).collect();
        (ControlNetLayout::SingleFileUnprefixed, table)
    } else if has("controlnet_cond_embedding.conv_in.weight") {
        let layout = UnetLayout::from_keys(st.names());
        let hint_blocks = st
            .names()
            .filter_map(|k| k.strip_prefix("controlnet_cond_embedding.blocks.").and_then(index).map(|(j, _)| j + 1))
            .max()
            .unwrap_or(0);
        let table = st
            .names()
            .filter_map(|k| {
                controlnet_key(k, &layout, hint_blocks)
                    .map(|n| (format!("{CONTROLNET_PREFIX}{n}"), 0, k.to_string(), None))
            })
            .collect();
        (ControlNetLayout::Diffusers, table)
    } else {
        let t2i =
            t2i_adapter_table(&st).map_err(|message| CheckpointError { file: file.clone(), key: None, message })?;
        let Some(found) = t2i else {
            return Err(CheckpointError {
                file,
                key: None,
                message: "not an SD ControlNet or T2I-adapter: none of control_model.zero_convs.0.0.weight, zero_convs.0.0.weight, controlnet_cond_embedding.conv_in.weight (ControlNets), conv_in.weight, body.0.in_conv.weight or adapter.body.0.resnets.0.block1.weight (T2I-adapters) is in it (Control-LoRAs and ControlNets of other model families are not supported)".into(),
            });
        };
        found
    };
    Ok((WeightSource::from_parts(vec![Arc::new(st)], table), layout, file))
}
