//! T2I-Adapter for SD 1.x/2.x: ComfyUI's `Adapter` (xl=False) and `Adapter_light`
//! (`comfy/t2i_adapter/adapter.py`, TencentARC's T2I-Adapter, pinned at
//! <https://github.com/Comfy-Org/ComfyUI/blob/a125cd84b054a57729b5eecab930ca9408719832/comfy/t2i_adapter/adapter.py>),
//! under their state-dict names: `conv_in`, `body.N.{down_opt.op, in_conv, block1, block2}` (full),
//! `body.N.{in_conv, body.M.{block1, block2}, out_conv}` (light). diffusers' `T2IAdapter` files are
//! renamed to these by `checkpoint::convert` (ComfyUI's `load_t2i_adapter` table).
//!
//! The network reads only the control image: pixel-unshuffled by 8 (so it works at the latent's
//! size), then one feature map per UNet level (level i at 1/2^i of the latent, with that level's
//! channels). ComfyUI adds level i's map to the UNet's hidden state after the last input block of
//! that level, before the skip connection and the downsampler read it
//! ([`crate::unet::UnetControl::input`]).
//!
//! Differences from ComfyUI, all about what the weights may say: ComfyUI builds 4 levels of
//! `[c, 2c, 4c, 4c]` channels with 2 ResBlocks each (full) or `[320, 640, 1280, 1280]` with 4
//! (light); here levels and channels come from the weights (so an adapter for a narrower UNet, such
//! as the demo model, loads), and the full adapter's ResBlocks per level from the file's
//! `sdgraph.t2i.nums_rb` metadata, else ComfyUI's 2 (the weights cannot tell where a level ends
//! when two levels have the same width). SDXL adapters (unshuffle 16) are refused.

use gpu::ops::conv2d::{Conv2dOptions, conv2d_with};
use gpu::ops::elementwise::{Unary, unary};
use gpu::ops::layout::pixel_unshuffle;
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::Conv2d;
use crate::checkpoint::weights::Weights;

/// The pixel-unshuffle factor of every SD 1.x adapter: the control image is 8x the latent.
pub const UNSHUFFLE: usize = 8;

/// The ResBlocks per level of a full adapter when the file does not say (ComfyUI's `nums_rb=2`).
pub const DEFAULT_NUMS_RB: usize = 2;

/// Which of ComfyUI's two networks.
#[derive(Debug, Clone, PartialEq)]
pub enum T2iKind {
    /// `Adapter`: `conv_in`, then `nums_rb` ResnetBlocks per level; the first of each level but the
    /// first downsamples (average pool, or a strided 3x3 conv when `conv_down`); `ksize` is the kernel
    /// of `in_conv` and `block2` (1 in TencentARC's SD 1.x adapters, 3 in some).
    Full { ksize: usize, conv_down: bool },
    /// `Adapter_light`: per level an `extractor` (average pool but at the first level, 1x1 `in_conv`
    /// to `inter[level]` channels, `nums_rb` light ResBlocks, 1x1 `out_conv`).
    Light { inter: Vec<usize> },
}

/// What the adapter looks like, read from the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct T2iAdapterConfig {
    pub kind: T2iKind,
    /// Channels of the control image (ComfyUI's `input_channels`: `cin / 64`): 3, or 1 for the
    /// adapters that take a gray map (ComfyUI then averages the picture's channels).
    pub input_channels: usize,
    /// Output channels of each level (the UNet's `block_out_channels`).
    pub channels: Vec<usize>,
    /// ResBlocks per level.
    pub nums_rb: usize,
}

