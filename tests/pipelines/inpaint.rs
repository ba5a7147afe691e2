//! Inpainting and the small latent/mask nodes: SetLatentNoiseMask + KSampler on
//! the tiny fixture checkpoint (the unmasked latent survives bit for bit, the
//! masked part is resampled, the decoded picture changes only around the hole),
//! LatentUpscale/LatentUpscaleBy against image_ops, ImageToMask, and the errors.

use crate::common::sd_tiny::full_vocab_checkpoint;
use crate::common::{call_kind, image_of, latent_of, latent_value, one, s};

use std::path::Path;
use std::sync::Arc;

use graph::exec::{Executor, NodeStatus};
use graph::{Image, Mask, ParamValue, Registry, Value};
use models::image_ops::{self, Method};
use models::sampling::noise_mask::expand_noise_mask;
use nodes::payload::Latent;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn mask_value(batch: usize, height: usize, width: usize, data: Vec<f32>) -> Value {
    Value::Mask(Arc::new(Mask { batch, height, width, data }))
}

/// The loaded tiny checkpoint, two prompts, and the inpaint picture scaled to
/// `w` x `h` and encoded (the tiny VAE downsamples by 2), with its mask.
struct Setup {
    reg: Registry,
    model: Value,
    vae: Value,
    pos: Value,
    neg: Value,
    encoded: Value,
    mask: Value,
}

fn setup(name: &str, w: i64, h: i64) -> Setup {
    let dir = crate::common::temp_dir(name);
    let ckpt = full_vocab_checkpoint(&dir);
    let reg = nodes::builtin_registry();
    let loaded =
        call_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", s(&ckpt.display().to_string()))]).unwrap();
    let (model, clip, vae) = (loaded[0].clone(), loaded[1].clone(), loaded[2].clone());
    let pos = one(&reg, "CLIPTextEncode", &[("clip", clip.clone())], &[("text", s("a red sun"))]);
    let neg = one(&reg, "CLIPTextEncode", &[("clip", clip)], &[("text", s(""))]);
    let path = root().join("assets/sample_inpaint.png");
    let load = call_kind(&reg, "LoadImage", &[], &[("image", s(&path.display().to_string()))]).unwrap();
    let small = one(
        &reg,
        "ImageScale",
        &[("image", load[0].clone())],
        &[("upscale_method", s("area")), ("width", ParamValue::Int(w.into())), ("height", ParamValue::Int(h.into()))],
    );
    let encoded = one(&reg, "VAEEncode", &[("pixels", small), ("vae", vae.clone())], &[]);
    Setup { reg, model, vae, pos, neg, encoded, mask: load[1].clone() }
}

impl Setup {
    fn sample(&self, latent: &Value, sampler: &str, denoise: f64, seed: i64) -> Result<Value, String> {
        let inputs = [
            ("model", self.model.clone()),
            ("positive", self.pos.clone()),
            ("negative", self.neg.clone()),
            ("latent_image", latent.clone()),
        ];
        let params = [
            ("seed", ParamValue::Int(seed.into())),
            ("steps", ParamValue::Int(2)),
            ("cfg", ParamValue::Float(4.0)),
            ("sampler_name", s(sampler)),
            ("denoise", ParamValue::Float(denoise)),
        ];
        call_kind(&self.reg, "KSampler", &inputs, &params).map(|mut v| v.remove(0))
    }

    fn decode(&self, latent: &Value) -> Arc<Image> {
        image_of(&one(&self.reg, "VAEDecode", &[("samples", latent.clone()), ("vae", self.vae.clone())], &[]))
    }
}

