//! Real-ESRGAN's SRVGGNetCompact (the `realesr-general-x4v3` and
//! `realesr-animevideov3` models), as basicsr's
//! `basicsr/archs/srvgg_arch.py` and spandrel's `RealESRGAN` compact port:
//! <https://github.com/XPixelGroup/BasicSR/blob/v1.4.2/basicsr/archs/srvgg_arch.py>.
//!
//! ```text
//! body.0 conv(in, nf), body.1 PReLU(nf),
//! (body.2k conv(nf, nf), body.2k+1 PReLU(nf)) x num_conv,
//! body.last conv(nf, out * s * s)
//! y = pixel_shuffle(body(x), s) + nearest_upsample(x, s)
//! ```
//!
//! The number of convs, features, input channels and scale are read from the
//! `body.N` weights. Only the PReLU variant (every released model) is
//! supported: ReLU / LeakyReLU activations have no weights, so they cannot
//! be told apart from the file.

use gpu::ops::binary::{add, prelu};
use gpu::ops::layout::{pixel_shuffle, upsample_nearest};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::Conv2d;
use crate::checkpoint::weights::Weights;

/// Sizes of an SRVGGNetCompact, read from its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvggConfig {
    pub in_channels: usize,
    pub num_feat: usize,
    /// Hidden convs between the first and the last.
    pub num_conv: usize,
    pub scale: usize,
}

impl SrvggConfig {
    pub fn detect_from_weights(w: &Weights) -> Result<SrvggConfig, ModelError> {
        let first = w.pp("body.0").shape("weight")?;
        let [nf, cin, 3, 3] = first[..] else {
            return Err(ModelError::Config(format!(
                "{} has shape {first:?}, expected a 3x3 conv",
                w.full_name("body.0.weight")
            )));
        };
        let len = (0..).take_while(|i| w.contains(&format!("body.{i}.weight"))).count();
        // conv, prelu, (conv, prelu) x n, conv: an odd count of at least 3.
        if len < 3 || len % 2 == 0 {
            return Err(ModelError::Config(format!(
                "SRVGGNetCompact expects body.0 .. body.N as conv, PReLU pairs and a last conv; found {len} entries \
                 (ReLU / LeakyReLU variants, whose activations have no weights, are not supported)"
            )));
        }
        for i in (1..len - 1).step_by(2) {
            let s = w.pp(format!("body.{i}")).shape("weight")?;
            if s != [nf] {
                return Err(ModelError::Config(format!(
                    "{} has shape {s:?}, expected a PReLU weight [{nf}]",
                    w.full_name(&format!("body.{i}.weight"))
                )));
            }
        }
        let last = w.pp(format!("body.{}", len - 1)).shape("weight")?;
        let out = last.first().copied().unwrap_or(0);
        let scale = (1..=16).find(|s| s * s * cin == out).ok_or_else(|| {
            ModelError::Config(format!(
                "{} has {out} output channels: not {cin} channels times a square scale",
                w.full_name(&format!("body.{}.weight", len - 1))
            ))
        })?;
        Ok(SrvggConfig { in_channels: cin, num_feat: nf, num_conv: (len - 3) / 2, scale })
    }
}

pub struct SrvggNet {
    pub config: SrvggConfig,
    /// `body.0`, `body.2`, ...: every conv.
    pub convs: Vec<Conv2d>,
    /// `body.1`, `body.3`, ...: one `[nf]` slope per PReLU.
    pub prelus: Vec<Tensor>,
}

impl SrvggNet {
    pub fn load(gpu: &Gpu, w: &Weights, config: &SrvggConfig, dtype: DType) -> Result<SrvggNet, ModelError> {
        let c = config;
        let n = c.num_conv + 2;
        let mut convs = Vec::with_capacity(n);
        let mut prelus = Vec::with_capacity(n - 1);
        for k in 0..n {
            let cin = if k == 0 { c.in_channels } else { c.num_feat };
            let cout = if k == n - 1 { c.in_channels * c.scale * c.scale } else { c.num_feat };
            convs.push(Conv2d::load_sized(gpu, &w.pp(format!("body.{}", 2 * k)), (cin, cout, 3), 1, 1, dtype)?);
            if k < n - 1 {
                prelus.push(w.pp(format!("body.{}", 2 * k + 1)).tensor(gpu, "weight", &[c.num_feat], dtype)?);
            }
        }
        Ok(SrvggNet { config: config.clone(), convs, prelus })
    }

    /// `x [B, in, H, W] -> [B, in, H*scale, W*scale]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut h = x.clone();
        for (k, conv) in self.convs.iter().enumerate() {
            h = conv.forward(gpu, &h)?;
            if let Some(slope) = self.prelus.get(k) {
                h = prelu(gpu, &h, slope)?;
            }
        }
        let s = self.config.scale;
        // [B, in*s*s, H, W] -> [B, in, H*s, W*s]
        let out = pixel_shuffle(gpu, &h, s)?;
        Ok(add(gpu, &out, &upsample_nearest(gpu, x, s)?)?)
    }

    pub fn largest_activation(&self, h: usize, w: usize, dtype: DType) -> u64 {
        let c = &self.config;
        let n = (c.num_feat * h * w).max(c.in_channels * c.scale * c.scale * h * w);
        (n * dtype.size()) as u64
    }
}
