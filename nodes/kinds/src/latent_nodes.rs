//! The LATENT nodes, as ComfyUI's (`nodes.py`, Comfy-Org/ComfyUI @ 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e):
//! EmptyLatentImage, SetLatentNoiseMask, LatentUpscale, LatentUpscaleBy, LatentFromBatch, RepeatLatentBatch,
//! LatentComposite, and LatentCompositeMasked (`comfy_extras/nodes_mask.py`). The noise mask's checks and
//! resizing are [`models::sampling::noise_mask`]'s; the latent upscales are `comfy.utils.common_upscale` on each
//! channel plane, through [`models::image_ops`] (without `bislerp`); the batch and composite maths are
//! [`models::image_ops::batch`]'s and [`models::image_ops::compose`]'s. Positions in picture pixels are divided
//! by 8 as ComfyUI does (whatever the VAE's factor).
//!
//! ComfyUI's latents also carry a `batch_index` (which items of the first batch they are, so KSampler's noise
//! follows them through LatentFromBatch and RepeatLatentBatch); [`Latent`] has no such field yet, so those two
//! nodes cannot pass it on: KSampler draws noise for the new batch as if it were a fresh one.

use std::sync::Arc;

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, Mask, PortType, Value};

use crate::image_nodes::{MAX_PIXELS, MAX_RESOLUTION};
use crate::payload::Latent;
use models::image_ops::{self, Method, batch, compose};
use models::sampling::noise_mask::check_noise_mask;

/// SD 1.x latents: 4 channels at 1/8 of the image size.
pub const LATENT_CHANNELS: usize = 4;
pub const LATENT_SCALE: usize = 8;

fn latent_value(latent: Latent) -> Value {
    Value::payload(latent)
}

// ---------------------------------------------------------------- EmptyLatentImage

pub struct EmptyLatentImage(NodeSchema);

graph::node_fields! {
    struct EmptyLatentFields {
        width: usize = int(16, MAX_RESOLUTION, 512, "Image width in pixels (rounded down to a multiple of 8)."),
        height: usize = int(16, MAX_RESOLUTION, 512, "Image height in pixels (rounded down to a multiple of 8)."),
        batch_size: usize = int(1, 64, 1, "Images to make at once."),
    }
}

impl EmptyLatentImage {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("EmptyLatentImage", "latent", "A batch of empty latents for txt2img.")
                .fields(EmptyLatentFields::declare)
                .output("latent", PortType::Latent, "Zero latents [batch, 4, height/8, width/8]."),
        )
    }
}

impl Default for EmptyLatentImage {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for EmptyLatentImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = EmptyLatentFields::read(inputs)?;
        let (w, h) = (f.width / LATENT_SCALE, f.height / LATENT_SCALE);
        Ok(vec![latent_value(Latent::zeros([f.batch_size, LATENT_CHANNELS, h, w]))])
    }
}

// ---------------------------------------------------------------- SetLatentNoiseMask

pub struct SetLatentNoiseMask(NodeSchema);

graph::node_fields! {
    struct NoiseMaskFields {
        samples: Arc<Latent> = input(PortType::Latent, "The latents to inpaint (e.g. from VAEEncode)."),
        mask: Arc<Mask> = input(PortType::Mask, "1 where the picture may change; resized to the latent when sampling."),
    }
}

impl SetLatentNoiseMask {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "SetLatentNoiseMask",
                "latent/inpaint",
                "Limits sampling to the masked area (inpainting): KSampler keeps the latent where the mask is 0.",
            )
            .fields(NoiseMaskFields::declare)
            .output("latent", PortType::Latent, "The same latents, carrying the mask."),
        )
    }
}

impl Default for SetLatentNoiseMask {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for SetLatentNoiseMask {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let NoiseMaskFields { samples: latent, mask } = NoiseMaskFields::read(inputs)?;
        // Kept at its own size, as ComfyUI: KSampler resizes it to whatever size the latent has by then.
        let shape = vec![mask.batch, 1, mask.height, mask.width];
        check_noise_mask(&shape, &mask.data, latent.shape).map_err(|e| err(format!("input \"mask\": {e}")))?;
        let mut out = (*latent).clone();
        out.noise_mask = Some((shape, mask.data.clone()));
        Ok(vec![latent_value(out)])
    }
}

// ---------------------------------------------------------------- LatentUpscale, LatentUpscaleBy

/// LatentUpscale's methods. ComfyUI also offers `bislerp`.
pub const LATENT_UPSCALE_METHODS: [&str; 4] = ["nearest-exact", "bilinear", "area", "bicubic"];