#[test]
fn unmasked_latent_is_kept_bit_for_bit_and_the_masked_part_is_resampled() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let t = setup("inpaint-latent", 32, 24);
    let input = latent_of(&t.encoded);
    assert_eq!(input.shape, [1, 4, 12, 16]);
    let masked = one(&t.reg, "SetLatentNoiseMask", &[("samples", t.encoded.clone()), ("mask", t.mask.clone())], &[]);
    // The mask keeps its picture size on the latent; KSampler resizes it.
    let (mask_shape, data) = latent_of(&masked).noise_mask.clone().unwrap();
    assert_eq!(mask_shape, [1, 1, 120, 160]);
    let m = expand_noise_mask(&mask_shape, &data, latent_of(&masked).shape).unwrap();
    let kept = m.iter().filter(|&&v| v == 0.0).count();
    let full = m.iter().filter(|&&v| v == 1.0).count();
    assert!(kept > m.len() / 2 && full > 0, "mask: {kept} kept, {full} fully masked of {}", m.len());

    // ddim takes its own inpaint noise; heun calls the model twice per step; euler_ancestral adds noise.
    for sampler in ["euler", "euler_ancestral", "heun", "ddim"] {
        let out = t.sample(&masked, sampler, 1.0, 3).unwrap();
        let out = latent_of(&out);
        assert_eq!(out.shape, input.shape, "{sampler}");
        assert!(out.noise_mask.is_some(), "{sampler}: the mask stays on the latent");
        let mut changed_full = 0;
        for (i, &mv) in m.iter().enumerate() {
            let (a, b) = (out.samples[i], input.samples[i]);
            if mv == 0.0 {
                assert_eq!(a.to_bits(), b.to_bits(), "{sampler}: unmasked element {i} changed: {a} vs {b}");
            } else if mv == 1.0 && (a - b).abs() > 1e-3 {
                changed_full += 1;
            }
        }
        assert!(changed_full > full * 9 / 10, "{sampler}: only {changed_full} of {full} masked elements changed");
        assert!(out.samples.iter().all(|v| v.is_finite()), "{sampler}");
    }

    // Without a mask every element is resampled.
    let plain = latent_of(&t.sample(&t.encoded, "euler", 1.0, 3).unwrap());
    let same = plain.samples.iter().zip(&input.samples).filter(|(a, b)| a == b).count();
    assert!(same < input.samples.len() / 100, "{same} elements unchanged without a mask");
    // A partial denoise inpaints too.
    let half = latent_of(&t.sample(&masked, "dpmpp_2m", 0.5, 3).unwrap());
    for (i, &mv) in m.iter().enumerate() {
        if mv == 0.0 {
            assert_eq!(half.samples[i].to_bits(), input.samples[i].to_bits());
        }
    }
    assert_ne!(half.samples, input.samples);
}

