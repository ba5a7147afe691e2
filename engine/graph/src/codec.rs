//! How a port type the engine only sees as opaque (`Value::Opaque`, such as
//! the node kinds' LATENT) is shown to plugins as plain data, and back. The
//! node kinds register their codecs here; the Lua host looks them up.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::types::PortType;
use crate::value::Value;

/// Plain data a [`ValueCodec`] turns a value into, and back. It maps onto
/// Lua one to one: `Numbers` and `List` are Lua arrays (1-based), `Map` a
/// table with string keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Nil,
    Bool(bool),
    Int(i64),
    Number(f64),
    String(String),
    /// An array of numbers (the common case for tensors; converted without
    /// a per-element enum).
    Numbers(Vec<f64>),
    List(Vec<Data>),
    Map(BTreeMap<String, Data>),
}

impl Data {
    /// Field `key` of a `Map`.
    pub fn get(&self, key: &str) -> Option<&Data> {
        match self {
            Data::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// The numbers of an array (`Numbers`, or a `List` of numbers; an empty table counts as an empty array).
    pub fn numbers(&self) -> Option<Vec<f64>> {
        match self {
            Data::Numbers(v) => Some(v.clone()),
            Data::List(items) => items
                .iter()
                .map(|d| match d {
                    Data::Int(i) => Some(*i as f64),
                    Data::Number(f) => Some(*f),
                    _ => None,
                })
                .collect(),
            Data::Map(m) if m.is_empty() => Some(vec![]),
            _ => None,
        }
    }

    /// A short description of the kind of data, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Data::Nil => "nil",
            Data::Bool(_) => "a boolean",
            Data::Int(_) | Data::Number(_) => "a number",
            Data::String(_) => "a string",
            Data::Numbers(_) | Data::List(_) => "an array",
            Data::Map(_) => "a table",
        }
    }
}

/// Converts values of one port type that the engine only sees as opaque
/// (`Value::Opaque`) to and from plain [`Data`], so plugins can read and
/// write them as Lua tables. Port types without a codec (models, CLIP,
/// conditioning...) reach Lua as opaque handles a plugin can only pass on.
pub trait ValueCodec: Send + Sync {
    fn port_type(&self) -> PortType;
    /// The value as data (called for every plugin input of this type).
    fn encode(&self, value: &Value) -> Result<Data, String>;
    /// A value from data a plugin returned; every malformed shape is an
    /// `Err` saying what was expected (the caller adds node, plugin and output).
    fn decode(&self, data: &Data) -> Result<Value, String>;
}

type Codecs = BTreeMap<PortType, Arc<dyn ValueCodec>>;

fn codecs() -> &'static RwLock<Codecs> {
    static CODECS: std::sync::OnceLock<RwLock<Codecs>> = std::sync::OnceLock::new();
    CODECS.get_or_init(Default::default)
}

/// Registers (or replaces) the codec for its port type, process-wide. The
/// nodes crate registers LATENT's when it registers its kinds. Looked up at
/// run time, so order against the loading of plugins does not matter.
pub fn register_value_codec(codec: Arc<dyn ValueCodec>) {
    let mut c = codecs().write().unwrap_or_else(|e| e.into_inner());
    c.insert(codec.port_type(), codec);
}

/// The codec registered for `ty`, if any.
pub fn value_codec(ty: PortType) -> Option<Arc<dyn ValueCodec>> {
    codecs().read().unwrap_or_else(|e| e.into_inner()).get(&ty).cloned()
}
