//! A [`Prompt`] as sdgraph RON: node ids made from the kind and ComfyUI's id
//! (`ksampler_3`), outputs named by slot through the kind's schema, literals
//! typed by the param they set (`1` for an int param, `1.0` for a float one),
//! model names resolved to files, and a comment per node naming its origin.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::models::{Resolution, folder_of};
use super::prompt::{Prompt, PromptInput, PromptNode, json_kind};
use super::{ImportOptions, MissingFiles};
use crate::node::{NodeSchema, ParamKind, ParamValue};
use crate::registry::Registry;

/// The sdgraph node id for a workflow node: the kind in snake case
/// (`CLIPTextEncode` -> `clip_text_encode`), then ComfyUI's id.
pub fn node_id(node: &PromptNode) -> String {
    let chars: Vec<char> = node.kind.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            out.push('_');
            continue;
        }
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1);
        // A word starts at an upper-case letter after a lower-case one or a digit, or at the
        // last capital of an acronym followed by lower case (`CLIPText` -> `clip_text`).
        let starts_word = c.is_ascii_uppercase()
            && prev.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()) && i > 1)
            });
        if starts_word && !out.ends_with('_') {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out.push('_');
    out.extend(node.id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }));
    out
}

/// The RON text of `prompt`, or every problem found: kinds sdgraph lacks
/// (all of them, each with id and title), links to nodes or slots that do
/// not exist, values of the wrong JSON kind, and (with
/// [`MissingFiles::Refuse`]) files not found.
pub fn to_ron(
    file: &str,
    prompt: &Prompt,
    registry: &Registry,
    opts: &ImportOptions,
    warnings: &mut Vec<String>,
) -> Result<String, Vec<String>> {
    let mut errs = Vec::new();
    let mut missing = Vec::new();
    for n in &prompt.nodes {
        if registry.get(&n.kind).is_none() {
            // No "did you mean": a ComfyUI kind is missing, not misspelt (VAELoader is not VAEEncode).
            missing.push(format!("{}: sdgraph has no node kind {:?}", n.describe(), n.kind));
        }
    }
    if !missing.is_empty() {
        missing.push(format!("{} node kind(s) missing: nothing was run", missing.len()));
        return Err(missing);
    }
    let mut text = format!(
        "// Imported by sdgraph from the ComfyUI workflow {:?}.\n// Each node's comment gives the ComfyUI node it came from: id, kind and title.\n(\n    nodes: {{\n",
        one_line(file)
    );
    for n in &prompt.nodes {
        let schema = registry.get(&n.kind).map(|k| k.schema()).expect("checked above");
        match node_ron(prompt, n, schema, registry, opts, warnings) {
            Ok(s) => text.push_str(&s),
            Err(e) => errs.extend(e),
        }
    }
    text.push_str("    },\n)\n");
    if errs.is_empty() { Ok(text) } else { Err(errs) }
}

