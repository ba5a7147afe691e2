//! Mask nodes, as ComfyUI's (`comfy_extras/nodes_mask.py`, Comfy-Org/ComfyUI @
//! d9ac00e2187d30b734141de7c8c1150cd190bdd0): ImageToMask, `image[:, :, :, channel]`.
//! Asking for `alpha` of an RGB image is an error naming the param (ComfyUI
//! raises an IndexError).

use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, Mask, PortType, Value};

/// ImageToMask's channel names, in channel order.
pub const CHANNELS: [&str; 4] = ["red", "green", "blue", "alpha"];

pub struct ImageToMask(NodeSchema);

graph::node_fields! {
    struct ImageToMaskFields {
        image: Arc<Image> = input(PortType::Image, "The images."),
        channel: String = choice(&CHANNELS, "red", "The channel that becomes the mask."),
    }
}

impl ImageToMask {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("ImageToMask", "mask", "Takes one channel of images as a mask (e.g. a painted mask).")
                .fields(ImageToMaskFields::declare)
                .output("mask", PortType::Mask, "The channel's values, as they are."),
        )
    }
}

impl Default for ImageToMask {
    fn default() -> Self {
        Self::new()
    }
}

/// Channel `index` of every image, as ComfyUI's `image[:, :, :, index]`.
pub fn channel_mask(img: &Image, index: usize) -> Result<Mask, String> {
    if index >= img.channels {
        return Err(format!(
            "the images have {} channels, so there is no channel {index}{}",
            img.channels,
            if index == 3 { " (alpha): LoadImage gives RGB and puts 1 - alpha in its mask output" } else { "" }
        ));
    }
    let want = img.batch * img.height * img.width;
    if img.data.len() != want * img.channels {
        return Err(format!("image data has {} values but its shape {img:?} needs more", img.data.len()));
    }
    let data = img.data.chunks_exact(img.channels).map(|px| px[index]).collect();
    Ok(Mask { batch: img.batch, height: img.height, width: img.width, data })
}

impl NodeKind for ImageToMask {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageToMaskFields::read(inputs)?;
        let img = f.image;
        let name = f.channel.as_str();
        let index = CHANNELS
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| NodeError::new(format!("param \"channel\": unknown channel {name:?}")))?;
        let mask = channel_mask(&img, index).map_err(|e| NodeError::new(format!("param \"channel\": {e}")))?;
        Ok(vec![Value::Mask(Arc::new(mask))])
    }
}
