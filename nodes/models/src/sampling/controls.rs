//! ControlNets during sampling, as ComfyUI's KSampler runs them (`comfy/controlnet.py`,
//! Comfy-Org/ComfyUI @ 311c01406130b2acbe8ab291043502de26cf3871):
//!
//! - the control image is center-cropped to the latent's aspect ratio and resized to the hint
//!   size with `nearest-exact` (`common_upscale(..., 'nearest-exact', "center")`), pixels in 0..1
//!   as they are, and repeated or cut to the latent batch (`broadcast_image_to`); it is embedded
//!   once per sampling run (it depends on nothing else), where ComfyUI does it each step;
//! - a control is active while the step's sigma lies in `[percent_to_sigma(end_percent),
//!   percent_to_sigma(start_percent)]` (`ControlBase.pre_run` / `get_control`);
//! - the residuals of every control active at a step are summed, each times its strength.
//!
//! T2I-adapters come the same way (ComfyUI's `T2IAdapter`, `comfy/controlnet.py` @
//! a125cd84b054a57729b5eecab930ca9408719832): the control image is resized alike (to the latent's
//! size x8, rounded up to a multiple of 8), averaged to gray for an adapter that takes one channel,
//! and run through the adapter once; its features, times the strength, go to the UNet's input blocks
//! ([`UnetControl::input`]): level i's after that level's last ResBlock (ComfyUI: every third input
//! block, the same blocks for UNets of 2 ResBlocks per level, which all SD 1.x/2.x UNets have).

use std::path::Path;

use gpu::ops::binary::{add_scaled, mul};
use gpu::ops::cast::cast;
use gpu::ops::layout::concat;
use gpu::{DType, Gpu, Tensor};
use pixels::Image;

use crate::ModelError;
use crate::controlnet::{ControlNet, ControlResiduals};
use crate::image_ops::{Method, center_crop_to_aspect, resize};
use crate::sampling::schedulers::ModelSigmas;
use crate::t2i_adapter::{T2iAdapter, UNSHUFFLE};
use crate::unet::{UnetConfig, UnetControl};

/// What ControlNetLoader loads: a ControlNet or a T2I-adapter (ComfyUI's `ControlNet` and
/// `T2IAdapter`, both `ControlBase`).
pub enum ControlModel {
    /// Boxed: a ControlNet holds a whole encoder's layers, an adapter a few convs.
    ControlNet(Box<ControlNet>),
    T2iAdapter(T2iAdapter),
}

impl ControlModel {
    pub fn as_controlnet(&self) -> Option<&ControlNet> {
        match self {
            ControlModel::ControlNet(n) => Some(n.as_ref()),
            ControlModel::T2iAdapter(_) => None,
        }
    }

    pub fn as_t2i_adapter(&self) -> Option<&T2iAdapter> {
        match self {
            ControlModel::T2iAdapter(a) => Some(a),
            ControlModel::ControlNet(_) => None,
        }
    }

    /// Channels of the control image it takes.
    pub fn hint_channels(&self) -> usize {
        match self {
            ControlModel::ControlNet(n) => n.config.hint_channels,
            ControlModel::T2iAdapter(a) => a.config.input_channels,
        }
    }

    /// "ControlNet" or "T2I-adapter", for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ControlModel::ControlNet(_) => "ControlNet",
            ControlModel::T2iAdapter(_) => "T2I-adapter",
        }
    }
}

/// One ControlNet (or T2I-adapter) application as a conditioning carries it.
#[derive(Clone, Copy)]
pub struct ControlSpec<'a> {
    pub net: &'a ControlModel,
    /// The ControlNet's file, named in messages.
    pub path: &'a Path,
    /// The control image, `[B, H, W, C]` in 0..1, at any size.
    pub image: &'a Image,
    pub strength: f64,
    pub start_percent: f64,
    pub end_percent: f64,
}

/// One control, ready for a sampling run: its embedded control image and its sigma range.
pub struct PreparedControl<'a> {
    pub spec: ControlSpec<'a>,
    /// `[copies * B, model_channels, h, w]`: a ControlNet's embedded hint for each conditioning batched
    /// into the call; for a T2I-adapter, the control image it read `[B, channels, 8h, 8w]`.
    pub hint: Tensor,
    /// A T2I-adapter's unscaled features, `[copies * B, C, h', w']` each, with the UNet input block each
    /// goes to (empty for a ControlNet).
    pub features: Vec<(usize, Tensor)>,
    /// Active while `sigma_end <= sigma <= sigma_start`.
    pub sigma_start: f64,
    pub sigma_end: f64,
}

