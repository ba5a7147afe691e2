//! The ResNet block the UNet and the VAE share: LDM `openaimodel.ResBlock`
//! (UNet, with a time embedding) and `model.ResnetBlock` (VAE, without),
//! both diffusers' `ResnetBlock2D` (diffusers 0.42.1 `models/resnet.py`,
//! `output_scale_factor` 1, dropout 0):
//! `skip(x) + conv2(silu(norm2(conv1(silu(norm1(x))) [+ emb_proj(silu(emb))])))`,
//! the skip a 1x1 conv exactly when the channels change. The two checkpoint
//! layouts name the same layers differently ([`ResBlockKeys`]).

use gpu::ops::binary::add;
use gpu::ops::conv2d::{ConvExtras, conv2d_fused};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{Conv2d, GroupNorm, Linear};
use crate::checkpoint::weights::Weights;

/// Where one layout keeps a block's layers.
pub struct ResBlockKeys {
    pub norm1: &'static str,
    pub conv1: &'static str,
    /// The time projection (after its SiLU); `None` for blocks without a time embedding.
    pub emb: Option<&'static str>,
    pub norm2: &'static str,
    pub conv2: &'static str,
    pub skip: &'static str,
}

/// The UNet's LDM names (`in_layers.1` and `out_layers.1` are SiLUs, `out_layers.2` dropout).
pub const UNET_KEYS: ResBlockKeys = ResBlockKeys {
    norm1: "in_layers.0",
    conv1: "in_layers.2",
    emb: Some("emb_layers.1"),
    norm2: "out_layers.0",
    conv2: "out_layers.3",
    skip: "skip_connection",
};

/// The VAE's LDM names.
pub const VAE_KEYS: ResBlockKeys =
    ResBlockKeys { norm1: "norm1", conv1: "conv1", emb: None, norm2: "norm2", conv2: "conv2", skip: "nin_shortcut" };

/// A ResNet block. With a time embedding, the projection's output is conv1's
/// bias, one per batch item, and conv1's own bias is folded into the
/// projection's. The projection is the block's own, or, once the UNet's
/// `EmbTable` has taken it, a column range of the table's product for every
/// block at once.
pub struct ResBlock {
    /// GroupNorm (+ the SiLU after it, fused).
    pub norm1: GroupNorm,
    /// 3x3 conv, in -> out (without its bias when `emb` holds it).
    pub conv1: Conv2d,
    /// The time projection, `[out, emb]`, bias `emb bias + conv1 bias`.
    pub emb: Option<EmbProjection>,
    /// GroupNorm (+ SiLU, fused).
    pub norm2: GroupNorm,
    /// 3x3 conv, out -> out, with the skip added in its epilogue.
    pub conv2: Conv2d,
    /// 1x1 conv when the channel count changes (diffusers `conv_shortcut`).
    pub skip: Option<Conv2d>,
}

/// Where a [`ResBlock`]'s time projection lives.
pub enum EmbProjection {
    Own(Linear),
    /// Columns `offset..offset + out` of an `EmbTable`'s product.
    InTable {
        offset: usize,
    },
}

/// What a [`ResBlock`] takes of the time embedding.
#[derive(Clone, Copy)]
pub enum TimeEmb<'a> {
    /// SiLU(emb) `[B, emb]`: a block with its own projection applies it.
    Silu(&'a Tensor),
    /// `EmbTable::project`'s `[B, width]`: every block's projection at once.
    Projected(&'a Tensor),
}

impl ResBlock {
    /// Loads a block of `inp -> out` channels under `keys`; `emb` is the time
    /// embedding's width where `keys` has a projection.
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        keys: &ResBlockKeys,
        (inp, out, emb): (usize, usize, usize),
        (groups, eps): (usize, f32),
        dtype: DType,
    ) -> Result<ResBlock, ModelError> {
        let skip = if inp != out {
            Some(Conv2d::load_sized(gpu, &w.pp(keys.skip), (inp, out, 1), 1, 0, dtype)?)
        } else {
            None
        };
        let mut conv1 = Conv2d::load_sized(gpu, &w.pp(keys.conv1), (inp, out, 3), 1, 1, dtype)?;
        let emb = match keys.emb {
            Some(key) => {
                let proj = Linear::load_biased(gpu, &w.pp(key), emb, out, dtype)?;
                let bias = match (&proj.bias, conv1.bias.take()) {
                    (Some(a), Some(b)) => Some(add(gpu, a, &b)?),
                    (a, b) => a.clone().or(b),
                };
                Some(EmbProjection::Own(Linear { weight: proj.weight, bias }))
            }
            None => None,
        };
        Ok(ResBlock {
            norm1: GroupNorm::load_sized(gpu, &w.pp(keys.norm1), inp, groups, eps, dtype)?,
            conv1,
            emb,
            norm2: GroupNorm::load_sized(gpu, &w.pp(keys.norm2), out, groups, eps, dtype)?,
            conv2: Conv2d::load_sized(gpu, &w.pp(keys.conv2), (out, out, 3), 1, 1, dtype)?,
            skip,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.conv2.out_channels()
    }

    /// `x [B, in, H, W]` (and the time embedding, for a block with a projection) -> `[B, out, H, W]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, emb: Option<TimeEmb<'_>>) -> Result<Tensor, ModelError> {
        // emb_proj(silu(emb)) + conv1's bias, [B, ..]: conv1's bias per batch item.
        let per_batch = match (&self.emb, emb) {
            (None, None) => None,
            (Some(proj), Some(emb)) => Some(project(gpu, proj, emb, x)?),
            _ => {
                return Err(ModelError::Config(
                    "ResBlock: the time embedding does not match where its projection lives".into(),
                ));
            }
        };
        // The SiLUs after both norms are fused into the norm kernel.
        let h = self.norm1.forward(gpu, x, true)?;
        let h = match &per_batch {
            Some((e, offset)) => {
                let extras = ConvExtras { bias_per_batch: true, bias_offset: *offset, residual: None };
                conv2d_fused(gpu, &h, &self.conv1.weight, Some(e), &self.conv1.options(), extras)?
            }
            None => self.conv1.forward(gpu, &h)?,
        };
        let h = self.norm2.forward(gpu, &h, true)?;
        let skip = match &self.skip {
            Some(c) => c.forward(gpu, x)?,
            None => x.clone(),
        };
        // skip + conv2(h) in one kernel.
        self.conv2.forward_residual(gpu, &h, &skip)
    }
}

/// The block's time projection of `emb` for the batch of `x`, and its column offset.
fn project(gpu: &Gpu, proj: &EmbProjection, emb: TimeEmb<'_>, x: &Tensor) -> Result<(Tensor, usize), ModelError> {
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
    match (proj, emb) {
        (EmbProjection::Own(lin), TimeEmb::Silu(t)) => Ok((lin.forward(gpu, t)?, 0)),
        (EmbProjection::InTable { offset }, TimeEmb::Projected(t)) => Ok((t.clone(), *offset)),
        _ => Err(ModelError::Config("ResBlock: the time embedding does not match where its projection lives".into())),
    }
}
