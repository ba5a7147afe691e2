//! VAEDecode, VAEEncode, VAEEncodeForInpaint and InpaintModelConditioning, as ComfyUI's nodes: latents to
//! pictures in 0..1 and back. When one activation of the whole pass would exceed what the
//! adapter binds at once (SD at 512x512 on lavapipe), they decode or encode
//! in tiles instead and say so on the progress output (see `models::vae_tiling`).

use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, Mask, PortType, Value};

use models::image_ops::inpaint::{prepare_inpaint, prepare_inpaint_conditioning};
use models::image_ops::planes::{push_vae_output, vae_input};

use crate::payload::{Conditioning, InpaintConcat, Latent, VaeHandle};
use crate::runtime;
use crate::settings::Settings;
use models::tiling::activation_limit;
use models::vae_tiling::{adapter_limit, decode_item, decode_plan, encode_item, encode_plan, pass_tiles};

/// After each fallback tile: progress in tiles, and Ctrl-C.
fn tile_done(ctx: &RunContext<'_>, done: &mut usize, total: usize) -> Result<(), String> {
    *done += 1;
    ctx.progress.step(ctx.node_id, *done as u64, total as u64, "tiles");
    if ctx.cancelled() { Err("cancelled".into()) } else { Ok(()) }
}

/// The schema, and the settings the command passed.
pub struct VaeDecode(NodeSchema, Settings);

graph::node_fields! {
    struct VaeDecodeFields {
        samples: Arc<Latent> = input(PortType::Latent, "The latents."),
        vae: Arc<VaeHandle> = input(PortType::Vae, "The VAE (from CheckpointLoaderSimple)."),
    }
}

impl VaeDecode {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new("VAEDecode", "latent", "Decodes latents into pictures.")
                .fields(VaeDecodeFields::declare)
                .output("image", PortType::Image, "The pictures."),
            settings,
        )
    }
}

impl Default for VaeDecode {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for VaeDecode {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = VaeDecodeFields::read(inputs)?;
        let vae = f.vae;
        let latent = f.samples;
        let gpu = runtime::gpu()?;
        let [b, c, h, w] = latent.shape;
        let limit = activation_limit(adapter_limit(gpu), self.1.vae_tile_bytes);
        let plan = decode_plan(&vae.vae, h, w, limit).map_err(NodeError::new)?;
        if let Some((_, why)) = &plan {
            ctx.progress.message(&format!("{}: {why}", ctx.node_id));
        }
        let pass = plan.as_ref().map(|(pass, _)| pass);
        let total = b * pass.map_or(1, |p| pass_tiles(h, w, p).unwrap_or(1));
        let f = vae.vae.config.downsample_factor();
        let (oh, ow) = (h * f, w * f);
        let mut data = Vec::with_capacity(b * oh * ow * 3);
        let mut tiles = 0;
        // One image at a time keeps the decoder's activations (the largest
        // tensors of the pipeline) to one picture's worth.
        for i in 0..b {
            if ctx.cancelled() {
                return Err(NodeError::new("cancelled"));
            }
            let item = &latent.samples[i * c * h * w..(i + 1) * c * h * w];
            let mut on_tile = || tile_done(ctx, &mut tiles, total);
            let px = decode_item(gpu, &vae.vae, item, (h, w), pass, &mut on_tile).map_err(NodeError::new)?;
            push_vae_output(&mut data, &px, vae.vae.config.out_channels, oh, ow);
            if plan.is_none() {
                ctx.progress.step(ctx.node_id, (i + 1) as u64, b as u64, "images");
            }
        }
        let image =
            Image::from_data(b, oh, ow, 3, data).ok_or_else(|| NodeError::new("decoded images differ in size"))?;
        Ok(vec![Value::Image(Arc::new(image))])
    }
}

/// The schema, and the settings the command passed.
pub struct VaeEncode(NodeSchema, Settings);

