//! ControlNetLoader and ControlNetApplyAdvanced, as ComfyUI's nodes
//! (`nodes.py` and `comfy/controlnet.py`, Comfy-Org/ComfyUI @
//! 311c01406130b2acbe8ab291043502de26cf3871). What KSampler does with the
//! controls a conditioning carries is [`models::sampling::controls`].
//!
//! ComfyUI's semantics, kept here: ControlNetApplyAdvanced with strength 0
//! returns its conditionings unchanged; otherwise it appends one control
//! (ControlNet, image, strength, start and end percent) to both, and a second
//! ControlNet applied to its output is chained after the first
//! (`previous_controlnet`). The ControlNet sees the same scaled input, timestep
//! and text as the UNet (`calculate_input`, `timestep(sigma)`, `c_crossattn`).
//!
//! ControlNetLoader also loads T2I-adapters, as ComfyUI's `load_controlnet` falls back to
//! `load_t2i_adapter` (`models::t2i_adapter`); they apply through the same node, strength and
//! percent range, and add their features to the UNet's input blocks instead.
//!
//! Difference: the `vae` input is accepted and ignored (SD 1.x/2.x ControlNets
//! work on pixels; latent-space ControlNets are not supported).

use std::sync::Arc;

use gpu::{DType, Gpu};
use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Value};

use crate::payload::{Conditioning, ControlApplication, ControlNetHandle, VaeHandle};
use crate::runtime;
use crate::settings::Settings;
use models::checkpoint::convert::{CONTROLNET_PREFIX, ControlNetLayout, open_controlnet};
use models::controlnet::{ControlNet, ControlNetConfig};
use models::sampling::controls::ControlModel;
use models::t2i_adapter::{T2iAdapter, T2iAdapterConfig};
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
    if layout == ControlNetLayout::Diffusers {
        let counts = crate::checkpoint_loader::DiffusersCounts::beside(file)?;
        if let Some(h) = counts.heads {
            cfg.unet.heads = AttentionHeads::Count(h);
        }
        if let Some(g) = counts.norm_groups {
            cfg.unet.norm.groups = g;
        }
    }
    Ok(())
}

/// Loads a ControlNet or T2I-adapter file (any layout, see [`open_controlnet`]) onto the GPU in `dtype`.
pub fn load_controlnet(gpu: &Gpu, path: &std::path::Path, dtype: DType) -> Result<ControlNetHandle, String> {
    let (src, layout, file) = open_controlnet(path).map_err(|e| e.to_string())?;
    if let ControlNetLayout::T2iAdapter { nums_rb, .. } = layout {
        // The full adapter's ResBlocks per level: what the diffusers names said, else the file's metadata.
        let meta = src.metadata("sdgraph.t2i.nums_rb");
        let nums_rb = match (nums_rb, meta) {
            (Some(n), _) => Some(n),
            (None, Some(v)) => Some(v.trim().parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                format!("{}: metadata sdgraph.t2i.nums_rb={v:?} is not a positive number", file.display())
            })?),
            (None, None) => None,
        };
        let w = src.prefix("");
        let cfg = T2iAdapterConfig::detect_from_weights(&w, nums_rb).map_err(|e| format!("{}: {e}", file.display()))?;
        let net = T2iAdapter::load(gpu, &w, &cfg, dtype).map_err(|e| e.to_string())?;
        return Ok(ControlNetHandle { net: ControlModel::T2iAdapter(net), path: file });
    }
    let w = src.prefix(CONTROLNET_PREFIX);
    let mut cfg = ControlNetConfig::detect_from_weights(&w).map_err(|e| format!("{}: {e}", file.display()))?;
    apply_overrides(&mut cfg, &src, layout, &file)?;
    let net = ControlNet::load(gpu, &w, &cfg, dtype).map_err(|e| e.to_string())?;
    Ok(ControlNetHandle { net: ControlModel::ControlNet(Box::new(net)), path: file })
}

/// The schema, and the settings the command passed.
pub struct ControlNetLoader(NodeSchema, Settings);

graph::node_fields! {
    struct ControlNetLoaderFields {
        control_net_name: String = path("ControlNet file or diffusers folder, relative to the graph file's folder."),
    }
}

