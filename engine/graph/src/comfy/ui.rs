//! The UI (litegraph) format the ComfyUI frontend saves: `nodes` with
//! positional `widgets_values` and numbered input and output slots, and
//! `links` between slots (read by [`super::litegraph`], subgraphs flattened).
//! Reduced to a [`Prompt`] the way the frontend does before it queues a
//! workflow: notes dropped, Reroutes followed, a PrimitiveNode's value written
//! into the widget it feeds, muted nodes (mode 2) dropped, bypassed nodes
//! (mode 4) wired through by type.

use serde_json::Value as Json;

use super::litegraph::{MODE_BYPASSED, MODE_MUTED, Source, UiNode, Workflow};
use super::prompt::{Prompt, PromptInput, PromptNode, json_kind};
use crate::node::{NodeSchema, ParamKind};
use crate::registry::Registry;

/// Node kinds that only exist in the frontend: never sent to ComfyUI's backend.
const FRONTEND_ONLY: &[&str] = &["Note", "MarkdownNote", "Reroute", "PrimitiveNode"];

/// True for the UI format: a `nodes` array (the API format is an object of node ids).
pub fn is_ui_workflow(json: &Json) -> bool {
    json.get("nodes").is_some_and(Json::is_array)
}

/// Reduces a UI-format workflow to the flat form. `registry` names each
/// kind's widgets; kinds it lacks pass through with their links only, for
/// [`super::emit`] to report together.
pub fn to_prompt(json: &Json, registry: &Registry, warnings: &mut Vec<String>) -> Result<Prompt, Vec<String>> {
    let wf = Workflow::read(json)?;
    let mut errs = Vec::new();
    let mut prompt = Prompt::default();
    let mut ids: Vec<&String> = wf.nodes.keys().collect();
    ids.sort();
    for id in ids {
        let node = &wf.nodes[id];
        if !node.live || wf.is_instance(node) {
            continue;
        }
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
        let value = match wf.source(&node.scope, link, node) {
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
