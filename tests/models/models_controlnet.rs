//! ControlNet (`models::controlnet`) against the tiny fixture
//! (tests/fixtures/controlnet, diffusers' ControlNetModel + UNet2DConditionModel
//! in float64): the hint embedding, every residual and the controlled UNet
//! output of both cases, in both file layouts, within 1e-4 in f32 and a
//! stated bound in f16; config detection; summing chained controls; the
//! control image's resizing; broken files name the file and key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::sd_tiny::{Layout, source};
use gpu::testing::shared_gpu;
use gpu::{DType, Gpu, Tensor};
use graph::Image;
use models::checkpoint::safetensors::{SafeTensors, write};
use models::sampling::controls::{
    PreparedControl, UnetCall, control_hint, control_residuals, prepare_controls, scale_residuals,
};
use models::unet::{Unet, UnetConfig};
use models::unet_blocks::AttentionHeads;
use nodes::controlnet_apply::load_controlnet;
use nodes::payload::{ControlApplication, ControlNetHandle};

/// tests/fixtures/controlnet/meta.json `tolerance.max_abs`.
const F32_TOL: f32 = 1e-4;
/// f16 weights and activations (the f32 files loaded as DType::F16), measured
/// on lavapipe: at most 2.2e-2 on the residuals (values up to ~13, where an
/// f16 ulp is 7.8e-3: about 3 ulps), bounded here at about 1.8x that ...
const F16_TOL_RESIDUAL: f32 = 4e-2;
/// ... and 3.6e-3 on the controlled UNet's noise_pred (values up to ~2.2), bounded at about 2.2x.
const F16_TOL_OUTPUT: f32 = 8e-3;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/controlnet")
}

fn ldm_file() -> PathBuf {
    dir().join("control_ldm.safetensors")
}

fn diffusers_dir() -> PathBuf {
    dir().join("diffusers")
}

struct Fixture {
    inputs: SafeTensors,
    expected: SafeTensors,
}

impl Fixture {
    fn open() -> Fixture {
        Fixture {
            inputs: SafeTensors::open(&dir().join("inputs.safetensors")).unwrap(),
            expected: SafeTensors::open(&dir().join("expected.safetensors")).unwrap(),
        }
    }

    fn input(&self, gpu: &Gpu, name: &str) -> Tensor {
        let (shape, data) = self.inputs.f32_any(name).unwrap();
        gpu.upload(&data, &shape, DType::F32).unwrap()
    }