impl PreparedControl<'_> {
    /// ComfyUI: inactive when sigma > range start or sigma < range end (compared in f32 there).
    fn active_at(&self, sigma: f64) -> bool {
        !(sigma > self.sigma_start || sigma < self.sigma_end)
    }

    /// The unscaled control of one UNet call: a ControlNet's residuals, or a T2I-adapter's features.
    fn residuals(&self, gpu: &Gpu, call: &UnetCall<'_>) -> Result<UnetControl, ModelError> {
        match self.spec.net {
            ControlModel::ControlNet(net) => {
                let r = net.forward(gpu, call.x, call.timesteps, call.context, &self.hint)?;
                Ok(UnetControl { input: Vec::new(), down: Some(r.down), mid: Some(r.mid) })
            }
            ControlModel::T2iAdapter(_) => {
                let n = self.features.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
                let mut input = vec![None; n];
                for (i, f) in &self.features {
                    input[*i] = Some(f.clone());
                }
                Ok(UnetControl { input, down: None, mid: None })
            }
        }
    }
}

/// The control image as the ControlNet's input: `[batch, channels, height,
/// width]` (NCHW, f32), center-cropped to the target aspect ratio, resized
/// with nearest-exact, its batch repeated cyclically (or cut) to `batch`; a
/// one-channel image is repeated to `channels`, extra channels (alpha) are
/// dropped.
pub fn control_hint(
    img: &Image,
    width: usize,
    height: usize,
    channels: usize,
    batch: usize,
) -> Result<Vec<f32>, String> {
    let cropped = center_crop_to_aspect(img, width, height);
    let r = resize(&cropped, width, height, Method::NearestExact)?;
    let (hw, c) = (width * height, r.channels);
    if c == 0 || r.batch == 0 || (c != 1 && c < channels) {
        return Err(format!("a control image of {c} channels for a ControlNet that takes {channels}"));
    }
    let mut out = vec![0.0; batch * channels * hw];
    for b in 0..batch {
        let src = &r.data[(b % r.batch) * hw * c..][..hw * c];
        for ch in 0..channels {
            let from = if c == 1 { 0 } else { ch };
            let dst = &mut out[(b * channels + ch) * hw..][..hw];
            for (p, d) in dst.iter_mut().enumerate() {
                *d = src[p * c + from];
            }
        }
    }
    Ok(out)
}

/// The control image as a T2I-adapter's input, `[batch, channels, height, width]` (NCHW, f32): as
/// [`control_hint`], and for an adapter of one channel the picture's colour channels (alpha dropped)
/// averaged, as ComfyUI's `torch.mean(cond_hint, 1)`.
pub fn adapter_hint(
    img: &Image,
    width: usize,
    height: usize,
    channels: usize,
    batch: usize,
) -> Result<Vec<f32>, String> {
    if channels != 1 || img.channels <= 1 {
        return control_hint(img, width, height, channels, batch);
    }
    let k = img.channels.min(3);
    let colour = control_hint(img, width, height, k, batch)?;
    let hw = width * height;
    let mut out = vec![0.0; batch * hw];
    for (b, plane) in out.chunks_mut(hw).enumerate() {
        for (p, v) in plane.iter_mut().enumerate() {
            *v = (0..k).map(|c| colour[(b * k + c) * hw + p]).sum::<f32>() / k as f32;
        }
    }
    Ok(out)
}

/// Checks that a T2I-adapter fits the UNet it steers: one level per UNet level, of its width.
fn check_adapter_fits(ad: &T2iAdapter, unet: &UnetConfig, path: &Path) -> Result<(), String> {
    if ad.config.channels != unet.block_out_channels {
        return Err(format!(
            "the T2I-adapter {} does not fit the model: its levels {:?}, the model's {:?}",
            path.display(),
            ad.config.channels,
            unet.block_out_channels
        ));
    }
    Ok(())
}

