//! ESRGAN's RRDBNet, as basicsr's `basicsr/archs/rrdbnet_arch.py` (`RRDBNet`,
//! `RRDB`, `ResidualDenseBlock`; the Real-ESRGAN x4plus / x2plus networks)
//! and spandrel's `ESRGAN` port of it:
//! <https://github.com/XPixelGroup/BasicSR/blob/v1.4.2/basicsr/archs/rrdbnet_arch.py>.
//!
//! ```text
//! x [B, in, H, W] -> pixel_unshuffle (x2plus: 2, x1: 4) -> conv_first
//!   -> feat + conv_body(body(feat))            body: RRDB x num_block
//!   -> (nearest 2x, conv_upK, lrelu) x ups     conv_up1, conv_up2 (, conv_up3 for x8)
//!   -> conv_last(lrelu(conv_hr(.)))            [B, out, H*scale, W*scale]
//! RRDB(x)  = x + 0.2 * rdb3(rdb2(rdb1(x)))
//! RDB(x)   = x + 0.2 * conv5(cat(x, x1, x2, x3, x4)),  xk = lrelu(convk(cat(x, x1, .., x{k-1})))
//! ```
//!
//! Weights are named as basicsr saves them (`conv_first`, `body.N.rdb1.conv1`,
//! `conv_body`, `conv_up1`, `conv_hr`, `conv_last`); the original ESRGAN
//! layout (`model.0`, `model.1.sub.N.RDB1.conv1.0`, ...) and the BSRGAN /
//! RealSR one (`RRDB_trunk.N.RDB1.conv1`, `trunk_conv`, `upconv1`, `HRconv`)
//! are mapped onto those names by [`layout_names`]. Every size is read from
//! the weights.

use gpu::ops::binary::{add, add_scaled};
use gpu::ops::elementwise::{Unary, unary};
use gpu::ops::layout::{concat, pixel_unshuffle, upsample_nearest2x};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::Conv2d;
use crate::checkpoint::weights::Weights;

/// basicsr's `nn.LeakyReLU(negative_slope=0.2)`.
const LRELU: Unary = Unary::LeakyRelu(0.2);

/// The residual scale of both the dense block and the RRDB.
const RESIDUAL_SCALE: f32 = 0.2;

/// Sizes of an RRDBNet, read from its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrdbConfig {
    /// Image channels in and out.
    pub in_channels: usize,
    pub out_channels: usize,
    /// `num_feat`, `num_grow_ch`, `num_block`.
    pub num_feat: usize,
    pub num_grow_ch: usize,
    pub num_block: usize,
    /// Nearest-2x upsampling stages (`conv_up1`, `conv_up2`, ...).
    pub upsamples: usize,
    /// The input's pixel unshuffle factor: 1, 2 (Real-ESRGAN x2plus) or 4 (x1).
    pub unshuffle: usize,
}

impl RrdbConfig {
    /// Output pixels per input pixel along each axis.
    pub fn scale(&self) -> usize {
        (1 << self.upsamples) / self.unshuffle
    }

    /// Reads the sizes from `conv_first`, `body.N`, `conv_upK` and `conv_last`.
    pub fn detect_from_weights(w: &Weights) -> Result<RrdbConfig, ModelError> {
        let first = conv_shape(w, "conv_first")?;
        let last = conv_shape(w, "conv_last")?;
        let (num_feat, in_total, out_channels) = (first[0], first[1], last[0]);
        let num_block = (0..).take_while(|i| w.contains(&format!("body.{i}.rdb1.conv1.weight"))).count();
        if num_block == 0 {
            return Err(ModelError::Config(format!(
                "RRDBNet without RRDB blocks: no {}",
                w.full_name("body.0.rdb1.conv1.weight")
            )));
        }
        let num_grow_ch = conv_shape(w, "body.0.rdb1.conv1")?[0];
        let upsamples = (1..).take_while(|k| w.contains(&format!("conv_up{k}.weight"))).count();
        if upsamples == 0 || upsamples > 4 {
            return Err(ModelError::Config(format!(
                "RRDBNet with {upsamples} upsampling convs (conv_up1..): expected 1 to 4"
            )));
        }
        // Real-ESRGAN x2plus / x1 pixel-unshuffle RGB into 4x / 16x the channels.
        let unshuffle = if in_total == out_channels * 16 && upsamples == 2 {
            4
        } else if in_total == out_channels * 4 && upsamples >= 2 {
            2
        } else {
            1
        };
        Ok(RrdbConfig {
            in_channels: in_total / (unshuffle * unshuffle),
            out_channels,
            num_feat,
            num_grow_ch,
            num_block,
            upsamples,
            unshuffle,
        })
    }
}

fn conv_shape(w: &Weights, name: &str) -> Result<Vec<usize>, ModelError> {
    let s = w.pp(name).shape("weight")?;
    if s.len() != 4 || s[2] != 3 || s[3] != 3 {
        return Err(ModelError::Config(format!(
            "{} has shape {s:?}, expected a 3x3 conv",
            w.full_name(&format!("{name}.weight"))
        )));
    }
    Ok(s)
}

