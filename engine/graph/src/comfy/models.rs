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

/// Where to look for files, in order: the `extra` folders marked `first`, each
/// of `roots`, the other `extra` folders, then the workflow's own folder.
#[derive(Debug, Clone, Default)]
pub struct ModelRoots {
    /// Folders laid out as ComfyUI's `models/` (`checkpoints/`, `loras/`, ...;
    /// input pictures under `input/`).
    pub roots: Vec<PathBuf>,
    /// Extra folders for one ComfyUI folder name (from `extra_model_paths.yaml`).
    pub extra: Vec<ExtraFolder>,
    /// The workflow's own folder: a name is also tried relative to it.
    pub base_dir: PathBuf,
}

/// One folder an `extra_model_paths.yaml` adds to a ComfyUI folder name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFolder {
    /// The ComfyUI folder name (`checkpoints`, `loras`, ...), legacy names mapped (`unet` -> `diffusion_models`).
    pub folder: String,
    pub path: PathBuf,
    /// From a section with `is_default: true`: searched before everything else.
    pub first: bool,
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
        let names = &names;
        let extra = |first: bool| {
            self.extra
                .iter()
                .filter(move |e| e.first == first && names.contains(&e.folder.as_str()))
                .map(|e| e.path.clone())
        };
        let mut out: Vec<PathBuf> = extra(true).collect();
        for root in &self.roots {
            out.extend(names.iter().map(|n| root.join(n)));
        }
        out.extend(extra(false));
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

/// ComfyUI's old folder names, as its `folder_paths.map_legacy` maps them.
fn map_legacy(folder: &str) -> &str {
    match folder {
        "unet" => "diffusion_models",
        "clip" => "text_encoders",
        f => f,
    }
}

/// The folders an `extra_model_paths.yaml` adds, as ComfyUI's
/// `utils/extra_config.py` reads it: any number of sections, each with an
/// optional `base_path` (a leading `~` is `home`; relative to the file's folder
/// `yaml_dir` when relative), an optional `is_default` (its folders searched
/// first), and `folder: paths` entries whose value holds one or more paths, one
/// per line (a YAML `|` block or `\n` in a quoted string), each joined to
/// `base_path` (or to `yaml_dir` when relative and there is none). Reads the
/// subset of YAML those files use: nested mappings by indentation, plain and
/// quoted scalars, `|` blocks, `#` comment lines.
pub fn read_extra_model_paths(text: &str, yaml_dir: &Path, home: Option<&Path>) -> Result<Vec<ExtraFolder>, String> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let lineno = i + 1;
        i += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let Some((key, value)) = trimmed.split_once(':') else {
            return Err(format!("line {lineno}: expected `key: value`, found {trimmed:?}"));
        };
        let (key, value) = (unquote(key.trim()), value.trim());
        if indent == 0 {
            if !value.is_empty() {
                return Err(format!("line {lineno}: a section name ({key:?}) takes an indented block, not a value"));
            }
            sections.push((key, Vec::new()));
            continue;
        }
        let Some((_, entries)) = sections.last_mut() else {
            return Err(format!("line {lineno}: {key:?} is indented but belongs to no section"));
        };
        let value = if value == "|" || value == "|-" || value == "|+" {
            // A block: the following lines indented deeper than this key.
            let mut block = Vec::new();
            while i < lines.len() {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && ind <= indent {
                    break;
                }
                block.push(l.trim());
                i += 1;
            }
            block.join("\n")
        } else {
            unquote(value)
        };
        entries.push((key, value));
    }
    let mut out = Vec::new();
    for (section, entries) in &sections {
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let first = match get("is_default") {
            None | Some("false" | "False" | "no") => false,
            Some("true" | "True" | "yes") => true,
            Some(v) => return Err(format!("section {section:?}: is_default is {v:?}, expected true or false")),
        };
        let expand = |p: &str| -> PathBuf {
            match (p.strip_prefix('~'), home) {
                (Some(rest), Some(h)) if rest.is_empty() || rest.starts_with(['/', '\\']) => {
                    h.join(rest.trim_start_matches(['/', '\\']))
                }
                _ => PathBuf::from(p),
            }
        };
        let base = get("base_path").map(|b| yaml_dir.join(expand(b)));
        for (key, value) in entries {
            if key == "base_path" || key == "is_default" {
                continue;
            }
            for p in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let p = expand(p);
                let path = match &base {
                    Some(b) => b.join(p),
                    None => yaml_dir.join(p),
                };
                out.push(ExtraFolder { folder: map_legacy(key).to_string(), path, first });
            }
        }
    }
    Ok(out)
}

/// A YAML scalar without its quotes (`\n` in double quotes is a line break).
fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1].replace("\\n", "\n").replace("\\\"", "\"")
    } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else {
        v.to_string()
    }
}