/// Checks that a ControlNet fits the UNet it steers.
fn check_fits(net: &ControlNet, unet: &UnetConfig, path: &Path) -> Result<(), String> {
    let c = &net.config.unet;
    // A ControlNet reads the latent alone, also beside an inpainting UNet (whose mask and masked image it never sees).
    let latent_channels = if unet.is_inpaint() { unet.out_channels } else { unet.in_channels };
    if c.block_out_channels != unet.block_out_channels
        || c.layers_per_block != unet.layers_per_block
        || c.context_dim != unet.context_dim
        || c.in_channels != latent_channels
    {
        return Err(format!(
            "the ControlNet {} does not fit the model: its levels {:?} x {} layers, context {}, {} latent channels; the model's {:?} x {}, context {}, {}",
            path.display(),
            c.block_out_channels,
            c.layers_per_block,
            c.context_dim,
            c.in_channels,
            unet.block_out_channels,
            unet.layers_per_block,
            unet.context_dim,
            latent_channels
        ));
    }
    Ok(())
}

/// Embeds the control images of `controls` for latents (or area crops) of
/// `shape` (once per sampling run), repeated `copies` times for a call that
/// batches that many conditionings.
pub fn prepare_controls<'a>(
    gpu: &Gpu,
    unet: &UnetConfig,
    sigmas: &ModelSigmas,
    controls: impl IntoIterator<Item = ControlSpec<'a>>,
    shape: [usize; 4],
    copies: usize,
) -> Result<Vec<PreparedControl<'a>>, String> {
    let [b, _, h, w] = shape;
    let mut out = Vec::new();
    let repeat = |t: Tensor| -> Result<Tensor, String> {
        if copies > 1 { concat(gpu, &vec![&t; copies], 0).map_err(|e| e.to_string()) } else { Ok(t) }
    };
    for spec in controls {
        let (hint, features) = match spec.net {
            ControlModel::ControlNet(net) => {
                check_fits(net, unet, spec.path)?;
                let f = net.config.hint_downscale();
                let ch = net.config.hint_channels;
                let pixels = control_hint(spec.image, w * f, h * f, ch, b)?;
                let t = gpu.upload(&pixels, &[b, ch, h * f, w * f], DType::F32).map_err(|e| e.to_string())?;
                (repeat(net.embed_hint(gpu, &t).map_err(|e| e.to_string())?)?, Vec::new())
            }
            ControlModel::T2iAdapter(ad) => {
                check_adapter_fits(ad, unet, spec.path)?;
                // ComfyUI's scale_image_to: the latent's size x8, rounded up to the unshuffle (already a multiple).
                let (ph, pw) = (h * 8, w * 8);
                let (ph, pw) = (ph.div_ceil(UNSHUFFLE) * UNSHUFFLE, pw.div_ceil(UNSHUFFLE) * UNSHUFFLE);
                let ch = ad.config.input_channels;
                let pixels = adapter_hint(spec.image, pw, ph, ch, b)?;
                let t = gpu.upload(&pixels, &[b, ch, ph, pw], DType::F32).map_err(|e| e.to_string())?;
                let feats = ad.forward(gpu, &t).map_err(|e| format!("T2I-adapter {}: {e}", spec.path.display()))?;
                // Level i's feature after the level's last ResBlock: input block i * (l + 1) + l.
                let l = unet.layers_per_block;
                let features = feats
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| Ok((i * (l + 1) + l, repeat(f)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                (t, features)
            }
        };
        out.push(PreparedControl {
            spec,
            hint,
            features,
            sigma_start: sigmas.percent_to_sigma(spec.start_percent),
            sigma_end: sigmas.percent_to_sigma(spec.end_percent),
        });
    }
    Ok(out)
}

/// One UNet call the controls steer: `x [copies * B, C, h, w]` at `timesteps` under `context`, at `sigma`.
pub struct UnetCall<'a> {
    pub x: &'a Tensor,
    pub timesteps: &'a [f32],
    pub context: &'a Tensor,
    pub sigma: f64,
}