    fn scalar(&self, name: &str) -> Vec<f32> {
        self.inputs.f32_any(name).unwrap().1
    }
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

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs both cases and returns (name, worst error, largest |expected|), checking shapes.
fn run_cases(gpu: &Gpu, net: &ControlNetHandle, unet: &Unet) -> Vec<(String, f32, f32)> {
    let fx = Fixture::open();
    let x = fx.input(gpu, "sample");
    let ctx = fx.input(gpu, "encoder_hidden_states");
    let hint = fx.input(gpu, "hint");
    let mut rows: Vec<(String, f32, f32)> = Vec::new();
    let mut check = |name: &str, t: &Tensor| {
        let (shape, want) = fx.expected.f32_any(name).unwrap();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        let got = gpu.download(t).unwrap();
        let err = max_abs_diff(&got, &want);
        let big = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        rows.push((name.to_string(), err, big));
    };
    let emb = net.net.as_controlnet().unwrap().embed_hint(gpu, &hint).unwrap();
    check("hint_embedding", &emb);
    for case in 0..2 {
        let ts = fx.scalar(&format!("case{case}.timesteps"));
        let scale = fx.scalar(&format!("case{case}.scale"))[0];
        let r = net.net.as_controlnet().unwrap().forward_with_hint(gpu, &x, &ts, &ctx, &hint).unwrap();
        assert_eq!(r.down.len(), 9);
        let r = scale_residuals(gpu, &r, scale).unwrap();
        for (i, d) in r.down.iter().enumerate() {
            check(&format!("case{case}.down.{i}"), d);
        }
        check(&format!("case{case}.mid"), &r.mid);
        let y = unet.forward_with_residuals(gpu, &x, &ts, &ctx, Some(&r.down), Some(&r.mid)).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        check(&format!("case{case}.noise_pred"), &y);
    }
    rows
}

#[test]
fn controlnet_config_is_read_from_the_weights_in_both_layouts() {
    let Some(gpu) = shared_gpu() else { return };
    for path in [ldm_file(), diffusers_dir(), diffusers_dir().join("diffusion_pytorch_model.safetensors")] {
        let h = load_controlnet(gpu, &path, DType::F32).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let c = &h.net.as_controlnet().unwrap().config;
        assert_eq!(c.hint_channels, 3);
        assert_eq!(c.hint_block_channels, [4, 4, 8, 8, 8, 8, 16], "{}", path.display());
        assert_eq!(c.hint_downscale(), 8);
        assert_eq!(c.unet.block_out_channels, [8, 16, 16]);
        assert_eq!(c.unet.transformer_depth, [1, 1, 0]);
        assert_eq!(c.unet.context_dim, 32);
        assert_eq!(c.unet.skip_count(), 9);
        // From the LDM file's metadata and the diffusers config.json.
        assert_eq!(c.unet.heads, AttentionHeads::Count(2), "{}", path.display());
        assert_eq!(c.unet.norm.groups, 4, "{}", path.display());
    }
}

#[test]
fn controlnet_residuals_and_controlled_unet_match_diffusers_in_f32_in_both_layouts() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = tiny_unet(gpu, DType::F32);
    let mut outputs = Vec::new();
    for path in [ldm_file(), diffusers_dir()] {
        let net = load_controlnet(gpu, &path, DType::F32).unwrap();
        let rows = run_cases(gpu, &net, &unet);
        assert_eq!(rows.len(), 1 + 2 * 11);
        for (name, err, big) in &rows {
            eprintln!("{}: {name}: max abs err {err:.2e} (values up to {big:.2})", path.display());
            assert!(*err <= F32_TOL, "{}: {name}: {err} > {F32_TOL}", path.display());
            // Not vacuous: every residual is far from zero (the zero convs were randomised).
            assert!(*big > 0.1, "{name} is nearly zero");
        }
        let fx = Fixture::open();
        let x = fx.input(gpu, "sample");
        let ctx = fx.input(gpu, "encoder_hidden_states");
        let hint = fx.input(gpu, "hint");
        let r = net.net.as_controlnet().unwrap().forward_with_hint(gpu, &x, &[999.0, 1.0], &ctx, &hint).unwrap();
        outputs.push(gpu.download(&r.mid).unwrap());
    }
    // The same tensors in two layouts compute the same thing, bit for bit.
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn controlnet_in_f16_stays_within_the_stated_bound() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        return;
    }
    let unet = tiny_unet(gpu, DType::F16);
    let net = load_controlnet(gpu, &ldm_file(), DType::F16).unwrap();
    let rows = run_cases(gpu, &net, &unet);
    let worst = rows.iter().fold(0.0f32, |m, r| m.max(r.1));
    for (name, err, big) in &rows {
        eprintln!("f16: {name}: max abs err {err:.2e} (values up to {big:.2})");
    }
    for (name, err, _) in &rows {
        let tol = if name.ends_with("noise_pred") { F16_TOL_OUTPUT } else { F16_TOL_RESIDUAL };
        assert!(*err <= tol, "f16: {name}: {err} > {tol}");
    }
    eprintln!("f16 worst: {worst:.2e}");
}

fn application(net: &Arc<ControlNetHandle>, strength: f64, start: f64, end: f64) -> Arc<ControlApplication> {
    let image = Arc::new(Image { batch: 1, height: 64, width: 64, channels: 3, data: vec![0.5; 64 * 64 * 3] });
    Arc::new(ControlApplication { control_net: net.clone(), image, strength, start_percent: start, end_percent: end })
}

