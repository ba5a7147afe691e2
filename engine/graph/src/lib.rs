//! sdgraph's graph engine: graph files, validation, scheduling, execution,
//! the cache and `watch`. It knows nothing of GPUs, models or Lua: node kinds
//! come in through [`Registry`] as [`NodeKind`] trait objects.
//!
//! - [`format`]: reading a file's bytes, `--set` overrides; [`ron_reader`], [`spanned`]: RON with positions
//! - [`schema`]: the graph as written; [`validate`]: checked against the registry, every error at once
//! - [`node`]: node schemas and the `NodeKind` trait; [`fields`]: a kind's inputs and params declared
//!   once, as a struct; [`registry`]: the set of node kinds
//! - [`schedule`]: which nodes run, in what order
//! - [`exec`]: the executor, its cache, progress reporting, provenance
//! - [`types`], [`value`]: port types and run-time values
//! - [`watch`]: the files a graph reads, and a debounced wait for changes
//! - [`codec`]: opaque values as plain data, for the Lua host
//! - [`comfy`]: ComfyUI workflows (API and UI JSON) imported as graphs
//! - [`error`]: diagnostics that name file, line, column, node and port

pub mod codec;
pub mod comfy;
pub mod error;
pub mod exec;
pub mod fields;
pub mod format;
pub mod node;
pub mod registry;
pub mod ron_reader;
pub mod schedule;
pub mod schema;
pub mod spanned;
pub mod suggest;
pub mod types;
pub mod validate;
pub mod value;
pub mod watch;

pub use error::{Diagnostic, GraphErrors};
pub use format::{SetOverride, parse_graph};
pub use node::{NodeError, NodeInputs, NodeKind, NodeSchema, ParamKind, ParamValue, RunContext};
pub use registry::Registry;
pub use ron_reader::ReadLimits;
pub use schema::{Graph, GraphNode, Link};
pub use types::PortType;
pub use validate::{ValidGraph, validate};
pub use value::{Image, Mask, Payload, Value};
