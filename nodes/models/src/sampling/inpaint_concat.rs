//! The extra input of an inpainting UNet, as ComfyUI's `BaseModel.concat_cond` makes it for models with
//! `concat_keys = ("mask", "masked_image")` (`set_inpaint`, every SD UNet with in_channels > 4):
//! `comfy/model_base.py` @ Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832. Per conditioning
//! entry it is `[B, 5, h, w]`, the mask (1 channel) then the masked-image latent (4), put after the scaled
//! latent on the channel axis in `_apply_model` (`torch.cat([xc, c_concat], dim=1)`, not scaled by sigma), and
//! cropped to the entry's area like the latent (`CONDNoiseShape`).
//!
//! - the mask: the entry's `concat_mask` (InpaintModelConditioning), else the sampler's denoise mask (the latent's
//!   noise mask resized to the latent); its first channel, resized to the latent (`common_upscale`, bilinear,
//!   "center") where its size differs, rounded (halves to even), fitted to the batch (`resize_to_batch_size`);
//! - the masked image: the entry's `concat_latent_image`, else the latent being sampled (`latent_image`; ComfyUI's
//!   `process_latent_in` of either is a no-op here: sdgraph's latents are kept scaled), resized likewise where
//!   its size differs, fitted to the batch;
//! - with no mask at all: a mask of ones and `blank_inpaint_image_like`, the latent of a picture at 0 in -1..1.

use pixels::Image;

use crate::image_ops::{Method, center_crop_to_aspect, resize};

/// `blank_inpaint_image_like`'s value per latent channel: "zero" in pixel space, in SD's (scaled) latent space.
pub const BLANK_INPAINT_LATENT: [f32; 4] = [0.8223, -0.6876, 0.6364, 0.1380];

/// Channels an inpainting UNet takes besides the latent's: the mask and the masked-image latent.
pub const CONCAT_CHANNELS: usize = 1 + BLANK_INPAINT_LATENT.len();

/// Planes `[n, c, h, w]`, row-major, on the CPU.
#[derive(Debug, Clone, Copy)]
pub struct Planes<'a> {
    pub shape: [usize; 4],
    pub data: &'a [f32],
}

/// `concat_cond` for latents of `noise` shape `[B, 4, h, w]`: `mask` and `image` as the module docs say (`image`
/// is read only with a mask). `[B, 5, h, w]`.
pub fn concat_cond(noise: [usize; 4], mask: Option<Planes<'_>>, image: Planes<'_>) -> Result<Vec<f32>, String> {
    let [b, c, h, w] = noise;
    if c != BLANK_INPAINT_LATENT.len() {
        return Err(format!("an inpainting model samples 4-channel latents, not {c}"));
    }
    let plane = h * w;
    let Some(mask) = mask else {
        let mut out = Vec::with_capacity(b * CONCAT_CHANNELS * plane);
        for _ in 0..b {
            out.extend(std::iter::repeat_n(1.0, plane));
            for v in BLANK_INPAINT_LATENT {
                out.extend(std::iter::repeat_n(v, plane));
            }
        }
        return Ok(out);
    };
    check(&mask, "mask")?;
    check(&image, "masked image")?;
    if image.shape[1] != c {
        return Err(format!("the masked-image latent has {} channels, the latent {c}", image.shape[1]));
    }
    // [n, C, H, W] -> [n, 1, H, W]: the first channel of each item (ComfyUI's `denoise_mask[:, :1]`).
    let [mn, mc, mh, mw] = mask.shape;
    let first: Vec<f32> = (0..mn).flat_map(|i| &mask.data[i * mc * mh * mw..][..mh * mw]).copied().collect();
    let m = fit(&first, [mn, 1, mh, mw], h, w)?.into_iter().map(f32::round_ties_even).collect::<Vec<_>>();
    let m = resize_to_batch_size(&m, mn, b);
    let img = fit(image.data, image.shape, h, w)?;
    let img = resize_to_batch_size(&img, image.shape[0], b);
    // Per item: [1, h, w] mask then [4, h, w] image.
    let mut out = Vec::with_capacity(b * CONCAT_CHANNELS * plane);
    for i in 0..b {
        out.extend_from_slice(&m[i * plane..][..plane]);
        out.extend_from_slice(&img[i * c * plane..][..c * plane]);
    }
    Ok(out)
}