/// The summed, strength-scaled residuals of the controls active at the call's
/// sigma, or `None` when none is active.
pub fn control_residuals(
    gpu: &Gpu,
    controls: &[PreparedControl<'_>],
    call: &UnetCall<'_>,
) -> Result<Option<UnetControl>, String> {
    let mut sum: Option<UnetControl> = None;
    for c in controls.iter().filter(|c| c.active_at(call.sigma)) {
        let name = |e: &dyn std::fmt::Display| format!("{} {}: {e}", c.spec.net.kind_name(), c.spec.path.display());
        let r = c.residuals(gpu, call).map_err(|e| name(&e))?;
        let s = c.spec.strength as f32;
        sum = Some(match sum {
            None => scale_control(gpu, &r, s).map_err(|e| name(&e))?,
            Some(acc) => add_control(gpu, acc, &r, s)?,
        });
    }
    Ok(sum)
}

/// `acc + s * r`, part by part (a part only one of them has is taken as it is).
fn add_control(gpu: &Gpu, acc: UnetControl, r: &UnetControl, s: f32) -> Result<UnetControl, String> {
    let one = |a: Option<Tensor>, b: Option<&Tensor>| -> Result<Option<Tensor>, String> {
        Ok(match (a, b) {
            (a, None) => a,
            (Some(a), Some(b)) => Some(add_residual(gpu, &a, b, s)?),
            (None, Some(b)) => Some(scale(gpu, b, s).map_err(|e| e.to_string())?),
        })
    };
    let mut input = acc.input;
    input.resize(input.len().max(r.input.len()), None);
    for (i, slot) in input.iter_mut().enumerate() {
        *slot = one(slot.take(), r.input.get(i).and_then(Option::as_ref))?;
    }
    let down = match (acc.down, &r.down) {
        (a, None) => a,
        (None, Some(b)) => {
            Some(b.iter().map(|d| scale(gpu, d, s)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?)
        }
        (Some(a), Some(b)) => {
            Some(a.iter().zip(b).map(|(a, d)| add_residual(gpu, a, d, s)).collect::<Result<Vec<_>, _>>()?)
        }
    };
    Ok(UnetControl { input, down, mid: one(acc.mid, r.mid.as_ref())? })
}

/// Every part of `r` times `strength` (ComfyUI's `x *= self.strength`).
fn scale_control(gpu: &Gpu, r: &UnetControl, strength: f32) -> Result<UnetControl, gpu::GpuError> {
    let s = |t: &Tensor| scale(gpu, t, strength);
    Ok(UnetControl {
        input: r.input.iter().map(|t| t.as_ref().map(s).transpose()).collect::<Result<Vec<_>, _>>()?,
        down: r.down.as_ref().map(|d| d.iter().map(s).collect::<Result<Vec<_>, _>>()).transpose()?,
        mid: r.mid.as_ref().map(s).transpose()?,
    })
}

/// `t * strength`, in `t`'s dtype.
fn scale(gpu: &Gpu, t: &Tensor, strength: f32) -> Result<Tensor, gpu::GpuError> {
    mul(gpu, t, &gpu.upload(&[strength], &[1], t.dtype())?)
}

/// The first active control whose residuals at `sigma` hold NaN or infinity, described with the likely cause, or
/// `None`. Runs each active control again and reads its residuals back: meant for the error path only, after the
/// UNet's output came out non-finite.
pub fn non_finite_control(gpu: &Gpu, controls: &[PreparedControl<'_>], call: &UnetCall<'_>) -> Option<String> {
    for c in controls.iter().filter(|c| c.active_at(call.sigma)) {
        let r = c.residuals(gpu, call).ok()?;
        let down = r.down.iter().flatten().enumerate().map(|(i, t)| (format!("input block {i}"), t));
        let mid = r.mid.iter().map(|t| ("middle block".to_string(), t));
        let input = r.input.iter().enumerate().filter_map(|(i, t)| Some((format!("input block {i}"), t.as_ref()?)));
        for (which, t) in down.chain(mid).chain(input) {
            let values = gpu.download(t).ok()?;
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                return Some(format!(
                    "the {} {} gives {v} in its residual for the UNet's {which}: its file holds NaN or \
                     infinite weights (a corrupt or badly converted file), or f16 overflowed (try SDGRAPH_DTYPE=f32)",
                    c.spec.net.kind_name(),
                    c.spec.path.display()
                ));
            }
        }
    }
    None
}

/// `acc + s * r`, in `acc`'s dtype (two ControlNets may differ in dtype only if the env changed between loads).
fn add_residual(gpu: &Gpu, acc: &Tensor, r: &Tensor, s: f32) -> Result<Tensor, String> {
    let r = cast(gpu, r, acc.dtype()).map_err(|e| e.to_string())?;
    add_scaled(gpu, acc, &r, s).map_err(|e| format!("two ControlNets' residuals do not add up: {e}"))
}

/// Every residual times `strength` (ComfyUI's `x *= self.strength`).
pub fn scale_residuals(gpu: &Gpu, r: &ControlResiduals, strength: f32) -> Result<ControlResiduals, gpu::GpuError> {
    let s = gpu.upload(&[strength], &[1], r.mid.dtype())?;
    Ok(ControlResiduals {
        down: r.down.iter().map(|d| mul(gpu, d, &s)).collect::<Result<Vec<_>, _>>()?,
        mid: mul(gpu, &r.mid, &s)?,
    })
}
