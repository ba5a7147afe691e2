//! Loading a graph for a command: from a .ron file, a ComfyUI workflow
//! (.json, API or UI format), or the graph a PNG carries (sdgraph's, or the
//! workflow ComfyUI saved in it), with `--set` overrides applied.

use std::path::{Path, PathBuf};

use graph::comfy::{self, ImportOptions, MissingFiles, ModelRoots};
use graph::{self, Graph, Registry, SetOverride};
use graph::{Diagnostic, GraphErrors};

/// Where the model files a ComfyUI workflow names live.
#[derive(Debug, Clone, Default)]
pub struct ModelPaths {
    /// Models folders laid out as ComfyUI's (`--models-dir`, then `SDGRAPH_MODELS_DIR`).
    pub dirs: Vec<PathBuf>,
    /// Extra folders per ComfyUI folder name (from `--extra-model-paths`, ComfyUI's `extra_model_paths.yaml`).
    pub extra: Vec<comfy::models::ExtraFolder>,
}

impl ModelPaths {
    /// `dirs`, and the folders each of `extra_files` (ComfyUI `extra_model_paths.yaml` files) adds; `home`
    /// is what a leading `~` in them means.
    pub fn new(dirs: Vec<PathBuf>, extra_files: &[&PathBuf], home: Option<&Path>) -> Result<ModelPaths, String> {
        let mut extra = Vec::new();
        for f in extra_files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let dir = f.parent().unwrap_or(Path::new(""));
            extra.extend(comfy::read_extra_model_paths(&text, dir, home).map_err(|e| format!("{}: {e}", f.display()))?);
        }
        Ok(ModelPaths { dirs, extra })
    }
}

/// What reading a ComfyUI workflow needs: the node kinds (to name widgets and
/// outputs) and where model files live.
pub struct Sources<'a> {
    pub registry: &'a Registry,
    pub models: &'a ModelPaths,
    /// Whether a model file not found refuses the workflow (`run`) or is a warning (`check`).
    pub missing: MissingFiles,
}

/// A graph read from disk, with what is needed to run it.
pub struct Loaded {
    pub graph: Graph,
    /// The text to embed in outputs: the file as written, or the graph
    /// re-serialised when `--set` changed it.
    pub text: String,
    /// Folder relative paths resolve against.
    pub base_dir: PathBuf,
}

pub(crate) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

pub fn load(file: &Path, sets: &[String], sources: &Sources) -> Result<Loaded, GraphErrors> {
    let name = file.display().to_string();
    let one = |msg: String| GraphErrors(vec![Diagnostic::new(&name, None, msg)]);
    let overrides: Vec<SetOverride> = sets
        .iter()
        .map(|s| SetOverride::parse(s))
        .collect::<Result<_, _>>()
        .map_err(|e| GraphErrors(vec![Diagnostic::new("--set", None, e)]))?;
    let bytes = read_limited(file).map_err(one)?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (text_bytes, base_dir) = if bytes.starts_with(PNG_SIGNATURE) {
        match nodes::png_meta::embedded_graph(&bytes).map_err(one)? {
            Some((g, base)) => {
                // Prefer the folder the graph was first run from, if it still exists: recorded relative to
                // the picture's folder (absolute in older pictures, or when asked for).
                let base = base.map(|b| dir.join(b)).filter(|b| b.is_dir()).unwrap_or(dir);
                (g.into_bytes(), base)
            }
            None => match nodes::png_meta::comfy_workflow(&bytes).map_err(one)? {
                Some(json) => (json.into_bytes(), dir),
                None => {
                    return Err(one("this PNG carries no graph (neither sdgraph's nor a ComfyUI workflow)".into()));
                }
            },
        }
    } else {
        (bytes, dir)
    };
    let (mut graph, text) = if comfy::looks_like_json(&text_bytes) {
        let imported = import(&name, &text_bytes, &base_dir, sources)?;
        (imported.graph, imported.ron)
    } else {
        (graph::parse_graph(&name, &text_bytes)?, String::from_utf8_lossy(&text_bytes).into_owned())
    };
    let text = if overrides.is_empty() {
        text
    } else {
        graph.apply_overrides(&overrides)?;
        graph.to_ron()
    };
    Ok(Loaded { graph, text, base_dir })
}

/// A ComfyUI workflow as a graph; what did not stop it is printed as warnings.
pub fn import(name: &str, json: &[u8], base_dir: &Path, sources: &Sources) -> Result<comfy::Imported, GraphErrors> {
    let opts = ImportOptions {
        roots: ModelRoots {
            roots: sources.models.dirs.clone(),
            extra: sources.models.extra.clone(),
            base_dir: base_dir.to_path_buf(),
        },
        missing: sources.missing,
    };
    let imported = comfy::import(name, json, sources.registry, &opts)?;
    for w in &imported.warnings {
        eprintln!("warning: {name}: {w}");
    }
    Ok(imported)
}

/// Reads a file, refusing anything that is not a regular file or is far too
/// large to be a graph or a graph-carrying PNG.
pub(crate) fn read_limited(file: &Path) -> Result<Vec<u8>, String> {
    const MAX: u64 = 256 << 20;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX {
        return Err(format!("file is {} bytes; a graph (or PNG) over {MAX} bytes is refused", meta.len()));
    }
    std::fs::read(file).map_err(|e| format!("cannot read file: {e}"))
}
