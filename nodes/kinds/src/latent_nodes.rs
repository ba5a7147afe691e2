//! The LATENT nodes, as ComfyUI's (`nodes.py`, Comfy-Org/ComfyUI @ 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e):
//! EmptyLatentImage, SetLatentNoiseMask, LatentUpscale, LatentUpscaleBy; and the noise-mask checks and resizing
//! KSampler applies (`comfy/sampler_helpers.py` @ 53757775fa600326922e53e61dcb5ef54e9abbe1 `prepare_mask`, which calls
//! `comfy.utils.reshape_mask`: bilinear `interpolate` to the latent size, repeated over channels and batch). The
//! latent upscales are `comfy.utils.common_upscale` on each channel plane, through [`models::image_ops`].
//!
//! Differences from ComfyUI, all turning a silent surprise into an error or a no-op:
//! - a noise mask must hold one mask for the whole batch or one per latent (ComfyUI tiles or truncates any count),
//!   and its aspect ratio must be the latent's within 25% or one latent pixel (ComfyUI stretches any mask);
//! - mask values are clamped to 0..=1 when sampling and must be finite (ComfyUI uses them as they are);
//! - `bislerp` is not offered by the upscale nodes.

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, Mask, PortType, Value};

use crate::image_nodes::{MAX_PIXELS, MAX_RESOLUTION};
use crate::payload::Latent;
use models::image_ops::{self, Method};

/// SD 1.x latents: 4 channels at 1/8 of the image size.
pub const LATENT_CHANNELS: usize = 4;
pub const LATENT_SCALE: usize = 8;

fn latent_value(latent: Latent) -> Value {
    Value::payload(latent)
}

// ---------------------------------------------------------------- EmptyLatentImage

pub struct EmptyLatentImage(NodeSchema);

impl EmptyLatentImage {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("EmptyLatentImage", "latent", "A batch of empty latents for txt2img.")
                .int("width", 16, MAX_RESOLUTION, 512, "Image width in pixels (rounded down to a multiple of 8).")
                .int("height", 16, MAX_RESOLUTION, 512, "Image height in pixels (rounded down to a multiple of 8).")
                .int("batch_size", 1, 64, 1, "Images to make at once.")
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
        let w = inputs.usize("width")? / LATENT_SCALE;
        let h = inputs.usize("height")? / LATENT_SCALE;
        let b = inputs.usize("batch_size")?;
        Ok(vec![latent_value(Latent::zeros([b, LATENT_CHANNELS, h, w]))])
    }
}

// ---------------------------------------------------------------- noise masks

/// A latent's noise mask, checked: `batch` masks (1, or one per latent) of `height` x `width`.
#[derive(Debug, Clone, Copy)]
pub struct NoiseMaskView<'a> {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub data: &'a [f32],
}

/// Whether stretching a `mw` x `mh` mask onto a `lw` x `lh` latent distorts it: the two axes' scales differ by
/// more than 25% and by more than one latent pixel. The pixel slack lets through masks of pictures VAEEncode
/// cropped to a multiple of its factor, and tiny latents whose sizes are all rounding.
fn aspect_mismatch(mw: usize, mh: usize, lw: usize, lh: usize) -> bool {
    let (sx, sy) = (mw as f64 / lw as f64, mh as f64 / lh as f64);
    let ratio = sx / sy;
    let off = (mh as f64 / sx - lh as f64).abs().max((mw as f64 / sy - lw as f64).abs());
    !(0.8..=1.25).contains(&ratio) && off > 1.0
}

