//! CLIPTextEncode: a prompt to CONDITIONING, as ComfyUI's node. Prompts
//! longer than 75 tokens are encoded in chunks of 75 and concatenated along
//! the sequence, as ComfyUI does.

use std::sync::Arc;

use engine::gpu::ops::layout::concat;
use engine::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use engine::{PortType, Value};

use crate::checkpoint_loader::ClipHandle;
use crate::latent::Conditioning;
use crate::models::clip::ClipLayer;
use crate::runtime;

pub struct ClipTextEncode(NodeSchema);

impl ClipTextEncode {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("CLIPTextEncode", "conditioning", "Encodes a text prompt with the CLIP text encoder.")
                .input("clip", PortType::Clip, "The text encoder (from CheckpointLoaderSimple).")
                .text("text", "", "The prompt.")
                .output("conditioning", PortType::Conditioning, "The encoded prompt."),
        )
    }
}

impl Default for ClipTextEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for ClipTextEncode {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let clip = inputs
            .input("clip")?
            .downcast::<ClipHandle>()
            .ok_or_else(|| NodeError::new("input \"clip\" is not a loaded text encoder"))?;
        let gpu = runtime::gpu()?;
        let chunks = clip.tokenizer.chunks_75(inputs.str("text")?);
        let mut parts = Vec::with_capacity(chunks.len());
        for ids in &chunks {
            // [1, 77, C] per chunk
            let t = clip
                .model
                .forward(gpu, std::slice::from_ref(ids), ClipLayer::Last)
                .map_err(|e| NodeError::new(e.to_string()))?;
            parts.push(t);
        }
        let refs: Vec<&_> = parts.iter().collect();
        // [1, 77 * chunks, C]
        let cond = if refs.len() == 1 {
            parts[0].clone()
        } else {
            concat(gpu, &refs, 1).map_err(|e| NodeError::new(e.to_string()))?
        };
        Ok(vec![Value::Opaque(PortType::Conditioning, Arc::new(Conditioning { cond }))])
    }
}
