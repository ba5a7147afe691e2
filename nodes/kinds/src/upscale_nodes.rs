//! UpscaleModelLoader and ImageUpscaleWithModel, as ComfyUI's
//! `comfy_extras/nodes_upscale_model.py` (ComfyUI loads through spandrel):
//! an ESRGAN-family model file (`.pth` or `.safetensors`) to an
//! UPSCALE_MODEL, and pictures through it, tiled (see `models::upscale_tiling`).
//!
//! Beyond ComfyUI: ImageUpscaleWithModel takes `tile_size` and
//! `tile_overlap` (ComfyUI fixes 512 and 32, halving the tile on
//! out-of-memory); here a tile whose largest activation would not fit the
//! adapter's largest buffer is halved before running, with a message.

use std::sync::Arc;

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Value};

use crate::payload::UpscaleModelHandle;
use crate::runtime;
use crate::settings::Settings;
use models::image_ops::item_planes;
use models::tiling::activation_limit;
use models::upscale_tiling::{TilePlan, dtype_name, fitting_tile, upscale_tiled};
use models::upscaler::{UpscaleModel, open_weights};

/// The schema, and the settings the command passed.
pub struct UpscaleModelLoader(NodeSchema, Settings);

graph::node_fields! {
    struct UpscaleLoaderFields {
        model_name: String = path("Model file, relative to the graph file's folder."),
    }
}

impl UpscaleModelLoader {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "UpscaleModelLoader",
                "loaders",
                "Loads an ESRGAN-family upscale model (RRDBNet: ESRGAN, Real-ESRGAN x4plus/x2plus; \
                 SRVGGNetCompact: realesr-general, animevideo) from .pth or .safetensors.",
            )
            .fields(UpscaleLoaderFields::declare)
            .output("upscale_model", PortType::UpscaleModel, "The upscale model."),
            settings,
        )
    }
}

impl Default for UpscaleModelLoader {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for UpscaleModelLoader {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = UpscaleLoaderFields::read(inputs)?;
        let path = ctx.resolve(f.model_name.as_str());
        let gpu = runtime::gpu()?;
        let dtype = runtime::model_dtype(gpu, self.1.dtype);
        let src = open_weights(&path).map_err(err)?;
        ctx.record_input_file(&path);
        let model =
            UpscaleModel::load(gpu, &src, dtype).map_err(|e| NodeError::new(format!("{}: {e}", path.display())))?;
        ctx.progress.message(&format!("{}: {} ({})", ctx.node_id, model.describe(), dtype_name(dtype)));
        Ok(vec![Value::payload(UpscaleModelHandle { model })])
    }

    /// Size and modification time: replacing the file reloads it.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&UpscaleLoaderFields::read(inputs).ok()?.model_name);
        let meta = std::fs::metadata(&path).ok()?;
        Some(format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok()))
    }
}

/// The schema, and the settings the command passed.
pub struct ImageUpscaleWithModel(NodeSchema, Settings);

graph::node_fields! {
    struct UpscaleFields {
        upscale_model: Arc<UpscaleModelHandle> = input(PortType::UpscaleModel, "The model (from UpscaleModelLoader)."),
        image: Arc<Image> = input(PortType::Image, "The pictures."),
        tile_size: usize = int(
            32,
            8192,
            512,
            "Tile side in input pixels; smaller tiles need less GPU memory (lowered by itself when a tile \
             would not fit the adapter).",
        ),
        tile_overlap: usize = int(0, 4096, 32, "Overlap of neighbouring tiles in input pixels (at most half a tile)."),
    }
}

impl ImageUpscaleWithModel {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "ImageUpscaleWithModel",
                "image/upscaling",
                "Enlarges pictures with an upscale model, in overlapping tiles blended without seams.",
            )
            .fields(UpscaleFields::declare)
            .output("image", PortType::Image, "The enlarged pictures, in 0..1."),
            settings,
        )
    }
}

impl Default for ImageUpscaleWithModel {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for ImageUpscaleWithModel {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = UpscaleFields::read(inputs)?;
        let handle = f.upscale_model;
        let model = &handle.model;
        let img = f.image;
        let tile = f.tile_size;
        let overlap = f.tile_overlap;
        let (h, w) = (img.height, img.width);
        if h == 0 || w == 0 || img.channels == 0 {
            return Err(NodeError::new(format!("input \"image\" is empty ({w}x{h}, {} channels)", img.channels)));
        }
        let s = model.scale();
        let (oh, ow) = (h.checked_mul(s), w.checked_mul(s));
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return Err(NodeError::new(format!("{w}x{h} times {s} overflows")));
        };
        let gpu = runtime::gpu()?;
        let limit = activation_limit(gpu.limits.max_buffer_size, self.1.upscale_tile_bytes);
        let fit = fitting_tile(model, tile, (h, w), limit).ok_or_else(|| {
            NodeError::new(format!(
                "even the smallest tile of this upscale model needs more than the {limit} bytes one GPU buffer holds"
            ))
        })?;
        if fit < tile && fit < h.max(w) {
            ctx.progress.message(&format!(
                "{}: tile_size {tile} would need {} MiB for one activation, more than the adapter's {} MiB; using {fit}",
                ctx.node_id,
                model.largest_activation(tile, tile) >> 20,
                limit >> 20
            ));
        }
        let m = model.size_multiple();
        let plan = TilePlan::new(h.div_ceil(m) * m, w.div_ceil(m) * m, fit, overlap, m);
        let total = img.batch * plan.count();
        let cout = model.out_channels();
        let mut data = Vec::with_capacity(img.batch * oh * ow * 3);
        let mut done = 0;
        for b in 0..img.batch {
            if ctx.cancelled() {
                return Err(NodeError::new("cancelled"));
            }
            let chw = item_planes(&img, b, (0, 0, img.height, img.width), model.in_channels());
            let mut on_tile = || {
                done += 1;
                ctx.progress.step(ctx.node_id, done as u64, total as u64, "tiles");
                if ctx.cancelled() { Err("cancelled".to_string()) } else { Ok(()) }
            };
            let px = upscale_tiled(gpu, model, &chw, (h, w), &plan, &mut on_tile).map_err(NodeError::new)?;
            // [out, H, W] -> [H, W, 3] in 0..1 (a one-channel model's output is repeated as grey).
            let plane = oh * ow;
            for i in 0..plane {
                for c in 0..3 {
                    data.push(px[c.min(cout - 1) * plane + i].clamp(0.0, 1.0));
                }
            }
        }
        let image =
            Image::from_data(img.batch, oh, ow, 3, data).ok_or_else(|| NodeError::new("upscaled size mismatch"))?;
        Ok(vec![Value::Image(Arc::new(image))])
    }
}
