//! Pasting one `[B, C, H, W]` batch of planes (latents) into another, as ComfyUI's LatentComposite
//! (`nodes.py` @ 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e) and LatentCompositeMasked
//! (`comfy_extras/nodes_mask.py` `composite` @ d9ac00e2187d30b734141de7c8c1150cd190bdd0) do it: positions
//! are in planes' pixels here (the nodes divide picture pixels by 8), arithmetic in f32 in ComfyUI's order.
//! The maths is linear, so it applies to latents whether or not they carry the VAE's scale.

use pixels::Mask;

use super::resample::{Method, resize_mask};

/// `[B, C, H, W]` and its values.
pub type Planes<'a> = ([usize; 4], &'a [f32]);

fn check(name: &str, (shape, data): Planes<'_>) -> Result<(), String> {
    let want = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if want != Some(data.len()) {
        return Err(format!("input \"{name}\" has {} values but its shape {shape:?} needs more or fewer", data.len()));
    }
    Ok(())
}

fn same_channels(to: &str, from: &str, a: [usize; 4], b: [usize; 4]) -> Result<(), String> {
    if a[1] != b[1] {
        return Err(format!("input \"{from}\" has {} channels but \"{to}\" has {}: they must match", b[1], a[1]));
    }
    Ok(())
}

