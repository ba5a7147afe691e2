//! Validation of a parsed graph against the node registry: kinds, ports,
//! types, params, cycles. Collects every problem before reporting, and never
//! touches model or input files.

use std::collections::BTreeMap;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};

use super::schema::{Graph, GraphNode};
use super::spanned::Pos;
use crate::error::{Diagnostic, GraphErrors, Part};
use crate::node::{NodeKind, ParamValue};
use crate::registry::Registry;
use crate::suggest::nearest;
use crate::types::PortType;

/// One connection into a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// The input port (or, for a linked param, the param) it feeds.
    pub port: String,
    /// Index of the source node in `ValidGraph::nodes`.
    pub from: usize,
    /// Index of the source node's output.
    pub output: usize,
    /// True when the edge drives a parameter instead of an input port.
    pub to_param: bool,
    pub ty: PortType,
}

/// A node that passed validation.
pub struct ValidNode {
    pub id: String,
    pub kind: Arc<dyn NodeKind>,
    /// Every param not driven by a link: given values (normalised) and defaults.
    pub params: BTreeMap<String, ParamValue>,
    /// Incoming edges, sorted by port name.
    pub inputs: Vec<Edge>,
}

/// A graph whose every node, port, type and param checked out, with its DAG.
pub struct ValidGraph {
    pub graph: Graph,
    /// Same order as `graph.nodes`.
    pub nodes: Vec<ValidNode>,
    /// Edges run from producer to consumer; node weights index `nodes`.
    pub dag: DiGraph<usize, PortType>,
}

impl ValidGraph {
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }
}

