//! What the server runs and where its files live: a submitted prompt (ComfyUI's API format, or RON
//! text as a JSON string) made into a checked graph, with the ComfyUI ids of its nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use graph::comfy::models::ExtraFolder;
use graph::comfy::{self, ImportOptions, MissingFiles, ModelRoots};
use graph::{Diagnostic, GraphErrors, Registry, ValidGraph};
use serde_json::Value as Json;

use super::super::load::ModelPaths;

/// The server's node kinds and folders.
pub struct ServeCtx {
    pub registry: Registry,
    pub models: ModelPaths,
    /// SaveImage's folder (`--output-dir`): `/view?type=output`.
    pub output_dir: PathBuf,
    /// Uploaded pictures (`--input-dir`): `/upload/image`, `/view?type=input`, LoadImage's names.
    pub input_dir: PathBuf,
    /// PreviewImage's folder: `/view?type=temp`.
    pub temp_dir: PathBuf,
    /// What relative paths in RON prompts resolve against: the folder the server started in.
    pub base_dir: PathBuf,
}

/// A prompt ready to run.
pub struct Prepared {
    pub graph: ValidGraph,
    /// The graph as RON, embedded in the pictures it saves.
    pub text: String,
    /// sdgraph node id -> the id the client used (the same for RON prompts).
    pub comfy_ids: BTreeMap<String, String>,
}

impl ServeCtx {
    /// Where a ComfyUI prompt's names are looked up: the input folder first (for LoadImage), then
    /// the models folders.
    fn roots(&self) -> ModelRoots {
        let mut extra = vec![ExtraFolder { folder: "input".into(), path: self.input_dir.clone(), first: true }];
        extra.extend(self.models.extra.iter().cloned());
        ModelRoots { roots: self.models.dirs.clone(), extra, base_dir: self.base_dir.clone() }
    }

    /// Checks a prompt and makes its graph; every problem at once, with the ComfyUI ids of the
    /// nodes when the import got that far.
    pub fn prepare(&self, prompt: &Json) -> Result<Prepared, (GraphErrors, BTreeMap<String, String>)> {
        let mut ids = BTreeMap::new();
        self.prepare_into(prompt, &mut ids).map_err(|e| (e, ids))
    }

    fn prepare_into(&self, prompt: &Json, ids_out: &mut BTreeMap<String, String>) -> Result<Prepared, GraphErrors> {
        let one = |msg: &str| GraphErrors(vec![Diagnostic::new("prompt", None, msg.to_string())]);
        let (graph, text, comfy_ids) = match prompt {
            Json::String(ron) => {
                let graph = graph::parse_graph("prompt", ron.as_bytes())?;
                let ids = graph.nodes.iter().map(|n| (n.id.value.clone(), n.id.value.clone())).collect();
                (graph, ron.clone(), ids)
            }
            Json::Object(_) => {
                let bytes = serde_json::to_vec(prompt).map_err(|e| one(&e.to_string()))?;
                let opts = ImportOptions { roots: self.roots(), missing: MissingFiles::Refuse };
                let imported = comfy::import("prompt", &bytes, &self.registry, &opts)?;
                (imported.graph, imported.ron, imported.comfy_ids)
            }
            _ => return Err(one("\"prompt\" must be a ComfyUI API-format graph (an object) or RON text (a string)")),
        };
        ids_out.clone_from(&comfy_ids);
        let graph = graph::validate(graph, &self.registry)?;
        Ok(Prepared { graph, text, comfy_ids })
    }
}

/// The client's id of the node a problem is about: the diagnostic's node, or the import's
/// `node 3 (KSampler ...): ...` at the start of its message.
fn node_of(d: &Diagnostic, comfy_ids: &BTreeMap<String, String>) -> Option<String> {
    if let Some(n) = &d.node {
        return Some(comfy_ids.get(n).cloned().unwrap_or_else(|| n.clone()));
    }
    let rest = d.message.strip_prefix("node ")?;
    let id = &rest[..rest.find(" (")?];
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
}

/// ComfyUI's answer to a prompt that does not validate: `error` and `node_errors` by the client's node
/// ids with their `class_type` from `prompt` (problems that name no node are in `error.details`).
pub fn validation_error(errs: &GraphErrors, comfy_ids: &BTreeMap<String, String>, prompt: &Json) -> Json {
    let mut node_errors = serde_json::Map::new();
    let mut general = Vec::new();
    for d in &errs.0 {
        let node = node_of(d, comfy_ids);
        let entry = serde_json::json!({
            "type": "invalid_input",
            "message": d.message,
            "details": d.to_string(),
            "extra_info": {},
        });
        if let Some(id) = node {
            let class_type = prompt.get(&id).and_then(|n| n.get("class_type")).cloned().unwrap_or("".into());
            let slot = node_errors.entry(id).or_insert_with(
                || serde_json::json!({ "errors": [], "dependent_outputs": [], "class_type": class_type }),
            );
            if let Some(list) = slot["errors"].as_array_mut() {
                list.push(entry);
            }
        }
        general.push(d.to_string());
    }
    serde_json::json!({
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": general.join("\n"),
            "extra_info": {},
        },
        "node_errors": node_errors,
    })
}
