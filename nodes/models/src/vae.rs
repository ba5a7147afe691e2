//! The SD 1.x VAE: diffusers 0.42.1 `AutoencoderKL` (`Encoder`, `Decoder`,
//! `DiagonalGaussianDistribution`, `quant_conv` / `post_quant_conv`) under the
//! names of LDM's `ldm.models.autoencoder.AutoencoderKL` (`first_stage_model.`),
//! built from `ldm.modules.diffusionmodules.model.{Encoder, Decoder}`:
//! `encoder.{conv_in, down.{i}.{block.{j}, downsample}, mid.{block_1, attn_1,
//! block_2}, norm_out, conv_out}`, `quant_conv`, `post_quant_conv` and
//! `decoder.{conv_in, mid, up.{i}.{block.{j}, upsample}, norm_out, conv_out}`.
//!
//! LDM numbers the decoder's levels by resolution, like the encoder's:
//! `decoder.up.{n-1}` is the lowest resolution and runs first (diffusers'
//! `up_blocks.0`). Blocks are in `vae_blocks.rs`.
//!
//! Sizes come from the weights (`VaeConfig::detect_from_weights`); GroupNorm
//! groups and eps and the latent scaling factor, which the file cannot tell,
//! are config fields with SD 1.x's values as defaults. `encode` and `decode`
//! work on unscaled latents, as diffusers' `AutoencoderKL` does; the caller
//! applies `scaling_factor` (or uses `latent_from_image` / `image_from_latent`).

use gpu::ops::binary::{add, mul};
use gpu::ops::cast::cast;
use gpu::ops::elementwise::{Unary, unary};
use gpu::ops::layout::slice;
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{Conv2d, GroupNorm};
use super::resblock::{ResBlock, VAE_KEYS};
use super::vae_blocks::{AttentionPath, AttnBlock, Downsample, Upsample};
use crate::checkpoint::weights::Weights;

/// Named block outputs, in execution order, for tests and debugging.
pub type Intermediates = Vec<(String, Tensor)>;

/// Sizes and constants of an `AutoencoderKL`.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels in (`encoder.conv_in`) and out (`decoder.conv_out`).
    pub in_channels: usize,
    pub out_channels: usize,
    /// Latent channels (SD: 4); the encoder outputs twice as many (mean, logvar).
    pub latent_channels: usize,
    /// Channels per level, highest resolution first (SD: 128, 256, 512, 512).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level; decoder levels have one more.
    pub layers_per_block: usize,
    /// Whether the mid blocks have `attn_1` (diffusers' `mid_block_add_attention`).
    pub mid_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// GroupNorm groups (SD: 32); not in the file.
    pub norm_groups: usize,
    /// GroupNorm eps (1e-6 in every LDM/diffusers VAE norm).
    pub norm_eps: f32,
    /// Latent scale (SD 1.x: 0.18215; SDXL: 0.13025); not in the file.
    pub scaling_factor: f32,
}

impl Default for VaeConfig {
    /// SD 1.x's VAE (`runwayml/stable-diffusion-v1-5/vae/config.json`).
    fn default() -> Self {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            mid_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            norm_groups: 32,
            norm_eps: 1e-6,
            scaling_factor: 0.18215,
        }
    }
}

impl VaeConfig {
    /// Reads the structure from the tensors under `first_stage_model.`:
    /// levels and their channels from `encoder.down.{i}.block.0.conv1`,
    /// resnets per level by probing `encoder.down.0.block.{j}`, latent
    /// channels from `decoder.conv_in`; `norm_groups`, `norm_eps` and
    /// `scaling_factor` are SD 1.x's.
    pub fn detect_from_weights(w: &Weights) -> Result<VaeConfig, ModelError> {
        let conv_in = w.shape("encoder.conv_in.weight")?;
        let &[_, in_channels, _, _] = conv_in.as_slice() else {
            return Err(ModelError::Config(format!(
                "{} has shape {conv_in:?}, not a 2-D conv",
                w.full_name("encoder.conv_in.weight")
            )));
        };
        let mut block_out_channels = Vec::new();
        while w.contains(&format!("encoder.down.{}.block.0.conv1.weight", block_out_channels.len())) {
            let name = format!("encoder.down.{}.block.0.conv1.weight", block_out_channels.len());
            block_out_channels.push(w.shape(&name)?[0]);
        }
        if block_out_channels.is_empty() {
            // Report the first key a VAE must have.
            w.shape("encoder.down.0.block.0.conv1.weight")?;
        }
        let layers_per_block =
            (0..).take_while(|j| w.contains(&format!("encoder.down.0.block.{j}.conv1.weight"))).count();
        let latent = w.shape("decoder.conv_in.weight")?;
        let out = w.shape("decoder.conv_out.weight")?;
        if latent.len() != 4 || out.len() != 4 {
            return Err(ModelError::Config(format!(
                "{} {latent:?} / {} {out:?}: not 2-D convs",
                w.full_name("decoder.conv_in.weight"),
                w.full_name("decoder.conv_out.weight")
            )));
        }
        Ok(VaeConfig {
            in_channels,
            out_channels: out[0],
            latent_channels: latent[1],
            block_out_channels,
            layers_per_block,
            mid_attention: w.contains("encoder.mid.attn_1.q.weight"),
            use_quant_conv: w.contains("quant_conv.weight"),
            use_post_quant_conv: w.contains("post_quant_conv.weight"),
            ..VaeConfig::default()
        })
    }

