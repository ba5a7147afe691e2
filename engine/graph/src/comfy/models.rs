//! Model and input file names as ComfyUI workflows hold them
//! (`v1-5-pruned-emaonly-fp16.safetensors`, `SD1.5\model.safetensors`),
//! resolved under models roots laid out with ComfyUI's folder names.

use std::path::{Path, PathBuf};

/// The ComfyUI folder a param's file names live in, by (kind, param).
const FOLDERS: &[(&str, &str, &str)] = &[
    ("CheckpointLoaderSimple", "ckpt_name", "checkpoints"),
    ("VAELoader", "vae_name", "vae"),
    ("ControlNetLoader", "control_net_name", "controlnet"),
    ("UpscaleModelLoader", "model_name", "upscale_models"),
    ("LoraLoader", "lora_name", "loras"),
    ("LoraLoaderModelOnly", "lora_name", "loras"),
    ("GLIGENLoader", "gligen_name", "gligen"),
    ("UNETLoader", "unet_name", "diffusion_models"),
    ("CLIPVisionLoader", "clip_name", "clip_vision"),
    ("LoadImage", "image", "input"),
    ("LoadImageMask", "image", "input"),
];

/// Other names ComfyUI accepts for a folder (its `folder_paths` keeps both).
const ALIASES: &[(&str, &str)] = &[("controlnet", "t2i_adapter"), ("diffusion_models", "unet")];

/// The ComfyUI folder that (kind, param) names a file in, if it names one.
pub fn folder_of(kind: &str, param: &str) -> Option<&'static str> {
    FOLDERS.iter().find(|(k, p, _)| *k == kind && *p == param).map(|(_, _, f)| *f)
}

/// Where to look for files, in order.
#[derive(Debug, Clone, Default)]
pub struct ModelRoots {
    /// Folders laid out as ComfyUI's `models/` (`checkpoints/`, `loras/`, ...;
    /// input pictures under `input/`).
    pub roots: Vec<PathBuf>,
    /// Extra folders for one ComfyUI folder name (from `extra_model_paths.yaml`).
    pub extra: Vec<(String, PathBuf)>,
    /// The workflow's own folder: a name is also tried relative to it.
    pub base_dir: PathBuf,
}

/// The outcome of looking a name up.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Found(PathBuf),
    /// Not found; every path tried, in order.
    Missing(Vec<PathBuf>),
}

impl ModelRoots {
    /// The folders searched for ComfyUI folder `folder`, in order.
    pub fn folders(&self, folder: &str) -> Vec<PathBuf> {
        let mut names = vec![folder];
        names.extend(ALIASES.iter().filter(|(f, _)| *f == folder).map(|(_, a)| *a));
        let mut out = Vec::new();
        for root in &self.roots {
            out.extend(names.iter().map(|n| root.join(n)));
        }
        for (name, dir) in &self.extra {
            if names.contains(&name.as_str()) {
                out.push(dir.clone());
            }
        }
        out.push(self.base_dir.clone());
        out
    }

    /// Finds `name` (as the workflow writes it, `\` or `/` between folders)
    /// in the folders of `folder`. An absolute name is taken as it is.
    pub fn resolve(&self, folder: &str, name: &str) -> Resolution {
        let rel: PathBuf = name.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
        if Path::new(name).is_absolute() {
            let p = PathBuf::from(name);
            return if p.exists() { Resolution::Found(p) } else { Resolution::Missing(vec![p]) };
        }
        // A name never climbs out of the folder it is looked up in.
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Resolution::Missing(Vec::new());
        }
        let tried: Vec<PathBuf> = self.folders(folder).into_iter().map(|d| d.join(&rel)).collect();
        match tried.iter().find(|p| p.exists()) {
            Some(p) => Resolution::Found(p.clone()),
            None => Resolution::Missing(tried),
        }
    }
}
