//! The layers of the SD 1.x UNet (see `unet.rs`), under their LDM names:
//!
//! - [`EmbTable`]: the time projections of every [`ResBlock`] (`resblock.rs`,
//!   shared with the VAE) in one product;
//! - [`SpatialTransformer`]: LDM `attention.SpatialTransformer` = diffusers
//!   `Transformer2DModel` (continuous input) holding [`BasicTransformerBlock`]s
//!   (self-attention, cross-attention, GEGLU feed-forward) built from
//!   [`CrossAttention`] (diffusers `Attention`) and [`FeedForward`];
//! - [`Downsample`] (`op`, diffusers `Downsample2D`) and [`Upsample`]
//!   (`conv`, diffusers `Upsample2D`).
//!
//! Mirrors diffusers 0.42.1 `models/resnet.py`, `models/attention.py` and
//! `models/transformers/transformer_2d.py`. Every `load` checks each tensor
//! against the shape the network needs, so a wrong checkpoint fails with
//! the key's name.

use gpu::ops::attention::{AttentionOptions, attention_kv, attention_qkv};
use gpu::ops::layout::{concat, slice, upsample_nearest2x};
use gpu::ops::matmul::{MatmulOptions, interleave_halves, matmul};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use super::resblock::{EmbProjection, ResBlock};
use crate::checkpoint::weights::Weights;

/// How the attention layers split their channels into heads; the file does
/// not say, so it comes from the model family's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionHeads {
    /// The same number of heads at every width (SD 1.x: 8; diffusers calls
    /// it `attention_head_dim`, LDM `num_heads`).
    Count(usize),
    /// Heads of a fixed width (SD 2.x: 64; LDM `num_head_channels`).
    Dim(usize),
}

impl AttentionHeads {
    /// Heads for an attention of `channels` channels.
    pub fn heads(self, channels: usize) -> Result<usize, ModelError> {
        let heads = match self {
            AttentionHeads::Count(n) => n,
            AttentionHeads::Dim(d) if d > 0 && channels.is_multiple_of(d) => channels / d,
            AttentionHeads::Dim(_) => 0,
        };
        if heads == 0 || !channels.is_multiple_of(heads) {
            return Err(ModelError::Config(format!("{channels} attention channels do not split into {self:?}")));
        }
        Ok(heads)
    }
}

/// Norm settings shared by every block of one UNet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormConfig {
    /// GroupNorm groups (SD: 32).
    pub groups: usize,
    /// ResBlock (and final) GroupNorm eps (SD: 1e-5).
    pub resnet_eps: f32,
    /// SpatialTransformer GroupNorm eps (SD: 1e-6).
    pub transformer_eps: f32,
    /// LayerNorm eps inside the transformer blocks (SD: 1e-5).
    pub layer_norm_eps: f32,
}

/// The time projections of several ResBlocks stacked into one weight, so a
/// UNet step makes them with one product instead of one per block.
pub struct EmbTable {
    /// `[width, emb]`, bias `[width]`.
    pub projection: Linear,
}

impl EmbTable {
    /// Takes the projection of every block (in order) into one table and
    /// points each block at its columns; `None` when there are no blocks.
    pub fn build<'b>(
        gpu: &Gpu,
        blocks: impl IntoIterator<Item = &'b mut ResBlock>,
    ) -> Result<Option<EmbTable>, ModelError> {
        let mut layers = Vec::new();
        let mut offset = 0;
        for b in blocks {
            match b.emb.replace(EmbProjection::InTable { offset }) {
                Some(EmbProjection::Own(lin)) => {
                    offset += lin.weight.dim(0);
                    layers.push(lin);
                }
                Some(EmbProjection::InTable { .. }) => {
                    return Err(ModelError::Config("a ResBlock's time projection is already in a table".into()));
                }
                None => return Err(ModelError::Config("a ResBlock without a time projection".into())),
            }
        }
        if layers.is_empty() {
            return Ok(None);
        }
        Ok(Some(EmbTable { projection: stack(gpu, &layers)? }))
    }

    /// Every block's projection of `emb_silu [B, emb]`: `[B, width]`.
    pub fn project(&self, gpu: &Gpu, emb_silu: &Tensor) -> Result<Tensor, ModelError> {
        self.projection.forward(gpu, emb_silu)
    }
}

/// diffusers `Attention` as SD's transformer blocks use it: `to_q`, `to_k`,
/// `to_v` (no bias in SD), multi-head scaled dot-product attention with
/// scale `1/sqrt(head_dim)`, then `to_out.0` (with bias; `.1` is dropout).
///
/// The projections that read the same input are stacked into one weight, so
/// one product makes them: q, k and v for self-attention (`[3 inner, dim]`),
/// k and v for cross-attention (`[2 inner, kv_dim]`); the attention kernel
/// reads its operands out of the packed rows.
pub struct CrossAttention {
    pub projections: Projections,
    pub to_out_0: Linear,
    pub heads: usize,
}