    /// Image pixels per latent pixel along each axis: 2^(levels - 1) (SD: 8).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// The structure must have at least one level of at least one resnet.
    fn check(&self) -> Result<(), ModelError> {
        if self.block_out_channels.is_empty() || self.layers_per_block == 0 || self.latent_channels == 0 {
            return Err(ModelError::Config(format!(
                "VAE config without levels, resnets or latent channels: channels {:?}, {} resnets per level, {} latent channels",
                self.block_out_channels, self.layers_per_block, self.latent_channels
            )));
        }
        Ok(())
    }

    fn norm(&self) -> (usize, f32) {
        (self.norm_groups, self.norm_eps)
    }
}

/// `mid`: resnet, optional single-head attention, resnet.
pub struct MidBlock {
    pub block_1: ResBlock,
    pub attn_1: Option<AttnBlock>,
    pub block_2: ResBlock,
}

/// A level's `count` ResNet blocks (`block.0..`): the first `cin -> cout`, the rest `cout -> cout`.
fn res_blocks(
    gpu: &Gpu,
    wl: &Weights,
    config: &VaeConfig,
    count: usize,
    (cin, cout): (usize, usize),
    dtype: DType,
) -> Result<Vec<ResBlock>, ModelError> {
    (0..count)
        .map(|j| {
            let inp = if j == 0 { cin } else { cout };
            ResBlock::load(gpu, &wl.pp("block").pp(j), &VAE_KEYS, (inp, cout, 0), config.norm(), dtype)
        })
        .collect()
}

impl MidBlock {
    fn load(gpu: &Gpu, w: &Weights, c: usize, config: &VaeConfig, dtype: DType) -> Result<MidBlock, ModelError> {
        Ok(MidBlock {
            block_1: ResBlock::load(gpu, &w.pp("block_1"), &VAE_KEYS, (c, c, 0), config.norm(), dtype)?,
            attn_1: if config.mid_attention {
                Some(AttnBlock::load(gpu, &w.pp("attn_1"), c, config.norm(), dtype)?)
            } else {
                None
            },
            block_2: ResBlock::load(gpu, &w.pp("block_2"), &VAE_KEYS, (c, c, 0), config.norm(), dtype)?,
        })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut h = self.block_1.forward(gpu, x, None)?;
        if let Some(attn) = &self.attn_1 {
            h = attn.forward(gpu, &h)?;
        }
        self.block_2.forward(gpu, &h, None)
    }
}

/// One encoder level: `encoder.down.{i}`.
pub struct DownLevel {
    pub block: Vec<ResBlock>,
    /// Absent at the last level.
    pub downsample: Option<Downsample>,
}

