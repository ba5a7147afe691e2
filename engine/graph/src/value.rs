//! Values that flow between nodes at run time: images, masks, latents,
//! scalars, and opaque handles to loaded models.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub use pixels::{Image, Mask};

use crate::types::PortType;

/// A value type that travels on an opaque port (models, CLIP, VAE,
/// conditioning, latents, ...): the node kinds declare theirs, one type per
/// port type, and the engine carries them without looking inside.
pub trait Payload: Any + Send + Sync {
    /// The port type its values travel on.
    const PORT: PortType;
}

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

    /// `v` on its port.
    pub fn payload<T: Payload>(v: T) -> Value {
        Value::Opaque(T::PORT, Arc::new(v))
    }

    /// A shared `v` on its port (passing a cached value on unchanged).
    pub fn shared<T: Payload>(v: Arc<T>) -> Value {
        Value::Opaque(T::PORT, v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeInputs;

    #[derive(Debug, PartialEq)]
    struct Samples(Vec<f32>);
    impl Payload for Samples {
        const PORT: PortType = PortType::Latent;
    }
    #[derive(Debug)]
    struct Weights;
    impl Payload for Weights {
        const PORT: PortType = PortType::Model;
    }

    #[test]
    fn payloads_travel_on_their_port_and_come_back_typed() {
        let v = Value::payload(Samples(vec![1.0, 2.0]));
        assert_eq!(v.port_type(), PortType::Latent);
        let mut inputs = NodeInputs::default();
        inputs.inputs.insert("samples".into(), v.clone());
        assert_eq!(*inputs.get::<Samples>("samples").unwrap(), Samples(vec![1.0, 2.0]));
        // Passing a shared value on keeps the same allocation.
        let shared = Value::shared(inputs.get::<Samples>("samples").unwrap());
        assert!(Arc::ptr_eq(&shared.downcast::<Samples>().unwrap(), &v.downcast::<Samples>().unwrap()));
    }

    #[test]
    fn a_payload_of_another_type_is_an_error_naming_the_input_and_both_types() {
        let mut inputs = NodeInputs::default();
        inputs.inputs.insert("model".into(), Value::payload(Samples(vec![])));
        inputs.inputs.insert("n".into(), Value::Int(3));
        let e = inputs.get::<Weights>("model").unwrap_err().to_string();
        assert!(e.contains("\"model\"") && e.contains(&PortType::Model.to_string()), "{e}");
        assert!(e.contains(&PortType::Latent.to_string()), "{e}");
        let e = inputs.get::<Weights>("n").unwrap_err().to_string();
        assert!(e.contains(&PortType::Int.to_string()), "{e}");
        assert!(inputs.get::<Weights>("absent").unwrap_err().to_string().contains("not connected"));
    }
}
