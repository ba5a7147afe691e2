//! What a node kind declares (its schema) and the trait every node kind,
//! built-in or Lua plugin, implements.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::exec::progress::Progress;
use crate::types::PortType;
use crate::value::Value;

/// A parameter's value as written in a graph file (after defaults).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// Wide enough for every i64 and u64 (ComfyUI's seeds run to 2^64 - 1).
    Int(#[serde(serialize_with = "wide_int")] i128),
    Float(f64),
    Bool(bool),
    String(String),
}

/// Writes an integer as i64 or u64 where it fits (every value a graph can hold does), so formats without 128-bit
/// integers (RON as the `ron` crate writes it) take it.
fn wide_int<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
    match (i64::try_from(*v), u64::try_from(*v)) {
        (Ok(v), _) => s.serialize_i64(v),
        (_, Ok(v)) => s.serialize_u64(v),
        _ => s.serialize_i128(*v),
    }
}

impl ParamValue {
    pub fn as_int(&self) -> Option<i128> {
        match self {
            ParamValue::Int(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            ParamValue::Float(v) => Some(*v),
            ParamValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ParamValue::String(v) => Some(v),
            _ => None,
        }
    }

    /// The value as RON source text, for writing graphs back out.
    pub fn to_ron(&self) -> String {
        match self {
            ParamValue::Int(v) => v.to_string(),
            ParamValue::Float(v) => {
                // Keep a decimal point so it reads back as a float.
                let s = format!("{v:?}");
                if s.contains(['.', 'e', 'E', 'N', 'i']) { s } else { format!("{s}.0") }
            }
            ParamValue::Bool(v) => v.to_string(),
            ParamValue::String(v) => format!("{v:?}"),
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_ron())
    }
}

/// What kind of value a parameter takes, and its allowed range.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    Int {
        #[serde(serialize_with = "wide_int")]
        min: i128,
        #[serde(serialize_with = "wide_int")]
        max: i128,
    },
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    String {
        multiline: bool,
    },
    /// One of a fixed list of names.
    Enum {
        values: Vec<String>,
    },
    /// A file path; `check` never touches the file, `run` resolves it
    /// against the graph file's directory.
    Path,
}

impl ParamKind {
    /// The port type a linked input must have to drive this parameter.
    pub fn port_type(&self) -> PortType {
        match self {
            ParamKind::Int { .. } => PortType::Int,
            ParamKind::Float { .. } => PortType::Float,
            ParamKind::Bool => PortType::Bool,
            ParamKind::String { .. } | ParamKind::Enum { .. } | ParamKind::Path => PortType::String,
        }
    }

    /// Human description of what is expected, for error messages.
    pub fn expected(&self) -> String {
        match self {
            ParamKind::Int { min, max } => format!("an integer in {min}..={max}"),
            ParamKind::Float { min, max } => format!("a number in {min}..={max}"),
            ParamKind::Bool => "true or false".into(),
            ParamKind::String { .. } => "a string".into(),
            ParamKind::Enum { values } => format!("one of {}", quote_list(values)),
            ParamKind::Path => "a file path string".into(),
        }
    }

