//! Pictures (`[B, H, W, C]`, channel innermost) as the networks' channel
//! planes (`[C, H, W]`): what the VAE encoder, ControlNet hints and the
//! upscalers take, and the VAE's signed planes back as pixels.

use pixels::Image;

/// A window of image `b` of `img` — `h x w` pixels from row `y0`, column
/// `x0` — as `[cin, h, w]` planes of the same values (0..1): a missing
/// channel repeats the last one (grey to RGB), alpha is dropped, and RGB is
/// averaged for a one-channel network. The window must lie inside the image.
pub fn item_planes(img: &Image, b: usize, (y0, x0, h, w): (usize, usize, usize, usize), cin: usize) -> Vec<f32> {
    let (width, c) = (img.width, img.channels);
    let item = img.item(b);
    let mut chw = vec![0.0f32; cin * h * w];
    for y in 0..h {
        for x in 0..w {
            let at = ((y + y0) * width + x + x0) * c;
            let px = &item[at..at + c];
            for ch in 0..cin {
                chw[(ch * h + y) * w + x] =
                    if cin == 1 && c >= 3 { (px[0] + px[1] + px[2]) / 3.0 } else { px[ch.min(c - 1)] };
            }
        }
    }
    chw
}

/// Item `b` of `img`, centre-cropped to `h x w`, as `[3, h, w]` in -1..1,
/// as the VAE encoder takes it (grey replaces a missing channel; alpha is
/// dropped).
pub fn vae_input(img: &Image, b: usize, h: usize, w: usize) -> Vec<f32> {
    let (y0, x0) = ((img.height - h) / 2, (img.width - w) / 2);
    let mut chw = item_planes(img, b, (y0, x0, h, w), 3);
    for v in &mut chw {
        *v = *v * 2.0 - 1.0;
    }
    chw
}

/// Appends the VAE decoder's `[C, h, w]` output (about -1..1) to `data` as
/// `[h, w, 3]` pixels in 0..1 (ComfyUI's `clamp((x + 1) / 2, 0, 1)`; one
/// channel is repeated).
pub fn push_vae_output(data: &mut Vec<f32>, chw: &[f32], channels: usize, h: usize, w: usize) {
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                let v = chw[(ch.min(channels - 1) * h + y) * w + x];
                data.push(((v + 1.0) / 2.0).clamp(0.0, 1.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_planes_crops_converts_channels_and_picks_the_item() {
        // 2 items of 2x3 RGBA; item 1's pixel (y, x) = (y * 3 + x) / 10 in R, 0.5 in G, 1 - R in B.
        let mut data = vec![0.0; 2 * 2 * 3 * 4];
        for y in 0..2 {
            for x in 0..3 {
                let v = (y * 3 + x) as f32 / 10.0;
                let at = ((2 + y) * 3 + x) * 4;
                data[at..at + 4].copy_from_slice(&[v, 0.5, 1.0 - v, 0.25]);
            }
        }
        let img = Image::from_data(2, 2, 3, 4, data).unwrap();
        // Window 1x2 from (1, 1): pixels (1,1) and (1,2).
        let rgb = item_planes(&img, 1, (1, 1, 1, 2), 3);
        assert_eq!(rgb, [0.4, 0.5, 0.5, 0.5, 0.6, 0.5]);
        let grey = item_planes(&img, 1, (1, 1, 1, 2), 1);
        assert_eq!(grey, [(0.4 + 0.5 + 0.6) / 3.0, (0.5 + 0.5 + 0.5) / 3.0]);
        // One channel in, three out: repeated.
        let g = Image::from_data(1, 1, 2, 1, vec![0.2, 0.7]).unwrap();
        assert_eq!(item_planes(&g, 0, (0, 0, 1, 2), 3), [0.2, 0.7, 0.2, 0.7, 0.2, 0.7]);
    }

    #[test]
    fn vae_planes_are_signed_and_come_back_as_clamped_pixels() {
        // 1 item, 3x4 grey, centre-cropped to 1x2: pixels (1, 1) and (1, 2).
        let img = Image::from_data(1, 3, 4, 1, (0..12).map(|v| v as f32 / 11.0).collect()).unwrap();
        let chw = vae_input(&img, 0, 1, 2);
        let want = [5.0 / 11.0 * 2.0 - 1.0, 6.0 / 11.0 * 2.0 - 1.0];
        assert_eq!(chw, [want, want, want].concat());
        let mut out = vec![];
        push_vae_output(&mut out, &[-2.0, 0.5], 1, 1, 2);
        assert_eq!(out, [0.0, 0.0, 0.0, 0.75, 0.75, 0.75]);
    }
}