/// Checks `graph` against `registry`; returns every problem found.
pub fn validate(graph: Graph, registry: &Registry) -> Result<ValidGraph, GraphErrors> {
    let file = graph.file.clone();
    let mut errs: Vec<Diagnostic> = Vec::new();
    let d = |pos: Pos, node: &GraphNode, msg: String| Diagnostic::new(&file, Some(pos), msg).node(&node.id.value);

    let mut valid: Vec<Option<ValidNode>> = Vec::with_capacity(graph.nodes.len());
    // Every link whose endpoints exist, for cycle detection even among broken nodes.
    let mut links: Vec<(usize, usize)> = Vec::new();

    for (ni, node) in graph.nodes.iter().enumerate() {
        let kind = registry.get(&node.kind.value);
        if kind.is_none() {
            let mut msg = format!("unknown node kind {:?}", node.kind.value);
            if let Some(near) = nearest(&node.kind.value, registry.names()) {
                msg.push_str(&format!(" (did you mean {near:?}?)"));
            }
            errs.push(d(node.kind.pos, node, msg));
        }
        let schema = kind.map(|k| k.schema());
        let mut ok = kind.is_some();
        let mut edges = Vec::new();
        let mut linked_params = Vec::new();

        for (port, link) in &node.inputs {
            let from = graph.nodes.iter().position(|n| n.id.value == link.value.node);
            let Some(from) = from else {
                let mut msg =
                    format!("no node {:?} in the graph (linked as {:?})", link.value.node, link.value.to_string());
                let ids = graph.nodes.iter().map(|n| n.id.value.as_str());
                if let Some(near) = nearest(&link.value.node, ids) {
                    msg.push_str(&format!(" (did you mean {near:?}?)"));
                }
                errs.push(d(link.pos, node, msg).input(&port.value));
                ok = false;
                continue;
            };
            links.push((from, ni));
            let Some(schema) = schema else { continue };
            // The port this link feeds: an input, or a param driven by a link.
            let (want, to_param) = if let Some(inp) = schema.find_input(&port.value) {
                (inp.ty, false)
            } else if let Some(p) = schema.find_param(&port.value) {
                linked_params.push(port.value.clone());
                (p.kind.port_type(), true)
            } else {
                let names =
                    schema.inputs.iter().map(|i| i.name.as_str()).chain(schema.params.iter().map(|p| p.name.as_str()));
                let mut msg = format!("{} has no input {:?}", schema.kind, port.value);
                if let Some(near) = nearest(&port.value, names) {
                    msg.push_str(&format!(" (did you mean {near:?}?)"));
                } else {
                    msg.push_str(&format!(
                        "; its inputs are {}",
                        list_or_none(schema.inputs.iter().map(|i| i.name.as_str()))
                    ));
                }
                errs.push(d(port.pos, node, msg).input(&port.value));
                ok = false;
                continue;
            };
            let src = &graph.nodes[from];
            let Some(src_kind) = registry.get(&src.kind.value) else { continue };
            let src_schema = src_kind.schema();
            let Some((out_index, out)) = src_schema.find_output(&link.value.output) else {
                let names = src_schema.outputs.iter().map(|o| o.name.as_str());
                let mut msg =
                    format!("node {:?} ({}) has no output {:?}", src.id.value, src_schema.kind, link.value.output);
                if let Some(near) = nearest(&link.value.output, names.clone()) {
                    msg.push_str(&format!(" (did you mean {:?}?)", format!("{}.{near}", src.id.value)));
                } else {
                    msg.push_str(&format!("; its outputs are {}", list_or_none(names)));
                }
                errs.push(d(link.pos, node, msg).input(&port.value));
                ok = false;
                continue;
            };
            if !out.ty.feeds(want) {
                let what = if to_param { "param" } else { "input" };
                errs.push(
                    d(
                        link.pos,
                        node,
                        format!(
                            "type mismatch: {} is {}, but {what} {:?} takes {}",
                            link.value, out.ty, port.value, want
                        ),
                    )
                    .input(&port.value),
                );
                ok = false;
                continue;
            }
            edges.push(Edge { port: port.value.clone(), from, output: out_index, to_param, ty: out.ty });
        }

        let Some(kind) = kind else {
            valid.push(None);
            continue;
        };
        let schema = kind.schema();
        for inp in &schema.inputs {
            if inp.required && !node.inputs.iter().any(|(p, _)| p.value == inp.name) {
                errs.push(
                    d(node.pos, node, format!("missing required input {:?} ({})", inp.name, inp.ty)).input(&inp.name),
                );
                ok = false;
            }
        }

        let mut params = BTreeMap::new();
        for (name, value) in &node.params {
            let Some(spec) = schema.find_param(&name.value) else {
                let mut msg = format!("{} has no param {:?}", schema.kind, name.value);
                if schema.find_input(&name.value).is_some() {
                    msg = format!(
                        "{:?} is an input port, not a param: connect it in `inputs` as \"node.output\"",
                        name.value
                    );
                } else if let Some(near) = nearest(&name.value, schema.params.iter().map(|p| p.name.as_str())) {
                    msg.push_str(&format!(" (did you mean {near:?}?)"));
                } else {
                    msg.push_str(&format!(
                        "; its params are {}",
                        list_or_none(schema.params.iter().map(|p| p.name.as_str()))
                    ));
                }
                errs.push(d(name.pos, node, msg).param(&name.value));
                ok = false;
                continue;
            };
            if linked_params.contains(&name.value) {
                errs.push(
                    d(name.pos, node, format!("{:?} is given both as a param and as a linked input", name.value))
                        .param(&name.value),
                );
                ok = false;
                continue;
            }
            match spec.kind.check(&value.value) {
                Ok(v) => {
                    params.insert(name.value.clone(), v);
                }
                Err(why) => {
                    errs.push(d(value.pos, node, why).param(&name.value));
                    ok = false;
                }
            }
        }
        for spec in &schema.params {
            if params.contains_key(&spec.name) || linked_params.contains(&spec.name) {
                continue;
            }
            if node.params.iter().any(|(k, _)| k.value == spec.name) {
                continue; // given but invalid: already reported
            }
            match &spec.default {
                Some(v) => {
                    params.insert(spec.name.clone(), v.clone());
                }
                None => {
                    errs.push(
                        d(node.pos, node, format!("missing required param {:?} ({})", spec.name, spec.kind.expected()))
                            .part(Part::Param(spec.name.clone())),
                    );
                    ok = false;
                }
            }
        }
        edges.sort_by(|a, b| a.port.cmp(&b.port));
        valid.push(ok.then(|| ValidNode { id: node.id.value.clone(), kind: kind.clone(), params, inputs: edges }));
    }

    // Cycles: reported over every link whose endpoints exist, so a cycle is
    // found even when its nodes have other problems too.
    let mut dag: DiGraph<usize, PortType> = DiGraph::new();
    let idx: Vec<NodeIndex> = (0..graph.nodes.len()).map(|i| dag.add_node(i)).collect();
    let mut all_links = DiGraph::<usize, ()>::new();
    let all_idx: Vec<NodeIndex> = (0..graph.nodes.len()).map(|i| all_links.add_node(i)).collect();
    for &(a, b) in &links {
        all_links.update_edge(all_idx[a], all_idx[b], ());
    }
    for scc in petgraph::algo::tarjan_scc(&all_links) {
        let is_cycle = scc.len() > 1 || all_links.contains_edge(scc[0], scc[0]);
        if !is_cycle {
            continue;
        }
        let mut members: Vec<usize> = scc.iter().map(|&n| all_links[n]).collect();
        members.sort();
        let first = &graph.nodes[members[0]];
        let names: Vec<String> = cycle_order(&all_links, &all_idx, &members)
            .into_iter()
            .map(|i| format!("{:?}", graph.nodes[i].id.value))
            .collect();
        errs.push(d(first.pos, first, format!("cycle: {} -> {:?}", names.join(" -> "), first.id.value)));
    }

    if !graph.nodes.is_empty() && valid.iter().flatten().all(|n| !n.kind.schema().output_node) && errs.is_empty() {
        errs.push(Diagnostic::new(
            &file,
            None,
            "the graph has no output node (such as SaveImage), so running it would do nothing",
        ));
    }
    if graph.nodes.is_empty() {
        errs.push(Diagnostic::new(&file, None, "the graph has no nodes"));
    }
    if !errs.is_empty() {
        errs.sort_by_key(|e| (e.line.unwrap_or(u32::MAX), e.col.unwrap_or(0)));
        return Err(GraphErrors(errs));
    }

    let nodes: Vec<ValidNode> = valid.into_iter().flatten().collect();
    for (ni, n) in nodes.iter().enumerate() {
        for e in &n.inputs {
            dag.add_edge(idx[e.from], idx[ni], e.ty);
        }
    }
    Ok(ValidGraph { graph, nodes, dag })
}

/// The members of one strongly connected component in the order a walk
/// along its edges visits them, starting at the first in file order.
fn cycle_order(g: &DiGraph<usize, ()>, idx: &[NodeIndex], members: &[usize]) -> Vec<usize> {
    let mut order = vec![members[0]];
    let mut cur = members[0];
    while order.len() < members.len() {
        let next = g.neighbors(idx[cur]).map(|n| g[n]).filter(|m| members.contains(m) && !order.contains(m)).min();
        match next {
            Some(n) => {
                order.push(n);
                cur = n;
            }
            None => break,
        }
    }
    order
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}
