//! ControlNet preprocessors that need no model, as node kinds over
//! [`models::image_ops::edges`]:
//!
//! - [`Canny`]: ComfyUI's `Canny` node;
//! - [`BinaryPreprocessor`]: comfyui_controlnet_aux's `BinaryPreprocessor`, a
//!   scribble-style map: dark strokes become white lines on black.
//!
//! Both return 3-channel images of 0 and 1, as ControlNets take them.

use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Value};
use models::image_ops::edges::{binary_strokes, canny};

/// Applies `map` to each picture of `img` (`[H, W, C]` pixels -> `[H, W]` values) and
/// returns the maps as a 3-channel image.
fn map_pictures(img: &Image, map: impl Fn(&[f32]) -> Result<Vec<f32>, String>) -> Result<Value, NodeError> {
    let (h, w, c) = (img.height, img.width, img.channels);
    let per = h * w * c;
    if c == 0 || img.data.len() != img.batch * per {
        return Err(NodeError::new(format!(
            "input \"image\": {} values for {}x{w}x{h}x{c}",
            img.data.len(),
            img.batch
        )));
    }
    let mut maps = Vec::with_capacity(img.batch * h * w);
    for b in 0..img.batch {
        maps.extend(map(&img.data[b * per..][..per]).map_err(|e| NodeError::new(format!("input \"image\": {e}")))?);
    }
    let data = maps.iter().flat_map(|&v| [v, v, v]).collect();
    Ok(Value::Image(Arc::new(Image { batch: img.batch, height: h, width: w, channels: 3, data })))
}

pub struct Canny(NodeSchema);

graph::node_fields! {
    struct CannyFields {
        image: Arc<Image> = input(PortType::Image, "The picture."),
        low_threshold: f64 = float(0.01, 0.99, 0.4, "Gradient magnitude above which a pixel may extend an edge."),
        high_threshold: f64 = float(0.01, 0.99, 0.8, "Gradient magnitude above which a pixel starts an edge."),
    }
}

impl Canny {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "Canny",
                "image/preprocessors",
                "Canny edge map (white edges on black), as ComfyUI's node.",
            )
            .fields(CannyFields::declare)
            .output("image", PortType::Image, "The edges: 1 on edges, 0 elsewhere, in 3 channels."),
        )
    }
}

impl Default for Canny {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for Canny {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = CannyFields::read(inputs)?;
        let img = f.image;
        let low = f.low_threshold;
        let high = f.high_threshold;
        let (h, w, c) = (img.height, img.width, img.channels);
        Ok(vec![map_pictures(&img, |px| canny(px, h, w, c, low, high).map(|out| out.edges))?])
    }
}

pub struct BinaryPreprocessor(NodeSchema);

graph::node_fields! {
    struct BinaryFields {
        image: Arc<Image> = input(PortType::Image, "The picture (e.g. a drawing)."),
        bin_threshold: usize = int(
            0,
            255,
            100,
            "Gray level (0..255) at or below which a pixel is a stroke; 0 or 255 picks Otsu's threshold.",
        ),
    }
}

impl BinaryPreprocessor {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "BinaryPreprocessor",
                "image/preprocessors",
                "Scribble-style map: pixels darker than the threshold become white, the rest black (comfyui_controlnet_aux's node, without its `resolution`: the output keeps the input's size).",
            )
            .fields(BinaryFields::declare)
            .output("image", PortType::Image, "1 on strokes, 0 elsewhere, in 3 channels."),
        )
    }
}

impl Default for BinaryPreprocessor {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for BinaryPreprocessor {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = BinaryFields::read(inputs)?;
        let img = f.image;
        // The schema bounds it to 0..=255.
        let t = f.bin_threshold.clamp(0, 255) as u8;
        Ok(vec![map_pictures(&img, |px| Ok(binary_strokes(px, img.channels, t)))?])
    }
}