graph::node_fields! {
    struct VaeEncodeFields {
        pixels: Arc<Image> = input(PortType::Image, "The pictures."),
        vae: Arc<VaeHandle> = input(PortType::Vae, "The VAE (from CheckpointLoaderSimple)."),
    }
}

impl VaeEncode {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEEncode",
                "latent",
                "Encodes pictures into latents (cropped to a multiple of 8 pixels, centred, as ComfyUI).",
            )
            .fields(VaeEncodeFields::declare)
            .output("latent", PortType::Latent, "The latents (the posterior mean, scaled)."),
            settings,
        )
    }
}

impl Default for VaeEncode {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for VaeEncode {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = VaeEncodeFields::read(inputs)?;
        Ok(vec![Value::payload(encode_pixels(ctx, &f.vae, &f.pixels, self.1)?)])
    }
}

/// VAEEncode's pass: each picture centre-cropped to a multiple of the VAE's factor (ComfyUI's
/// `vae_encode_crop_pixels`) and encoded, in tiles when one pass would not fit the adapter.
pub fn encode_pixels(
    ctx: &mut RunContext<'_>,
    vae: &VaeHandle,
    img: &Image,
    settings: Settings,
) -> Result<Latent, NodeError> {
    let gpu = runtime::gpu()?;
    let f = vae.vae.config.downsample_factor();
    // ComfyUI's vae_encode_crop_pixels: centred crop to a multiple of the factor.
    let (h, w) = (img.height / f * f, img.width / f * f);
    if h == 0 || w == 0 {
        return Err(NodeError::new(format!("image {}x{} is smaller than {f} pixels", img.width, img.height)));
    }
    if img.channels == 0 {
        return Err(NodeError::new("input \"pixels\" has no colour channels"));
    }
    let limit = activation_limit(adapter_limit(gpu), settings.vae_tile_bytes);
    let plan = encode_plan(&vae.vae, h, w, limit).map_err(NodeError::new)?;
    if let Some((_, why)) = &plan {
        ctx.progress.message(&format!("{}: {why}", ctx.node_id));
    }
    let pass = plan.as_ref().map(|(pass, _)| pass);
    let total = img.batch * pass.map_or(1, |p| pass_tiles(h, w, p).unwrap_or(1));
    let lat = vae.vae.config.latent_channels;
    let mut samples = Vec::with_capacity(img.batch * lat * (h / f) * (w / f));
    let shape = [img.batch, lat, h / f, w / f];
    let mut tiles = 0;
    for b in 0..img.batch {
        if ctx.cancelled() {
            return Err(NodeError::new("cancelled"));
        }
        let chw = vae_input(img, b, h, w);
        let mut on_tile = || tile_done(ctx, &mut tiles, total);
        samples.extend(encode_item(gpu, &vae.vae, &chw, (h, w), pass, &mut on_tile).map_err(NodeError::new)?);
    }
    Ok(Latent { shape, samples, noise_mask: None, batch_index: None })
}

/// VAEEncodeForInpaint, as ComfyUI's: the picture cropped to a multiple of the VAE's factor and greyed
/// (0.5) where the mask is, encoded, with the mask grown by `grow_mask_by` as the latent's noise mask (see
/// [`models::image_ops::inpaint`]).
pub struct VaeEncodeForInpaint(NodeSchema, Settings);

graph::node_fields! {
    struct VaeEncodeForInpaintFields {
        pixels: Arc<Image> = input(PortType::Image, "The pictures."),
        vae: Arc<VaeHandle> = input(PortType::Vae, "The VAE (from CheckpointLoaderSimple)."),
        mask: Arc<Mask> = input(PortType::Mask, "1 where to paint; resized to the pictures (bilinear) and rounded."),
        grow_mask_by: usize = int(0, 64, 6, "Window (pixels) the noise mask is dilated with, for seamless edges."),
    }
}