impl T2iAdapterConfig {
    /// Reads the config from the weights `w` (ComfyUI's names, no prefix): light when
    /// `body.0.in_conv.weight` is there, full when `conv_in.weight` is (ComfyUI's test, in its
    /// order). `nums_rb` is the full adapter's ResBlocks per level when the file says it.
    pub fn detect_from_weights(w: &Weights, nums_rb: Option<usize>) -> Result<T2iAdapterConfig, ModelError> {
        let conv_shape = |name: &str| -> Result<[usize; 4], ModelError> {
            let s = w.shape(name)?;
            <[usize; 4]>::try_from(s.as_slice())
                .map_err(|_| ModelError::Config(format!("{} has shape {s:?}, not a 2-D conv", w.full_name(name))))
        };
        let cin_channels = |cin: usize, name: &str| -> Result<usize, ModelError> {
            let per = UNSHUFFLE * UNSHUFFLE;
            if cin == 256 || cin == 768 {
                return Err(ModelError::Config(format!(
                    "{}: {cin} input channels, an SDXL T2I-adapter (pixel unshuffle 16): only SD 1.x/2.x adapters are supported",
                    w.full_name(name)
                )));
            }
            if cin == 0 || !cin.is_multiple_of(per) {
                return Err(ModelError::Config(format!(
                    "{}: {cin} input channels is not the control image's channels x {per} (pixel unshuffle {UNSHUFFLE})",
                    w.full_name(name)
                )));
            }
            Ok(cin / per)
        };
        if w.contains("body.0.in_conv.weight") {
            let levels = (0..).take_while(|i| w.contains(&format!("body.{i}.in_conv.weight"))).count();
            let nums_rb = (0..).take_while(|j| w.contains(&format!("body.0.body.{j}.block1.weight"))).count();
            if nums_rb == 0 {
                return Err(ModelError::Config(format!(
                    "{}: a light T2I-adapter without ResBlocks (body.0.body.0.block1.weight)",
                    w.full_name("body.0")
                )));
            }
            let [_, cin, _, _] = conv_shape("body.0.in_conv.weight")?;
            let input_channels = cin_channels(cin, "body.0.in_conv.weight")?;
            let mut inter = Vec::with_capacity(levels);
            let mut channels = Vec::with_capacity(levels);
            for i in 0..levels {
                inter.push(conv_shape(&format!("body.{i}.in_conv.weight"))?[0]);
                channels.push(conv_shape(&format!("body.{i}.out_conv.weight"))?[0]);
            }
            return Ok(T2iAdapterConfig { kind: T2iKind::Light { inter }, input_channels, channels, nums_rb });
        }
        if !w.contains("conv_in.weight") {
            return Err(ModelError::Config(format!(
                "not a T2I-adapter: neither {} (full) nor {} (light)",
                w.full_name("conv_in.weight"),
                w.full_name("body.0.in_conv.weight")
            )));
        }
        let [c0, cin, _, _] = conv_shape("conv_in.weight")?;
        let input_channels = cin_channels(cin, "conv_in.weight")?;
        let blocks = (0..).take_while(|i| w.contains(&format!("body.{i}.block1.weight"))).count();
        let nums_rb = nums_rb.unwrap_or(DEFAULT_NUMS_RB);
        if blocks == 0 || nums_rb == 0 || !blocks.is_multiple_of(nums_rb) {
            return Err(ModelError::Config(format!(
                "{}: {blocks} ResnetBlocks (body.N.block1) do not make levels of {nums_rb} (sdgraph.t2i.nums_rb, else ComfyUI's {DEFAULT_NUMS_RB})",
                w.full_name("body")
            )));
        }
        if let Some(k) = (0..blocks).map(|i| format!("body.{i}.skep.weight")).find(|k| w.contains(k)) {
            return Err(ModelError::Config(format!(
                "{}: a ResnetBlock with a skip conv (sk=False), which ComfyUI's loader does not build either",
                w.full_name(&k)
            )));
        }
        let ksize = conv_shape("body.0.block2.weight")?[2];
        let conv_down = (0..blocks).any(|i| w.contains(&format!("body.{i}.down_opt.op.weight")));
        let channels = (0..blocks / nums_rb)
            .map(|l| conv_shape(&format!("body.{}.block1.weight", l * nums_rb)).map(|s| s[0]))
            .collect::<Result<Vec<_>, _>>()?;
        if channels[0] != c0 {
            return Err(ModelError::Config(format!(
                "{}: conv_in gives {c0} channels, the first level has {}",
                w.full_name("conv_in.weight"),
                channels[0]
            )));
        }
        Ok(T2iAdapterConfig { kind: T2iKind::Full { ksize, conv_down }, input_channels, channels, nums_rb })
    }
}

