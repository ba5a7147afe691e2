//! ComfyUI workflows as sdgraph graphs: the API format that ComfyUI queues
//! (`{"3": {"class_type": "KSampler", "inputs": {...}}}`) and the UI
//! (litegraph) format its frontend saves (`{"nodes": [...], "links": [...]}`).
//!
//! Both become a [`Prompt`] (ComfyUI's own flat form: nodes with named
//! inputs, each a literal or a link to another node's output slot), which
//! [`emit`] writes as RON with a comment per node naming where it came from;
//! that text is parsed like any graph file, so an imported graph and the file
//! `sdgraph import` writes are the same graph.
//!
//! - [`ui`]: the UI format: widgets by position, Reroute, PrimitiveNode, notes,
//!   muted and bypassed nodes; [`litegraph`]: its nodes, links and subgraphs
//! - [`prompt`]: the API format, and the flat form both share
//! - [`models`]: model names resolved under ComfyUI's folders
//! - [`emit`]: the RON text

pub mod emit;
pub mod litegraph;
pub mod models;
pub mod prompt;
pub mod ui;

pub use models::{ExtraFolder, ModelRoots, Resolution, read_extra_model_paths};
pub use prompt::{Prompt, PromptInput, PromptNode};

use crate::error::{Diagnostic, GraphErrors};
use crate::registry::Registry;
use crate::schema::Graph;

/// Largest workflow accepted: far above any real one (the gallery's largest
/// is ~200 KB), low enough that a hostile file cannot exhaust memory.
pub const MAX_WORKFLOW_BYTES: usize = 64 << 20;

/// What to do with a model or input file that cannot be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFiles {
    /// Keep the name as written and say so (`import`, `check`).
    Warn,
    /// Refuse the workflow, naming every place looked in (`run`, `watch`).
    Refuse,
}

/// How an import resolves file names.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub roots: ModelRoots,
    pub missing: MissingFiles,
}

/// A workflow as an sdgraph graph.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The graph, parsed from [`Self::ron`].
    pub graph: Graph,
    /// The RON text, with a comment per node naming the ComfyUI node.
    pub ron: String,
    /// Things the user should know that did not stop the import (files not
    /// found with `MissingFiles::Warn`, notes dropped, ...).
    pub warnings: Vec<String>,
    /// Each sdgraph node id with the ComfyUI node id it came from (`ksampler_3` -> `3`), for
    /// answering in ComfyUI's terms (`sdgraph serve`).
    pub comfy_ids: std::collections::BTreeMap<String, String>,
}

/// True when `bytes` look like JSON (a ComfyUI workflow) rather than RON: the
/// first thing that is not white space is `{`.
pub fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b == b'{')
}

/// Imports a ComfyUI workflow (either format) against the node kinds of
/// `registry`. Every problem found is reported at once, each naming the
/// workflow's node id, kind and title; nothing of a refused workflow runs.
pub fn import(file: &str, bytes: &[u8], registry: &Registry, opts: &ImportOptions) -> Result<Imported, GraphErrors> {
    let one = |msg: String| GraphErrors(vec![Diagnostic::new(file, None, msg)]);
    if bytes.len() > MAX_WORKFLOW_BYTES {
        return Err(one(format!(
            "file is {} bytes, larger than the limit of {MAX_WORKFLOW_BYTES} bytes for a workflow",
            bytes.len()
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| one(format!("not valid JSON: {e}")))?;
    let mut warnings = Vec::new();
    let prompt =
        if ui::is_ui_workflow(&json) { ui::to_prompt(&json, registry, &mut warnings) } else { prompt::from_api(&json) }
            .map_err(|msgs| GraphErrors(msgs.into_iter().map(|m| Diagnostic::new(file, None, m)).collect()))?;
    let ron = emit::to_ron(file, &prompt, registry, opts, &mut warnings)
        .map_err(|msgs| GraphErrors(msgs.into_iter().map(|m| Diagnostic::new(file, None, m)).collect()))?;
    let graph = crate::format::parse_graph(&format!("{file} (as imported)"), ron.as_bytes())?;
    let comfy_ids = prompt.nodes.iter().map(|n| (emit::node_id(n), n.id.clone())).collect();
    Ok(Imported { graph, ron, warnings, comfy_ids })
}
