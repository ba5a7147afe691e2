//! ControlNet for SD 1.x/2.x: diffusers 0.42.1 `ControlNetModel`
//! (`models/controlnets/controlnet.py`: `ControlNetConditioningEmbedding`,
//! `controlnet_down_blocks`, `controlnet_mid_block`) under the names of LDM's
//! `cldm.cldm.ControlNet` (lllyasviel/ControlNet, `control_model.`):
//! `input_hint_block`, `time_embed`, `input_blocks`, `middle_block`,
//! `zero_convs.N.0`, `middle_block_out.0`.
//!
//! The network is the UNet's encoder half ([`DownPath`], shared with
//! `unet.rs`) plus a small conv stack that brings the control image (the
//! "hint", pixels in 0..1 at 8x the latent size) down to conv_in's output,
//! where it is added, and one 1x1 "zero conv" per skip connection and one
//! after the middle block. Their outputs are the residuals the UNet adds to
//! its skips and middle block ([`crate::unet::Unet::forward_with_residuals`]).

use gpu::ops::matmul::Activation;
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::Conv2d;
use super::unet::{DownOutput, DownPath, UnetConfig};
use crate::checkpoint::weights::Weights;

/// What the ControlNet looks like: the encoder half's config and the hint
/// embedding's convs.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// The encoder half (`out_channels` is unused).
    pub unet: UnetConfig,
    /// Channels of the control image (`input_hint_block.0` in-channels; 3).
    pub hint_channels: usize,
    /// Out-channels of every `input_hint_block` conv but the last (which
    /// outputs `model_channels`); SD: 16, 16, 32, 32, 96, 96, 256.
    pub hint_block_channels: Vec<usize>,
}

impl ControlNetConfig {
    /// How much the hint embedding shrinks the control image: 2 per stride-2
    /// conv (SD: 8, the VAE's factor, so a hint at 8x the latent size lands
    /// on conv_in's output size).
    pub fn hint_downscale(&self) -> usize {
        1 << hint_strides(self.hint_block_channels.len() + 1).iter().filter(|&&s| s == 2).count()
    }

    /// Reads every size from the weights (`w` at `control_model.`): the
    /// encoder half as [`UnetConfig::detect_down_path`] (heads, groups and
    /// eps are SD's defaults: override them for other models), the hint
    /// convs `input_hint_block.{0,2,4,..}`, and checks that one zero conv
    /// exists per skip connection.
    pub fn detect_from_weights(w: &Weights) -> Result<ControlNetConfig, ModelError> {
        let unet = UnetConfig::detect_down_path(w)?;
        let n = (0..).take_while(|i| w.contains(&format!("input_hint_block.{}.weight", 2 * i))).count();
        if n < 2 || n % 2 != 0 {
            return Err(ModelError::Config(format!(
                "{}: {n} convs (input_hint_block.0, .2, ...): expected an even number, at least 2",
                w.full_name("input_hint_block")
            )));
        }
        let mut hint_block_channels = Vec::with_capacity(n - 1);
        let mut hint_channels = 0;
        for i in 0..n {
            let shape = w.shape(&format!("input_hint_block.{}.weight", 2 * i))?;
            let &[out, inp, _, _] = shape.as_slice() else {
                return Err(ModelError::Config(format!(
                    "{} has shape {shape:?}, not a 2-D conv",
                    w.full_name(&format!("input_hint_block.{}.weight", 2 * i))
                )));
            };
            if i == 0 {
                hint_channels = inp;
            }
            if i + 1 < n {
                hint_block_channels.push(out);
            }
        }
        let zero_convs = (0..).take_while(|i| w.contains(&format!("zero_convs.{i}.0.weight"))).count();
        if zero_convs != unet.skip_count() {
            return Err(ModelError::Config(format!(
                "{}: {zero_convs} zero convs (zero_convs.N.0.weight) for the {} skip connections of the input blocks",
                w.full_name("zero_convs"),
                unet.skip_count()
            )));
        }
        Ok(ControlNetConfig { unet, hint_channels, hint_block_channels })
    }
}

/// Strides of the `n` hint convs: the first and last 1, then alternating
/// 1, 2 in between (LDM's `input_hint_block`; diffusers' `blocks` pairs).
fn hint_strides(n: usize) -> Vec<usize> {
    (0..n).map(|i| if i > 0 && i + 1 < n && i % 2 == 0 { 2 } else { 1 }).collect()
}

/// The residuals of one ControlNet call: one per UNet skip connection
/// (conv_in's first) and one for the middle block, in the ControlNet's dtype.
#[derive(Clone)]
pub struct ControlResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