fn latent_method(name: &str) -> Result<Method, NodeError> {
    Method::from_name(name)
        .filter(|m| *m != Method::Lanczos)
        .ok_or_else(|| err(format!("param \"upscale_method\": unknown method {name:?}")))
}

/// ComfyUI's `common_upscale` on latents: every channel plane resized as a one-channel picture to `w` x `h`
/// (after a centred crop to that aspect ratio when `center`). The noise mask is kept as it is: KSampler resizes it.
pub fn upscale_latent(latent: &Latent, w: usize, h: usize, method: Method, center: bool) -> Result<Latent, String> {
    let [b, c, lh, lw] = latent.shape;
    let planes = b * c;
    let px = planes.saturating_mul(w).saturating_mul(h);
    if px > MAX_PIXELS {
        return Err(format!("a {b}x{c}x{h}x{w} latent is {px} values, more than the limit of {MAX_PIXELS}"));
    }
    if w == 0 || h == 0 {
        return Err(format!("cannot resize latents to {w}x{h}"));
    }
    // [B, C, h, w] is B*C one-channel pictures, byte for byte.
    let img = Image::from_data(planes, lh, lw, 1, latent.samples.clone()).ok_or_else(|| {
        format!("the latent has {} values but its shape {:?} needs more", latent.samples.len(), latent.shape)
    })?;
    let src = if center { image_ops::center_crop_to_aspect(&img, w, h) } else { img };
    let out = image_ops::resize(&src, w, h, method)?;
    Ok(Latent { shape: [b, c, h, w], samples: out.data, ..latent.clone() })
}

pub struct LatentUpscale(NodeSchema);

graph::node_fields! {
    struct LatentUpscaleFields {
        samples: Arc<Latent> = input(PortType::Latent, "The latents to resize."),
        upscale_method: String = choice(&LATENT_UPSCALE_METHODS, "nearest-exact", "Resampling filter."),
        width: usize = int(0, MAX_RESOLUTION, 512, "Picture width (at least 64); 0 keeps the aspect ratio."),
        height: usize = int(0, MAX_RESOLUTION, 512, "Picture height (at least 64); 0 keeps the aspect ratio."),
        crop: String = choice(&["disabled", "center"], "disabled", "Center-crop to the target aspect first."),
    }
}

impl LatentUpscale {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("LatentUpscale", "latent", "Resizes latents to a picture size (e.g. for a hires fix).")
                .fields(LatentUpscaleFields::declare)
                .output("latent", PortType::Latent, "Latents of [batch, 4, height/8, width/8]."),
        )
    }
}

impl Default for LatentUpscale {
    fn default() -> Self {
        Self::new()
    }
}

/// The latent size LatentUpscale makes from a `lw` x `lh` latent and the `width`/`height` params, as ComfyUI:
/// sides below 64 pixels become 64, a 0 side follows the aspect ratio (Python's round), and the pixel size is
/// divided by 8 (rounding down). `None` when both are 0 (the latent passes unchanged).
pub fn latent_upscale_size(lw: usize, lh: usize, width: usize, height: usize) -> Option<(usize, usize)> {
    let aspect = |num: usize, side: usize, den: usize| ((num * side) as f64 / den.max(1) as f64).round_ties_even();
    let (w, h) = match (width, height) {
        (0, 0) => return None,
        (0, h) => {
            let h = h.max(64);
            ((aspect(lw, h, lh) as usize).max(64), h)
        }
        (w, 0) => {
            let w = w.max(64);
            (w, (aspect(lh, w, lw) as usize).max(64))
        }
        (w, h) => (w.max(64), h.max(64)),
    };
    Some((w / LATENT_SCALE, h / LATENT_SCALE))
}

impl NodeKind for LatentUpscale {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = LatentUpscaleFields::read(inputs)?;
        let (latent, method) = (f.samples, latent_method(&f.upscale_method)?);
        let center = f.crop == "center";
        let [_, _, lh, lw] = latent.shape;
        let Some((w, h)) = latent_upscale_size(lw, lh, f.width, f.height) else {
            return Ok(vec![Value::shared(latent)]);
        };
        Ok(vec![latent_value(upscale_latent(&latent, w, h, method, center).map_err(err)?)])
    }
}

pub struct LatentUpscaleBy(NodeSchema);

graph::node_fields! {
    struct LatentUpscaleByFields {
        samples: Arc<Latent> = input(PortType::Latent, "The latents to resize."),
        upscale_method: String = choice(&LATENT_UPSCALE_METHODS, "nearest-exact", "Resampling filter."),
        scale_by: f64 = float(0.01, 8.0, 1.5, "Factor applied to width and height."),
    }
}