/// LDM `Encoder` (diffusers `Encoder`, `double_z=True`): image
/// `[B, in, H, W]` -> `[B, 2 * latent, H / f, W / f]` (mean and logvar
/// before `quant_conv`).
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down: Vec<DownLevel>,
    pub mid: MidBlock,
    pub norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(gpu: &Gpu, w: &Weights, config: &VaeConfig, dtype: DType) -> Result<Encoder, ModelError> {
        config.check()?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let conv_in = Conv2d::load_sized(gpu, &w.pp("conv_in"), (config.in_channels, ch[0], 3), 1, 1, dtype)?;
        let mut down = Vec::with_capacity(n);
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let wl = w.pp("down").pp(i);
            let block = res_blocks(gpu, &wl, config, config.layers_per_block, (cin, cout), dtype)?;
            cin = cout;
            let downsample =
                if i + 1 < n { Some(Downsample::load(gpu, &wl.pp("downsample"), cout, dtype)?) } else { None };
            down.push(DownLevel { block, downsample });
        }
        let top = ch[n - 1];
        Ok(Encoder {
            conv_in,
            down,
            mid: MidBlock::load(gpu, &w.pp("mid"), top, config, dtype)?,
            norm_out: GroupNorm::load_sized(gpu, &w.pp("norm_out"), top, config.norm_groups, config.norm_eps, dtype)?,
            conv_out: Conv2d::load_sized(gpu, &w.pp("conv_out"), (top, 2 * config.latent_channels, 3), 1, 1, dtype)?,
        })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        self.run(gpu, x, &mut |_, _| {})
    }

    fn run(&self, gpu: &Gpu, x: &Tensor, record: &mut dyn FnMut(String, &Tensor)) -> Result<Tensor, ModelError> {
        let mut h = self.conv_in.forward(gpu, x)?;
        record("encoder.conv_in".into(), &h);
        for (i, level) in self.down.iter().enumerate() {
            for block in &level.block {
                h = block.forward(gpu, &h, None)?;
            }
            if let Some(ds) = &level.downsample {
                h = ds.forward(gpu, &h)?;
            }
            record(format!("encoder.down.{i}"), &h);
        }
        h = self.mid.forward(gpu, &h)?;
        record("encoder.mid".into(), &h);
        let h = self.norm_out.forward(gpu, &h, true)?;
        self.conv_out.forward(gpu, &h)
    }
}

/// One decoder level: `decoder.up.{i}` (LDM numbering: `i = n - 1` runs first).
pub struct UpLevel {
    pub block: Vec<ResBlock>,
    /// Absent at level 0 (the full-resolution one, which runs last).
    pub upsample: Option<Upsample>,
}

/// LDM `Decoder` (diffusers `Decoder`): latent `[B, latent, h, w]` ->
/// image `[B, out, h * f, w * f]`.
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid: MidBlock,
    /// Indexed as in the file: `up[i]` is `decoder.up.{i}`.
    pub up: Vec<UpLevel>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(gpu: &Gpu, w: &Weights, config: &VaeConfig, dtype: DType) -> Result<Decoder, ModelError> {
        config.check()?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let top = ch[n - 1];
        let conv_in = Conv2d::load_sized(gpu, &w.pp("conv_in"), (config.latent_channels, top, 3), 1, 1, dtype)?;
        let mid = MidBlock::load(gpu, &w.pp("mid"), top, config, dtype)?;
        // Built in execution order (lowest resolution first), stored by LDM index.
        let mut up: Vec<Option<UpLevel>> = (0..n).map(|_| None).collect();
        let mut cin = top;
        for i in (0..n).rev() {
            let wl = w.pp("up").pp(i);
            let cout = ch[i];
            let block = res_blocks(gpu, &wl, config, config.layers_per_block + 1, (cin, cout), dtype)?;
            cin = cout;
            let upsample = if i > 0 { Some(Upsample::load(gpu, &wl.pp("upsample"), cout, dtype)?) } else { None };
            up[i] = Some(UpLevel { block, upsample });
        }
        Ok(Decoder {
            conv_in,
            mid,
            up: up.into_iter().map(|l| l.expect("every level built")).collect(),
            norm_out: GroupNorm::load_sized(gpu, &w.pp("norm_out"), ch[0], config.norm_groups, config.norm_eps, dtype)?,
            conv_out: Conv2d::load_sized(gpu, &w.pp("conv_out"), (ch[0], config.out_channels, 3), 1, 1, dtype)?,
        })
    }

    pub fn forward(&self, gpu: &Gpu, z: &Tensor) -> Result<Tensor, ModelError> {
        self.run(gpu, z, &mut |_, _| {})
    }

    fn run(&self, gpu: &Gpu, z: &Tensor, record: &mut dyn FnMut(String, &Tensor)) -> Result<Tensor, ModelError> {
        let mut h = self.conv_in.forward(gpu, z)?;
        record("decoder.conv_in".into(), &h);
        h = self.mid.forward(gpu, &h)?;
        record("decoder.mid".into(), &h);
        for (i, level) in self.up.iter().enumerate().rev() {
            for block in &level.block {
                h = block.forward(gpu, &h, None)?;
            }
            if let Some(us) = &level.upsample {
                h = us.forward(gpu, &h)?;
            }
            record(format!("decoder.up.{i}"), &h);
        }
        let h = self.norm_out.forward(gpu, &h, true)?;
        self.conv_out.forward(gpu, &h)
    }
}