/// A ControlNet's weights on the GPU, fields named after the LDM keys.
pub struct ControlNet {
    pub config: ControlNetConfig,
    pub dtype: DType,
    /// `input_hint_block.{0,2,..}`: 3x3 convs, SiLU after each but the last
    /// (diffusers' `controlnet_cond_embedding` `conv_in`, `blocks.N`, `conv_out`).
    pub input_hint_block: Vec<Conv2d>,
    /// `time_embed`, `input_blocks`, `middle_block`.
    pub down: DownPath,
    /// `zero_convs.N.0`: 1x1 convs, one per skip connection (diffusers' `controlnet_down_blocks.N`).
    pub zero_convs: Vec<Conv2d>,
    /// `middle_block_out.0`: 1x1 conv (diffusers' `controlnet_mid_block`).
    pub middle_block_out: Conv2d,
}

impl ControlNet {
    /// Builds the network `config` describes from `w` (at `control_model.`),
    /// checking every tensor's shape; weights stored as `dtype`.
    pub fn load(gpu: &Gpu, w: &Weights, config: &ControlNetConfig, dtype: DType) -> Result<ControlNet, ModelError> {
        let c = config;
        let (down, skips) = DownPath::load(gpu, w, &c.unet, dtype)?;
        let strides = hint_strides(c.hint_block_channels.len() + 1);
        let mut input_hint_block = Vec::with_capacity(strides.len());
        let mut ch = c.hint_channels;
        for (i, &stride) in strides.iter().enumerate() {
            let out = c.hint_block_channels.get(i).copied().unwrap_or(c.unet.model_channels);
            input_hint_block.push(Conv2d::load_sized(
                gpu,
                &w.pp("input_hint_block").pp(2 * i),
                (ch, out, 3),
                stride,
                1,
                dtype,
            )?);
            ch = out;
        }
        let zero_convs = skips
            .iter()
            .enumerate()
            .map(|(n, &ch)| Conv2d::load_sized(gpu, &w.pp("zero_convs").pp(n).pp(0), (ch, ch, 1), 1, 0, dtype))
            .collect::<Result<Vec<_>, _>>()?;
        let mid = down.mid_channels;
        let middle_block_out = Conv2d::load_sized(gpu, &w.pp("middle_block_out.0"), (mid, mid, 1), 1, 0, dtype)?;
        Ok(ControlNet { config: c.clone(), dtype, input_hint_block, down, zero_convs, middle_block_out })
    }

    /// The control image `[B, hint_channels, H, W]` (pixels in 0..1, any
    /// dtype) through `input_hint_block` -> `[B, model_channels, H/8, W/8]`
    /// in the model's dtype. It depends on nothing else, so a sampler
    /// computes it once per run.
    pub fn embed_hint(&self, gpu: &Gpu, hint: &Tensor) -> Result<Tensor, ModelError> {
        if hint.rank() != 4 || hint.dim(1) != self.config.hint_channels {
            return Err(ModelError::Config(format!(
                "ControlNet hint must be [B, {}, H, W], got {:?}",
                self.config.hint_channels,
                hint.shape()
            )));
        }
        let mut h = gpu::ops::cast::cast(gpu, hint, self.dtype)?;
        let last = self.input_hint_block.len() - 1;
        for (i, c) in self.input_hint_block.iter().enumerate() {
            let act = if i < last { Activation::Silu } else { Activation::None };
            h = c.forward_act(gpu, &h, act)?;
        }
        Ok(h)
    }

    /// The residuals for `x [B, in, h, w]` at `timesteps` (one per item or
    /// one for all) under `context [B, L, context_dim]`, with the embedded
    /// hint `[B, model_channels, h, w]` from [`ControlNet::embed_hint`].
    /// Unscaled: ControlNet strength multiplies them afterwards.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        hint_embedding: &Tensor,
    ) -> Result<ControlResiduals, ModelError> {
        let c = &self.config.unet;
        let timesteps = DownPath::check_inputs(c, x, timesteps, context)?;
        let want = [x.dim(0), c.model_channels, x.dim(2), x.dim(3)];
        if hint_embedding.shape() != want {
            return Err(ModelError::Config(format!(
                "the control image embeds to {:?}, the latent needs {want:?} (the control image must be {}x the latent size)",
                hint_embedding.shape(),
                self.config.hint_downscale()
            )));
        }
        let context = gpu::ops::cast::cast(gpu, context, self.dtype)?;
        let DownOutput { mid, skips, .. } = self.down.forward(
            gpu,
            c,
            self.dtype,
            x,
            &timesteps,
            &context,
            Some(hint_embedding),
            &mut None,
            None,
            &[],
        )?;
        let down = skips.iter().zip(&self.zero_convs).map(|(s, z)| z.forward(gpu, s)).collect::<Result<Vec<_>, _>>()?;
        let mid = self.middle_block_out.forward(gpu, &mid)?;
        Ok(ControlResiduals { down, mid })
    }

    /// [`ControlNet::embed_hint`] then [`ControlNet::forward`], with the hint
    /// `[B, hint_channels, 8h, 8w]` as the pixels of the control image.
    pub fn forward_with_hint(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        hint: &Tensor,
    ) -> Result<ControlResiduals, ModelError> {
        let e = self.embed_hint(gpu, hint)?;
        self.forward(gpu, x, timesteps, context, &e)
    }
}
