//! Edge and stroke maps for ControlNets, computed on the CPU without a model:
//!
//! - [`canny`]: ComfyUI's `Canny` node (`comfy_extras/nodes_canny.py`, which
//!   runs kornia's `canny` with its own 5x5 Gaussian; the steps are on [`canny`]);
//! - [`binary_strokes`]: comfyui_controlnet_aux's `BinaryPreprocessor`
//!   (controlnet_aux `BinaryDetector`: OpenCV's `THRESH_BINARY_INV`, Otsu's
//!   threshold when the threshold is 0 or 255): dark strokes become 1, the rest 0.

/// The 8 neighbours, in the order of the quantised gradient directions:
/// direction `k` is `atan2(gy, gx)` rounded to `k * 45` degrees (y grows
/// downwards), and its neighbour is at `(dy, dx)`; the opposite one is `k + 4`.
const DIRECTIONS: [(isize, isize); 8] = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)];

/// What [`canny`] computes: the gradient magnitude after non-maximum
/// suppression and the edges (0 or 1), each `[H, W]` row-major.
pub struct CannyOutput {
    pub magnitude: Vec<f64>,
    pub edges: Vec<f32>,
}

/// PyTorch's `reflect` padding index (no edge repeat); needs `n >= 2`.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let mut i = i;
    while i < 0 || i >= n {
        i = if i < 0 { -i } else { 2 * (n - 1) - i };
    }
    i as usize
}

/// Canny edges of one picture `rgb [H, W, channels]` (0..1; 3 channels are
/// made gray, one is used as is), in f64, as ComfyUI's node computes it:
///
/// 1. gray = 0.299 R + 0.587 G + 0.114 B (kornia `rgb_to_grayscale`);
/// 2. 5x5 Gaussian blur, sigma 1 (outer product of the normalised kernel at
///    -2..2), `reflect` padding (ComfyUI's `gaussian_blur_2d`);
/// 3. Sobel gradients, unnormalised, `replicate` padding (`spatial_gradient`);
/// 4. magnitude `sqrt(gx^2 + gy^2 + 1e-6)`, direction `round(atan2(gy, gx) /
///    45 deg)` (half to even, `torch.round`);
/// 5. non-maximum suppression: a pixel is kept when its magnitude is strictly
///    above both neighbours along its direction (0 outside the picture);
/// 6. hysteresis: pixels above `high` are edges, and so are pixels above
///    `low` 8-connected to an edge through such pixels (kornia's iteration to
///    a fixed point is this flood fill).
///
/// Needs at least 3x3 pixels (PyTorch's reflect padding of 2 fails below).
pub fn canny(
    rgb: &[f32],
    height: usize,
    width: usize,
    channels: usize,
    low: f64,
    high: f64,
) -> Result<CannyOutput, String> {
    if height < 3 || width < 3 {
        return Err(format!("Canny needs at least 3x3 pixels, got {width}x{height}"));
    }
    if channels != 1 && channels < 3 || rgb.len() != height * width * channels {
        return Err(format!("Canny takes gray or RGB pixels, got {channels} channels for {width}x{height}"));
    }
    let (h, w) = (height, width);
    let gray: Vec<f64> = (0..h * w)
        .map(|p| {
            let px = &rgb[p * channels..];
            if channels == 1 {
                f64::from(px[0])
            } else {
                0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2])
            }
        })
        .collect();
    let blurred = gaussian_blur(&gray, h, w);
    let (magnitude, direction) = sobel(&blurred, h, w);
    let nms = non_maximum_suppression(&magnitude, &direction, h, w);
    let edges = hysteresis(&nms, h, w, low, high);
    Ok(CannyOutput { magnitude: nms, edges })
}

/// 5x5 Gaussian blur, sigma 1, reflect padding.
fn gaussian_blur(gray: &[f64], h: usize, w: usize) -> Vec<f64> {
    let g1: Vec<f64> = (0..5).map(|i| (-0.5 * ((i as f64 - 2.0).powi(2))).exp()).collect();
    let sum: f64 = g1.iter().sum();
    let g1: Vec<f64> = g1.iter().map(|v| v / sum).collect();
    let mut blurred = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (i, gi) in g1.iter().enumerate() {
                let yy = reflect(y as isize + i as isize - 2, h);
                for (j, gj) in g1.iter().enumerate() {
                    let xx = reflect(x as isize + j as isize - 2, w);
                    acc += gi * gj * gray[yy * w + xx];
                }
            }
            blurred[y * w + x] = acc;
        }
    }
    blurred
}

