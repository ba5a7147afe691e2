//! Validation of a parsed graph against the node registry: kinds, ports,
//! types, params, cycles. Collects every problem before reporting, and never
//! touches model or input files.

use std::collections::BTreeMap;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};

use super::schema::{Graph, GraphNode, Link};
use super::spanned::{Pos, Spanned};
use crate::error::{Diagnostic, GraphErrors, Part};
use crate::node::{NodeKind, NodeSchema, ParamValue};
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
    let mut check = Checker { graph: &graph, registry, errs: Vec::new() };
    // Every link whose endpoints exist, for cycle detection even among broken nodes.
    let mut links: Vec<(usize, usize)> = Vec::new();
    let valid: Vec<Option<ValidNode>> =
        graph.nodes.iter().enumerate().map(|(ni, node)| check.node(ni, node, &mut links)).collect();
    check.cycles(&links);
    check.whole_graph(&valid);
    let mut errs = check.errs;
    if !errs.is_empty() {
        errs.sort_by_key(|e| (e.line.unwrap_or(u32::MAX), e.col.unwrap_or(0)));
        return Err(GraphErrors(errs));
    }
    let nodes: Vec<ValidNode> = valid.into_iter().flatten().collect();
    let mut dag: DiGraph<usize, PortType> = DiGraph::new();
    let idx: Vec<NodeIndex> = (0..graph.nodes.len()).map(|i| dag.add_node(i)).collect();
    for (ni, n) in nodes.iter().enumerate() {
        for e in &n.inputs {
            dag.add_edge(idx[e.from], idx[ni], e.ty);
        }
    }
    Ok(ValidGraph { graph, nodes, dag })
}

/// `msg` with " (did you mean X?)" when a name in `names` is close to `wanted`.
fn with_suggestion<'n>(mut msg: String, wanted: &str, names: impl IntoIterator<Item = &'n str>) -> (String, bool) {
    match nearest(wanted, names) {
        Some(near) => {
            msg.push_str(&format!(" (did you mean {near:?}?)"));
            (msg, true)
        }
        None => (msg, false),
    }
}

/// One validation pass: the graph, the registry, and every problem so far.
struct Checker<'a> {
    graph: &'a Graph,
    registry: &'a Registry,
    errs: Vec<Diagnostic>,
}

/// Where a checked link goes: an input port, or a param driven by a link.
struct LinkTarget {
    ty: PortType,
    to_param: bool,
}

