//! Image and mask resizing as ComfyUI's `comfy.utils.common_upscale` does it.
//!
//! - nearest-exact, bilinear, bicubic, area: PyTorch's `F.interpolate` with
//!   `align_corners=False, antialias=False` (area is `adaptive_avg_pool2d`).
//! - lanczos: PIL's `Image.resize(size, LANCZOS)`, which ComfyUI runs on 8-bit
//!   copies; here it runs on f32 (see [`Method::Lanczos`]).
//! - [`center_crop_to_aspect`]: common_upscale's `crop == "center"`.
//!
//! Every method is a separable filter: a per-axis table of source taps,
//! applied horizontally then vertically, weights computed in f64.

use pixels::{Image, Mask};

/// A resampling filter, named as ComfyUI's `upscale_method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// PyTorch "nearest-exact": source = floor((dst + 0.5) * in / out).
    NearestExact,
    /// PyTorch "bilinear", half-pixel centres, no antialiasing.
    Bilinear,
    /// PyTorch "area": adaptive average pooling.
    Area,
    /// PyTorch "bicubic": Keys cubic with A = -0.75, borders clamped.
    Bicubic,
    /// PIL Lanczos-3, antialiased when downscaling. As in ComfyUI, input and
    /// each pass's output are clipped to 0..=1 (PIL's 8-bit passes saturate),
    /// but values are not quantised to 8 bits.
    Lanczos,
}

