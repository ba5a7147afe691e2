//! T2I-adapters (`models::t2i_adapter`, loaded by ControlNetLoader) against the tiny fixture
//! (tests/fixtures/t2i_adapter: ComfyUI's `Adapter` / `Adapter_light` ported, float64): the features of
//! the full adapter (1x1 and 3x3 kernels, pooled and strided-conv downsamplers), the light one (gray
//! input, averaged from RGB), the diffusers layout, an odd size, and the tiny UNet's output with the
//! features added as ComfyUI does, also in f16 within a stated bound; config detection; strengths and
//! ranges summed; broken files and adapters that do not fit give errors naming what is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::sd_tiny::{Layout, source};
use gpu::testing::shared_gpu;
use gpu::{DType, Gpu, Tensor};
use graph::Image;
use models::checkpoint::convert::{ControlNetLayout, open_controlnet};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};
use models::checkpoint::weights::WeightSource;
use models::gligen::{Gligen, TextBox};
use models::sampling::controls::{UnetCall, adapter_hint, control_residuals, prepare_controls};
use models::sampling::schedulers::ModelSigmas;
use models::t2i_adapter::T2iKind;
use models::unet::{Unet, UnetConfig, UnetControl};
use models::unet_blocks::{AttentionHeads, MiddlePatch};
use nodes::controlnet_apply::load_controlnet;
use nodes::payload::{ControlApplication, ControlNetHandle};

/// tests/fixtures/t2i_adapter/meta.json `tolerance.max_abs` (the fixture's own f32 runs of the same maths
/// differ from float64 by at most 2.8e-6).
const F32_TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t2i_adapter")
}

fn inputs() -> SafeTensors {
    SafeTensors::open(&dir().join("inputs.safetensors")).unwrap()
}

fn expected() -> SafeTensors {
    SafeTensors::open(&dir().join("expected.safetensors")).unwrap()
}

/// A fixture tensor `[B, C, H, W]` as the NHWC picture the nodes pass around.
fn image_of(st: &SafeTensors, name: &str) -> Image {
    let (shape, data) = st.f32_any(name).unwrap();
    let [b, c, h, w] = shape[..] else { panic!("{name}: {shape:?}") };
    let mut nhwc = vec![0.0; data.len()];
    for n in 0..b {
        for ch in 0..c {
            for p in 0..h * w {
                nhwc[(n * h * w + p) * c + ch] = data[(n * c + ch) * h * w + p];
            }
        }
    }
    Image { batch: b, height: h, width: w, channels: c, data: nhwc }
}

