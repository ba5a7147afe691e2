//! Reading a graph file's bytes into a [`Graph`](crate::Graph) (size, encoding and
//! depth limits first), and `--set` overrides.

use crate::error::{Diagnostic, GraphErrors};
use crate::node::ParamValue;
use crate::ron_reader::{self, ReadLimits};
use crate::schema::{self, Graph};
use crate::spanned::{Pos, RonValue, Spanned};

/// Reads a graph from the raw bytes of a file named `file`. Rejects binary
/// data, bad UTF-8, oversized and over-deep files with a positioned error.
pub fn parse_graph(file: &str, bytes: &[u8]) -> Result<Graph, GraphErrors> {
    let limits = ReadLimits::default();
    let one = |pos: Option<Pos>, msg: String| GraphErrors(vec![Diagnostic::new(file, pos, msg)]);
    if bytes.len() > limits.max_bytes {
        return Err(one(
            None,
            format!("file is {} bytes, larger than the limit of {} bytes for a graph", bytes.len(), limits.max_bytes),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let pos = pos_of(bytes, e.valid_up_to());
            return Err(one(
                Some(pos),
                "not a text file: invalid UTF-8 (is this an image or other binary file?)".into(),
            ));
        }
    };
    if let Some(i) = text.find('\0') {
        return Err(one(Some(pos_of(bytes, i)), "not a text file: contains NUL bytes".into()));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = ron_reader::read(text, limits).map_err(|e| one(Some(e.pos), format!("malformed RON: {}", e.message)))?;
    Graph::from_ron(file, &root).map_err(GraphErrors)
}

fn pos_of(bytes: &[u8], offset: usize) -> Pos {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..]).chars().count() as u32 + 1;
    Pos { offset, line, col }
}

/// A command-line override `node.param=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOverride {
    pub node: String,
    pub param: String,
    pub value: ParamValue,
}

impl SetOverride {
    /// Parses `node.param=value`. The value is read as a RON literal (`7`,
    /// `7.5`, `true`, `"a cat"`); anything else is taken as a plain string,
    /// so `--set pos.text=a cat` works without quotes.
    pub fn parse(arg: &str) -> Result<SetOverride, String> {
        let (target, raw) = arg.split_once('=').ok_or_else(|| format!("--set {arg:?}: expected node.param=value"))?;
        let (node, param) = target
            .rsplit_once('.')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("--set {arg:?}: expected node.param=value, found no '.' in {target:?}"))?;
        let limits = ReadLimits { max_bytes: 1 << 20, max_depth: 4 };
        let value = match ron_reader::read(raw, limits) {
            Ok(v) => match schema::param_value(&v.value) {
                Some(p) => p,
                None if matches!(v.value, RonValue::Ident(_)) => ParamValue::String(raw.to_string()),
                None => {
                    return Err(format!(
                        "--set {arg:?}: expected a number, string or bool, found {}",
                        v.value.describe()
                    ));
                }
            },
            Err(_) => ParamValue::String(raw.to_string()),
        };
        Ok(SetOverride { node: node.to_string(), param: param.to_string(), value })
    }
}

impl Graph {
    /// Applies overrides in order. An override of a node that does not exist
    /// is an error here; unknown params are caught by validation like any other.
    pub fn apply_overrides(&mut self, sets: &[SetOverride]) -> Result<(), GraphErrors> {
        let mut errs = Vec::new();
        for s in sets {
            let Some(node) = self.nodes.iter_mut().find(|n| n.id.value == s.node) else {
                let mut msg = format!("--set {}.{}: no node {:?} in the graph", s.node, s.param, s.node);
                let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.value.as_str()).collect();
                if let Some(near) = crate::suggest::nearest(&s.node, ids) {
                    msg.push_str(&format!(" (did you mean {near:?}?)"));
                }
                errs.push(Diagnostic::new("--set", None, msg));
                continue;
            };
            // Diagnostics about an overridden value point at the command line.
            let pos = Pos::COMMAND_LINE;
            let value = Spanned::new(s.value.clone(), pos);
            match node.params.iter_mut().find(|(k, _)| k.value == s.param) {
                Some((_, v)) => *v = value,
                None => node.params.push((Spanned::new(s.param.clone(), pos), value)),
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(GraphErrors(errs)) }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_written_as_ron_reads_back_equal() {
        let src = br#"// comment
        (nodes: {
            "b": (kind: "K", inputs: { "x": "a.out" }, params: { "w": 1.0, "n": -3, "s": "q\"uote\n", "f": false, "seed": 18446744073709551615 }),
            "a": (kind: "J"),
        })"#;
        let g = parse_graph("x.ron", src).unwrap();
        let text = g.to_ron();
        let again = parse_graph("x.ron", text.as_bytes()).unwrap();
        assert_eq!(g.structure(), again.structure(), "{text}");
        assert!(matches!(again.nodes[0].param("w").unwrap().value, ParamValue::Float(_)), "{text}");
        assert_eq!(again.nodes[0].id.value, "b", "file order is kept");
    }
}