impl LatentUpscaleBy {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("LatentUpscaleBy", "latent", "Resizes latents by a factor (e.g. 1.5 for a hires fix).")
                .fields(LatentUpscaleByFields::declare)
                .output("latent", PortType::Latent, "The resized latents."),
        )
    }
}

impl Default for LatentUpscaleBy {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for LatentUpscaleBy {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = LatentUpscaleByFields::read(inputs)?;
        let (latent, method, s) = (f.samples, latent_method(&f.upscale_method)?, f.scale_by);
        let [_, _, lh, lw] = latent.shape;
        // Python's round; at least one latent pixel (ComfyUI would fail on an empty size).
        let w = ((lw as f64 * s).round_ties_even() as usize).max(1);
        let h = ((lh as f64 * s).round_ties_even() as usize).max(1);
        Ok(vec![latent_value(upscale_latent(&latent, w, h, method, false).map_err(err)?)])
    }
}

// ---------------------------------------------------------------- LatentFromBatch, RepeatLatentBatch

/// `(shape, values)` of a latent's noise mask, `[masks, 1, h, w]`.
type NoiseMask = (Vec<usize>, Vec<f32>);

/// Values in one mask of a noise mask of `shape`.
fn mask_item_len(shape: &[usize]) -> usize {
    shape.iter().skip(1).product()
}

pub struct LatentFromBatch(NodeSchema);

graph::node_fields! {
    struct LatentFromBatchFields {
        samples: Arc<Latent> = input(PortType::Latent, "The batch of latents."),
        batch_index: i64 = int(-MAX_RESOLUTION, MAX_RESOLUTION, 0, "The first latent to take; negative counts from the end."),
        length: usize = int(1, 64, 1, "How many to take (fewer when the batch ends first)."),
    }
}

impl LatentFromBatch {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("LatentFromBatch", "latent/batch", "Takes some latents out of a batch.")
                .fields(LatentFromBatchFields::declare)
                .output("latent", PortType::Latent, "The latents taken, with their noise masks."),
        )
    }
}

impl Default for LatentFromBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for LatentFromBatch {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = LatentFromBatchFields::read(inputs)?;
        let l = f.samples;
        let [b, c, h, w] = l.shape;
        let (start, count) = batch::from_batch_range(b, f.batch_index, f.length).map_err(err)?;
        let items: Vec<usize> = (start..start + count).collect();
        let samples = batch::select_items(&l.samples, c * h * w, &items);
        let noise_mask = l.noise_mask.as_ref().map(|(shape, data)| -> NoiseMask {
            let picked = batch::from_batch_mask_items(shape[0], start, count);
            let mut shape = shape.clone();
            shape[0] = picked.len();
            (shape.clone(), batch::select_items(data, mask_item_len(&shape), &picked))
        });
        let batch_index = Some(batch::from_batch_indices(l.batch_index.as_deref(), start, count));
        Ok(vec![latent_value(Latent { shape: [count, c, h, w], samples, noise_mask, batch_index })])
    }
}

pub struct RepeatLatentBatch(NodeSchema);

graph::node_fields! {
    struct RepeatLatentBatchFields {
        samples: Arc<Latent> = input(PortType::Latent, "The latents to repeat."),
        amount: usize = int(1, 64, 1, "How many copies of the whole batch."),
    }
}

impl RepeatLatentBatch {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "RepeatLatentBatch",
                "latent/batch",
                "Repeats a batch of latents (e.g. to sample one picture several times).",
            )
            .fields(RepeatLatentBatchFields::declare)
            .output("latent", PortType::Latent, "The batch, `amount` times over."),
        )
    }
}

impl Default for RepeatLatentBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for RepeatLatentBatch {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = RepeatLatentBatchFields::read(inputs)?;
        let (l, amount) = (f.samples, f.amount);
        let [b, c, h, w] = l.shape;
        let values = l.samples.len().saturating_mul(amount);
        if values > MAX_PIXELS {
            return Err(err(format!(
                "{amount} copies of a {b}x{c}x{h}x{w} latent are {values} values, more than the limit of {MAX_PIXELS}"
            )));
        }
        // As ComfyUI: one mask for the batch stays one; a mask per latent is repeated with the latents.
        let noise_mask = l.noise_mask.as_ref().map(|(shape, data)| -> NoiseMask {
            if shape[0] <= 1 {
                return (shape.clone(), data.clone());
            }
            let mut shape = shape.clone();
            shape[0] *= amount;
            (shape, data.repeat(amount))
        });
        let batch_index = batch::repeat_batch_indices(l.batch_index.as_deref(), amount);
        let samples = l.samples.repeat(amount);
        Ok(vec![latent_value(Latent { shape: [b * amount, c, h, w], samples, noise_mask, batch_index })])
    }
}