fn upload(gpu: &Gpu, st: &SafeTensors, name: &str) -> Tensor {
    let (shape, data) = st.f32_any(name).unwrap();
    gpu.upload(&data, &shape, DType::F32).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `got` against `expected.safetensors`' `name`: (max abs error, largest |expected|).
fn compare(gpu: &Gpu, got: &Tensor, name: &str) -> (f32, f32) {
    let (shape, want) = expected().f32_any(name).unwrap();
    assert_eq!(got.shape(), shape.as_slice(), "{name}");
    let big = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    (max_abs_diff(&gpu.download(got).unwrap(), &want), big)
}

/// The tiny SD UNet (heads and groups from sd_tiny's config: 2 and 4).
fn tiny_unet(gpu: &Gpu, dtype: DType) -> Unet {
    let src = source(Layout::SingleFile);
    let w = src.prefix("model.diffusion_model.");
    let mut cfg = UnetConfig::detect_from_weights(&w).unwrap();
    cfg.heads = AttentionHeads::Count(2);
    cfg.norm.groups = 4;
    Unet::load(gpu, &w, &cfg, dtype).unwrap()
}

fn load(gpu: &Gpu, p: &Path) -> Arc<ControlNetHandle> {
    Arc::new(load_controlnet(gpu, p, DType::F32).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn application(net: &Arc<ControlNetHandle>, image: Image, strength: f64, start: f64, end: f64) -> ControlApplication {
    ControlApplication {
        control_net: net.clone(),
        image: Arc::new(image),
        strength,
        start_percent: start,
        end_percent: end,
    }
}

#[test]
fn t2i_adapter_config_is_read_from_the_weights_in_every_layout() {
    let Some(gpu) = shared_gpu() else { return };
    let cases: [(PathBuf, T2iKind, usize); 5] = [
        (dir().join("full.safetensors"), T2iKind::Full { ksize: 1, conv_down: false }, 3),
        (dir().join("full_conv.safetensors"), T2iKind::Full { ksize: 3, conv_down: true }, 3),
        (dir().join("light.safetensors"), T2iKind::Light { inter: vec![2, 4, 4] }, 1),
        (dir().join("diffusers"), T2iKind::Full { ksize: 1, conv_down: false }, 3),
        (dir().join("diffusers/diffusion_pytorch_model.safetensors"), T2iKind::Full { ksize: 1, conv_down: false }, 3),
    ];
    for (path, kind, input_channels) in cases {
        let h = load(gpu, &path);
        assert!(h.net.as_controlnet().is_none());
        let c = &h.net.as_t2i_adapter().unwrap().config;
        assert_eq!((&c.kind, c.input_channels), (&kind, input_channels), "{}", path.display());
        assert_eq!(c.channels, [8, 16, 16], "{}", path.display());
        assert_eq!(c.nums_rb, 2, "{}", path.display());
        assert_eq!(h.net.hint_channels(), input_channels);
    }
}

#[test]
fn t2i_adapter_features_match_comfyui_in_f32_in_every_layout_and_at_odd_sizes() {
    let Some(gpu) = shared_gpu() else { return };
    let inp = inputs();
    let hint = image_of(&inp, "hint");
    let mut full_features = Vec::new();
    for (name, path) in [
        ("full", dir().join("full.safetensors")),
        ("full", dir().join("diffusers")),
        ("full_conv", dir().join("full_conv.safetensors")),
        ("light", dir().join("light.safetensors")),
    ] {
        let h = load(gpu, &path);
        let ad = h.net.as_t2i_adapter().unwrap();
        let ch = ad.config.input_channels;
        // The nodes' path: the picture as the adapter takes it (the light one averages RGB to gray).
        let pixels = adapter_hint(&hint, 64, 64, ch, 2).unwrap();
        let x = gpu.upload(&pixels, &[2, ch, 64, 64], DType::F32).unwrap();
        let feats = ad.forward(gpu, &x).unwrap();
        assert_eq!(feats.len(), 3);
        for (i, f) in feats.iter().enumerate() {
            let (err, big) = compare(gpu, f, &format!("{name}.features.{i}"));
            eprintln!("{}: {name}.features.{i}: max abs err {err:.2e} (values up to {big:.2})", path.display());
            assert!(err <= F32_TOL, "{}: {name}.features.{i}: {err} > {F32_TOL}", path.display());
            assert!(big > 0.1, "{name}.features.{i} is nearly zero");
        }
        if name == "full" {
            full_features.push(feats.iter().map(|f| gpu.download(f).unwrap()).collect::<Vec<_>>());
        }
    }
    // The same tensors in two layouts compute the same thing, bit for bit.
    assert_eq!(full_features[0], full_features[1]);

    // 48x40 pixels: 6x5 after the unshuffle, then ComfyUI's pool padded on the odd axis: 3x3, 2x2.
    let h = load(gpu, &dir().join("full.safetensors"));
    let feats = h.net.as_t2i_adapter().unwrap().forward(gpu, &upload(gpu, &inp, "hint_odd")).unwrap();
    for (i, f) in feats.iter().enumerate() {
        let (err, _) = compare(gpu, f, &format!("full.odd.features.{i}"));
        assert!(err <= F32_TOL, "full.odd.features.{i}: {err} > {F32_TOL}");
    }
}

#[test]
fn unet_with_t2i_adapter_features_matches_comfyui_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = tiny_unet(gpu, DType::F32);
    let net = load(gpu, &dir().join("full.safetensors"));
    let inp = inputs();
    let (x, ctx) = (upload(gpu, &inp, "sample"), upload(gpu, &inp, "encoder_hidden_states"));
    let sigmas = ModelSigmas::sd15();
    for case in 0..2 {
        let t = inp.f32_any(&format!("case{case}.timesteps")).unwrap().1;
        let strength = inp.f32_any(&format!("case{case}.scale")).unwrap().1[0] as f64;
        let app = application(&net, image_of(&inp, "hint"), strength, 0.0, 1.0);
        // The sampler's path: the picture resized to the latent x8 (here already), the features placed by level.
        let prepared = prepare_controls(gpu, &unet.config, &sigmas, [app.spec()], [2, 4, 8, 8], 1).unwrap();
        let blocks: Vec<usize> = prepared[0].features.iter().map(|(i, _)| *i).collect();
        assert_eq!(blocks, [2, 5, 8], "after each level's last ResBlock");
        let call = UnetCall { x: &x, timesteps: &t, context: &ctx, sigma: 1.0 };
        let control = control_residuals(gpu, &prepared, &call).unwrap().unwrap();
        assert!(control.down.is_none() && control.mid.is_none(), "a T2I-adapter adds no ControlNet residuals");
        let y = unet.forward_controlled(gpu, &x, &t, &ctx, &control, None).unwrap();
        let (err, big) = compare(gpu, &y, &format!("case{case}.noise_pred"));
        let plain = gpu.download(&unet.forward(gpu, &x, &t, &ctx).unwrap()).unwrap();
        let change = max_abs_diff(&plain, &gpu.download(&y).unwrap());
        eprintln!(
            "case{case}: noise_pred max abs err {err:.2e} (values up to {big:.2}); the control changes it by {change:.2}"
        );
        assert!(err <= F32_TOL, "case{case}: {err} > {F32_TOL}");
        assert!(change > 0.1, "case{case}: the features change the output by only {change}");
    }
}

#[test]
fn t2i_adapter_strengths_add_up_and_respect_their_sigma_range() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = tiny_unet(gpu, DType::F32);
    let net = load(gpu, &dir().join("full.safetensors"));
    let inp = inputs();
    let (x, ctx) = (upload(gpu, &inp, "sample"), upload(gpu, &inp, "encoder_hidden_states"));
    let sigmas = ModelSigmas::sd15();
    let img = image_of(&inp, "hint");
    let apps = [application(&net, img.clone(), 0.3, 0.0, 1.0), application(&net, img.clone(), 0.5, 0.0, 0.5)];
    let prepared =
        prepare_controls(gpu, &unet.config, &sigmas, apps.iter().map(|a| a.spec()), [2, 4, 8, 8], 1).unwrap();
    let feats = |i: usize| gpu.download(&prepared[0].features[i].1).unwrap();
    let t = [500.0, 500.0];
    let at = |sigma: f64| {
        control_residuals(gpu, &prepared, &UnetCall { x: &x, timesteps: &t, context: &ctx, sigma }).unwrap()
    };
    let mid_sigma = sigmas.percent_to_sigma(0.5);
    // Both active at a high sigma (the second's range is the first half of the schedule): 0.8 x the features.
    for (sigma, s) in [(mid_sigma * 2.0, 0.8f32), (mid_sigma / 2.0, 0.3)] {
        let got = at(sigma).unwrap();
        assert_eq!(got.input.len(), 9);
        for (level, block) in [2, 5, 8].into_iter().enumerate() {
            let want: Vec<f32> = feats(level).iter().map(|v| v * s).collect();
            let err = max_abs_diff(&gpu.download(got.input[block].as_ref().unwrap()).unwrap(), &want);
            assert!(err < 1e-5, "sigma {sigma}, level {level}: off by {err}");
        }
        assert!(got.input.iter().enumerate().all(|(i, f)| f.is_some() == [2, 5, 8].contains(&i)));
    }
    // Three conditionings batched into one call: the features three times over.
    let three = prepare_controls(gpu, &unet.config, &sigmas, [apps[0].spec()], [2, 4, 8, 8], 3).unwrap();
    let f3 = gpu.download(&three[0].features[0].1).unwrap();
    assert_eq!(f3, feats(0).repeat(3));
}

/// Copies the full adapter with one tensor changed (`None` drops it, a key it lacks is added) and the given
/// metadata.
fn broken_copy(
    dir: &Path,
    name: &str,
    key: &str,
    replace: Option<(Vec<usize>, Vec<f32>)>,
    meta: &[(&str, &str)],
) -> PathBuf {
    crate::common::sd_tiny::copy_with_tensor(&self::dir().join("full.safetensors"), &dir.join(name), key, replace, meta)
}

#[test]
fn broken_or_unfitting_t2i_adapters_give_errors_naming_what_is_wrong() {
    let Some(gpu) = shared_gpu() else { return };
    let tmp = crate::common::temp_dir("t2i-broken");
    let fail = |p: &Path| load_controlnet(gpu, p, DType::F32).err().expect("must fail");
    let nums = [("sdgraph.t2i.nums_rb", "2")];

    let p = broken_copy(&tmp, "missing.safetensors", "body.3.block2.bias", None, &nums);
    let e = fail(&p);
    assert!(e.contains("missing.safetensors") && e.contains("body.3.block2.bias"), "{e}");

    let p = broken_copy(
        &tmp,
        "shape.safetensors",
        "body.2.in_conv.weight",
        Some((vec![16, 8, 3, 3], vec![0.0; 1152])),
        &nums,
    );
    let e = fail(&p);
    assert!(
        e.contains("shape.safetensors") && e.contains("body.2.in_conv.weight") && e.contains("[16, 8, 3, 3]"),
        "{e}"
    );

    // SDXL adapters (conv_in of 3 x 16 x 16 channels) are refused by name.
    let p = broken_copy(
        &tmp,
        "xl.safetensors",
        "conv_in.weight",
        Some((vec![8, 768, 3, 3], vec![0.0; 8 * 768 * 9])),
        &nums,
    );
    let e = fail(&p);
    assert!(e.contains("xl.safetensors") && e.contains("SDXL"), "{e}");

    // A levels count the ResBlocks do not divide into; a skip conv ComfyUI would not load either.
    let e = fail(&broken_copy(&tmp, "nums.safetensors", "none", None, &[("sdgraph.t2i.nums_rb", "4")]));
    assert!(e.contains("nums.safetensors") && e.contains("6 ResnetBlocks") && e.contains("levels of 4"), "{e}");
    let e = fail(&broken_copy(&tmp, "nums_bad.safetensors", "none", None, &[("sdgraph.t2i.nums_rb", "two")]));
    assert!(e.contains("sdgraph.t2i.nums_rb") && e.contains("\"two\""), "{e}");
    let p = broken_copy(&tmp, "skep.safetensors", "body.1.skep.weight", Some((vec![8, 8, 1, 1], vec![0.0; 64])), &nums);
    let e = fail(&p);
    assert!(e.contains("body.1.skep.weight") && e.contains("sk=False"), "{e}");

    // Keys of no known layout.
    let p = broken_copy(&tmp, "unknown.safetensors", "conv_in.weight", None, &nums);
    let e = fail(&p);
    assert!(e.contains("unknown.safetensors") && e.contains("not an SD ControlNet or T2I-adapter"), "{e}");
    // diffusers' light adapter layout (out_conv per level), which ComfyUI cannot load either, is refused by name.
    let light = tmp.join("diffusers_light.safetensors");
    let one: (&[usize], &[f32]) = (&[2, 2, 3, 3], &[0.0; 36]);
    let t: Vec<(&str, &[usize], &[f32])> = ["adapter.body.0.resnets.0.block1.weight", "adapter.body.0.out_conv.weight"]
        .into_iter()
        .map(|n| (n, one.0, one.1))
        .collect();
    write_with_metadata(&light, &t, Dtype::F32, &[]).unwrap();
    let e = fail(&light);
    assert!(e.contains("diffusers_light.safetensors") && e.contains("diffusers light T2I-adapter"), "{e}");

    // An adapter for another UNet is refused before sampling, naming its file and both widths.
    let unet = tiny_unet(gpu, DType::F32);
    let net = load(gpu, &dir().join("full.safetensors"));
    let mut other = unet.config.clone();
    other.block_out_channels = vec![8, 16, 32];
    let img = Image { batch: 1, height: 64, width: 64, channels: 3, data: vec![0.5; 64 * 64 * 3] };
    let app = application(&net, img.clone(), 1.0, 0.0, 1.0);
    let sigmas = ModelSigmas::sd15();
    let e = prepare_controls(gpu, &other, &sigmas, [app.spec()], [1, 4, 8, 8], 1).err().expect("must not fit");
    assert!(e.contains("full.safetensors") && e.contains("[8, 16, 16]") && e.contains("[8, 16, 32]"), "{e}");
    // A control image the adapter cannot read.
    let ad = net.net.as_t2i_adapter().unwrap();
    let e = ad.forward(gpu, &gpu.upload(&vec![0.0; 3 * 60 * 64], &[1, 3, 60, 64], DType::F32).unwrap()).err().unwrap();
    assert!(e.to_string().contains("[1, 3, 60, 64]") && e.to_string().contains("multiples of 8"), "{e}");
    let two = Image { channels: 2, data: vec![0.5; 64 * 64 * 2], ..img };
    assert!(adapter_hint(&two, 64, 64, 3, 1).is_err());
}

/// f16 weights and activations (the f32 files loaded as DType::F16), measured on lavapipe: at most 4.3e-3 on
/// features up to ~4.5 (an f16 ulp there is 3.9e-3), bounded here at about 2x ...
const F16_TOL_FEATURES: f32 = 9e-3;
/// ... and 3.9e-3 on the controlled UNet's noise_pred (values up to ~1.8), bounded at about 2x.
const F16_TOL_OUTPUT: f32 = 8e-3;

#[test]
fn t2i_adapter_in_f16_stays_within_the_stated_bound() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        return;
    }
    let inp = inputs();
    let hint = upload(gpu, &inp, "hint");
    let mut worst = 0.0f32;
    for name in ["full", "full_conv"] {
        let h = Arc::new(load_controlnet(gpu, &dir().join(format!("{name}.safetensors")), DType::F16).unwrap());
        for (i, f) in h.net.as_t2i_adapter().unwrap().forward(gpu, &hint).unwrap().iter().enumerate() {
            assert_eq!(f.dtype(), DType::F16);
            let (err, big) = compare(gpu, f, &format!("{name}.features.{i}"));
            eprintln!("f16: {name}.features.{i}: max abs err {err:.2e} (values up to {big:.2})");
            assert!(err <= F16_TOL_FEATURES, "f16: {name}.features.{i}: {err} > {F16_TOL_FEATURES}");
            worst = worst.max(err);
        }
    }
    // The UNet in f16 with the f16 adapter's features, case 0 at strength 1.
    let unet = tiny_unet(gpu, DType::F16);
    let net = Arc::new(load_controlnet(gpu, &dir().join("full.safetensors"), DType::F16).unwrap());
    let (x, ctx) = (upload(gpu, &inp, "sample"), upload(gpu, &inp, "encoder_hidden_states"));
    let t = inp.f32_any("case0.timesteps").unwrap().1;
    let app = application(&net, image_of(&inp, "hint"), 1.0, 0.0, 1.0);
    let prepared = prepare_controls(gpu, &unet.config, &ModelSigmas::sd15(), [app.spec()], [2, 4, 8, 8], 1).unwrap();
    let call = UnetCall { x: &x, timesteps: &t, context: &ctx, sigma: 1.0 };
    let control = control_residuals(gpu, &prepared, &call).unwrap().unwrap();
    let y = unet.forward_controlled(gpu, &x, &t, &ctx, &control, None).unwrap();
    let (err, big) = compare(gpu, &y, "case0.noise_pred");
    eprintln!("f16: case0.noise_pred: max abs err {err:.2e} (values up to {big:.2}); features worst {worst:.2e}");
    assert!(err <= F16_TOL_OUTPUT, "f16: case0.noise_pred: {err} > {F16_TOL_OUTPUT}");
}

