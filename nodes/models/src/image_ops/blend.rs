//! ImageBlend, ImageInvert and ImageCrop as ComfyUI computes them
//! (`comfy_extras/nodes_post_processing.py` Blend, `nodes.py` ImageInvert and
//! ImageCrop), on `[B, H, W, C]` f32 images.

use pixels::Image;

use super::resample::{Method, center_crop_to_aspect, check_image, crop_rect, resize};

/// How ImageBlend combines image1 (base) with image2, named as ComfyUI's `blend_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlendMode {
    Normal,
    Multiply,
    Screen,
    Overlay,
    SoftLight,
    Difference,
}

impl BlendMode {
    /// ComfyUI's `blend_mode` choices, in its order.
    pub const NAMES: [&'static str; 6] = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"];

    pub fn from_name(name: &str) -> Option<BlendMode> {
        match name {
            "normal" => Some(BlendMode::Normal),
            "multiply" => Some(BlendMode::Multiply),
            "screen" => Some(BlendMode::Screen),
            "overlay" => Some(BlendMode::Overlay),
            "soft_light" => Some(BlendMode::SoftLight),
            "difference" => Some(BlendMode::Difference),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlendMode::Normal => "normal",
            BlendMode::Multiply => "multiply",
            BlendMode::Screen => "screen",
            BlendMode::Overlay => "overlay",
            BlendMode::SoftLight => "soft_light",
            BlendMode::Difference => "difference",
        }
    }

    /// The blended value of base `a` and blend `b`, before mixing by the factor.
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BlendMode::Normal => b,
            BlendMode::Multiply => a * b,
            BlendMode::Screen => 1.0 - (1.0 - a) * (1.0 - b),
            BlendMode::Overlay => {
                if a <= 0.5 {
                    2.0 * a * b
                } else {
                    1.0 - 2.0 * (1.0 - a) * (1.0 - b)
                }
            }
            BlendMode::SoftLight => {
                if b <= 0.5 {
                    a - (1.0 - 2.0 * b) * a * (1.0 - a)
                } else {
                    a + (2.0 * b - 1.0) * (soft_light_g(a) - a)
                }
            }
            BlendMode::Difference => a - b,
        }
    }
}

/// ComfyUI's soft-light helper `g`: a cubic below 0.25, sqrt above.
fn soft_light_g(x: f32) -> f32 {
    if x <= 0.25 { ((16.0 * x - 12.0) * x + 4.0) * x } else { x.sqrt() }
}

/// Blends `image2` over `image1`: `image1 * (1 - f) + mode(image1, image2) * f`,
/// clamped to 0..=1. An image2 of another size is first resized to image1's
/// (bicubic, center crop) as ComfyUI does; a batch of 1 on either side is
/// broadcast over the other's batch.
pub fn blend(image1: &Image, image2: &Image, blend_factor: f32, mode: BlendMode) -> Result<Image, String> {
    check_image(image1).map_err(|e| format!("image1: {e}"))?;
    check_image(image2).map_err(|e| format!("image2: {e}"))?;
    if image1.channels != image2.channels {
        return Err(format!(
            "image1 has {} channels and image2 has {}; they must match",
            image1.channels, image2.channels
        ));
    }
    let batch = match (image1.batch, image2.batch) {
        (a, b) if a == b => a,
        (1, b) => b,
        (a, 1) => a,
        (a, b) => {
            return Err(format!("image1 has batch size {a} and image2 has {b}; they must match or one must be 1"));
        }
    };

    let (w, h) = (image1.width, image1.height);
    let resized;
    let image2 = if (image2.width, image2.height) != (w, h) {
        let cropped = center_crop_to_aspect(image2, w, h);
        resized = resize(&cropped, w, h, Method::Bicubic).map_err(|e| format!("resizing image2 to image1: {e}"))?;
        &resized
    } else {
        image2
    };

    let plane = image1.plane_len();
    let mut data = Vec::with_capacity(batch * plane);
    for b in 0..batch {
        // A batch of 1 is reused for every item (plane is 0 when batch is 0).
        let a_item = if image1.batch == 1 { image1.item(0) } else { image1.item(b) };
        let b_item = if image2.batch == 1 { image2.item(0) } else { image2.item(b) };
        data.extend(a_item.iter().zip(b_item).map(|(&a, &v)| {
            let mixed = a * (1.0 - blend_factor) + mode.apply(a, v) * blend_factor;
            mixed.clamp(0.0, 1.0)
        }));
    }
    Ok(Image { batch, height: h, width: w, channels: image1.channels, data })
}

/// ImageInvert: `1 - x` for every value.
pub fn invert(img: &Image) -> Image {
    let data = img.data.iter().map(|v| 1.0 - v).collect();
    Image { batch: img.batch, height: img.height, width: img.width, channels: img.channels, data }
}

