//! What the server tells clients about itself, in ComfyUI's shapes: `/object_info` (the node kinds),
//! `/system_stats`, the model folders' files.

use std::path::Path;

use graph::{NodeSchema, ParamKind, PortType, Registry};
use serde_json::{Value as Json, json};

use super::prepare::ServeCtx;

/// ComfyUI's model folder names that `/models/{folder}` lists.
pub const FOLDERS: &[&str] = &[
    "checkpoints",
    "loras",
    "vae",
    "controlnet",
    "upscale_models",
    "embeddings",
    "diffusion_models",
    "gligen",
    "clip_vision",
];

/// The extensions ComfyUI lists as model files (`folder_paths.supported_pt_extensions`).
const MODEL_EXTENSIONS: &[&str] = &["ckpt", "pt", "pt2", "bin", "pth", "safetensors", "pkl", "sft"];

/// ComfyUI's name for a port type.
fn comfy_type(t: PortType) -> &'static str {
    match t {
        PortType::Model => "MODEL",
        PortType::Clip => "CLIP",
        PortType::Vae => "VAE",
        PortType::Conditioning => "CONDITIONING",
        PortType::Latent => "LATENT",
        PortType::Image => "IMAGE",
        PortType::Mask => "MASK",
        PortType::ControlNet => "CONTROL_NET",
        PortType::UpscaleModel => "UPSCALE_MODEL",
        PortType::Sampler => "SAMPLER",
        PortType::Sigmas => "SIGMAS",
        PortType::Guider => "GUIDER",
        PortType::Noise => "NOISE",
        PortType::Gligen => "GLIGEN",
        PortType::Int => "INT",
        PortType::Float => "FLOAT",
        PortType::String => "STRING",
        PortType::Bool => "BOOLEAN",
    }
}

/// The files of ComfyUI folder `folder` in every place it is looked up, as the names a prompt gives
/// (relative, `/`-separated), sorted, without repeats.
pub fn model_files(ctx: &ServeCtx, folder: &str) -> Vec<String> {
    let roots = graph::comfy::ModelRoots {
        roots: ctx.models.dirs.clone(),
        extra: ctx.models.extra.clone(),
        base_dir: ctx.base_dir.clone(),
    };
    let mut dirs = roots.folders(folder);
    // The last place is the prompt's own folder, not a models folder.
    dirs.pop();
    let mut out = Vec::new();
    for d in dirs {
        walk(&d, &d, 0, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() && depth < 8 {
            walk(root, &path, depth + 1, out);
        } else if path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| MODEL_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// One kind as ComfyUI's `/object_info` describes it: inputs (ports, then params as widgets) under
/// `required` / `optional`, outputs with their names, the category and description. A file param
/// lists the files its ComfyUI folder holds.
fn kind_info(ctx: &ServeCtx, s: &NodeSchema) -> Json {
    let mut required = serde_json::Map::new();
    let mut optional = serde_json::Map::new();
    let (mut req_order, mut opt_order) = (Vec::new(), Vec::new());
    for i in &s.inputs {
        let entry = json!([comfy_type(i.ty), { "tooltip": i.doc }]);
        if i.required {
            required.insert(i.name.clone(), entry);
            req_order.push(i.name.clone());
        } else {
            optional.insert(i.name.clone(), entry);
            opt_order.push(i.name.clone());
        }
    }
    for p in &s.params {
        let mut opts = serde_json::Map::new();
        opts.insert("tooltip".into(), p.doc.clone().into());
        if let Some(d) = &p.default {
            opts.insert("default".into(), serde_json::to_value(d).unwrap_or(Json::Null));
        }
        let ty: Json = match &p.kind {
            ParamKind::Int { min, max } => {
                opts.insert("min".into(), json!(*min as f64));
                opts.insert("max".into(), json!(*max as f64));
                "INT".into()
            }
            ParamKind::Float { min, max } => {
                opts.insert("min".into(), json!(min));
                opts.insert("max".into(), json!(max));
                "FLOAT".into()
            }
            ParamKind::Bool => "BOOLEAN".into(),
            ParamKind::String { multiline } => {
                opts.insert("multiline".into(), json!(multiline));
                "STRING".into()
            }
            ParamKind::Enum { values } => json!(values),
            ParamKind::Path => match graph::comfy::models::folder_of(&s.kind, &p.name) {
                Some(folder) => json!(model_files(ctx, folder)),
                None => "STRING".into(),
            },
        };
        // Every param has a value when the node runs (its default otherwise): ComfyUI's required widgets.
        required.insert(p.name.clone(), json!([ty, opts]));
        req_order.push(p.name.clone());
    }
    json!({
        "input": { "required": required, "optional": optional },
        "input_order": { "required": req_order, "optional": opt_order },
        "output": s.outputs.iter().map(|o| comfy_type(o.ty)).collect::<Vec<_>>(),
        "output_is_list": s.outputs.iter().map(|_| false).collect::<Vec<_>>(),
        "output_name": s.outputs.iter().map(|o| o.name.to_uppercase()).collect::<Vec<_>>(),
        "output_tooltips": s.outputs.iter().map(|o| o.doc.clone()).collect::<Vec<_>>(),
        "name": s.kind,
        "display_name": s.kind,
        "description": s.doc,
        "category": s.category,
        "output_node": s.output_node,
        "python_module": if s.source == "builtin" { "nodes".to_string() } else { s.source.clone() },
    })
}

/// `/object_info`: every kind of `registry`.
pub fn object_info(ctx: &ServeCtx, registry: &Registry) -> Json {
    let mut out = serde_json::Map::new();
    for name in registry.names() {
        if let Some(k) = registry.get(name) {
            out.insert(name.to_string(), kind_info(ctx, k.schema()));
        }
    }
    Json::Object(out)
}

/// Total and free memory in bytes from `/proc/meminfo` (0 where there is none).
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// `/system_stats`: the machine and the GPU adapter (opened on first use).
pub fn system_stats() -> Json {
    let (ram_total, ram_free) = memory();
    let devices: Vec<Json> = match gpu::device::shared() {
        Ok(g) => vec![json!({
            "name": g.info.name,
            "type": g.info.backend,
            "index": 0,
            "vram_total": g.info.max_buffer_size,
            "vram_free": g.info.max_buffer_size,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        })],
        Err(_) => Vec::new(),
    };
    json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": format!("sdgraph {}", env!("CARGO_PKG_VERSION")),
            "python_version": "",
            "pytorch_version": "",
            "embedded_python": false,
            "argv": std::env::args().collect::<Vec<_>>(),
        },
        "devices": devices,
    })
}
