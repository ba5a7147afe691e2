//! CLIPTextEncode: a prompt to CONDITIONING, as ComfyUI's node. The prompt's
//! weights (`(word:1.2)`, `(word)`, escaped `\(`) are read and applied as
//! ComfyUI does ([`models::prompt_weights`]); prompts longer than 75 tokens are
//! encoded in chunks of 75 and concatenated along the sequence, as ComfyUI does.

use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use crate::payload::ClipHandle;
use crate::payload::Conditioning;
use crate::runtime;
use models::clip::ClipLayer;
use models::prompt_weights::{encode_token_weights, tokenize_with_weights};

pub struct ClipTextEncode(NodeSchema);

graph::node_fields! {
    struct TextEncodeFields {
        clip: Arc<ClipHandle> = input(PortType::Clip, "The text encoder (from CheckpointLoaderSimple)."),
        text: String = text(
            "",
            "The prompt. `(words)` weighs words 1.1x, `(words:1.3)` 1.3x; `\\(` is a literal parenthesis.",
        ),
    }
}

impl ClipTextEncode {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("CLIPTextEncode", "conditioning", "Encodes a text prompt with the CLIP text encoder.")
                .fields(TextEncodeFields::declare)
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

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = TextEncodeFields::read(inputs)?;
        let clip = f.clip;
        let tokens = tokenize_with_weights(&clip.tokenizer, f.text.as_str())
            .map_err(|e| NodeError::new(format!("param \"text\": {e}")))?;
        for w in &tokens.warnings {
            ctx.progress.message(&format!("warning: node {:?}, param \"text\": {w}", ctx.node_id));
        }
        let gpu = runtime::gpu()?;
        // [1, 77 * chunks, C]
        let cond = encode_token_weights(gpu, &clip.model, &tokens.chunks, ClipLayer::Last)
            .map_err(|e| NodeError::new(e.to_string()))?;
        Ok(vec![Value::payload(Conditioning::new(cond))])
    }
}
