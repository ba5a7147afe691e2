//! Inpainting noise masks as ComfyUI's KSampler uses them (`comfy/sampler_helpers.py` @
//! 53757775fa600326922e53e61dcb5ef54e9abbe1 `prepare_mask`, which calls `comfy.utils.reshape_mask`:
//! bilinear `interpolate` to the latent size, repeated over channels and batch), with checks that turn
//! ComfyUI's silent surprises into errors: one mask for the whole batch or one per latent (ComfyUI tiles
//! or truncates any count), about the latent's aspect ratio (ComfyUI stretches any mask), finite values
//! (clamped to 0..=1 when expanded; ComfyUI uses them as they are).

use pixels::Mask;

use crate::image_ops::{Method, resize_mask};

/// Picture pixels per latent pixel of SD's VAE, for messages that speak of the picture.
const PIXELS_PER_LATENT: usize = 8;

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
            lw * PIXELS_PER_LATENT,
            lh * PIXELS_PER_LATENT
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(format!("the noise mask holds a non-finite value ({}) at index {i}", data[i]));
    }
    Ok(NoiseMaskView { batch: mb, height: mh, width: mw, data })
}

/// The latent's noise mask as ComfyUI's `prepare_mask` makes it: each mask resized to the latent's size (bilinear,
/// PyTorch's `interpolate` without antialiasing), repeated over the channels and the batch, here also clamped to
/// 0..=1: `[B, C, h, w]` for latents of `shape`.
pub fn expand_noise_mask(mask_shape: &[usize], data: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, String> {
    let view = check_noise_mask(mask_shape, data, shape)?;
    let [b, c, h, w] = shape;
    let mask = Mask { batch: view.batch, height: view.height, width: view.width, data: view.data.to_vec() };
    // Resizing to the same size is an exact copy (the resampler skips unchanged axes).
    let resized = resize_mask(&mask, w, h, Method::Bilinear)?;
    let plane = h * w;
    let mut out = Vec::with_capacity(b * c * plane);
    for i in 0..b {
        let m = &resized.data[(i % view.batch) * plane..][..plane];
        for _ in 0..c {
            out.extend(m.iter().map(|v| v.clamp(0.0, 1.0)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let m = expand_noise_mask(&[1, 1, 2, 2], &[0.0, 1.0, 2.0, -1.0], [2, 3, 4, 4]).unwrap();
        assert_eq!(m.len(), 2 * 3 * 16);
        // PyTorch bilinear 2 -> 4, row 0: [0, 0.25, 0.75, 1]; the -1/2 values are clamped after resizing.
        assert_eq!(&m[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
        for k in 1..6 {
            assert_eq!(&m[k * 16..(k + 1) * 16], &m[..16]);
        }
    }
}
