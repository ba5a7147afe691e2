//! The UI (litegraph) format the ComfyUI frontend saves: `nodes` with
//! positional `widgets_values` and numbered input and output slots, and
//! `links` between slots. Reduced to a [`Prompt`] the way the frontend does
//! before it queues a workflow: notes dropped, Reroutes followed, a
//! PrimitiveNode's value written into the widget it feeds, muted nodes
//! (mode 2) dropped, bypassed nodes (mode 4) wired through by type.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::prompt::{MAX_NODES, Prompt, PromptInput, PromptNode, describe, json_kind};
use crate::node::{NodeSchema, ParamKind};
use crate::registry::Registry;

/// Node kinds that only exist in the frontend: never sent to ComfyUI's backend.
const FRONTEND_ONLY: &[&str] = &["Note", "MarkdownNote", "Reroute", "PrimitiveNode"];
const MODE_MUTED: u64 = 2;
const MODE_BYPASSED: u64 = 4;
/// Longest chain of Reroutes and bypassed nodes followed before the links are taken to loop.
const MAX_HOPS: usize = 1000;

/// True for the UI format: a `nodes` array (the API format is an object of node ids).
pub fn is_ui_workflow(json: &Json) -> bool {
    json.get("nodes").is_some_and(Json::is_array)
}

/// One node as the UI format holds it.
struct UiNode<'a> {
    id: String,
    kind: &'a str,
    title: Option<&'a str>,
    mode: u64,
    json: &'a Json,
}

impl UiNode<'_> {
    fn describe(&self) -> String {
        describe(&self.id, self.kind, self.title)
    }

    fn inputs(&self) -> &[Json] {
        self.json.get("inputs").and_then(Json::as_array).map_or(&[], Vec::as_slice)
    }

    fn output_type(&self, slot: usize) -> Option<&str> {
        self.json.get("outputs")?.as_array()?.get(slot)?.get("type")?.as_str()
    }
}

/// Where a link's value comes from once Reroutes, primitives and bypassed nodes are seen through.
enum Source {
    Node { id: String, slot: usize },
    Value(Json),
}

struct Workflow<'a> {
    nodes: HashMap<String, UiNode<'a>>,
    /// Link id -> (origin node id, origin slot).
    links: HashMap<u64, (String, usize)>,
}

