//! GLIGEN's text-box grounding, as ComfyUI runs it: `comfy/gligen.py`
//! (Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832,
//! <https://github.com/Comfy-Org/ComfyUI/blob/a125cd84b054a57729b5eecab930ca9408719832/comfy/gligen.py>):
//!
//! - [`PositionNet`]: `PositionNet` with its `FourierEmbedder` (8 frequencies, temperature 100): each box's
//!   pooled text embedding and the Fourier features of its corners `(x1, y1, x2, y2)`, through a 3-layer SiLU
//!   MLP, give one grounding token; the unused of the 30 slots (`Gligen.max_objs`) take the learnt null features;
//! - [`GatedSelfAttentionDense`]: `GatedSelfAttentionDense` (the `fuser` of every transformer block): the
//!   visual tokens and the projected grounding tokens attend over each other, and the visual part is added back
//!   gated by `tanh(alpha_attn)`, then a GEGLU feed-forward gated by `tanh(alpha_dense)`;
//! - [`Gligen`]: `load_gligen`'s reading of the file (one gated block per `input_blocks.N.` /
//!   `middle_block.N.` / `output_blocks.N.` holding `.fuser.` weights, in that order; `position_net.*`) and
//!   `Gligen.set_position`'s boxes (latent pixels divided by the latent's size);
//! - [`GligenPatch`]: the function ComfyUI installs as the UNet's `middle_patch`, picking the gated block by
//!   the transformer index ([`MiddlePatch`]).
//!
//! The gates are folded into the last layer of each branch when loading (`to_out.0` times `tanh(alpha_attn)`,
//! `ff.net.2` times `tanh(alpha_dense)`), so each branch ends in one product with the residual added.

use gpu::ops::attention::{AttentionOptions, attention_qkv};
use gpu::ops::cast::cast;
use gpu::ops::elementwise::{Unary, unary};
use gpu::ops::layout::{concat, slice};
use gpu::ops::matmul::Activation;
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{LayerNorm, Linear};
use super::unet::linear_act;
use super::unet_blocks::{CrossAttention, FeedForward, MiddlePatch, Projections};
use crate::checkpoint::weights::{WeightSource, Weights};

/// Grounding tokens per picture (`Gligen.max_objs`): at most this many boxes.
pub const MAX_OBJS: usize = 30;
/// `PositionNet`'s Fourier frequencies (`fourier_freqs=8`): 8 x (sin, cos) x 4 corners = 64 features.
pub const FOURIER_FREQS: usize = 8;
const POSITION_DIM: usize = FOURIER_FREQS * 2 * 4;
/// `ops.LayerNorm`'s default eps.
const LAYER_NORM_EPS: f32 = 1e-5;
/// The metadata key a file may use to give the gated attentions' head count (the tiny test files do; real
/// GLIGEN files follow ComfyUI's rule, see [`Gligen::load`]).
pub const HEADS_METADATA: &str = "sdgraph.gligen.heads";

/// `FourierEmbedder(num_freqs=8, temperature=100)` of one box `[x1, y1, x2, y2]`: for each frequency
/// `100^(i/8)` (float32, as torch's), `sin(f x)` of the 4 values, then `cos(f x)`.
pub fn fourier_embedding(xyxy: [f32; 4]) -> [f32; POSITION_DIM] {
    let mut out = [0.0f32; POSITION_DIM];
    for i in 0..FOURIER_FREQS {
        let freq = 100f64.powf(i as f64 / FOURIER_FREQS as f64) as f32;
        for (j, &v) in xyxy.iter().enumerate() {
            // freq * x in float32, then sin/cos of that float32 value.
            let a = (freq * v) as f64;
            out[i * 8 + j] = a.sin() as f32;
            out[i * 8 + 4 + j] = a.cos() as f32;
        }
    }
    out
}

/// One text box, as GLIGENTextBoxApply records it: the pooled text embedding and the box in latent pixels
/// (ComfyUI's `(cond_pooled, height // 8, width // 8, y // 8, x // 8)`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextBox {
    pub embedding: Vec<f32>,
    pub h: usize,
    pub w: usize,
    pub y: usize,
    pub x: usize,
}

impl TextBox {
    /// `set_position`'s corners for a latent of `h` x `w`: `(x / w, y / h, (x + bw) / w, (y + bh) / h)`,
    /// divided in f64 (Python floats) and stored as float32 (`torch.tensor`).
    pub fn corners(&self, h: usize, w: usize) -> [f32; 4] {
        let (h, w) = (h as f64, w as f64);
        [
            (self.x as f64 / w) as f32,
            (self.y as f64 / h) as f32,
            ((self.x + self.w) as f64 / w) as f32,
            ((self.y + self.h) as f64 / h) as f32,
        ]
    }
}

