//! ControlNetLoader and ControlNetApplyAdvanced, as ComfyUI's nodes
//! (`nodes.py` and `comfy/controlnet.py`, Comfy-Org/ComfyUI @
//! 311c01406130b2acbe8ab291043502de26cf3871), and what KSampler does with
//! the controls a conditioning carries.
//!
//! ComfyUI's semantics, kept here:
//! - ControlNetApplyAdvanced with strength 0 returns its conditionings unchanged;
//!   otherwise it appends one control (ControlNet, image, strength, start and end
//!   percent) to both, and a second ControlNet applied to its output is chained
//!   after the first (`previous_controlnet`): the residuals of every control
//!   active at a step are summed, each times its strength.
//! - A control is active while the step's sigma lies in
//!   `[percent_to_sigma(end_percent), percent_to_sigma(start_percent)]`
//!   (`ControlBase.pre_run` / `get_control`).
//! - The control image is center-cropped to the latent's aspect ratio and
//!   resized to 8x the latent size with `nearest-exact` (`common_upscale(...,
//!   self.upscale_algorithm = 'nearest-exact', "center")`), pixels in 0..1 as
//!   they are, and repeated or cut to the latent batch (`broadcast_image_to`).
//! - The ControlNet sees the same scaled input, timestep and text as the UNet
//!   (`calculate_input`, `timestep(sigma)`, `c_crossattn`).
//!
//! Differences: the `vae` input is accepted and ignored (SD 1.x/2.x ControlNets
//! work on pixels; latent-space ControlNets are not supported), and the
//! control image is embedded once per sampling run rather than each step
//! (it depends on nothing else).

use std::sync::Arc;

use gpu::ops::binary::{add_scaled, mul};
use gpu::ops::layout::concat;
use gpu::{DType, Gpu, Tensor};
use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Value};

use crate::payload::{Conditioning, ControlApplication, ControlNetHandle};
use crate::runtime;
use crate::settings::Settings;
use models::checkpoint::convert::{CONTROLNET_PREFIX, ControlNetLayout, open_controlnet};
use models::controlnet::{ControlNet, ControlNetConfig, ControlResiduals};
use models::image_ops::{Method, center_crop_to_aspect, resize};
use models::sampling::schedulers::ModelSigmas;
use models::unet::UnetConfig;
use models::unet_blocks::AttentionHeads;

/// What a ControlNet's files may say about the architecture beyond the
/// shapes: `sdgraph.unet.heads` / `sdgraph.norm_groups` in the safetensors
/// `__metadata__`, or, for the diffusers layout, `attention_head_dim` (the
/// head count in SD 1.x configs; a list per level is accepted when all equal)
/// and `norm_num_groups` in the `config.json` beside the weights.
fn apply_overrides(
    cfg: &mut ControlNetConfig,
    src: &models::checkpoint::weights::WeightSource,
    layout: ControlNetLayout,
    file: &std::path::Path,
) -> Result<(), String> {
    let num = |key: &str| -> Result<Option<usize>, String> {
        src.metadata(key)
            .map(|v| v.trim().parse().map_err(|_| format!("{}: metadata {key}={v:?} is not a number", file.display())))
            .transpose()
    };
    if let Some(h) = num("sdgraph.unet.heads")? {
        cfg.unet.heads = AttentionHeads::Count(h);
    }
    if let Some(g) = num("sdgraph.norm_groups")? {
        cfg.unet.norm.groups = g;
    }
    let config_json = file.with_file_name("config.json");
    if layout == ControlNetLayout::Diffusers && config_json.is_file() {
        let text = std::fs::read_to_string(&config_json).map_err(|e| format!("{}: {e}", config_json.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", config_json.display()))?;
        let bad =
            |key: &str| format!("{}: {key} is not a positive integer (or a list of equal ones)", config_json.display());
        let as_count = |x: &serde_json::Value| x.as_u64().filter(|&n| n > 0).map(|n| n as usize);
        match v.get("attention_head_dim") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(a)) => {
                let n: Vec<Option<usize>> = a.iter().map(as_count).collect();
                match n.first() {
                    Some(&Some(first)) if n.iter().all(|&x| x == Some(first)) => {
                        cfg.unet.heads = AttentionHeads::Count(first)
                    }
                    _ => return Err(bad("attention_head_dim")),
                }
            }
            Some(x) => cfg.unet.heads = AttentionHeads::Count(as_count(x).ok_or_else(|| bad("attention_head_dim"))?),
        }
        if let Some(x) = v.get("norm_num_groups") {
            cfg.unet.norm.groups = as_count(x).ok_or_else(|| bad("norm_num_groups"))?;
        }
    }
    Ok(())
}

