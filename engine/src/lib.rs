//! sdgraph's engine: graph files, validation, scheduling, execution.
//!
//! - [`gpu`]: wgpu device, tensors, WGSL kernel launchers and their f64 references
//! - [`graph`]: RON reading with positions, the graph schema, `--set`, validation
//! - [`node`]: node schemas and the `NodeKind` trait
//! - [`registry`]: the set of node kinds
//! - [`plugin`]: Lua plugin node kinds, sandboxed
//! - [`schedule`]: which nodes run, in what order
//! - [`exec`]: the executor, its cache, progress reporting
//! - [`types`], [`value`]: port types and run-time values
//! - [`watch`]: the files a graph reads, and a debounced wait for changes
//! - [`error`]: diagnostics that name file, line, column, node and port

pub mod error;
pub mod exec;
pub mod gpu;
pub mod graph;
pub mod node;
pub mod plugin;
pub mod registry;
pub mod schedule;
pub mod suggest;
pub mod types;
pub mod value;
pub mod watch;

pub use error::{Diagnostic, GraphErrors};
pub use node::{NodeError, NodeInputs, NodeKind, NodeSchema, ParamKind, ParamValue, RunContext};
pub use registry::Registry;
pub use types::PortType;
pub use value::{Image, Mask, Value};