/// Checks that a `[batch, 1, height, width]` noise mask fits a latent of `shape`: consistent length, a non-empty
/// size, finite values, one mask or one per latent, and about the latent's aspect ratio.
pub fn check_noise_mask<'a>(
    mask_shape: &[usize],
    data: &'a [f32],
    shape: [usize; 4],
) -> Result<NoiseMaskView<'a>, String> {
    let &[mb, one, mh, mw] = mask_shape else {
        return Err(format!("the noise mask has shape {mask_shape:?}; expected [batch, 1, height, width]"));
    };
    if one != 1 {
        return Err(format!("the noise mask has shape {mask_shape:?}; expected [batch, 1, height, width]"));
    }
    let want = mb.checked_mul(mh).and_then(|n| n.checked_mul(mw));
    if want != Some(data.len()) {
        let want = want.map_or("more than can be counted".to_string(), |n| n.to_string());
        return Err(format!("the noise mask has {} values but its shape {mask_shape:?} needs {want}", data.len()));
    }
    if mb == 0 || mh == 0 || mw == 0 {
        return Err(format!("the noise mask is empty ({mb} masks of {mw}x{mh})"));
    }
    let [b, _, lh, lw] = shape;
    if mb != 1 && mb != b {
        return Err(format!(
            "there are {mb} masks for a batch of {b} latents: give one mask for the whole batch or one per latent"
        ));
    }
    if lh > 0 && lw > 0 && aspect_mismatch(mw, mh, lw, lh) {
        return Err(format!(
            "the {mw}x{mh} mask does not fit the {lw}x{lh} latent (a {}x{} picture): their aspect ratios differ; \
             scale or crop the mask to the picture's shape",
            lw * LATENT_SCALE,
            lh * LATENT_SCALE
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(format!("the noise mask holds a non-finite value ({}) at index {i}", data[i]));
    }
    Ok(NoiseMaskView { batch: mb, height: mh, width: mw, data })
}

/// The latent's noise mask as ComfyUI's `prepare_mask` makes it: each mask resized to the latent's size (bilinear,
/// PyTorch's `interpolate` without antialiasing), repeated over the channels and the batch, here also clamped to
/// 0..=1. `None` when the latent has no mask.
pub fn expand_noise_mask(latent: &Latent) -> Result<Option<Vec<f32>>, String> {
    let Some((mask_shape, data)) = &latent.noise_mask else { return Ok(None) };
    let view = check_noise_mask(mask_shape, data, latent.shape)?;
    let [b, c, h, w] = latent.shape;
    let mask = Mask { batch: view.batch, height: view.height, width: view.width, data: view.data.to_vec() };
    // Resizing to the same size is an exact copy (the resampler skips unchanged axes).
    let resized = image_ops::resize_mask(&mask, w, h, Method::Bilinear)?;
    let plane = h * w;
    let mut out = Vec::with_capacity(b * c * plane);
    for i in 0..b {
        let m = &resized.data[(i % view.batch) * plane..][..plane];
        for _ in 0..c {
            out.extend(m.iter().map(|v| v.clamp(0.0, 1.0)));
        }
    }
    Ok(Some(out))
}

// ---------------------------------------------------------------- SetLatentNoiseMask

pub struct SetLatentNoiseMask(NodeSchema);

impl SetLatentNoiseMask {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "SetLatentNoiseMask",
                "latent/inpaint",
                "Limits sampling to the masked area (inpainting): KSampler keeps the latent where the mask is 0.",
            )
            .input("samples", PortType::Latent, "The latents to inpaint (e.g. from VAEEncode).")
            .input("mask", PortType::Mask, "1 where the picture may change; resized to the latent when sampling.")
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
        let latent = inputs.get::<Latent>("samples")?;
        let mask = match inputs.input("mask")? {
            Value::Mask(m) => m.clone(),
            v => return Err(err(format!("input \"mask\": expected a Mask, got {v:?}"))),
        };
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

fn latent_method(inputs: &NodeInputs) -> Result<Method, NodeError> {
    let name = inputs.str("upscale_method")?;
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
    Ok(Latent { shape: [b, c, h, w], samples: out.data, noise_mask: latent.noise_mask.clone() })
}

pub struct LatentUpscale(NodeSchema);

impl LatentUpscale {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("LatentUpscale", "latent", "Resizes latents to a picture size (e.g. for a hires fix).")
                .input("samples", PortType::Latent, "The latents to resize.")
                .choice("upscale_method", &LATENT_UPSCALE_METHODS, "nearest-exact", "Resampling filter.")
                .int("width", 0, MAX_RESOLUTION, 512, "Picture width (at least 64); 0 keeps the aspect ratio.")
                .int("height", 0, MAX_RESOLUTION, 512, "Picture height (at least 64); 0 keeps the aspect ratio.")
                .choice("crop", &["disabled", "center"], "disabled", "Center-crop to the target aspect first.")
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
        let latent = inputs.get::<Latent>("samples")?;
        let method = latent_method(inputs)?;
        let center = inputs.str("crop")? == "center";
        let [_, _, lh, lw] = latent.shape;
        let Some((w, h)) = latent_upscale_size(lw, lh, inputs.usize("width")?, inputs.usize("height")?) else {
            return Ok(vec![Value::shared(latent)]);
        };
        Ok(vec![latent_value(upscale_latent(&latent, w, h, method, center).map_err(err)?)])
    }
}