impl ControlNetLoader {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "ControlNetLoader",
                "loaders",
                "Loads an SD 1.x/2.x ControlNet (.safetensors in the single-file or diffusers layout, or a diffusers folder) or T2I-adapter.",
            )
            .fields(ControlNetLoaderFields::declare)
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
        let f = ControlNetLoaderFields::read(inputs)?;
        let path = ctx.resolve(f.control_net_name.as_str());
        let gpu = runtime::gpu()?;
        let dtype = runtime::model_dtype(gpu, self.1.dtype);
        ctx.progress.message(&format!("loading ControlNet {} ({dtype:?})", path.display()));
        let handle = load_controlnet(gpu, &path, dtype).map_err(|e| err(format!("param \"control_net_name\": {e}")))?;
        ctx.record_input_file(&handle.path);
        Ok(vec![Value::payload(handle)])
    }

    /// Size and modification time of the weights file: replacing it reloads.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&ControlNetLoaderFields::read(inputs).ok()?.control_net_name);
        let file = if path.is_dir() { path.join("diffusion_pytorch_model.safetensors") } else { path.clone() };
        let meta = std::fs::metadata(&file).ok()?;
        Some(format!("{}:{}:{:?}", file.display(), meta.len(), meta.modified().ok()))
    }
}

pub struct ControlNetApplyAdvanced(NodeSchema);

graph::node_fields! {
    struct ControlNetApplyFields {
        positive: Arc<Conditioning> = input(PortType::Conditioning, "The positive prompt."),
        negative: Arc<Conditioning> = input(PortType::Conditioning, "The negative prompt."),
        control_net: Arc<ControlNetHandle> = input(PortType::ControlNet, "The ControlNet (from ControlNetLoader)."),
        image: Arc<Image> = input(
            PortType::Image,
            "The control image, e.g. from Canny; resized to the latent's size x8.",
        ),
        vae: Option<Arc<VaeHandle>> = optional_input(
            PortType::Vae,
            "Accepted for ComfyUI compatibility; SD 1.x ControlNets need none.",
        ),
        strength: f64 = float(0.0, 10.0, 1.0, "How strongly the control steers (0 leaves the prompts unchanged)."),
        start_percent: f64 = float(0.0, 1.0, 0.0, "Where in the schedule the control starts (0 = first step)."),
        end_percent: f64 = float(0.0, 1.0, 1.0, "Where in the schedule it stops (1 = last step)."),
    }
}

impl ControlNetApplyAdvanced {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "ControlNetApplyAdvanced",
                "conditioning/controlnet",
                "Guides sampling with a ControlNet and a control image (an edge map, a pose...).",
            )
            .fields(ControlNetApplyFields::declare)
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
        let f = ControlNetApplyFields::read(inputs)?;
        let positive = f.positive;
        let negative = f.negative;
        let control_net = f.control_net;
        let image = f.image;
        let strength = f.strength;
        let start_percent = f.start_percent;
        let end_percent = f.end_percent;
        let pass = |c: &Arc<Conditioning>| Value::shared(c.clone());
        if strength == 0.0 {
            // ComfyUI returns the conditionings as they are.
            return Ok(vec![pass(&positive), pass(&negative)]);
        }
        let channels = control_net.net.hint_channels();
        // A one-channel T2I-adapter takes any picture (ComfyUI averages its channels).
        if image.channels != channels && image.channels != 1 && image.channels < channels {
            let kind = control_net.net.kind_name();
            return Err(err(format!("input \"image\": {} channels, the {kind} takes {channels}", image.channels)));
        }
        if image.batch == 0 || image.width == 0 || image.height == 0 {
            return Err(err("input \"image\": an empty image"));
        }
        // One application shared by both, so KSampler can batch the two prompts (ComfyUI shares its c_net too).
        let app = Arc::new(ControlApplication { control_net, image, strength, start_percent, end_percent });
        let with = |c: &Conditioning| Value::payload(c.map_entries(|e| e.controls.push(app.clone())));
        Ok(vec![with(&positive), with(&negative)])
    }
}
