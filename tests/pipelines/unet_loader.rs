//! UNETLoader: a diffusion model on its own (a whole checkpoint, the bare LDM UNet, diffusers' `unet/`
//! folder or its weights file) samples exactly as the tiny checkpoint's own UNet; files that are no SD 1.x
//! UNet are refused naming what they are.

use std::path::Path;

use graph::{ParamValue, Registry, Value};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};

use crate::common::sd_tiny::fixtures;
use crate::common::{call_kind, int, latent_of, one, s};

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn load_unet(reg: &Registry, path: &Path) -> Result<Value, String> {
    call_kind(reg, "UNETLoader", &[], &[("unet_name", ParamValue::String(path.display().to_string()))])
        .map(|mut v| v.remove(0))
}

/// The tiny checkpoint's `model.diffusion_model.` tensors without the prefix.
fn bare_unet() -> Tensors {
    let st = SafeTensors::open(&fixtures().join("model.safetensors")).unwrap();
    st.names()
        .filter_map(|n| {
            let short = n.strip_prefix("model.diffusion_model.")?;
            let (shape, data) = st.f32_any(n).unwrap();
            Some((short.to_string(), shape, data))
        })
        .collect()
}

fn write(path: &Path, tensors: &Tensors, meta: &[(&str, &str)]) {
    let t: Vec<(&str, &[usize], &[f32])> =
        tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    write_with_metadata(path, &t, Dtype::F32, meta).unwrap();
}

/// What `model` makes of a fixed prompt, seed and 2 steps (through the checkpoint's text encoder).
fn sample(reg: &Registry, clip: &Value, model: &Value) -> Vec<f32> {
    let pos = one(reg, "CLIPTextEncode", &[("clip", clip.clone())], &[("text", s("a red square"))]);
    let neg = one(reg, "CLIPTextEncode", &[("clip", clip.clone())], &[("text", s(""))]);
    let empty = one(reg, "EmptyLatentImage", &[], &[("width", int(40)), ("height", int(32))]);
    let inputs = [("model", model.clone()), ("positive", pos), ("negative", neg), ("latent_image", empty)];
    let params = [("seed", int(3)), ("steps", int(2)), ("cfg", ParamValue::Float(4.0)), ("sampler_name", s("euler"))];
    latent_of(&one(reg, "KSampler", &inputs, &params)).samples.clone()
}

const TINY: &[(&str, &str)] = &[("sdgraph.unet.heads", "2"), ("sdgraph.norm_groups", "4")];

#[test]
fn standalone_unets_in_every_layout_sample_as_the_checkpoints_unet() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("unet-loader");
    let reg = nodes::builtin_registry();
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    let loaded =
        call_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", s(&ckpt.display().to_string()))]).unwrap();
    let want = sample(&reg, &loaded[1], &loaded[0]);

    let ldm = dir.join("tiny_unet.safetensors");
    write(&ldm, &bare_unet(), TINY);
    let cases = [
        ("the whole checkpoint", ckpt.clone()),
        ("bare LDM .safetensors", ldm),
        // The diffusers file takes its heads and groups from the config.json beside it.
        ("diffusers unet/ folder", fixtures().join("diffusers/unet")),
        ("diffusers weights file", fixtures().join("diffusers/unet/diffusion_pytorch_model.safetensors")),
    ];
    for (what, path) in cases {
        let model = load_unet(&reg, &path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = sample(&reg, &loaded[1], &model);
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("{what}: max abs diff {d:e}");
        assert!(got.len() == want.len() && d <= 1e-6, "{what}: {d}");
    }

    // The comparison can fail: one changed weight changes the sample.
    let mut edited = bare_unet();
    edited.iter_mut().find(|(n, _, _)| n == "out.2.bias").unwrap().2[0] += 0.5;
    let p = dir.join("edited.safetensors");
    write(&p, &edited, TINY);
    let got = sample(&reg, &loaded[1], &load_unet(&reg, &p).unwrap());
    assert!(got.iter().zip(&want).any(|(a, b)| (a - b).abs() > 0.1), "an edited UNet should sample differently");
}

#[test]
fn files_that_are_no_sd1_unet_are_refused_naming_what_they_are() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("unet-loader-errors");
    let reg = nodes::builtin_registry();
    // A VAE file, and something else entirely.
    let st = SafeTensors::open(&fixtures().join("model.safetensors")).unwrap();
    let vae: Tensors = st
        .names()
        .filter_map(|n| {
            let short = n.strip_prefix("first_stage_model.")?;
            let (s, d) = st.f32_any(n).unwrap();
            Some((short.to_string(), s, d))
        })
        .collect();
    let p = dir.join("vae.safetensors");
    write(&p, &vae, &[]);
    let e = load_unet(&reg, &p).unwrap_err();
    assert!(
        e.contains("not a UNet diffusion model") && e.contains("input_blocks.*") && e.contains("keys such as"),
        "{e}"
    );
    // SDXL's size conditioning, SD3's joint blocks, a 5-channel UNet: refused by family (9 channels, SD 1.x
    // inpainting, loads).
    let mut sdxl = bare_unet();
    sdxl.push(("label_emb.0.0.weight".into(), vec![2, 2], vec![0.0; 4]));
    let p = dir.join("sdxl.safetensors");
    write(&p, &sdxl, TINY);
    let e = load_unet(&reg, &p).unwrap_err();
    assert!(e.contains("an SDXL model") && e.contains("label_emb"), "{e}");
    let p = dir.join("sd3.safetensors");
    write(&p, &vec![("joint_blocks.0.x.weight".into(), vec![2], vec![0.0; 2])], &[]);
    let e = load_unet(&reg, &p).unwrap_err();
    assert!(e.contains("SD3") && e.contains("not a UNet"), "{e}");
    let widened = |c: usize| {
        let mut unet = bare_unet();
        let conv_in = unet.iter_mut().find(|(n, _, _)| n == "input_blocks.0.0.weight").unwrap();
        let (o, k) = (conv_in.1[0], conv_in.1[2] * conv_in.1[3]);
        conv_in.1[1] = c;
        conv_in.2 = vec![0.1; o * c * k];
        let p = dir.join(format!("in{c}.safetensors"));
        write(&p, &unet, TINY);
        p
    };
    assert!(load_unet(&reg, &widened(9)).is_ok(), "a 9-channel inpainting UNet loads");
    let e = load_unet(&reg, &widened(5)).unwrap_err();
    assert!(e.contains("special UNet") && e.contains("5 input channels"), "{e}");
    // A UNet missing a tensor names it; a missing file and a folder without weights say so.
    let mut partial = bare_unet();
    partial.retain(|(n, _, _)| n != "out.2.weight");
    let p = dir.join("partial.safetensors");
    write(&p, &partial, TINY);
    let e = load_unet(&reg, &p).unwrap_err();
    assert!(e.contains("out.2.weight"), "{e}");
    let e = load_unet(&reg, &dir.join("missing.safetensors")).unwrap_err();
    assert!(e.contains("missing.safetensors") && e.contains("cannot open"), "{e}");
    let e = load_unet(&reg, &dir).unwrap_err();
    assert!(e.contains("not a diffusers UNet folder") && e.contains("unet/"), "{e}");
}