    /// Checks `v` against this kind; returns the normalised value (an Int
    /// given for a Float becomes a Float) or what was wrong.
    pub fn check(&self, v: &ParamValue) -> Result<ParamValue, String> {
        match (self, v) {
            (ParamKind::Int { min, max }, ParamValue::Int(i)) => {
                if i < min || i > max {
                    Err(format!("value {i} is out of range {min}..={max}"))
                } else {
                    Ok(v.clone())
                }
            }
            (ParamKind::Float { min, max }, ParamValue::Int(_) | ParamValue::Float(_)) => {
                let f = v.as_float().unwrap_or(f64::NAN);
                if f.is_nan() || f < *min || f > *max {
                    Err(format!("value {f} is out of range {min}..={max}"))
                } else {
                    Ok(ParamValue::Float(f))
                }
            }
            (ParamKind::Bool, ParamValue::Bool(_)) => Ok(v.clone()),
            (ParamKind::String { .. } | ParamKind::Path, ParamValue::String(_)) => Ok(v.clone()),
            (ParamKind::Enum { values }, ParamValue::String(s)) => {
                if values.iter().any(|x| x == s) {
                    Ok(v.clone())
                } else {
                    let mut msg = format!("{s:?} is not allowed; expected one of {}", quote_list(values));
                    if let Some(near) = crate::suggest::nearest(s, values.iter().map(|s| s.as_str())) {
                        msg.push_str(&format!(" (did you mean {near:?}?)"));
                    }
                    Err(msg)
                }
            }
            _ => Err(format!("expected {}, found {}", self.expected(), describe_param(v))),
        }
    }
}

fn describe_param(v: &ParamValue) -> String {
    match v {
        ParamValue::Int(i) => format!("the integer {i}"),
        ParamValue::Float(f) => format!("the number {f}"),
        ParamValue::Bool(b) => format!("the bool {b}"),
        ParamValue::String(s) => format!("the string {s:?}"),
    }
}

pub(crate) fn quote_list(values: &[String]) -> String {
    values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
}

/// One input port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: PortType,
    /// An optional input may be left unconnected; the node then uses its default behaviour.
    pub required: bool,
    pub doc: String,
}

/// One output port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: PortType,
    pub doc: String,
}

/// One parameter (ComfyUI's "widget").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: ParamKind,
    /// `None` makes the parameter required.
    pub default: Option<ParamValue>,
    pub doc: String,
}

/// Everything a node kind declares about itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSchema {
    pub kind: String,
    pub category: String,
    pub doc: String,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    pub params: Vec<ParamSpec>,
    /// Output nodes (sinks such as SaveImage) are what a run is for: only
    /// nodes that feed one run.
    pub output_node: bool,
    /// Bumped when the node's behaviour changes, so cached results are not reused.
    pub version: u32,
    /// Where the kind comes from: "builtin" or a plugin file path.
    pub source: String,
}

impl NodeSchema {
    pub fn new(kind: &str, category: &str, doc: &str) -> Self {
        Self {
            kind: kind.into(),
            category: category.into(),
            doc: doc.into(),
            inputs: vec![],
            outputs: vec![],
            params: vec![],
            output_node: false,
            version: 1,
            source: "builtin".into(),
        }
    }

    pub fn input(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.inputs.push(InputSpec { name: name.into(), ty, required: true, doc: doc.into() });
        self
    }
    pub fn optional_input(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.inputs.push(InputSpec { name: name.into(), ty, required: false, doc: doc.into() });
        self
    }
    pub fn output(mut self, name: &str, ty: PortType, doc: &str) -> Self {
        self.outputs.push(OutputSpec { name: name.into(), ty, doc: doc.into() });
        self
    }
    pub fn param(mut self, name: &str, kind: ParamKind, default: Option<ParamValue>, doc: &str) -> Self {
        self.params.push(ParamSpec { name: name.into(), kind, default, doc: doc.into() });
        self
    }
    pub fn int(
        self,
        name: &str,
        min: impl Into<i128>,
        max: impl Into<i128>,
        default: impl Into<i128>,
        doc: &str,
    ) -> Self {
        let (min, max) = (min.into(), max.into());
        self.param(name, ParamKind::Int { min, max }, Some(ParamValue::Int(default.into())), doc)
    }
    pub fn float(self, name: &str, min: f64, max: f64, default: f64, doc: &str) -> Self {
        self.param(name, ParamKind::Float { min, max }, Some(ParamValue::Float(default)), doc)
    }
    pub fn bool(self, name: &str, default: bool, doc: &str) -> Self {
        self.param(name, ParamKind::Bool, Some(ParamValue::Bool(default)), doc)
    }
    pub fn string(self, name: &str, default: Option<&str>, doc: &str) -> Self {
        let default = default.map(|s| ParamValue::String(s.into()));
        self.param(name, ParamKind::String { multiline: false }, default, doc)
    }
    pub fn text(self, name: &str, default: &str, doc: &str) -> Self {
        let default = Some(ParamValue::String(default.into()));
        self.param(name, ParamKind::String { multiline: true }, default, doc)
    }
    pub fn choice(self, name: &str, values: &[&str], default: &str, doc: &str) -> Self {
        let values = values.iter().map(|v| v.to_string()).collect();
        self.param(name, ParamKind::Enum { values }, Some(ParamValue::String(default.into())), doc)
    }
    /// A required file path parameter.
    pub fn path(self, name: &str, doc: &str) -> Self {
        self.param(name, ParamKind::Path, None, doc)
    }
    /// Adds a kind's inputs and params as one [`node_fields!`](crate::node_fields) struct declares them.
    pub fn fields(self, declare: fn(NodeSchema) -> NodeSchema) -> Self {
        declare(self)
    }
    pub fn sink(mut self) -> Self {
        self.output_node = true;
        self
    }