/// `PositionNet`: `linears.0` `[hidden, in + 64]`, SiLU, `linears.2` `[hidden, hidden]`, SiLU, `linears.4`
/// `[out, hidden]`; the null features stay on the CPU, where the input rows are assembled.
pub struct PositionNet {
    pub null_positive_feature: Vec<f32>,
    pub null_position_feature: Vec<f32>,
    pub linears_0: Linear,
    pub linears_2: Linear,
    pub linears_4: Linear,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl PositionNet {
    /// `w` at `position_net.`; the widths come from the weights (ComfyUI fixes the hidden width at 512 and
    /// reads the others; any width is read here).
    pub fn load(gpu: &Gpu, w: &Weights, dtype: DType) -> Result<PositionNet, ModelError> {
        let in_dim = vector_len(w, "null_positive_feature")?;
        let pos = vector_len(w, "null_position_feature")?;
        if pos != POSITION_DIM {
            return Err(ModelError::Config(format!(
                "{} has {pos} values; GLIGEN's position features have {POSITION_DIM} (8 frequencies x sin, cos x 4)",
                w.full_name("null_position_feature")
            )));
        }
        let hidden = w.shape("linears.0.weight")?.first().copied().unwrap_or(0);
        let out_dim = w.shape("linears.4.weight")?.first().copied().unwrap_or(0);
        if hidden == 0 || out_dim == 0 {
            return Err(ModelError::Config(format!("{} is empty", w.full_name("linears"))));
        }
        Ok(PositionNet {
            null_positive_feature: w.f32("null_positive_feature", &[in_dim])?,
            null_position_feature: w.f32("null_position_feature", &[POSITION_DIM])?,
            linears_0: Linear::load_biased(gpu, &w.pp("linears.0"), in_dim + POSITION_DIM, hidden, dtype)?,
            linears_2: Linear::load_biased(gpu, &w.pp("linears.2"), hidden, hidden, dtype)?,
            linears_4: Linear::load_biased(gpu, &w.pp("linears.4"), hidden, out_dim, dtype)?,
            in_dim,
            out_dim,
        })
    }

    /// The grounding tokens of `boxes` on a latent of `h` x `w`: `[1, 30, out]` (`set_position` then
    /// `PositionNet.forward`; the rows past the boxes are the null features, as their mask is 0).
    pub fn forward(
        &self,
        gpu: &Gpu,
        boxes: &[TextBox],
        h: usize,
        w: usize,
        dtype: DType,
    ) -> Result<Tensor, ModelError> {
        if boxes.len() > MAX_OBJS {
            return Err(ModelError::Config(format!("{} text boxes; GLIGEN takes at most {MAX_OBJS}", boxes.len())));
        }
        let width = self.in_dim + POSITION_DIM;
        let mut rows = Vec::with_capacity(MAX_OBJS * width);
        for (i, b) in boxes.iter().enumerate() {
            if b.embedding.len() != self.in_dim {
                return Err(ModelError::Config(format!(
                    "text box {i}: a {}-wide text embedding; this GLIGEN takes {} (the text encoder's width)",
                    b.embedding.len(),
                    self.in_dim
                )));
            }
            rows.extend_from_slice(&b.embedding);
            rows.extend_from_slice(&fourier_embedding(b.corners(h, w)));
        }
        for _ in boxes.len()..MAX_OBJS {
            rows.extend_from_slice(&self.null_positive_feature);
            rows.extend_from_slice(&self.null_position_feature);
        }
        // [1, 30, in + 64] -> [1, 30, out]
        let x = gpu.upload(&rows, &[1, MAX_OBJS, width], dtype)?;
        let x = linear_act(gpu, &self.linears_0, &x, Activation::Silu)?;
        let x = linear_act(gpu, &self.linears_2, &x, Activation::Silu)?;
        self.linears_4.forward(gpu, &x)
    }
}

/// The length of a 1-D weight.
fn vector_len(w: &Weights, name: &str) -> Result<usize, ModelError> {
    match w.shape(name)?.as_slice() {
        &[n] if n > 0 => Ok(n),
        s => Err(ModelError::Config(format!("{} has shape {s:?}, not a vector", w.full_name(name)))),
    }
}

/// `GatedSelfAttentionDense(query_dim, context_dim, n_heads, d_head)` under `...fuser.`: `linear`
/// `[query, key]`, `attn` (a self-attention over `query` channels), `ff` (GEGLU, inner 4 x query), `norm1`,
/// `norm2`, `alpha_attn`, `alpha_dense` (scalars; folded in, see the module docs).
pub struct GatedSelfAttentionDense {
    pub linear: Linear,
    pub attn: CrossAttention,
    pub ff: FeedForward,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    /// `tanh(alpha_attn)`, `tanh(alpha_dense)`.
    pub gates: (f32, f32),
}

impl GatedSelfAttentionDense {
    pub fn load(gpu: &Gpu, w: &Weights, heads: usize, dtype: DType) -> Result<GatedSelfAttentionDense, ModelError> {
        let &[query, key] = w.shape("linear.weight")?.as_slice() else {
            return Err(ModelError::Config(format!("{} is not 2-D", w.full_name("linear.weight"))));
        };
        let gate = |name: &str| -> Result<f32, ModelError> {
            let shape = w.shape(name)?;
            if shape.iter().product::<usize>() != 1 {
                return Err(ModelError::Config(format!("{} has shape {shape:?}, not a scalar", w.full_name(name))));
            }
            Ok(w.f32(name, &shape)?[0].tanh())
        };
        let gates = (gate("alpha_attn")?, gate("alpha_dense")?);
        let mut attn = CrossAttention::load(gpu, &w.pp("attn"), query, query, heads, true, dtype)?;
        attn.to_out_0 = scaled(gpu, &attn.to_out_0, gates.0)?;
        let mut ff = FeedForward::load(gpu, &w.pp("ff"), query, dtype)?;
        ff.net_2 = scaled(gpu, &ff.net_2, gates.1)?;
        Ok(GatedSelfAttentionDense {
            linear: Linear::load_sized(gpu, &w.pp("linear"), key, query, dtype)?,
            attn,
            ff,
            norm1: LayerNorm::load_sized(gpu, &w.pp("norm1"), query, LAYER_NORM_EPS, dtype)?,
            norm2: LayerNorm::load_sized(gpu, &w.pp("norm2"), query, LAYER_NORM_EPS, dtype)?,
            gates,
        })
    }

