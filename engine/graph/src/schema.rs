//! The graph file's shape: a map of node ids to `(kind, inputs, params)`,
//! read from the spanned RON tree so every part keeps its position.
//!
//! ```ron
//! (
//!     nodes: {
//!         "load":  (kind: "LoadImage", params: { "image": "in.png" }),
//!         "save":  (kind: "SaveImage", inputs: { "images": "load.image" }),
//!     },
//! )
//! ```

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::spanned::{Pos, RonValue, SValue, Spanned};
use crate::error::Diagnostic;
use crate::node::ParamValue;

/// Longest accepted node id, port or param name.
pub const MAX_NAME_LEN: usize = 128;
/// Most nodes in one graph: far above any real workflow, low enough that
/// validation of a hostile file stays fast.
pub const MAX_NODES: usize = 10_000;

/// An input's source: `"node.output"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub node: String,
    pub output: String,
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.node, self.output)
    }
}

/// One node as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    pub id: Spanned<String>,
    pub kind: Spanned<String>,
    pub inputs: Vec<(Spanned<String>, Spanned<Link>)>,
    pub params: Vec<(Spanned<String>, Spanned<ParamValue>)>,
    /// Position of the node's `(...)`, for problems with the node as a whole.
    pub pos: Pos,
}

impl GraphNode {
    pub fn param(&self, name: &str) -> Option<&Spanned<ParamValue>> {
        self.params.iter().find(|(k, _)| k.value == name).map(|(_, v)| v)
    }
}

/// A node as [`Graph::structure`] gives it: id, kind, inputs (`"node.output"`), params.
pub type NodeStructure = (String, String, Vec<(String, String)>, Vec<(String, ParamValue)>);

/// A parsed graph file (structure only; not yet checked against node kinds).
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The file name as the user gave it, used in every diagnostic.
    pub file: String,
    /// Nodes in file order.
    pub nodes: Vec<GraphNode>,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&GraphNode> {
        self.nodes.iter().find(|n| n.id.value == id)
    }

    /// Reads the graph's structure from a RON tree. Collects every structural
    /// problem rather than stopping at the first.
    pub fn from_ron(file: &str, root: &SValue) -> Result<Graph, Vec<Diagnostic>> {
        let mut errs = Vec::new();
        let mut graph = Graph { file: file.to_string(), nodes: Vec::new() };
        let d = |pos: Pos, msg: String| Diagnostic::new(file, Some(pos), msg);

        let fields = match &root.value {
            RonValue::Struct { fields, .. } => fields,
            RonValue::Map(_) => {
                errs.push(d(
                    root.pos,
                    "expected the graph as `(nodes: { ... })`, found a map; wrap it in `(nodes: ...)`".into(),
                ));
                return Err(errs);
            }
            other => {
                errs.push(d(
                    root.pos,
                    format!("expected the graph as `(nodes: {{ ... }})`, found {}", other.describe()),
                ));
                return Err(errs);
            }
        };
        let mut nodes_val = None;
        for (name, v) in fields {
            match name.value.as_str() {
                "nodes" if nodes_val.is_some() => errs.push(d(name.pos, "field `nodes` is given twice".into())),
                "nodes" => nodes_val = Some(v),
                other => errs.push(d(name.pos, format!("unknown field `{other}`; the graph has only `nodes`"))),
            }
        }
        let Some(nodes_val) = nodes_val else {
            errs.push(d(root.pos, "missing field `nodes`".into()));
            return Err(errs);
        };
        let entries = match &nodes_val.value {
            RonValue::Map(entries) => entries,
            other => {
                errs.push(d(
                    nodes_val.pos,
                    format!("`nodes` must be a map of node ids to nodes, found {}", other.describe()),
                ));
                return Err(errs);
            }
        };
        if entries.len() > MAX_NODES {
            errs.push(d(
                nodes_val.pos,
                format!("the graph has {} nodes, more than the limit of {MAX_NODES}", entries.len()),
            ));
            return Err(errs);
        }
        for (key, node) in entries {
            let Some(id) = node_id(file, key, &mut errs) else { continue };
            if let Some(prev) = graph.node(&id.value) {
                errs.push(d(id.pos, format!("node id {:?} is used twice (first at {})", id.value, prev.id.pos)));
                continue;
            }
            if let Some(n) = read_node(file, id, node, &mut errs) {
                graph.nodes.push(n);
            }
        }
        if errs.is_empty() { Ok(graph) } else { Err(errs) }
    }

    /// Every node without positions, as `(id, kind, inputs as "node.output", params)`, in file order: what two
    /// graphs read from different texts are compared by.
    pub fn structure(&self) -> Vec<NodeStructure> {
        self.nodes
            .iter()
            .map(|n| {
                (
                    n.id.value.clone(),
                    n.kind.value.clone(),
                    n.inputs.iter().map(|(k, v)| (k.value.clone(), v.value.to_string())).collect(),
                    n.params.iter().map(|(k, v)| (k.value.clone(), v.value.clone())).collect(),
                )
            })
            .collect()
    }

    /// The graph as RON text (used to embed the graph that was actually run,
    /// `--set` overrides included, into outputs).
    pub fn to_ron(&self) -> String {
        let cfg = ron::ser::PrettyConfig::new().indentor("    ").new_line("\n");
        // Serialising our own plain types cannot fail.
        ron::ser::to_string_pretty(&GraphOut(self), cfg).unwrap_or_default()
    }
}

