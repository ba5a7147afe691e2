//! Values that flow between nodes at run time: images, masks, latents,
//! scalars, and opaque handles to loaded models.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::types::PortType;

/// A batch of images, `[B, H, W, C]` row-major (channel innermost), values
/// nominally in 0..=1, as ComfyUI's IMAGE. Built-in nodes produce C = 3 (RGB).
#[derive(Clone, PartialEq)]
pub struct Image {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl Image {
    /// A zero-filled image batch.
    pub fn zeros(batch: usize, height: usize, width: usize, channels: usize) -> Self {
        Self { batch, height, width, channels, data: vec![0.0; batch * height * width * channels] }
    }

    /// Wraps `data`, checking that its length matches the shape.
    pub fn from_data(batch: usize, height: usize, width: usize, channels: usize, data: Vec<f32>) -> Option<Self> {
        let want = batch.checked_mul(height)?.checked_mul(width)?.checked_mul(channels)?;
        (data.len() == want).then_some(Self { batch, height, width, channels, data })
    }

    /// Elements in one image of the batch.
    pub fn plane_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// One image of the batch, `[H, W, C]`.
    pub fn item(&self, b: usize) -> &[f32] {
        let n = self.plane_len();
        &self.data[b * n..(b + 1) * n]
    }

    pub fn item_mut(&mut self, b: usize) -> &mut [f32] {
        let n = self.plane_len();
        &mut self.data[b * n..(b + 1) * n]
    }

    pub fn get(&self, b: usize, y: usize, x: usize, c: usize) -> f32 {
        self.data[((b * self.height + y) * self.width + x) * self.channels + c]
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Image[{}, {}, {}, {}]", self.batch, self.height, self.width, self.channels)
    }
}

/// A batch of masks, `[B, H, W]`, 1.0 meaning "masked" (the area to change),
/// as ComfyUI's MASK.
#[derive(Clone, PartialEq)]
pub struct Mask {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Mask {
    pub fn zeros(batch: usize, height: usize, width: usize) -> Self {
        Self { batch, height, width, data: vec![0.0; batch * height * width] }
    }
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mask[{}, {}, {}]", self.batch, self.height, self.width)
    }
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