    pub fn find_input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|p| p.name == name)
    }
    pub fn find_output(&self, name: &str) -> Option<(usize, &OutputSpec)> {
        self.outputs.iter().enumerate().find(|(_, p)| p.name == name)
    }
    pub fn find_param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// The resolved inputs of one node invocation: connected input values and
/// every parameter (given, linked, or defaulted).
#[derive(Debug, Default, Clone)]
pub struct NodeInputs {
    pub inputs: BTreeMap<String, Value>,
    pub params: BTreeMap<String, ParamValue>,
}

impl NodeInputs {
    pub fn input(&self, name: &str) -> Result<&Value, NodeError> {
        self.inputs.get(name).ok_or_else(|| NodeError::new(format!("input {name:?} is not connected")))
    }
    /// Input `name` as the payload type `T`, with an error naming the input,
    /// the expected and the actual port type when it is something else.
    pub fn get<T: crate::value::Payload>(&self, name: &str) -> Result<std::sync::Arc<T>, NodeError> {
        let v = self.input(name)?;
        v.downcast::<T>()
            .ok_or_else(|| NodeError::new(format!("input {name:?}: expected {}, got {}", T::PORT, v.port_type())))
    }
    pub fn image(&self, name: &str) -> Result<std::sync::Arc<crate::value::Image>, NodeError> {
        match self.input(name)? {
            Value::Image(i) => Ok(i.clone()),
            v => Err(NodeError::new(format!("input {name:?}: expected an Image, got {v:?}"))),
        }
    }
    fn param(&self, name: &str) -> Result<&ParamValue, NodeError> {
        self.params.get(name).ok_or_else(|| NodeError::new(format!("param {name:?} has no value")))
    }
    pub fn int(&self, name: &str) -> Result<i128, NodeError> {
        self.param(name)?.as_int().ok_or_else(|| NodeError::new(format!("param {name:?} is not an integer")))
    }
    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        self.param(name)?.as_float().ok_or_else(|| NodeError::new(format!("param {name:?} is not a number")))
    }
    pub fn bool(&self, name: &str) -> Result<bool, NodeError> {
        self.param(name)?.as_bool().ok_or_else(|| NodeError::new(format!("param {name:?} is not a bool")))
    }
    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        self.param(name)?.as_str().ok_or_else(|| NodeError::new(format!("param {name:?} is not a string")))
    }
    /// A usize param (an Int that the schema's range keeps non-negative).
    pub fn usize(&self, name: &str) -> Result<usize, NodeError> {
        let v = self.int(name)?;
        usize::try_from(v).map_err(|_| NodeError::new(format!("param {name:?} must not be negative, got {v}")))
    }
}