/// Writes `src`'s tensors (f32) as a `torch.save` zip, as TencentARC's and lllyasviel's `.pth` releases are.
fn as_pth(src: &Path, dest: &Path) -> PathBuf {
    let st = SafeTensors::open(src).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .map(|n| {
            let (shape, data) = st.f32_any(n).unwrap();
            (n.to_string(), shape, data)
        })
        .collect();
    let t: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    models::checkpoint::pth::write(dest, "archive", &t).unwrap();
    dest.to_path_buf()
}

#[test]
fn t2i_adapters_and_controlnets_load_from_pytorch_files() {
    let Some(gpu) = shared_gpu() else { return };
    let tmp = crate::common::temp_dir("t2i-pth");
    let hint = upload(gpu, &inputs(), "hint");
    let features = |p: &Path| -> Vec<Vec<f32>> {
        let h = load(gpu, p);
        h.net.as_t2i_adapter().unwrap().forward(gpu, &hint).unwrap().iter().map(|f| gpu.download(f).unwrap()).collect()
    };
    let st = dir().join("full.safetensors");
    // The .pth has no metadata: ResBlocks per level are ComfyUI's 2, as the fixture's.
    assert_eq!(features(&as_pth(&st, &tmp.join("t2iadapter_depth.pth"))), features(&st));

    // lllyasviel's control_sd15_*.pth layout (control_model. + LDM names) opens as the same tensors (the fixture's
    // heads and groups live in safetensors metadata a .pth cannot hold, so it is compared as weights).
    let ldm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/controlnet/control_ldm.safetensors");
    let (a, layout_a, _) = open_controlnet(&ldm).unwrap();
    let (b, layout_b, _) = open_controlnet(&as_pth(&ldm, &tmp.join("control_sd15_canny.pth"))).unwrap();
    assert_eq!((layout_a, layout_b), (ControlNetLayout::SingleFile, ControlNetLayout::SingleFile));
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>());
    for n in names {
        let (wa, wb) = (a.prefix(""), b.prefix(""));
        let shape = wa.shape(n).unwrap();
        assert_eq!(wa.f32(n, &shape).unwrap(), wb.f32(n, &shape).unwrap(), "{n}");
    }
}