#[test]
fn chained_controls_sum_their_scaled_residuals_and_respect_their_sigma_range() {
    let Some(gpu) = shared_gpu() else { return };
    let net = Arc::new(load_controlnet(gpu, &ldm_file(), DType::F32).unwrap());
    let fx = Fixture::open();
    let x = fx.input(gpu, "sample");
    let ctx = fx.input(gpu, "encoder_hidden_states");
    let hint = fx.input(gpu, "hint");
    let emb = net.net.as_controlnet().unwrap().embed_hint(gpu, &hint).unwrap();
    let apps: Vec<_> = [0.3, 0.5, 1.0].map(|s| application(&net, s, 0.0, 1.0)).into();
    let app = |strength: f64| apps.iter().find(|a| a.strength == strength).unwrap().spec();
    let prepared = |strength: f64, sigma_start: f64, sigma_end: f64| PreparedControl {
        spec: app(strength),
        hint: emb.clone(),
        features: Vec::new(),
        sigma_start,
        sigma_end,
    };
    let t = [500.0, 500.0];
    let one = net.net.as_controlnet().unwrap().forward(gpu, &x, &t, &ctx, &emb).unwrap();
    let want = scale_residuals(gpu, &one, 0.8).unwrap();
    // Two controls of 0.3 and 0.5, both active at sigma 2: 0.8 x the residuals.
    let chain = [prepared(0.3, 5.0, 1.0), prepared(0.5, 1e9, 0.0)];
    let got =
        control_residuals(gpu, &chain, &UnetCall { x: &x, timesteps: &t, context: &ctx, sigma: 2.0 }).unwrap().unwrap();
    let (down, mid) = (got.down.as_ref().unwrap(), got.mid.as_ref().unwrap());
    assert!(got.input.is_empty(), "a ControlNet adds nothing to the input blocks");
    for (g, w) in down.iter().zip(&want.down).chain([(mid, &want.mid)]) {
        let err = max_abs_diff(&gpu.download(g).unwrap(), &gpu.download(w).unwrap());
        assert!(err < 1e-5, "chained sum off by {err}");
    }
    // At sigma 6 only the second (0.5) is active; at sigma 0.5 too; with neither active, no residuals.
    for sigma in [6.0, 0.5] {
        let got =
            control_residuals(gpu, &chain, &UnetCall { x: &x, timesteps: &t, context: &ctx, sigma }).unwrap().unwrap();
        let want = scale_residuals(gpu, &one, 0.5).unwrap();
        let err = max_abs_diff(&gpu.download(got.mid.as_ref().unwrap()).unwrap(), &gpu.download(&want.mid).unwrap());
        assert!(err < 1e-6, "sigma {sigma}: {err}");
    }
    // A ControlNet for another architecture is refused before sampling, naming its file.
    let mut other = tiny_unet(gpu, DType::F32).config.clone();
    other.context_dim = 768;
    let sigmas = models::sampling::schedulers::ModelSigmas::sd15();
    let one_app = [app(1.0)];
    let e = prepare_controls(gpu, &other, &sigmas, one_app, [1, 4, 8, 8], 1).err().expect("must not fit");
    assert!(
        e.contains("control_ldm.safetensors") && e.contains("does not fit the model") && e.contains("context 32"),
        "{e}"
    );
    let unet = tiny_unet(gpu, DType::F32);
    let one = prepare_controls(gpu, &unet.config, &sigmas, one_app, [2, 4, 8, 8], 1).unwrap();
    assert_eq!(one[0].hint.shape(), &[2, 8, 8, 8]);
    // Three conditionings batched into one call: the hint three times over, each copy the same.
    let ok = prepare_controls(gpu, &unet.config, &sigmas, one_app, [2, 4, 8, 8], 3).unwrap();
    assert_eq!(ok[0].hint.shape(), &[6, 8, 8, 8]);
    let (h1, h3) = (gpu.download(&one[0].hint).unwrap(), gpu.download(&ok[0].hint).unwrap());
    assert_eq!(h3, h1.repeat(3));
    // ComfyUI's percent_to_sigma: start 0 -> 999999999.9, end 1 -> 0.
    assert_eq!((ok[0].sigma_start, ok[0].sigma_end), (999_999_999.9, 0.0));

    let narrow = [prepared(1.0, 5.0, 1.0)];
    assert!(
        control_residuals(gpu, &narrow, &UnetCall { x: &x, timesteps: &t, context: &ctx, sigma: 0.5 })
            .unwrap()
            .is_none()
    );
    assert!(
        control_residuals(gpu, &narrow, &UnetCall { x: &x, timesteps: &t, context: &ctx, sigma: 6.0 })
            .unwrap()
            .is_none()
    );
}

#[test]
fn control_image_is_center_cropped_resized_nearest_exact_and_repeated_to_the_batch() {
    // A 2x4 picture (one channel = column index + 10 * row) to 2x2: the center crop keeps columns 1..3,
    // nearest-exact then picks them as they are; batch 1 -> 3 repeats; gray -> 3 channels.
    let data: Vec<f32> = (0..2).flat_map(|y| (0..4).map(move |x| (x + 10 * y) as f32 / 100.0)).collect();
    let img = Image { batch: 1, height: 2, width: 4, channels: 1, data };
    let out = control_hint(&img, 2, 2, 3, 3).unwrap();
    assert_eq!(out.len(), 3 * 3 * 4);
    let plane = [0.01, 0.02, 0.11, 0.12];
    for b in 0..3 {
        for c in 0..3 {
            assert_eq!(&out[(b * 3 + c) * 4..][..4], &plane, "item {b} channel {c}");
        }
    }
    // 4x4 RGBA up to 8x8: each pixel doubled (nearest-exact), alpha dropped, NCHW.
    let data: Vec<f32> = (0..16).flat_map(|p| [p as f32, 100.0 + p as f32, 200.0 + p as f32, -1.0]).collect();
    let img = Image { batch: 1, height: 4, width: 4, channels: 4, data };
    let out = control_hint(&img, 8, 8, 3, 1).unwrap();
    for y in 0..8 {
        for x in 0..8 {
            let p = (y / 2) * 4 + x / 2;
            for c in 0..3 {
                assert_eq!(out[c * 64 + y * 8 + x], 100.0 * c as f32 + p as f32);
            }
        }
    }
    // Two channels cannot feed a 3-channel ControlNet.
    let img = Image { batch: 1, height: 2, width: 2, channels: 2, data: vec![0.0; 8] };
    assert!(control_hint(&img, 2, 2, 3, 1).is_err());
}

