//! The output cache. A node's key hashes its kind, version, params, outside
//! fingerprint and the keys of its inputs, so a key changes exactly when the
//! node or anything upstream of it changed (as ComfyUI's caching.py does).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::validate::ValidNode;
use crate::value::Value;

/// A cache key. In-process only, so a std hasher is enough.
pub type CacheKey = u64;

/// Computes a node's key from its own description and its inputs' keys.
/// `input_keys[i]` is the key of the node feeding `node.inputs[i]`.
pub fn node_key(node: &ValidNode, input_keys: &[CacheKey], fingerprint: Option<&str>) -> CacheKey {
    let mut h = DefaultHasher::new();
    let schema = node.kind.schema();
    schema.kind.hash(&mut h);
    schema.version.hash(&mut h);
    for (name, v) in &node.params {
        name.hash(&mut h);
        // RON text is canonical for our scalar values (floats keep their bits' decimal form).
        v.to_ron().hash(&mut h);
    }
    for (edge, key) in node.inputs.iter().zip(input_keys) {
        edge.port.hash(&mut h);
        key.hash(&mut h);
        edge.output.hash(&mut h);
    }
    fingerprint.hash(&mut h);
    h.finish()
}

/// The key of output `output` of a node, hashing only the params and inputs in `depends` (see
/// `NodeKind::output_depends`), its fingerprint and its kind.
pub fn output_key(
    node: &ValidNode,
    input_keys: &[CacheKey],
    fingerprint: Option<&str>,
    output: usize,
    depends: &[&str],
) -> CacheKey {
    let mut h = DefaultHasher::new();
    let schema = node.kind.schema();
    (&schema.kind, schema.version, "output", output).hash(&mut h);
    for (name, v) in node.params.iter().filter(|(name, _)| depends.contains(&name.as_str())) {
        name.hash(&mut h);
        v.to_ron().hash(&mut h);
    }
    for (edge, key) in node.inputs.iter().zip(input_keys).filter(|(e, _)| depends.contains(&e.port.as_str())) {
        (&edge.port, key, edge.output).hash(&mut h);
    }
    fingerprint.hash(&mut h);
    h.finish()
}

/// How much the executor keeps between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Keep every output of the last run (what `watch` wants).
    LastRun,
    /// Keep nothing: every run executes every needed node.
    Off,
}

/// Outputs by key.
pub struct Cache {
    policy: CachePolicy,
    entries: HashMap<CacheKey, Arc<Vec<Value>>>,
    /// The outputs of the last run that succeeded (shared with `entries`):
    /// what a failed run is merged with, so failures never pile up.
    last_good: HashMap<CacheKey, Arc<Vec<Value>>>,
}

impl Cache {
    pub fn new(policy: CachePolicy) -> Self {
        Self { policy, entries: HashMap::new(), last_good: HashMap::new() }
    }

    pub fn get(&self, key: CacheKey) -> Option<Arc<Vec<Value>>> {
        self.entries.get(&key).cloned()
    }

    /// Replaces the cache with the outputs of the run that just ended.
    pub fn keep(&mut self, run: HashMap<CacheKey, Arc<Vec<Value>>>) {
        match self.policy {
            CachePolicy::LastRun => {
                self.last_good = run.clone();
                self.entries = run;
            }
            CachePolicy::Off => self.clear(),
        }
    }

    /// Outputs of a run that failed part-way are merged with those of the last
    /// run that succeeded, so the nodes that did succeed are not lost and an
    /// edit undone is still cached; earlier failed runs are dropped, so a
    /// string of failing edits (each loading another model, say) cannot make
    /// the cache grow.
    pub fn merge(&mut self, run: HashMap<CacheKey, Arc<Vec<Value>>>) {
        if self.policy == CachePolicy::LastRun {
            self.entries = self.last_good.clone();
            self.entries.extend(run);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.last_good.clear();
    }
}
