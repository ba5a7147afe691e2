//! Lua plugin nodes: node kinds written in Lua 5.4, loaded from `.lua` files.
//!
//! A plugin file calls `node { kind = ..., inputs = ..., outputs = ...,
//! params = ..., run = function(inputs, params, ctx) ... end }` once per kind
//! it declares (the Lua-side API is documented in `plugins/README.md`). Each
//! declared kind becomes an ordinary [`NodeKind`] whose [`NodeSchema::source`]
//! is the plugin file, so `sdgraph nodes`, validation, scheduling and the
//! cache treat it exactly like a built-in kind.
//!
//! - [`load_plugins`]: load every `.lua` file of some folders (or single
//!   files) into a [`Registry`]; [`plugin_dirs_from`] splits a
//!   `SDGRAPH_PLUGIN_PATH`-style list (the command reads the variable).
//! - [`SandboxLimits`]: memory and time limits. Plugins are untrusted; see
//!   [`sandbox`] for what they can reach.
//! - [`ValueCodec`] / [`register_value_codec`]: how a port type the engine
//!   cannot see into (the nodes crate's LATENT) is shown to Lua as plain data.
//!
//! Every run starts from a fresh Lua state that executes the plugin file and
//! then calls the kind's `run`: globals never carry over from one run to the
//! next, so a plugin node's result depends only on its inputs and params (as
//! the cache assumes), and a run that hit a limit leaves nothing behind.
//! Creating a state and executing a small file takes well under a
//! millisecond.

mod api;
mod kind;
mod patterns;
mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use graph::node::NodeKind;
use graph::registry::Registry;

pub use graph::codec::{Data, ValueCodec, register_value_codec, value_codec};
pub use kind::PluginKind;

/// Limits on what one plugin call may use. A call that exceeds one fails
/// with an error naming the plugin file; the engine carries on.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxLimits {
    /// Memory of one Lua state: the Lua heap plus the pixels of the images
    /// and masks the plugin creates.
    pub memory_bytes: usize,
    /// Time for one `run` call (converting its inputs and outputs included).
    pub run_time: Duration,
    /// Time for executing the plugin file's top level (declaring its kinds),
    /// at load and again before each run.
    pub load_time: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits { memory_bytes: 256 << 20, run_time: Duration::from_secs(10), load_time: Duration::from_secs(2) }
    }
}

/// A plugin file that loaded, and the kinds it registered.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    pub file: PathBuf,
    pub kinds: Vec<String>,
}

/// A plugin file that could not be loaded or registered. `message` starts
/// with the file (and the line, when there is one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub file: PathBuf,
    pub message: String,
}

impl PluginError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        PluginError { file: file.to_path_buf(), message: message.into() }
    }
}

/// The folders in a `SDGRAPH_PLUGIN_PATH`-style list; empty entries are skipped.
pub fn plugin_dirs_from(list: &std::ffi::OsStr) -> Vec<PathBuf> {
    std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()).collect()
}

/// Largest plugin file read.
const MAX_PLUGIN_FILE: u64 = 4 << 20;

/// The plugin files that `paths` name, in load order: each path is a `.lua`
/// file or a folder whose `.lua` files (not those of subfolders) count, in
/// name order; a file named twice counts once. Paths that cannot be listed
/// are reported.
pub fn plugin_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<PluginError>) {
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "lua"))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => errors.push(PluginError::new(p, format!("{}: cannot list plugin folder: {e}", p.display()))),
            }
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            errors.push(PluginError::new(p, format!("{}: no such plugin file or folder", p.display())));
        }
    }
    let mut seen = Vec::new();
    files.retain(|f| {
        let key = f.canonicalize().unwrap_or_else(|_| f.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    (files, errors)
}

/// Loads plugins into `registry`. Each path is a `.lua` file or a folder
/// whose `.lua` files (not those of subfolders) load in name order; a file
/// named twice loads once.
///
/// Every problem is reported, each naming its file: unreadable paths, Lua
/// errors, bad declarations, and kind names that clash with a kind already
/// registered (built-in or from another plugin: the message names both
/// sources). A file with any problem registers none of its kinds; the
/// others are registered even when `Err` is returned, so a caller may warn
/// and carry on, or stop.
pub fn load_plugins(
    paths: &[PathBuf],
    registry: &mut Registry,
    limits: &SandboxLimits,
) -> Result<Vec<PluginInfo>, Vec<PluginError>> {
    let (files, mut errors) = plugin_files(paths);
    let mut infos = Vec::new();
    for file in files {
        let kinds = match load_plugin_file(&file, limits) {
            Ok(k) => k,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let clashes: Vec<PluginError> = kinds
            .iter()
            .filter_map(|k| {
                let s = k.schema();
                registry.get(&s.kind).map(|old| {
                    let dup = graph::registry::DuplicateKind {
                        kind: s.kind.clone(),
                        first: old.schema().source.clone(),
                        second: s.source.clone(),
                    };
                    PluginError::new(&file, dup.to_string())
                })
            })
            .collect();
        if !clashes.is_empty() {
            errors.extend(clashes);
            continue;
        }
        let mut names = Vec::new();
        for k in kinds {
            names.push(k.schema().kind.clone());
            if let Err(dup) = registry.register(k) {
                errors.push(PluginError::new(&file, dup.to_string()));
            }
        }
        infos.push(PluginInfo { file, kinds: names });
    }
    if errors.is_empty() { Ok(infos) } else { Err(errors) }
}

/// Loads one plugin file: executes it in a sandbox and returns the kinds it
/// declares (not registered anywhere yet).
pub fn load_plugin_file(path: &Path, limits: &SandboxLimits) -> Result<Vec<Arc<dyn NodeKind>>, PluginError> {
    let label = path.display().to_string();
    let fail = |msg: String| PluginError::new(path, format!("{label}: {msg}"));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read plugin: {e}")))?;
    if meta.len() > MAX_PLUGIN_FILE {
        return Err(fail(format!("plugin file is larger than {} MiB", MAX_PLUGIN_FILE >> 20)));
    }
    let source = std::fs::read(path).map_err(|e| fail(format!("cannot read plugin: {e}")))?;
    let dir = path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d });
    kind::load(path, &label, dir, source, limits)
}

/// Loads a plugin from text, as if read from `file` (which names it in
/// messages and as its kinds' source; nothing is read from disk, and
/// `read_file` is unavailable to it).
pub fn load_plugin_source(
    file: &Path,
    source: &str,
    limits: &SandboxLimits,
) -> Result<Vec<Arc<dyn NodeKind>>, PluginError> {
    kind::load(file, &file.display().to_string(), None, source.as_bytes().to_vec(), limits)
}
