//! CLIPTextEncode: a prompt to CONDITIONING, as ComfyUI's node. The prompt's
//! weights (`(word:1.2)`, `(word)`, escaped `\(`) are read and applied as
//! ComfyUI does ([`models::prompt_weights`]); prompts longer than 75 tokens are
//! encoded in chunks of 75 and concatenated along the sequence, as ComfyUI does.
//! It encodes with the hidden state the CLIP value carries: the last layer as
//! loaded, an earlier one after CLIPSetLastLayer ("clip skip"), also here.
//! `embedding:NAME` words take a textual-inversion embedding's vectors, found
//! in the embeddings folders the command names ([`Settings::embedding_dirs`])
//! and then in the graph's own `embeddings/` folder ([`models::embeddings`]).

use std::path::PathBuf;
use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use crate::payload::ClipHandle;
use crate::payload::Conditioning;
use crate::runtime;
use crate::settings::Settings;
use models::clip::ClipLayer;
use models::embeddings::{EXTENSIONS, Embedding, EmbeddingFolders, SD1_EMBEDDING_KEY, find_in, load_embedding};
use models::prompt_weights::{EmbeddingLookup, embedding_names, encode_token_weights, tokenize_with_embeddings};

/// The schema, and the settings naming the embeddings folders.
pub struct ClipTextEncode(NodeSchema, Settings);

graph::node_fields! {
    struct TextEncodeFields {
        clip: Arc<ClipHandle> = input(PortType::Clip, "The text encoder (from CheckpointLoaderSimple)."),
        text: String = text(
            "",
            "The prompt. `(words)` weighs words 1.1x, `(words:1.3)` 1.3x; `\\(` is a literal parenthesis; \
             `embedding:name` inserts a textual-inversion embedding from the embeddings folder.",
        ),
    }
}

impl ClipTextEncode {
    pub fn new() -> Self {
        Self::with_settings(Settings::default())
    }

    /// With the command's embeddings folders.
    pub fn with_settings(settings: Settings) -> Self {
        Self(
            NodeSchema::new("CLIPTextEncode", "conditioning", "Encodes a text prompt with the CLIP text encoder.")
                .fields(TextEncodeFields::declare)
                .output("conditioning", PortType::Conditioning, "The encoded prompt."),
            settings,
        )
    }

    /// The embeddings folders of a run: the command's, then the graph's `embeddings/`.
    fn folders(&self, ctx: &RunContext<'_>) -> EmbeddingFolders {
        let mut dirs = self.1.embedding_dirs.to_vec();
        dirs.push(ctx.base_dir.join("embeddings"));
        EmbeddingFolders::new(dirs)
    }
}

/// Looks `embedding:NAME` up in the folders, walked once per prompt and only for a prompt that names an
/// embedding; remembers the files read.
struct FolderLookup {
    folders: EmbeddingFolders,
    expanded: Option<Vec<PathBuf>>,
    width: usize,
    files: Vec<PathBuf>,
}

impl EmbeddingLookup for FolderLookup {
    fn width(&self) -> usize {
        self.width
    }

    fn load(&mut self, name: &str) -> Result<Option<Embedding>, String> {
        let expanded = self.expanded.get_or_insert_with(|| self.folders.expanded());
        let Some(path) = find_in(expanded, name) else { return Ok(None) };
        self.files.push(path.clone());
        load_embedding(&path, SD1_EMBEDDING_KEY).map(Some).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn searched(&self) -> String {
        let dirs: Vec<String> = self.folders.dirs.iter().map(|d| d.display().to_string()).collect();
        format!(" (no file of that name, or with {}, in {} or below)", EXTENSIONS.join(" / "), dirs.join(", "))
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
        let width = clip.model.config.hidden_size;
        let mut lookup = FolderLookup { folders: self.folders(ctx), expanded: None, width, files: Vec::new() };
        let tokens = tokenize_with_embeddings(&clip.tokenizer, f.text.as_str(), &mut lookup)
            .map_err(|e| NodeError::new(format!("param \"text\": {e}")))?;
        for file in &lookup.files {
            ctx.record_input_file(file);
        }
        for w in &tokens.warnings {
            ctx.progress.message(&format!("warning: node {:?}, param \"text\": {w}", ctx.node_id));
        }
        let gpu = runtime::gpu()?;
        // [1, 77 * chunks, C]
        let cond = encode_token_weights(gpu, &clip.model, &tokens.chunks, clip.layer)
            .map_err(|e| NodeError::new(e.to_string()))?;
        Ok(vec![Value::payload(Conditioning::new(cond))])
    }

    /// The embedding files the prompt names, by path, size and modification time (a name not found counts too,
    /// so adding the file re-encodes): replacing or adding an embedding re-encodes the prompt.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let text = TextEncodeFields::read(inputs).ok()?.text;
        let names = embedding_names(&text).ok()?;
        if names.is_empty() {
            return None;
        }
        let expanded = self.folders(ctx).expanded();
        let parts: Vec<String> = names
            .iter()
            .map(|name| match find_in(&expanded, name) {
                None => format!("{name}=-"),
                Some(p) => {
                    let meta = std::fs::metadata(&p).ok();
                    let (len, modified) = (meta.as_ref().map(|m| m.len()), meta.and_then(|m| m.modified().ok()));
                    format!("{name}={}:{len:?}:{modified:?}", p.display())
                }
            })
            .collect();
        Some(parts.join("|"))
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