#[test]
fn t2i_adapter_and_gligen_steer_one_unet_call_together() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = tiny_unet(gpu, DType::F32);
    let inp = inputs();
    let (x, ctx) = (upload(gpu, &inp, "sample"), upload(gpu, &inp, "encoder_hidden_states"));
    let t = inp.f32_any("case0.timesteps").unwrap().1;
    let app = application(&load(gpu, &dir().join("full.safetensors")), image_of(&inp, "hint"), 1.0, 0.0, 1.0);
    let prepared = prepare_controls(gpu, &unet.config, &ModelSigmas::sd15(), [app.spec()], [2, 4, 8, 8], 1).unwrap();
    let call = UnetCall { x: &x, timesteps: &t, context: &ctx, sigma: 1.0 };
    let control = control_residuals(gpu, &prepared, &call).unwrap().unwrap();
    // The GLIGEN fixture's model and its first box's text embedding, over the top-left quarter.
    let gdir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gligen");
    let gligen =
        Gligen::load(gpu, &WeightSource::single_file(&gdir.join("gligen.safetensors")).unwrap(), DType::F32).unwrap();
    let (es, emb) = SafeTensors::open(&gdir.join("inputs.safetensors")).unwrap().f32_any("case0.embeddings").unwrap();
    let tb = TextBox { embedding: emb[..es[1]].to_vec(), h: 4, w: 4, y: 0, x: 0 };
    let patch = gligen.patch(gpu, &[tb], 2, 8, 8).unwrap();
    let run = |c: &UnetControl, p: Option<&dyn MiddlePatch>| {
        gpu.download(&unet.forward_controlled(gpu, &x, &t, &ctx, c, p).unwrap()).unwrap()
    };
    let both = run(&control, Some(&patch));
    let t2i = run(&control, None);
    let gligen_only = run(&UnetControl::default(), Some(&patch));
    // Without controls, the call is GLIGEN's own (forward_patched), bit for bit.
    let patched = gpu.download(&unet.forward_patched(gpu, &x, &t, &ctx, None, None, &patch).unwrap()).unwrap();
    assert_eq!(gligen_only, patched);
    // Together, each still moves the output (measured on lavapipe: GLIGEN by 1.001, the adapter by 0.885).
    let (by_gligen, by_t2i) = (max_abs_diff(&both, &t2i), max_abs_diff(&both, &gligen_only));
    eprintln!("with both: GLIGEN moves the output by {by_gligen:.3}, the T2I-adapter by {by_t2i:.3}");
    assert!(by_gligen > 1e-2 && by_t2i > 1e-2, "{by_gligen} {by_t2i}");
}
