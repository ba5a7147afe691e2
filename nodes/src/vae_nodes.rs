//! VAEDecode and VAEEncode, as ComfyUI's nodes: latents to pictures in 0..1
//! and back.

use std::sync::Arc;

use engine::gpu::DType;
use engine::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use engine::{Image, PortType, Value};

use crate::checkpoint_loader::VaeHandle;
use crate::latent::Latent;
use crate::runtime;

fn err(e: impl std::fmt::Display) -> NodeError {
    NodeError::new(e.to_string())
}

fn vae_of(inputs: &NodeInputs) -> Result<Arc<VaeHandle>, NodeError> {
    inputs.input("vae")?.downcast::<VaeHandle>().ok_or_else(|| NodeError::new("input \"vae\" is not a loaded VAE"))
}

pub fn latent_of(inputs: &NodeInputs, name: &str) -> Result<Arc<Latent>, NodeError> {
    inputs.input(name)?.downcast::<Latent>().ok_or_else(|| NodeError::new(format!("input {name:?} is not a latent")))
}

pub struct VaeDecode(NodeSchema);

impl VaeDecode {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("VAEDecode", "latent", "Decodes latents into pictures.")
                .input("samples", PortType::Latent, "The latents.")
                .input("vae", PortType::Vae, "The VAE (from CheckpointLoaderSimple).")
                .output("image", PortType::Image, "The pictures."),
        )
    }
}

impl Default for VaeDecode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for VaeDecode {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let vae = vae_of(inputs)?;
        let latent = latent_of(inputs, "samples")?;
        let gpu = runtime::gpu()?;
        let [b, c, h, w] = latent.shape;
        let mut data = Vec::new();
        let (mut oh, mut ow) = (0, 0);
        // One image at a time keeps the decoder's activations (the largest
        // tensors of the pipeline) to one picture's worth.
        for i in 0..b {
            if ctx.cancelled() {
                return Err(NodeError::new("cancelled"));
            }
            let item = &latent.samples[i * c * h * w..(i + 1) * c * h * w];
            let z = gpu.upload(item, &[1, c, h, w], DType::F32).map_err(err)?;
            let img = vae.vae.image_from_latent(gpu, &z).map_err(err)?;
            let (ih, iw) = (img.dim(2), img.dim(3));
            (oh, ow) = (ih, iw);
            let px = gpu.download(&img).map_err(err)?;
            // [1, 3, H, W] in -1..1 -> [H, W, 3] in 0..1
            for y in 0..ih {
                for x in 0..iw {
                    for ch in 0..3 {
                        let v = px[(ch * ih + y) * iw + x];
                        data.push(((v + 1.0) / 2.0).clamp(0.0, 1.0));
                    }
                }
            }
            ctx.progress.step(ctx.node_id, (i + 1) as u64, b as u64, "images");
        }
        let image =
            Image::from_data(b, oh, ow, 3, data).ok_or_else(|| NodeError::new("decoded images differ in size"))?;
        Ok(vec![Value::Image(Arc::new(image))])
    }
}

pub struct VaeEncode(NodeSchema);

impl VaeEncode {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "VAEEncode",
                "latent",
                "Encodes pictures into latents (cropped to a multiple of 8 pixels, centred, as ComfyUI).",
            )
            .input("pixels", PortType::Image, "The pictures.")
            .input("vae", PortType::Vae, "The VAE (from CheckpointLoaderSimple).")
            .output("latent", PortType::Latent, "The latents (the posterior mean, scaled)."),
        )
    }
}

impl Default for VaeEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for VaeEncode {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let vae = vae_of(inputs)?;
        let img = inputs.image("pixels")?;
        let gpu = runtime::gpu()?;
        let f = vae.vae.config.downsample_factor();
        // ComfyUI's vae_encode_crop_pixels: centred crop to a multiple of the factor.
        let (h, w) = (img.height / f * f, img.width / f * f);
        if h == 0 || w == 0 {
            return Err(NodeError::new(format!("image {}x{} is smaller than {f} pixels", img.width, img.height)));
        }
        let (y0, x0) = ((img.height - h) / 2, (img.width - w) / 2);
        let mut samples = Vec::new();
        let mut shape = [img.batch, 0, 0, 0];
        for b in 0..img.batch {
            // [H, W, C] in 0..1 -> [1, 3, h, w] in -1..1 (grey replaces a missing channel)
            let mut chw = vec![0.0f32; 3 * h * w];
            for ch in 0..3 {
                let src_c = ch.min(img.channels - 1);
                for y in 0..h {
                    for x in 0..w {
                        chw[(ch * h + y) * w + x] = img.get(b, y + y0, x + x0, src_c) * 2.0 - 1.0;
                    }
                }
            }
            let t = gpu.upload(&chw, &[1, 3, h, w], DType::F32).map_err(err)?;
            let z = vae.vae.latent_from_image(gpu, &t).map_err(err)?;
            shape[1..].copy_from_slice(&z.shape()[1..]);
            samples.extend(gpu.download(&z).map_err(err)?);
        }
        Ok(vec![Value::Opaque(PortType::Latent, Arc::new(Latent { shape, samples, noise_mask: None }))])
    }
}
