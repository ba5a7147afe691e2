//! SD 1.x inpainting UNets (9 input channels: latent, mask, masked-image latent) against
//! tests/fixtures/inpaint_unet (make_inpaint_unet_fixture.py: sd_tiny's UNet with a widened conv_in, diffusers'
//! UNet2DConditionModel with in_channels 9 and ComfyUI's VAEEncodeForInpaint, InpaintModelConditioning,
//! concat_cond and KSamplerX0Inpaint ported, in float64). The checkpoint is sd_tiny/model.safetensors with the
//! fixture's conv_in, loaded by CheckpointLoaderSimple; every node runs as a graph would run it.
//!
//! Tolerances: the UNet call is f32 against float64 (sd_tiny's plain UNet lands within ~1e-5 per call,
//! tests/models/models_unet.rs); the sampling runs, like tests/models/sampling_unet.rs, end at magnitudes of
//! 50-60 after a 14.6-sigma start on this random model, so their bound scales with the values:
//! `max |got - want| <= TOL * max(1, max |want|)`. The fixture's meta.json records how far ComfyUI's blank concat
//! (what a sampler that ignores the mask and the masked image would feed) moves each result: 27 to 29.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use gpu::DType;
use gpu::testing::shared_gpu;
use graph::{Image, Mask, ParamValue, Registry, Value};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};
use nodes::payload::{Conditioning, Latent, ModelHandle};

use crate::common::{call_kind, int, latent_of, latent_value, one, s};
use crate::ksampler_fixture::{Fixture, dir};

/// Relative bound of the sampled latents (see the header). Measured on lavapipe: see the commit.
const TOL: f64 = 1e-5;
/// The UNet call and the VAE's latents, absolute (values of a few units).
const TOL_CALL: f64 = 1e-4;

const CONV_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::open("inpaint_unet"))
}

/// Changes one tensor of a checkpoint: its name, shape and values.
type Edit<'a> = &'a dyn Fn(&str, &mut Vec<usize>, &mut Vec<f32>);

/// sd_tiny/model.safetensors with `edit` applied to its tensors, written to `dir/file` with its metadata.
fn checkpoint_with(dir: &Path, file: &str, edit: Edit<'_>) -> PathBuf {
    let st = SafeTensors::open(&dir_sd_tiny().join("model.safetensors")).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for name in st.names() {
        let Ok((mut shape, mut data)) = st.f32_any(name) else { continue }; // integer buffers
        edit(name, &mut shape, &mut data);
        owned.push((name.to_string(), shape, data));
    }
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    let meta: Vec<(&str, &str)> = st.metadata().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let path = dir.join(file);
    write_with_metadata(&path, &tensors, Dtype::F32, &meta).unwrap();
    path
}

fn dir_sd_tiny() -> PathBuf {
    dir().join("sd_tiny")
}

/// The inpainting checkpoint: sd_tiny with the fixture's 9-channel conv_in.
fn inpaint_checkpoint(dir: &Path) -> PathBuf {
    let (shape, data) = fixture().tensor("conv_in.weight");
    checkpoint_with(dir, "tiny_inpaint.safetensors", &|name, s, d| {
        if name == CONV_IN {
            *s = shape.clone();
            *d = data.clone();
        }
    })
}

/// MODEL, CLIP, VAE of CheckpointLoaderSimple on `path`.
fn load(reg: &Registry, path: &Path) -> Result<Vec<Value>, String> {
    call_kind(reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", s(&path.display().to_string()))])
}

fn max_diff(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max)
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
}

fn conditioning(which: &str) -> Value {
    let gpu = shared_gpu().unwrap();
    let (shape, data) = fixture().tensor(which);
    Value::payload(Conditioning::new(gpu.upload(&data, &shape, DType::F32).unwrap()))
}

fn pixels() -> Value {
    let (shape, data) = fixture().tensor("pixels");
    Value::Image(Arc::new(Image::from_data(shape[0], shape[1], shape[2], shape[3], data).unwrap()))
}

