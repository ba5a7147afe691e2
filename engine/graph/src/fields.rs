//! A node kind declares its inputs and params once, as the fields of a struct:
//! [`node_fields!`](crate::node_fields) makes the struct, adds one schema entry per
//! field (in field order, named after the field) and reads the struct back from a
//! node's [`NodeInputs`], so a kind's schema and its run function cannot disagree
//! on a name, and a field's Rust type says how it is read.
//!
//! ```ignore
//! graph::node_fields! {
//!     struct EmptyLatentFields {
//!         width: usize = int(16, 16384, 512, "Image width in pixels."),
//!         latent: Arc<Latent> = input(PortType::Latent, "The latents."),
//!     }
//! }
//! let schema = EmptyLatentFields::declare(NodeSchema::new("EmptyLatentImage", "latent", "..."));
//! let fields = EmptyLatentFields::read(inputs)?; // fields.width, fields.latent
//! ```

use std::sync::Arc;

use crate::node::{NodeError, NodeInputs};
use crate::value::{Image, Mask, Payload, Value};

/// A value a node reads by name: a param (scalars) or a connected input (shared values).
pub trait Field: Sized {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError>;
}

impl Field for i64 {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        let v = inputs.int(name)?;
        i64::try_from(v).map_err(|_| NodeError::new(format!("param {name:?}: {v} does not fit a 64-bit integer")))
    }
}

impl Field for u64 {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        let v = inputs.int(name)?;
        u64::try_from(v).map_err(|_| NodeError::new(format!("param {name:?}: {v} is not in 0..=2^64-1")))
    }
}

impl Field for usize {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        inputs.usize(name)
    }
}

impl Field for f64 {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        inputs.float(name)
    }
}

impl Field for bool {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        inputs.bool(name)
    }
}

impl Field for String {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        inputs.str(name).map(str::to_string)
    }
}

impl<T: Payload> Field for Arc<T> {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        inputs.get::<T>(name)
    }
}

impl Field for Arc<Image> {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        inputs.image(name)
    }
}

impl Field for Arc<Mask> {
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        match inputs.input(name)? {
            Value::Mask(m) => Ok(m.clone()),
            v => Err(NodeError::new(format!("input {name:?}: expected a Mask, got {v:?}"))),
        }
    }
}

/// An optional input: `None` when it is not connected.
impl<T> Field for Option<T>
where
    T: Field,
{
    fn read(inputs: &NodeInputs, name: &str) -> Result<Self, NodeError> {
        if inputs.inputs.contains_key(name) { T::read(inputs, name).map(Some) } else { Ok(None) }
    }
}

/// Declares a struct of a node kind's inputs and params: each field is
/// `name: Type = method(args)`, where `method(name, args)` is the
/// [`NodeSchema`](crate::NodeSchema) builder call that declares it (`input`,
/// `optional_input`, `int`, `float`, `bool`, `string`, `text`, `choice`,
/// `path`, `param`). `declare` adds them to a schema in order; `read` fills
/// the struct from a node's inputs (see [`Field`]).
#[macro_export]
macro_rules! node_fields {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($field:ident : $ty:ty = $method:ident ( $($arg:expr),* $(,)? )),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(pub $field: $ty,)*
        }

        impl $name {
            /// Adds the fields to `schema`, in order.
            pub fn declare(schema: $crate::NodeSchema) -> $crate::NodeSchema {
                schema $(.$method(stringify!($field), $($arg),*))*
            }

            /// Reads the fields from a node's inputs and params.
            pub fn read(inputs: &$crate::NodeInputs) -> Result<Self, $crate::NodeError> {
                Ok(Self { $($field: <$ty as $crate::fields::Field>::read(inputs, stringify!($field))?,)* })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeSchema, ParamKind, ParamValue};
    use crate::types::PortType;

    struct Tokens(u32);

    impl Payload for Tokens {
        const PORT: PortType = PortType::Latent;
    }

    crate::node_fields! {
        struct Fields {
            tokens: Arc<Tokens> = input(PortType::Latent, "Some tokens."),
            picture: Option<Arc<Image>> = optional_input(PortType::Image, "A picture."),
            count: usize = int(0, 10, 3, "How many."),
            scale: f64 = float(0.0, 2.0, 1.0, "How much."),
            mode: String = choice(&["a", "b"], "a", "Which."),
            flag: bool = bool(false, "Whether."),
        }
    }

    #[test]
    fn fields_declare_the_schema_in_order_and_read_back_by_the_same_names() {
        let schema = NodeSchema::new("K", "test", "").fields(Fields::declare);
        let inputs: Vec<_> = schema.inputs.iter().map(|i| (i.name.as_str(), i.ty, i.required)).collect();
        assert_eq!(inputs, [("tokens", PortType::Latent, true), ("picture", PortType::Image, false)]);
        let params: Vec<_> = schema.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(params, ["count", "scale", "mode", "flag"]);
        assert_eq!(schema.params[0].kind, ParamKind::Int { min: 0, max: 10 });

        let mut given = NodeInputs::default();
        given.inputs.insert("tokens".into(), Value::payload(Tokens(7)));
        for (name, v) in [
            ("count", ParamValue::Int(4)),
            ("scale", ParamValue::Float(0.5)),
            ("mode", ParamValue::String("b".into())),
            ("flag", ParamValue::Bool(true)),
        ] {
            given.params.insert(name.into(), v);
        }
        let f = Fields::read(&given).unwrap();
        assert_eq!(
            (f.tokens.0, f.picture.is_none(), f.count, f.scale, f.mode.as_str(), f.flag),
            (7, true, 4, 0.5, "b", true)
        );

        // A value of the wrong type is an error naming the input, not a silent default.
        given.inputs.insert("picture".into(), Value::payload(Tokens(1)));
        let e = Fields::read(&given).map(|_| ()).unwrap_err();
        assert!(e.message.contains("\"picture\"") && e.message.contains("expected an Image"), "{e}");
        given.inputs.remove("picture");
        given.params.insert("count".into(), ParamValue::Int(-1));
        let e = Fields::read(&given).map(|_| ()).unwrap_err();
        assert!(e.message.contains("\"count\"") && e.message.contains("negative"), "{e}");
    }
}