fn node_id(file: &str, key: &SValue, errs: &mut Vec<Diagnostic>) -> Option<Spanned<String>> {
    let RonValue::Str(id) = &key.value else {
        errs.push(Diagnostic::new(
            file,
            Some(key.pos),
            format!("a node id must be a string, found {}", key.value.describe()),
        ));
        return None;
    };
    match check_name(id) {
        Ok(()) if !id.contains('.') => Some(Spanned::new(id.clone(), key.pos)),
        Ok(()) => {
            errs.push(Diagnostic::new(
                file,
                Some(key.pos),
                format!("node id {id:?} must not contain '.', which separates node and output in links"),
            ));
            None
        }
        Err(why) => {
            errs.push(Diagnostic::new(file, Some(key.pos), format!("bad node id {id:?}: {why}")));
            None
        }
    }
}

/// Names must be short, non-empty and printable: they end up in messages, DOT files and JSON.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("it contains control characters".into());
    }
    Ok(())
}

fn read_node(file: &str, id: Spanned<String>, v: &SValue, errs: &mut Vec<Diagnostic>) -> Option<GraphNode> {
    let nd = |pos: Pos, msg: String| Diagnostic::new(file, Some(pos), msg).node(&id.value);
    let RonValue::Struct { fields, .. } = &v.value else {
        errs.push(nd(
            v.pos,
            format!("expected `(kind: \"...\", inputs: {{...}}, params: {{...}})`, found {}", v.value.describe()),
        ));
        return None;
    };
    let before = errs.len();
    let mut kind = None;
    let mut inputs = Vec::new();
    let mut params: Vec<(Spanned<String>, Spanned<ParamValue>)> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (name, fv) in fields {
        if seen.contains(&name.value.as_str()) {
            errs.push(nd(name.pos, format!("field `{}` is given twice", name.value)));
            continue;
        }
        seen.push(&name.value);
        match name.value.as_str() {
            "kind" => match &fv.value {
                RonValue::Str(s) => kind = Some(Spanned::new(s.clone(), fv.pos)),
                o => {
                    errs.push(nd(fv.pos, format!("`kind` must be a string naming a node kind, found {}", o.describe())))
                }
            },
            "inputs" => {
                for (k, lv) in map_entries(file, &id.value, "inputs", fv, errs) {
                    match &lv.value {
                        RonValue::Str(s) => match parse_link(s) {
                            Ok(link) => inputs.push((k, Spanned::new(link, lv.pos))),
                            Err(why) => errs.push(nd(lv.pos, why).input(&k.value)),
                        },
                        o => errs.push(
                            nd(lv.pos, format!("expected a link \"node.output\", found {}", o.describe()))
                                .input(&k.value),
                        ),
                    }
                }
            }
            "params" => {
                for (k, pv) in map_entries(file, &id.value, "params", fv, errs) {
                    match param_value(&pv.value) {
                        Some(p) => params.push((k, Spanned::new(p, pv.pos))),
                        None => errs.push(
                            nd(pv.pos, format!("expected a number, string or bool, found {}", pv.value.describe()))
                                .param(&k.value),
                        ),
                    }
                }
            }
            other => {
                errs.push(nd(name.pos, format!("unknown field `{other}`; a node has `kind`, `inputs` and `params`")))
            }
        }
    }
    let Some(kind) = kind else {
        errs.push(nd(v.pos, "missing field `kind`".into()));
        return None;
    };
    (errs.len() == before).then_some(GraphNode { id, kind, inputs, params, pos: v.pos })
}

