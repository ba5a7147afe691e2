//! ComfyUI's flat form of a workflow (what its API takes as `prompt`): nodes
//! by id, each with a kind and named inputs that are literals or links to
//! another node's output slot. The UI format is reduced to this first.

use serde_json::Value as Json;

/// Most nodes accepted in a workflow (as for graph files).
pub const MAX_NODES: usize = crate::schema::MAX_NODES;

/// One input of a [`PromptNode`].
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// Output `slot` (0-based, in the kind's output order) of node `node`.
    Link { node: String, slot: usize },
    /// A widget's value as the workflow holds it.
    Value(Json),
}

/// One node of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptNode {
    /// ComfyUI's node id ("3", or "12:5" inside a subgraph).
    pub id: String,
    pub kind: String,
    /// The title the user gave the node, if any (shown in messages).
    pub title: Option<String>,
    pub inputs: Vec<(String, PromptInput)>,
}

impl PromptNode {
    /// `node 3 (KSampler "Sampler")`: how messages name a workflow node.
    pub fn describe(&self) -> String {
        describe(&self.id, &self.kind, self.title.as_deref())
    }
}

pub(crate) fn describe(id: &str, kind: &str, title: Option<&str>) -> String {
    match title {
        Some(t) if !t.is_empty() && t != kind => format!("node {id} ({kind} {t:?})"),
        _ => format!("node {id} ({kind})"),
    }
}

/// A workflow in ComfyUI's flat form, nodes in id order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompt {
    pub nodes: Vec<PromptNode>,
}

impl Prompt {
    pub fn node(&self, id: &str) -> Option<&PromptNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Sorts nodes by id, numbers numerically ("2" before "10").
    pub(crate) fn sort(&mut self) {
        self.nodes.sort_by_key(|n| id_order(&n.id));
    }
}

/// Sort key for node ids: each `:`-separated part numerically where it is a number.
fn id_order(id: &str) -> Vec<(u64, String)> {
    id.split(':').map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string())).collect()
}

/// Reads the API format: an object of node ids to `{"class_type", "inputs",
/// "_meta": {"title"}}`, a link being `["node id", slot]`. Every malformed
/// node is reported, not just the first.
pub fn from_api(json: &Json) -> Result<Prompt, Vec<String>> {
    let Some(obj) = json.as_object() else {
        return Err(vec!["a ComfyUI workflow is a JSON object".into()]);
    };
    // A PNG's or a client's {"prompt": {...}} wrapper.
    if let Some(inner) = obj.get("prompt").filter(|p| p.is_object()) {
        return from_api(inner);
    }
    if obj.is_empty() {
        return Err(vec!["the workflow has no nodes".into()]);
    }
    if obj.len() > MAX_NODES {
        return Err(vec![format!("the workflow has {} nodes, more than the limit of {MAX_NODES}", obj.len())]);
    }
    let mut errs = Vec::new();
    let mut prompt = Prompt::default();
    for (id, node) in obj {
        let Some(kind) = node.get("class_type").and_then(Json::as_str) else {
            errs.push(format!(
                "node {id}: has no \"class_type\" (is this a ComfyUI workflow in the API or UI format?)"
            ));
            continue;
        };
        let title = node.pointer("/_meta/title").and_then(Json::as_str).map(str::to_string);
        let mut inputs = Vec::new();
        match node.get("inputs") {
            None | Some(Json::Null) => {}
            Some(Json::Object(ins)) => {
                for (name, v) in ins {
                    inputs.push((name.clone(), api_input(v)));
                }
            }
            Some(other) => errs.push(format!(
                "{}: \"inputs\" must be an object, found {}",
                describe(id, kind, title.as_deref()),
                json_kind(other)
            )),
        }
        prompt.nodes.push(PromptNode { id: id.clone(), kind: kind.to_string(), title, inputs });
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    prompt.sort();
    Ok(prompt)
}

/// An API input: `[id, slot]` (the id a string or a number) is a link, as
/// ComfyUI's executor reads it; `{"__value__": v}` is the literal `v`;
/// anything else is a literal.
fn api_input(v: &Json) -> PromptInput {
    // The frontend wraps a widget whose value is itself an array, so it is not taken for a link.
    if let Some(inner) = v.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("__value__")) {
        return PromptInput::Value(inner.clone());
    }
    if let Some([node, slot]) = v.as_array().map(Vec::as_slice) {
        let node = match node {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) if n.is_u64() => Some(n.to_string()),
            _ => None,
        };
        if let (Some(node), Some(slot)) = (node, slot.as_u64()) {
            return PromptInput::Link { node, slot: slot as usize };
        }
    }
    PromptInput::Value(v.clone())
}

/// "a string", "an array", ...: a JSON value's kind for messages.
pub(crate) fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}
