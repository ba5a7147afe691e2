//! VAELoader: a standalone VAE file, in the LDM layout (vae-ft-mse-840000-ema-pruned's) and
//! diffusers' (safetensors, a PyTorch zip `.pt`, a `vae/` folder), decodes and encodes exactly
//! as the tiny checkpoint's own VAE; files that are no VAE are refused naming what was expected.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graph::{Image, ParamValue, Registry, Value};
use models::checkpoint::pth;
use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};
use nodes::payload::Latent;

use crate::common::call_kind;
use crate::common::sd_tiny::fixtures;

fn load_vae(reg: &Registry, path: &Path) -> Result<Value, String> {
    call_kind(reg, "VAELoader", &[], &[("vae_name", ParamValue::String(path.display().to_string()))])
        .map(|mut v| v.remove(0))
}

/// The tiny checkpoint's `first_stage_model.` tensors without the prefix.
fn ldm_vae_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::open(&fixtures().join("model.safetensors")).unwrap();
    st.names()
        .filter_map(|n| {
            let short = n.strip_prefix("first_stage_model.")?;
            let (shape, data) = st.f32_any(n).unwrap();
            Some((short.to_string(), shape, data))
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], meta: &[(&str, &str)]) {
    let t: Vec<(&str, &[usize], &[f32])> =
        tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    write_with_metadata(path, &t, Dtype::F32, meta).unwrap();
}

/// The fixture's diffusers VAE tensors, as stored.
fn diffusers_vae_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::open(&fixtures().join("diffusers/vae/diffusion_pytorch_model.safetensors")).unwrap();
    st.names()
        .map(|n| {
            let (shape, data) = st.f32_any(n).unwrap();
            (n.to_string(), shape, data)
        })
        .collect()
}

/// Decoded pixels of `latent` and the encoded latent of `image`, through VAEDecode / VAEEncode with `vae`.
fn round_trip(reg: &Registry, vae: &Value, latent: &Value, image: &Value) -> (Vec<f32>, Vec<f32>) {
    let dec = call_kind(reg, "VAEDecode", &[("samples", latent.clone()), ("vae", vae.clone())], &[]).unwrap();
    let Value::Image(pixels) = &dec[0] else { panic!("VAEDecode gave no image") };
    let enc = call_kind(reg, "VAEEncode", &[("pixels", image.clone()), ("vae", vae.clone())], &[]).unwrap();
    let lat = enc[0].downcast::<Latent>().unwrap();
    (pixels.data.clone(), lat.samples.clone())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

#[test]
fn standalone_vaes_in_both_layouts_equal_the_checkpoints_vae() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("vae-loader");
    let reg = nodes::builtin_registry();
    let ckpt = fixtures().join("model.safetensors");
    let loaded = call_kind(
        &reg,
        "CheckpointLoaderSimple",
        &[],
        &[("ckpt_name", ParamValue::String(ckpt.display().to_string()))],
    )
    .unwrap();
    let latent = Value::payload(Latent {
        shape: [1, 4, 6, 5],
        samples: gpu::testing::random(4 * 6 * 5, 11, -3.0, 3.0),
        noise_mask: None,
        batch_index: None,
    });
    let image = Value::Image(Arc::new(
        Image::from_data(1, 12, 10, 3, gpu::testing::random(12 * 10 * 3, 12, 0.0, 1.0)).unwrap(),
    ));
    let (want_px, want_lat) = round_trip(&reg, &loaded[2], &latent, &image);

    // LDM layout, as vae-ft-mse-840000-ema-pruned.safetensors (the tiny VAE's 4 groups in the metadata).
    let ldm = dir.join("tiny_vae.safetensors");
    write_safetensors(&ldm, &ldm_vae_tensors(), &[("sdgraph.norm_groups", "4")]);
    // diffusers layout: the fixture's own vae/ file beside its config.json (norm_num_groups 4),
    // a copy of it as a PyTorch zip .pt beside the same config, and the vae/ folder itself.
    let diffusers_file = fixtures().join("diffusers/vae/diffusion_pytorch_model.safetensors");
    let pt_dir = dir.join("pt");
    std::fs::create_dir_all(&pt_dir).unwrap();
    let pt = pt_dir.join("tiny_vae.pt");
    let tensors = diffusers_vae_tensors();
    let t: Vec<(&str, &[usize], &[f32])> =
        tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    pth::write(&pt, "tiny_vae", &t).unwrap();
    std::fs::copy(fixtures().join("diffusers/vae/config.json"), pt_dir.join("config.json")).unwrap();
    let cases: [(&str, PathBuf); 4] = [
        ("LDM .safetensors", ldm),
        ("diffusers .safetensors", diffusers_file),
        ("diffusers .pt", pt),
        ("diffusers vae/ folder", fixtures().join("diffusers/vae")),
    ];
    for (what, path) in cases {
        let vae = load_vae(&reg, &path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (px, lat) = round_trip(&reg, &vae, &latent, &image);
        let (dp, dl) = (max_abs(&px, &want_px), max_abs(&lat, &want_lat));
        println!("{what}: decode max abs diff {dp:e}, encode {dl:e}");
        assert!(dp <= 1e-6 && dl <= 1e-6, "{what}: decode {dp}, encode {dl}");
    }

    // The comparison can fail: one changed weight changes the decode.
    let mut edited = ldm_vae_tensors();
    edited.iter_mut().find(|(n, _, _)| n == "decoder.conv_out.bias").unwrap().2[0] += 0.25;
    let changed = dir.join("edited.safetensors");
    write_safetensors(&changed, &edited, &[("sdgraph.norm_groups", "4")]);
    let (px, _) = round_trip(&reg, &load_vae(&reg, &changed).unwrap(), &latent, &image);
    assert!(max_abs(&px, &want_px) > 0.1, "an edited VAE should decode differently");
}

#[test]
fn a_graph_decodes_through_vae_loader_as_through_the_checkpoint() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("vae-loader-graph");
    let ldm = dir.join("tiny_vae.safetensors");
    write_safetensors(&ldm, &ldm_vae_tensors(), &[("sdgraph.norm_groups", "4")]);
    let ckpt = fixtures().join("model.safetensors");
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "vae": (kind: "VAELoader", params: {{ "vae_name": {ldm:?} }}),
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "small": (kind: "ImageScale", inputs: {{ "image": "load.image" }}, params: {{ "width": 24, "height": 16, "upscale_method": "area" }}),
            "enc": (kind: "VAEEncode", inputs: {{ "pixels": "small.image", "vae": "ckpt.vae" }}),
            "dec_ckpt": (kind: "VAEDecode", inputs: {{ "samples": "enc.latent", "vae": "ckpt.vae" }}),
            "dec_file": (kind: "VAEDecode", inputs: {{ "samples": "enc.latent", "vae": "vae.vae" }}),
            "save_ckpt": (kind: "SaveImage", inputs: {{ "images": "dec_ckpt.image" }}, params: {{ "filename_prefix": "ckpt" }}),
            "save_file": (kind: "SaveImage", inputs: {{ "images": "dec_file.image" }}, params: {{ "filename_prefix": "file" }}),
        }})"#
    );
    let reg = nodes::builtin_registry();
    let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
    let r = crate::common::run(&mut graph::exec::Executor::default(), &g, &dir.join("out"));
    assert!(r.ok, "{:?}", r.errors());
    // The VAE file is recorded as read, with its digest.
    assert!(r.files_read().keys().any(|p| p.ends_with("tiny_vae.safetensors")), "{:?}", r.files_read());
    let a = image::open(dir.join("out/ckpt_00001.png")).unwrap().to_rgb8();
    let b = image::open(dir.join("out/file_00001.png")).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (24, 16));
    assert_eq!(a, b);
}

