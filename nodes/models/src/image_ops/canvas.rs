//! New canvases and batches as ComfyUI's `nodes.py` makes them (Comfy-Org/ComfyUI @
//! 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e): ImagePadForOutpaint's grey border and
//! feathered mask, EmptyImage's solid colour, ImageBatch's concatenation.

use pixels::{Image, Mask};

use super::resample::{Method, center_crop_to_aspect, check_image, resize};

/// Which sides of a picture were padded, as ImagePadForOutpaint's feathering sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sides {
    pub left: bool,
    pub top: bool,
    pub right: bool,
    pub bottom: bool,
}

/// ImagePadForOutpaint's mask over the original `height` x `width` picture (1 = sample, 0 = keep), as
/// ComfyUI computes it: all 0 unless `feathering > 0` and `2 * feathering` is less than both sides; then
/// pixel `(i, j)` has `d = min(dt, db, dl, dr)` with `dt = i`, `db = height - i`, `dl = j`, `dr = width - j`
/// for padded sides (the side's length for the others), and `((feathering - d) / feathering)^2` (in f64,
/// stored as f32) where `d < feathering`. The ramp is ComfyUI's, asymmetric: the first row of a padded top is
/// 1, the last row of a padded bottom `((f - 1) / f)^2`.
pub fn outpaint_feather(height: usize, width: usize, sides: Sides, feathering: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; height * width];
    let fits = |side: usize| feathering.checked_mul(2).is_some_and(|f2| f2 < side);
    if feathering == 0 || !fits(height) || !fits(width) {
        return t;
    }
    for i in 0..height {
        for j in 0..width {
            let dt = if sides.top { i } else { height };
            let db = if sides.bottom { height - i } else { height };
            let dl = if sides.left { j } else { width };
            let dr = if sides.right { width - j } else { width };
            let d = dt.min(db).min(dl).min(dr);
            if d >= feathering {
                continue;
            }
            let v = (feathering - d) as f64 / feathering as f64;
            t[i * width + j] = (v * v) as f32;
        }
    }
    t
}

/// ImagePadForOutpaint: every image placed on a canvas `left + width + right` x `top + height + bottom`
/// of 0.5 grey (all channels), and one mask for the batch: 1 on the border, [`outpaint_feather`] over the
/// picture.
pub fn pad_for_outpaint(
    img: &Image,
    [left, top, right, bottom]: [usize; 4],
    feathering: usize,
) -> Result<(Image, Mask), String> {
    check_image(img)?;
    let too_big = || format!("padding {}x{} by {left}, {top}, {right}, {bottom} overflows", img.width, img.height);
    let nw = img.width.checked_add(left).and_then(|w| w.checked_add(right)).ok_or_else(too_big)?;
    let nh = img.height.checked_add(top).and_then(|h| h.checked_add(bottom)).ok_or_else(too_big)?;
    let c = img.channels;
    let len = img.batch.checked_mul(nh).and_then(|n| n.checked_mul(nw)).and_then(|n| n.checked_mul(c));
    let mut data = vec![0.5f32; len.ok_or_else(too_big)?];
    let row = img.width * c;
    for b in 0..img.batch {
        for y in 0..img.height {
            let at = ((b * nh + top + y) * nw + left) * c;
            let from = (b * img.height + y) * row;
            data[at..at + row].copy_from_slice(&img.data[from..from + row]);
        }
    }
    let mut mask = vec![1.0f32; nh * nw];
    let sides = Sides { left: left != 0, top: top != 0, right: right != 0, bottom: bottom != 0 };
    let t = outpaint_feather(img.height, img.width, sides, feathering);
    for y in 0..img.height {
        let at = (top + y) * nw + left;
        mask[at..at + img.width].copy_from_slice(&t[y * img.width..(y + 1) * img.width]);
    }
    let image = Image { batch: img.batch, height: nh, width: nw, channels: c, data };
    Ok((image, Mask { batch: 1, height: nh, width: nw, data: mask }))
}

/// EmptyImage: `batch` RGB pictures of one colour, `0xRRGGBB`, each channel `byte / 255` (in f64, stored as
/// f32, as `torch.full`).
pub fn solid(batch: usize, height: usize, width: usize, color: u32) -> Image {
    let ch = |shift: u32| (((color >> shift) & 0xFF) as f64 / 255.0) as f32;
    let px = [ch(16), ch(8), ch(0)];
    let data = px.iter().copied().cycle().take(batch * height * width * 3).collect();
    Image { batch, height, width, channels: 3, data }
}