/// A node id as a string: ids are numbers in the UI format (strings in some newer files).
fn id_string(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Reduces a UI-format workflow to the flat form. `registry` names each
/// kind's widgets; kinds it lacks pass through with their links only, for
/// [`super::emit`] to report together.
pub fn to_prompt(json: &Json, registry: &Registry, warnings: &mut Vec<String>) -> Result<Prompt, Vec<String>> {
    let wf = read_workflow(json)?;
    let mut errs = Vec::new();
    let mut prompt = Prompt::default();
    let mut ids: Vec<&String> = wf.nodes.keys().collect();
    ids.sort();
    for id in ids {
        let node = &wf.nodes[id];
        if FRONTEND_ONLY.contains(&node.kind) || node.mode == MODE_MUTED || node.mode == MODE_BYPASSED {
            if node.mode == MODE_MUTED && !FRONTEND_ONLY.contains(&node.kind) {
                warnings.push(format!("{} is muted in the workflow: left out", node.describe()));
            }
            continue;
        }
        match convert_node(&wf, node, registry.get(node.kind).map(|k| k.schema())) {
            Ok(n) => prompt.nodes.push(n),
            Err(e) => errs.extend(e),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if prompt.nodes.is_empty() {
        return Err(vec!["the workflow has no nodes that run (only notes, or everything muted)".into()]);
    }
    prompt.sort();
    Ok(prompt)
}

fn read_workflow(json: &Json) -> Result<Workflow<'_>, Vec<String>> {
    let mut errs = Vec::new();
    let raw_nodes = json.get("nodes").and_then(Json::as_array).map_or(&[][..], Vec::as_slice);
    if raw_nodes.len() > MAX_NODES {
        return Err(vec![format!("the workflow has {} nodes, more than the limit of {MAX_NODES}", raw_nodes.len())]);
    }
    let subgraphs: Vec<&str> = json
        .pointer("/definitions/subgraphs")
        .and_then(Json::as_array)
        .map(|s| s.iter().filter_map(|g| g.get("id").and_then(Json::as_str)).collect())
        .unwrap_or_default();
    let mut nodes = HashMap::new();
    for (i, n) in raw_nodes.iter().enumerate() {
        let (Some(id), Some(kind)) = (n.get("id").and_then(id_string), n.get("type").and_then(Json::as_str)) else {
            errs.push(format!("nodes[{i}]: a node needs an \"id\" and a \"type\""));
            continue;
        };
        let title = n.get("title").and_then(Json::as_str);
        let node =
            UiNode { id: id.clone(), kind, title, mode: n.get("mode").and_then(Json::as_u64).unwrap_or(0), json: n };
        if subgraphs.contains(&kind) {
            errs.push(format!("{} is a subgraph: sdgraph cannot import subgraphs yet", node.describe()));
        }
        if nodes.insert(id.clone(), node).is_some() {
            errs.push(format!("node {id} appears twice in the workflow"));
        }
    }
    let mut links = HashMap::new();
    for (i, l) in json.get("links").and_then(Json::as_array).map_or(&[][..], Vec::as_slice).iter().enumerate() {
        match read_link(l) {
            Some((id, origin, slot)) => {
                links.insert(id, (origin, slot));
            }
            None => errs.push(format!(
                "links[{i}]: expected [id, origin node, origin slot, target node, target slot, type], found {}",
                json_kind(l)
            )),
        }
    }
    if errs.is_empty() { Ok(Workflow { nodes, links }) } else { Err(errs) }
}

/// (link id, origin node id, origin slot) from the array form or the object form of a link.
fn read_link(l: &Json) -> Option<(u64, String, usize)> {
    let (id, origin, slot) = match l {
        Json::Array(a) if a.len() >= 3 => (&a[0], &a[1], &a[2]),
        Json::Object(_) => (l.get("id")?, l.get("origin_id")?, l.get("origin_slot")?),
        _ => return None,
    };
    Some((id.as_u64()?, id_string(origin)?, usize::try_from(slot.as_u64()?).ok()?))
}

impl Workflow<'_> {
    /// Follows link `link` back to what feeds it; `None` when that is muted or nothing.
    fn source(&self, link: u64, target: &UiNode) -> Result<Option<Source>, String> {
        let mut link = link;
        for _ in 0..MAX_HOPS {
            let Some((origin, slot)) = self.links.get(&link) else {
                return Err(format!("{}: link {link} is not in the workflow's links", target.describe()));
            };
            let Some(node) = self.nodes.get(origin) else {
                return Err(format!(
                    "{}: link {link} comes from node {origin}, which the workflow does not have",
                    target.describe()
                ));
            };
            let next = match node.kind {
                "PrimitiveNode" => {
                    let v = node.json.get("widgets_values").and_then(|w| w.get(0)).cloned();
                    return Ok(v.map(Source::Value));
                }
                "Reroute" => first_link(node.inputs().first()),
                _ if node.mode == MODE_MUTED => return Ok(None),
                _ if node.mode == MODE_BYPASSED => bypass_input(node, *slot),
                _ => return Ok(Some(Source::Node { id: origin.clone(), slot: *slot })),
            };
            match next {
                Some(l) => link = l,
                None => return Ok(None),
            }
        }
        Err(format!("{}: its links loop through Reroutes or bypassed nodes", target.describe()))
    }
}

fn first_link(input: Option<&Json>) -> Option<u64> {
    input?.get("link")?.as_u64()
}

/// The link a bypassed node passes on at output `slot`: its input of the
/// output's type, the one at the same index if that matches, else the first.
fn bypass_input(node: &UiNode, slot: usize) -> Option<u64> {
    let ty = node.output_type(slot)?;
    let ins = node.inputs();
    let has_ty = |i: &&Json| i.get("type").and_then(Json::as_str) == Some(ty);
    let pick = ins.get(slot).filter(has_ty).or_else(|| ins.iter().find(has_ty));
    first_link(pick)
}

/// One UI node in the flat form: widgets named by the kind's schema, links resolved.
fn convert_node(wf: &Workflow, node: &UiNode, schema: Option<&NodeSchema>) -> Result<PromptNode, Vec<String>> {
    let mut errs = Vec::new();
    let mut inputs: Vec<(String, PromptInput)> = match schema {
        Some(s) => named_widgets(node, s).map_err(|e| vec![e])?,
        None => Vec::new(),
    };
    for input in node.inputs() {
        let Some(name) = input.get("name").and_then(Json::as_str) else { continue };
        // A widget turned into an input names its widget; the slot's own name may be a label.
        let name = input.pointer("/widget/name").and_then(Json::as_str).unwrap_or(name);
        let Some(link) = input.get("link").and_then(Json::as_u64) else { continue };
        let value = match wf.source(link, node) {
            Ok(Some(Source::Node { id, slot })) => PromptInput::Link { node: id, slot },
            Ok(Some(Source::Value(v))) => PromptInput::Value(v),
            Ok(None) => continue,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        match inputs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => inputs.push((name.to_string(), value)),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(PromptNode { id: node.id.clone(), kind: node.kind.to_string(), title: node.title.map(str::to_string), inputs })
}

/// The names of a kind's widgets in the order the frontend saves their values:
/// its params, with `None` for the frontend's own widgets (the
/// `control_after_generate` after a seed, LoadImage's `upload`).
pub fn widget_slots(schema: &NodeSchema) -> Vec<Option<&str>> {
    let mut slots = Vec::new();
    for p in &schema.params {
        slots.push(Some(p.name.as_str()));
        let seed = matches!(p.kind, ParamKind::Int { .. }) && (p.name == "seed" || p.name == "noise_seed");
        let upload = p.name == "image" && matches!(schema.kind.as_str(), "LoadImage" | "LoadImageMask");
        if seed || upload {
            slots.push(None);
        }
    }
    slots
}

/// The node's widget values by name: from the dict form as it is, from the
/// array form by position (with or without the frontend's own widgets).
fn named_widgets(node: &UiNode, schema: &NodeSchema) -> Result<Vec<(String, PromptInput)>, String> {
    let values = match node.json.get("widgets_values") {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Object(map)) => {
            return Ok(schema
                .params
                .iter()
                .filter_map(|p| map.get(&p.name).map(|v| (p.name.clone(), PromptInput::Value(v.clone()))))
                .collect());
        }
        Some(Json::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "{}: \"widgets_values\" must be an array or an object, found {}",
                node.describe(),
                json_kind(other)
            ));
        }
    };
    let slots = widget_slots(schema);
    let plain: Vec<Option<&str>> = slots.iter().copied().filter(Option::is_some).collect();
    // Trailing empty strings are frontend slots (a combo's filter list) that sdgraph has no use for.
    let extra = values.len().saturating_sub(slots.len());
    let trailing_empty = values.iter().rev().take_while(|v| v.as_str() == Some("")).count();
    let values = &values[..values.len() - trailing_empty.min(extra)];
    let layout = if values.len() == slots.len() {
        &slots[..]
    } else if values.len() == plain.len() {
        &plain[..]
    } else if values.len() < slots.len() {
        // Saved before the node gained its last widgets: those keep their defaults.
        &slots[..values.len()]
    } else {
        let names: Vec<&str> = slots.iter().map(|s| s.unwrap_or("(frontend widget)")).collect();
        return Err(format!(
            "{}: {} widget values, but sdgraph's {} takes {} ({}); was it saved by a different version of the node?",
            node.describe(),
            values.len(),
            schema.kind,
            slots.len(),
            names.join(", ")
        ));
    };
    Ok(layout
        .iter()
        .zip(values)
        .filter_map(|(slot, v)| slot.map(|name| (name.to_string(), PromptInput::Value(v.clone()))))
        .collect())
}
