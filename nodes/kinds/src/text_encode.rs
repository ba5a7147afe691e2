//! CLIPTextEncode: a prompt to CONDITIONING, as ComfyUI's node. The prompt's
//! weights (`(word:1.2)`, `(word)`, escaped `\(`) are read and applied as
//! ComfyUI does ([`models::prompt_weights`]); prompts longer than 75 tokens are
//! encoded in chunks of 75 and concatenated along the sequence, as ComfyUI does.
//! It encodes with the hidden state the CLIP value carries: the last layer as
//! loaded, an earlier one after CLIPSetLastLayer ("clip skip"), also here.

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
        let cond = encode_token_weights(gpu, &clip.model, &tokens.chunks, clip.layer)
            .map_err(|e| NodeError::new(e.to_string()))?;
        Ok(vec![Value::payload(Conditioning::new(cond))])
    }
}

// ---------------------------------------------------------------- CLIPSetLastLayer

/// CLIPSetLastLayer: a CLIP that encodes with the hidden state
/// `stop_at_clip_layer` from the end (-1 = the last layer, -2 = "clip skip 2"),
/// through the final layer norm, as ComfyUI's SD 1.x CLIP does
/// (`layer_norm_hidden_state`). The model is shared, not copied. A layer deeper
/// than the model has is the last layer, as in ComfyUI (with a warning here).
pub struct ClipSetLastLayer(NodeSchema);

graph::node_fields! {
    struct SetLastLayerFields {
        clip: Arc<ClipHandle> = input(PortType::Clip, "The text encoder."),
        stop_at_clip_layer: i64 = int(
            -24,
            -1,
            -1,
            "The hidden state to encode with, from the end: -1 the last layer, -2 the one before (\"clip skip 2\").",
        ),
    }
}

impl ClipSetLastLayer {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "CLIPSetLastLayer",
                "conditioning",
                "Makes the text encoder stop at an earlier layer (\"clip skip\"); the layers after it are not run.",
            )
            .fields(SetLastLayerFields::declare)
            .output("clip", PortType::Clip, "The same text encoder, encoding with the chosen layer."),
        )
    }
}

impl Default for ClipSetLastLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for ClipSetLastLayer {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = SetLastLayerFields::read(inputs)?;
        let n = f.stop_at_clip_layer;
        if !(-24..=-1).contains(&n) {
            return Err(NodeError::new(format!("param \"stop_at_clip_layer\": {n} is not in -24..=-1")));
        }
        let layers = f.clip.model.config.num_layers;
        let skip = n.unsigned_abs() as usize;
        // As ComfyUI (`clip_layer`: `abs(layer_idx) > num_layers` means "last"): deeper
        // than the model is the last layer, said here since ComfyUI says nothing.
        let layer = if skip > layers {
            ctx.progress.message(&format!(
                "warning: node {:?}: stop_at_clip_layer {n} is deeper than this text encoder's {layers} layers; \
                 using the last layer, as ComfyUI does",
                ctx.node_id
            ));
            ClipLayer::Last
        } else {
            ClipLayer::Skip(skip)
        };
        Ok(vec![Value::payload(f.clip.with_layer(layer))])
    }
}
