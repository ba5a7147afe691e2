//! VAEEncodeForInpaint's pixel and mask preparation, as ComfyUI's `nodes.py` (Comfy-Org/ComfyUI @
//! 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e) does it before encoding:
//!
//! 1. the mask, `[B, 1, h, w]`, resized to the picture (bilinear `interpolate`, no antialiasing);
//! 2. picture and mask cropped to a multiple of the VAE's factor, centred (`(H % f) // 2` rows off the top);
//! 3. the noise mask: `round(mask)` summed over a `grow_mask_by` x `grow_mask_by` window (`conv2d` with a
//!    kernel of ones, padding `ceil((grow_mask_by - 1) / 2)`, so with an even window a masked pixel grows one
//!    pixel further down and right than up and left), clamped to 0..1, cut to the picture and rounded: a dilation of
//!    the rounded mask for 0/1 masks; `grow_mask_by` 0 is `round(mask)`;
//! 4. the first three channels of the picture set to 0.5 where `round(mask)` is 1:
//!    `(p - 0.5) * (1 - round(mask)) + 0.5`, in f32, in that order.
//!
//! `round` is PyTorch's, halves to even.

use pixels::{Image, Mask};

use super::resample::{Method, check_image, crop_rect, resize_mask};

/// What VAEEncodeForInpaint encodes and the noise mask it puts on the latent.
#[derive(Debug, Clone, PartialEq)]
pub struct InpaintInput {
    /// The picture cropped to a multiple of the factor, grey where the mask is.
    pub pixels: Image,
    /// One mask per mask given (1 or one per picture), at the cropped picture's size, all 0 or 1.
    pub noise_mask: Mask,
}

/// Steps 1 to 4 above for `pixels` and `mask` and a VAE with downsampling `factor`.
pub fn prepare_inpaint(
    pixels: &Image,
    mask: &Mask,
    factor: usize,
    grow_mask_by: usize,
) -> Result<InpaintInput, String> {
    let (mut px, cropped) = resize_and_crop(pixels, mask, factor)?;
    let rounded: Vec<f32> = cropped.iter().map(|v| v.round_ties_even()).collect();
    let (h, w) = (px.height, px.width);
    // 3. The grown noise mask.
    let plane = h * w;
    let mut noise = Vec::with_capacity(rounded.len());
    for m in rounded.chunks_exact(plane) {
        if grow_mask_by == 0 {
            noise.extend_from_slice(m);
        } else {
            noise.extend(grow(m, h, w, grow_mask_by).into_iter().map(|v| v.round_ties_even()));
        }
    }
    grey(&mut px, &rounded, mask.batch);
    Ok(InpaintInput { pixels: px, noise_mask: Mask { batch: mask.batch, height: h, width: w, data: noise } })
}

/// What InpaintModelConditioning encodes as the masked image, and its mask.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditioningInput {
    /// The picture cropped to a multiple of 8, grey where `round(mask)` is 1.
    pub pixels: Image,
    /// The mask resized to the picture and cropped alike, not rounded (ComfyUI's `concat_mask` and noise mask).
    pub mask: Mask,
}

/// InpaintModelConditioning's preparation (`nodes.py` @ Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832):
/// steps 1, 2 and 4 above with ComfyUI's fixed factor 8 (not the VAE's), the mask kept as resized.
pub fn prepare_inpaint_conditioning(pixels: &Image, mask: &Mask) -> Result<ConditioningInput, String> {
    let (mut px, cropped) = resize_and_crop(pixels, mask, 8)?;
    let rounded: Vec<f32> = cropped.iter().map(|v| v.round_ties_even()).collect();
    grey(&mut px, &rounded, mask.batch);
    let (height, width) = (px.height, px.width);
    Ok(ConditioningInput { pixels: px, mask: Mask { batch: mask.batch, height, width, data: cropped } })
}