impl Method {
    /// ComfyUI's `upscale_method` choices, in its order.
    pub const NAMES: [&'static str; 5] = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"];

    pub fn from_name(name: &str) -> Option<Method> {
        match name {
            "nearest-exact" => Some(Method::NearestExact),
            "bilinear" => Some(Method::Bilinear),
            "area" => Some(Method::Area),
            "bicubic" => Some(Method::Bicubic),
            "lanczos" => Some(Method::Lanczos),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::NearestExact => "nearest-exact",
            Method::Bilinear => "bilinear",
            Method::Area => "area",
            Method::Bicubic => "bicubic",
            Method::Lanczos => "lanczos",
        }
    }
}

/// Resizes every image of the batch to `width` x `height`.
pub fn resize(img: &Image, width: usize, height: usize, method: Method) -> Result<Image, String> {
    let data = resize_planes(&img.data, img.batch, img.height, img.width, img.channels, width, height, method)?;
    Ok(Image { batch: img.batch, height, width, channels: img.channels, data })
}

/// Resizes every mask of the batch to `width` x `height` (as a one-channel image).
pub fn resize_mask(mask: &Mask, width: usize, height: usize, method: Method) -> Result<Mask, String> {
    let data = resize_planes(&mask.data, mask.batch, mask.height, mask.width, 1, width, height, method)?;
    Ok(Mask { batch: mask.batch, height, width, data })
}

/// Crops the image to the aspect ratio of `width` x `height`, centred, as
/// common_upscale's `crop == "center"`: the cut per side is
/// `round((w - w * new_aspect / old_aspect) / 2)` with Python's round-half-even.
/// At least one row and column are kept (ComfyUI would fail on an empty crop);
/// a zero target side or an empty or malformed image is returned unchanged.
pub fn center_crop_to_aspect(img: &Image, width: usize, height: usize) -> Image {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 || check_image(img).is_err() {
        return img.clone();
    }
    let (old_w, old_h) = (img.width as f64, img.height as f64);
    let old_aspect = old_w / old_h;
    let new_aspect = width as f64 / height as f64;
    let (mut x, mut y) = (0usize, 0usize);
    // Same operation order as ComfyUI so the rounding lands identically.
    if old_aspect > new_aspect {
        x = ((old_w - old_w * (new_aspect / old_aspect)) / 2.0).round_ties_even() as usize;
    } else if old_aspect < new_aspect {
        y = ((old_h - old_h * (old_aspect / new_aspect)) / 2.0).round_ties_even() as usize;
    }
    let x = x.min((img.width - 1) / 2);
    let y = y.min((img.height - 1) / 2);
    crop_rect(img, x, y, img.width - 2 * x, img.height - 2 * y)
}

/// Copies the `w` x `h` rectangle at (`x`, `y`) out of every image; the
/// caller keeps it inside the image.
pub(crate) fn crop_rect(img: &Image, x: usize, y: usize, w: usize, h: usize) -> Image {
    let c = img.channels;
    let mut data = Vec::with_capacity(img.batch * h * w * c);
    for b in 0..img.batch {
        for row in y..y + h {
            let start = ((b * img.height + row) * img.width + x) * c;
            data.extend_from_slice(&img.data[start..start + w * c]);
        }
    }
    Image { batch: img.batch, height: h, width: w, channels: c, data }
}

/// Errors unless the image holds as many values as its shape claims.
pub(crate) fn check_image(img: &Image) -> Result<(), String> {
    let want = shape_len(img.batch, img.height, img.width, img.channels)?;
    let len = img.data.len();
    if len != want {
        return Err(format!("image data has {len} values but its shape {img:?} needs {want}"));
    }
    Ok(())
}

fn shape_len(batch: usize, height: usize, width: usize, channels: usize) -> Result<usize, String> {
    batch
        .checked_mul(height)
        .and_then(|n| n.checked_mul(width))
        .and_then(|n| n.checked_mul(channels))
        .ok_or_else(|| format!("shape [{batch}, {height}, {width}, {channels}] is too large"))
}

/// The shared resizer: `data` is `[batch, h, w, c]`.
#[allow(clippy::too_many_arguments)]
fn resize_planes(
    data: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    out_w: usize,
    out_h: usize,
    method: Method,
) -> Result<Vec<f32>, String> {
    if out_w == 0 || out_h == 0 {
        return Err(format!("cannot resize to {out_w}x{out_h}: width and height must be at least 1"));
    }
    let want = shape_len(batch, h, w, c)?;
    if data.len() != want {
        return Err(format!("data has {} values but shape [{batch}, {h}, {w}, {c}] needs {want}", data.len()));
    }
    let out_len = shape_len(batch, out_h, out_w, c)?;
    if out_len == 0 {
        // No batch items or no channels: nothing to compute.
        return Ok(Vec::new());
    }
    if w == 0 || h == 0 {
        return Err(format!("cannot resize an empty {w}x{h} image to {out_w}x{out_h}"));
    }

    // PIL's Lanczos path works on clipped 8-bit data; clip the input alike.
    let clip = method == Method::Lanczos;
    let mut cur: Vec<f32> = if clip { data.iter().map(|v| v.clamp(0.0, 1.0)).collect() } else { data.to_vec() };
    // An unchanged axis is an exact identity for the PyTorch filters, and PIL
    // skips that pass too, so skip it.
    if out_w != w {
        cur = pass_horizontal(&cur, batch * h, w, c, &taps(method, w, out_w), clip);
    }
    if out_h != h {
        cur = pass_vertical(&cur, batch, h, out_w * c, &taps(method, h, out_h), clip);
    }
    Ok(cur)
}

/// One output index's source taps: `(source index, weight)`.
type Taps = Vec<(usize, f64)>;

/// Filters each of `rows` rows of `w` pixels (`c` channels) to `taps.len()` pixels.
fn pass_horizontal(src: &[f32], rows: usize, w: usize, c: usize, taps: &[Taps], clip: bool) -> Vec<f32> {
    let out_w = taps.len();
    let mut out = vec![0.0f32; rows * out_w * c];
    for row in 0..rows {
        let src_row = &src[row * w * c..(row + 1) * w * c];
        let dst_row = &mut out[row * out_w * c..(row + 1) * out_w * c];
        for (ox, tap) in taps.iter().enumerate() {
            for ch in 0..c {
                let acc: f64 = tap.iter().map(|&(ix, wt)| src_row[ix * c + ch] as f64 * wt).sum();
                dst_row[ox * c + ch] = finish(acc, clip);
            }
        }
    }
    out
}

/// Filters each of `batch` images of `h` rows (`row_len` values each) to `taps.len()` rows.
fn pass_vertical(src: &[f32], batch: usize, h: usize, row_len: usize, taps: &[Taps], clip: bool) -> Vec<f32> {
    let out_h = taps.len();
    let mut out = vec![0.0f32; batch * out_h * row_len];
    let mut acc = vec![0.0f64; row_len];
    for b in 0..batch {
        for (oy, tap) in taps.iter().enumerate() {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for &(iy, wt) in tap {
                let start = (b * h + iy) * row_len;
                for (a, &v) in acc.iter_mut().zip(&src[start..start + row_len]) {
                    *a += v as f64 * wt;
                }
            }
            let start = (b * out_h + oy) * row_len;
            for (o, &a) in out[start..start + row_len].iter_mut().zip(&acc) {
                *o = finish(a, clip);
            }
        }
    }
    out
}

fn finish(acc: f64, clip: bool) -> f32 {
    let v = acc as f32;
    if clip { v.clamp(0.0, 1.0) } else { v }
}

/// The taps resampling an axis of `in_len` samples to `out_len` (both >= 1).
fn taps(method: Method, in_len: usize, out_len: usize) -> Vec<Taps> {
    match method {
        Method::NearestExact => nearest_exact_taps(in_len, out_len),
        Method::Bilinear => bilinear_taps(in_len, out_len),
        Method::Area => area_taps(in_len, out_len),
        Method::Bicubic => bicubic_taps(in_len, out_len),
        Method::Lanczos => lanczos_taps(in_len, out_len),
    }
}

/// PyTorch computes the nearest-exact index in f32 (scale = in / out as f32,
/// then `floorf((dst + 0.5) * scale)`); doing the same keeps ties identical.
fn nearest_exact_taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|d| {
            let src = ((d as f64 + 0.5) * scale as f64) as f32;
            vec![((src.floor() as usize).min(in_len - 1), 1.0)]
        })
        .collect()
}

