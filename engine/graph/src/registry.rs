//! The set of node kinds a graph may use.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::node::NodeKind;

/// Two kinds with one name. Both sources are named so the user can fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("node kind {kind:?} is defined twice: by {first} and by {second}")]
pub struct DuplicateKind {
    pub kind: String,
    pub first: String,
    pub second: String,
}

/// Node kinds by name, sorted so listings are stable.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn NodeKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, kind: Arc<dyn NodeKind>) -> Result<(), DuplicateKind> {
        let name = kind.schema().kind.clone();
        if let Some(old) = self.kinds.get(&name) {
            return Err(DuplicateKind {
                kind: name,
                first: old.schema().source.clone(),
                second: kind.schema().source.clone(),
            });
        }
        self.kinds.insert(name, kind);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn NodeKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(|k| k.as_str())
    }

    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn NodeKind>> {
        self.kinds.values()
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}