/// basicsr `ResidualDenseBlock`: five 3x3 convs over the growing concatenation.
pub struct ResidualDenseBlock {
    /// `conv1` .. `conv5`.
    pub convs: [Conv2d; 5],
}

impl ResidualDenseBlock {
    fn load(gpu: &Gpu, w: &Weights, nf: usize, gc: usize, dtype: DType) -> Result<Self, ModelError> {
        let conv = |k: usize| {
            let cout = if k == 5 { nf } else { gc };
            Conv2d::load_sized(gpu, &w.pp(format!("conv{k}")), (nf + (k - 1) * gc, cout, 3), 1, 1, dtype)
        };
        Ok(ResidualDenseBlock { convs: [conv(1)?, conv(2)?, conv(3)?, conv(4)?, conv(5)?] })
    }

    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut parts: Vec<Tensor> = vec![x.clone()];
        for conv in &self.convs[..4] {
            // [B, nf + k*gc, H, W]: the block's input and every earlier output.
            let refs: Vec<&Tensor> = parts.iter().collect();
            let cat = if parts.len() == 1 { x.clone() } else { concat(gpu, &refs, 1)? };
            let xk = unary(gpu, &conv.forward(gpu, &cat)?, LRELU)?;
            parts.push(xk);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        let x5 = self.convs[4].forward(gpu, &concat(gpu, &refs, 1)?)?;
        Ok(add_scaled(gpu, x, &x5, RESIDUAL_SCALE)?)
    }
}

/// basicsr `RRDB`: three dense blocks and a scaled residual.
pub struct Rrdb {
    pub rdb1: ResidualDenseBlock,
    pub rdb2: ResidualDenseBlock,
    pub rdb3: ResidualDenseBlock,
}

impl Rrdb {
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let out = self.rdb1.forward(gpu, x)?;
        let out = self.rdb2.forward(gpu, &out)?;
        let out = self.rdb3.forward(gpu, &out)?;
        Ok(add_scaled(gpu, x, &out, RESIDUAL_SCALE)?)
    }
}

/// The whole network.
pub struct RrdbNet {
    pub config: RrdbConfig,
    pub conv_first: Conv2d,
    pub body: Vec<Rrdb>,
    pub conv_body: Conv2d,
    pub conv_up: Vec<Conv2d>,
    pub conv_hr: Conv2d,
    pub conv_last: Conv2d,
}