#[test]
fn decoded_inpaint_keeps_pixels_far_from_the_hole() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let t = setup("inpaint-decode", 48, 36);
    let masked = one(&t.reg, "SetLatentNoiseMask", &[("samples", t.encoded.clone()), ("mask", t.mask.clone())], &[]);
    let zero = t.sample(&masked, "euler", 0.0, 1).unwrap();
    // denoise 0 hands the input through, mask and all.
    assert_eq!(*latent_of(&zero), *latent_of(&masked));
    assert_eq!((t.decode(&zero).width, t.decode(&zero).height), (48, 36));
    // The hole is a disc of radius 18 around (112, 34) in the 160x120 original: radius 5.4 around (33.6, 10.2)
    // here. "Far" is 10 pixels beyond its edge, out of reach of the decoder's convolutions.
    let dist = |x: usize, y: usize| ((x as f64 + 0.5 - 33.6).powi(2) + (y as f64 + 0.5 - 10.2).powi(2)).sqrt();
    // Mean absolute difference of two pictures in the hole and far from it.
    let diffs = |a: &Image, b: &Image| {
        let (mut hole, mut far) = (Vec::new(), Vec::new());
        for y in 0..a.height {
            for x in 0..a.width {
                let d = (0..3).map(|c| (a.get(0, y, x, c) - b.get(0, y, x, c)).abs()).sum::<f32>() / 3.0;
                if dist(x, y) < 4.5 {
                    hole.push(d);
                } else if dist(x, y) > 5.4 + 10.0 {
                    far.push(d);
                }
            }
        }
        assert!(hole.len() > 40 && far.len() > 800, "{} hole and {} far pixels", hole.len(), far.len());
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        (mean(&hole), mean(&far))
    };
    // Two seeds paint two different holes; far from them the pictures agree. (Against the denoise-0 picture far
    // pixels do move: the decoder's group norms and mid-block attention see the whole latent, and the random
    // tiny model paints latents far from natural ones. Both seeds' holes shift those statistics alike.)
    let decoded = |latent: &Value, seed| t.decode(&t.sample(latent, "euler", 1.0, seed).unwrap());
    let (hole, far) = diffs(&decoded(&masked, 1), &decoded(&masked, 2));
    // Without the mask the seeds change everything.
    let (_, plain_far) = diffs(&decoded(&t.encoded, 1), &decoded(&t.encoded, 2));
    eprintln!("seeds 1 vs 2: hole {hole}, far {far}; without the mask far {plain_far}");
    assert!(hole > 0.05, "the two holes are alike: {hole}");
    assert!(far < 0.03 && far * 10.0 < hole, "far pixels moved by {far} (hole {hole})");
    assert!(plain_far > 5.0 * far, "without the mask far pixels moved by only {plain_far} (masked {far})");
}