/// A failure while running a node. The executor adds the node id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub message: String,
}

impl NodeError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// A node error from anything printable (a library error, a message): the
/// one helper node kinds use, as `.map_err(err)` or `err(format!(..))`.
pub fn err(e: impl std::fmt::Display) -> NodeError {
    NodeError::new(e.to_string())
}

/// What a node sees of the run besides its inputs.
pub struct RunContext<'a> {
    /// The node's id in the graph.
    pub node_id: &'a str,
    /// Directory relative paths in params are resolved against.
    pub base_dir: &'a Path,
    /// Where output files go.
    pub out_dir: &'a Path,
    /// The graph being run, as RON text, for embedding in outputs.
    pub graph_text: &'a str,
    /// Where long work reports progress (stderr in the CLI).
    pub progress: &'a dyn Progress,
    /// Files this node wrote; reported in the run report.
    pub files_written: Vec<PathBuf>,
    /// Throwaway pictures this node wrote outside the output folder
    /// (PreviewImage); reported apart from `files_written`.
    pub previews_written: Vec<PathBuf>,
    /// Set by Ctrl-C; long nodes poll it and stop early.
    pub cancel: &'a std::sync::atomic::AtomicBool,
    /// Files that determine this node's result (model weights), declared with
    /// [`RunContext::record_input_file`]; their SHA-256 goes in the run report.
    pub files_read: Vec<PathBuf>,
    /// What the nodes upstream of this one recorded with `record_input_file`
    /// (absolute, sorted), for outputs that embed their provenance.
    pub upstream_files: Vec<PathBuf>,
}

impl<'a> RunContext<'a> {
    /// A context with nothing written, read or recorded upstream yet.
    pub fn new(
        node_id: &'a str,
        base_dir: &'a Path,
        out_dir: &'a Path,
        graph_text: &'a str,
        progress: &'a dyn Progress,
        cancel: &'a std::sync::atomic::AtomicBool,
    ) -> Self {
        RunContext {
            node_id,
            base_dir,
            out_dir,
            graph_text,
            progress,
            files_written: vec![],
            previews_written: vec![],
            cancel,
            files_read: vec![],
            upstream_files: vec![],
        }
    }

    /// Declares that this node's result depends on the contents of file
    /// `path` (a checkpoint, a ControlNet...): the run report and saved
    /// PNGs record its SHA-256. Hashing starts now on a background thread
    /// (cached by path, size and mtime), so it overlaps the node's work.
    pub fn record_input_file(&mut self, path: &Path) {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        crate::exec::provenance::HashCache::global().prefetch(&path);
        if !self.files_read.contains(&path) {
            self.files_read.push(path);
        }
    }

    /// The SHA-256 of every file recorded upstream of this node (waiting for
    /// background hashing, but not past Ctrl-C).
    pub fn upstream_digests(&self) -> Vec<crate::exec::provenance::FileDigest> {
        crate::exec::provenance::digests(&self.upstream_files, self.cancel)
    }

    /// Resolves a path param against the graph's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A node kind. Built-in kinds are Rust types; plugins implement it in Lua.
pub trait NodeKind: Send + Sync {
    fn schema(&self) -> &NodeSchema;

    /// Runs the node; returns one value per declared output, in order.
    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError>;

    /// A fingerprint of outside state the result depends on (a loaded file's
    /// size and mtime, say); a change forces a re-run even with equal params.
    /// Called only when running, never by `check`.
    fn fingerprint(&self, _ctx: &RunContext<'_>, _inputs: &NodeInputs) -> Option<String> {
        None
    }

    /// The inputs and params output `output` depends on, when not all of them: nodes fed by it keep
    /// their cache keys when the others change (LoraLoader's CLIP does not depend on
    /// `strength_model`, so the prompts are not encoded again). `None`: every input and param.
    fn output_depends(&self, _output: usize) -> Option<&'static [&'static str]> {
        None
    }
}
