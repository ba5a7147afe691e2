//! The UNet with KSampler's conditionings bound, run as ComfyUI's
//! `calc_cond_batch` runs it (`comfy/samplers.py`, Comfy-Org/ComfyUI @
//! 311c01406130b2acbe8ab291043502de26cf3871): one model call per group of
//! conditioning entries that can share a batch (the same area size, the same
//! text length and the same ControlNet applications: `can_concat_cond`), each
//! entry over its area's crop of the latent. Entries with GLIGEN text boxes run with the GLIGEN as the UNet's
//! transformer patch (`get_area_and_mult`'s `middle_patch`: the boxes divided by the crop's size), batched only
//! with entries carrying the same boxes (ComfyUI never batches them: each patch is a new object). The sampler's CFG wrapping
//! ([`models::sampling::samplers::CfgDenoiser`]) weighs and averages the parts. An inpainting UNet gets each entry's
//! mask and masked-image latent after the latent on the channel axis (ComfyUI's `c_concat`, see
//! [`models::sampling::inpaint_concat`]), cropped to the entry's area; ControlNets see the latent alone.

use std::sync::Arc;

use gpu::ops::layout::concat;
use gpu::{DType, Gpu, Tensor};
use graph::node::{NodeError, err};

use crate::payload::{CondEntry, CondMask, Conditioning, ControlApplication, GligenBoxes, InpaintConcat, ModelHandle};
use models::gligen::GligenPatch;
use models::image_ops::resample::{Method, resize_mask};
use models::sampling::areas::{mask_bounds, mask_weights, pair_areas};
use models::sampling::controls::{PreparedControl, UnetCall, control_residuals, non_finite_control, prepare_controls};
use models::sampling::inpaint_concat::{CONCAT_CHANNELS, Planes, cat_channels, concat_cond};
use models::sampling::samplers::{CondPart, LatentArea, NetOutput, NoisePredictor};
use models::sampling::schedulers::ModelSigmas;
use models::unet::UnetControl;
use models::unet_blocks::MiddlePatch;

/// One conditioning entry ready for sampling.
struct Bound<'a> {
    uncond: bool,
    /// `None`: the whole latent.
    area: Option<LatentArea>,
    strength: f64,
    /// ConditioningSetMask's weights over the crop.
    mask: Option<Vec<f32>>,
    /// Active while `end <= sigma <= start` (ConditioningSetTimestepRange's, as sigmas).
    sigma_range: (f64, f64),
    /// `[B, L, C]`: the entry's text repeated over the latent batch.
    context: Tensor,
    controls: &'a [Arc<ControlApplication>],
    gligen: Option<&'a Arc<GligenBoxes>>,
    /// InpaintModelConditioning's masked image and mask.
    inpaint: Option<&'a Arc<InpaintConcat>>,
}

/// An entry while areas are paired: the text of `text`, everything else of `base`, the area `(h, w, y, x)`
/// in latent pixels as given (not yet clamped to the latent).
#[derive(Clone, Copy)]
struct Pairing<'a> {
    text: &'a CondEntry,
    base: &'a CondEntry,
    area: Option<(usize, usize, usize, usize)>,
}

/// Entries run in one UNet call.
struct Group<'a> {
    members: Vec<usize>,
    /// `[B, C, h, w]` of each member's crop.
    crop: [usize; 4],
    /// `[members * B, L, C]`.
    context: Tensor,
    controls: Vec<PreparedControl<'a>>,
    /// The members' GLIGEN patch, its grounding tokens made for the crop and the call's batch.
    gligen: Option<GligenPatch<'a>>,
}

/// The UNet with both prompts bound (see the module docs).
pub struct UnetPredictor<'a> {
    gpu: &'a Gpu,
    model: &'a ModelHandle,
    sigmas: ModelSigmas,
    /// The latent's `[B, C, H, W]`.
    shape: [usize; 4],
    entries: Vec<Bound<'a>>,
    /// The calls for the positive entries only (cfg 1), and for both; made on first use.
    groups: [Option<Vec<Group<'a>>>; 2],
    /// Which ControlNet made the last non-finite output, when one did (see `non_finite_cause`).
    cause: std::cell::RefCell<Option<String>>,
    /// For an inpainting UNet, each entry's `c_concat` `[B, 5, H, W]` (empty for other UNets).
    concat: Vec<Vec<f32>>,
}

/// Most latent elements (batch x crop area) one call may hold, in units of the
/// whole latent: two, as a batched positive and negative prompt always were.
const MAX_CALL_LATENTS: usize = 2;