fn mask() -> Value {
    let (shape, data) = fixture().tensor("mask");
    Value::Mask(Arc::new(Mask { batch: shape[0], height: shape[1], width: shape[2], data }))
}

fn ksampler(reg: &Registry, model: &Value, pos: &Value, neg: &Value, latent: &Value) -> Arc<Latent> {
    let k = &fixture().meta["ksampler"];
    let inputs = [
        ("model", model.clone()),
        ("positive", pos.clone()),
        ("negative", neg.clone()),
        ("latent_image", latent.clone()),
    ];
    let params = [
        ("seed", int(k["seed"].as_i64().unwrap())),
        ("steps", int(k["steps"].as_i64().unwrap())),
        ("cfg", ParamValue::Float(k["cfg"].as_f64().unwrap())),
        ("sampler_name", s(k["sampler_name"].as_str().unwrap())),
        ("scheduler", s(k["scheduler"].as_str().unwrap())),
        ("denoise", ParamValue::Float(k["denoise"].as_f64().unwrap())),
    ];
    latent_of(&one(reg, "KSampler", &inputs, &params))
}

#[test]
fn inpainting_unet_matches_diffusers_on_the_concatenated_input() {
    let Some(gpu) = shared_gpu() else { return };
    let dir = crate::common::temp_dir("inpaint-unet-call");
    let reg = nodes::builtin_registry();
    let model = load(&reg, &inpaint_checkpoint(&dir)).unwrap().remove(0);
    let model = model.downcast::<ModelHandle>().unwrap();
    let cfg = &model.unet.config;
    assert_eq!((cfg.in_channels, cfg.out_channels, cfg.is_inpaint()), (9, 4, true));
    let fx = fixture();
    let (xs, x) = fx.tensor("unet.x");
    let (cs, c) = fx.tensor("unet.context");
    let t = fx.tensor("unet.t").1;
    let xt = gpu.upload(&x, &xs, DType::F32).unwrap();
    let ct = gpu.upload(&c, &cs, DType::F32).unwrap();
    let out = gpu.download(&model.unet.forward(gpu, &xt, &t, &ct).unwrap()).unwrap();
    let want = fx.tensor("unet.out").1;
    let d = max_diff(&out, &want);
    println!("inpainting UNet call: max abs diff {d:.3e} (values up to {:.3})", max_abs(&want));
    assert!(d < TOL_CALL, "UNet output off by {d}");
}