/// PyTorch's linear taps: src = (dst + 0.5) * scale - 0.5, clamped at 0; the
/// upper neighbour is clamped to the last sample.
fn bilinear_taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    (0..out_len)
        .map(|d| {
            let real = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(in_len - 1);
            let i1 = if i0 < in_len - 1 { i0 + 1 } else { i0 };
            let lambda = (real - i0 as f64).clamp(0.0, 1.0);
            vec![(i0, 1.0 - lambda), (i1, lambda)]
        })
        .collect()
}

/// `adaptive_avg_pool`: output i averages [floor(i*in/out), ceil((i+1)*in/out)).
fn area_taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    // u128 so that index products cannot overflow for any usize sizes.
    let (n, m) = (in_len as u128, out_len as u128);
    (0..out_len)
        .map(|i| {
            let i = i as u128;
            let start = (i * n / m) as usize;
            let end = ((i + 1) * n).div_ceil(m) as usize;
            let wt = 1.0 / (end - start) as f64;
            (start..end).map(|s| (s, wt)).collect()
        })
        .collect()
}

/// Keys cubic convolution, A = -0.75 as PyTorch (OpenCV) uses.
const CUBIC_A: f64 = -0.75;

/// PyTorch's bicubic taps: src = (dst + 0.5) * scale - 0.5 (not clamped), four
/// taps from floor(src) - 1, each index clamped into the axis.
fn bicubic_taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    let last = in_len as i64 - 1;
    (0..out_len)
        .map(|d| {
            let real = (d as f64 + 0.5) * scale - 0.5;
            let i0 = real.floor();
            let t = real - i0;
            let weights = [cubic_outer(t + 1.0), cubic_inner(t), cubic_inner(1.0 - t), cubic_outer(2.0 - t)];
            (0..4).map(|k| (((i0 as i64) - 1 + k as i64).clamp(0, last) as usize, weights[k])).collect()
        })
        .collect()
}

/// Keys kernel for |x| <= 1.
fn cubic_inner(x: f64) -> f64 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}

/// Keys kernel for 1 < |x| < 2.
fn cubic_outer(x: f64) -> f64 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// PIL's Lanczos support, in output-pixel units before downscale stretching.
const LANCZOS_SUPPORT: f64 = 3.0;