/// How a level's first block halves the size.
enum Down {
    /// ComfyUI's `Downsample(use_conv=False)`: a 2x2 average pool, stride 2, padded by `size % 2`
    /// on both sides of an odd axis (the zeros counted): `[1, 1, 2, 2]` of 0.25, run as a conv.
    Pool(Tensor),
    /// `down_opt.op`: a 3x3 conv, stride 2, padding 1.
    Conv(Conv2d),
}

impl Down {
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Down::Conv(c) => c.forward(gpu, x),
            Down::Pool(kernel) => {
                let &[b, c, h, w] = x.shape() else {
                    return Err(ModelError::Config(format!("T2I-adapter pool input {:?} is not 4-D", x.shape())));
                };
                let opts = Conv2dOptions { stride: (2, 2), padding: (h % 2, w % 2), ..Default::default() };
                // [B, C, H, W] -> [B*C, 1, H, W]: every channel pooled on its own by the one-channel kernel.
                let y = conv2d_with(gpu, &x.reshape(&[b * c, 1, h, w])?, kernel, None, &opts)?;
                let (ho, wo) = (y.dim(2), y.dim(3));
                // [B*C, 1, H', W'] -> [B, C, H', W']
                Ok(y.reshape(&[b, c, ho, wo])?)
            }
        }
    }
}

/// ComfyUI's `ResnetBlock` with sk=True (`[down_opt] -> [in_conv] -> x + block2(relu(block1(x)))`)
/// and `ResnetBlock_light` (no down, no in_conv, 3x3 block2).
struct ResnetBlock {
    down: Option<Down>,
    in_conv: Option<Conv2d>,
    block1: Conv2d,
    block2: Conv2d,
}

impl ResnetBlock {
    fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut x = x.clone();
        if let Some(d) = &self.down {
            x = d.forward(gpu, &x)?;
        }
        if let Some(c) = &self.in_conv {
            x = c.forward(gpu, &x)?;
        }
        let h = unary(gpu, &self.block1.forward(gpu, &x)?, Unary::LeakyRelu(0.0))?;
        self.block2.forward_residual(gpu, &h, &x)
    }
}

/// One level: `pre` (light: the pool and `in_conv`), the ResBlocks, `out_conv` (light).
struct Level {
    pool: Option<Down>,
    in_conv: Option<Conv2d>,
    blocks: Vec<ResnetBlock>,
    out_conv: Option<Conv2d>,
}

/// A T2I-adapter's weights on the GPU.
pub struct T2iAdapter {
    pub config: T2iAdapterConfig,
    pub dtype: DType,
    /// `conv_in` (full adapters).
    conv_in: Option<Conv2d>,
    levels: Vec<Level>,
}

