//! Which Stable Diffusion family a checkpoint belongs to, so that the loaders refuse what sdgraph
//! does not run yet (SD 2.x, SDXL, v-prediction UNets, UNets taking other than 4 input channels or 9
//! (SD 1.x inpainting: latent, mask and masked-image latent), and models that are not UNet Stable
//! Diffusion at all) with an error that names the family and why, instead of loading
//! it as SD 1.x and making a wrong picture or failing later with a shape error.
//!
//! The signs, as the files carry them:
//! - diffusers folders: `model_index.json` (`_class_name`, a `text_encoder_2` component),
//!   `unet/config.json` (`addition_embed_type`, `cross_attention_dim`, `use_linear_projection`,
//!   `in_channels`), `text_encoder/config.json` (`hidden_act`, `projection_dim`),
//!   `scheduler/scheduler_config.json` (`prediction_type`), a `text_encoder_2/` folder;
//! - single files: SDXL's `conditioner.embedders.*` and `label_emb`, SD 2.x's OpenCLIP text
//!   encoder (`cond_stage_model.model.*`), the UNet's context width (the cross-attention `to_k`
//!   input: 768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL), linear `proj_in` (SD 2.x),
//!   `input_blocks.0.0`'s input channels (4, or 9 for inpainting; anything else refused), and the key
//!   prefixes of SD3 and Flux.

use std::path::Path;

use serde_json::Value;

use super::safetensors::CheckpointError;
use super::weights::WeightSource;

/// What sdgraph runs: SD 1.x UNets predicting noise, with 4 latent channels.
const SD1: &str = "sdgraph runs SD 1.x checkpoints only for now";

/// The UNet input widths sdgraph runs: the latent alone (4), or ComfyUI's inpainting models' latent, mask and
/// masked-image latent (4 + 1 + 4 = 9; `supported_models_base.inpaint_model`, in_channels > 4).
pub const UNET_IN_CHANNELS: [usize; 2] = [4, 9];

/// What a UNet with `c` input channels is, when sdgraph does not run it.
fn other_in_channels(c: u64) -> Option<&'static str> {
    (!UNET_IN_CHANNELS.iter().any(|&k| k as u64 == c))
        .then_some("a special UNet (sdgraph runs 4 input channels, or 9 for SD 1.x inpainting)")
}

/// `Err` naming the family when the diffusers folder `dir` holds anything but an SD 1.x
/// eps-prediction model; `Ok` when nothing says so.
pub fn check_diffusers_folder(dir: &Path) -> Result<(), CheckpointError> {
    let json = |rel: &str| -> Option<Value> {
        let text = std::fs::read_to_string(dir.join(rel)).ok()?;
        serde_json::from_str(&text).ok()
    };
    let refuse = |family: &str, why: Vec<String>| CheckpointError {
        file: dir.to_path_buf(),
        key: None,
        message: format!("this is {family} ({}): not supported yet; {SD1}", why.join(", ")),
    };
    let index = json("model_index.json");
    let unet = json("unet/config.json");
    let text = json("text_encoder/config.json");
    let scheduler = json("scheduler/scheduler_config.json");
    let str_of = |v: &Option<Value>, k: &str| v.as_ref().and_then(|v| v[k].as_str()).map(str::to_string);
    let num_of = |v: &Option<Value>, k: &str| v.as_ref().and_then(|v| v[k].as_u64());

    let mut sdxl = Vec::new();
    if dir.join("text_encoder_2").is_dir() || index.as_ref().is_some_and(|v| !v["text_encoder_2"].is_null()) {
        sdxl.push("a second text encoder, text_encoder_2".to_string());
    }
    if let Some(t) = str_of(&unet, "addition_embed_type").filter(|t| t == "text_time") {
        sdxl.push(format!("unet addition_embed_type {t}"));
    }
    if let Some(c) = str_of(&index, "_class_name").filter(|c| c.contains("XL")) {
        sdxl.push(format!("model_index _class_name {c}"));
    }
    if num_of(&unet, "cross_attention_dim") == Some(2048) {
        sdxl.push("unet cross_attention_dim 2048".into());
    }
    if !sdxl.is_empty() {
        return Err(refuse("an SDXL model", sdxl));
    }

    let mut sd2 = Vec::new();
    if let Some(d) = num_of(&unet, "cross_attention_dim").filter(|&d| d == 1024) {
        sd2.push(format!("unet cross_attention_dim {d}"));
    }
    if unet.as_ref().is_some_and(|v| v["use_linear_projection"].as_bool() == Some(true)) {
        sd2.push("unet use_linear_projection true".into());
    }
    if let Some(act) = str_of(&text, "hidden_act").filter(|a| a != "quick_gelu") {
        sd2.push(format!("text_encoder hidden_act {act}"));
    }
    if let Some(p) = num_of(&text, "projection_dim").filter(|&p| p == 1024) {
        sd2.push(format!("text_encoder projection_dim {p}"));
    }
    if !sd2.is_empty() {
        return Err(refuse("an SD 2.x model", sd2));
    }

    if let Some((c, family)) = num_of(&unet, "in_channels").and_then(|c| Some((c, other_in_channels(c)?))) {
        return Err(refuse(family, vec![format!("unet in_channels {c}")]));
    }
    if let Some(p) = str_of(&scheduler, "prediction_type").filter(|p| p != "epsilon") {
        return Err(refuse(
            "a v-prediction (or other non-epsilon) model",
            vec![format!("scheduler prediction_type {p}")],
        ));
    }
    Ok(())
}