fn check(p: &Planes<'_>, what: &str) -> Result<(), String> {
    let n: usize = p.shape.iter().product();
    if n == 0 || p.data.len() != n {
        return Err(format!("the {what} is empty or has {} values for its shape {:?}", p.data.len(), p.shape));
    }
    Ok(())
}

/// `[n, c, H, W]` at `h` x `w`: as is when the size is the same, else ComfyUI's `common_upscale(.., "bilinear",
/// "center")` (each plane a one-channel picture).
fn fit(data: &[f32], [n, c, ih, iw]: [usize; 4], h: usize, w: usize) -> Result<Vec<f32>, String> {
    if (ih, iw) == (h, w) {
        return Ok(data.to_vec());
    }
    // [n, c, H, W] is n * c one-channel pictures, byte for byte.
    let img = Image { batch: n * c, height: ih, width: iw, channels: 1, data: data.to_vec() };
    Ok(resize(&center_crop_to_aspect(&img, w, h), w, h, Method::Bilinear)?.data)
}

/// ComfyUI's `utils.resize_to_batch_size` for `data` holding `n` equal items: the same when `n == batch`, the first
/// `batch` for a batch of 1 or less, else items spread evenly (down: `round(i * (n - 1) / (batch - 1))`, up:
/// `floor((i + 0.5) * n / batch)`).
pub fn resize_to_batch_size(data: &[f32], n: usize, batch: usize) -> Vec<f32> {
    if n == batch || n == 0 {
        return data.to_vec();
    }
    let item = data.len() / n;
    let pick = |i: usize| -> usize {
        let k = if batch < n {
            let scale = (n - 1) as f64 / (batch - 1) as f64;
            (i as f64 * scale).round_ties_even() as usize
        } else {
            ((i as f64 + 0.5) * (n as f64 / batch as f64)).floor() as usize
        };
        k.min(n - 1)
    };
    if batch <= 1 {
        return data[..batch * item].to_vec();
    }
    (0..batch).flat_map(|i| &data[pick(i) * item..][..item]).copied().collect()
}

/// `[n, c, h, w]` latents and `[n, k, h, w]` extra channels as one `[n, c + k, h, w]` input (`torch.cat(dim=1)`).
pub fn cat_channels(x: &[f32], concat: &[f32], n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let (a, b) = (x.len() / n, concat.len() / n);
    let mut out = Vec::with_capacity(x.len() + concat.len());
    for i in 0..n {
        out.extend_from_slice(&x[i * a..][..a]);
        out.extend_from_slice(&concat[i * b..][..b]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_mask_the_concat_is_ones_and_the_blank_latent() {
        let out = concat_cond([2, 4, 1, 2], None, Planes { shape: [2, 4, 1, 2], data: &[9.0; 16] }).unwrap();
        let item = [1.0, 1.0, 0.8223, 0.8223, -0.6876, -0.6876, 0.6364, 0.6364, 0.1380, 0.1380];
        assert_eq!(out, [item, item].concat());
    }

    #[test]
    fn the_mask_is_rounded_halves_to_even_and_the_image_follows_it() {
        let mask = [0.5, 0.51, 1.5, 0.49];
        let image: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = concat_cond(
            [1, 4, 1, 2],
            Some(Planes { shape: [1, 2, 1, 2], data: &mask }),
            Planes { shape: [1, 4, 1, 2], data: &image },
        )
        .unwrap();
        // First channel only, rounded: 0.5 -> 0, 0.51 -> 1.
        assert_eq!(&out[..2], &[0.0, 1.0]);
        assert_eq!(&out[2..], &image[..]);
    }

    #[test]
    fn batches_are_fitted_as_comfyui_resize_to_batch_size() {
        let d: Vec<f32> = (0..4).map(|v| v as f32).collect();
        assert_eq!(resize_to_batch_size(&d, 4, 2), [0.0, 3.0]);
        assert_eq!(resize_to_batch_size(&d, 4, 3), [0.0, 2.0, 3.0]); // round(1.5) = 2
        assert_eq!(resize_to_batch_size(&d[..2], 2, 4), [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(resize_to_batch_size(&d, 4, 1), [0.0]);
        assert_eq!(cat_channels(&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0], 2), [1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }
}
