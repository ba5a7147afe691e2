//! EmptyLatentImage, as ComfyUI's node.

use std::sync::Arc;

use engine::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use engine::{PortType, Value};

use crate::image_nodes::MAX_RESOLUTION;
use crate::latent::Latent;

/// SD 1.x latents: 4 channels at 1/8 of the image size.
pub const LATENT_CHANNELS: usize = 4;
pub const LATENT_SCALE: usize = 8;

pub struct EmptyLatentImage(NodeSchema);

impl EmptyLatentImage {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("EmptyLatentImage", "latent", "A batch of empty latents for txt2img.")
                .int("width", 16, MAX_RESOLUTION, 512, "Image width in pixels (rounded down to a multiple of 8).")
                .int("height", 16, MAX_RESOLUTION, 512, "Image height in pixels (rounded down to a multiple of 8).")
                .int("batch_size", 1, 64, 1, "Images to make at once.")
                .output("latent", PortType::Latent, "Zero latents [batch, 4, height/8, width/8]."),
        )
    }
}

impl Default for EmptyLatentImage {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for EmptyLatentImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let w = inputs.usize("width")? / LATENT_SCALE;
        let h = inputs.usize("height")? / LATENT_SCALE;
        let b = inputs.usize("batch_size")?;
        let latent = Latent::zeros([b, LATENT_CHANNELS, h, w]);
        Ok(vec![Value::Opaque(PortType::Latent, Arc::new(latent))])
    }
}