/// ImageBatch: image2's pictures after image1's. As ComfyUI: where the channel counts differ the one with
/// fewer gains one channel of 1.0 (RGB -> RGBA), and an image2 of another size is resized to image1's
/// (`common_upscale` bilinear with the centre crop). Channel counts that still differ are an error.
pub fn batch_images(image1: &Image, image2: &Image) -> Result<Image, String> {
    check_image(image1).map_err(|e| format!("image1: {e}"))?;
    check_image(image2).map_err(|e| format!("image2: {e}"))?;
    let (mut a, mut b) = (image1.clone(), image2.clone());
    if a.channels > b.channels {
        b = add_opaque_channel(&b);
    } else if b.channels > a.channels {
        a = add_opaque_channel(&a);
    }
    if a.channels != b.channels {
        return Err(format!(
            "image1 has {} channels and image2 has {}: one extra channel (alpha) can be added, not more",
            image1.channels, image2.channels
        ));
    }
    if (b.height, b.width) != (a.height, a.width) {
        let cropped = center_crop_to_aspect(&b, a.width, a.height);
        b = resize(&cropped, a.width, a.height, Method::Bilinear)
            .map_err(|e| format!("resizing image2 to image1's {}x{}: {e}", a.width, a.height))?;
    }
    a.data.extend_from_slice(&b.data);
    a.batch += b.batch;
    Ok(a)
}