/// Sobel gradient magnitude and quantised direction (0..8), replicate padding.
fn sobel(blurred: &[f64], h: usize, w: usize) -> (Vec<f64>, Vec<usize>) {
    // Replicate padding: clamp.
    let at = |y: usize, x: usize, dy: isize, dx: isize| {
        let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
        let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
        blurred[yy * w + xx]
    };
    let mut magnitude = vec![0.0; h * w];
    let mut direction = vec![0usize; h * w];
    for y in 0..h {
        for x in 0..w {
            let gx = (at(y, x, -1, 1) - at(y, x, -1, -1))
                + 2.0 * (at(y, x, 0, 1) - at(y, x, 0, -1))
                + (at(y, x, 1, 1) - at(y, x, 1, -1));
            let gy = (at(y, x, 1, -1) - at(y, x, -1, -1))
                + 2.0 * (at(y, x, 1, 0) - at(y, x, -1, 0))
                + (at(y, x, 1, 1) - at(y, x, -1, 1));
            magnitude[y * w + x] = (gx * gx + gy * gy + 1e-6).sqrt();
            let k = (gy.atan2(gx).to_degrees() / 45.0).round_ties_even() as i64;
            direction[y * w + x] = k.rem_euclid(8) as usize;
        }
    }
    (magnitude, direction)
}

/// Keeps a magnitude strictly above both neighbours along its direction (0 outside the picture).
fn non_maximum_suppression(magnitude: &[f64], direction: &[usize], h: usize, w: usize) -> Vec<f64> {
    let neighbour = |y: usize, x: usize, k: usize| {
        let (dy, dx) = DIRECTIONS[k];
        let (yy, xx) = (y as isize + dy, x as isize + dx);
        if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
            0.0
        } else {
            magnitude[yy as usize * w + xx as usize]
        }
    };
    let mut nms = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            let (m, k) = (magnitude[y * w + x], direction[y * w + x]);
            if m - neighbour(y, x, k) > 0.0 && m - neighbour(y, x, (k + 4) % 8) > 0.0 {
                nms[y * w + x] = m;
            }
        }
    }
    nms
}

/// Edges: above `high`, or above `low` and 8-connected to an edge through such pixels.
fn hysteresis(nms: &[f64], h: usize, w: usize, low: f64, high: f64) -> Vec<f32> {
    let mut edges = vec![0.0f32; h * w];
    let mut stack: Vec<usize> = Vec::new();
    for (p, &m) in nms.iter().enumerate() {
        if m > high {
            edges[p] = 1.0;
            stack.push(p);
        }
    }
    while let Some(p) = stack.pop() {
        let (y, x) = (p / w, p % w);
        for (dy, dx) in DIRECTIONS {
            let (yy, xx) = (y as isize + dy, x as isize + dx);
            if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                continue;
            }
            let q = yy as usize * w + xx as usize;
            if edges[q] == 0.0 && nms[q] > low {
                edges[q] = 1.0;
                stack.push(q);
            }
        }
    }
    edges
}

/// OpenCV's `COLOR_RGB2GRAY` on 8-bit pixels: fixed point
/// `(R * 4899 + G * 9617 + B * 1868 + 8192) >> 14` of the pixels rounded to 0..255.
pub fn gray_u8(rgb: &[f32], channels: usize) -> Vec<u8> {
    let to8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u32;
    rgb.chunks(channels)
        .map(|px| {
            if channels < 3 {
                return to8(px[0]) as u8;
            }
            ((to8(px[0]) * 4899 + to8(px[1]) * 9617 + to8(px[2]) * 1868 + 8192) >> 14) as u8
        })
        .collect()
}

/// Otsu's threshold of 8-bit values, as OpenCV's `THRESH_OTSU`: the `t`
/// maximising the between-class variance of `{v <= t}` and `{v > t}` (the
/// first such `t` on ties).
pub fn otsu_threshold(values: &[u8]) -> u8 {
    let mut hist = [0u64; 256];
    for &v in values {
        hist[v as usize] += 1;
    }
    let n = values.len() as f64;
    let total: f64 = hist.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0.0, 0.0, -1.0, 0u8);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = n - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (total - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// The stroke map of one picture (`[H, W, channels]`, 0..1): 1 where the 8-bit gray is at or
/// below `threshold` (Otsu's when it is 0 or 255), else 0.
pub fn binary_strokes(pixels: &[f32], channels: usize, threshold: u8) -> Vec<f32> {
    let gray = gray_u8(pixels, channels);
    let thresh = if threshold == 0 || threshold == 255 { otsu_threshold(&gray) } else { threshold };
    // THRESH_BINARY_INV: above the threshold -> 0, else max.
    gray.iter().map(|&g| if g > thresh { 0.0 } else { 1.0 }).collect()
}