/// `Err` naming the family when the single-file checkpoint `src` (canonical names as stored)
/// is anything but an SD 1.x eps-prediction model; `Ok` when nothing says so.
pub fn check_single_file(src: &WeightSource, path: &Path) -> Result<(), CheckpointError> {
    let refuse = |family: &str, why: String| CheckpointError {
        file: path.to_path_buf(),
        key: None,
        message: format!("this is {family} ({why}): not supported yet; {SD1}"),
    };
    let any = |prefix: &str| src.names().any(|n| n.starts_with(prefix));
    if any("model.diffusion_model.joint_blocks.") || any("joint_blocks.") {
        return Err(refuse("an SD3 model, not a UNet Stable Diffusion model", "joint_blocks".into()));
    }
    if any("double_blocks.") || any("model.diffusion_model.double_blocks.") {
        return Err(refuse("a Flux model, not a UNet Stable Diffusion model", "double_blocks".into()));
    }
    if any("conditioner.embedders.") {
        return Err(refuse("an SDXL model", "conditioner.embedders: two text encoders".into()));
    }
    if any("model.diffusion_model.label_emb.") {
        return Err(refuse("an SDXL model", "model.diffusion_model.label_emb: size conditioning".into()));
    }
    if any("cond_stage_model.model.") {
        return Err(refuse("an SD 2.x model", "cond_stage_model.model: the OpenCLIP text encoder".into()));
    }
    let weights = src.prefix("");
    let shape = |name: &str| weights.shape(name).ok();
    // The first cross-attention's key projection reads the text context: [inner, context width].
    let to_k = src.names().find(|n| n.starts_with("model.diffusion_model.") && n.ends_with(".attn2.to_k.weight"));
    // Only the widths of known other families: small SD 1.x models (the demo's, tests') have their own.
    if let Some(dim) = to_k.and_then(shape).and_then(|s| s.get(1).copied()) {
        let family = match dim {
            1024 => Some("an SD 2.x model"),
            2048 => Some("an SDXL model"),
            _ => None,
        };
        if let Some(family) = family {
            return Err(refuse(family, format!("the UNet's text context is {dim} wide, SD 1.x's 768")));
        }
    }
    if let Some(s) = shape("model.diffusion_model.input_blocks.1.1.proj_in.weight").filter(|s| s.len() == 2) {
        return Err(refuse("an SD 2.x model", format!("linear proj_in {s:?}")));
    }
    if let Some(c) = shape("model.diffusion_model.input_blocks.0.0.weight").and_then(|s| s.get(1).copied())
        && let Some(family) = other_in_channels(c as u64)
    {
        return Err(refuse(family, format!("{c} input channels")));
    }
    Ok(())
}

/// `Err` when a diffusers ControlNet's `config.json` in `dir` says something sdgraph would
/// silently ignore: an SDXL ControlNet (`addition_embed_type` text_time, a 2048-wide context),
/// global pooling of the control (`global_pool_conditions`, shuffle ControlNets), a BGR control
/// image, or class conditioning. `Ok` without a config.
pub fn check_controlnet_config(dir: &Path) -> Result<(), CheckpointError> {
    let path = dir.join("config.json");
    let Some(cfg) = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) else {
        return Ok(());
    };
    let refuse = |what: String| CheckpointError {
        file: path.clone(),
        key: None,
        message: format!("this ControlNet {what}: not supported yet; {SD1} and their ControlNets"),
    };
    if cfg["addition_embed_type"].as_str() == Some("text_time") || cfg["cross_attention_dim"].as_u64() == Some(2048) {
        return Err(refuse("is for SDXL (addition_embed_type text_time or cross_attention_dim 2048)".into()));
    }
    if cfg["global_pool_conditions"].as_bool() == Some(true) {
        return Err(refuse("pools its residuals globally (global_pool_conditions true)".into()));
    }
    if let Some(order) = cfg["controlnet_conditioning_channel_order"].as_str().filter(|o| *o != "rgb") {
        return Err(refuse(format!("takes its control image as {order} (controlnet_conditioning_channel_order)")));
    }
    if let Some(c) = cfg["class_embed_type"].as_str() {
        return Err(refuse(format!("has class conditioning (class_embed_type {c})")));
    }
    Ok(())
}