/// A copy of sd_tiny's diffusers folder made an inpainting model: unet/config.json's in_channels 9 and the fixture's
/// conv_in (diffusers' runwayml inpainting layout).
fn inpaint_diffusers_folder(dir: &Path) -> PathBuf {
    let (src, to) = (dir_sd_tiny().join("diffusers"), dir.join("inpaint_diffusers"));
    for part in ["scheduler", "text_encoder", "unet", "vae"] {
        std::fs::create_dir_all(to.join(part)).unwrap();
        for e in std::fs::read_dir(src.join(part)).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(part).join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(src.join("model_index.json"), to.join("model_index.json")).unwrap();
    let config = to.join("unet/config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    v["in_channels"] = 9.into();
    std::fs::write(&config, v.to_string()).unwrap();
    let weights = to.join("unet/diffusion_pytorch_model.safetensors");
    let st = SafeTensors::open(&weights).unwrap();
    let (shape, data) = fixture().tensor("conv_in.weight");
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for name in st.names() {
        let (s, d) = if name == "conv_in.weight" { (shape.clone(), data.clone()) } else { st.f32_any(name).unwrap() };
        owned.push((name.to_string(), s, d));
    }
    drop(st);
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    models::checkpoint::safetensors::write(&weights, &tensors, Dtype::F32).unwrap();
    to
}

#[test]
fn an_inpainting_diffusers_folder_loads_and_matches_diffusers() {
    let Some(gpu) = shared_gpu() else { return };
    let dir = crate::common::temp_dir("inpaint-unet-diffusers");
    let reg = nodes::builtin_registry();
    let folder = inpaint_diffusers_folder(&dir);
    // The whole folder passes the family check; its UNet is loaded by UNETLoader, which reads the group count from
    // unet/config.json (CheckpointLoaderSimple takes SD's 32, which the tiny model does not have).
    assert!(models::checkpoint::convert::open_checkpoint(&folder).is_ok(), "the inpainting folder is refused");
    let unet = s(&folder.join("unet").display().to_string());
    let model = one(&reg, "UNETLoader", &[], &[("unet_name", unet)]);
    let model = model.downcast::<ModelHandle>().unwrap();
    assert!(model.unet.config.is_inpaint());
    let fx = fixture();
    let (xs, x) = fx.tensor("unet.x");
    let (cs, c) = fx.tensor("unet.context");
    let t = fx.tensor("unet.t").1;
    let xt = gpu.upload(&x, &xs, DType::F32).unwrap();
    let ct = gpu.upload(&c, &cs, DType::F32).unwrap();
    let out = gpu.download(&model.unet.forward(gpu, &xt, &t, &ct).unwrap()).unwrap();
    let d = max_diff(&out, &fx.tensor("unet.out").1);
    println!("inpainting UNet from a diffusers folder: max abs diff {d:.3e}");
    assert!(d < TOL_CALL, "UNet output off by {d}");
}

#[test]
fn ksampler_with_an_inpainting_model_matches_comfyui() {
    if shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("inpaint-unet-ksampler");
    let reg = nodes::builtin_registry();
    let loaded = load(&reg, &inpaint_checkpoint(&dir)).unwrap();
    let (model, vae) = (&loaded[0], &loaded[2]);
    let fx = fixture();
    let (pos, neg) = (conditioning("positive"), conditioning("negative"));
    for case in fx.meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (p, n, latent) = match name {
            "encode_for_inpaint" => {
                let inputs = [("pixels", pixels()), ("vae", vae.clone()), ("mask", mask())];
                let grow = fx.meta["grow_mask_by"].as_i64().unwrap();
                (pos.clone(), neg.clone(), one(&reg, "VAEEncodeForInpaint", &inputs, &[("grow_mask_by", int(grow))]))
            }
            "model_conditioning" | "model_conditioning_no_noise_mask" => {
                let inputs = [
                    ("positive", pos.clone()),
                    ("negative", neg.clone()),
                    ("vae", vae.clone()),
                    ("pixels", pixels()),
                    ("mask", mask()),
                ];
                let noise_mask = ParamValue::Bool(name == "model_conditioning");
                let mut out = call_kind(&reg, "InpaintModelConditioning", &inputs, &[("noise_mask", noise_mask)])
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let (p, n, l) = (out.remove(0), out.remove(0), out.remove(0));
                let c = p.downcast::<Conditioning>().unwrap();
                let concat = c.entries[0].inpaint.as_ref().expect("the positive carries the masked image");
                let d = max_diff(&concat.latent.samples, &fx.tensor(&format!("{name}.concat_latent")).1);
                assert!(d < TOL_CALL, "{name}: masked-image latent off by {d}");
                assert!(n.downcast::<Conditioning>().unwrap().entries[0].inpaint.is_some(), "{name}: negative");
                (p, n, l)
            }
            "blank" => (pos.clone(), neg.clone(), latent_value(Latent::zeros([1, 4, 8, 8]))),
            "area_encode_for_inpaint" => {
                let (shape, data) = fx.tensor("area.pixels");
                let px =
                    Value::Image(Arc::new(Image::from_data(shape[0], shape[1], shape[2], shape[3], data).unwrap()));
                let (shape, data) = fx.tensor("area.mask");
                let m = Value::Mask(Arc::new(Mask { batch: shape[0], height: shape[1], width: shape[2], data }));
                let grow = fx.meta["grow_mask_by"].as_i64().unwrap();
                let inputs = [("pixels", px), ("vae", vae.clone()), ("mask", m)];
                let latent = one(&reg, "VAEEncodeForInpaint", &inputs, &[("grow_mask_by", int(grow))]);
                // The negative's text over the area (make_inpaint_unet_fixture.py's AREA), combined with the positive.
                let a = &fx.meta["area"];
                let num = |k: &str| int(a[k].as_i64().unwrap());
                let params = [
                    ("width", num("width")),
                    ("height", num("height")),
                    ("x", num("x")),
                    ("y", num("y")),
                    ("strength", ParamValue::Float(a["strength"].as_f64().unwrap())),
                ];
                let area = one(&reg, "ConditioningSetArea", &[("conditioning", neg.clone())], &params);
                let both =
                    one(&reg, "ConditioningCombine", &[("conditioning_1", pos.clone()), ("conditioning_2", area)], &[]);
                (both, neg.clone(), latent)
            }
            other => panic!("unknown case {other}"),
        };
        let l = latent_of(&latent);
        let d = max_diff(&l.samples, &fx.tensor(&format!("{name}.latent")).1);
        assert!(d < TOL_CALL, "{name}: the latent KSampler gets is off by {d}");
        assert_eq!(l.noise_mask.is_some(), case["noise_mask"].as_bool().unwrap(), "{name}: noise mask");
        if let Some((shape, m)) = &l.noise_mask {
            let (ws, want) = fx.tensor(&format!("{name}.noise_mask"));
            assert_eq!(shape, &ws, "{name}: noise mask shape");
            assert!(max_diff(m, &want) < 1e-6, "{name}: noise mask");
        }
        let out = ksampler(&reg, model, &p, &n, &latent);
        let want = fx.tensor(&format!("{name}.final")).1;
        let (d, scale) = (max_diff(&out.samples, &want), max_abs(&want).max(1.0));
        println!("{name}: max abs diff {d:.3e} on values up to {scale:.2} ({:.2e} relative)", d / scale);
        assert!(d <= TOL * scale, "{name}: KSampler result off by {d} (bound {})", TOL * scale);
    }
}

#[test]
fn inpaint_model_conditioning_only_sets_the_noise_mask_for_a_plain_model() {
    if shared_gpu().is_none() {
        return;
    }
    // ComfyUI's plain model has no concat_keys: the prompts' masked image is ignored, the latent's noise mask is
    // what inpaints. Same as VAEEncode + SetLatentNoiseMask with the mask at the picture's size.
    let reg = nodes::builtin_registry();
    let loaded = load(&reg, &dir_sd_tiny().join("model.safetensors")).unwrap();
    let (model, vae) = (&loaded[0], &loaded[2]);
    let (pos, neg) = (conditioning("positive"), conditioning("negative"));
    let data: Vec<f32> = (0..256).map(|i| if (i % 16) > 6 && i / 16 > 4 { 1.0 } else { 0.0 }).collect();
    let m = Value::Mask(Arc::new(Mask { batch: 1, height: 16, width: 16, data }));
    let inputs = [
        ("positive", pos.clone()),
        ("negative", neg.clone()),
        ("vae", vae.clone()),
        ("pixels", pixels()),
        ("mask", m.clone()),
    ];
    let out = call_kind(&reg, "InpaintModelConditioning", &inputs, &[]).unwrap();
    let via_node = ksampler(&reg, model, &out[0], &out[1], &out[2]);
    let encoded = one(&reg, "VAEEncode", &[("pixels", pixels()), ("vae", vae.clone())], &[]);
    let masked = one(&reg, "SetLatentNoiseMask", &[("samples", encoded), ("mask", m)], &[]);
    let plain = ksampler(&reg, model, &pos, &neg, &masked);
    assert_eq!(via_node.samples, plain.samples, "the plain model ignores the masked image");
    let unmasked = latent_of(&out[2]);
    assert!(via_node.samples != unmasked.samples, "the masked part was sampled");
}

#[test]
fn unets_with_other_input_widths_or_misfitting_shapes_are_refused() {
    if shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("inpaint-unet-errors");
    let reg = nodes::builtin_registry();
    let (shape, data) = fixture().tensor("conv_in.weight");
    // A 9-channel UNet predicting 9 channels.
    let out9 = checkpoint_with(&dir, "out9.safetensors", &|name, s, d| match name {
        CONV_IN => (*s, *d) = (shape.clone(), data.clone()),
        "model.diffusion_model.out.2.weight" => {
            s[0] = 9;
            *d = vec![0.01; s.iter().product()];
        }
        "model.diffusion_model.out.2.bias" => (*s, *d) = (vec![9], vec![0.0; 9]),
        _ => {}
    });
    let e = load(&reg, &out9).unwrap_err();
    assert!(e.contains("9-channel (inpainting)") && e.contains("out.2.weight gives 9"), "{e}");
    // conv_in widened but its bias for another width: the shape error names the tensor.
    let bias = checkpoint_with(&dir, "bias.safetensors", &|name, s, d| match name {
        CONV_IN => (*s, *d) = (shape.clone(), data.clone()),
        "model.diffusion_model.input_blocks.0.0.bias" => (*s, *d) = (vec![5], vec![0.0; 5]),
        _ => {}
    });
    let e = load(&reg, &bias).unwrap_err();
    assert!(e.contains("input_blocks.0.0.bias"), "{e}");
    // 5 input channels: refused by family, naming the widths sdgraph runs.
    let five = checkpoint_with(&dir, "in5.safetensors", &|name, s, d| {
        if name == CONV_IN {
            s[1] = 5;
            *d = vec![0.01; s.iter().product()];
        }
    });
    let e = load(&reg, &five).unwrap_err();
    assert!(e.contains("5 input channels") && e.contains("9 for SD 1.x inpainting"), "{e}");
}

#[test]
fn controlnets_steer_an_inpainting_model_with_the_latent_alone() {
    if shared_gpu().is_none() {
        return;
    }
    // A ControlNet takes the 4-channel latent (ComfyUI's get_control gets x before the concat), so the tiny
    // fixture's ControlNet fits the inpainting UNet made from the same tiny model.
    let dir = crate::common::temp_dir("inpaint-unet-controlnet");
    let reg = nodes::builtin_registry();
    let loaded = load(&reg, &inpaint_checkpoint(&dir)).unwrap();
    let (model, vae) = (&loaded[0], &loaded[2]);
    let cnet_path = crate::ksampler_fixture::dir().join("controlnet/control_ldm.safetensors");
    let cnet = one(&reg, "ControlNetLoader", &[], &[("control_net_name", s(&cnet_path.display().to_string()))]);
    let (pos, neg) = (conditioning("positive"), conditioning("negative"));
    let latent = one(&reg, "VAEEncodeForInpaint", &[("pixels", pixels()), ("vae", vae.clone()), ("mask", mask())], &[]);
    let inputs = [("positive", pos.clone()), ("negative", neg.clone()), ("control_net", cnet), ("image", pixels())];
    let applied = call_kind(&reg, "ControlNetApplyAdvanced", &inputs, &[]).unwrap();
    let steered = ksampler(&reg, model, &applied[0], &applied[1], &latent);
    let plain = ksampler(&reg, model, &pos, &neg, &latent);
    let moved = max_diff(&steered.samples, &plain.samples);
    println!("the ControlNet moves the inpainting model's result by up to {moved:.3}");
    assert!(moved > 1e-3 && steered.samples.iter().all(|v| v.is_finite()), "moved by {moved}");
}