    /// `x [B, N, query]`, `objs [B, 30, key]` -> `[B, N, query]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, objs: &Tensor) -> Result<Tensor, ModelError> {
        let n = x.dim(1);
        let objs = self.linear.forward(gpu, objs)?; // [B, 30, query]
        let both = concat(gpu, &[x, &objs], 1)?; // [B, N + 30, query]
        let Projections::SelfAttention { qkv } = &self.attn.projections else {
            return Err(ModelError::Config("GLIGEN's gated attention is a self-attention".into()));
        };
        let qkv = qkv.forward(gpu, &self.norm1.forward(gpu, &both)?)?; // [B, N + 30, 3 inner]
        let o = attention_qkv(gpu, &qkv, AttentionOptions::new(self.attn.heads))?; // [B, N + 30, inner]
        let o = slice(gpu, &o, 1, 0, n)?; // the visual tokens: [B, N, inner]
        let x = self.attn.to_out_0.forward_residual(gpu, &o, Some(x))?;
        self.ff.forward(gpu, &self.norm2.forward(gpu, &x)?, Some(&x))
    }
}

/// `lin` with its weight and bias times `s`.
fn scaled(gpu: &Gpu, lin: &Linear, s: f32) -> Result<Linear, ModelError> {
    Ok(Linear {
        weight: unary(gpu, &lin.weight, Unary::Scale(s))?,
        bias: lin.bias.as_ref().map(|b| unary(gpu, b, Unary::Scale(s))).transpose()?,
    })
}

/// A loaded GLIGEN: the position net and one gated block per UNet SpatialTransformer, in forward order.
pub struct Gligen {
    pub position_net: PositionNet,
    pub blocks: Vec<GatedSelfAttentionDense>,
    /// The grounding tokens' width (`linear`'s input; ComfyUI's `key_dim`).
    pub key_dim: usize,
    pub dtype: DType,
}