/// diffusers' `DiagonalGaussianDistribution` (LDM's
/// `DiagonalGaussianDistribution`): the encoder's posterior, each
/// `[B, latent, h, w]` in the model's dtype, unscaled.
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// `clamp(logvar, -30, 20)`, as both implementations clamp it.
    pub logvar: Tensor,
    /// `exp(0.5 * logvar)`.
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// The distribution's mode: the mean (ComfyUI's VAEEncode and
    /// diffusers' `sample_mode="argmax"`).
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// `mean + std * noise` (diffusers' `latent_dist.sample()` with the
    /// caller's standard-normal `noise`, the mean's shape).
    pub fn sample(&self, gpu: &Gpu, noise: &Tensor) -> Result<Tensor, ModelError> {
        let noise = cast(gpu, noise, self.mean.dtype())?;
        let scaled = mul(gpu, &self.std, &noise)?;
        Ok(add(gpu, &self.mean, &scaled)?)
    }
}

/// LDM `AutoencoderKL` / diffusers `AutoencoderKL`.
pub struct Vae {
    pub config: VaeConfig,
    pub dtype: DType,
    pub encoder: Encoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    pub decoder: Decoder,
}

impl Vae {
    /// Loads from `w` at `first_stage_model.`, with weights and activations in `dtype`.
    pub fn load(gpu: &Gpu, w: &Weights, config: &VaeConfig, dtype: DType) -> Result<Vae, ModelError> {
        config.check()?;
        let lat2 = 2 * config.latent_channels;
        let quant_conv = match config.use_quant_conv {
            true => Some(Conv2d::load_sized(gpu, &w.pp("quant_conv"), (lat2, lat2, 1), 1, 0, dtype)?),
            false => None,
        };
        let lat = config.latent_channels;
        let post_quant_conv = match config.use_post_quant_conv {
            true => Some(Conv2d::load_sized(gpu, &w.pp("post_quant_conv"), (lat, lat, 1), 1, 0, dtype)?),
            false => None,
        };
        Ok(Vae {
            config: config.clone(),
            dtype,
            encoder: Encoder::load(gpu, &w.pp("encoder"), config, dtype)?,
            quant_conv,
            post_quant_conv,
            decoder: Decoder::load(gpu, &w.pp("decoder"), config, dtype)?,
        })
    }

    pub fn scaling_factor(&self) -> f32 {
        self.config.scaling_factor
    }

    /// How both mid-block attentions run (default `Auto`: the flash kernel
    /// up to 160 channels, SD's 512 through the score-matrix fallback).
    pub fn set_attention_path(&mut self, path: AttentionPath) {
        for attn in [&mut self.encoder.mid.attn_1, &mut self.decoder.mid.attn_1].into_iter().flatten() {
            attn.path = path;
        }
    }

    /// Checks `x [B, channels, H, W]`, H and W positive multiples of
    /// `multiple`, and casts it to the model's dtype.
    fn input(&self, gpu: &Gpu, x: &Tensor, what: &str, channels: usize, multiple: usize) -> Result<Tensor, ModelError> {
        let &[_, c, h, w] = x.shape() else {
            return Err(ModelError::Config(format!("VAE {what} must be [B, {channels}, H, W], got {:?}", x.shape())));
        };
        if c != channels {
            return Err(ModelError::Config(format!("VAE {what} has {c} channels, the model takes {channels}")));
        }
        if h == 0 || w == 0 || h % multiple != 0 || w % multiple != 0 {
            return Err(ModelError::Config(format!(
                "VAE {what} is {w}x{h} (WxH): both sides must be positive multiples of {multiple}, the VAE's \
                 downsampling factor (crop or pad the image)"
            )));
        }
        Ok(cast(gpu, x, self.dtype)?)
    }

    /// `image [B, in, H, W]` in [-1, 1] (H, W multiples of
    /// `config.downsample_factor()`) -> the posterior over unscaled latents
    /// `[B, latent, H / f, W / f]`.
    pub fn encode(&self, gpu: &Gpu, image: &Tensor) -> Result<DiagonalGaussian, ModelError> {
        self.encode_run(gpu, image, &mut |_, _| {})
    }