/// The input projections of a [`CrossAttention`], stacked by input.
pub enum Projections {
    /// `to_q`, `to_k`, `to_v` stacked: `[3 inner, dim]`.
    SelfAttention { qkv: Linear },
    /// `to_q` `[inner, dim]`; `to_k`, `to_v` stacked: `[2 inner, kv_dim]`.
    Cross { q: Linear, kv: Linear },
}

/// Stacks linear layers of the same input along their outputs; a layer
/// without a bias contributes zeros when another has one.
fn stack(gpu: &Gpu, layers: &[Linear]) -> Result<Linear, ModelError> {
    let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
    let weight = concat(gpu, &weights, 0)?;
    if layers.iter().all(|l| l.bias.is_none()) {
        return Ok(Linear { weight, bias: None });
    }
    let biases = layers
        .iter()
        .map(|l| match &l.bias {
            Some(b) => Ok(b.clone()),
            None => gpu.zeros(&[l.weight.dim(0)], l.weight.dtype()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bias = concat(gpu, &biases.iter().collect::<Vec<_>>(), 0)?;
    Ok(Linear { weight, bias: Some(bias) })
}

impl CrossAttention {
    /// `query_dim` channels attend over `kv_dim`-channel keys; with
    /// `self_attention` over themselves (then `kv_dim` = `query_dim`).
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        query_dim: usize,
        kv_dim: usize,
        heads: usize,
        self_attention: bool,
        dtype: DType,
    ) -> Result<CrossAttention, ModelError> {
        // The inner width is what to_q produces; SD keeps it equal to query_dim.
        let inner = w.shape("to_q.weight")?.first().copied().unwrap_or(0);
        if inner == 0 || heads == 0 || !inner.is_multiple_of(heads) {
            return Err(ModelError::Config(format!(
                "{}: {inner} channels do not split into {heads} heads",
                w.full_name("to_q.weight")
            )));
        }
        let kv_dim = if self_attention { query_dim } else { kv_dim };
        let load = |w: &Weights, name: &str, inp| Linear::load_sized(gpu, &w.pp(name), inp, inner, dtype);
        // Stacked once per weight source (a LoRA'd copy of the UNet shares the stacks it does not patch).
        let projections = if self_attention {
            let qkv = Linear::derived(w, &["to_q", "to_k", "to_v"], dtype, |w| {
                stack(gpu, &[load(w, "to_q", query_dim)?, load(w, "to_k", kv_dim)?, load(w, "to_v", kv_dim)?])
            })?;
            Projections::SelfAttention { qkv }
        } else {
            let kv = Linear::derived(w, &["to_k", "to_v"], dtype, |w| {
                stack(gpu, &[load(w, "to_k", kv_dim)?, load(w, "to_v", kv_dim)?])
            })?;
            Projections::Cross { q: load(w, "to_q", query_dim)?, kv }
        };
        Ok(CrossAttention {
            projections,
            to_out_0: Linear::load_sized(gpu, &w.pp("to_out.0"), inner, query_dim, dtype)?,
            heads,
        })
    }

    /// `x [B, L, query_dim]` attends over itself (self-attention) or over
    /// `context [B, Lk, kv_dim]` (cross) -> `[B, L, query_dim]`, plus
    /// `residual` (same shape) when given.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let opts = AttentionOptions::new(self.heads);
        // The packed rows are [B, L, heads * head_dim] per operand, the layout the kernel splits heads from.
        let o = match (&self.projections, context) {
            (Projections::SelfAttention { qkv }, None) => attention_qkv(gpu, &qkv.forward(gpu, x)?, opts)?,
            (Projections::Cross { q, kv }, Some(context)) => {
                attention_kv(gpu, &q.forward(gpu, x)?, &kv.forward(gpu, context)?, opts)?
            }
            (Projections::SelfAttention { .. }, Some(_)) | (Projections::Cross { .. }, None) => {
                return Err(ModelError::Config(
                    "attention: a self-attention layer got a context, or a cross-attention layer none".into(),
                ));
            }
        };
        self.to_out_0.forward_residual(gpu, &o, residual)
    }
}

/// diffusers `FeedForward` with GEGLU: `net.0.proj` `[2 * inner, C]`, then
/// `h * gelu(gate)` over its two halves, then `net.2` `[C, inner]` (`net.1` is dropout).
pub struct FeedForward {
    /// `net.0.proj` with its output rows reordered into (value, gate) pairs
    /// ([`interleave_halves`]), so the product's epilogue computes GEGLU.
    pub net_0_proj: Linear,
    pub net_2: Linear,
}

impl FeedForward {
    pub fn load(gpu: &Gpu, w: &Weights, dim: usize, dtype: DType) -> Result<FeedForward, ModelError> {
        // SD's inner width is 4 * dim; read it from net.2 rather than assume.
        let inner = w.shape("net.2.weight")?.get(1).copied().unwrap_or(0);
        if inner == 0 {
            return Err(ModelError::Config(format!("{} has no input width", w.full_name("net.2.weight"))));
        }
        let net_0_proj = Linear::derived(w, &["net.0.proj"], dtype, |w| {
            let proj = Linear::load_sized(gpu, &w.pp("net.0.proj"), dim, 2 * inner, dtype)?;
            let bias = proj.bias.as_ref().map(|b| interleave_halves(gpu, b)).transpose()?;
            Ok(Linear { weight: interleave_halves(gpu, &proj.weight)?, bias })
        })?;
        Ok(FeedForward { net_0_proj, net_2: Linear::load_sized(gpu, &w.pp("net.2"), inner, dim, dtype)? })
    }

    /// `[B, L, C] -> [B, L, C]`, plus `residual` when given.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let p = &self.net_0_proj;
        let opts = MatmulOptions { transpose_b: true, bias: p.bias.as_ref(), geglu: true, ..Default::default() };
        let h = matmul(gpu, x, &p.weight, &opts)?;
        self.net_2.forward_residual(gpu, &h, residual)
    }
}