#[test]
fn files_that_are_no_vae_are_refused_naming_what_was_expected() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("vae-loader-errors");
    let reg = nodes::builtin_registry();
    // The UNet part of the checkpoint: a checkpoint without a VAE.
    let st = SafeTensors::open(&fixtures().join("model.safetensors")).unwrap();
    let unet: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .filter(|n| n.starts_with("model.diffusion_model."))
        .map(|n| {
            let (s, d) = st.f32_any(n).unwrap();
            (n.to_string(), s, d)
        })
        .collect();
    let no_vae = dir.join("unet_only.safetensors");
    write_safetensors(&no_vae, &unet, &[]);
    let e = load_vae(&reg, &no_vae).unwrap_err();
    assert!(e.contains("not an SD VAE") && e.contains("encoder.*") && e.contains("without a VAE"), "{e}");
    // Something else entirely (the CLIP reference outputs).
    let e = load_vae(&reg, &fixtures().join("clip/expected.safetensors")).unwrap_err();
    assert!(e.contains("not an SD VAE") && e.contains("decoder.up_blocks") && e.contains("keys such as"), "{e}");
    // A VAE missing a tensor names it.
    let mut partial = ldm_vae_tensors();
    partial.retain(|(n, _, _)| n != "decoder.conv_out.weight");
    let p = dir.join("partial.safetensors");
    write_safetensors(&p, &partial, &[("sdgraph.norm_groups", "4")]);
    let e = load_vae(&reg, &p).unwrap_err();
    assert!(e.contains("decoder.conv_out.weight"), "{e}");
    // ComfyUI's built-in names, a missing file, a folder without weights.
    for name in ["taesd", "pixel_space"] {
        let e = load_vae(&reg, Path::new(name)).unwrap_err();
        assert!(e.contains("built-in") && e.contains(name), "{e}");
    }
    let e = load_vae(&reg, &dir.join("missing.safetensors")).unwrap_err();
    assert!(e.contains("missing.safetensors") && e.contains("cannot open"), "{e}");
    let e = load_vae(&reg, &dir).unwrap_err();
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
}