/// Python's `seq[start:end]` on a sequence of `len`: negative indices count from the end, both are
/// clamped into the sequence, an end before the start is empty.
fn py_slice(len: usize, start: i64, end: i64) -> std::ops::Range<usize> {
    let n = len as i64;
    let norm = |i: i64| (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
    let (a, b) = (norm(start), norm(end));
    a..b.max(a)
}

/// LatentComposite's feathering mask for a pasted block of `h` x `w` (already cut to the destination) at
/// `(x, y)` in a destination of `to_h` x `to_w`, as ComfyUI builds it: ones, then for `t` in `0..feather`
/// the row `t` (if `y != 0`), the row `h - 1 - t` (if the block ends above the bottom), the column `t`
/// (if `x != 0`) and the column `w - 1 - t` (if it ends left of the right edge) are multiplied by
/// `(1 / feather) * (t + 1)`, with Python's slices (a feather wider than the block wraps around as they do).
pub fn composite_feather_mask(
    h: usize,
    w: usize,
    (x, y): (usize, usize),
    (to_h, to_w): (usize, usize),
    feather: usize,
) -> Vec<f32> {
    let mut mask = vec![1.0f32; h * w];
    for t in 0..feather as i64 {
        let f = ((1.0 / feather as f64) * (t + 1) as f64) as f32;
        let (hh, ww) = (h as i64, w as i64);
        let mut rows = |r: std::ops::Range<usize>| {
            for row in r {
                mask[row * w..(row + 1) * w].iter_mut().for_each(|v| *v *= f);
            }
        };
        if y != 0 {
            rows(py_slice(h, t, t + 1));
        }
        if y + h < to_h {
            rows(py_slice(h, hh - 1 - t, hh - t));
        }
        let mut cols = |c: std::ops::Range<usize>| {
            for col in c {
                (0..h).for_each(|row| mask[row * w + col] *= f);
            }
        };
        if x != 0 {
            cols(py_slice(w, t, t + 1));
        }
        if x + w < to_w {
            cols(py_slice(w, ww - 1 - t, ww - t));
        }
    }
    mask
}

/// LatentComposite: `from` pasted into `to` with its top-left corner at `(x, y)` (planes' pixels), cut at the
/// right and bottom edges; with `feather > 0` blended as `from * mask + to * (1 - mask)` with
/// [`composite_feather_mask`]. A `from` batch of 1 goes into every item; otherwise the batches must match.
/// A corner at or past the right or bottom edge pastes nothing (ComfyUI fails on some of those).
pub fn latent_composite(
    to: Planes<'_>,
    from: Planes<'_>,
    (x, y): (usize, usize),
    feather: usize,
) -> Result<Vec<f32>, String> {
    check("samples_to", to)?;
    check("samples_from", from)?;
    let ([bt, c, th, tw], [bf, _, fh, fw]) = (to.0, from.0);
    same_channels("samples_to", "samples_from", to.0, from.0)?;
    if bf != bt && bf != 1 {
        return Err(format!(
            "input \"samples_from\" has a batch of {bf} and \"samples_to\" {bt}: they must match or samples_from be 1"
        ));
    }
    let mut out = to.1.to_vec();
    if x >= tw || y >= th {
        return Ok(out);
    }
    let (h, w) = (fh.min(th - y), fw.min(tw - x));
    let mask = (feather > 0).then(|| composite_feather_mask(h, w, (x, y), (th, tw), feather));
    for b in 0..bt {
        let fb = if bf == 1 { 0 } else { b };
        for ch in 0..c {
            for r in 0..h {
                let src = &from.1[((fb * c + ch) * fh + r) * fw..][..w];
                let at = ((b * c + ch) * th + y + r) * tw + x;
                let dst = &mut out[at..at + w];
                match &mask {
                    None => dst.copy_from_slice(src),
                    Some(m) => {
                        for ((d, &s), &mv) in dst.iter_mut().zip(src).zip(&m[r * w..(r + 1) * w]) {
                            *d = s * mv + *d * (1.0 - mv);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `comfy.utils.repeat_to_batch_size` on items of `item` values: the first `batch` items of the batch
/// repeated as often as needed.
fn repeat_to_batch(data: &[f32], item: usize, batch: usize) -> Vec<f32> {
    if item == 0 {
        return Vec::new();
    }
    data.chunks_exact(item).cycle().take(batch).flatten().copied().collect()
}

/// LatentCompositeMasked (ComfyUI's `composite` with `multiplier` 8 for latents): `source` (resized to
/// `destination` first when `resize_source`, bilinear; repeated or cut to its batch) pasted with its corner
/// at `(x / multiplier, y / multiplier)` after clamping `x`, `y` to the destination's size in picture
/// pixels, cut at the edges, blended as `mask * source + (1 - mask) * destination` with `mask` resized
/// bilinearly to the source's size and repeated or cut to the batch (all ones without one).
pub fn latent_composite_masked(
    destination: Planes<'_>,
    source: Planes<'_>,
    (x, y): (usize, usize),
    mask: Option<&Mask>,
    multiplier: usize,
    resize_source: bool,
) -> Result<Vec<f32>, String> {
    check("destination", destination)?;
    check("source", source)?;
    same_channels("destination", "source", destination.0, source.0)?;
    let [b, c, dh, dw] = destination.0;
    let [sb, _, mut sh, mut sw] = source.0;
    let mut src = source.1.to_vec();
    if resize_source && (sh, sw) != (dh, dw) {
        let planes = Mask { batch: sb * c, height: sh, width: sw, data: src };
        src = resize_mask(&planes, dw, dh, Method::Bilinear).map_err(|e| format!("resizing \"source\": {e}"))?.data;
        (sh, sw) = (dh, dw);
    }
    let src = repeat_to_batch(&src, c * sh * sw, b);
    let m = match mask {
        None => None,
        Some(m) => {
            if m.batch == 0 || m.height == 0 || m.width == 0 {
                return Err(format!("input \"mask\" is empty ({} masks of {}x{})", m.batch, m.width, m.height));
            }
            if m.data.len() != m.batch * m.height * m.width {
                return Err(format!("input \"mask\" has {} values but its shape {m:?} needs more", m.data.len()));
            }
            if sh == 0 || sw == 0 {
                None
            } else {
                let r = resize_mask(m, sw, sh, Method::Bilinear).map_err(|e| format!("resizing \"mask\": {e}"))?;
                Some(repeat_to_batch(&r.data, sh * sw, b))
            }
        }
    };
    let mult = multiplier.max(1);
    let (left, top) = (x.min(dw.saturating_mul(mult)) / mult, y.min(dh.saturating_mul(mult)) / mult);
    let (vh, vw) = (sh.min(dh - top), sw.min(dw - left));
    let mut out = destination.1.to_vec();
    for bi in 0..b {
        for ch in 0..c {
            for r in 0..vh {
                let s = &src[((bi * c + ch) * sh + r) * sw..][..vw];
                let at = ((bi * c + ch) * dh + top + r) * dw + left;
                let dst = &mut out[at..at + vw];
                match &m {
                    None => {
                        for (d, &sv) in dst.iter_mut().zip(s) {
                            *d = 1.0 * sv + 0.0 * *d;
                        }
                    }
                    Some(m) => {
                        let mr = &m[(bi * sh + r) * sw..][..vw];
                        for ((d, &sv), &mv) in dst.iter_mut().zip(s).zip(mr) {
                            *d = mv * sv + (1.0 - mv) * *d;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|v| v as f32 * scale).collect()
    }

    /// ComfyUI's LatentComposite feathering loop in f64, written from its source with Python's slices
    /// (the list below is what `mask[:, :, a:b]` touches for `a = h - 1 - t`, `b = h - t`).
    fn feather_reference(h: usize, w: usize, x: usize, y: usize, th: usize, tw: usize, f: usize) -> Vec<f64> {
        let touched = |n: usize, a: i64, b: i64| -> Vec<usize> {
            let idx: Vec<i64> = (0..n as i64).collect();
            let norm = |i: i64| if i < 0 { (i + n as i64).max(0) } else { i.min(n as i64) };
            let (a, b) = (norm(a), norm(b));
            idx.into_iter().filter(|&i| i >= a && i < b).map(|i| i as usize).collect()
        };
        let mut m = vec![1.0f64; h * w];
        for t in 0..f as i64 {
            let k = (1.0 / f as f64) * (t + 1) as f64;
            let mut rows = vec![];
            if y != 0 {
                rows.extend(touched(h, t, t + 1));
            }
            if y + h < th {
                rows.extend(touched(h, h as i64 - 1 - t, h as i64 - t));
            }
            for r in rows {
                (0..w).for_each(|c| m[r * w + c] *= k);
            }
            let mut cols = vec![];
            if x != 0 {
                cols.extend(touched(w, t, t + 1));
            }
            if x + w < tw {
                cols.extend(touched(w, w as i64 - 1 - t, w as i64 - t));
            }
            for c in cols {
                (0..h).for_each(|r| m[r * w + c] *= k);
            }
        }
        m
    }

    #[test]
    fn feather_mask_ramps_as_comfyui() {
        // A 6x8 block at (2, 1) inside 16x16 with feather 3: rows 0, 1, 2 get 1/3, 2/3, 1 from the top and the
        // same from the bottom; the corner multiplies row and column: (1/3)^2.
        let m = composite_feather_mask(6, 8, (2, 1), (16, 16), 3);
        let third = (1.0f64 / 3.0) as f32;
        assert_eq!(m[0], third * third);
        assert_eq!(m[3 * 8 + 4], 1.0);
        assert_eq!(m[3 * 8], third);
        assert_eq!(m[3 * 8 + 7], third);
        assert_eq!(m[5 * 8 + 4], third);
        assert_eq!(m[4 * 8 + 4], ((1.0f64 / 3.0) * 2.0) as f32);
        // Against the f64 loop (products of up to a few factors: within f32 rounding), including blocks at the
        // origin (no ramp there), blocks reaching the edge, and feathers wider than the block (Python's
        // slices wrap around).
        for (h, w, x, y, th, tw, f) in [
            (6, 8, 2, 1, 16, 16, 3),
            (6, 8, 0, 0, 16, 16, 3),
            (4, 4, 12, 12, 16, 16, 2),
            (3, 5, 1, 2, 10, 10, 5),
            (2, 2, 1, 1, 8, 8, 7),
            (5, 3, 3, 0, 12, 6, 4),
        ] {
            let got = composite_feather_mask(h, w, (x, y), (th, tw), f);
            let want = feather_reference(h, w, x, y, th, tw, f);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - r).abs() <= 1e-6 * r.abs(), "{h}x{w} at ({x}, {y}) f {f}: {i}: {g} vs {r}");
            }
        }
        // Python's wrap-around: a 2-row block with feather 5 at y > 0, ending above the bottom. Row 0 gets the
        // top factor for t = 0 (1/5), the bottom factor for t = 1 (slice [0:1]: 2/5) and for t = 3 (slice
        // [-2:-1] = row 0 again: 4/5); row 1 the bottom's t = 0 (1/5) and the top's t = 1 (2/5).
        let m = composite_feather_mask(2, 1, (0, 1), (8, 1), 5);
        assert_eq!(m[0], 1.0 * 0.2f32 * 0.4f32 * 0.8f32);
        assert_eq!(m[1], 1.0 * 0.2f32 * 0.4f32);
    }

    #[test]
    fn composite_places_and_clips_at_the_edges() {
        // to: 2 x 1 x 5 x 6 of -1 - i; from: 1 x 1 x 3 x 4 of i / 10, pasted at (4, 3): 2 columns and 2 rows fit.
        let to = seq(60, -1.0).iter().map(|v| v - 1.0).collect::<Vec<_>>();
        let from = seq(12, 0.1);
        let out = latent_composite(([2, 1, 5, 6], &to), ([1, 1, 3, 4], &from), (4, 3), 0).unwrap();
        for b in 0..2 {
            for r in 0..5 {
                for c in 0..6 {
                    let i = (b * 5 + r) * 6 + c;
                    let want = if r >= 3 && c >= 4 { from[(r - 3) * 4 + (c - 4)] } else { to[i] };
                    assert_eq!(out[i], want, "({b}, {r}, {c})");
                }
            }
        }
        // Past the edge: nothing pasted. Batches that cannot broadcast and other channel counts are refused.
        assert_eq!(latent_composite(([2, 1, 5, 6], &to), ([1, 1, 3, 4], &from), (6, 0), 0).unwrap(), to);
        let e = latent_composite(([1, 1, 5, 12], &to), ([2, 1, 3, 2], &from), (0, 0), 0).unwrap_err();
        assert!(e.contains("\"samples_from\" has a batch of 2"), "{e}");
        let e = latent_composite(([1, 2, 5, 6], &to), ([1, 1, 3, 4], &from), (0, 0), 0).unwrap_err();
        assert!(e.contains("\"samples_from\" has 1 channels but \"samples_to\" has 2"), "{e}");
        // Feathered: from * m + to * (1 - m), in f32.
        let out = latent_composite(([2, 1, 5, 6], &to), ([1, 1, 3, 4], &from), (1, 1), 2).unwrap();
        let m = composite_feather_mask(3, 4, (1, 1), (5, 6), 2);
        for r in 0..3 {
            for c in 0..4 {
                let i = (5 + 1 + r) * 6 + 1 + c; // batch item 1
                let (s, d, mv) = (from[r * 4 + c], to[i], m[r * 4 + c]);
                assert_eq!(out[i], s * mv + d * (1.0 - mv));
                let r64 = s as f64 * mv as f64 + d as f64 * (1.0 - mv as f64);
                assert!((out[i] as f64 - r64).abs() < 1e-6 * r64.abs().max(1.0), "{} vs {r64}", out[i]);
            }
        }
        assert!(m.iter().any(|&v| v < 1.0) && m.contains(&1.0));
    }

    #[test]
    fn composite_masked_clamps_resizes_and_blends() {
        // destination 1 x 2 x 4 x 4 of 10 + i; source 1 x 2 x 2 x 3 of i. At x = 20 (20 // 8 = 2), y = 100
        // (clamped to 4 * 8 = 32: top 4, nothing visible).
        let dst = seq(32, 1.0).iter().map(|v| v + 10.0).collect::<Vec<_>>();
        let src = seq(12, 1.0);
        let out =
            latent_composite_masked(([1, 2, 4, 4], &dst), ([1, 2, 2, 3], &src), (20, 100), None, 8, false).unwrap();
        assert_eq!(out, dst);
        // y = 15 -> row 1; x = 20 -> column 2: 2 of the 3 columns fit.
        let out =
            latent_composite_masked(([1, 2, 4, 4], &dst), ([1, 2, 2, 3], &src), (20, 15), None, 8, false).unwrap();
        for ch in 0..2 {
            for r in 0..4 {
                for c in 0..4 {
                    let i = (ch * 4 + r) * 4 + c;
                    let inside = (1..3).contains(&r) && c >= 2;
                    let want = if inside { src[(ch * 2 + r - 1) * 3 + c - 2] } else { dst[i] };
                    assert_eq!(out[i], want, "({ch}, {r}, {c})");
                }
            }
        }
        // A mask of 1x2 resized to the 2x3 source (bilinear) and blended; a batch of 2 destinations repeats the
        // source and the mask.
        let dst2 = [dst.clone(), dst.iter().map(|v| -v).collect()].concat();
        let mask = Mask { batch: 1, height: 1, width: 2, data: vec![0.0, 1.0] };
        let out = latent_composite_masked(([2, 2, 4, 4], &dst2), ([1, 2, 2, 3], &src), (0, 0), Some(&mask), 8, false)
            .unwrap();
        let mr = resize_mask(&mask, 3, 2, Method::Bilinear).unwrap().data;
        assert_eq!(&mr[..3], [0.0, 0.5, 1.0]);
        for b in 0..2 {
            for ch in 0..2 {
                for r in 0..2 {
                    for c in 0..3 {
                        let i = ((b * 2 + ch) * 4 + r) * 4 + c;
                        let (m, s, d) = (mr[r * 3 + c], src[(ch * 2 + r) * 3 + c], dst2[i]);
                        assert_eq!(out[i], m * s + (1.0 - m) * d, "({b}, {ch}, {r}, {c})");
                    }
                }
            }
        }
        // resize_source: the source stretched to the destination first (so it covers it from (0, 0)).
        let out = latent_composite_masked(([1, 2, 4, 4], &dst), ([1, 2, 2, 3], &src), (8, 8), None, 8, true).unwrap();
        let planes = Mask { batch: 2, height: 2, width: 3, data: src.clone() };
        let big = resize_mask(&planes, 4, 4, Method::Bilinear).unwrap().data;
        for ch in 0..2 {
            for r in 0..4 {
                for c in 0..4 {
                    let i = (ch * 4 + r) * 4 + c;
                    let want = if r >= 1 && c >= 1 { big[(ch * 4 + r - 1) * 4 + c - 1] } else { dst[i] };
                    assert_eq!(out[i], want, "({ch}, {r}, {c})");
                }
            }
        }
        // Errors name the input.
        let e =
            latent_composite_masked(([1, 2, 4, 4], &dst), ([1, 1, 4, 3], &src), (0, 0), None, 8, false).unwrap_err();
        assert!(e.contains("\"source\" has 1 channels but \"destination\" has 2"), "{e}");
        let empty = Mask::zeros(1, 0, 4);
        let e = latent_composite_masked(([1, 2, 4, 4], &dst), ([1, 2, 2, 3], &src), (0, 0), Some(&empty), 8, false)
            .unwrap_err();
        assert!(e.contains("\"mask\" is empty"), "{e}");
    }
}