/// The entries of an `inputs`/`params` map, with string keys checked.
fn map_entries<'a>(
    file: &str,
    node: &str,
    field: &str,
    v: &'a SValue,
    errs: &mut Vec<Diagnostic>,
) -> Vec<(Spanned<String>, &'a SValue)> {
    let RonValue::Map(entries) = &v.value else {
        errs.push(
            Diagnostic::new(
                file,
                Some(v.pos),
                format!("`{field}` must be a map {{ \"name\": value }}, found {}", v.value.describe()),
            )
            .node(node),
        );
        return vec![];
    };
    let mut out: Vec<(Spanned<String>, &SValue)> = Vec::new();
    for (k, val) in entries {
        let RonValue::Str(name) = &k.value else {
            errs.push(
                Diagnostic::new(
                    file,
                    Some(k.pos),
                    format!("a name in `{field}` must be a string, found {}", k.value.describe()),
                )
                .node(node),
            );
            continue;
        };
        if let Err(why) = check_name(name) {
            errs.push(Diagnostic::new(file, Some(k.pos), format!("bad name in `{field}` {name:?}: {why}")).node(node));
            continue;
        }
        if out.iter().any(|(o, _)| o.value == *name) {
            errs.push(Diagnostic::new(file, Some(k.pos), format!("{name:?} is given twice in `{field}`")).node(node));
            continue;
        }
        out.push((Spanned::new(name.clone(), k.pos), val));
    }
    out
}

/// Splits `"node.output"` at the last dot.
pub fn parse_link(s: &str) -> Result<Link, String> {
    match s.rsplit_once('.') {
        Some((node, output)) if !node.is_empty() && !output.is_empty() => {
            Ok(Link { node: node.to_string(), output: output.to_string() })
        }
        _ => Err(format!("expected a link \"node.output\", found {s:?}")),
    }
}

/// A RON scalar as a parameter value; `None` for lists, maps and the like.
pub fn param_value(v: &RonValue) -> Option<ParamValue> {
    Some(match v {
        RonValue::Int(i) => ParamValue::Int(*i),
        RonValue::Float(f) => ParamValue::Float(*f),
        RonValue::Bool(b) => ParamValue::Bool(*b),
        RonValue::Str(s) => ParamValue::String(s.clone()),
        RonValue::Char(c) => ParamValue::String(c.to_string()),
        _ => return None,
    })
}

/// Serialises a graph as `(nodes: { id: (kind, inputs, params) })` in file order.
struct GraphOut<'a>(&'a Graph);

struct NodesOut<'a>(&'a [GraphNode]);
struct NodeOut<'a>(&'a GraphNode);
struct InputsOut<'a>(&'a [(Spanned<String>, Spanned<Link>)]);
struct ParamsOut<'a>(&'a [(Spanned<String>, Spanned<ParamValue>)]);

impl Serialize for GraphOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Graph", 1)?;
        st.serialize_field("nodes", &NodesOut(&self.0.nodes))?;
        st.end()
    }
}
impl Serialize for NodesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for n in self.0 {
            m.serialize_entry(&n.id.value, &NodeOut(n))?;
        }
        m.end()
    }
}
impl Serialize for NodeOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Node", 3)?;
        st.serialize_field("kind", &self.0.kind.value)?;
        if !self.0.inputs.is_empty() {
            st.serialize_field("inputs", &InputsOut(&self.0.inputs))?;
        }
        if !self.0.params.is_empty() {
            st.serialize_field("params", &ParamsOut(&self.0.params))?;
        }
        st.end()
    }
}
impl Serialize for InputsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(&k.value, &v.value.to_string())?;
        }
        m.end()
    }
}
impl Serialize for ParamsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(&k.value, &v.value)?;
        }
        m.end()
    }
}