/// ComfyUI's transformer `middle_patch` (what GLIGEN installs, `gligen.rs`): a function of the hidden state
/// `[B, HW, C]` after each BasicTransformerBlock's self-attention, given the index of the SpatialTransformer the
/// block is in, counted in the UNet's forward order from 0 (ComfyUI's `transformer_index`).
pub trait MiddlePatch {
    fn apply(&self, gpu: &Gpu, transformer_index: usize, x: &Tensor) -> Result<Tensor, ModelError>;
}

/// diffusers `BasicTransformerBlock` (LayerNorm variant, SD's): pre-norm
/// self-attention, cross-attention over the text, and GEGLU feed-forward,
/// each added back to its input.
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: CrossAttention,
    pub norm2: LayerNorm,
    pub attn2: CrossAttention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        dim: usize,
        context_dim: usize,
        heads: usize,
        eps: f32,
        dtype: DType,
    ) -> Result<BasicTransformerBlock, ModelError> {
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load_sized(gpu, &w.pp("norm1"), dim, eps, dtype)?,
            attn1: CrossAttention::load(gpu, &w.pp("attn1"), dim, dim, heads, true, dtype)?,
            norm2: LayerNorm::load_sized(gpu, &w.pp("norm2"), dim, eps, dtype)?,
            attn2: CrossAttention::load(gpu, &w.pp("attn2"), dim, context_dim, heads, false, dtype)?,
            norm3: LayerNorm::load_sized(gpu, &w.pp("norm3"), dim, eps, dtype)?,
            ff: FeedForward::load(gpu, &w.pp("ff"), dim, dtype)?,
        })
    }

    /// `x [B, L, C]`, `context [B, Lk, context_dim]` -> `[B, L, C]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_patched(gpu, x, context, None)
    }

    /// [`BasicTransformerBlock::forward`] with a [`MiddlePatch`] and its transformer index applied after
    /// self-attention, where ComfyUI's `BasicTransformerBlock` applies its `middle_patch`es.
    pub fn forward_patched(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: &Tensor,
        middle: Option<(&dyn MiddlePatch, usize)>,
    ) -> Result<Tensor, ModelError> {
        let mut x = self.attn1.forward(gpu, &self.norm1.forward(gpu, x)?, None, Some(x))?;
        if let Some((patch, index)) = middle {
            x = patch.apply(gpu, index, &x)?;
        }
        let x = self.attn2.forward(gpu, &self.norm2.forward(gpu, &x)?, Some(context), Some(&x))?;
        self.ff.forward(gpu, &self.norm3.forward(gpu, &x)?, Some(&x))
    }
}

