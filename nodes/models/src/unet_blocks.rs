//! The layers of the SD 1.x UNet (see `unet.rs`), under their LDM names:
//!
//! - [`ResBlock`]: LDM `openaimodel.ResBlock` = diffusers `ResnetBlock2D`
//!   (`in_layers`, `emb_layers`, `out_layers`, `skip_connection`);
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
use gpu::ops::binary::add;
use gpu::ops::conv2d::{ConvExtras, conv2d_fused};
use gpu::ops::layout::{concat, slice, upsample_nearest2x};
use gpu::ops::matmul::{MatmulOptions, interleave_halves, matmul};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
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

/// A biased conv with `k / 2` padding, as every conv of the SD networks.
pub(crate) fn conv(
    gpu: &Gpu,
    w: &Weights,
    out: usize,
    inp: usize,
    k: usize,
    stride: usize,
    dtype: DType,
) -> Result<Conv2d, ModelError> {
    Ok(Conv2d {
        weight: w.tensor(gpu, "weight", &[out, inp, k, k], dtype)?,
        bias: Some(w.tensor(gpu, "bias", &[out], dtype)?),
        stride,
        padding: k / 2,
    })
}

/// A `[out, in]` linear layer; the bias is optional (diffusers' `to_q/k/v` have none).
fn linear(gpu: &Gpu, w: &Weights, out: usize, inp: usize, dtype: DType) -> Result<Linear, ModelError> {
    let bias = if w.contains("bias") { Some(w.tensor(gpu, "bias", &[out], dtype)?) } else { None };
    Ok(Linear { weight: w.tensor(gpu, "weight", &[out, inp], dtype)?, bias })
}

fn group_norm(
    gpu: &Gpu,
    w: &Weights,
    c: usize,
    groups: usize,
    eps: f32,
    dtype: DType,
) -> Result<GroupNorm, ModelError> {
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(ModelError::Config(format!(
            "{}: {c} channels do not split into {groups} groups",
            w.full_name("weight")
        )));
    }
    let weight = w.tensor(gpu, "weight", &[c], dtype)?;
    Ok(GroupNorm { weight, bias: w.tensor(gpu, "bias", &[c], dtype)?, groups, eps })
}

fn layer_norm(gpu: &Gpu, w: &Weights, c: usize, eps: f32, dtype: DType) -> Result<LayerNorm, ModelError> {
    Ok(LayerNorm { weight: w.tensor(gpu, "weight", &[c], dtype)?, bias: w.tensor(gpu, "bias", &[c], dtype)?, eps })
}

/// LDM `ResBlock` (diffusers `ResnetBlock2D`, time-embedding added after conv1,
/// `output_scale_factor` 1):
/// `skip(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + emb_proj(silu(emb)))))`.
///
/// The time projection's output is conv1's bias, one per batch item, and
/// conv1's own bias is folded into the projection's. The projection is the
/// block's own, or, once an [`EmbTable`] has taken it, a column range of
/// the table's product for every block at once.
pub struct ResBlock {
    /// `in_layers.0` GroupNorm (+ `in_layers.1` SiLU, fused).
    pub in_layers_0: GroupNorm,
    /// `in_layers.2` 3x3 conv, in -> out; its bias is in `emb`'s.
    pub in_layers_2: Conv2d,
    /// `emb_layers.1` (after the `emb_layers.0` SiLU), `[out, emb]`, bias
    /// `emb_layers.1.bias + in_layers.2.bias`.
    pub emb: EmbProjection,
    /// `out_layers.0` GroupNorm (+ `out_layers.1` SiLU, fused; `.2` is dropout).
    pub out_layers_0: GroupNorm,
    /// `out_layers.3` 3x3 conv, out -> out.
    pub out_layers_3: Conv2d,
    /// 1x1 conv when the channel count changes (diffusers `conv_shortcut`).
    pub skip_connection: Option<Conv2d>,
}

/// Where a [`ResBlock`]'s time projection lives.
pub enum EmbProjection {
    Own(Linear),
    /// Columns `offset..offset + out` of an [`EmbTable`]'s product.
    InTable {
        offset: usize,
    },
}