/// Loads a ControlNet file (any layout, see [`open_controlnet`]) onto the GPU in `dtype`.
pub fn load_controlnet(gpu: &Gpu, path: &std::path::Path, dtype: DType) -> Result<ControlNetHandle, String> {
    let (src, layout, file) = open_controlnet(path).map_err(|e| e.to_string())?;
    let w = src.prefix(CONTROLNET_PREFIX);
    let mut cfg = ControlNetConfig::detect_from_weights(&w).map_err(|e| format!("{}: {e}", file.display()))?;
    apply_overrides(&mut cfg, &src, layout, &file)?;
    let net = ControlNet::load(gpu, &w, &cfg, dtype).map_err(|e| e.to_string())?;
    Ok(ControlNetHandle { net, path: file })
}

/// The schema, and the settings the command passed.
pub struct ControlNetLoader(NodeSchema, Settings);

impl ControlNetLoader {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "ControlNetLoader",
                "loaders",
                "Loads an SD 1.x/2.x ControlNet (.safetensors in the single-file or diffusers layout, or a diffusers folder).",
            )
            .path("control_net_name", "ControlNet file or diffusers folder, relative to the graph file's folder.")
            .output("control_net", PortType::ControlNet, "The ControlNet."),
            settings,
        )
    }
}

impl Default for ControlNetLoader {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for ControlNetLoader {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let path = ctx.resolve(inputs.str("control_net_name")?);
        let gpu = runtime::gpu()?;
        let dtype = runtime::model_dtype(gpu, self.1.dtype);
        ctx.progress.message(&format!("loading ControlNet {} ({dtype:?})", path.display()));
        let handle = load_controlnet(gpu, &path, dtype).map_err(|e| err(format!("param \"control_net_name\": {e}")))?;
        ctx.record_input_file(&handle.path);
        Ok(vec![Value::payload(handle)])
    }

    /// Size and modification time of the weights file: replacing it reloads.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(inputs.str("control_net_name").ok()?);
        let file = if path.is_dir() { path.join("diffusion_pytorch_model.safetensors") } else { path.clone() };
        let meta = std::fs::metadata(&file).ok()?;
        Some(format!("{}:{}:{:?}", file.display(), meta.len(), meta.modified().ok()))
    }
}

pub struct ControlNetApplyAdvanced(NodeSchema);

impl ControlNetApplyAdvanced {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "ControlNetApplyAdvanced",
                "conditioning/controlnet",
                "Guides sampling with a ControlNet and a control image (an edge map, a pose...).",
            )
            .input("positive", PortType::Conditioning, "The positive prompt.")
            .input("negative", PortType::Conditioning, "The negative prompt.")
            .input("control_net", PortType::ControlNet, "The ControlNet (from ControlNetLoader).")
            .input("image", PortType::Image, "The control image, e.g. from Canny; resized to the latent's size x8.")
            .optional_input("vae", PortType::Vae, "Accepted for ComfyUI compatibility; SD 1.x ControlNets need none.")
            .float("strength", 0.0, 10.0, 1.0, "How strongly the control steers (0 leaves the prompts unchanged).")
            .float("start_percent", 0.0, 1.0, 0.0, "Where in the schedule the control starts (0 = first step).")
            .float("end_percent", 0.0, 1.0, 1.0, "Where in the schedule it stops (1 = last step).")
            .output("positive", PortType::Conditioning, "The positive prompt with the control.")
            .output("negative", PortType::Conditioning, "The negative prompt with the control."),
        )
    }
}