/// LDM `SpatialTransformer` (diffusers `Transformer2DModel` on an image):
/// GroupNorm, `proj_in`, the transformer blocks over the `H*W` pixels as a
/// sequence, `proj_out`, plus the input.
///
/// `proj_in`/`proj_out` are 1x1 convs `[C, C, 1, 1]` in SD 1.x and linears
/// `[C, C]` in SD 2.x (`use_linear_projection`); both are the same matrix
/// applied per pixel, so both are stored `[out, in]` and applied to the
/// `[B, HW, C]` sequence.
pub struct SpatialTransformer {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

impl SpatialTransformer {
    /// `depth` transformer blocks on `channels` channels.
    #[allow(clippy::too_many_arguments)] // the constructor arguments of LDM's SpatialTransformer
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        channels: usize,
        depth: usize,
        context_dim: usize,
        heads: AttentionHeads,
        norm: &NormConfig,
        dtype: DType,
    ) -> Result<SpatialTransformer, ModelError> {
        // The transformer's width (diffusers inner_dim = heads * head_dim) is proj_in's output; SD keeps it = C.
        let inner = w.shape("proj_in.weight")?.first().copied().unwrap_or(0);
        let n_heads = heads.heads(inner)?;
        let transformer_blocks = (0..depth)
            .map(|d| {
                let wb = w.pp("transformer_blocks").pp(d);
                BasicTransformerBlock::load(gpu, &wb, inner, context_dim, n_heads, norm.layer_norm_eps, dtype)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SpatialTransformer {
            norm: GroupNorm::load_sized(gpu, &w.pp("norm"), channels, norm.groups, norm.transformer_eps, dtype)?,
            proj_in: Linear::load_pointwise(gpu, &w.pp("proj_in"), channels, inner, dtype)?,
            transformer_blocks,
            proj_out: Linear::load_pointwise(gpu, &w.pp("proj_out"), inner, channels, dtype)?,
        })
    }

    /// `x [B, C, H, W]`, `context [B, Lk, context_dim]` -> `[B, C, H, W]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_patched(gpu, x, context, None)
    }

    /// [`SpatialTransformer::forward`] with `middle` applied in every block (see [`MiddlePatch`]).
    pub fn forward_patched(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        context: &Tensor,
        middle: Option<(&dyn MiddlePatch, usize)>,
    ) -> Result<Tensor, ModelError> {
        let &[b, c, hh, ww] = x.shape() else {
            return Err(ModelError::Config(format!("SpatialTransformer wants [B, C, H, W], got {:?}", x.shape())));
        };
        let h = self.norm.forward(gpu, x, false)?;
        // proj_in reads [B, C, HW] as the transposed sequence and writes [B, HW, inner].
        let p = &self.proj_in;
        let opts = MatmulOptions { transpose_a: true, transpose_b: true, bias: p.bias.as_ref(), ..Default::default() };
        let mut h = matmul(gpu, &h.reshape(&[b, c, hh * ww])?, &p.weight, &opts)?;
        for block in &self.transformer_blocks {
            h = block.forward_patched(gpu, &h, context, middle)?;
        }
        // proj_out writes channels-first: W [C, inner] · h[b]ᵀ = [C, HW] per item, plus x.
        let p = &self.proj_out;
        let x3 = x.reshape(&[b, c, hh * ww])?;
        let opts = MatmulOptions {
            transpose_b: true,
            bias: p.bias.as_ref(),
            bias_per_row: true,
            residual: Some(&x3),
            ..Default::default()
        };
        Ok(matmul(gpu, &p.weight, &h, &opts)?.reshape(&[b, c, hh, ww])?)
    }
}

/// LDM `Downsample` (`op`; diffusers `Downsample2D`): 3x3 conv, stride 2, padding 1.
pub struct Downsample {
    pub op: Conv2d,
}

impl Downsample {
    pub fn load(gpu: &Gpu, w: &Weights, channels: usize, dtype: DType) -> Result<Downsample, ModelError> {
        Ok(Downsample { op: Conv2d::load_sized(gpu, &w.pp("op"), (channels, channels, 3), 2, 1, dtype)? })
    }

    /// `[B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        self.op.forward(gpu, x)
    }
}

/// LDM `Upsample` (`conv`; diffusers `Upsample2D`): nearest 2x, then a 3x3 conv.
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    pub fn load(gpu: &Gpu, w: &Weights, channels: usize, dtype: DType) -> Result<Upsample, ModelError> {
        Ok(Upsample { conv: Conv2d::load_sized(gpu, &w.pp("conv"), (channels, channels, 3), 1, 1, dtype)? })
    }

    /// `[B, C, H, W] -> [B, C, th, tw]`, where `(th, tw)` is the size of the
    /// skip connection the result meets: `2H x 2W`, or one less when the
    /// downsampler rounded an odd size up. Nearest interpolation to such a
    /// size (diffusers' `upsample_size`) picks source pixel `floor(i / 2)`,
    /// the same as 2x then cropping.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, target: (usize, usize)) -> Result<Tensor, ModelError> {
        let (h, w) = (x.dim(2), x.dim(3));
        let (th, tw) = target;
        if th > 2 * h || tw > 2 * w || th + 1 < 2 * h || tw + 1 < 2 * w {
            return Err(ModelError::Config(format!(
                "cannot upsample {h}x{w} to the skip connection's {th}x{tw} (not 2x)"
            )));
        }
        let mut u = upsample_nearest2x(gpu, x)?;
        if th < 2 * h {
            u = slice(gpu, &u, 2, 0, th)?;
        }
        if tw < 2 * w {
            u = slice(gpu, &u, 3, 0, tw)?;
        }
        self.conv.forward(gpu, &u)
    }
}
