//! The UI format's graph as the frontend holds it (litegraph): nodes with
//! numbered input and output slots, links between slots, and subgraphs, whose
//! definitions (`definitions.subgraphs`) are graphs of their own used by
//! instance nodes. Subgraphs are flattened as the frontend flattens them
//! before it queues: an inner node's id is `<instance id>:<inner id>`; inside a
//! definition, node -10 stands for the instance's inputs and -20 for its
//! outputs.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::prompt::{MAX_NODES, describe, json_kind};

pub(crate) const MODE_MUTED: u64 = 2;
pub(crate) const MODE_BYPASSED: u64 = 4;
/// Longest chain of Reroutes, bypassed nodes and subgraph borders followed before the links are taken to loop.
const MAX_HOPS: usize = 1000;
/// Deepest nesting of subgraphs (a definition that uses itself would never end).
const MAX_DEPTH: usize = 16;
/// The ids of a subgraph definition's input and output nodes.
const SUBGRAPH_INPUTS: &str = "-10";
const SUBGRAPH_OUTPUTS: i64 = -20;

/// One node as the UI format holds it.
pub(crate) struct UiNode<'a> {
    /// `<instance id>:...:<id>` inside subgraphs.
    pub id: String,
    /// The prefix of the graph it is in: `""` at the top, `"<instance id>:"` inside a subgraph.
    pub scope: String,
    pub kind: &'a str,
    pub title: Option<&'a str>,
    pub mode: u64,
    /// False inside a muted or bypassed subgraph instance: not run.
    pub live: bool,
    pub json: &'a Json,
}

impl UiNode<'_> {
    pub fn describe(&self) -> String {
        describe(&self.id, self.kind, self.title)
    }

    pub fn inputs(&self) -> &[Json] {
        self.json.get("inputs").and_then(Json::as_array).map_or(&[], Vec::as_slice)
    }

    fn output_type(&self, slot: usize) -> Option<&str> {
        self.json.get("outputs")?.as_array()?.get(slot)?.get("type")?.as_str()
    }
}

/// Where a link's value comes from once Reroutes, primitives, bypassed nodes and subgraph borders are seen
/// through.
pub(crate) enum Source {
    Node { id: String, slot: usize },
    Value(Json),
}

pub(crate) struct Workflow<'a> {
    pub nodes: HashMap<String, UiNode<'a>>,
    /// (scope, link id) -> (origin node id within the scope, origin slot).
    links: HashMap<(String, u64), (String, usize)>,
    /// Subgraph definitions by id.
    defs: HashMap<&'a str, &'a Json>,
    /// The instance node whose inner graph each subgraph scope is.
    instances: HashMap<String, String>,
}

/// A node id as a string: ids are numbers in the UI format (strings in some newer files).
fn id_string(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn array<'a>(v: &'a Json, key: &str) -> &'a [Json] {
    v.get(key).and_then(Json::as_array).map_or(&[], Vec::as_slice)
}

/// (link id, origin node id, origin slot, target node id, target slot) from the array or the object form.
fn read_link(l: &Json) -> Option<(u64, String, usize, i64, usize)> {
    let (id, origin, slot, target, tslot) = match l {
        Json::Array(a) if a.len() >= 5 => (&a[0], &a[1], &a[2], &a[3], &a[4]),
        Json::Object(_) => {
            (l.get("id")?, l.get("origin_id")?, l.get("origin_slot")?, l.get("target_id")?, l.get("target_slot")?)
        }
        _ => return None,
    };
    let slot = usize::try_from(slot.as_u64()?).ok()?;
    let tslot = usize::try_from(tslot.as_u64()?).ok()?;
    Some((id.as_u64()?, id_string(origin)?, slot, target.as_i64().unwrap_or(i64::MIN), tslot))
}

/// Every subgraph definition, nested ones too, by id.
fn collect_defs<'a>(json: &'a Json, defs: &mut HashMap<&'a str, &'a Json>) {
    for d in json.pointer("/definitions/subgraphs").and_then(Json::as_array).map_or(&[][..], Vec::as_slice) {
        if let Some(id) = d.get("id").and_then(Json::as_str) {
            defs.insert(id, d);
        }
        collect_defs(d, defs);
    }
}