/// ImageCrop: `x` and `y` are clamped to the last column and row, then the
/// `width` x `height` rectangle from there is cut, shortened where it runs
/// past the right or bottom edge.
pub fn crop(img: &Image, width: usize, height: usize, x: usize, y: usize) -> Result<Image, String> {
    check_image(img)?;
    if img.width == 0 || img.height == 0 {
        return Err(format!("cannot crop an empty {}x{} image", img.width, img.height));
    }
    if width == 0 || height == 0 {
        return Err(format!("cannot crop a {width}x{height} rectangle: width and height must be at least 1"));
    }
    let x = x.min(img.width - 1);
    let y = y.min(img.height - 1);
    let to_x = width.saturating_add(x).min(img.width);
    let to_y = height.saturating_add(y).min(img.height);
    Ok(crop_rect(img, x, y, to_x - x, to_y - y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(batch: usize, h: usize, w: usize, c: usize, data: &[f32]) -> Image {
        Image::from_data(batch, h, w, c, data.to_vec()).unwrap()
    }

    fn filled(batch: usize, h: usize, w: usize, c: usize, v: f32) -> Image {
        Image::from_data(batch, h, w, c, vec![v; batch * h * w * c]).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6, "{what}: value {i} is {g}, expected {w}");
        }
    }

    /// The full-strength blend of single values `a` (base) and `b`.
    fn blend1(a: f32, b: f32, mode: BlendMode) -> f32 {
        blend(&filled(1, 1, 1, 1, a), &filled(1, 1, 1, 1, b), 1.0, mode).unwrap().data[0]
    }

    #[test]
    fn blend_mode_names_round_trip_and_unknown_names_are_rejected() {
        for name in BlendMode::NAMES {
            assert_eq!(BlendMode::from_name(name).unwrap().name(), name);
        }
        assert_eq!(BlendMode::from_name("soft-light"), None);
    }

    #[test]
    fn each_blend_mode_gives_comfyui_values_on_known_inputs() {
        use BlendMode::*;
        let cases = [
            (Normal, 0.2, 0.6, 0.6),
            (Multiply, 0.5, 0.6, 0.3),
            (Screen, 0.5, 0.6, 0.8),                            // 1 - 0.5 * 0.4
            (Overlay, 0.25, 0.6, 0.3),                          // base <= 0.5: 2ab
            (Overlay, 0.75, 0.6, 0.8),                          // 1 - 2 * 0.25 * 0.4
            (SoftLight, 0.5, 0.25, 0.375), // blend <= 0.5: a - (1 - 2b) a (1 - a) = 0.5 - 0.5 * 0.25
            (SoftLight, 0.2, 0.75, 0.2 + 0.5 * (0.448 - 0.2)), // g(0.2) = ((3.2 - 12) 0.2 + 4) 0.2 = 0.448
            (SoftLight, 0.64, 0.75, 0.64 + 0.5 * (0.8 - 0.64)), // g(0.64) = sqrt(0.64)
            (Difference, 0.7, 0.2, 0.5),
            (Difference, 0.2, 0.7, 0.0), // -0.5 clamped
        ];
        for (mode, a, b, want) in cases {
            let got = blend1(a, b, mode);
            assert!((got - want).abs() < 1e-6, "{} of {a} and {b}: {got}, expected {want}", mode.name());
        }
    }

    #[test]
    fn blend_factor_mixes_base_and_blend_then_clamps() {
        let a = image(1, 1, 2, 1, &[0.2, 0.9]);
        let b = image(1, 1, 2, 1, &[0.6, 0.9]);
        // 0.2 * 0.75 + 0.6 * 0.25; screen of 0.9 and 0.9 is 0.99.
        let out = blend(&a, &b, 0.25, BlendMode::Normal).unwrap();
        assert_close(&out.data, &[0.3, 0.9], "normal at 0.25");
        let out = blend(&a, &b, 0.5, BlendMode::Screen).unwrap();
        assert_close(&out.data, &[0.5 * 0.2 + 0.5 * 0.68, 0.5 * 0.9 + 0.5 * 0.99], "screen at 0.5");
        assert_eq!(blend(&a, &b, 0.0, BlendMode::Multiply).unwrap().data, a.data);
        // Overflowing inputs come out clamped to 1.
        let out = blend(&filled(1, 1, 1, 1, 1.5), &filled(1, 1, 1, 1, 0.5), 0.0, BlendMode::Normal).unwrap();
        assert_eq!(out.data, [1.0]);
    }

    #[test]
    fn a_batch_of_one_is_broadcast_over_the_other() {
        let one = image(1, 1, 1, 2, &[0.5, 0.5]);
        let three = image(3, 1, 1, 2, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let out = blend(&one, &three, 1.0, BlendMode::Multiply).unwrap();
        assert_eq!(out.batch, 3);
        assert_close(&out.data, &[0.05, 0.1, 0.15, 0.2, 0.25, 0.3], "image1 broadcast");
        let out = blend(&three, &one, 1.0, BlendMode::Normal).unwrap();
        assert_eq!(out.batch, 3);
        assert_close(&out.data, &[0.5; 6], "image2 broadcast");
    }

    #[test]
    fn mismatched_batches_and_channels_are_errors() {
        let err = blend(&filled(2, 2, 2, 3, 0.5), &filled(3, 2, 2, 3, 0.5), 0.5, BlendMode::Normal).unwrap_err();
        assert!(err.contains('2') && err.contains('3') && err.contains("batch"), "{err}");
        let err = blend(&filled(1, 2, 2, 3, 0.5), &filled(1, 2, 2, 4, 0.5), 0.5, BlendMode::Normal).unwrap_err();
        assert!(err.contains("channels"), "{err}");
        let bad = Image { batch: 1, height: 2, width: 2, channels: 3, data: vec![0.0; 3] };
        assert!(blend(&filled(1, 2, 2, 3, 0.5), &bad, 0.5, BlendMode::Normal).unwrap_err().starts_with("image2"));
    }

    #[test]
    fn a_wider_image2_is_center_cropped_to_image1s_aspect() {
        // 4 wide, 2 tall onto 2x2: one column cut from each side, then already 2x2.
        let a = filled(1, 2, 2, 1, 0.0);
        let b = image(1, 2, 4, 1, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]);
        let out = blend(&a, &b, 1.0, BlendMode::Normal).unwrap();
        assert_eq!((out.height, out.width), (2, 2));
        assert_close(&out.data, &[0.2, 0.3, 0.6, 0.7], "cropped image2");
    }

    #[test]
    fn a_differently_sized_image2_is_resized_bicubic_to_image1() {
        let a = filled(2, 3, 5, 3, 0.5);
        let data: Vec<f32> = (0..2 * 4 * 9 * 3).map(|i| (i % 17) as f32 / 16.0).collect();
        let b = image(2, 4, 9, 3, &data);
        let out = blend(&a, &b, 1.0, BlendMode::Normal).unwrap();
        let want = resize(&center_crop_to_aspect(&b, 5, 3), 5, 3, Method::Bicubic).unwrap();
        let want: Vec<f32> = want.data.iter().map(|v| v.clamp(0.0, 1.0)).collect();
        assert_eq!((out.batch, out.height, out.width, out.channels), (2, 3, 5, 3));
        assert_close(&out.data, &want, "resized image2");
    }

    #[test]
    fn invert_subtracts_every_value_from_one() {
        let img = image(2, 1, 1, 2, &[0.0, 0.25, 1.0, 0.6]);
        let out = invert(&img);
        assert_eq!((out.batch, out.height, out.width, out.channels), (2, 1, 1, 2));
        assert_close(&out.data, &[1.0, 0.75, 0.0, 0.4], "invert");
    }

    #[test]
    fn crop_cuts_the_rectangle_and_shortens_it_at_the_edges() {
        // 4 wide, 3 tall, values = 10 * y + x, two batch items.
        let data: Vec<f32> =
            (0..2).flat_map(|b| (0..3).flat_map(move |y| (0..4).map(move |x| (100 * b + 10 * y + x) as f32))).collect();
        let img = image(2, 3, 4, 1, &data);
        let out = crop(&img, 2, 2, 1, 1).unwrap();
        assert_eq!((out.batch, out.height, out.width), (2, 2, 2));
        assert_eq!(out.data, [11.0, 12.0, 21.0, 22.0, 111.0, 112.0, 121.0, 122.0]);
        // Running past the right edge keeps what is there.
        let out = crop(&img, 10, 1, 2, 0).unwrap();
        assert_eq!((out.height, out.width), (1, 2));
        assert_eq!(out.item(0), [2.0, 3.0]);
        // An origin beyond the image is clamped to the last column and row.
        let out = crop(&img, 5, 5, 99, 99).unwrap();
        assert_eq!((out.height, out.width), (1, 1));
        assert_eq!(out.data, [23.0, 123.0]);
        assert_eq!(crop(&img, usize::MAX, usize::MAX, 0, 0).unwrap(), img);
    }

    #[test]
    fn crop_rejects_empty_rectangles_and_empty_images() {
        let img = filled(1, 3, 4, 3, 0.5);
        assert!(crop(&img, 0, 2, 0, 0).unwrap_err().contains("0x2"));
        assert!(crop(&img, 2, 0, 0, 0).is_err());
        assert!(crop(&filled(1, 0, 4, 3, 0.5), 2, 2, 0, 0).unwrap_err().contains("empty"));
    }
}