/// Copies the LDM fixture with one tensor changed (`None` drops it).
fn broken_copy(dir: &Path, name: &str, key: &str, replace: Option<(Vec<usize>, Vec<f32>)>) -> PathBuf {
    let meta = [("sdgraph.unet.heads", "2"), ("sdgraph.norm_groups", "4")];
    crate::common::sd_tiny::copy_with_tensor(&ldm_file(), &dir.join(name), key, replace, &meta)
}

#[test]
fn broken_controlnet_files_name_the_file_and_the_key() {
    let Some(gpu) = shared_gpu() else { return };
    let tmp = crate::common::temp_dir("controlnet-broken");
    let load = |p: &Path| load_controlnet(gpu, p, DType::F32).err().expect("must fail");

    let p = broken_copy(&tmp, "missing.safetensors", "control_model.zero_convs.4.0.bias", None);
    let e = load(&p);
    assert!(e.contains("missing.safetensors") && e.contains("control_model.zero_convs.4.0.bias"), "{e}");

    let p = broken_copy(&tmp, "no_zero_conv.safetensors", "control_model.zero_convs.8.0.weight", None);
    let e = load(&p);
    assert!(e.contains("no_zero_conv.safetensors") && e.contains("8 zero convs"), "{e}");

    let p = broken_copy(
        &tmp,
        "shape.safetensors",
        "control_model.input_hint_block.4.weight",
        Some((vec![8, 4, 3, 1], vec![0.0; 96])),
    );
    let e = load(&p);
    assert!(e.contains("shape.safetensors") && e.contains("control_model.input_hint_block.4.weight"), "{e}");
    assert!(e.contains("[8, 4, 3, 1]") || e.contains("[8, 4, 3, 3]"), "names the shapes: {e}");

    let p = broken_copy(
        &tmp,
        "zero_shape.safetensors",
        "control_model.middle_block_out.0.weight",
        Some((vec![16, 16, 3, 3], vec![0.0; 16 * 16 * 9])),
    );
    let e = load(&p);
    assert!(e.contains("control_model.middle_block_out.0.weight"), "{e}");

    // A checkpoint is not a ControlNet; a folder without weights; a file that is not safetensors.
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_tiny/model.safetensors");
    let e = load(&ckpt);
    assert!(e.contains("model.safetensors") && e.contains("not an SD ControlNet"), "{e}");
    let e = load(&tmp);
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    let junk = tmp.join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = load(&junk);
    assert!(e.contains("junk.safetensors"), "{e}");
    let e = load(&tmp.join("absent.safetensors"));
    assert!(e.contains("absent.safetensors"), "{e}");

    // A diffusers file with a bad config.json names it.
    let ddir = tmp.join("diffusers");
    std::fs::create_dir_all(&ddir).unwrap();
    std::fs::copy(
        diffusers_dir().join("diffusion_pytorch_model.safetensors"),
        ddir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::write(ddir.join("config.json"), r#"{"attention_head_dim": "eight"}"#).unwrap();
    let e = load(&ddir);
    assert!(e.contains("config.json") && e.contains("attention_head_dim"), "{e}");
    let _ = write; // (the plain writer is the metadata-less variant of the one used above)
}

#[test]
fn controlnet_configs_that_say_what_sdgraph_ignores_are_refused() {
    let Some(gpu) = shared_gpu() else { return };
    let edits: [(&str, serde_json::Value, &str); 4] = [
        ("addition_embed_type", "text_time".into(), "SDXL"),
        ("global_pool_conditions", true.into(), "global_pool_conditions"),
        ("controlnet_conditioning_channel_order", "bgr".into(), "bgr"),
        ("class_embed_type", "timestep".into(), "class_embed_type"),
    ];
    for (i, (key, value, want)) in edits.into_iter().enumerate() {
        let dir = crate::common::temp_dir(&format!("controlnet-config-{i}"));
        for e in std::fs::read_dir(diffusers_dir()).unwrap().flatten() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(&path, cfg.to_string()).unwrap();
        let e = load_controlnet(gpu, &dir, DType::F32).err().unwrap_or_else(|| panic!("{key}: loaded"));
        assert!(e.contains(want) && e.contains("not supported yet"), "{key}: {e}");
    }
    // The unedited folder loads.
    assert!(load_controlnet(gpu, &diffusers_dir(), DType::F32).is_ok());
}
