//! ImagePadForOutpaint, VAEEncodeForInpaint, EmptyImage, ImageBatch, LatentFromBatch, RepeatLatentBatch,
//! LatentComposite and LatentCompositeMasked through the registry, against values computed here in f64 from
//! ComfyUI's formulas (nodes.py and comfy_extras/nodes_mask.py @ 02217e36 / d9ac00e2), and end to end on the
//! tiny fixture checkpoint (its VAE downsamples by 2).

use crate::common::sd_tiny::full_vocab_checkpoint;
use crate::common::{call_kind, image_of, int, latent_of, latent_value, one, s};

use std::path::Path;
use std::sync::Arc;

use graph::exec::{Executor, NoProgress, NodeStatus};
use graph::{Image, Mask, ParamValue, Registry, Value};
use models::sampling::noise_mask::expand_noise_mask;
use nodes::payload::Latent;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn mask_of(v: &Value) -> Arc<Mask> {
    match v {
        Value::Mask(m) => m.clone(),
        v => panic!("not a mask: {v:?}"),
    }
}

fn image_value(img: Image) -> Value {
    Value::Image(Arc::new(img))
}

/// `n` values in `lo..hi`, deterministic.
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    gpu::testing::random(n, seed, lo, hi)
}

/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` of one plane, in f64.
fn bilinear_f64(src: &[f64], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let axis = |d: usize, n: usize, o: usize| {
        let real = ((d as f64 + 0.5) * n as f64 / o as f64 - 0.5).max(0.0);
        let i0 = (real.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, real - i0 as f64)
    };
    let mut out = vec![0.0; oh * ow];
    for y in 0..oh {
        let (y0, y1, ly) = axis(y, h, oh);
        for x in 0..ow {
            let (x0, x1, lx) = axis(x, w, ow);
            let top = (1.0 - lx) * src[y0 * w + x0] + lx * src[y0 * w + x1];
            let bot = (1.0 - lx) * src[y1 * w + x0] + lx * src[y1 * w + x1];
            out[y * ow + x] = (1.0 - ly) * top + ly * bot;
        }
    }
    out
}

// ---------------------------------------------------------------- images

#[test]
fn pad_for_outpaint_matches_comfyuis_feathering_formula() {
    let reg = nodes::builtin_registry();
    // Two 12x10 (w x h) RGB pictures, padded left 8 and bottom 16 with feathering 4.
    let (b, h, w) = (2, 10, 12);
    let img = Image::from_data(b, h, w, 3, values(b * h * w * 3, 21, 0.0, 1.0)).unwrap();
    let pad = |l: i64, t: i64, r: i64, bt: i64, f: i64| {
        let params =
            [("left", int(l)), ("top", int(t)), ("right", int(r)), ("bottom", int(bt)), ("feathering", int(f))];
        call_kind(&reg, "ImagePadForOutpaint", &[("image", image_value(img.clone()))], &params).unwrap()
    };
    for (l, t, r, bt, f) in
        [(8, 0, 0, 16, 4), (0, 8, 8, 0, 3), (8, 8, 8, 8, 2), (8, 0, 0, 0, 4), (8, 0, 0, 0, 5), (8, 0, 0, 0, 6)]
    {
        let out = pad(l, t, r, bt, f);
        let (image, mask) = (image_of(&out[0]), mask_of(&out[1]));
        let (nh, nw) = (h + (t + bt) as usize, w + (l + r) as usize);
        assert_eq!((image.batch, image.height, image.width, image.channels), (b, nh, nw, 3));
        assert_eq!((mask.batch, mask.height, mask.width), (1, nh, nw));
        let (l, t, f) = (l as usize, t as usize, f as usize);
        let mut ramp = 0;
        for y in 0..nh {
            for x in 0..nw {
                let inside = (t..t + h).contains(&y) && (l..l + w).contains(&x);
                // ComfyUI: d = min(dt, db, dl, dr), padded sides only; v = (f - d) / f; mask = v * v where d < f,
                // and only when 2 * f is less than both sides.
                let want = if !inside {
                    1.0
                } else {
                    let (i, j) = ((y - t) as f64, (x - l) as f64);
                    let (hf, wf) = (h as f64, w as f64);
                    let dt = if t != 0 { i } else { hf };
                    let db = if bt != 0 { hf - i } else { hf };
                    let dl = if l != 0 { j } else { wf };
                    let dr = if r != 0 { wf - j } else { wf };
                    let d = dt.min(db).min(dl).min(dr);
                    let fits = 2 * f < h && 2 * f < w;
                    if fits && d < f as f64 {
                        let v = (f as f64 - d) / f as f64;
                        v * v
                    } else {
                        0.0
                    }
                };
                assert_eq!(mask.data[y * nw + x], want as f32, "pad {l},{t},{r},{bt} f {f}: mask ({y}, {x})");
                ramp += (want > 0.0 && want < 1.0) as usize;
                for bi in 0..b {
                    for c in 0..3 {
                        let v = if inside { img.get(bi, y - t, x - l, c) } else { 0.5 };
                        assert_eq!(image.get(bi, y, x, c), v);
                    }
                }
            }
        }
        // Feathering 5 or 6 on a 10-row picture: 10 and 12 are not less than 10, so no ramp (ComfyUI's condition).
        assert_eq!(ramp == 0, f >= 5, "pad {l},{t},{r},{bt} f {f}: {ramp} ramp values");
    }
}

#[test]
fn empty_image_and_image_batch_follow_comfyui() {
    let reg = nodes::builtin_registry();
    let params = [("width", int(5)), ("height", int(3)), ("batch_size", int(2)), ("color", int(0x33_66_FE))];
    let empty = image_of(&one(&reg, "EmptyImage", &[], &params));
    assert_eq!((empty.batch, empty.height, empty.width, empty.channels), (2, 3, 5, 3));
    let want = [0x33 as f64 / 255.0, 0x66 as f64 / 255.0, 0xFE as f64 / 255.0].map(|v| v as f32);
    assert!(empty.data.chunks_exact(3).all(|px| px == want), "{:?}", &empty.data[..3]);
    // Defaults: 512x512 black.
    let default = image_of(&one(&reg, "EmptyImage", &[], &[]));
    assert_eq!((default.width, default.height, default.batch), (512, 512, 1));
    assert!(default.data.iter().all(|&v| v == 0.0));

    // image2 of another size: centre crop to image1's aspect (Python's round of the cut), then bilinear.
    let a = Image::from_data(1, 4, 6, 3, values(72, 1, 0.0, 1.0)).unwrap();
    let b = Image::from_data(2, 9, 7, 3, values(2 * 9 * 7 * 3, 2, 0.0, 1.0)).unwrap();
    let out = image_of(&one(
        &reg,
        "ImageBatch",
        &[("image1", image_value(a.clone())), ("image2", image_value(b.clone()))],
        &[],
    ));
    assert_eq!((out.batch, out.height, out.width, out.channels), (3, 4, 6, 3));
    assert_eq!(out.item(0), a.item(0));
    // 7x9 to the 6:4 aspect: old 7/9 < new 1.5, so y = round((9 - 9 * (7/9) / 1.5) / 2) = round(2.333) = 2 rows cut
    // from top and bottom: rows 2..7 (7x5), then bilinear to 6x4.
    let cut = ((9.0 - 9.0 * ((7.0 / 9.0) / 1.5)) / 2.0f64).round_ties_even() as usize;
    assert_eq!(cut, 2);
    let mut worst = 0.0f64;
    for bi in 0..2 {
        for c in 0..3 {
            let plane: Vec<f64> = (cut..9 - cut)
                .flat_map(|y| (0..7).map(move |x| (y, x)))
                .map(|(y, x)| b.get(bi, y, x, c) as f64)
                .collect();
            let want = bilinear_f64(&plane, 9 - 2 * cut, 7, 4, 6);
            for y in 0..4 {
                for x in 0..6 {
                    worst = worst.max((out.get(1 + bi, y, x, c) as f64 - want[y * 6 + x]).abs());
                }
            }
        }
    }
    eprintln!("ImageBatch resize: max abs err {worst:e} against the f64 reference");
    assert!(worst < 1e-6, "{worst}");
    // RGB + RGBA: image1 gains alpha 1; RGB + grey is refused, naming both inputs.
    let rgba = Image::from_data(1, 4, 6, 4, vec![0.25; 96]).unwrap();
    let out =
        image_of(&one(&reg, "ImageBatch", &[("image1", image_value(a.clone())), ("image2", image_value(rgba))], &[]));
    assert_eq!((out.channels, out.get(0, 1, 1, 3), out.get(0, 1, 1, 0)), (4, 1.0, a.get(0, 1, 1, 0)));
    let grey = Image::from_data(1, 4, 6, 1, vec![0.25; 24]).unwrap();
    let e =
        call_kind(&reg, "ImageBatch", &[("image1", image_value(a)), ("image2", image_value(grey))], &[]).unwrap_err();
    assert!(e.contains("image1 has 3 channels and image2 has 1"), "{e}");
}

// ---------------------------------------------------------------- latents

fn test_latent(shape: [usize; 4], seed: u64) -> Latent {
    Latent { shape, samples: values(shape.iter().product(), seed, -2.0, 2.0), noise_mask: None, batch_index: None }
}

#[test]
fn latent_from_batch_and_repeat_keep_comfyuis_items_and_masks() {
    let reg = nodes::builtin_registry();
    let mut l = test_latent([5, 4, 3, 2], 7);
    let item = 4 * 3 * 2;
    // Two masks for five latents: ComfyUI repeats them (0 1 0 1 0) before slicing.
    l.noise_mask = Some((vec![2, 1, 6, 4], values(48, 8, 0.0, 1.0)));
    let v = latent_value(l.clone());
    let take = |i: i64, n: i64| {
        call_kind(&reg, "LatentFromBatch", &[("samples", v.clone())], &[("batch_index", int(i)), ("length", int(n))])
    };
    let out = latent_of(&take(2, 3).unwrap()[0]);
    assert_eq!(out.shape, [3, 4, 3, 2]);
    assert_eq!(out.samples, l.samples[2 * item..5 * item]);
    let (ms, md) = out.noise_mask.clone().unwrap();
    let (_, src) = l.noise_mask.clone().unwrap();
    assert_eq!(ms, [3, 1, 6, 4]);
    assert_eq!(md, [&src[..24], &src[24..], &src[..24]].concat());
    // Negative from the end; the length stops at the end.
    let out = latent_of(&take(-2, 64).unwrap()[0]);
    assert_eq!((out.shape[0], &out.samples[..]), (2, &l.samples[3 * item..]));
    assert_eq!(out.noise_mask.clone().unwrap().1, [&src[24..], &src[..24]].concat());
    // Past the end (ComfyUI would quietly take the last): an error naming the param.
    for bad in [5, -6, 100] {
        let e = take(bad, 1).unwrap_err();
        assert!(e.contains("\"batch_index\"") && e.contains("outside a batch of 5"), "{bad}: {e}");
    }
    // Defaults: index 0, length 1.
    assert_eq!(latent_of(&one(&reg, "LatentFromBatch", &[("samples", v.clone())], &[])).samples, l.samples[..item]);

    // RepeatLatentBatch: the whole batch tiled; masks per latent tiled too, a single mask kept single.
    let out = latent_of(&one(&reg, "RepeatLatentBatch", &[("samples", v)], &[("amount", int(3))]));
    assert_eq!(out.shape, [15, 4, 3, 2]);
    assert_eq!(out.samples, [&l.samples[..], &l.samples[..], &l.samples[..]].concat());
    assert_eq!(out.noise_mask.clone().unwrap().0, [6, 1, 6, 4]);
    let mut single = l.clone();
    single.noise_mask = Some((vec![1, 1, 6, 4], values(24, 9, 0.0, 1.0)));
    let out =
        latent_of(&one(&reg, "RepeatLatentBatch", &[("samples", latent_value(single.clone()))], &[("amount", int(2))]));
    assert_eq!((out.shape[0], &out.noise_mask), (10, &single.noise_mask));
}

/// ComfyUI's LatentComposite in f64 (the reference this test compares with), from its source: x, y, feather
/// divided by 8; the block cut to the destination; the mask built by multiplying rows and columns in the
/// feather loop (Python slices); `from * mask + to * (1 - mask)`.
fn latent_composite_f64(to: &Latent, from: &Latent, x: usize, y: usize, feather: usize) -> Vec<f64> {
    let (x, y, f) = (x / 8, y / 8, feather / 8);
    let [bt, c, th, tw] = to.shape;
    let [bf, _, fh, fw] = from.shape;
    let mut out: Vec<f64> = to.samples.iter().map(|&v| v as f64).collect();
    if x >= tw || y >= th {
        return out;
    }
    let (h, w) = (fh.min(th - y), fw.min(tw - x));
    let mut mask = vec![1.0f64; h * w];
    let py = |n: usize, a: i64, b: i64| {
        let norm = |i: i64| if i < 0 { (i + n as i64).max(0) } else { i.min(n as i64) };
        norm(a) as usize..(norm(b).max(norm(a))) as usize
    };
    for t in 0..f as i64 {
        let k = (1.0 / f as f64) * (t + 1) as f64;
        let mut rows = Vec::new();
        if y != 0 {
            rows.extend(py(h, t, t + 1));
        }
        if y + h < th {
            rows.extend(py(h, h as i64 - 1 - t, h as i64 - t));
        }
        rows.iter().for_each(|&r| (0..w).for_each(|cc| mask[r * w + cc] *= k));
        let mut cols = Vec::new();
        if x != 0 {
            cols.extend(py(w, t, t + 1));
        }
        if x + w < tw {
            cols.extend(py(w, w as i64 - 1 - t, w as i64 - t));
        }
        cols.iter().for_each(|&cc| (0..h).for_each(|r| mask[r * w + cc] *= k));
    }
    for b in 0..bt {
        let fb = if bf == 1 { 0 } else { b };
        for ch in 0..c {
            for r in 0..h {
                for cc in 0..w {
                    let m = mask[r * w + cc];
                    let s = from.samples[((fb * c + ch) * fh + r) * fw + cc] as f64;
                    let i = ((b * c + ch) * th + y + r) * tw + x + cc;
                    out[i] = s * m + out[i] * (1.0 - m);
                }
            }
        }
    }
    out
}

#[test]
fn latent_composite_places_feathers_and_clips_as_comfyui() {
    let reg = nodes::builtin_registry();
    let to = test_latent([2, 4, 10, 12], 11);
    let from = test_latent([1, 4, 6, 5], 12);
    let mut to_masked = to.clone();
    to_masked.noise_mask = Some((vec![1, 1, 10, 12], vec![1.0; 120]));
    let run = |x: i64, y: i64, f: i64| {
        let inputs = [("samples_to", latent_value(to_masked.clone())), ("samples_from", latent_value(from.clone()))];
        latent_of(&one(&reg, "LatentComposite", &inputs, &[("x", int(x)), ("y", int(y)), ("feather", int(f))]))
    };
    let mut checked = 0;
    // Inside, against an edge (cut), at the origin (no ramp there), past the edge, and feathers wider than
    // the block (Python's slices wrap); x, y, feather not multiples of 8 round down as ComfyUI's // 8.
    for (x, y, f) in
        [(16, 8, 0), (16, 8, 16), (63, 39, 8), (0, 0, 24), (80, 56, 16), (96, 8, 8), (8, 8, 56), (23, 15, 17)]
    {
        let out = run(x, y, f);
        assert_eq!(out.shape, to.shape);
        assert_eq!(out.noise_mask, to_masked.noise_mask, "the destination's noise mask stays");
        let want = latent_composite_f64(&to, &from, x as usize, y as usize, f as usize);
        for (i, (g, r)) in out.samples.iter().zip(&want).enumerate() {
            assert!((*g as f64 - r).abs() <= 2e-6 * r.abs().max(1.0), "({x}, {y}) f {f}: {i}: {g} vs {r}");
        }
        checked += out.samples.iter().zip(&to.samples).filter(|(a, b)| a != b).count();
    }
    assert!(checked > 1000, "only {checked} values moved over all cases");
    // Placement by hand: at (16, 8) without feathering, latent (1, 2) .. (7, 7) is from's block, cut at the right.
    let out = run(16, 8, 0);
    assert_eq!(out.samples[((4 + 2) * 10 + 1) * 12 + 2], from.samples[(2 * 6) * 5]);
    assert_eq!(out.samples[((4 + 2) * 10 + 6) * 12 + 6], from.samples[(2 * 6 + 5) * 5 + 4]);
    assert_eq!(out.samples[((4 + 2) * 10 + 7) * 12 + 2], to.samples[((4 + 2) * 10 + 7) * 12 + 2]);
    // Bad inputs name the input.
    let six = latent_value(test_latent([1, 6, 6, 5], 1));
    let e = call_kind(&reg, "LatentComposite", &[("samples_to", latent_value(to.clone())), ("samples_from", six)], &[])
        .unwrap_err();
    assert!(e.contains("\"samples_from\" has 6 channels but \"samples_to\" has 4"), "{e}");
    let three = latent_value(test_latent([3, 4, 6, 5], 1));
    let e = call_kind(&reg, "LatentComposite", &[("samples_to", latent_value(to)), ("samples_from", three)], &[])
        .unwrap_err();
    assert!(e.contains("\"samples_from\" has a batch of 3"), "{e}");
}

#[test]
fn latent_composite_masked_blends_through_the_resized_mask() {
    let reg = nodes::builtin_registry();
    let dst = test_latent([2, 4, 8, 10], 31);
    let src = test_latent([1, 4, 4, 6], 32);
    let (mh, mw) = (3, 5);
    let mask = Mask { batch: 1, height: mh, width: mw, data: values(mh * mw, 33, 0.0, 1.0) };
    let run = |x: i64, y: i64, resize: bool, m: Option<Mask>| {
        let mut inputs = vec![("destination", latent_value(dst.clone())), ("source", latent_value(src.clone()))];
        if let Some(m) = m {
            inputs.push(("mask", Value::Mask(Arc::new(m))));
        }
        let params = [("x", int(x)), ("y", int(y)), ("resize_source", ParamValue::Bool(resize))];
        call_kind(&reg, "LatentCompositeMasked", &inputs, &params).map(|v| latent_of(&v[0]))
    };
    let m64: Vec<f64> = bilinear_f64(&mask.data.iter().map(|&v| v as f64).collect::<Vec<_>>(), mh, mw, 4, 6);
    let mut moved = 0;
    // ComfyUI: x, y clamped to the destination's size in pixels, divided by 8; the source cut at the edges.
    for (x, y) in [(0, 0), (40, 24), (79, 63), (500, 16), (17, 200)] {
        let out = run(x, y, false, Some(mask.clone())).unwrap();
        let (left, top) = ((x as usize).min(80) / 8, (y as usize).min(64) / 8);
        for b in 0..2 {
            for c in 0..4 {
                for r in 0..8 {
                    for cc in 0..10 {
                        let i = ((b * 4 + c) * 8 + r) * 10 + cc;
                        let d = dst.samples[i] as f64;
                        let inside = (top..top + 4).contains(&r) && (left..left + 6).contains(&cc);
                        let want = if inside {
                            let (sr, sc) = (r - top, cc - left);
                            let m = m64[sr * 6 + sc];
                            m * src.samples[((c * 4) + sr) * 6 + sc] as f64 + (1.0 - m) * d
                        } else {
                            d
                        };
                        let g = out.samples[i] as f64;
                        assert!((g - want).abs() <= 2e-6 * want.abs().max(1.0), "({x}, {y}) {i}: {g} vs {want}");
                        moved += (g != d) as usize;
                    }
                }
            }
        }
    }
    assert!(moved > 300, "{moved}");
    // No mask: the source replaces the destination exactly; resize_source stretches it over all of it.
    let out = run(0, 0, true, None).unwrap();
    let mut worst = 0.0f64;
    for c in 0..4 {
        let plane: Vec<f64> = src.samples[c * 24..(c + 1) * 24].iter().map(|&v| v as f64).collect();
        let want = bilinear_f64(&plane, 4, 6, 8, 10);
        for b in 0..2 {
            for (g, w) in out.samples[(b * 4 + c) * 80..][..80].iter().zip(&want) {
                worst = worst.max((*g as f64 - w).abs());
            }
        }
    }
    assert!(worst < 1e-6, "resize_source: {worst}");
    // An empty mask and other channel counts are errors naming the input.
    let e = run(0, 0, false, Some(Mask::zeros(1, 0, 3))).unwrap_err();
    assert!(e.contains("\"mask\" is empty"), "{e}");
    let e = call_kind(
        &reg,
        "LatentCompositeMasked",
        &[("destination", latent_value(dst.clone())), ("source", latent_value(test_latent([1, 3, 4, 6], 1)))],
        &[],
    )
    .unwrap_err();
    assert!(e.contains("\"source\" has 3 channels but \"destination\" has 4"), "{e}");
}

// ---------------------------------------------------------------- VAEEncodeForInpaint (tiny checkpoint)

struct Tiny {
    reg: Registry,
    model: Value,
    vae: Value,
    pos: Value,
    neg: Value,
    _dir: crate::common::TempDir,
}

fn tiny(name: &str) -> Tiny {
    let dir = crate::common::temp_dir(name);
    let ckpt = full_vocab_checkpoint(&dir);
    let reg = nodes::builtin_registry();
    let loaded =
        call_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", s(&ckpt.display().to_string()))]).unwrap();
    let (model, clip, vae) = (loaded[0].clone(), loaded[1].clone(), loaded[2].clone());
    let pos = one(&reg, "CLIPTextEncode", &[("clip", clip.clone())], &[("text", s("a red sun"))]);
    let neg = one(&reg, "CLIPTextEncode", &[("clip", clip)], &[("text", s(""))]);
    Tiny { reg, model, vae, pos, neg, _dir: dir }
}

/// VAEEncodeForInpaint's noise mask from ComfyUI's steps, in f64: bilinear to the picture, crop, round, conv2d
/// with ones(k, k) and padding ceil((k - 1) / 2), clamp, cut, round.
fn inpaint_mask_f64(mask: &Mask, ph: usize, pw: usize, f: usize, k: usize) -> (Vec<f64>, Vec<f64>, usize, usize) {
    let full = bilinear_f64(&mask.data.iter().map(|&v| v as f64).collect::<Vec<_>>(), mask.height, mask.width, ph, pw);
    let (h, w) = (ph / f * f, pw / f * f);
    let (y0, x0) = ((ph % f) / 2, (pw % f) / 2);
    let rounded: Vec<f64> = (0..h * w).map(|i| full[(i / w + y0) * pw + i % w + x0].round_ties_even()).collect();
    if k == 0 {
        return (rounded.clone(), rounded, h, w);
    }
    let p = ((k as f64 - 1.0) / 2.0).ceil() as i64;
    let mut grown = vec![0.0; h * w];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut sum = 0.0;
            for dy in 0..k as i64 {
                for dx in 0..k as i64 {
                    let (iy, ix) = (y + dy - p, x + dx - p);
                    if iy >= 0 && ix >= 0 && iy < h as i64 && ix < w as i64 {
                        sum += rounded[(iy * w as i64 + ix) as usize];
                    }
                }
            }
            grown[(y * w as i64 + x) as usize] = f64::clamp(sum, 0.0, 1.0).round_ties_even();
        }
    }
    (grown, rounded, h, w)
}

#[test]
fn vae_encode_for_inpaint_greys_grows_and_keeps_the_unmasked_latent() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let t = tiny("encode-for-inpaint");
    let reg = &t.reg;
    // The inpaint picture at 35x27 (odd: cropped to 34x26 by the factor 2) and its 160x120 alpha hole as the mask.
    let path = root().join("assets/sample_inpaint.png");
    let load = call_kind(reg, "LoadImage", &[], &[("image", s(&path.display().to_string()))]).unwrap();
    let params = [("upscale_method", s("area")), ("width", int(35)), ("height", int(27))];
    let pixels = image_of(&one(reg, "ImageScale", &[("image", load[0].clone())], &params));
    let mask = mask_of(&load[1]);
    for k in [6usize, 3, 0] {
        let inputs = [("pixels", Value::Image(pixels.clone())), ("vae", t.vae.clone()), ("mask", load[1].clone())];
        let enc = latent_of(&one(reg, "VAEEncodeForInpaint", &inputs, &[("grow_mask_by", int(k as i64))]));
        assert_eq!(enc.shape, [1, 4, 13, 17]);
        let (want, rounded, h, w) = inpaint_mask_f64(&mask, 27, 35, 2, k);
        assert_eq!((h, w), (26, 34));
        let (ms, md) = enc.noise_mask.clone().unwrap();
        assert_eq!(ms, [1, 1, 26, 34]);
        let off = md.iter().zip(&want).filter(|(a, b)| **a as f64 != **b).count();
        let ones = want.iter().filter(|&&v| v == 1.0).count();
        let hole = rounded.iter().filter(|&&v| v == 1.0).count();
        eprintln!("grow_mask_by {k}: {ones} of {} mask values 1 ({hole} before growing), {off} off", want.len());
        assert_eq!(off, 0);
        assert!(hole > 20 && (k < 2 || ones > hole + 10), "{k}: {hole} -> {ones}");

        // The latent is VAEEncode of the picture greyed where round(mask) is 1, computed here in f32 as ComfyUI.
        let mut greyed = Image::zeros(1, h, w, 3);
        for y in 0..h {
            for x in 0..w {
                let keep = 1.0 - rounded[y * w + x] as f32;
                for c in 0..3 {
                    greyed.data[(y * w + x) * 3 + c] = (pixels.get(0, y, x, c) - 0.5) * keep + 0.5;
                }
            }
        }
        let plain = latent_of(&one(reg, "VAEEncode", &[("pixels", image_value(greyed)), ("vae", t.vae.clone())], &[]));
        assert_eq!(plain.samples, enc.samples, "grow_mask_by {k}");
        if k == 6 {
            // Sensitivity: the ungreyed picture encodes differently.
            let raw = latent_of(&one(
                reg,
                "VAEEncode",
                &[("pixels", Value::Image(pixels.clone())), ("vae", t.vae.clone())],
                &[],
            ));
            let differ = raw.samples.iter().zip(&enc.samples).filter(|(a, b)| a != b).count();
            assert!(differ > 20, "{differ}");

            // KSampler keeps the unmasked latent bit for bit and repaints the masked part.
            let inputs = [
                ("model", t.model.clone()),
                ("positive", t.pos.clone()),
                ("negative", t.neg.clone()),
                ("latent_image", latent_value((*enc).clone())),
            ];
            let params = [("seed", int(5)), ("steps", int(2)), ("cfg", ParamValue::Float(4.0))];
            let out = latent_of(&one(reg, "KSampler", &inputs, &params));
            let m = expand_noise_mask(&ms, &md, enc.shape).unwrap();
            let (mut kept, mut moved, mut full) = (0, 0, 0);
            for (i, &mv) in m.iter().enumerate() {
                if mv == 0.0 {
                    assert_eq!(out.samples[i].to_bits(), enc.samples[i].to_bits(), "unmasked {i}");
                    kept += 1;
                } else if mv == 1.0 {
                    full += 1;
                    moved += ((out.samples[i] - enc.samples[i]).abs() > 1e-3) as usize;
                }
            }
            eprintln!("KSampler: {kept} unmasked values kept bit for bit, {moved} of {full} masked values moved");
            assert!(kept > m.len() / 2 && moved > full * 9 / 10, "{kept} kept, {moved} of {full} moved");
        }
    }
    // Bad inputs name the input.
    let grey = Image::from_data(1, 8, 8, 1, vec![0.5; 64]).unwrap();
    let run = |px: Image, m: Mask| {
        let inputs = [("pixels", image_value(px)), ("vae", t.vae.clone()), ("mask", Value::Mask(Arc::new(m)))];
        call_kind(reg, "VAEEncodeForInpaint", &inputs, &[]).unwrap_err()
    };
    assert!(run(grey, Mask::zeros(1, 8, 8)).contains("\"pixels\" has 1 channels"));
    assert!(run(Image::zeros(1, 8, 8, 3), Mask::zeros(1, 0, 0)).contains("\"mask\" is empty"));
    assert!(run(Image::zeros(2, 8, 8, 3), Mask::zeros(3, 8, 8)).contains("3 masks for 2 pictures"));
}

// ---------------------------------------------------------------- graphs

#[test]
fn outpaint_graph_runs_end_to_end() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("outpaint-graph");
    let ckpt = full_vocab_checkpoint(&dir);
    let image = root().join("assets/sample_inpaint.png");
    // A 24x16 picture padded 8 left and 16 right to 48x16, encoded for inpainting, sampled, decoded; and a
    // batch of it with a flat EmptyImage picture, saved as it is.
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "size": (kind: "ImageScale", inputs: {{ "image": "load.image" }}, params: {{ "width": 24, "height": 16, "upscale_method": "area" }}),
            "pad": (kind: "ImagePadForOutpaint", inputs: {{ "image": "size.image" }}, params: {{ "left": 8, "right": 16, "feathering": 4 }}),
            "enc": (kind: "VAEEncodeForInpaint", inputs: {{ "pixels": "pad.image", "vae": "ckpt.vae", "mask": "pad.mask" }}, params: {{ "grow_mask_by": 4 }}),
            "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a sun" }}),
            "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
            "sample": (kind: "KSampler",
                inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning", "negative": "neg.conditioning", "latent_image": "enc.latent" }},
                params: {{ "seed": 2, "steps": 2, "cfg": 3.0 }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
            "flat": (kind: "EmptyImage", params: {{ "width": 48, "height": 16, "color": 0xFF8000 }}),
            "both": (kind: "ImageBatch", inputs: {{ "image1": "dec.image", "image2": "flat.image" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "both.image" }}, params: {{ "filename_prefix": "outpaint" }}),
            "padded": (kind: "SaveImage", inputs: {{ "images": "pad.image" }}, params: {{ "filename_prefix": "padded" }}),
        }})"#
    );
    let reg = nodes::builtin_registry();
    let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
    let r = crate::common::run(&mut Executor::default(), &g, &dir);
    assert!(r.ok, "{:?}", r.errors());
    let padded = image::open(dir.join("padded_00001.png")).unwrap().to_rgb8();
    assert_eq!(padded.dimensions(), (48, 16));
    // The border is 0.5 grey: 127 after SaveImage's truncation.
    assert_eq!(padded.get_pixel(2, 5).0, [127, 127, 127]);
    assert_eq!(padded.get_pixel(45, 12).0, [127, 127, 127]);
    let a = image::open(dir.join("outpaint_00001.png")).unwrap().to_rgb8();
    let b = image::open(dir.join("outpaint_00002.png")).unwrap().to_rgb8();
    assert_eq!((a.dimensions(), b.dimensions()), ((48, 16), (48, 16)));
    assert!(b.pixels().all(|p| p.0 == [255, 128, 0]), "EmptyImage 0xFF8000 saves as 255, 128, 0");
    // The painted border is no longer flat grey.
    let grey = a.enumerate_pixels().filter(|(x, _, p)| (*x < 6 || *x > 34) && p.0 == [127, 127, 127]).count();
    assert!(grey < 20, "{grey} border pixels still grey");

    // A mask of another batch than the pictures is reported against the node.
    let bad = text.replace(r#""mask": "pad.mask""#, r#""mask": "m2.mask""#).replace(
        r#""flat": ("#,
        r#""m2": (kind: "ImageToMask", inputs: { "image": "two.image" }, params: { "channel": "red" }),
            "two": (kind: "ImageBatch", inputs: { "image1": "pad.image", "image2": "pad.image" }),
            "three": (kind: "ImageBatch", inputs: { "image1": "two.image", "image2": "pad.image" }),
            "flat": ("#,
    );
    let bad = bad
        .replace(r#""image": "two.image" }, params: { "channel""#, r#""image": "three.image" }, params: { "channel""#);
    let bad = bad.replace(
        r#""enc": (kind: "VAEEncodeForInpaint", inputs: { "pixels": "pad.image""#,
        r#""enc": (kind: "VAEEncodeForInpaint", inputs: { "pixels": "two.image""#,
    );
    let g = crate::common::validate_str(&bad, &reg).unwrap_or_else(|e| panic!("{e}"));
    let r = crate::common::run(&mut Executor::default(), &g, &dir);
    assert!(!r.ok);
    assert!(r.ids_with(NodeStatus::Failed).contains(&"enc"), "{:?}", r.errors());
    assert!(r.errors().iter().any(|e| e.contains("3 masks for 2 pictures")), "{:?}", r.errors());
}

#[test]
fn latent_batch_and_composite_graph_runs_end_to_end() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("latent-composite-graph");
    let ckpt = full_vocab_checkpoint(&dir);
    // Two 16x16 txt2img latents (EmptyLatentImage's 128 / 8; 32x32 pictures from the tiny VAE), the second pasted
    // into the first at latent (4, 2) with a 2-latent-pixel ramp (on its top and left: it reaches the other
    // edges), then a 2x2 zero latent pasted through an all-ones mask at latent row 8 (y 64 / 8), repeated 3
    // times, two copies taken back out, decoded and saved.
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a sun" }}),
            "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
            "empty": (kind: "EmptyLatentImage", params: {{ "width": 128, "height": 128, "batch_size": 2 }}),
            "first": (kind: "KSampler",
                inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning", "negative": "neg.conditioning", "latent_image": "empty.latent" }},
                params: {{ "seed": 4, "steps": 2, "cfg": 3.0 }}),
            "a": (kind: "LatentFromBatch", inputs: {{ "samples": "first.latent" }}, params: {{ "batch_index": 0 }}),
            "b": (kind: "LatentFromBatch", inputs: {{ "samples": "first.latent" }}, params: {{ "batch_index": -1 }}),
            "paste": (kind: "LatentComposite", inputs: {{ "samples_to": "a.latent", "samples_from": "b.latent" }}, params: {{ "x": 32, "y": 16, "feather": 16 }}),
            "hole": (kind: "EmptyImage", params: {{ "width": 8, "height": 8, "color": 0xFFFFFF }}),
            "hmask": (kind: "ImageToMask", inputs: {{ "image": "hole.image" }}, params: {{ "channel": "red" }}),
            "zeros": (kind: "EmptyLatentImage", params: {{ "width": 16, "height": 16 }}),
            "masked": (kind: "LatentCompositeMasked", inputs: {{ "destination": "paste.latent", "source": "zeros.latent", "mask": "hmask.mask" }}, params: {{ "x": 0, "y": 64 }}),
            "many": (kind: "RepeatLatentBatch", inputs: {{ "samples": "masked.latent" }}, params: {{ "amount": 3 }}),
            "pick": (kind: "LatentFromBatch", inputs: {{ "samples": "many.latent" }}, params: {{ "batch_index": 1, "length": 2 }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "pick.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "composite" }}),
            "dec_a": (kind: "VAEDecode", inputs: {{ "samples": "a.latent", "vae": "ckpt.vae" }}),
            "save_a": (kind: "SaveImage", inputs: {{ "images": "dec_a.image" }}, params: {{ "filename_prefix": "plain" }}),
        }})"#
    );
    let reg = nodes::builtin_registry();
    let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
    let r = crate::common::run(&mut Executor::default(), &g, &dir);
    assert!(r.ok, "{:?}", r.errors());
    let one = image::open(dir.join("composite_00001.png")).unwrap().to_rgb8();
    let two = image::open(dir.join("composite_00002.png")).unwrap().to_rgb8();
    let plain = image::open(dir.join("plain_00001.png")).unwrap().to_rgb8();
    assert_eq!((one.dimensions(), plain.dimensions()), ((32, 32), (32, 32)));
    assert!(!dir.join("composite_00003.png").exists(), "length 2 takes two");
    // The two picked copies are the same latent: the same picture.
    assert_eq!(one.as_raw(), two.as_raw());
    // The pasted corner (latent x >= 4, y >= 2: pixels x >= 8, y >= 4) differs from the plain picture, and the
    // top-left corner, away from the paste and the hole, matches it up to the decoder's reach.
    let diff = |x0: u32, x1: u32, y0: u32, y1: u32| {
        let mut d = 0u64;
        for y in y0..y1 {
            for x in x0..x1 {
                let (p, q) = (one.get_pixel(x, y).0, plain.get_pixel(x, y).0);
                d += (0..3).map(|c| (p[c] as i64 - q[c] as i64).unsigned_abs()).sum::<u64>();
            }
        }
        d as f64 / ((x1 - x0) * (y1 - y0) * 3) as f64
    };
    let (pasted, corner) = (diff(16, 32, 12, 28), diff(0, 4, 0, 2));
    eprintln!("composite graph: mean level difference {pasted:.1} in the paste, {corner:.1} in the far corner");
    assert!(pasted > 2.0 && pasted > 3.0 * corner, "paste {pasted}, corner {corner}");
}

/// Runs `graphs/<name>.ron` as shipped (the demo model) and returns the pictures it saved, in order.
fn shipped(name: &str) -> Vec<image::RgbImage> {
    let graphs = root().join("graphs");
    let text = std::fs::read_to_string(graphs.join(format!("{name}.ron"))).unwrap();
    let g = crate::common::validate_str(&text, &nodes::builtin_registry()).unwrap_or_else(|e| panic!("{e}"));
    let out = crate::common::temp_dir(&format!("shipped-{name}"));
    let opts = graph::exec::RunOptions {
        base_dir: graphs,
        out_dir: out.to_path_buf(),
        graph_text: text,
        progress: &NoProgress,
        cancel: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let r = Executor::default().run(&g, &opts);
    assert!(r.ok, "graphs/{name}.ron: {:?}", r.errors());
    r.nodes.iter().flat_map(|n| &n.outputs).map(|p| image::open(p).unwrap().to_rgb8()).collect()
}

/// The share of the pixels in `xs` x `ys` whose nearest demo colour is `colour`.
fn share(img: &image::RgbImage, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>, colour: &str) -> f64 {
    use crate::demo_model::{COLOURS, nearest_colour};
    let want = COLOURS.iter().position(|(n, _)| *n == colour).unwrap();
    let n = (xs.len() * ys.len()) as f64;
    let hits = ys
        .flat_map(|y| xs.clone().map(move |x| (x, y)))
        .filter(|&(x, y)| nearest_colour(img.get_pixel(x, y).0) == want);
    hits.count() as f64 / n
}

#[test]
fn example_outpaint_and_latent_composite_graphs_show_what_they_say() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    // outpaint.ron: the 16 new columns on the right are painted as the background (yellow), the square stays green.
    let pics = shipped("outpaint");
    assert_eq!(pics.len(), 2);
    assert_eq!((pics[0].dimensions(), pics[1].dimensions()), ((64, 64), (64, 64)));
    assert!(pics[1].pixels().all(|p| p.0 == [255, 255, 0]), "the EmptyImage is flat yellow");
    let (strip, square) = (share(&pics[0], 50..64, 0..64, "yellow"), share(&pics[0], 28..36, 28..36, "green"));
    eprintln!("outpaint: new strip {:.0}% yellow, square's middle {:.0}% green", 100.0 * strip, 100.0 * square);
    assert!(strip > 0.8 && square > 0.6, "strip {strip:.2}, square {square:.2}");

    // latent_composite.ron: the circle on the left, the square on the right with the circle picture's top-left
    // quadrant (blue) pasted over its own.
    let pics = shipped("latent_composite");
    assert_eq!(pics.len(), 1);
    let p = &pics[0];
    assert_eq!(p.dimensions(), (128, 64));
    let circle = share(p, 28..36, 28..36, "red");
    let left_bg = share(p, 0..8, 56..64, "blue");
    let pasted = share(p, 64..76, 0..12, "blue");
    let square = share(p, 92..100, 28..36, "white");
    eprintln!(
        "latent_composite: circle {:.0}% red, its background {:.0}% blue, pasted corner {:.0}% blue, the square's \
         middle {:.0}% white",
        100.0 * circle,
        100.0 * left_bg,
        100.0 * pasted,
        100.0 * square
    );
    assert!(circle > 0.5 && left_bg > 0.5 && pasted > 0.5 && square > 0.5);
}

/// ComfyUI's `batch_index`: a latent taken out of a batch (LatentFromBatch), or repeated (RepeatLatentBatch),
/// samples with the noise its item had in the whole batch, so one picture of a batch can be made again alone.
#[test]
fn a_latent_taken_from_a_batch_samples_as_it_did_in_the_batch() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let t = tiny("batch-index");
    let reg = &t.reg;
    let sample = |latent: Value| {
        let inputs = [
            ("model", t.model.clone()),
            ("positive", t.pos.clone()),
            ("negative", t.neg.clone()),
            ("latent_image", latent),
        ];
        let params =
            [("seed", int(5)), ("steps", int(2)), ("cfg", ParamValue::Float(3.0)), ("sampler_name", s("euler"))];
        latent_of(&one(reg, "KSampler", &inputs, &params))
    };
    let empty = one(reg, "EmptyLatentImage", &[], &[("width", int(32)), ("height", int(32)), ("batch_size", int(3))]);
    let whole = sample(empty.clone());
    let item = whole.samples.len() / 3;
    let third =
        one(reg, "LatentFromBatch", &[("samples", empty.clone())], &[("batch_index", int(2)), ("length", int(1))]);
    assert_eq!(latent_of(&third).batch_index, Some(vec![2]));
    let alone = sample(third.clone());
    assert_eq!(alone.samples, whole.samples[2 * item..], "item 2 alone, bit for bit");
    assert_eq!(alone.batch_index, Some(vec![2]), "KSampler keeps the batch_index");
    // Repeated twice: indices 2 and 3 (offset max - min + 1), i.e. batch item 2 and a fresh item 3.
    let twice = one(reg, "RepeatLatentBatch", &[("samples", third)], &[("amount", int(2))]);
    assert_eq!(latent_of(&twice).batch_index, Some(vec![2, 3]));
    let both = sample(twice);
    assert_eq!(both.samples[..item], whole.samples[2 * item..]);
    assert_ne!(both.samples[item..], whole.samples[2 * item..], "item 3 has noise of its own");
    // Without a batch_index the single latent samples as item 0 of a batch.
    let plain =
        sample(one(reg, "EmptyLatentImage", &[], &[("width", int(32)), ("height", int(32)), ("batch_size", int(1))]));
    assert_eq!(plain.samples, whole.samples[..item]);
}
