//! VAEDecode and VAEEncode, as ComfyUI's nodes: latents to pictures in 0..1
//! and back. When one activation of the whole pass would exceed what the
//! adapter binds at once (SD at 512x512 on lavapipe), they decode or encode
//! in tiles instead and say so on the progress output (see `vae_tiled`).

use std::sync::Arc;

use gpu::DType;
use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Value};

use models::image_ops::planes::{push_vae_output, vae_input};

use crate::payload::Latent;
use crate::payload::VaeHandle;
use crate::runtime;
use crate::settings::Settings;
use crate::vae_tiled;

/// After each fallback tile: progress in tiles, and Ctrl-C.
fn tile_done(ctx: &RunContext<'_>, done: &mut usize, total: usize) -> Result<(), NodeError> {
    *done += 1;
    ctx.progress.step(ctx.node_id, *done as u64, total as u64, "tiles");
    if ctx.cancelled() { Err(NodeError::new("cancelled")) } else { Ok(()) }
}

/// The schema, and the settings the command passed.
pub struct VaeDecode(NodeSchema, Settings);

impl VaeDecode {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new("VAEDecode", "latent", "Decodes latents into pictures.")
                .input("samples", PortType::Latent, "The latents.")
                .input("vae", PortType::Vae, "The VAE (from CheckpointLoaderSimple).")
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
        let vae = inputs.get::<VaeHandle>("vae")?;
        let latent = inputs.get::<Latent>("samples")?;
        let gpu = runtime::gpu()?;
        let [b, c, h, w] = latent.shape;
        let limit = vae_tiled::activation_limit(gpu, self.1.vae_tile_bytes);
        let plan = vae_tiled::decode_plan(&vae.vae, h, w, limit)?;
        if let Some((_, why)) = &plan {
            ctx.progress.message(&format!("{}: {why}", ctx.node_id));
        }
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
            let px = match &plan {
                None => {
                    let z = gpu.upload(item, &[1, c, h, w], DType::F32).map_err(err)?;
                    let img = vae.vae.image_from_latent(gpu, &z).map_err(err)?;
                    if img.shape()[2..] != [oh, ow] {
                        return Err(NodeError::new(format!("the VAE decoded {:?}, not {oh}x{ow}", img.shape())));
                    }
                    gpu.download(&img).map_err(err)?
                }
                Some((pass, _)) => {
                    let total = b * vae_tiled::pass_tiles(h, w, pass).unwrap_or(1);
                    let mut on_tile = || tile_done(ctx, &mut tiles, total);
                    vae_tiled::decode_tiled(gpu, &vae.vae, item, (h, w), std::slice::from_ref(pass), &mut on_tile)?
                }
            };
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

impl VaeEncode {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEEncode",
                "latent",
                "Encodes pictures into latents (cropped to a multiple of 8 pixels, centred, as ComfyUI).",
            )
            .input("pixels", PortType::Image, "The pictures.")
            .input("vae", PortType::Vae, "The VAE (from CheckpointLoaderSimple).")
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
        let vae = inputs.get::<VaeHandle>("vae")?;
        let img = inputs.image("pixels")?;
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
        let limit = vae_tiled::activation_limit(gpu, self.1.vae_tile_bytes);
        let plan = vae_tiled::encode_plan(&vae.vae, h, w, limit)?;
        if let Some((_, why)) = &plan {
            ctx.progress.message(&format!("{}: {why}", ctx.node_id));
        }
        let lat = vae.vae.config.latent_channels;
        let mut samples = Vec::with_capacity(img.batch * lat * (h / f) * (w / f));
        let shape = [img.batch, lat, h / f, w / f];
        let mut tiles = 0;
        for b in 0..img.batch {
            if ctx.cancelled() {
                return Err(NodeError::new("cancelled"));
            }
            let chw = vae_input(&img, b, h, w);
            match &plan {
                None => {
                    let t = gpu.upload(&chw, &[1, 3, h, w], DType::F32).map_err(err)?;
                    let z = vae.vae.latent_from_image(gpu, &t).map_err(err)?;
                    if z.shape()[1..] != shape[1..] {
                        return Err(NodeError::new(format!("the VAE encoded {:?}, not {:?}", z.shape(), shape)));
                    }
                    samples.extend(gpu.download(&z).map_err(err)?);
                }
                Some((pass, _)) => {
                    let total = img.batch * vae_tiled::pass_tiles(h, w, pass).unwrap_or(1);
                    let mut on_tile = || tile_done(ctx, &mut tiles, total);
                    let pass = std::slice::from_ref(pass);
                    samples.extend(vae_tiled::encode_tiled(gpu, &vae.vae, &chw, (h, w), pass, &mut on_tile)?);
                }
            }
        }
        Ok(vec![Value::payload(Latent { shape, samples, noise_mask: None })])
    }
}