/// Checks, then steps 1 and 2: the picture and the mask (resized to the picture) cropped to a multiple of `factor`.
fn resize_and_crop(pixels: &Image, mask: &Mask, factor: usize) -> Result<(Image, Vec<f32>), String> {
    check_image(pixels).map_err(|e| format!("input \"pixels\": {e}"))?;
    if mask.batch == 0 || mask.height == 0 || mask.width == 0 {
        return Err(format!("input \"mask\" is empty ({} masks of {}x{})", mask.batch, mask.width, mask.height));
    }
    if mask.data.len() != mask.batch * mask.height * mask.width {
        return Err(format!("input \"mask\" has {} values but its shape {mask:?} needs more", mask.data.len()));
    }
    if pixels.channels < 3 {
        return Err(format!(
            "input \"pixels\" has {} channels; the masked part of the first three (RGB) is greyed",
            pixels.channels
        ));
    }
    if mask.batch != 1 && mask.batch != pixels.batch {
        return Err(format!(
            "input \"mask\" has {} masks for {} pictures: give one mask for all of them or one per picture",
            mask.batch, pixels.batch
        ));
    }
    let f = factor.max(1);
    let (h, w) = (pixels.height / f * f, pixels.width / f * f);
    if h == 0 || w == 0 {
        return Err(format!(
            "input \"pixels\" is {}x{}, smaller than the VAE's {f} pixels per latent pixel",
            pixels.width, pixels.height
        ));
    }
    // 1. The mask at the picture's full size.
    let full =
        resize_mask(mask, pixels.width, pixels.height, Method::Bilinear).map_err(|e| format!("input \"mask\": {e}"))?;
    // 2. Both cropped alike.
    let (y0, x0) = ((pixels.height % f) / 2, (pixels.width % f) / 2);
    let px = crop_rect(pixels, x0, y0, w, h);
    let as_image = Image { batch: full.batch, height: full.height, width: full.width, channels: 1, data: full.data };
    Ok((px, crop_rect(&as_image, x0, y0, w, h).data))
}

/// 4. The first three channels of `px` set to 0.5 where `rounded` (one plane, or one per picture) is 1.
fn grey(px: &mut Image, rounded: &[f32], mask_batch: usize) {
    let (c, plane) = (px.channels, px.height * px.width);
    for b in 0..px.batch {
        let m = &rounded[if mask_batch == 1 { 0 } else { b * plane }..][..plane];
        for (pixel, &mv) in px.data[b * plane * c..(b + 1) * plane * c].chunks_exact_mut(c).zip(m) {
            let keep = 1.0 - mv;
            for v in &mut pixel[..3] {
                *v = (*v - 0.5) * keep + 0.5;
            }
        }
    }
}