#[test]
fn inpaint_graph_runs_end_to_end() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("inpaint-graph");
    let ckpt = full_vocab_checkpoint(&dir);
    let image = root().join("assets/sample_inpaint.png");
    let paint = root().join("assets/sample_mask.png");
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "paint": (kind: "LoadImage", params: {{ "image": {paint:?} }}),
            "red": (kind: "ImageToMask", inputs: {{ "image": "paint.image" }}, params: {{ "channel": "red" }}),
            "size": (kind: "ImageScale", inputs: {{ "image": "load.image" }}, params: {{ "width": 32, "height": 24, "upscale_method": "area" }}),
            "enc": (kind: "VAEEncode", inputs: {{ "pixels": "size.image", "vae": "ckpt.vae" }}),
            "masked": (kind: "SetLatentNoiseMask", inputs: {{ "samples": "enc.latent", "mask": "load.mask" }}),
            "masked2": (kind: "SetLatentNoiseMask", inputs: {{ "samples": "enc.latent", "mask": "red.mask" }}),
            "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a sun" }}),
            "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
            "sample": (kind: "KSampler",
                inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning", "negative": "neg.conditioning", "latent_image": "masked.latent" }},
                params: {{ "seed": 1, "steps": 2, "cfg": 3.0 }}),
            "sample2": (kind: "KSampler",
                inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning", "negative": "neg.conditioning", "latent_image": "masked2.latent" }},
                params: {{ "seed": 1, "steps": 2, "cfg": 3.0 }}),
            "up": (kind: "LatentUpscaleBy", inputs: {{ "samples": "sample.latent" }}, params: {{ "scale_by": 1.5 }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "up.latent", "vae": "ckpt.vae" }}),
            "dec2": (kind: "VAEDecode", inputs: {{ "samples": "sample2.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "inpaint" }}),
            "save2": (kind: "SaveImage", inputs: {{ "images": "dec2.image" }}, params: {{ "filename_prefix": "painted" }}),
        }})"#
    );
    let reg = nodes::builtin_registry();
    let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
    let r = crate::common::run(&mut Executor::default(), &g, &dir);
    assert!(r.ok, "{:?}", r.errors());
    // 32x24 pictures -> 16x12 latents -> x1.5 = 24x18 -> 48x36 pictures.
    let a = image::open(dir.join("inpaint_00001.png")).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (48, 36));
    // The alpha hole and the painted mask are the same disc: the same result.
    let b = image::open(dir.join("painted_00001.png")).unwrap().to_rgb8();
    assert_eq!(b.dimensions(), (32, 24));

    // A mask that does not fit is reported against the node.
    let bad = text.replace(r#""mask": "red.mask""#, r#""mask": "size.image""#);
    assert!(crate::common::validate_str(&bad, &reg).is_err(), "an Image is not a Mask");
    let bad = text.replace(r#""width": 32, "height": 24"#, r#""width": 32, "height": 64"#);
    let g = crate::common::validate_str(&bad, &reg).unwrap();
    let r = crate::common::run(&mut Executor::default(), &g, &dir);
    assert!(!r.ok);
    let failed = r.ids_with(NodeStatus::Failed);
    assert!(failed.contains(&"masked") && failed.contains(&"masked2"), "{failed:?}");
    assert!(r.errors().iter().any(|e| e.contains("masked") && e.contains("aspect")), "{:?}", r.errors());
}

#[test]
fn the_alpha_hole_and_the_painted_mask_are_the_same_disc() {
    // sample_inpaint.png's alpha hole and sample_mask.png's white disc are the same pixels.
    let reg = nodes::builtin_registry();
    let load =
        |p: &str| call_kind(&reg, "LoadImage", &[], &[("image", s(&root().join(p).display().to_string()))]).unwrap();
    let alpha = load("assets/sample_inpaint.png").remove(1);
    let paint = load("assets/sample_mask.png").remove(0);
    let red = one(&reg, "ImageToMask", &[("image", paint)], &[("channel", s("red"))]);
    let (Value::Mask(a), Value::Mask(b)) = (&alpha, &red) else { panic!("masks") };
    assert_eq!(a.data, b.data);
    let ones = a.data.iter().filter(|&&v| v == 1.0).count();
    assert!(ones > 900 && ones < 1100, "{ones} masked pixels"); // a disc of radius 18: ~1018
}

#[test]
fn image_to_mask_picks_the_channel_and_refuses_a_missing_one() {
    let reg = nodes::builtin_registry();
    // Two 1x2 RGB pictures.
    let data: Vec<f32> = (0..12).map(|v| v as f32 / 16.0).collect();
    let img = Value::Image(Arc::new(Image::from_data(2, 1, 2, 3, data.clone()).unwrap()));
    for (c, name) in ["red", "green", "blue"].iter().enumerate() {
        let Value::Mask(m) = one(&reg, "ImageToMask", &[("image", img.clone())], &[("channel", s(name))]) else {
            panic!("not a mask")
        };
        assert_eq!((m.batch, m.height, m.width), (2, 1, 2));
        let want: Vec<f32> = data.iter().skip(c).step_by(3).cloned().collect();
        assert_eq!(m.data, want, "{name}");
    }
    let e = call_kind(&reg, "ImageToMask", &[("image", img)], &[("channel", s("alpha"))]).unwrap_err();
    assert!(e.contains("channel") && e.contains("3 channels") && e.contains("alpha"), "{e}");
    // With an alpha channel, alpha is the fourth value.
    let rgba = Value::Image(Arc::new(Image::from_data(1, 1, 3, 4, (0..12).map(|v| v as f32).collect()).unwrap()));
    let Value::Mask(m) = one(&reg, "ImageToMask", &[("image", rgba)], &[("channel", s("alpha"))]) else { panic!() };
    assert_eq!(m.data, [3.0, 7.0, 11.0]);
    // An unknown channel name is caught when the graph is checked.
    let e = crate::common::errors_of(
        r#"(nodes: {
            "load": (kind: "LoadImage", params: { "image": "x.png" }),
            "m": (kind: "ImageToMask", inputs: { "image": "load.image" }, params: { "channel": "purple" }),
            "s": (kind: "SetLatentNoiseMask", inputs: { "samples": "e.latent", "mask": "m.mask" }),
            "e": (kind: "EmptyLatentImage"),
        })"#,
        &reg,
    );
    assert!(e.contains("\"purple\" is not allowed"), "{e}");
}