    /// `encode`, also returning `encoder.conv_in`, `encoder.down.{i}`,
    /// `encoder.mid`, `encoder_output` (before quant_conv) and `moments`.
    pub fn encode_with_intermediates(
        &self,
        gpu: &Gpu,
        image: &Tensor,
    ) -> Result<(DiagonalGaussian, Intermediates), ModelError> {
        let mut trace = Vec::new();
        let dist = self.encode_run(gpu, image, &mut |name, t| trace.push((name, t.clone())))?;
        Ok((dist, trace))
    }

    fn encode_run(
        &self,
        gpu: &Gpu,
        image: &Tensor,
        record: &mut dyn FnMut(String, &Tensor),
    ) -> Result<DiagonalGaussian, ModelError> {
        let x = self.input(gpu, image, "image", self.config.in_channels, self.config.downsample_factor())?;
        let h = self.encoder.run(gpu, &x, record)?;
        record("encoder_output".into(), &h);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(gpu, &h)?,
            None => h,
        };
        record("moments".into(), &moments);
        let lat = self.config.latent_channels;
        // moments [B, 2L, h, w] = cat(mean, logvar) on the channel axis.
        let mean = slice(gpu, &moments, 1, 0, lat)?;
        let logvar = slice(gpu, &moments, 1, lat, lat)?;
        // No clamp or exp kernel exists, so the clamp and exp(0.5 logvar) run
        // on the CPU: one readback of the small latent (4 x 64 x 64 values per
        // 512 px image), which waits for the encoder to finish.
        let raw = gpu.download(&logvar)?;
        let logvar_c: Vec<f32> = raw.iter().map(|v| v.clamp(-30.0, 20.0)).collect();
        let std: Vec<f32> = logvar_c.iter().map(|v| (0.5 * f64::from(*v)).exp() as f32).collect();
        let logvar = gpu.upload(&logvar_c, logvar.shape(), self.dtype)?;
        let std = gpu.upload(&std, mean.shape(), self.dtype)?;
        Ok(DiagonalGaussian { mean, logvar, std })
    }

    /// Unscaled latent `z [B, latent, h, w]` -> image `[B, out, h * f, w * f]`
    /// (about [-1, 1]; not clamped).
    pub fn decode(&self, gpu: &Gpu, z: &Tensor) -> Result<Tensor, ModelError> {
        self.decode_run(gpu, z, &mut |_, _| {})
    }

    /// `decode`, also returning `post_quant_conv_output`, `decoder.conv_in`,
    /// `decoder.mid` and `decoder.up.{i}` (in execution order: `n-1` first).
    pub fn decode_with_intermediates(&self, gpu: &Gpu, z: &Tensor) -> Result<(Tensor, Intermediates), ModelError> {
        let mut trace = Vec::new();
        let y = self.decode_run(gpu, z, &mut |name, t| trace.push((name, t.clone())))?;
        Ok((y, trace))
    }

    fn decode_run(&self, gpu: &Gpu, z: &Tensor, record: &mut dyn FnMut(String, &Tensor)) -> Result<Tensor, ModelError> {
        let z = self.input(gpu, z, "latent", self.config.latent_channels, 1)?;
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(gpu, &z)?,
            None => z,
        };
        record("post_quant_conv_output".into(), &z);
        self.decoder.run(gpu, &z, record)
    }

    /// The scaled latent the UNet works on: `encode(image).mode() * scaling_factor`
    /// (deterministic, as ComfyUI's VAEEncode; for diffusers' sampled latent
    /// use `encode(..)?.sample(gpu, noise)` and scale it).
    pub fn latent_from_image(&self, gpu: &Gpu, image: &Tensor) -> Result<Tensor, ModelError> {
        let dist = self.encode(gpu, image)?;
        Ok(unary(gpu, dist.mode(), Unary::Scale(self.config.scaling_factor))?)
    }

    /// `decode(latent / scaling_factor)`: a scaled latent (the UNet's) to an image.
    pub fn image_from_latent(&self, gpu: &Gpu, latent: &Tensor) -> Result<Tensor, ModelError> {
        let latent = cast(gpu, latent, self.dtype)?;
        let z = unary(gpu, &latent, Unary::Scale(1.0 / self.config.scaling_factor))?;
        self.decode(gpu, &z)
    }
}