impl<'a> Workflow<'a> {
    /// Reads the top graph and, through its instances, every subgraph's nodes and links.
    pub fn read(json: &'a Json) -> Result<Workflow<'a>, Vec<String>> {
        let mut wf =
            Workflow { nodes: HashMap::new(), links: HashMap::new(), defs: HashMap::new(), instances: HashMap::new() };
        collect_defs(json, &mut wf.defs);
        let mut errs = Vec::new();
        wf.expand(json, "", true, 0, &mut errs);
        if wf.nodes.len() > MAX_NODES {
            errs.push(format!("the workflow has {} nodes, more than the limit of {MAX_NODES}", wf.nodes.len()));
        }
        if errs.is_empty() { Ok(wf) } else { Err(errs) }
    }

    fn expand(&mut self, graph: &'a Json, scope: &str, live: bool, depth: usize, errs: &mut Vec<String>) {
        if self.nodes.len() > MAX_NODES {
            return;
        }
        let place =
            if scope.is_empty() { String::new() } else { format!(" in subgraph {}", scope.trim_end_matches(':')) };
        for (i, n) in array(graph, "nodes").iter().enumerate() {
            let (Some(local), Some(kind)) = (n.get("id").and_then(id_string), n.get("type").and_then(Json::as_str))
            else {
                errs.push(format!("nodes[{i}]{place}: a node needs an \"id\" and a \"type\""));
                continue;
            };
            let id = format!("{scope}{local}");
            let mode = n.get("mode").and_then(Json::as_u64).unwrap_or(0);
            let title = n.get("title").and_then(Json::as_str);
            let node = UiNode { id: id.clone(), scope: scope.to_string(), kind, title, mode, live, json: n };
            if let Some(def) = self.defs.get(kind).copied() {
                if depth >= MAX_DEPTH {
                    errs.push(format!(
                        "{}: subgraphs nested more than {MAX_DEPTH} deep (one contains itself?)",
                        node.describe()
                    ));
                    continue;
                }
                let inner = format!("{id}:");
                self.instances.insert(inner.clone(), id.clone());
                let inner_live = live && mode != MODE_MUTED && mode != MODE_BYPASSED;
                self.expand(def, &inner, inner_live, depth + 1, errs);
            }
            if self.nodes.insert(id.clone(), node).is_some() {
                errs.push(format!("node {id} appears twice in the workflow"));
            }
        }
        for (i, l) in array(graph, "links").iter().enumerate() {
            match read_link(l) {
                Some((id, origin, slot, _, _)) => {
                    self.links.insert((scope.to_string(), id), (origin, slot));
                }
                None => errs.push(format!(
                    "links[{i}]{place}: expected [id, origin node, origin slot, target node, target slot, type], found {}",
                    json_kind(l)
                )),
            }
        }
    }

    /// Whether `node` is a subgraph instance (its inner nodes are what runs).
    pub fn is_instance(&self, node: &UiNode) -> bool {
        self.defs.contains_key(node.kind)
    }

    /// Follows link `link` of graph `scope` back to what feeds it; `None` when that is muted or nothing.
    pub fn source(&self, scope: &str, link: u64, target: &UiNode) -> Result<Option<Source>, String> {
        let (mut scope, mut link) = (scope.to_string(), link);
        for _ in 0..MAX_HOPS {
            let Some((origin, slot)) = self.links.get(&(scope.clone(), link)) else {
                return Err(format!("{}: link {link} is not in the workflow's links", target.describe()));
            };
            let slot = *slot;
            if origin == SUBGRAPH_INPUTS {
                // Into the instance's own input: its link outside, or the widget value it holds.
                let inst = self.instances.get(&scope).and_then(|i| self.nodes.get(i));
                let Some(inst) = inst else {
                    return Err(format!(
                        "{}: link {link} comes from a subgraph's inputs outside any subgraph",
                        target.describe()
                    ));
                };
                match self.instance_input(inst, slot) {
                    InstanceInput::Link(l) => (scope, link) = (inst.scope.clone(), l),
                    InstanceInput::Value(v) => return Ok(Some(Source::Value(v))),
                    InstanceInput::Nothing => return Ok(None),
                }
                continue;
            }
            let id = format!("{scope}{origin}");
            let Some(node) = self.nodes.get(&id) else {
                return Err(format!(
                    "{}: link {link} comes from node {id}, which the workflow does not have",
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
                _ if node.mode == MODE_BYPASSED => bypass_input(node, slot),
                kind if self.defs.contains_key(kind) => {
                    // Into the definition: the inner link that ends at its outputs node's slot.
                    let def = self.defs[kind];
                    let inner = array(def, "links")
                        .iter()
                        .filter_map(read_link)
                        .find(|l| l.3 == SUBGRAPH_OUTPUTS && l.4 == slot);
                    match inner {
                        Some(l) => {
                            (scope, link) = (format!("{id}:"), l.0);
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => return Ok(Some(Source::Node { id, slot })),
            };
            match next {
                Some(l) => link = l,
                None => return Ok(None),
            }
        }
        Err(format!("{}: its links loop through Reroutes, bypassed nodes or subgraphs", target.describe()))
    }

    /// What feeds input `slot` of an instance's definition: the instance's input of that name if linked,
    /// else its widget value (one per definition input that feeds an inner widget, in order).
    fn instance_input(&self, inst: &UiNode, slot: usize) -> InstanceInput {
        let def = self.defs[inst.kind];
        let def_inputs = array(def, "inputs");
        let Some(name) = def_inputs.get(slot).and_then(|i| i.get("name")).and_then(Json::as_str) else {
            return InstanceInput::Nothing;
        };
        let linked = inst.inputs().iter().find(|i| i.get("name").and_then(Json::as_str) == Some(name));
        if let Some(l) = linked.and_then(|i| i.get("link")).and_then(Json::as_u64) {
            return InstanceInput::Link(l);
        }
        let values = inst.json.get("widgets_values");
        if let Some(v) = values.and_then(Json::as_object).and_then(|m| m.get(name)) {
            return InstanceInput::Value(v.clone());
        }
        if !feeds_widget(def, slot) {
            return InstanceInput::Nothing;
        }
        let index = (0..slot).filter(|&k| feeds_widget(def, k)).count();
        match values.and_then(Json::as_array).and_then(|a| a.get(index)) {
            Some(v) => InstanceInput::Value(v.clone()),
            None => InstanceInput::Nothing,
        }
    }
}

enum InstanceInput {
    Link(u64),
    Value(Json),
    Nothing,
}

/// Whether definition input `slot` feeds an inner node's widget (a widget turned into an input).
fn feeds_widget(def: &Json, slot: usize) -> bool {
    let links: Vec<_> = array(def, "links").iter().filter_map(read_link).collect();
    let nodes = array(def, "nodes");
    links.iter().filter(|l| l.1 == SUBGRAPH_INPUTS && l.2 == slot).any(|l| {
        let target = nodes.iter().find(|n| n.get("id").and_then(Json::as_i64) == Some(l.3));
        let input = target.and_then(|n| n.get("inputs")).and_then(|i| i.get(l.4));
        input.is_some_and(|i| i.get("widget").is_some())
    })
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