impl RrdbNet {
    pub fn load(gpu: &Gpu, w: &Weights, config: &RrdbConfig, dtype: DType) -> Result<RrdbNet, ModelError> {
        let c = config;
        let (nf, gc) = (c.num_feat, c.num_grow_ch);
        let first_in = c.in_channels * c.unshuffle * c.unshuffle;
        let conv =
            |name: &str, cin: usize, cout: usize| Conv2d::load_sized(gpu, &w.pp(name), (cin, cout, 3), 1, 1, dtype);
        let body = (0..c.num_block)
            .map(|i| {
                let b = w.pp(format!("body.{i}"));
                Ok(Rrdb {
                    rdb1: ResidualDenseBlock::load(gpu, &b.pp("rdb1"), nf, gc, dtype)?,
                    rdb2: ResidualDenseBlock::load(gpu, &b.pp("rdb2"), nf, gc, dtype)?,
                    rdb3: ResidualDenseBlock::load(gpu, &b.pp("rdb3"), nf, gc, dtype)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(RrdbNet {
            conv_first: conv("conv_first", first_in, nf)?,
            body,
            conv_body: conv("conv_body", nf, nf)?,
            conv_up: (1..=c.upsamples).map(|k| conv(&format!("conv_up{k}"), nf, nf)).collect::<Result<_, _>>()?,
            conv_hr: conv("conv_hr", nf, nf)?,
            conv_last: conv("conv_last", nf, c.out_channels)?,
            config: config.clone(),
        })
    }

    /// `x [B, in, H, W] -> [B, out, H*scale, W*scale]`; H and W must divide
    /// by the unshuffle factor.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let u = self.config.unshuffle;
        // [B, in, H, W] -> [B, in*u*u, H/u, W/u]
        let feat = if u > 1 { pixel_unshuffle(gpu, x, u)? } else { x.clone() };
        let feat = self.conv_first.forward(gpu, &feat)?;
        let mut trunk = feat.clone();
        for block in &self.body {
            trunk = block.forward(gpu, &trunk)?;
        }
        let mut feat = add(gpu, &feat, &self.conv_body.forward(gpu, &trunk)?)?;
        drop(trunk);
        for up in &self.conv_up {
            // [B, nf, h, w] -> [B, nf, 2h, 2w]
            let big = upsample_nearest2x(gpu, &feat)?;
            feat = unary(gpu, &up.forward(gpu, &big)?, LRELU)?;
        }
        let hr = unary(gpu, &self.conv_hr.forward(gpu, &feat)?, LRELU)?;
        self.conv_last.forward(gpu, &hr)
    }

    /// Bytes of the largest activation for an `h x w` input.
    pub fn largest_activation(&self, h: usize, w: usize, dtype: DType) -> u64 {
        let c = &self.config;
        let (lh, lw) = (h / c.unshuffle, w / c.unshuffle);
        let lr = (c.num_feat + 4 * c.num_grow_ch) * lh * lw;
        let s = 1 << c.upsamples;
        let hr = c.num_feat.max(c.out_channels) * lh * s * lw * s;
        (lr.max(hr) * dtype.size()) as u64
    }
}

/// (basicsr name, stored name) for every weight of a file in another RRDBNet
/// layout (the original ESRGAN one or BSRGAN's), or `None` for basicsr's own
/// layout and anything that is not RRDBNet.
pub fn layout_names<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<Vec<(String, String)>> {
    old_layout_names(names.clone()).or_else(|| bsrgan_layout_names(names))
}

/// BSRGAN / RealSR names: `RRDB_trunk.N.RDBk.convj` -> `body.N.rdbk.convj`,
/// `trunk_conv` -> `conv_body`, `upconvK` -> `conv_upK`, `HRconv` -> `conv_hr`.
fn bsrgan_layout_names<'a>(names: impl Iterator<Item = &'a str>) -> Option<Vec<(String, String)>> {
    let names: Vec<&str> = names.collect();
    if !names.contains(&"trunk_conv.weight") || !names.iter().any(|n| n.starts_with("RRDB_trunk.")) {
        return None;
    }
    let map = names
        .iter()
        .map(|n| {
            let new = if let Some(rest) = n.strip_prefix("RRDB_trunk.") {
                // N.RDB1.conv1.weight -> body.N.rdb1.conv1.weight
                let (i, rest) = rest.split_once('.')?;
                let (rdb, rest) = rest.split_once('.')?;
                format!("body.{i}.{}.{rest}", rdb.to_ascii_lowercase())
            } else if let Some(rest) = n.strip_prefix("trunk_conv.") {
                format!("conv_body.{rest}")
            } else if let Some(rest) = n.strip_prefix("HRconv.") {
                format!("conv_hr.{rest}")
            } else if let Some(rest) = n.strip_prefix("upconv") {
                format!("conv_up{rest}")
            } else {
                n.to_string()
            };
            Some((new, n.to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(map)
}

/// For the original ESRGAN layout (`model.0.weight`, `model.1.sub.N.RDB1.conv1.0.weight`, ...):
/// (basicsr name, stored name) for every weight, or `None` if `names` is not that layout.
/// In that layout each upsampling stage is (Upsample, Conv, LeakyReLU), so for n stages the
/// convs are `model.3`, `model.6`, ..., then `model.{3n+2}` (HR conv) and `model.{3n+4}` (last).
fn old_layout_names<'a>(names: impl Iterator<Item = &'a str>) -> Option<Vec<(String, String)>> {
    let names: Vec<&str> = names.collect();
    if !names.contains(&"model.0.weight") || !names.iter().any(|n| n.starts_with("model.1.sub.")) {
        return None;
    }
    let top: Vec<usize> =
        names.iter().filter_map(|n| n.strip_prefix("model.")?.strip_suffix(".weight")?.parse().ok()).collect();
    let last = *top.iter().max()?;
    if last < 7 || (last - 4) % 3 != 0 {
        return None;
    }
    let ups = (last - 4) / 3;
    let subs: Vec<usize> =
        names.iter().filter_map(|n| n.strip_prefix("model.1.sub.")?.split('.').next()?.parse().ok()).collect();
    let trunk_conv = *subs.iter().max()?;
    let mut map = Vec::new();
    for n in &names {
        let Some((stem, kind)) = n.rsplit_once('.') else { continue };
        let new = if let Some(rest) = stem.strip_prefix("model.1.sub.") {
            let (i, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let i: usize = i.parse().ok()?;
            if i == trunk_conv && rest.is_empty() {
                "conv_body".to_string()
            } else {
                // RDB1.conv1.0 -> rdb1.conv1
                let mut p = rest.split('.');
                let (rdb, conv) = (p.next()?, p.next()?);
                format!("body.{i}.{}.{conv}", rdb.to_ascii_lowercase())
            }
        } else if let Some(idx) = stem.strip_prefix("model.").and_then(|s| s.parse::<usize>().ok()) {
            match idx {
                0 => "conv_first".into(),
                i if i == last => "conv_last".into(),
                i if i == last - 2 => "conv_hr".into(),
                i if i % 3 == 0 && i / 3 >= 1 && i / 3 <= ups => format!("conv_up{}", i / 3),
                _ => return None,
            }
        } else {
            return None;
        };
        map.push((format!("{new}.{kind}"), n.to_string()));
    }
    Some(map)
}
