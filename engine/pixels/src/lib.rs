//! Pixel buffers: the image and mask batches that flow between nodes (as
//! ComfyUI's IMAGE and MASK). A crate of its own because the graph engine
//! carries them as values and the model library's image maths works on them,
//! and neither of those may depend on the other.

use std::fmt;

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