/// What a [`ResBlock`] takes of the time embedding.
#[derive(Clone, Copy)]
pub enum TimeEmb<'a> {
    /// SiLU(emb) `[B, emb]`: a block with its own projection applies it.
    Silu(&'a Tensor),
    /// [`EmbTable::project`]'s `[B, width]`: every block's projection at once.
    Projected(&'a Tensor),
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
            match std::mem::replace(&mut b.emb, EmbProjection::InTable { offset }) {
                EmbProjection::Own(lin) => {
                    offset += lin.weight.dim(0);
                    layers.push(lin);
                }
                EmbProjection::InTable { .. } => {
                    return Err(ModelError::Config("a ResBlock's time projection is already in a table".into()));
                }
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

impl ResBlock {
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        inp: usize,
        out: usize,
        emb: usize,
        norm: &NormConfig,
        dtype: DType,
    ) -> Result<ResBlock, ModelError> {
        let (g, eps) = (norm.groups, norm.resnet_eps);
        let skip_connection =
            if inp != out { Some(conv(gpu, &w.pp("skip_connection"), out, inp, 1, 1, dtype)?) } else { None };
        let mut in_layers_2 = conv(gpu, &w.pp("in_layers.2"), out, inp, 3, 1, dtype)?;
        let emb_layers_1 = linear(gpu, &w.pp("emb_layers.1"), out, emb, dtype)?;
        let bias = match (&emb_layers_1.bias, in_layers_2.bias.take()) {
            (Some(a), Some(b)) => Some(add(gpu, a, &b)?),
            (a, b) => a.clone().or(b),
        };
        Ok(ResBlock {
            in_layers_0: group_norm(gpu, &w.pp("in_layers.0"), inp, g, eps, dtype)?,
            in_layers_2,
            emb: EmbProjection::Own(Linear { weight: emb_layers_1.weight, bias }),
            out_layers_0: group_norm(gpu, &w.pp("out_layers.0"), out, g, eps, dtype)?,
            out_layers_3: conv(gpu, &w.pp("out_layers.3"), out, out, 3, 1, dtype)?,
            skip_connection,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.in_layers_2.out_channels()
    }

    /// `x [B, in, H, W]` and the time embedding -> `[B, out, H, W]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, emb: TimeEmb<'_>) -> Result<Tensor, ModelError> {
        let t = match emb {
            TimeEmb::Silu(t) | TimeEmb::Projected(t) => t,
        };
        if t.rank() != 2 || t.dim(0) != x.dim(0) {
            return Err(ModelError::Config(format!(
                "ResBlock: time embedding {:?} does not match the batch of {:?}",
                t.shape(),
                x.shape()
            )));
        }
        // emb_proj(silu(emb)) + conv1's bias, [B, ..]: conv1's bias per batch item.
        let (e, offset) = match (&self.emb, emb) {
            (EmbProjection::Own(lin), TimeEmb::Silu(t)) => (lin.forward(gpu, t)?, 0),
            (EmbProjection::InTable { offset }, TimeEmb::Projected(t)) => (t.clone(), *offset),
            _ => {
                return Err(ModelError::Config(
                    "ResBlock: the time embedding does not match where its projection lives".into(),
                ));
            }
        };
        let h = self.in_layers_0.forward(gpu, x, true)?;
        let conv1 = &self.in_layers_2;
        let per_batch = ConvExtras { bias_per_batch: true, bias_offset: offset, residual: None };
        let h = conv2d_fused(gpu, &h, &conv1.weight, Some(&e), &conv1.options(), per_batch)?;
        let h = self.out_layers_0.forward(gpu, &h, true)?;
        let skip = match &self.skip_connection {
            Some(c) => c.forward(gpu, x)?,
            None => x.clone(),
        };
        self.out_layers_3.forward_residual(gpu, &h, &skip)
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
        let q = linear(gpu, &w.pp("to_q"), inner, query_dim, dtype)?;
        let k = linear(gpu, &w.pp("to_k"), inner, kv_dim, dtype)?;
        let v = linear(gpu, &w.pp("to_v"), inner, kv_dim, dtype)?;
        let projections = if self_attention {
            Projections::SelfAttention { qkv: stack(gpu, &[q, k, v])? }
        } else {
            Projections::Cross { q, kv: stack(gpu, &[k, v])? }
        };
        Ok(CrossAttention { projections, to_out_0: linear(gpu, &w.pp("to_out.0"), query_dim, inner, dtype)?, heads })
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
        let proj = linear(gpu, &w.pp("net.0.proj"), 2 * inner, dim, dtype)?;
        let bias = proj.bias.as_ref().map(|b| interleave_halves(gpu, b)).transpose()?;
        Ok(FeedForward {
            net_0_proj: Linear { weight: interleave_halves(gpu, &proj.weight)?, bias },
            net_2: linear(gpu, &w.pp("net.2"), dim, inner, dtype)?,
        })
    }

    /// `[B, L, C] -> [B, L, C]`, plus `residual` when given.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let p = &self.net_0_proj;
        let opts = MatmulOptions { transpose_b: true, bias: p.bias.as_ref(), geglu: true, ..Default::default() };
        let h = matmul(gpu, x, &p.weight, &opts)?;
        self.net_2.forward_residual(gpu, &h, residual)
    }
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
            norm1: layer_norm(gpu, &w.pp("norm1"), dim, eps, dtype)?,
            attn1: CrossAttention::load(gpu, &w.pp("attn1"), dim, dim, heads, true, dtype)?,
            norm2: layer_norm(gpu, &w.pp("norm2"), dim, eps, dtype)?,
            attn2: CrossAttention::load(gpu, &w.pp("attn2"), dim, context_dim, heads, false, dtype)?,
            norm3: layer_norm(gpu, &w.pp("norm3"), dim, eps, dtype)?,
            ff: FeedForward::load(gpu, &w.pp("ff"), dim, dtype)?,
        })
    }

    /// `x [B, L, C]`, `context [B, Lk, context_dim]` -> `[B, L, C]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
        let x = self.attn1.forward(gpu, &self.norm1.forward(gpu, x)?, None, Some(x))?;
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