/// Control characters and line breaks as spaces, so a title stays inside its comment.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn node_ron(
    prompt: &Prompt,
    n: &PromptNode,
    schema: &NodeSchema,
    registry: &Registry,
    opts: &ImportOptions,
    warnings: &mut Vec<String>,
) -> Result<String, Vec<String>> {
    let mut errs = Vec::new();
    let mut links = Vec::new();
    let mut params = Vec::new();
    // In the kind's own order (the API format's inputs come in any order): inputs, then params, then names it lacks.
    let rank = |name: &str| {
        let input = schema.inputs.iter().position(|i| i.name == name);
        let param = schema.params.iter().position(|p| p.name == name).map(|p| p + schema.inputs.len());
        input.or(param).unwrap_or(usize::MAX)
    };
    let mut ordered: Vec<&(String, PromptInput)> = n.inputs.iter().collect();
    ordered.sort_by_key(|(name, _)| rank(name));
    for (name, input) in ordered {
        match input {
            PromptInput::Link { node, slot } => match link_ron(prompt, registry, node, *slot) {
                Ok(l) => links.push(format!("{name:?}: {l:?}")),
                Err(e) => errs.push(format!("{}, input {name:?}: {e}", n.describe())),
            },
            PromptInput::Value(v) => match param_ron(n, schema, name, v, opts, warnings) {
                Ok(Some(p)) => params.push(format!("{name:?}: {}", p.to_ron())),
                Ok(None) => {}
                Err(e) => errs.push(format!("{}, {name:?}: {e}", n.describe())),
            },
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut s = String::new();
    let title = n.title.as_deref().filter(|t| !t.is_empty() && *t != n.kind);
    let _ = writeln!(
        s,
        "        // {}: {}{}",
        one_line(&n.id),
        n.kind,
        title.map(|t| format!(" {:?}", one_line(t))).unwrap_or_default()
    );
    let _ = write!(s, "        {:?}: (kind: {:?}", node_id(n), n.kind);
    if !links.is_empty() {
        let _ = write!(s, ", inputs: {{ {} }}", links.join(", "));
    }
    if !params.is_empty() {
        let _ = write!(s, ", params: {{ {} }}", params.join(", "));
    }
    s.push_str("),\n");
    Ok(s)
}

/// `"ksampler_3.latent"` for output `slot` of node `node`.
fn link_ron(prompt: &Prompt, registry: &Registry, node: &str, slot: usize) -> Result<String, String> {
    let Some(origin) = prompt.node(node) else {
        return Err(format!("links to node {node}, which the workflow does not have"));
    };
    let schema =
        registry.get(&origin.kind).map(|k| k.schema()).ok_or_else(|| format!("links to {}", origin.describe()))?;
    match schema.outputs.get(slot) {
        Some(o) => Ok(format!("{}.{}", node_id(origin), o.name)),
        None => Err(format!(
            "links to output slot {slot} of {}, which has {} output(s)",
            origin.describe(),
            schema.outputs.len()
        )),
    }
}

/// A widget's JSON value as the param it sets takes it; `None` for a value
/// dropped with a warning (null).
fn param_ron(
    n: &PromptNode,
    schema: &NodeSchema,
    name: &str,
    v: &Json,
    opts: &ImportOptions,
    warnings: &mut Vec<String>,
) -> Result<Option<ParamValue>, String> {
    let kind = schema.params.iter().find(|p| p.name == name).map(|p| &p.kind);
    let value = match (kind, v) {
        (_, Json::Null) => {
            warnings.push(format!("{}, {name:?}: null in the workflow; the default is used", n.describe()));
            return Ok(None);
        }
        (Some(ParamKind::Int { .. }), Json::Number(x)) => int_value(x),
        (Some(ParamKind::Float { .. }), Json::Number(x)) => ParamValue::Float(x.as_f64().unwrap_or(f64::NAN)),
        (Some(ParamKind::Path), Json::String(s)) => ParamValue::String(resolve(n, name, s, opts, warnings)?),
        (_, Json::Number(x)) => number_value(x),
        (_, Json::String(s)) => ParamValue::String(s.clone()),
        (_, Json::Bool(b)) => ParamValue::Bool(*b),
        (_, other) => {
            return Err(format!("a widget value must be a number, string or bool, found {}", json_kind(other)));
        }
    };
    Ok(Some(value))
}

/// An integer param's value: JSON's `1.0` is an int too (ComfyUI's frontend writes both).
fn int_value(x: &serde_json::Number) -> ParamValue {
    if let Some(i) = x.as_i64() {
        return ParamValue::Int(i128::from(i));
    }
    if let Some(u) = x.as_u64() {
        return ParamValue::Int(i128::from(u));
    }
    let f = x.as_f64().unwrap_or(f64::NAN);
    // Below 2^64 every integral f64 is an exact integer.
    if f.fract() == 0.0 && f.abs() < 1.8e19 { ParamValue::Int(f as i128) } else { ParamValue::Float(f) }
}

/// A number for a param sdgraph does not know: int when JSON wrote an int.
fn number_value(x: &serde_json::Number) -> ParamValue {
    if x.is_f64() { ParamValue::Float(x.as_f64().unwrap_or(f64::NAN)) } else { int_value(x) }
}

/// A file name resolved under the ComfyUI folder its param names files in.
fn resolve(
    n: &PromptNode,
    name: &str,
    value: &str,
    opts: &ImportOptions,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let Some(folder) = folder_of(&n.kind, name) else {
        return Ok(value.to_string());
    };
    match opts.roots.resolve(folder, value) {
        Resolution::Found(p) => Ok(p.display().to_string()),
        Resolution::Missing(tried) => {
            let looked = if tried.is_empty() {
                "a name must stay inside its folder (no '..')".to_string()
            } else {
                format!("looked in: {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
            };
            let hint = if opts.roots.roots.is_empty() {
                "; give the models folder with --models-dir or SDGRAPH_MODELS_DIR"
            } else {
                ""
            };
            let msg = format!("{folder} file {value:?} not found ({looked}){hint}");
            match opts.missing {
                MissingFiles::Refuse => Err(msg),
                MissingFiles::Warn => {
                    warnings.push(format!("{}, {name:?}: {msg}", n.describe()));
                    Ok(value.to_string())
                }
            }
        }
    }
}