impl VaeEncodeForInpaint {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEEncodeForInpaint",
                "latent/inpaint",
                "Encodes pictures for inpainting: the masked part is greyed out first, and the latent carries the \
                 grown mask, so KSampler repaints only there (at denoise 1).",
            )
            .fields(VaeEncodeForInpaintFields::declare)
            .output("latent", PortType::Latent, "The latents, with the grown mask as their noise mask."),
            settings,
        )
    }
}

impl Default for VaeEncodeForInpaint {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for VaeEncodeForInpaint {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = VaeEncodeForInpaintFields::read(inputs)?;
        let factor = f.vae.vae.config.downsample_factor();
        let prepared = prepare_inpaint(&f.pixels, &f.mask, factor, f.grow_mask_by).map_err(NodeError::new)?;
        let mut latent = encode_pixels(ctx, &f.vae, &prepared.pixels, self.1)?;
        let m = prepared.noise_mask;
        latent.noise_mask = Some((vec![m.batch, 1, m.height, m.width], m.data));
        Ok(vec![Value::payload(latent)])
    }
}

/// InpaintModelConditioning, as ComfyUI's (`nodes.py` @ Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832):
/// the picture encoded as it is (the latent), and greyed where `round(mask)` is 1 and encoded again (the masked
/// image, cropped to a multiple of 8 as ComfyUI does whatever the VAE); both prompts carry the masked image and the
/// mask for an inpainting model (ComfyUI's `concat_latent_image`, `concat_mask`), and the latent the mask as its
/// noise mask unless `noise_mask` is off. A plain model ignores what the prompts carry.
pub struct InpaintModelConditioning(NodeSchema, Settings);

graph::node_fields! {
    struct InpaintModelConditioningFields {
        positive: Arc<Conditioning> = input(PortType::Conditioning, "The positive prompt."),
        negative: Arc<Conditioning> = input(PortType::Conditioning, "The negative prompt."),
        vae: Arc<VaeHandle> = input(PortType::Vae, "The VAE (from CheckpointLoaderSimple)."),
        pixels: Arc<Image> = input(PortType::Image, "The pictures."),
        mask: Arc<Mask> = input(PortType::Mask, "1 where to paint; resized to the pictures (bilinear)."),
        noise_mask: bool = bool(true, "Put the mask on the latent, so sampling changes only the masked part."),
    }
}

impl InpaintModelConditioning {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "InpaintModelConditioning",
                "conditioning/inpaint",
                "Prepares inpainting: the picture's latent, and on both prompts the masked picture's latent and the \
                 mask, which an inpainting model (9 input channels) takes besides the latent.",
            )
            .fields(InpaintModelConditioningFields::declare)
            .output("positive", PortType::Conditioning, "The positive prompt with the masked picture and mask.")
            .output("negative", PortType::Conditioning, "The negative prompt with the masked picture and mask.")
            .output("latent", PortType::Latent, "The picture's latent, with the mask as its noise mask."),
            settings,
        )
    }
}

impl Default for InpaintModelConditioning {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for InpaintModelConditioning {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = InpaintModelConditioningFields::read(inputs)?;
        let prepared = prepare_inpaint_conditioning(&f.pixels, &f.mask).map_err(NodeError::new)?;
        let concat_latent = encode_pixels(ctx, &f.vae, &prepared.pixels, self.1)?;
        let mut latent = encode_pixels(ctx, &f.vae, &f.pixels, self.1)?;
        let m = prepared.mask;
        if f.noise_mask {
            latent.noise_mask = Some((vec![m.batch, 1, m.height, m.width], m.data.clone()));
        }
        let concat = Arc::new(InpaintConcat { latent: Arc::new(concat_latent), mask: Arc::new(m) });
        let with = |c: &Conditioning| c.map_entries(|e| e.inpaint = Some(concat.clone()));
        Ok(vec![Value::payload(with(&f.positive)), Value::payload(with(&f.negative)), Value::payload(latent)])
    }
}