impl Default for ControlNetApplyAdvanced {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for ControlNetApplyAdvanced {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let positive = inputs.get::<Conditioning>("positive")?;
        let negative = inputs.get::<Conditioning>("negative")?;
        let control_net = inputs.get::<ControlNetHandle>("control_net")?;
        let image = inputs.image("image")?;
        let strength = inputs.float("strength")?;
        let start_percent = inputs.float("start_percent")?;
        let end_percent = inputs.float("end_percent")?;
        let pass = |c: &Arc<Conditioning>| Value::shared(c.clone());
        if strength == 0.0 {
            // ComfyUI returns the conditionings as they are.
            return Ok(vec![pass(&positive), pass(&negative)]);
        }
        let channels = control_net.net.config.hint_channels;
        if image.channels != channels && image.channels != 1 && image.channels < channels {
            return Err(err(format!("input \"image\": {} channels, the ControlNet takes {channels}", image.channels)));
        }
        if image.batch == 0 || image.width == 0 || image.height == 0 {
            return Err(err("input \"image\": an empty image"));
        }
        // One application shared by both, so KSampler can batch the two prompts (ComfyUI shares its c_net too).
        let app = Arc::new(ControlApplication { control_net, image, strength, start_percent, end_percent });
        let with = |c: &Conditioning| {
            let mut c = c.clone();
            c.controls.push(app.clone());
            Value::payload(c)
        };
        Ok(vec![with(&positive), with(&negative)])
    }
}

/// The control image as the ControlNet's input: `[batch, channels, height,
/// width]` (NCHW, f32), center-cropped to the target aspect ratio, resized
/// with nearest-exact, its batch repeated cyclically (or cut) to `batch`; a
/// one-channel image is repeated to `channels`, extra channels (alpha) are
/// dropped.
pub fn control_hint(
    img: &Image,
    width: usize,
    height: usize,
    channels: usize,
    batch: usize,
) -> Result<Vec<f32>, String> {
    let cropped = center_crop_to_aspect(img, width, height);
    let r = resize(&cropped, width, height, Method::NearestExact)?;
    let (hw, c) = (width * height, r.channels);
    if c == 0 || r.batch == 0 || (c != 1 && c < channels) {
        return Err(format!("a control image of {c} channels for a ControlNet that takes {channels}"));
    }
    let mut out = vec![0.0; batch * channels * hw];
    for b in 0..batch {
        let src = &r.data[(b % r.batch) * hw * c..][..hw * c];
        for ch in 0..channels {
            let from = if c == 1 { 0 } else { ch };
            let dst = &mut out[(b * channels + ch) * hw..][..hw];
            for (p, d) in dst.iter_mut().enumerate() {
                *d = src[p * c + from];
            }
        }
    }
    Ok(out)
}

/// One control of a conditioning, ready for a sampling run: its embedded
/// control image and its sigma range.
pub struct PreparedControl {
    pub app: Arc<ControlApplication>,
    /// `[B, model_channels, h, w]`, and `[2B, ..]` when the two prompts are batched.
    pub hint: Tensor,
    pub hint_doubled: Option<Tensor>,
    /// Active while `sigma_end <= sigma <= sigma_start`.
    pub sigma_start: f64,
    pub sigma_end: f64,
}

/// Checks that a ControlNet fits the UNet it steers.
fn check_fits(net: &ControlNet, unet: &UnetConfig, path: &std::path::Path) -> Result<(), String> {
    let c = &net.config.unet;
    if c.block_out_channels != unet.block_out_channels
        || c.layers_per_block != unet.layers_per_block
        || c.context_dim != unet.context_dim
        || c.in_channels != unet.in_channels
    {
        return Err(format!(
            "the ControlNet {} does not fit the model: its levels {:?} x {} layers, context {}, {} latent channels; the model's {:?} x {}, context {}, {}",
            path.display(),
            c.block_out_channels,
            c.layers_per_block,
            c.context_dim,
            c.in_channels,
            unet.block_out_channels,
            unet.layers_per_block,
            unet.context_dim,
            unet.in_channels
        ));
    }
    Ok(())
}