fn test_latent(shape: [usize; 4]) -> Latent {
    let n = shape.iter().product();
    Latent { shape, samples: gpu::testing::random(n, 5, -2.0, 2.0), noise_mask: None, batch_index: None }
}

/// Plane `(b, c)` of a latent as a one-image mask, for image_ops.
fn plane(l: &Latent, b: usize, c: usize) -> Mask {
    let [_, ch, h, w] = l.shape;
    let start = (b * ch + c) * h * w;
    Mask { batch: 1, height: h, width: w, data: l.samples[start..start + h * w].to_vec() }
}

#[test]
fn latent_upscale_sizes_and_values_match_image_ops_per_plane() {
    let reg = nodes::builtin_registry();
    let input = test_latent([2, 4, 6, 8]);
    let v = latent_value(input.clone());
    let up = |params: &[(&str, ParamValue)]| latent_of(&one(&reg, "LatentUpscale", &[("samples", v.clone())], params));
    let int = ParamValue::Int;
    for method in ["nearest-exact", "bilinear", "area", "bicubic"] {
        // 0 width follows the aspect ratio: 8 * 96 / 6 = 128 pixels -> 16 latent pixels.
        let out = up(&[("upscale_method", s(method)), ("width", int(0)), ("height", int(96))]);
        assert_eq!(out.shape, [2, 4, 12, 16], "{method}");
        let m = Method::from_name(method).unwrap();
        for (b, c) in [(0, 0), (1, 2), (1, 3)] {
            let want = image_ops::resize_mask(&plane(&input, b, c), 16, 12, m).unwrap();
            assert_eq!(plane(&out, b, c).data, want.data, "{method} plane ({b}, {c})");
        }
    }
    // Explicit size, below 64 pixels becomes 64, sizes round down to latent pixels.
    assert_eq!(up(&[("width", int(100)), ("height", int(20))]).shape, [2, 4, 8, 12]);
    // 0 x 0 passes the latent through.
    assert_eq!(*up(&[("width", int(0)), ("height", int(0))]), input);
    // Center crop: 8x6 to a square 64x64 (8x8) keeps the middle 6 columns, then scales.
    let out = up(&[("upscale_method", s("bilinear")), ("width", int(64)), ("height", int(64)), ("crop", s("center"))]);
    assert_eq!(out.shape, [2, 4, 8, 8]);
    let p = plane(&input, 1, 1);
    let cropped: Vec<f32> = (0..6).flat_map(|y| p.data[y * 8 + 1..y * 8 + 7].to_vec()).collect();
    let want = image_ops::resize_mask(&Mask { batch: 1, height: 6, width: 6, data: cropped }, 8, 8, Method::Bilinear);
    assert_eq!(plane(&out, 1, 1).data, want.unwrap().data);

    // LatentUpscaleBy: round(8 * 1.5) x round(6 * 1.5); the noise mask rides along untouched.
    let mut with_mask = input.clone();
    with_mask.noise_mask = Some((vec![1, 1, 3, 4], vec![0.5; 12]));
    let by = |scale: f64| {
        let v = latent_value(with_mask.clone());
        let params = [("upscale_method", s("area")), ("scale_by", ParamValue::Float(scale))];
        latent_of(&one(&reg, "LatentUpscaleBy", &[("samples", v)], &params))
    };
    let out = by(1.5);
    assert_eq!(out.shape, [2, 4, 9, 12]);
    assert_eq!(out.noise_mask, with_mask.noise_mask);
    let want = image_ops::resize_mask(&plane(&input, 0, 3), 12, 9, Method::Area).unwrap();
    assert_eq!(plane(&out, 0, 3).data, want.data);
    assert_eq!(by(0.01).shape, [2, 4, 1, 1]);
    // Too many values is an error, not an allocation: 20 * 4 planes of 2048 x 2048.
    let huge = latent_value(test_latent([20, 4, 8, 8]));
    let params = [("width", ParamValue::Int(16384)), ("height", ParamValue::Int(16384))];
    let e = call_kind(&reg, "LatentUpscale", &[("samples", huge)], &params).unwrap_err();
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn set_latent_noise_mask_refuses_masks_that_do_not_fit() {
    let reg = nodes::builtin_registry();
    let latent = latent_value(Latent::zeros([2, 4, 8, 8]));
    let set = |mask: Value| call_kind(&reg, "SetLatentNoiseMask", &[("samples", latent.clone()), ("mask", mask)], &[]);
    // One mask for the batch, or one per latent, at any size of the same aspect.
    assert!(set(mask_value(1, 64, 64, vec![1.0; 64 * 64])).is_ok());
    assert!(set(mask_value(2, 8, 8, vec![1.0; 128])).is_ok());
    let out = set(mask_value(2, 4, 4, vec![0.25; 32])).unwrap().remove(0);
    let l = latent_of(&out);
    assert_eq!(l.noise_mask, Some((vec![2, 1, 4, 4], vec![0.25; 32])));
    assert_eq!(l.samples, vec![0.0; 2 * 4 * 64], "the latent itself is unchanged");
    // Batch mismatch.
    let e = set(mask_value(3, 8, 8, vec![1.0; 192])).unwrap_err();
    assert!(e.contains("input \"mask\"") && e.contains("3 masks for a batch of 2"), "{e}");
    // Wrong shape: a 64x128 portrait mask on a square latent.
    let e = set(mask_value(1, 128, 64, vec![1.0; 64 * 128])).unwrap_err();
    assert!(e.contains("input \"mask\"") && e.contains("64x128 mask does not fit the 8x8 latent"), "{e}");
    // Inconsistent or empty masks (a plugin could make one).
    let e = set(mask_value(1, 8, 8, vec![1.0; 10])).unwrap_err();
    assert!(e.contains("10 values"), "{e}");
    let e = set(mask_value(1, 0, 8, vec![])).unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = set(mask_value(1, 1, 1, vec![f32::NAN])).unwrap_err();
    assert!(e.contains("non-finite"), "{e}");
}

#[test]
fn ksampler_refuses_a_bad_noise_mask_before_sampling() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let t = setup("inpaint-errors", 32, 24);
    let input = latent_of(&t.encoded);
    let with = |shape: Vec<usize>, data: Vec<f32>| {
        let mut l = (*input).clone();
        l.noise_mask = Some((shape, data));
        latent_value(l)
    };
    let e = t.sample(&with(vec![2, 1, 12, 16], vec![1.0; 2 * 12 * 16]), "euler", 1.0, 3).unwrap_err();
    assert!(e.contains("input \"latent_image\"") && e.contains("2 masks for a batch of 1"), "{e}");
    let e = t.sample(&with(vec![1, 12, 16], vec![1.0; 12 * 16]), "euler", 1.0, 3).unwrap_err();
    assert!(e.contains("[batch, 1, height, width]"), "{e}");
    let e = t.sample(&with(vec![1, 1, 12, 16], vec![1.0; 7]), "euler", 1.0, 3).unwrap_err();
    assert!(e.contains("7 values"), "{e}");
    // A latent upscaled to another aspect after its mask was set.
    let e = t.sample(&with(vec![1, 1, 48, 16], vec![1.0; 48 * 16]), "euler", 1.0, 3).unwrap_err();
    assert!(e.contains("does not fit"), "{e}");
    // A mask of all ones samples everything, as no mask does.
    let ones = latent_of(&t.sample(&with(vec![1, 1, 6, 8], vec![1.0; 48]), "euler", 1.0, 3).unwrap());
    let plain = latent_of(&t.sample(&t.encoded, "euler", 1.0, 3).unwrap());
    assert_eq!(ones.samples, plain.samples);
}