impl T2iAdapter {
    /// Builds the network `config` describes from `w` (ComfyUI's names), checking every shape;
    /// weights stored as `dtype`.
    pub fn load(gpu: &Gpu, w: &Weights, config: &T2iAdapterConfig, dtype: DType) -> Result<T2iAdapter, ModelError> {
        let c = config;
        let pool = || -> Result<Down, ModelError> { Ok(Down::Pool(gpu.upload(&[0.25; 4], &[1, 1, 2, 2], dtype)?)) };
        let cin = c.input_channels * UNSHUFFLE * UNSHUFFLE;
        let mut levels = Vec::with_capacity(c.channels.len());
        let conv_in = match &c.kind {
            T2iKind::Full { ksize, conv_down } => {
                let (k, p) = (*ksize, ksize / 2);
                let conv_in = Conv2d::load_sized(gpu, &w.pp("conv_in"), (cin, c.channels[0], 3), 1, 1, dtype)?;
                let mut ch = c.channels[0];
                for (level, &out) in c.channels.iter().enumerate() {
                    let mut blocks = Vec::with_capacity(c.nums_rb);
                    for j in 0..c.nums_rb {
                        let wb = w.pp("body").pp(level * c.nums_rb + j);
                        let down = match (level > 0 && j == 0, conv_down) {
                            (false, _) => None,
                            (true, false) => Some(pool()?),
                            (true, true) => Some(Down::Conv(Conv2d::load_sized(
                                gpu,
                                &wb.pp("down_opt.op"),
                                (ch, ch, 3),
                                2,
                                1,
                                dtype,
                            )?)),
                        };
                        // sk=True: in_conv only where the width changes.
                        let in_conv =
                            (ch != out).then(|| Conv2d::load_sized(gpu, &wb.pp("in_conv"), (ch, out, k), 1, p, dtype));
                        blocks.push(ResnetBlock {
                            down,
                            in_conv: in_conv.transpose()?,
                            block1: Conv2d::load_sized(gpu, &wb.pp("block1"), (out, out, 3), 1, 1, dtype)?,
                            block2: Conv2d::load_sized(gpu, &wb.pp("block2"), (out, out, k), 1, p, dtype)?,
                        });
                        ch = out;
                    }
                    levels.push(Level { pool: None, in_conv: None, blocks, out_conv: None });
                }
                Some(conv_in)
            }
            T2iKind::Light { inter } => {
                if inter.len() != c.channels.len() {
                    return Err(ModelError::Config(format!(
                        "{} levels of inner widths for {} levels",
                        inter.len(),
                        c.channels.len()
                    )));
                }
                let mut ch = cin;
                for (level, (&out, &mid)) in c.channels.iter().zip(inter).enumerate() {
                    let wl = w.pp("body").pp(level);
                    let blocks = (0..c.nums_rb)
                        .map(|j| -> Result<ResnetBlock, ModelError> {
                            let wb = wl.pp("body").pp(j);
                            Ok(ResnetBlock {
                                down: None,
                                in_conv: None,
                                block1: Conv2d::load_sized(gpu, &wb.pp("block1"), (mid, mid, 3), 1, 1, dtype)?,
                                block2: Conv2d::load_sized(gpu, &wb.pp("block2"), (mid, mid, 3), 1, 1, dtype)?,
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    levels.push(Level {
                        pool: if level > 0 { Some(pool()?) } else { None },
                        in_conv: Some(Conv2d::load_sized(gpu, &wl.pp("in_conv"), (ch, mid, 1), 1, 0, dtype)?),
                        blocks,
                        out_conv: Some(Conv2d::load_sized(gpu, &wl.pp("out_conv"), (mid, out, 1), 1, 0, dtype)?),
                    });
                    ch = out;
                }
                None
            }
        };
        Ok(T2iAdapter { config: c.clone(), dtype, conv_in, levels })
    }

    /// The control image `[B, input_channels, H, W]` (pixels in 0..1, any dtype; H and W multiples
    /// of 8) -> one feature map per level, level i `[B, channels[i], ceil(H / 8 / 2^i), ..]`, in the
    /// adapter's dtype. Unscaled: the strength multiplies them afterwards.
    pub fn forward(&self, gpu: &Gpu, hint: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        let c = &self.config;
        let ok = hint.rank() == 4
            && hint.dim(1) == c.input_channels
            && hint.dim(2).is_multiple_of(UNSHUFFLE)
            && hint.dim(3).is_multiple_of(UNSHUFFLE)
            && hint.dim(2) > 0
            && hint.dim(3) > 0;
        if !ok {
            return Err(ModelError::Config(format!(
                "T2I-adapter control image must be [B, {}, H, W] with H and W multiples of {UNSHUFFLE}, got {:?}",
                c.input_channels,
                hint.shape()
            )));
        }
        let x = gpu::ops::cast::cast(gpu, hint, self.dtype)?;
        // [B, C, H, W] -> [B, C*64, H/8, W/8]
        let mut x = pixel_unshuffle(gpu, &x, UNSHUFFLE)?;
        if let Some(conv_in) = &self.conv_in {
            x = conv_in.forward(gpu, &x)?;
        }
        let mut features = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            if let Some(p) = &level.pool {
                x = p.forward(gpu, &x)?;
            }
            if let Some(c) = &level.in_conv {
                x = c.forward(gpu, &x)?;
            }
            for b in &level.blocks {
                x = b.forward(gpu, &x)?;
            }
            if let Some(c) = &level.out_conv {
                x = c.forward(gpu, &x)?;
            }
            features.push(x.clone());
        }
        Ok(features)
    }
}
