//! Errors for people: every problem in a graph names the file, line and
//! column, the node and the port or param, and what was expected.

use serde::Serialize;

use crate::spanned::Pos;

/// Which part of a node a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Part {
    Input(String),
    Output(String),
    Param(String),
}

/// One problem found in a graph (or in a `--set` override).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// The file as the user named it, or `--set` for command-line overrides.
    pub file: String,
    /// Where in `file`; `None` when there is no better place than the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub col: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &str, pos: Option<Pos>, message: impl Into<String>) -> Self {
        // A value from `--set` is reported against the command line.
        let (file, pos) = match pos {
            Some(p) if p.is_command_line() => ("--set", None),
            _ => (file, pos),
        };
        Self {
            file: file.to_string(),
            line: pos.map(|p| p.line),
            col: pos.map(|p| p.col),
            node: None,
            part: None,
            message: message.into(),
        }
    }

    pub fn node(mut self, id: &str) -> Self {
        self.node = Some(id.to_string());
        self
    }

    pub fn part(mut self, part: Part) -> Self {
        self.part = Some(part);
        self
    }

    pub fn input(self, name: &str) -> Self {
        self.part(Part::Input(name.into()))
    }

    pub fn param(self, name: &str) -> Self {
        self.part(Part::Param(name.into()))
    }
}

impl std::fmt::Display for Diagnostic {
    /// `file:line:col: node "id", param "steps": message`, the shape
    /// compilers use, so editors can jump to it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.col) {
            write!(f, ":{l}:{c}")?;
        }
        f.write_str(": ")?;
        if let Some(node) = &self.node {
            write!(f, "node {node:?}")?;
            match &self.part {
                Some(Part::Input(p)) => write!(f, ", input {p:?}")?,
                Some(Part::Output(p)) => write!(f, ", output {p:?}")?,
                Some(Part::Param(p)) => write!(f, ", param {p:?}")?,
                None => {}
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// A graph that failed to load or validate: every problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct GraphErrors(pub Vec<Diagnostic>);

fn render(d: &[Diagnostic]) -> String {
    d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}