/// `clamp(conv2d(m, ones(k, k), padding = ceil((k - 1) / 2))[:h, :w], 0, 1)` for one `h` x `w` plane: output
/// `(y, x)` sums rows `y - p .. y - p + k` and columns `x - p .. x - p + k` inside the plane. Separable
/// sums in f64 (exact for integer-valued masks).
pub fn grow(m: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
    let p = k / 2; // ceil((k - 1) / 2) for k >= 1
    let window = |o: usize, n: usize| (o.saturating_sub(p), (o + k).saturating_sub(p).min(n));
    let mut rows = vec![0.0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = window(x, w);
            rows[y * w + x] = m[y * w + a..y * w + b].iter().map(|&v| v as f64).sum();
        }
    }
    let mut out = vec![0.0f32; h * w];
    for y in 0..h {
        let (a, b) = window(y, h);
        for x in 0..w {
            let s: f64 = (a..b).map(|r| rows[r * w + x]).sum();
            out[y * w + x] = (s as f32).clamp(0.0, 1.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ComfyUI's conv2d, written from its definition in f64: padded input, kernel of ones, output size
    /// `n + 2p - k + 1`, then `[:h, :w]`, clamp and round.
    fn grow_reference(m: &[f64], h: usize, w: usize, k: usize) -> Vec<f64> {
        let p = ((k as f64 - 1.0) / 2.0).ceil() as i64;
        let (oh, ow) = (h as i64 + 2 * p - k as i64 + 1, w as i64 + 2 * p - k as i64 + 1);
        assert!(oh >= h as i64 && ow >= w as i64);
        let mut out = vec![0.0; h * w];
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                let mut s = 0.0;
                for dy in 0..k as i64 {
                    for dx in 0..k as i64 {
                        let (iy, ix) = (y + dy - p, x + dx - p);
                        if (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix) {
                            s += m[(iy * w as i64 + ix) as usize].round_ties_even();
                        }
                    }
                }
                out[(y * w as i64 + x) as usize] = s.clamp(0.0, 1.0).round_ties_even();
            }
        }
        out
    }

    #[test]
    fn growing_matches_the_convolution_for_odd_and_even_windows() {
        // One masked pixel at (3, 4) of 7x9: a window of 3 grows it to rows 2..=4, columns 3..=5; a window of 4
        // (padding 2: output o sums inputs o - 2..=o + 1) to rows 2..=5 and columns 3..=6, one further down and
        // right than up and left.
        let (h, w) = (7, 9);
        let mut m = vec![0.0f32; h * w];
        m[3 * w + 4] = 1.0;
        let rect = |g: &[f32]| {
            let on: Vec<(usize, usize)> = (0..h * w).filter(|&i| g[i] == 1.0).map(|i| (i / w, i % w)).collect();
            let (ys, xs): (Vec<_>, Vec<_>) = on.iter().copied().unzip();
            (
                on.len(),
                *ys.iter().min().unwrap(),
                *ys.iter().max().unwrap(),
                *xs.iter().min().unwrap(),
                *xs.iter().max().unwrap(),
            )
        };
        assert_eq!(rect(&grow(&m, h, w, 1)), (1, 3, 3, 4, 4));
        assert_eq!(rect(&grow(&m, h, w, 3)), (9, 2, 4, 3, 5));
        assert_eq!(rect(&grow(&m, h, w, 4)), (16, 2, 5, 3, 6));
        assert_eq!(rect(&grow(&m, h, w, 6)), (36, 1, 6, 2, 7)); // padding 3: rows 1..=6, columns 2..=7
        // Random masks with values around 0.5 (rounding both ways) against the f64 convolution.
        let vals = gpu::testing::random(h * w, 11, -0.3, 1.3);
        let vals: Vec<f32> = vals.iter().map(|v| (v * 4.0).round() / 4.0).collect(); // exact halves too
        let rounded: Vec<f32> = vals.iter().map(|v| v.round_ties_even()).collect();
        for k in 1..=10 {
            let want = grow_reference(&vals.iter().map(|&v| v as f64).collect::<Vec<_>>(), h, w, k);
            let got = grow(&rounded, h, w, k);
            assert_eq!(got, want.iter().map(|&v| v as f32).collect::<Vec<_>>(), "window {k}");
        }
    }

    #[test]
    fn inpaint_input_crops_greys_and_grows_as_comfyui() {
        // 2 pictures of 11x10 (w x h), factor 4: cropped to 8x8 from row 1, column 1.
        let (bh, bw) = (10, 11);
        let px: Vec<f32> = gpu::testing::random(2 * bh * bw * 3, 3, 0.0, 1.0);
        let pixels = Image::from_data(2, bh, bw, 3, px).unwrap();
        // One mask at the same size: 1 on pixel (4, 5) only (cropped: (3, 4)), 0.5 on (8, 8) (rounds to 0).
        let mut md = vec![0.0f32; bh * bw];
        md[4 * bw + 5] = 1.0;
        md[8 * bw + 8] = 0.5;
        let mask = Mask { batch: 1, height: bh, width: bw, data: md };
        let out = prepare_inpaint(&pixels, &mask, 4, 3).unwrap();
        assert_eq!((out.pixels.batch, out.pixels.height, out.pixels.width), (2, 8, 8));
        assert_eq!((out.noise_mask.batch, out.noise_mask.height, out.noise_mask.width), (1, 8, 8));
        for b in 0..2 {
            for y in 0..8 {
                for x in 0..8 {
                    for c in 0..3 {
                        let v = pixels.get(b, y + 1, x + 1, c) as f64;
                        let want = if (y, x) == (3, 4) { 0.5 } else { v };
                        assert!((out.pixels.get(b, y, x, c) as f64 - want).abs() < 1e-7, "({b}, {y}, {x}, {c})");
                    }
                }
            }
        }
        let ones: Vec<usize> = (0..64).filter(|&i| out.noise_mask.data[i] == 1.0).collect();
        let want: Vec<usize> = (2..=4).flat_map(|y| (3..=5).map(move |x| y * 8 + x)).collect();
        assert_eq!(ones, want);
        assert!(out.noise_mask.data.iter().all(|&v| v == 0.0 || v == 1.0));
        // grow_mask_by 0: the rounded mask itself.
        let out0 = prepare_inpaint(&pixels, &mask, 4, 0).unwrap();
        let ones0: Vec<usize> = (0..64).filter(|&i| out0.noise_mask.data[i] == 1.0).collect();
        assert_eq!(ones0, [3 * 8 + 4]);

        // A smaller mask is resized bilinearly to the full picture first: a 2x2 mask [1, 0; 0, 0] on 4x4 pixels
        // gives 1, 0.75, 0.25, 0 along the first row (bilinear, half-pixel centres), which round to 1, 1, 0, 0.
        let pic = Image::from_data(1, 4, 4, 3, vec![0.2; 48]).unwrap();
        let small = Mask { batch: 1, height: 2, width: 2, data: vec![1.0, 0.0, 0.0, 0.0] };
        let out = prepare_inpaint(&pic, &small, 4, 0).unwrap();
        assert_eq!(
            out.noise_mask.data,
            [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(out.pixels.get(0, 1, 1, 2), 0.5);
        assert_eq!(out.pixels.get(0, 2, 2, 0), (0.2f32 - 0.5) * 1.0 + 0.5);
    }

    #[test]
    fn inpaint_refuses_what_comfyui_cannot_broadcast() {
        let pic = Image::from_data(2, 8, 8, 3, vec![0.2; 384]).unwrap();
        let e = prepare_inpaint(&pic, &Mask::zeros(3, 8, 8), 8, 6).unwrap_err();
        assert!(e.contains("\"mask\"") && e.contains("3 masks for 2 pictures"), "{e}");
        let e = prepare_inpaint(&pic, &Mask::zeros(1, 0, 8), 8, 6).unwrap_err();
        assert!(e.contains("\"mask\" is empty"), "{e}");
        let grey = Image::from_data(1, 8, 8, 1, vec![0.2; 64]).unwrap();
        let e = prepare_inpaint(&grey, &Mask::zeros(1, 8, 8), 8, 6).unwrap_err();
        assert!(e.contains("\"pixels\" has 1 channels"), "{e}");
        let e = prepare_inpaint(&Image::zeros(1, 7, 20, 3), &Mask::zeros(1, 8, 8), 8, 6).unwrap_err();
        assert!(e.contains("\"pixels\" is 20x7"), "{e}");
        // One mask per picture is fine, and each greys its own picture.
        let mut md = vec![0.0; 128];
        md[64] = 1.0;
        let out = prepare_inpaint(&pic, &Mask { batch: 2, height: 8, width: 8, data: md }, 8, 0).unwrap();
        assert_eq!((out.pixels.get(0, 0, 0, 0), out.pixels.get(1, 0, 0, 0)), ((0.2f32 - 0.5) * 1.0 + 0.5, 0.5));
    }
}
