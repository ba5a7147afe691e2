//! GLIGENLoader and GLIGENTextBoxApply, as ComfyUI's nodes (`nodes.py`, Comfy-Org/ComfyUI @
//! a125cd84b054a57729b5eecab930ca9408719832). The network is [`models::gligen`]; KSampler runs it as the UNet's
//! transformer patch for the entries that carry boxes (`unet_predictor.rs`).
//!
//! GLIGENTextBoxApply encodes `text` with the CLIP and keeps its *pooled* output (the final layer norm's output
//! at the first end-of-text token, ComfyUI's `return_pooled="unprojected"`; whatever CLIPSetLastLayer chose, as
//! in ComfyUI), and appends `(pooled, height // 8, width // 8, y // 8, x // 8)` to every entry's boxes, the
//! GLIGEN replaced by this one. Sampling divides the box by the latent's size (`Gligen.set_position`).

use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext, err};
use graph::{PortType, Value};

use crate::image_nodes::MAX_RESOLUTION;
use crate::payload::{ClipHandle, Conditioning, GligenBoxes, GligenHandle};
use crate::runtime;
use crate::settings::Settings;
use models::checkpoint::weights::WeightSource;
use models::clip::ClipLayer;
use models::gligen::{Gligen, TextBox};
use models::prompt_weights::tokenize_with_weights;
use models::tokenizer::END_OF_TEXT;

/// Loads a GLIGEN file onto the GPU in `dtype`.
pub fn load_gligen(gpu: &gpu::Gpu, path: &std::path::Path, dtype: gpu::DType) -> Result<GligenHandle, String> {
    let src = WeightSource::single_file(path).map_err(|e| e.to_string())?;
    let gligen = Gligen::load(gpu, &src, dtype).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(GligenHandle { gligen, path: path.to_path_buf() })
}

/// The schema, and the settings the command passed.
pub struct GligenLoader(NodeSchema, Settings);

graph::node_fields! {
    struct GligenLoaderFields {
        gligen_name: String = path("GLIGEN file (.safetensors), relative to the graph file's folder."),
    }
}

impl GligenLoader {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new("GLIGENLoader", "loaders", "Loads a GLIGEN text-box grounding model (SD 1.x).")
                .fields(GligenLoaderFields::declare)
                .output("GLIGEN", PortType::Gligen, "The GLIGEN model."),
            settings,
        )
    }
}

impl Default for GligenLoader {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for GligenLoader {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = GligenLoaderFields::read(inputs)?;
        let path = ctx.resolve(f.gligen_name.as_str());
        let gpu = runtime::gpu()?;
        let dtype = runtime::model_dtype(gpu, self.1.dtype);
        ctx.progress.message(&format!("loading GLIGEN {} ({dtype:?})", path.display()));
        let handle = load_gligen(gpu, &path, dtype).map_err(|e| err(format!("param \"gligen_name\": {e}")))?;
        ctx.record_input_file(&handle.path);
        Ok(vec![Value::payload(handle)])
    }

    /// Size and modification time of the weights file: replacing it reloads.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&GligenLoaderFields::read(inputs).ok()?.gligen_name);
        let meta = std::fs::metadata(&path).ok()?;
        Some(format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok()))
    }
}

graph::node_fields! {
    struct TextBoxApplyFields {
        conditioning_to: Arc<Conditioning> = input(PortType::Conditioning, "The conditioning to ground."),
        clip: Arc<ClipHandle> = input(PortType::Clip, "The text encoder that encodes the box's text."),
        gligen_textbox_model: Arc<GligenHandle> = input(PortType::Gligen, "The GLIGEN (from GLIGENLoader)."),
        text: String = text("", "What the box holds."),
        width: usize = int(8, MAX_RESOLUTION, 64, "Box width in pixels (used in steps of 8)."),
        height: usize = int(8, MAX_RESOLUTION, 64, "Box height in pixels (used in steps of 8)."),
        x: usize = int(0, MAX_RESOLUTION, 0, "Box left edge in pixels (used in steps of 8)."),
        y: usize = int(0, MAX_RESOLUTION, 0, "Box top edge in pixels (used in steps of 8)."),
    }
}

node_kind!(
    GligenTextBoxApply,
    "GLIGENTextBoxApply",
    "conditioning/gligen",
    "Places a text in a box of the picture with GLIGEN: the sampler draws it there.",
    TextBoxApplyFields,
    [("conditioning", Conditioning, "The conditioning with the box added to every entry.")],
    |ctx, f| {
        let clip = &f.clip;
        let tokens =
            tokenize_with_weights(&clip.tokenizer, f.text.as_str()).map_err(|e| err(format!("param \"text\": {e}")))?;
        for w in &tokens.warnings {
            ctx.progress.message(&format!("warning: node {:?}, param \"text\": {w}", ctx.node_id));
        }
        let gpu = runtime::gpu()?;
        // ComfyUI pools the first 77-token chunk (`first_pooled`); the token weights do not touch it.
        let ids = [tokens.chunks.first().ok_or_else(|| err("param \"text\": no tokens"))?.ids];
        let hidden = clip.model.forward(gpu, &ids, ClipLayer::Last).map_err(err)?; // [1, 77, C]
        let pooled = clip.model.pooled(gpu, &hidden, &ids, END_OF_TEXT).map_err(err)?; // [1, C]
        let embedding = gpu.download(&pooled).map_err(err)?;
        let key_dim = f.gligen_textbox_model.gligen.position_net.in_dim;
        if embedding.len() != key_dim {
            return Err(err(format!(
                "input \"gligen_textbox_model\": it takes {key_dim}-wide text embeddings, the CLIP makes {} \
                 (a GLIGEN for another model)",
                embedding.len()
            )));
        }
        let bx = TextBox { embedding, h: f.height / 8, w: f.width / 8, y: f.y / 8, x: f.x / 8 };
        Ok(vec![Value::payload(f.conditioning_to.map_entries(|e| {
            let mut boxes = e.gligen.as_ref().map(|g| g.boxes.clone()).unwrap_or_default();
            boxes.push(bx.clone());
            e.gligen = Some(Arc::new(GligenBoxes { model: f.gligen_textbox_model.clone(), boxes }));
        }))])
    }
);