/// `F.pad(image, (0, 1), value=1.0)`: one more channel, all 1.
fn add_opaque_channel(img: &Image) -> Image {
    let c = img.channels;
    let mut data = Vec::with_capacity(img.data.len() / c.max(1) * (c + 1));
    if c == 0 {
        data.resize(img.batch * img.height * img.width, 1.0);
    } else {
        for px in img.data.chunks_exact(c) {
            data.extend_from_slice(px);
            data.push(1.0);
        }
    }
    Image { batch: img.batch, height: img.height, width: img.width, channels: c + 1, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ComfyUI's loop, in f64, written from its source: the reference the f32 mask must round from.
    fn feather_reference(h: usize, w: usize, s: Sides, f: usize) -> Vec<f64> {
        let mut t = vec![0.0; h * w];
        if f > 0 && f * 2 < h && f * 2 < w {
            for i in 0..h {
                for j in 0..w {
                    let dt = if s.top { i as f64 } else { h as f64 };
                    let db = if s.bottom { (h - i) as f64 } else { h as f64 };
                    let dl = if s.left { j as f64 } else { w as f64 };
                    let dr = if s.right { (w - j) as f64 } else { w as f64 };
                    let d = dt.min(db).min(dl).min(dr);
                    if d < f as f64 {
                        let v = (f as f64 - d) / f as f64;
                        t[i * w + j] = v * v;
                    }
                }
            }
        }
        t
    }

    #[test]
    fn outpaint_feathering_follows_comfyuis_ramp() {
        let all = Sides { left: true, top: true, right: true, bottom: true };
        // 3 pixels of feathering on a 7x9 picture padded on every side: rows 0, 1, 2 from the top are
        // (3/3)^2, (2/3)^2, (1/3)^2; from the bottom row 6 is (2/3)^2 (db = 1), row 5 (1/3)^2, row 4 0.
        let t = outpaint_feather(7, 9, all, 3);
        let col = 4; // the middle column: only rows matter.
        let want = [1.0, 4.0 / 9.0, 1.0 / 9.0, 0.0, 0.0, 1.0 / 9.0, 4.0 / 9.0];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(t[i * 9 + col], *w as f32, "row {i}");
        }
        for (sides, h, w, f) in [
            (all, 7, 9, 3),
            (Sides { left: true, ..Sides::default() }, 12, 11, 5),
            (Sides { right: true, bottom: true, ..Sides::default() }, 12, 10, 4),
            (Sides { top: true, right: true, ..Sides::default() }, 9, 9, 1),
            (Sides::default(), 9, 9, 3),
        ] {
            let got = outpaint_feather(h, w, sides, f);
            let want = feather_reference(h, w, sides, f);
            for (k, (g, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(*g, *r as f32, "{sides:?} {h}x{w} f {f} at {k}");
            }
            assert!(got.iter().any(|&v| v > 0.0) == (sides != Sides::default()), "{sides:?}");
        }
        // Feathering not less than half a side: no ramp at all (ComfyUI's condition).
        assert!(outpaint_feather(8, 20, all, 4).iter().all(|&v| v == 0.0));
        assert!(outpaint_feather(9, 20, all, 4).iter().any(|&v| v > 0.0));
        assert!(outpaint_feather(20, 8, all, 4).iter().all(|&v| v == 0.0));
        assert!(outpaint_feather(20, 20, all, usize::MAX).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn padding_places_the_picture_on_grey_with_a_border_mask() {
        // 2 RGB pictures of 3x2 (w x h): values 1 + index.
        let img = Image::from_data(2, 2, 3, 3, (0..36).map(|v| v as f32 + 1.0).collect()).unwrap();
        let (out, mask) = pad_for_outpaint(&img, [1, 2, 0, 1], 0).unwrap();
        assert_eq!((out.batch, out.height, out.width, out.channels), (2, 5, 4, 3));
        assert_eq!((mask.batch, mask.height, mask.width), (1, 5, 4));
        for b in 0..2 {
            for y in 0..5 {
                for x in 0..4 {
                    let inside = (2..4).contains(&y) && (1..4).contains(&x);
                    for c in 0..3 {
                        let want = if inside { img.get(b, y - 2, x - 1, c) } else { 0.5 };
                        assert_eq!(out.get(b, y, x, c), want, "({b}, {y}, {x}, {c})");
                    }
                    assert_eq!(mask.data[y * 4 + x], if inside { 0.0 } else { 1.0 }, "mask ({y}, {x})");
                }
            }
        }
        // With feathering the picture's part of the mask is the ramp.
        let img = Image::zeros(1, 10, 12, 3);
        let (_, mask) = pad_for_outpaint(&img, [8, 0, 0, 16], 4).unwrap();
        assert_eq!((mask.height, mask.width), (26, 20));
        let ramp = outpaint_feather(10, 12, Sides { left: true, bottom: true, ..Sides::default() }, 4);
        for y in 0..10 {
            assert_eq!(&mask.data[y * 20 + 8..y * 20 + 20], &ramp[y * 12..(y + 1) * 12], "row {y}");
        }
        assert!(mask.data[10 * 20..].iter().all(|&v| v == 1.0));
    }

    #[test]
    fn solid_colour_is_each_byte_over_255() {
        let img = solid(2, 1, 3, 0x12_80_FF);
        assert_eq!((img.batch, img.height, img.width, img.channels), (2, 1, 3, 3));
        let want = [(0x12 as f64 / 255.0) as f32, (128.0f64 / 255.0) as f32, 1.0];
        for px in img.data.chunks_exact(3) {
            assert_eq!(px, want);
        }
    }

    #[test]
    fn batching_adds_alpha_and_resizes_image2_with_the_centre_crop() {
        let a = Image::from_data(1, 2, 4, 3, (0..24).map(|v| v as f32 / 24.0).collect()).unwrap();
        let same = Image::from_data(2, 2, 4, 3, (0..48).map(|v| v as f32 / 48.0).collect()).unwrap();
        let out = batch_images(&a, &same).unwrap();
        assert_eq!((out.batch, out.height, out.width, out.channels), (3, 2, 4, 3));
        assert_eq!(&out.data[..24], &a.data[..]);
        assert_eq!(&out.data[24..], &same.data[..]);
        // RGBA image2: image1 gains an alpha of 1.
        let rgba = Image::from_data(1, 2, 4, 4, vec![0.25; 32]).unwrap();
        let out = batch_images(&a, &rgba).unwrap();
        assert_eq!(out.channels, 4);
        assert_eq!(out.item(0).chunks_exact(4).next().unwrap(), [0.0, 1.0 / 24.0, 2.0 / 24.0, 1.0]);
        assert!(out.item(1).iter().all(|&v| v == 0.25));
        // Another size: centre crop to 4:2, then bilinear. 6x6 -> rows 2..4 (round(1.5) = 2 cut) -> 4x2.
        let big = Image::from_data(1, 6, 6, 3, (0..108).map(|v| v as f32).collect()).unwrap();
        let out = batch_images(&a, &big).unwrap();
        let want = resize(&center_crop_to_aspect(&big, 4, 2), 4, 2, Method::Bilinear).unwrap();
        assert_eq!(center_crop_to_aspect(&big, 4, 2).height, 2, "the crop keeps the middle rows");
        assert_eq!(out.item(1), &want.data[..]);
        // Grey and RGB differ by two channels: refused, naming both.
        let grey = Image::from_data(1, 2, 4, 1, vec![0.5; 8]).unwrap();
        let e = batch_images(&a, &grey).unwrap_err();
        assert!(e.contains("image1 has 3 channels and image2 has 1"), "{e}");
    }
}