/// A per-pixel projection stored as a 1x1 conv (rank 4) or a linear (rank 2), as `[out, in]`.
fn projection(gpu: &Gpu, w: &Weights, out: usize, inp: usize, dtype: DType) -> Result<Linear, ModelError> {
    if w.shape("weight")?.len() == 2 {
        return linear(gpu, w, out, inp, dtype);
    }
    // [out, in, 1, 1] -> [out, in]: the 1x1 conv's matrix.
    let weight = w.tensor(gpu, "weight", &[out, inp, 1, 1], dtype)?.reshape(&[out, inp])?;
    Ok(Linear { weight, bias: Some(w.tensor(gpu, "bias", &[out], dtype)?) })
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
            norm: group_norm(gpu, &w.pp("norm"), channels, norm.groups, norm.transformer_eps, dtype)?,
            proj_in: projection(gpu, &w.pp("proj_in"), inner, channels, dtype)?,
            transformer_blocks,
            proj_out: projection(gpu, &w.pp("proj_out"), channels, inner, dtype)?,
        })
    }

    /// `x [B, C, H, W]`, `context [B, Lk, context_dim]` -> `[B, C, H, W]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, context: &Tensor) -> Result<Tensor, ModelError> {
        let &[b, c, hh, ww] = x.shape() else {
            return Err(ModelError::Config(format!("SpatialTransformer wants [B, C, H, W], got {:?}", x.shape())));
        };
        let h = self.norm.forward(gpu, x, false)?;
        // proj_in reads [B, C, HW] as the transposed sequence and writes [B, HW, inner].
        let p = &self.proj_in;
        let opts = MatmulOptions { transpose_a: true, transpose_b: true, bias: p.bias.as_ref(), ..Default::default() };
        let mut h = matmul(gpu, &h.reshape(&[b, c, hh * ww])?, &p.weight, &opts)?;
        for block in &self.transformer_blocks {
            h = block.forward(gpu, &h, context)?;
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
        Ok(Downsample { op: conv(gpu, &w.pp("op"), channels, channels, 3, 2, dtype)? })
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
        Ok(Upsample { conv: conv(gpu, &w.pp("conv"), channels, channels, 3, 1, dtype)? })
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
