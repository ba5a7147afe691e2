//! Values that flow between nodes at run time: images, masks, latents,
//! scalars, and opaque handles to loaded models.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub use pixels::{Image, Mask};

use crate::types::PortType;

/// A value on an edge. Images and masks are shared (`Arc`) because cached
/// outputs feed many consumers; nodes clone before changing them.
#[derive(Clone)]
pub enum Value {
    Int(i64),
    Float(f64),
    String(String),
    Bool(bool),
    Image(Arc<Image>),
    Mask(Arc<Mask>),
    /// Anything the engine does not look inside (models, conditioning,
    /// latents): the node crate owns the concrete type.
    Opaque(PortType, Arc<dyn Any + Send + Sync>),
}

impl Value {
    pub fn port_type(&self) -> PortType {
        match self {
            Value::Int(_) => PortType::Int,
            Value::Float(_) => PortType::Float,
            Value::String(_) => PortType::String,
            Value::Bool(_) => PortType::Bool,
            Value::Image(_) => PortType::Image,
            Value::Mask(_) => PortType::Mask,
            Value::Opaque(t, _) => *t,
        }
    }

    /// The opaque payload as `T`, if this is an opaque value of that type.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        match self {
            Value::Opaque(_, v) => v.clone().downcast::<T>().ok(),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "Int({v})"),
            Value::Float(v) => write!(f, "Float({v})"),
            Value::String(v) => write!(f, "String({v:?})"),
            Value::Bool(v) => write!(f, "Bool({v})"),
            Value::Image(v) => v.fmt(f),
            Value::Mask(v) => v.fmt(f),
            Value::Opaque(t, _) => write!(f, "{t}(..)"),
        }
    }
}