impl<'a> UnetPredictor<'a> {
    /// Binds `pos` and `neg` (none: the positive alone, for cfg 1) for latents of `shape`: every area given a
    /// partner of the same area on the other side (ComfyUI's
    /// `create_cond_with_same_area_if_none`, on the areas as given), then
    /// clamped to the latent; each entry's text repeated over the batch.
    pub fn bind(
        gpu: &'a Gpu,
        model: &'a ModelHandle,
        sigmas: &ModelSigmas,
        pos: &'a Conditioning,
        neg: Option<&'a Conditioning>,
        shape: [usize; 4],
    ) -> Result<Self, NodeError> {
        let resolve = |c: &'a Conditioning, input: &str| -> Result<Vec<Pairing<'a>>, NodeError> {
            if c.entries.is_empty() {
                return Err(err(format!("input {input:?}: an empty conditioning")));
            }
            c.entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut area = e.area.map(|a| a.resolve(shape[2], shape[3]));
                    if let Some(m) = e.mask.as_ref().filter(|m| m.to_bounds) {
                        area = Some(mask_bounds(
                            &latent_mask(m, shape).map_err(|x| err(format!("input {input:?}: {x}")))?,
                        ));
                    }
                    if let Some((h, w, y, x)) = area
                        && LatentArea::clamped(shape, h, w, y, x).is_none()
                    {
                        return Err(err(format!(
                            "input {input:?}, entry {i}: its area at ({}, {}) lies outside the {}x{} picture",
                            x * 8,
                            y * 8,
                            shape[3] * 8,
                            shape[2] * 8
                        )));
                    }
                    Ok(Pairing { text: e, base: e, area })
                })
                .collect()
        };
        let mut p = resolve(pos, "positive")?;
        // Without a negative (BasicGuider), only the positive runs, at cfg 1.
        let mut n = match neg {
            Some(neg) => resolve(neg, "negative")?,
            None => Vec::new(),
        };
        // Paired on the areas as given, clamped to the latent only when run (as ComfyUI: process_conds, then
        // get_area_and_mult at each step).
        let area_of = |e: &Pairing<'a>| e.area;
        // The partner keeps the entry's area, strength and ControlNets and takes the other side's text.
        let partner = |c: &Pairing<'a>, s: &Pairing<'a>| Pairing { text: s.text, ..*c };
        pair_areas(&mut p, &mut n, area_of, partner);
        let b = shape[0];
        let mut entries = Vec::new();
        for (uncond, list) in [(false, p), (true, n)] {
            for e in list {
                let context = repeat(gpu, &e.text.cond, b)?;
                // Every area was checked to clamp to something above; partners copy those areas.
                let area = e.area.and_then(|(h, w, y, x)| LatentArea::clamped(shape, h, w, y, x));
                let mask = match &e.base.mask {
                    None => None,
                    Some(m) => {
                        let resized = latent_mask(m, shape).map_err(err)?;
                        let whole = LatentArea { shape, h: shape[2], w: shape[3], y: 0, x: 0 };
                        Some(mask_weights(&resized, area.as_ref().unwrap_or(&whole), m.strength as f32))
                    }
                };
                let (strength, controls) = (e.base.strength, e.base.controls.as_slice());
                let (start, end) = e.base.range.unwrap_or((0.0, 1.0));
                let sigma_range = (sigmas.percent_to_sigma(start), sigmas.percent_to_sigma(end));
                let gligen = e.base.gligen.as_ref();
                if let Some(g) = gligen {
                    let side = if uncond { "negative" } else { "positive" };
                    let crop = area.map_or(shape, |a| a.crop_shape());
                    check_gligen(g, &model.unet, crop).map_err(|m| err(format!("input \"{side}\": {m}")))?;
                }
                // Part of ComfyUI's model_conds, which an area partner takes from the other side with the text.
                let inpaint = e.text.inpaint.as_ref();
                entries.push(Bound { uncond, area, strength, mask, sigma_range, context, controls, gligen, inpaint });
            }
        }
        let cause = Default::default();
        let concat = Vec::new();
        let p =
            UnetPredictor { gpu, model, sigmas: sigmas.clone(), shape, entries, groups: [None, None], cause, concat };
        // Without the sampled latent: each entry's own masked image, else ComfyUI's blank defaults.
        p.with_inpaint(&[], None)
    }

    /// An inpainting UNet's extra input made with the latent being sampled and the sampler's denoise mask
    /// (`[B, C, h, w]`, the latent's noise mask resized), for the entries without InpaintModelConditioning's
    /// (ComfyUI's `latent_image` and `denoise_mask` reaching `concat_cond`). Nothing for other UNets.
    pub fn with_inpaint(mut self, latent: &[f32], denoise_mask: Option<&[f32]>) -> Result<Self, NodeError> {
        if !self.model.unet.config.is_inpaint() {
            return Ok(self);
        }
        let shape = self.shape;
        let sampled = Planes { shape, data: latent };
        let default_mask = denoise_mask.map(|data| Planes { shape, data });
        self.concat = self
            .entries
            .iter()
            .map(|e| {
                let side = if e.uncond { "negative" } else { "positive" };
                let (mask, image) = match e.inpaint {
                    Some(i) => {
                        let m = &i.mask;
                        let mask = Planes { shape: [m.batch, 1, m.height, m.width], data: &m.data };
                        (Some(mask), Planes { shape: i.latent.shape, data: &i.latent.samples })
                    }
                    None => (default_mask, sampled),
                };
                concat_cond(shape, mask, image).map_err(|m| err(format!("input \"{side}\": inpainting model: {m}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Groups the entries into calls (`with_uncond`: the negative ones too) and prepares their ControlNets.
    fn plan(&self, with_uncond: bool) -> Result<Vec<Group<'a>>, NodeError> {
        let mut left: Vec<usize> =
            (0..self.entries.len()).filter(|&i| with_uncond || !self.entries[i].uncond).collect();
        let mut groups = Vec::new();
        while let Some(&first) = left.first() {
            let f = &self.entries[first];
            let crop = self.crop_of(f);
            let fits = |e: &Bound<'_>| {
                self.crop_of(e) == crop
                    && e.sigma_range == f.sigma_range
                    && e.context.shape() == f.context.shape()
                    && e.controls.len() == f.controls.len()
                    && e.controls.iter().zip(f.controls).all(|(a, b)| Arc::ptr_eq(a, b))
                    && match (e.gligen, f.gligen) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    }
            };
            let full: usize = self.shape.iter().product();
            let per: usize = crop.iter().product();
            let most = (MAX_CALL_LATENTS * full / per.max(1)).max(1);
            let members: Vec<usize> = left.iter().copied().filter(|&i| fits(&self.entries[i])).take(most).collect();
            left.retain(|i| !members.contains(i));
            let contexts: Vec<&Tensor> = members.iter().map(|&i| &self.entries[i].context).collect();
            let context =
                if contexts.len() == 1 { contexts[0].clone() } else { concat(self.gpu, &contexts, 0).map_err(err)? };
            let side = if f.uncond { "negative" } else { "positive" };
            let controls = prepare_controls(
                self.gpu,
                &self.model.unet.config,
                &self.sigmas,
                f.controls.iter().map(|c| c.spec()),
                crop,
                members.len(),
            )
            .map_err(|e| err(format!("input \"{side}\": {e}")))?;
            let [b, _, h, w] = crop;
            let gligen = f
                .gligen
                .map(|g| g.model.gligen.patch(self.gpu, &g.boxes, members.len() * b, h, w))
                .transpose()
                .map_err(|e| err(format!("input \"{side}\": GLIGEN: {e}")))?;
            groups.push(Group { members, crop, context, controls, gligen });
        }
        Ok(groups)
    }

    fn crop_of(&self, e: &Bound<'_>) -> [usize; 4] {
        e.area.map_or(self.shape, |a| a.crop_shape())
    }

    /// One UNet call for `group` on the scaled input `x_in`; each member's output.
    fn run(&self, group: &Group<'_>, x_in: &[f32], timestep: f64, sigma: f64) -> Result<Vec<Vec<f32>>, NodeError> {
        let [b, c, h, w] = group.crop;
        let n = group.members.len();
        let mut batch = Vec::with_capacity(n * b * c * h * w);
        for &i in &group.members {
            match &self.entries[i].area {
                None => batch.extend_from_slice(x_in),
                Some(a) => batch.extend(a.crop(x_in)),
            }
        }
        let xt = self.gpu.upload(&batch, &[n * b, c, h, w], DType::F32).map_err(err)?;
        let with_concat;
        let xu = if self.concat.is_empty() {
            &xt
        } else {
            // [n * b, 4, h, w] ++ [n * b, 5, h, w] -> [n * b, 9, h, w], each member's concat over its crop.
            let mut extra = Vec::with_capacity(n * b * CONCAT_CHANNELS * h * w);
            for &i in &group.members {
                let full = &self.concat[i];
                match &self.entries[i].area {
                    None => extra.extend_from_slice(full),
                    Some(a) => {
                        let [sb, _, sh, sw] = self.shape;
                        extra.extend(LatentArea { shape: [sb, CONCAT_CHANNELS, sh, sw], ..*a }.crop(full))
                    }
                }
            }
            let joined = cat_channels(&batch, &extra, n * b);
            with_concat = self.gpu.upload(&joined, &[n * b, c + CONCAT_CHANNELS, h, w], DType::F32).map_err(err)?;
            &with_concat
        };
        let t = vec![timestep as f32; n * b];
        let call = UnetCall { x: &xt, timesteps: &t, context: &group.context, sigma };
        let residuals = control_residuals(self.gpu, &group.controls, &call).map_err(err)?;
        let unet = &self.model.unet;
        let out = match (&residuals, &group.gligen) {
            (None, None) => unet.forward(self.gpu, xu, &t, &group.context),
            (r, p) => {
                let none = UnetControl::default();
                let middle = p.as_ref().map(|p| p as &dyn MiddlePatch);
                unet.forward_controlled(self.gpu, xu, &t, &group.context, r.as_ref().unwrap_or(&none), middle)
            }
        }
        .map_err(err)?;
        let out = self.gpu.download(&out).map_err(err)?;
        // Only on the error path: find out whether a ControlNet's residuals were what went non-finite.
        if residuals.is_some() && out.iter().any(|v| !v.is_finite()) {
            *self.cause.borrow_mut() = non_finite_control(self.gpu, &group.controls, &call);
        }
        Ok(out.chunks(b * c * h * w).map(<[f32]>::to_vec).collect())
    }
}

impl NoisePredictor for UnetPredictor<'_> {
    type Error = NodeError;

    fn predict(&mut self, x_in: &[f32], timestep: f64, sigma: f64, with_uncond: bool) -> Result<NetOutput, NodeError> {
        let k = usize::from(with_uncond);
        if self.groups[k].is_none() {
            self.groups[k] = Some(self.plan(with_uncond)?);
        }
        let groups = self.groups[k].as_ref().expect("planned above");
        let mut parts: Vec<Option<CondPart>> = vec![None; self.entries.len()];
        for g in groups {
            // ComfyUI skips an entry while sigma is outside its range (compared as ComfyUI does: `>` start, `<` end).
            let (start, end) = self.entries[g.members[0]].sigma_range;
            if sigma > start || sigma < end {
                continue;
            }
            for (&i, out) in g.members.iter().zip(self.run(g, x_in, timestep, sigma)?) {
                let e = &self.entries[i];
                parts[i] = Some(CondPart { area: e.area, strength: e.strength, mask: e.mask.clone(), out });
            }
        }
        let side = |uncond: bool| -> Vec<CondPart> {
            parts.iter().zip(&self.entries).filter(|(_, e)| e.uncond == uncond).filter_map(|(p, _)| p.clone()).collect()
        };
        Ok(NetOutput { cond: side(false), uncond: with_uncond.then(|| side(true)) })
    }

    fn non_finite_cause(&mut self) -> Option<String> {
        self.cause.take()
    }
}

/// Whether `g`'s GLIGEN fits the UNet and its boxes lie in the `crop` they are divided by (ComfyUI would
/// ground a box past the edge at corners above 1, meaning nothing; sdgraph refuses a box that starts outside).
fn check_gligen(g: &GligenBoxes, unet: &models::unet::Unet, crop: [usize; 4]) -> Result<(), String> {
    let (blocks, transformers) = (g.model.gligen.blocks.len(), unet.transformer_count());
    if blocks < transformers {
        return Err(format!(
            "the GLIGEN {} has {blocks} gated blocks, the model's UNet {transformers} transformers: it was made for \
             another model",
            g.model.path.display()
        ));
    }
    let [_, _, h, w] = crop;
    for (i, b) in g.boxes.iter().enumerate() {
        if b.x >= w || b.y >= h {
            return Err(format!(
                "GLIGEN text box {i} at ({}, {}) lies outside the {}x{} picture (or area) it is placed in",
                b.x * 8,
                b.y * 8,
                w * 8,
                h * 8
            ));
        }
    }
    Ok(())
}

/// `cond [1, L, C]` repeated to `[n, L, C]`.
fn repeat(gpu: &Gpu, cond: &Tensor, n: usize) -> Result<Tensor, NodeError> {
    if n == 1 {
        return Ok(cond.clone());
    }
    let parts: Vec<&Tensor> = std::iter::repeat_n(cond, n).collect();
    concat(gpu, &parts, 0).map_err(err)
}

/// A ConditioningSetMask mask at the latent's size (ComfyUI's bilinear `interpolate` when it differs).
fn latent_mask(m: &CondMask, shape: [usize; 4]) -> Result<graph::Mask, String> {
    let (h, w) = (shape[2], shape[3]);
    if m.mask.batch == 0 || m.mask.height == 0 || m.mask.width == 0 {
        return Err("an empty mask".into());
    }
    if m.mask.height == h && m.mask.width == w {
        return Ok((*m.mask).clone());
    }
    resize_mask(&m.mask, w, h, Method::Bilinear)
}