/// PIL's `precompute_coeffs` with the Lanczos filter: when downscaling the
/// kernel is stretched by the scale factor (antialiasing), taps span
/// `[round(center - support), round(center + support))` clipped to the axis,
/// and weights are normalised to sum to 1.
fn lanczos_taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    let filterscale = scale.max(1.0);
    let support = LANCZOS_SUPPORT * filterscale;
    (0..out_len)
        .map(|d| {
            let center = (d as f64 + 0.5) * scale;
            // PIL's `(int)(v + 0.5)`; negative starts are clamped to 0 anyway.
            let start = ((center - support + 0.5).floor().max(0.0) as usize).min(in_len);
            let end = ((center + support + 0.5).floor() as usize).min(in_len);
            let mut tap: Taps = (start..end).map(|i| (i, lanczos((i as f64 - center + 0.5) / filterscale))).collect();
            let sum: f64 = tap.iter().map(|&(_, wt)| wt).sum();
            if sum != 0.0 {
                tap.iter_mut().for_each(|(_, wt)| *wt /= sum);
            }
            tap
        })
        .collect()
}

/// PIL's truncated sinc: sinc(x) * sinc(x / 3) on [-3, 3).
fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) { sinc(x) * sinc(x / LANCZOS_SUPPORT) } else { 0.0 }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator (xorshift64*), values in 0..1.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    fn random_image(rng: &mut Rng, batch: usize, h: usize, w: usize, c: usize, lo: f32, hi: f32) -> Image {
        let data = (0..batch * h * w * c).map(|_| lo + (hi - lo) * rng.next()).collect();
        Image::from_data(batch, h, w, c, data).unwrap()
    }

    fn row(values: &[f32]) -> Image {
        Image::from_data(1, 1, values.len(), 1, values.to_vec()).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= tol, "{what}: value {i} is {g}, expected {w}");
        }
    }

    /// (in_h, in_w, out_h, out_w): square and not, up and down, odd sizes, 1-wide.
    const SIZES: [(usize, usize, usize, usize); 9] = [
        (5, 7, 9, 4),
        (8, 8, 3, 5),
        (7, 3, 7, 11),
        (1, 5, 4, 2),
        (13, 9, 6, 17),
        (2, 2, 1, 1),
        (1, 1, 3, 2),
        (6, 10, 12, 20),
        (11, 4, 5, 4),
    ];

    /// Checks `method` against a per-output-pixel reference `pixel(img, b, oy, ox, c, out_h, out_w)`.
    fn check_against_reference(
        method: Method,
        lo: f32,
        hi: f32,
        pixel: fn(&Image, usize, usize, usize, usize, usize, usize) -> f64,
    ) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for (in_h, in_w, out_h, out_w) in SIZES {
            for c in [1, 3, 4] {
                let img = random_image(&mut rng, 2, in_h, in_w, c, lo, hi);
                let out = resize(&img, out_w, out_h, method).unwrap();
                assert_eq!((out.batch, out.height, out.width, out.channels), (2, out_h, out_w, c));
                let mut want = Vec::new();
                for b in 0..2 {
                    for oy in 0..out_h {
                        for ox in 0..out_w {
                            for ch in 0..c {
                                want.push(pixel(&img, b, oy, ox, ch, out_h, out_w));
                            }
                        }
                    }
                }
                let what = format!("{} {in_h}x{in_w} -> {out_h}x{out_w}, C = {c}", method.name());
                assert_close(&out.data, &want, 1e-5, &what);
            }
        }
    }

    fn at(img: &Image, b: usize, y: i64, x: i64, c: usize) -> f64 {
        let y = y.clamp(0, img.height as i64 - 1) as usize;
        let x = x.clamp(0, img.width as i64 - 1) as usize;
        img.get(b, y, x, c) as f64
    }

    /// PyTorch bilinear for one output pixel, written directly in 2-D.
    fn bilinear_pixel(img: &Image, b: usize, oy: usize, ox: usize, c: usize, out_h: usize, out_w: usize) -> f64 {
        let sy = ((oy as f64 + 0.5) * img.height as f64 / out_h as f64 - 0.5).max(0.0);
        let sx = ((ox as f64 + 0.5) * img.width as f64 / out_w as f64 - 0.5).max(0.0);
        let (y0, x0) = (sy.floor() as i64, sx.floor() as i64);
        let (fy, fx) = (sy - y0 as f64, sx - x0 as f64);
        let top = at(img, b, y0, x0, c) * (1.0 - fx) + at(img, b, y0, x0 + 1, c) * fx;
        let bottom = at(img, b, y0 + 1, x0, c) * (1.0 - fx) + at(img, b, y0 + 1, x0 + 1, c) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// Keys' cubic kernel as a function of distance, A = -0.75.
    fn keys(d: f64) -> f64 {
        let (a, d) = (-0.75, d.abs());
        if d <= 1.0 {
            (a + 2.0) * d.powi(3) - (a + 3.0) * d.powi(2) + 1.0
        } else if d < 2.0 {
            a * d.powi(3) - 5.0 * a * d.powi(2) + 8.0 * a * d - 4.0 * a
        } else {
            0.0
        }
    }

    /// PyTorch bicubic for one output pixel: 4x4 neighbourhood, clamped reads.
    fn bicubic_pixel(img: &Image, b: usize, oy: usize, ox: usize, c: usize, out_h: usize, out_w: usize) -> f64 {
        let sy = (oy as f64 + 0.5) * img.height as f64 / out_h as f64 - 0.5;
        let sx = (ox as f64 + 0.5) * img.width as f64 / out_w as f64 - 0.5;
        let (y0, x0) = (sy.floor() as i64, sx.floor() as i64);
        let mut sum = 0.0;
        for y in y0 - 1..=y0 + 2 {
            for x in x0 - 1..=x0 + 2 {
                sum += keys(sy - y as f64) * keys(sx - x as f64) * at(img, b, y, x, c);
            }
        }
        sum
    }

    /// adaptive_avg_pool2d for one output pixel: the mean of its box.
    fn area_pixel(img: &Image, b: usize, oy: usize, ox: usize, c: usize, out_h: usize, out_w: usize) -> f64 {
        let (h, w) = (img.height, img.width);
        let (y0, y1) = (oy * h / out_h, ((oy + 1) * h).div_ceil(out_h));
        let (x0, x1) = (ox * w / out_w, ((ox + 1) * w).div_ceil(out_w));
        let mut sum = 0.0;
        for y in y0..y1 {
            for x in x0..x1 {
                sum += img.get(b, y, x, c) as f64;
            }
        }
        sum / ((y1 - y0) * (x1 - x0)) as f64
    }

    /// PIL's Lanczos written as a full 2-D sum over every source pixel (the
    /// filter is zero outside its window), normalised per axis.
    fn lanczos_pixel(img: &Image, b: usize, oy: usize, ox: usize, c: usize, out_h: usize, out_w: usize) -> f64 {
        fn weights(in_len: usize, out_len: usize, o: usize) -> Vec<f64> {
            let scale = in_len as f64 / out_len as f64;
            let stretch = scale.max(1.0);
            let center = (o as f64 + 0.5) * scale;
            let lanczos3 = |x: f64| {
                let sinc =
                    |x: f64| if x == 0.0 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
                if x.abs() < 3.0 { sinc(x) * sinc(x / 3.0) } else { 0.0 }
            };
            let raw: Vec<f64> = (0..in_len).map(|i| lanczos3((i as f64 + 0.5 - center) / stretch)).collect();
            let total: f64 = raw.iter().sum();
            raw.iter().map(|w| w / total).collect()
        }
        let wy = weights(img.height, out_h, oy);
        let wx = weights(img.width, out_w, ox);
        let mut sum = 0.0;
        for (y, wy) in wy.iter().enumerate() {
            for (x, wx) in wx.iter().enumerate() {
                sum += wy * wx * img.get(b, y, x, c) as f64;
            }
        }
        sum
    }

    #[test]
    fn method_names_round_trip_and_unknown_names_are_rejected() {
        for name in Method::NAMES {
            assert_eq!(Method::from_name(name).unwrap().name(), name);
        }
        assert_eq!(Method::from_name("nearest"), None);
        assert_eq!(Method::from_name("Bilinear"), None);
    }

    #[test]
    fn bilinear_matches_reference_on_random_images_up_down_and_odd_sizes() {
        check_against_reference(Method::Bilinear, 0.0, 1.0, bilinear_pixel);
    }

    #[test]
    fn bicubic_matches_reference_on_random_images_up_down_and_odd_sizes() {
        check_against_reference(Method::Bicubic, 0.0, 1.0, bicubic_pixel);
    }

    #[test]
    fn area_matches_box_average_reference_on_random_images() {
        check_against_reference(Method::Area, 0.0, 1.0, area_pixel);
    }

    #[test]
    fn lanczos_matches_full_sum_reference_on_midtone_images() {
        // Values in 0.3..0.7 keep Lanczos' overshoot inside 0..1, so the
        // per-pass clipping never acts and the 2-D sum is a fair reference.
        check_against_reference(Method::Lanczos, 0.3, 0.7, lanczos_pixel);
    }

    #[test]
    fn bilinear_upscale_of_two_pixels_gives_quarter_mixes() {
        let (a, b) = (0.2, 0.6);
        let out = resize(&row(&[a, b]), 4, 1, Method::Bilinear).unwrap();
        let want = [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b].map(f64::from);
        assert_close(&out.data, &want, 1e-6, "bilinear 2 -> 4");
    }

    #[test]
    fn bicubic_upscale_of_a_step_overshoots_with_keys_minus_075() {
        // By hand: src = -0.25, 0.25, 0.75, 1.25; e.g. out[0] = k(1.25) =
        // -0.75*1.25^3 + 3.75*1.25^2 - 6*1.25 + 3 = -0.10546875.
        let out = resize(&row(&[0.0, 1.0]), 4, 1, Method::Bicubic).unwrap();
        assert_close(&out.data, &[-0.10546875, 0.2265625, 0.7734375, 1.10546875], 1e-6, "bicubic 2 -> 4");
    }

    #[test]
    fn nearest_exact_picks_the_sample_under_each_pixel_centre() {
        let v = [0.1, 0.2, 0.3, 0.4, 0.5];
        // 3 -> 5: floor((d + 0.5) * 0.6) = 0, 0, 1, 2, 2.
        let out = resize(&row(&v[..3]), 5, 1, Method::NearestExact).unwrap();
        assert_eq!(out.data, [0.1, 0.1, 0.2, 0.3, 0.3]);
        // 5 -> 2: floor((d + 0.5) * 2.5) = 1, 3.
        let out = resize(&row(&v), 2, 1, Method::NearestExact).unwrap();
        assert_eq!(out.data, [0.2, 0.4]);
        // Vertically too, keeping every channel of the picked pixel.
        let img = Image::from_data(1, 3, 1, 2, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let out = resize(&img, 1, 2, Method::NearestExact).unwrap();
        assert_eq!(out.data, [0.0, 1.0, 4.0, 5.0]);
    }

    #[test]
    fn area_averages_pairs_when_halving_and_overlaps_windows_otherwise() {
        let out = resize(&row(&[0.1, 0.3, 0.5, 0.9]), 2, 1, Method::Area).unwrap();
        assert_close(&out.data, &[0.2, 0.7], 1e-6, "area 4 -> 2");
        // 3 -> 2: windows [0, 2) and [1, 3) share the middle sample.
        let out = resize(&row(&[0.1, 0.3, 0.8]), 2, 1, Method::Area).unwrap();
        assert_close(&out.data, &[0.2, 0.55], 1e-6, "area 3 -> 2");
        // 2 -> 3 (upscale): windows [0, 1), [0, 2), [1, 2).
        let out = resize(&row(&[0.2, 0.6]), 3, 1, Method::Area).unwrap();
        assert_close(&out.data, &[0.2, 0.4, 0.6], 1e-6, "area 2 -> 3");
    }

    #[test]
    fn lanczos_matches_hand_computed_weights() {
        // 3 -> 1: centre 1.5, stretch 3, taps at -1/3, 0, 1/3: weights
        // L(1/3) / (1 + 2 L(1/3)) = 0.309204... with L(x) = sinc(x) sinc(x/3).
        // Numbers from PIL's precompute_coeffs formula in f64 (Python's math).
        let out = resize(&row(&[0.2, 0.9, 0.4]), 1, 1, Method::Lanczos).unwrap();
        assert_close(&out.data, &[0.5289550393273577], 1e-6, "lanczos 3 -> 1");
        let out = resize(&row(&[0.1, 0.5, 0.9, 0.3, 0.7]), 2, 1, Method::Lanczos).unwrap();
        assert_close(&out.data, &[0.44056162572211865, 0.6142712949062974], 1e-6, "lanczos 5 -> 2");
    }

    #[test]
    fn lanczos_upscale_of_a_step_rings_and_is_clipped_like_comfyui() {
        // Unclipped this is -0.17548, 0.23287, 0.76713, 1.17548 (same formula);
        // ComfyUI's 8-bit PIL path saturates the ringing at 0 and 1.
        let out = resize(&row(&[0.0, 1.0]), 4, 1, Method::Lanczos).unwrap();
        assert_close(&out.data, &[0.0, 0.2328706934857721, 0.7671293065142278, 1.0], 1e-6, "lanczos 2 -> 4");
        // Out-of-range input is clipped first, as ComfyUI's np.clip does.
        let out = resize(&row(&[-3.0, 5.0]), 1, 1, Method::Lanczos).unwrap();
        assert_close(&out.data, &[0.5], 1e-6, "lanczos clipped input");
    }

    #[test]
    fn lanczos_downscale_of_a_checkerboard_is_smooth() {
        let (n, out) = (30, 7);
        let data = (0..n * n).map(|i| ((i / n + i % n) % 2) as f32).collect();
        let board = Image::from_data(1, n, n, 1, data).unwrap();
        let smooth = resize(&board, out, out, Method::Lanczos).unwrap();
        for v in &smooth.data {
            assert!((v - 0.5).abs() < 0.05, "antialiased value {v} should be near grey");
        }
        // Without antialiasing the pattern aliases to pure black and white.
        let aliased = resize(&board, out, out, Method::NearestExact).unwrap();
        assert!(aliased.data.iter().all(|&v| v == 0.0 || v == 1.0));
    }

    #[test]
    fn constant_image_stays_constant_under_every_method_and_size() {
        for method in Method::NAMES.map(|n| Method::from_name(n).unwrap()) {
            for (in_h, in_w, out_h, out_w) in SIZES {
                let img = Image::from_data(2, in_h, in_w, 3, vec![0.37; 2 * in_h * in_w * 3]).unwrap();
                let out = resize(&img, out_w, out_h, method).unwrap();
                let what = format!("{} {in_h}x{in_w} -> {out_h}x{out_w}", method.name());
                assert_close(&out.data, &vec![0.37; out.data.len()], 1e-6, &what);
            }
        }
    }

    #[test]
    fn same_size_returns_the_input_for_every_method() {
        let mut rng = Rng(7);
        let img = random_image(&mut rng, 2, 5, 6, 4, 0.0, 1.0);
        for method in Method::NAMES.map(|n| Method::from_name(n).unwrap()) {
            let out = resize(&img, 6, 5, method).unwrap();
            let want: Vec<f64> = img.data.iter().map(|&v| v as f64).collect();
            assert_close(&out.data, &want, 1e-6, method.name());
        }
    }

    #[test]
    fn every_filter_is_an_identity_at_the_same_size() {
        // `resize` skips unchanged axes; the filters themselves agree. Taps
        // may repeat an index (clamped borders), so weights are summed per index.
        for method in Method::NAMES.map(|n| Method::from_name(n).unwrap()) {
            for len in [1, 2, 5, 16] {
                for (o, tap) in taps(method, len, len).iter().enumerate() {
                    let mut per_index = vec![0.0; len];
                    for &(i, wt) in tap {
                        per_index[i] += wt;
                    }
                    for (i, wt) in per_index.iter().enumerate() {
                        let want = if i == o { 1.0 } else { 0.0 };
                        assert!(
                            (wt - want).abs() < 1e-12,
                            "{} len {len}: source {i} of {o} has weight {wt}",
                            method.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn resize_rejects_zero_targets_empty_sources_and_malformed_data() {
        let img = Image::zeros(1, 4, 4, 3);
        assert!(resize(&img, 0, 4, Method::Bilinear).unwrap_err().contains("0x4"));
        assert!(resize(&img, 4, 0, Method::Lanczos).is_err());
        assert!(resize(&Image::zeros(1, 0, 4, 3), 2, 2, Method::Area).unwrap_err().contains("empty"));
        let bad = Image { batch: 1, height: 4, width: 4, channels: 3, data: vec![0.0; 5] };
        assert!(resize(&bad, 2, 2, Method::Bicubic).unwrap_err().contains("5 values"));
        let huge = Image { batch: usize::MAX, height: 2, width: 2, channels: 3, data: vec![] };
        assert!(resize(&huge, 2, 2, Method::Bicubic).unwrap_err().contains("too large"));
        // No batch items is not an error: there is just nothing to resize.
        let out = resize(&Image::zeros(0, 4, 4, 3), 2, 3, Method::Bilinear).unwrap();
        assert_eq!((out.batch, out.height, out.width, out.data.len()), (0, 3, 2, 0));
    }

    #[test]
    fn resize_mask_matches_a_one_channel_image() {
        let mut rng = Rng(11);
        let img = random_image(&mut rng, 2, 7, 5, 1, 0.0, 1.0);
        let mask = Mask { batch: 2, height: 7, width: 5, data: img.data.clone() };
        for method in Method::NAMES.map(|n| Method::from_name(n).unwrap()) {
            let m = resize_mask(&mask, 3, 9, method).unwrap();
            assert_eq!((m.batch, m.height, m.width), (2, 9, 3));
            assert_eq!(m.data, resize(&img, 3, 9, method).unwrap().data, "{}", method.name());
        }
        assert!(resize_mask(&mask, 0, 9, Method::Area).is_err());
    }

    #[test]
    fn center_crop_trims_the_longer_side_evenly_on_both_ends() {
        // 10 wide, 4 tall to square: cut round((10 - 4) / 2) = 3 per side.
        let data = (0..2 * 4 * 10 * 2).map(|i| i as f32).collect();
        let wide = Image::from_data(2, 4, 10, 2, data).unwrap();
        let out = center_crop_to_aspect(&wide, 64, 64);
        assert_eq!((out.batch, out.height, out.width, out.channels), (2, 4, 4, 2));
        for b in 0..2 {
            for y in 0..4 {
                for x in 0..4 {
                    for c in 0..2 {
                        assert_eq!(out.get(b, y, x, c), wide.get(b, y, x + 3, c));
                    }
                }
            }
        }
        // Taller than the target: rows are cut instead.
        let tall = Image::zeros(1, 10, 4, 3);
        let out = center_crop_to_aspect(&tall, 8, 8);
        assert_eq!((out.height, out.width), (4, 4));
        // Same aspect ratio: untouched.
        let out = center_crop_to_aspect(&wide, 5, 2);
        assert_eq!(out, wide);
    }

    #[test]
    fn center_crop_rounds_half_to_even_like_python() {
        // (8 - 3) / 2 = 2.5 rounds to 2 (Python's round), not 3.
        let out = center_crop_to_aspect(&Image::zeros(1, 3, 8, 1), 1, 1);
        assert_eq!((out.height, out.width), (3, 4));
        let out = center_crop_to_aspect(&Image::zeros(1, 8, 3, 1), 1, 1);
        assert_eq!((out.height, out.width), (4, 3));
    }

    #[test]
    fn center_crop_keeps_a_pixel_for_extreme_aspects_and_ignores_zero_targets() {
        // ComfyUI would cut round(0.995) = 1 from each side of 2 columns and
        // fail on the empty result; the cut is capped so a column survives.
        let out = center_crop_to_aspect(&Image::zeros(1, 1, 2, 3), 1, 100);
        assert_eq!((out.height, out.width), (1, 2));
        let out = center_crop_to_aspect(&Image::zeros(1, 1, 3, 3), 1, 100);
        assert_eq!((out.height, out.width), (1, 1));
        let img = Image::zeros(1, 3, 5, 3);
        assert_eq!(center_crop_to_aspect(&img, 0, 4), img);
        assert_eq!(center_crop_to_aspect(&img, 4, 0), img);
    }
}