impl Gligen {
    /// Reads a GLIGEN file as `load_gligen` does: for `input_blocks`, `middle_block`, `output_blocks` and
    /// N in 0..20, the weights whose names contain `{block}.{N}.` and `.fuser.` make one gated block (names
    /// may carry any prefix, e.g. `model.diffusion_model.`); `position_net.*` the position net. Heads: the
    /// `sdgraph.gligen.heads` metadata when present, else ComfyUI's rule (8 heads for 768-wide grounding
    /// tokens, SD 1.x; heads of 64 channels otherwise).
    pub fn load(gpu: &Gpu, src: &WeightSource, dtype: DType) -> Result<Gligen, ModelError> {
        let names: Vec<&str> = src.names().collect();
        let mut prefixes = Vec::new();
        for block in ["input_blocks", "middle_block", "output_blocks"] {
            for n in 0..20 {
                let at = format!("{block}.{n}.");
                let mut found: Vec<&str> = names
                    .iter()
                    .filter(|k| k.contains(&at) && k.contains(".fuser."))
                    .map(|k| &k[..k.find(".fuser.").expect("filtered") + ".fuser.".len()])
                    .collect();
                found.dedup();
                match found.as_slice() {
                    [] => {}
                    [one] => prefixes.push(one.to_string()),
                    many => {
                        return Err(ModelError::Config(format!(
                            "GLIGEN: {} gated blocks under {at} ({many:?}); one per SpatialTransformer is supported",
                            many.len()
                        )));
                    }
                }
            }
        }
        let not_gligen = |what: &str| {
            ModelError::Config(format!(
                "not a GLIGEN model: no {what} (a GLIGEN file holds `position_net.*` and \
                 `...transformer_blocks.0.fuser.*` weights)"
            ))
        };
        if prefixes.is_empty() {
            return Err(not_gligen("`.fuser.` weights (gated self-attention)"));
        }
        if !src.contains("position_net.null_positive_feature") {
            return Err(not_gligen("`position_net.null_positive_feature`"));
        }
        let position_net = PositionNet::load(gpu, &src.prefix("position_net."), dtype)?;
        let heads_meta = match src.metadata(HEADS_METADATA) {
            None => None,
            Some(v) => Some(v.trim().parse::<usize>().ok().filter(|&h| h > 0).ok_or_else(|| {
                ModelError::Config(format!("metadata {HEADS_METADATA}={v:?} is not a positive number"))
            })?),
        };
        let mut blocks = Vec::with_capacity(prefixes.len());
        let mut key_dim = 0;
        for p in &prefixes {
            let w = src.prefix(p);
            let &[query, key] = w.shape("linear.weight")?.as_slice() else {
                return Err(ModelError::Config(format!("{} is not 2-D", w.full_name("linear.weight"))));
            };
            let heads = heads_meta.unwrap_or(if key == 768 { 8 } else { query / 64 });
            if heads == 0 || !query.is_multiple_of(heads) {
                return Err(ModelError::Config(format!(
                    "{}: {query} channels do not split into heads ({heads}); give the head count as metadata \
                     {HEADS_METADATA}",
                    w.full_name("linear.weight")
                )));
            }
            if key != position_net.out_dim {
                return Err(ModelError::Config(format!(
                    "{} takes {key}-wide grounding tokens, the position net makes {}",
                    w.full_name("linear.weight"),
                    position_net.out_dim
                )));
            }
            key_dim = key;
            blocks.push(GatedSelfAttentionDense::load(gpu, &w, heads, dtype)?);
        }
        Ok(Gligen { position_net, blocks, key_dim, dtype })
    }

    /// The patch for one UNet call on latents of `[batch, C, h, w]` (the crop, when the conditioning has an
    /// area): the grounding tokens of `boxes`, repeated over the batch.
    pub fn patch(
        &self,
        gpu: &Gpu,
        boxes: &[TextBox],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<GligenPatch<'_>, ModelError> {
        let objs = self.position_net.forward(gpu, boxes, h, w, self.dtype)?;
        let objs = if batch == 1 { objs } else { concat(gpu, &vec![&objs; batch], 0)? }; // [batch, 30, key]
        Ok(GligenPatch { gligen: self, objs })
    }
}

/// `Gligen._set_position`'s function: the gated block of each transformer index on its input.
pub struct GligenPatch<'g> {
    pub gligen: &'g Gligen,
    /// `[B, 30, key_dim]`.
    pub objs: Tensor,
}

impl MiddlePatch for GligenPatch<'_> {
    fn apply(&self, gpu: &Gpu, transformer_index: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        let blocks = &self.gligen.blocks;
        let block = blocks.get(transformer_index).ok_or_else(|| {
            ModelError::Config(format!(
                "GLIGEN has {} gated blocks, the UNet has more transformers (index {transformer_index}): \
                 it was made for another model",
                blocks.len()
            ))
        })?;
        let query = block.linear.weight.dim(0);
        if x.rank() != 3 || x.dim(2) != query {
            return Err(ModelError::Config(format!(
                "GLIGEN block {transformer_index} takes {query} channels, the UNet's transformer {transformer_index} \
                 gives {:?}: it was made for another model",
                x.shape()
            )));
        }
        if x.dim(0) != self.objs.dim(0) {
            return Err(ModelError::Config(format!(
                "GLIGEN: grounding tokens for a batch of {}, the UNet runs {}",
                self.objs.dim(0),
                x.dim(0)
            )));
        }
        // ComfyUI casts the tokens to the hidden state's dtype; here the block's own dtype is used and the
        // result cast back, so an f16 GLIGEN runs on an f32 UNet and the other way round.
        let dt = self.gligen.dtype;
        let y = block.forward(gpu, &cast(gpu, x, dt)?, &self.objs)?;
        Ok(cast(gpu, &y, x.dtype())?)
    }
}