/// Embeds the control images of `controls` for latents of `shape` (once per
/// sampling run); `doubled` also builds the `[2B]` version for a batched
/// cond + uncond call.
pub fn prepare_controls(
    gpu: &Gpu,
    unet: &UnetConfig,
    sigmas: &ModelSigmas,
    controls: &[Arc<ControlApplication>],
    shape: [usize; 4],
    doubled: bool,
) -> Result<Vec<PreparedControl>, String> {
    let [b, _, h, w] = shape;
    let mut out = Vec::with_capacity(controls.len());
    for app in controls {
        let net = &app.control_net.net;
        check_fits(net, unet, &app.control_net.path)?;
        let f = net.config.hint_downscale();
        let ch = net.config.hint_channels;
        let pixels = control_hint(&app.image, w * f, h * f, ch, b)?;
        let t = gpu.upload(&pixels, &[b, ch, h * f, w * f], DType::F32).map_err(|e| e.to_string())?;
        let hint = net.embed_hint(gpu, &t).map_err(|e| e.to_string())?;
        let hint_doubled =
            if doubled { Some(concat(gpu, &[&hint, &hint], 0).map_err(|e| e.to_string())?) } else { None };
        out.push(PreparedControl {
            app: app.clone(),
            hint,
            hint_doubled,
            sigma_start: sigmas.percent_to_sigma(app.start_percent),
            sigma_end: sigmas.percent_to_sigma(app.end_percent),
        });
    }
    Ok(out)
}

/// The summed, strength-scaled residuals of the controls active at `sigma`
/// for `x [B or 2B, C, h, w]` under `context`, or `None` when none is active.
/// `doubled` picks the `[2B]` hint embeddings.
pub fn control_residuals(
    gpu: &Gpu,
    controls: &[PreparedControl],
    x: &Tensor,
    timesteps: &[f32],
    context: &Tensor,
    sigma: f64,
    doubled: bool,
) -> Result<Option<ControlResiduals>, String> {
    let mut sum: Option<ControlResiduals> = None;
    for c in controls {
        // ComfyUI: inactive when sigma > range start or sigma < range end (compared in f32 there).
        if sigma > c.sigma_start || sigma < c.sigma_end {
            continue;
        }
        let hint = if doubled { c.hint_doubled.as_ref().unwrap_or(&c.hint) } else { &c.hint };
        let net = &c.app.control_net.net;
        let r = net
            .forward(gpu, x, timesteps, context, hint)
            .map_err(|e| format!("ControlNet {}: {e}", c.app.control_net.path.display()))?;
        let s = c.app.strength as f32;
        sum = Some(match sum {
            None => scale_residuals(gpu, &r, s).map_err(|e| e.to_string())?,
            Some(acc) => ControlResiduals {
                down: acc
                    .down
                    .iter()
                    .zip(&r.down)
                    .map(|(a, d)| add_residual(gpu, a, d, s))
                    .collect::<Result<Vec<_>, _>>()?,
                mid: add_residual(gpu, &acc.mid, &r.mid, s)?,
            },
        });
    }
    Ok(sum)
}

/// `acc + s * r`, in `acc`'s dtype (two ControlNets may differ in dtype only if the env changed between loads).
fn add_residual(gpu: &Gpu, acc: &Tensor, r: &Tensor, s: f32) -> Result<Tensor, String> {
    let r = gpu::ops::cast::cast(gpu, r, acc.dtype()).map_err(|e| e.to_string())?;
    add_scaled(gpu, acc, &r, s).map_err(|e| format!("two ControlNets' residuals do not add up: {e}"))
}

/// Every residual times `strength` (ComfyUI's `x *= self.strength`).
pub fn scale_residuals(gpu: &Gpu, r: &ControlResiduals, strength: f32) -> Result<ControlResiduals, gpu::GpuError> {
    let s = gpu.upload(&[strength], &[1], r.mid.dtype())?;
    Ok(ControlResiduals {
        down: r.down.iter().map(|d| mul(gpu, d, &s)).collect::<Result<Vec<_>, _>>()?,
        mid: mul(gpu, &r.mid, &s)?,
    })
}