// ---------------------------------------------------------------- LatentComposite, LatentCompositeMasked

pub struct LatentComposite(NodeSchema);

graph::node_fields! {
    struct LatentCompositeFields {
        samples_to: Arc<Latent> = input(PortType::Latent, "The latents pasted into."),
        samples_from: Arc<Latent> = input(PortType::Latent, "The latents pasted (a batch of 1 goes into every latent)."),
        x: usize = int(0, MAX_RESOLUTION, 0, "Left edge in picture pixels (divided by 8)."),
        y: usize = int(0, MAX_RESOLUTION, 0, "Top edge in picture pixels (divided by 8)."),
        feather: usize = int(0, MAX_RESOLUTION, 0, "Blend ramp width in picture pixels (divided by 8) on the inner sides."),
    }
}

impl LatentComposite {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "LatentComposite",
                "latent",
                "Pastes latents into others at a position, optionally with feathered edges.",
            )
            .fields(LatentCompositeFields::declare)
            .output(
                "latent",
                PortType::Latent,
                "samples_to with samples_from pasted in (cut at the edges).",
            ),
        )
    }
}

impl Default for LatentComposite {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for LatentComposite {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = LatentCompositeFields::read(inputs)?;
        let (to, from) = (f.samples_to, f.samples_from);
        let at = (f.x / LATENT_SCALE, f.y / LATENT_SCALE);
        let samples = compose::latent_composite(
            (to.shape, &to.samples),
            (from.shape, &from.samples),
            at,
            f.feather / LATENT_SCALE,
        )
        .map_err(err)?;
        // The destination's noise mask stays, as ComfyUI copies samples_to.
        Ok(vec![latent_value(Latent { samples, ..(*to).clone() })])
    }
}

pub struct LatentCompositeMasked(NodeSchema);

graph::node_fields! {
    struct LatentCompositeMaskedFields {
        destination: Arc<Latent> = input(PortType::Latent, "The latents pasted into."),
        source: Arc<Latent> = input(PortType::Latent, "The latents pasted (repeated or cut to destination's batch)."),
        mask: Option<Arc<Mask>> = optional_input(PortType::Mask, "How much of source to take (resized to source); all of it when not connected."),
        x: usize = int(0, MAX_RESOLUTION, 0, "Left edge in picture pixels (divided by 8)."),
        y: usize = int(0, MAX_RESOLUTION, 0, "Top edge in picture pixels (divided by 8)."),
        resize_source: bool = bool(false, "Stretch source to destination's size first (bilinear)."),
    }
}

impl LatentCompositeMasked {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "LatentCompositeMasked",
                "latent",
                "Pastes latents into others at a position, through a mask.",
            )
            .fields(LatentCompositeMaskedFields::declare)
            .output(
                "latent",
                PortType::Latent,
                "destination with source blended in: mask * source + (1 - mask) * destination.",
            ),
        )
    }
}

impl Default for LatentCompositeMasked {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for LatentCompositeMasked {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = LatentCompositeMaskedFields::read(inputs)?;
        let (dst, src) = (f.destination, f.source);
        let samples = compose::latent_composite_masked(
            (dst.shape, &dst.samples),
            (src.shape, &src.samples),
            (f.x, f.y),
            f.mask.as_deref(),
            LATENT_SCALE,
            f.resize_source,
        )
        .map_err(err)?;
        Ok(vec![latent_value(Latent { samples, ..(*dst).clone() })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscale_size_follows_comfyui() {
        // 64x48 latent (512x384 picture).
        assert_eq!(latent_upscale_size(64, 48, 0, 0), None);
        assert_eq!(latent_upscale_size(64, 48, 1024, 768), Some((128, 96)));
        assert_eq!(latent_upscale_size(64, 48, 768, 0), Some((96, 72)));
        assert_eq!(latent_upscale_size(64, 48, 0, 576), Some((96, 72)));
        // Below 64 pixels becomes 64; sizes not a multiple of 8 round down.
        assert_eq!(latent_upscale_size(64, 48, 10, 100), Some((8, 12)));
        // The derived side is at least 64 too: 5 * 100 / 8 = 62.5 -> 64.
        assert_eq!(latent_upscale_size(5, 8, 0, 100), Some((8, 12)));
        assert_eq!(latent_upscale_size(3, 2, 0, 101), Some((19, 12))); // 151.5 -> 152 -> 19
        assert_eq!(latent_upscale_size(2, 3, 101, 0), Some((12, 19))); // 101 -> 12, 151.5 -> 152 -> 19
    }
}
