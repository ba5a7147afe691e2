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

use std::path::Path;

use gpu::ops::binary::{add_scaled, mul};
use gpu::ops::layout::concat;
use gpu::{DType, Gpu, Tensor};
use pixels::Image;

use crate::ModelError;
use crate::controlnet::{ControlNet, ControlResiduals};
use crate::image_ops::{Method, center_crop_to_aspect, resize};
use crate::sampling::schedulers::ModelSigmas;
use crate::unet::UnetConfig;

/// One ControlNet application as a conditioning carries it.
#[derive(Clone, Copy)]
pub struct ControlSpec<'a> {
    pub net: &'a ControlNet,
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
    /// `[copies * B, model_channels, h, w]`: the embedded hint for each conditioning batched into the call.
    pub hint: Tensor,
    /// Active while `sigma_end <= sigma <= sigma_start`.
    pub sigma_start: f64,
    pub sigma_end: f64,
}

impl PreparedControl<'_> {
    /// ComfyUI: inactive when sigma > range start or sigma < range end (compared in f32 there).
    fn active_at(&self, sigma: f64) -> bool {
        !(sigma > self.sigma_start || sigma < self.sigma_end)
    }

    /// The ControlNet's unscaled residuals for one UNet call.
    fn residuals(&self, gpu: &Gpu, call: &UnetCall<'_>) -> Result<ControlResiduals, ModelError> {
        self.spec.net.forward(gpu, call.x, call.timesteps, call.context, &self.hint)
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

/// Checks that a ControlNet fits the UNet it steers.
fn check_fits(net: &ControlNet, unet: &UnetConfig, path: &Path) -> Result<(), String> {
    let c = &net.config.unet;
    if c.block_out_channels != unet.block_out_channels
        || c.layers_per_block != unet.layers_per_block
        || c.context_dim != unet.context_dim
        || c.in_channels != unet.in_channels
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
            unet.in_channels
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
    for spec in controls {
        let net = spec.net;
        check_fits(net, unet, spec.path)?;
        let f = net.config.hint_downscale();
        let ch = net.config.hint_channels;
        let pixels = control_hint(spec.image, w * f, h * f, ch, b)?;
        let t = gpu.upload(&pixels, &[b, ch, h * f, w * f], DType::F32).map_err(|e| e.to_string())?;
        let mut hint = net.embed_hint(gpu, &t).map_err(|e| e.to_string())?;
        if copies > 1 {
            hint = concat(gpu, &vec![&hint; copies], 0).map_err(|e| e.to_string())?;
        }
        out.push(PreparedControl {
            spec,
            hint,
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
) -> Result<Option<ControlResiduals>, String> {
    let mut sum: Option<ControlResiduals> = None;
    for c in controls.iter().filter(|c| c.active_at(call.sigma)) {
        let r = c.residuals(gpu, call).map_err(|e| format!("ControlNet {}: {e}", c.spec.path.display()))?;
        let s = c.spec.strength as f32;
        sum = Some(match sum {
            None => scale_residuals(gpu, &r, s).map_err(|e| e.to_string())?,
            Some(acc) => ControlResiduals {
                down: acc
                    .down
                    .iter()
                    .zip(&r.down)
                    .map(|(a, d)| add_residual(gpu, a, d, s))
                    .collect::<Result<Vec<_>, _>>()?,
                mid: add_residual(gpu, &acc.mid, &r.mid, s)?,
            },
        });
    }
    Ok(sum)
}

/// The first active control whose residuals at `sigma` hold NaN or infinity, described with the likely cause, or
/// `None`. Runs each active control again and reads its residuals back: meant for the error path only, after the
/// UNet's output came out non-finite.
pub fn non_finite_control(gpu: &Gpu, controls: &[PreparedControl<'_>], call: &UnetCall<'_>) -> Option<String> {
    for c in controls.iter().filter(|c| c.active_at(call.sigma)) {
        let r = c.residuals(gpu, call).ok()?;
        for (i, t) in r.down.iter().chain([&r.mid]).enumerate() {
            let values = gpu.download(t).ok()?;
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                let which = if i == r.down.len() { "middle block".to_string() } else { format!("input block {i}") };
                return Some(format!(
                    "the ControlNet {} gives {v} in its residual for the UNet's {which}: its file holds NaN or \
                     infinite weights (a corrupt or badly converted file), or f16 overflowed (try SDGRAPH_DTYPE=f32)",
                    c.spec.path.display()
                ));
            }
        }
    }
    None
}

/// `acc + s * r`, in `acc`'s dtype (two ControlNets may differ in dtype only if the env changed between loads).
fn add_residual(gpu: &Gpu, acc: &Tensor, r: &Tensor, s: f32) -> Result<Tensor, String> {
    let r = gpu::ops::cast::cast(gpu, r, acc.dtype()).map_err(|e| e.to_string())?;
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