pub struct LatentUpscaleBy(NodeSchema);

impl LatentUpscaleBy {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("LatentUpscaleBy", "latent", "Resizes latents by a factor (e.g. 1.5 for a hires fix).")
                .input("samples", PortType::Latent, "The latents to resize.")
                .choice("upscale_method", &LATENT_UPSCALE_METHODS, "nearest-exact", "Resampling filter.")
                .float("scale_by", 0.01, 8.0, 1.5, "Factor applied to width and height.")
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
        let latent = inputs.get::<Latent>("samples")?;
        let method = latent_method(inputs)?;
        let s = inputs.float("scale_by")?;
        let [_, _, lh, lw] = latent.shape;
        // Python's round; at least one latent pixel (ComfyUI would fail on an empty size).
        let w = ((lw as f64 * s).round_ties_even() as usize).max(1);
        let h = ((lh as f64 * s).round_ties_even() as usize).max(1);
        Ok(vec![latent_value(upscale_latent(&latent, w, h, method, false).map_err(err)?)])
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

    #[test]
    fn aspect_check_allows_vae_crops_and_refuses_other_shapes() {
        // A 100x60 picture encodes to 12x7 latents (96x56): fine.
        assert!(!aspect_mismatch(100, 60, 12, 7));
        // Same aspect at another scale: fine.
        assert!(!aspect_mismatch(512, 384, 8, 6));
        // Portrait mask on a square latent: refused.
        assert!(aspect_mismatch(512, 768, 64, 64));
        assert!(aspect_mismatch(512, 512, 64, 48));
        // Tiny latents: one pixel of slack.
        assert!(!aspect_mismatch(15, 8, 1, 1));
    }

    #[test]
    fn noise_mask_checks() {
        let d = vec![0.0; 2 * 4 * 4];
        assert!(check_noise_mask(&[2, 1, 4, 4], &d, [2, 4, 4, 4]).is_ok());
        assert!(check_noise_mask(&[1, 1, 4, 8], &d, [3, 4, 4, 8]).is_ok());
        let e = check_noise_mask(&[2, 1, 4, 4], &d, [3, 4, 4, 4]).unwrap_err();
        assert!(e.contains("2 masks for a batch of 3"), "{e}");
        let e = check_noise_mask(&[2, 4, 4], &d, [2, 4, 4, 4]).unwrap_err();
        assert!(e.contains("expected [batch, 1, height, width]"), "{e}");
        let e = check_noise_mask(&[2, 1, 4, 5], &d, [2, 4, 4, 4]).unwrap_err();
        assert!(e.contains("needs"), "{e}");
        let e = check_noise_mask(&[2, 1, 0, 4], &[], [2, 4, 4, 4]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let mut nan = d.clone();
        nan[5] = f32::NAN;
        let e = check_noise_mask(&[2, 1, 4, 4], &nan, [2, 4, 4, 4]).unwrap_err();
        assert!(e.contains("non-finite"), "{e}");
    }

    #[test]
    fn expanded_mask_is_resized_clamped_and_repeated() {
        // One 2x2 mask on a batch of two 4x4 latents with 3 channels.
        let latent = Latent {
            shape: [2, 3, 4, 4],
            samples: vec![0.0; 2 * 3 * 16],
            noise_mask: Some((vec![1, 1, 2, 2], vec![0.0, 1.0, 2.0, -1.0])),
        };
        let m = expand_noise_mask(&latent).unwrap().unwrap();
        assert_eq!(m.len(), 2 * 3 * 16);
        // PyTorch bilinear 2 -> 4, row 0: [0, 0.25, 0.75, 1]; the -1/2 values are clamped after resizing.
        assert_eq!(&m[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
        for k in 1..6 {
            assert_eq!(&m[k * 16..(k + 1) * 16], &m[..16]);
        }
        assert_eq!(expand_noise_mask(&Latent::zeros([1, 4, 2, 2])).unwrap(), None);
    }
}