impl Checker<'_> {
    fn diag(&self, pos: Pos, node: &GraphNode, msg: String) -> Diagnostic {
        Diagnostic::new(&self.graph.file, Some(pos), msg).node(&node.id.value)
    }

    /// Checks one node: its kind, links, required inputs and params. `None`
    /// when anything is wrong (the problems are recorded).
    fn node(&mut self, ni: usize, node: &GraphNode, links: &mut Vec<(usize, usize)>) -> Option<ValidNode> {
        let kind = self.registry.get(&node.kind.value);
        if kind.is_none() {
            let msg = format!("unknown node kind {:?}", node.kind.value);
            let (msg, _) = with_suggestion(msg, &node.kind.value, self.registry.names());
            self.errs.push(self.diag(node.kind.pos, node, msg));
        }
        let mut ok = kind.is_some();
        let mut edges = Vec::new();
        let mut linked_params = Vec::new();
        for (port, link) in &node.inputs {
            let schema = kind.map(|k| k.schema());
            // A link to a param counts as giving it, even when the link is
            // wrong (that is reported; "missing param" would only add noise).
            let source_exists = self.graph.nodes.iter().any(|n| n.id.value == link.value.node);
            if let (true, Some(schema)) = (source_exists, schema)
                && schema.find_input(&port.value).is_none()
                && schema.find_param(&port.value).is_some()
            {
                linked_params.push(port.value.clone());
            }
            match self.link(ni, node, port, link, schema, links) {
                Ok(Some(edge)) => edges.push(edge),
                Ok(None) => {}
                Err(()) => ok = false,
            }
        }
        let kind = kind?;
        let schema = kind.schema();
        for inp in &schema.inputs {
            if inp.required && !node.inputs.iter().any(|(p, _)| p.value == inp.name) {
                let msg = format!("missing required input {:?} ({})", inp.name, inp.ty);
                self.errs.push(self.diag(node.pos, node, msg).input(&inp.name));
                ok = false;
            }
        }
        let params = self.params(node, schema, &linked_params, &mut ok);
        edges.sort_by(|a, b| a.port.cmp(&b.port));
        ok.then(|| ValidNode { id: node.id.value.clone(), kind: kind.clone(), params, inputs: edges })
    }

    /// Checks one link into `node`: the source node, the port it feeds, the
    /// source's output and the types. `Ok(None)` when it cannot be checked
    /// further (unknown kinds, reported elsewhere); `Err` when it is wrong.
    fn link(
        &mut self,
        ni: usize,
        node: &GraphNode,
        port: &Spanned<String>,
        link: &Spanned<Link>,
        schema: Option<&NodeSchema>,
        links: &mut Vec<(usize, usize)>,
    ) -> Result<Option<Edge>, ()> {
        let graph = self.graph;
        let Some(from) = graph.nodes.iter().position(|n| n.id.value == link.value.node) else {
            let msg = format!("no node {:?} in the graph (linked as {:?})", link.value.node, link.value.to_string());
            let (msg, _) = with_suggestion(msg, &link.value.node, graph.nodes.iter().map(|n| n.id.value.as_str()));
            self.errs.push(self.diag(link.pos, node, msg).input(&port.value));
            return Err(());
        };
        links.push((from, ni));
        let Some(schema) = schema else { return Ok(None) };
        let target = self.link_target(node, port, schema)?;
        let src = &graph.nodes[from];
        let Some(src_kind) = self.registry.get(&src.kind.value) else { return Ok(None) };
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
            self.errs.push(self.diag(link.pos, node, msg).input(&port.value));
            return Err(());
        };
        if !out.ty.feeds(target.ty) {
            let what = if target.to_param { "param" } else { "input" };
            let msg =
                format!("type mismatch: {} is {}, but {what} {:?} takes {}", link.value, out.ty, port.value, target.ty);
            self.errs.push(self.diag(link.pos, node, msg).input(&port.value));
            return Err(());
        }
        Ok(Some(Edge { port: port.value.clone(), from, output: out_index, to_param: target.to_param, ty: out.ty }))
    }

    /// The input (or linked param) `port` names on `schema`.
    fn link_target(&mut self, node: &GraphNode, port: &Spanned<String>, schema: &NodeSchema) -> Result<LinkTarget, ()> {
        if let Some(inp) = schema.find_input(&port.value) {
            return Ok(LinkTarget { ty: inp.ty, to_param: false });
        }
        if let Some(p) = schema.find_param(&port.value) {
            return Ok(LinkTarget { ty: p.kind.port_type(), to_param: true });
        }
        let names = schema.inputs.iter().map(|i| i.name.as_str()).chain(schema.params.iter().map(|p| p.name.as_str()));
        let msg = format!("{} has no input {:?}", schema.kind, port.value);
        let (mut msg, suggested) = with_suggestion(msg, &port.value, names);
        if !suggested {
            msg.push_str(&format!("; its inputs are {}", list_or_none(schema.inputs.iter().map(|i| i.name.as_str()))));
        }
        self.errs.push(self.diag(port.pos, node, msg).input(&port.value));
        Err(())
    }

    /// The node's params: given values checked and normalised, defaults for
    /// the rest; clears `ok` on any problem.
    fn params(
        &mut self,
        node: &GraphNode,
        schema: &NodeSchema,
        linked: &[String],
        ok: &mut bool,
    ) -> BTreeMap<String, ParamValue> {
        let mut params = BTreeMap::new();
        for (name, value) in &node.params {
            let Some(spec) = schema.find_param(&name.value) else {
                let msg = self.unknown_param_message(schema, &name.value);
                self.errs.push(self.diag(name.pos, node, msg).param(&name.value));
                *ok = false;
                continue;
            };
            if linked.contains(&name.value) {
                let msg = format!("{:?} is given both as a param and as a linked input", name.value);
                self.errs.push(self.diag(name.pos, node, msg).param(&name.value));
                *ok = false;
                continue;
            }
            match spec.kind.check(&value.value) {
                Ok(v) => {
                    params.insert(name.value.clone(), v);
                }
                Err(why) => {
                    self.errs.push(self.diag(value.pos, node, why).param(&name.value));
                    *ok = false;
                }
            }
        }
        for spec in &schema.params {
            let given = node.params.iter().any(|(k, _)| k.value == spec.name); // if invalid, already reported
            if params.contains_key(&spec.name) || linked.contains(&spec.name) || given {
                continue;
            }
            match &spec.default {
                Some(v) => {
                    params.insert(spec.name.clone(), v.clone());
                }
                None => {
                    let msg = format!("missing required param {:?} ({})", spec.name, spec.kind.expected());
                    self.errs.push(self.diag(node.pos, node, msg).part(Part::Param(spec.name.clone())));
                    *ok = false;
                }
            }
        }
        params
    }

    fn unknown_param_message(&self, schema: &NodeSchema, name: &str) -> String {
        if schema.find_input(name).is_some() {
            return format!("{name:?} is an input port, not a param: connect it in `inputs` as \"node.output\"");
        }
        let msg = format!("{} has no param {:?}", schema.kind, name);
        let (mut msg, suggested) = with_suggestion(msg, name, schema.params.iter().map(|p| p.name.as_str()));
        if !suggested {
            msg.push_str(&format!("; its params are {}", list_or_none(schema.params.iter().map(|p| p.name.as_str()))));
        }
        msg
    }

    /// Cycles, reported over every link whose endpoints exist, so a cycle is
    /// found even when its nodes have other problems too.
    fn cycles(&mut self, links: &[(usize, usize)]) {
        let graph = self.graph;
        let mut all_links = DiGraph::<usize, ()>::new();
        let all_idx: Vec<NodeIndex> = (0..graph.nodes.len()).map(|i| all_links.add_node(i)).collect();
        for &(a, b) in links {
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
            let msg = format!("cycle: {} -> {:?}", names.join(" -> "), first.id.value);
            self.errs.push(self.diag(first.pos, first, msg));
        }
    }

    /// Problems of the graph as a whole: no nodes, or nothing that outputs.
    fn whole_graph(&mut self, valid: &[Option<ValidNode>]) {
        let nodes = &self.graph.nodes;
        let no_output = valid.iter().flatten().all(|n| !n.kind.schema().output_node);
        if !nodes.is_empty() && no_output && self.errs.is_empty() {
            self.errs.push(Diagnostic::new(
                &self.graph.file,
                None,
                "the graph has no output node (such as SaveImage), so running it would do nothing",
            ));
        }
        if nodes.is_empty() {
            self.errs.push(Diagnostic::new(&self.graph.file, None, "the graph has no nodes"));
        }
    }
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
