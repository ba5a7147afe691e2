//! ModelSamplingDiscrete on the tiny SD 1.x checkpoint: the MODEL it returns carries the sampling type and zsnr,
//! samples with their noise table (`sampling_run::model_sigmas`), shares the loaded UNet's weights, and KSampler
//! follows it: eps without zsnr gives the unpatched model's latent bit for bit, every other setting moves it. The
//! maths of each type against ComfyUI's is tests/models/sd2_unet.rs.

use std::sync::Arc;

use graph::{ParamValue, Registry, Value};
use models::sampling::samplers::{ModelSampling, Prediction};
use nodes::payload::ModelHandle;
use nodes::sampling_run::model_sigmas;

use crate::common::sd_tiny::full_vocab_checkpoint;
use crate::common::{call_kind, int, latent_of, one, run_kind, s, temp_dir};

fn patch(reg: &Registry, model: &Value, sampling: &str, zsnr: bool) -> Value {
    one(
        reg,
        "ModelSamplingDiscrete",
        &[("model", model.clone())],
        &[("sampling", s(sampling)), ("zsnr", ParamValue::Bool(zsnr))],
    )
}

/// KSampler (euler, normal, 3 steps, cfg 2.5) on a 16x16 empty latent with the loaded prompts.
fn ksample(reg: &Registry, model: &Value, pos: &Value, neg: &Value) -> Vec<f32> {
    let empty = one(reg, "EmptyLatentImage", &[], &[("width", int(16)), ("height", int(16)), ("batch_size", int(1))]);
    let out = one(
        reg,
        "KSampler",
        &[("model", model.clone()), ("positive", pos.clone()), ("negative", neg.clone()), ("latent_image", empty)],
        &[
            ("seed", int(11)),
            ("steps", int(3)),
            ("cfg", ParamValue::Float(2.5)),
            ("sampler_name", s("euler")),
            ("scheduler", s("normal")),
            ("denoise", ParamValue::Float(1.0)),
        ],
    );
    latent_of(&out).samples.clone()
}

#[test]
fn model_sampling_discrete_sets_the_prediction_and_the_noise_table() {
    let Some(_) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let dir = temp_dir("model-sampling");
    let ckpt = full_vocab_checkpoint(&dir).display().to_string();
    let loaded = run_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", ParamValue::String(ckpt))]);
    let model = &loaded[0];
    let pos = one(&reg, "CLIPTextEncode", &[("clip", loaded[1].clone())], &[("text", s("a red square"))]);
    let neg = one(&reg, "CLIPTextEncode", &[("clip", loaded[1].clone())], &[("text", s(""))]);
    let base = model.downcast::<ModelHandle>().unwrap();
    assert_eq!((base.prediction, base.zsnr), (Prediction::Epsilon, false));
    let plain = ksample(&reg, model, &pos, &neg);

    for name in Prediction::NAMES {
        for zsnr in [false, true] {
            let patched = patch(&reg, model, name, zsnr);
            let h = patched.downcast::<ModelHandle>().unwrap();
            let prediction = Prediction::from_name(name).unwrap();
            assert_eq!((h.prediction, h.zsnr), (prediction, zsnr), "{name} {zsnr}");
            assert!(Arc::ptr_eq(h.source.as_ref().unwrap(), base.source.as_ref().unwrap()), "{name}: same source");
            let sigmas = model_sigmas(&h);
            assert_eq!(sigmas, ModelSampling { prediction, zsnr }.sigmas(), "{name} {zsnr}");
            assert_eq!(sigmas.len(), if name == "lcm" { 50 } else { 1000 }, "{name}");
            assert_eq!(sigmas.sigma_max() > 4000.0, zsnr, "{name} {zsnr}: sigma_max {}", sigmas.sigma_max());
            // The shared UNet's weights are the loaded ones.
            assert_eq!(h.unet.config, base.unet.config);
            let latent = ksample(&reg, &patched, &pos, &neg);
            let moved = latent.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            println!("{name:12} zsnr {zsnr:5}: latent moved by {moved:.3e} from the loaded model's");
            if name == "eps" && !zsnr {
                assert_eq!(latent, plain, "eps without zsnr is the loaded model");
            } else {
                assert!(moved > 1e-3, "{name} zsnr {zsnr}: KSampler did not follow (moved {moved:e})");
            }
        }
    }
    // A name ComfyUI does not have is refused, naming the param.
    let e = call_kind(&reg, "ModelSamplingDiscrete", &[("model", model.clone())], &[("sampling", s("v"))]).unwrap_err();
    assert!(e.contains("sampling"), "{e}");
}

/// A ComfyUI API prompt's ModelSamplingDiscrete imports with its params (ComfyUI's input names).
#[test]
fn comfyui_prompts_with_model_sampling_discrete_import() {
    use graph::comfy::{self, ImportOptions, MissingFiles, ModelRoots};
    let reg = nodes::builtin_registry();
    let opts = ImportOptions {
        roots: ModelRoots { roots: Vec::new(), extra: Vec::new(), base_dir: std::path::PathBuf::from("/nonexistent") },
        missing: MissingFiles::Warn,
    };
    for (sampling, zsnr) in [("lcm", true), ("v_prediction", false)] {
        let api = serde_json::json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "2": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": sampling, "zsnr": zsnr}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["3", 0],
                  "latent_image": ["4", 0], "seed": 1, "steps": 4, "cfg": 1.5, "sampler_name": "lcm",
                  "scheduler": "sgm_uniform", "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "x"}},
        });
        let imported =
            comfy::import("wf.json", api.to_string().as_bytes(), &reg, &opts).unwrap_or_else(|e| panic!("{e}"));
        let node = imported.graph.nodes.iter().find(|n| n.kind.value == "ModelSamplingDiscrete").expect("imported");
        let param = |name: &str| node.param(name).unwrap_or_else(|| panic!("no {name}")).value.clone();
        assert_eq!(param("sampling"), s(sampling), "{}", imported.ron);
        assert_eq!(param("zsnr"), ParamValue::Bool(zsnr), "{}", imported.ron);
        graph::validate(imported.graph, &reg).unwrap_or_else(|e| panic!("{e}"));
    }
}
