//! Checkpoint layouts: the diffusers folder maps onto exactly the
//! single-file names and data (checked against the table the fixture
//! generator verified with diffusers' own converters), and broken files and
//! folders give errors that name the file and key.

use std::path::{Path, PathBuf};

use models::checkpoint::convert::{UnetLayout, clip_key, open_checkpoint, unet_key, vae_key};
use models::checkpoint::safetensors::SafeTensors;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_tiny").join(p)
}

fn key_table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixture("ldm_to_diffusers_keys.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object().unwrap().iter().map(|(k, d)| (k.clone(), d.as_str().unwrap().to_string())).collect()
}

#[test]
fn every_diffusers_key_maps_to_its_single_file_name() {
    let table = key_table();
    assert!(table.len() > 500, "fixture table too small: {}", table.len());
    let unet_keys: Vec<&str> =
        table.iter().filter(|(l, _)| l.starts_with("model.diffusion_model.")).map(|(_, d)| d.as_str()).collect();
    let layout = UnetLayout::from_keys(unet_keys.iter().copied());
    assert_eq!(layout.layers_per_block, 2);
    let up_blocks = 2; // the fixture VAE has two levels
    for (ldm, diff) in &table {
        let got = if let Some(l) = ldm.strip_prefix("model.diffusion_model.") {
            (unet_key(diff, &layout), l)
        } else if let Some(l) = ldm.strip_prefix("first_stage_model.") {
            (vae_key(diff, up_blocks), l)
        } else if let Some(l) = ldm.strip_prefix("cond_stage_model.transformer.") {
            (clip_key(diff), l)
        } else {
            panic!("unexpected prefix in {ldm}");
        };
        assert_eq!(got.0.as_deref(), Some(got.1), "{diff}");
    }
}

#[test]
fn transformers_5_text_encoder_names_without_text_model_prefix_map_too() {
    assert_eq!(clip_key("encoder.layers.0.mlp.fc1.weight").unwrap(), "text_model.encoder.layers.0.mlp.fc1.weight");
    assert_eq!(clip_key("text_model.final_layer_norm.bias").unwrap(), "text_model.final_layer_norm.bias");
    assert_eq!(clip_key("text_model.embeddings.position_ids"), None);
}

#[test]
fn deprecated_vae_attention_names_map_to_the_same_weights() {
    assert_eq!(vae_key("decoder.mid_block.attentions.0.query.weight", 4).unwrap(), "decoder.mid.attn_1.q.weight");
    assert_eq!(
        vae_key("encoder.mid_block.attentions.0.proj_attn.bias", 4).unwrap(),
        "encoder.mid.attn_1.proj_out.bias"
    );
}

#[test]
fn diffusers_folder_serves_the_same_tensors_as_the_single_file() {
    let single = open_checkpoint(&fixture("model.safetensors")).unwrap();
    let folder = open_checkpoint(&fixture("diffusers")).unwrap();
    let table = key_table();
    let mut compared = 0;
    for (ldm, _) in &table {
        let (prefix, name) = ldm.split_at(ldm.find('.').unwrap() + 1);
        let a = single.prefix(prefix);
        let b = folder.prefix(prefix);
        let shape = a.shape(name).unwrap();
        assert_eq!(b.shape(name).unwrap(), shape, "{ldm}");
        assert_eq!(a.f32(name, &shape).unwrap(), b.f32(name, &shape).unwrap(), "{ldm}");
        compared += 1;
    }
    assert_eq!(compared, table.len());
    // Nothing in the folder maps to a name the single file lacks.
    for name in folder.names() {
        assert!(single.contains(name), "{name} is not a single-file name");
    }
}

#[test]
fn f16_single_file_loads_close_to_f32() {
    let a = open_checkpoint(&fixture("model.safetensors")).unwrap();
    let b = open_checkpoint(&fixture("model_f16.safetensors")).unwrap();
    let w = "model.diffusion_model.";
    let name = "input_blocks.1.0.in_layers.2.weight";
    let shape = a.prefix(w).shape(name).unwrap();
    let x = a.prefix(w).f32(name, &shape).unwrap();
    let y = b.prefix(w).f32(name, &shape).unwrap();
    for (p, q) in x.iter().zip(&y) {
        assert!((p - q).abs() <= 1e-3 * p.abs().max(1e-2), "{p} vs {q}");
    }
}

#[test]
fn missing_and_misshapen_weights_name_file_and_key() {
    let st = open_checkpoint(&fixture("model.safetensors")).unwrap();
    let w = st.prefix("model.diffusion_model.");
    let e = w.f32("input_blocks.99.0.weight", &[1]).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("\"model.diffusion_model.input_blocks.99.0.weight\": missing"),
        "{e}"
    );
    let e = w.f32("out.2.bias", &[5]).unwrap_err().to_string();
    assert!(e.contains("\"model.diffusion_model.out.2.bias\": has shape [4], expected [5]"), "{e}");
}

#[test]
fn a_folder_without_weights_is_refused_with_the_reason() {
    let dir = crate::common::temp_dir("empty-folder");
    let e = open_checkpoint(&dir).unwrap_err().to_string();
    assert!(e.contains("no unet/, vae/ or text_encoder/"), "{e}");
    let e = open_checkpoint(&dir.join("nope.safetensors")).unwrap_err().to_string();
    assert!(e.contains("cannot open"), "{e}");
    // A truncated copy of a real checkpoint.
    let bytes = std::fs::read(fixture("model.safetensors")).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = SafeTensors::open(&cut).unwrap_err().to_string();
    assert!(e.contains("truncated?"), "{e}");
}

#[test]
fn weights_convert_from_every_float_format_exactly_as_through_f32() {
    use gpu::DType;
    use models::checkpoint::safetensors::{Dtype, convert_into, to_f32};
    // Just past one million elements: the conversion splits over threads, with a short last part.
    let n = (1 << 20) + 3;
    let values: Vec<f64> =
        (0..n).map(|i| ((i as f64) * 0.618_033_988_7).sin() * 1e3_f64.powf((i % 7) as f64 / 3.0 - 1.0)).collect();
    let encodings: [(Dtype, Vec<u8>); 4] = [
        (Dtype::F64, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        (Dtype::F32, values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect()),
        (Dtype::F16, values.iter().flat_map(|v| half::f16::from_f64(*v).to_le_bytes()).collect()),
        (Dtype::BF16, values.iter().flat_map(|v| half::bf16::from_f64(*v).to_le_bytes()).collect()),
    ];
    for (dtype, bytes) in &encodings {
        let as_f32 = to_f32(*dtype, bytes).unwrap();
        let mut out = vec![0u8; n * 4];
        assert!(convert_into(*dtype, bytes, DType::F32, &mut out));
        let got: Vec<f32> = out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert!(got.iter().zip(&as_f32).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype:?} -> f32");
        let mut out = vec![0u8; n * 2];
        assert!(convert_into(*dtype, bytes, DType::F16, &mut out));
        let got: Vec<u16> = out.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        // f64 rounds once, straight to f16 (as PyTorch's .half()); the rest through f32 (exact for f16/bf16).
        let want: Vec<u16> = match dtype {
            Dtype::F64 => values.iter().map(|v| half::f16::from_f64(*v).to_bits()).collect(),
            _ => as_f32.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect(),
        };
        assert!(got == want, "{dtype:?} -> f16");
    }
    // Integer data is not a weight; lengths that disagree are refused.
    assert!(!convert_into(Dtype::I64, &[0; 8], DType::F32, &mut [0; 4]));
    assert!(!convert_into(Dtype::F32, &[0; 8], DType::F32, &mut [0; 4]));
}

/// The error opening `path`, which must fail (`what` says why in the panic).
fn refusal(path: &Path, what: &str) -> String {
    match open_checkpoint(path) {
        Ok(_) => panic!("{what}: {} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of the tiny SD 1.x diffusers folder (configs written by diffusers) with `edit` applied
/// to its JSON files: what an SD 2.x or SDXL folder says differently.
fn edited_folder(
    name: &str,
    edit: &dyn Fn(&str, &mut serde_json::Value),
    extra_dirs: &[&str],
) -> crate::common::TempDir {
    let src = fixture("diffusers");
    let dir = crate::common::temp_dir(name);
    for part in ["model_index.json", "unet", "vae", "text_encoder", "scheduler", "tokenizer"] {
        let from = src.join(part);
        if from.is_file() {
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&from).unwrap()).unwrap();
            edit(part, &mut v);
            std::fs::write(dir.join(part), v.to_string()).unwrap();
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&from) else { continue };
        std::fs::create_dir_all(dir.join(part)).unwrap();
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let to = dir.join(part).join(&file);
            if file.ends_with(".json") {
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
                edit(&format!("{part}/{file}"), &mut v);
                std::fs::write(to, v.to_string()).unwrap();
            } else {
                std::fs::copy(e.path(), to).unwrap();
            }
        }
    }
    for d in extra_dirs {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    dir
}

#[test]
fn sd2_and_sdxl_diffusers_folders_are_refused_naming_the_family_and_why() {
    // The SD 1.x folder itself still opens.
    assert!(open_checkpoint(&fixture("diffusers")).is_ok());
    let sd2 = edited_folder(
        "family-sd2",
        &|file, v| match file {
            "text_encoder/config.json" => v["hidden_act"] = "gelu".into(),
            "unet/config.json" => v["use_linear_projection"] = true.into(),
            _ => {}
        },
        &[],
    );
    let e = refusal(&sd2, "an SD 2.x folder must be refused");
    assert!(e.contains("SD 2.x") && e.contains("hidden_act gelu") && e.contains("use_linear_projection"), "{e}");
    let v_pred = edited_folder(
        "family-vpred",
        &|file, v| {
            if file == "scheduler/scheduler_config.json" {
                v["prediction_type"] = "v_prediction".into();
            }
        },
        &[],
    );
    let e = refusal(&v_pred, "v-prediction must be refused");
    assert!(e.contains("v-prediction") && e.contains("prediction_type v_prediction"), "{e}");
    let xl = edited_folder(
        "family-sdxl",
        &|file, v| match file {
            "unet/config.json" => v["addition_embed_type"] = "text_time".into(),
            "model_index.json" => v["_class_name"] = "StableDiffusionXLPipeline".into(),
            _ => {}
        },
        &["text_encoder_2"],
    );
    let e = refusal(&xl, "an SDXL folder must be refused");
    assert!(e.contains("SDXL") && e.contains("text_encoder_2") && e.contains("text_time"), "{e}");
    // A 9-channel UNet is SD 1.x inpainting, which runs (the config alone is checked here: the weights stay 4-wide);
    // any other input width is refused.
    let channels = |c: u64| {
        edited_folder(
            &format!("family-in{c}"),
            &|file, v| {
                if file == "unet/config.json" {
                    v["in_channels"] = c.into();
                }
            },
            &[],
        )
    };
    assert!(open_checkpoint(&channels(9)).is_ok(), "an inpainting folder is not refused by family");
    let e = refusal(&channels(5), "a 5-channel UNet must be refused");
    assert!(e.contains("in_channels 5") && e.contains("4 input channels, or 9"), "{e}");
}

#[test]
fn single_files_of_other_families_are_refused_naming_the_family() {
    use models::checkpoint::safetensors::{Dtype, write};
    let dir = crate::common::temp_dir("family-single");
    let cases: [(&str, &[usize], &str); 6] = [
        ("conditioner.embedders.1.model.token_embedding.weight", &[4, 8], "SDXL"),
        ("model.diffusion_model.label_emb.0.0.weight", &[8, 4], "SDXL"),
        ("cond_stage_model.model.token_embedding.weight", &[4, 8], "SD 2.x"),
        ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", &[8, 1024], "SD 2.x"),
        ("model.diffusion_model.input_blocks.0.0.weight", &[8, 8, 3, 3], "8 input channels"),
        ("double_blocks.0.img_attn.qkv.weight", &[4, 4], "not a UNet Stable Diffusion model"),
    ];
    for (i, (key, shape, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.safetensors"));
        let data = vec![0.0f32; shape.iter().product()];
        write(&path, &[(key, shape, &data)], Dtype::F32).unwrap();
        let e = refusal(&path, key);
        assert!(e.contains(want) && e.contains("not supported yet"), "{key}: {e}");
    }
    // The SD 1.x single file opens.
    assert!(open_checkpoint(&fixture("model.safetensors")).is_ok());
}

#[test]
fn clip_keys_without_the_text_model_level_load_as_comfyui_renames_them() {
    use models::checkpoint::safetensors::{Dtype, write_with_metadata};
    let st = SafeTensors::open(&fixture("model.safetensors")).unwrap();
    let mut owned = Vec::new();
    for name in st.names() {
        let Ok((shape, data)) = st.f32_any(name) else { continue };
        // An older export: `cond_stage_model.transformer.encoder...`, no `text_model.`.
        owned.push((name.replacen("transformer.text_model.", "transformer.", 1), shape, data));
    }
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    let dir = crate::common::temp_dir("clip-no-text-model");
    let path = dir.join("old_export.safetensors");
    let meta: Vec<(&str, &str)> = st.metadata().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    write_with_metadata(&path, &tensors, Dtype::F32, &meta).unwrap();
    assert!(owned.iter().any(|(n, ..)| n == "cond_stage_model.transformer.embeddings.token_embedding.weight"));

    let (renamed, original) =
        (open_checkpoint(&path).unwrap(), open_checkpoint(&fixture("model.safetensors")).unwrap());
    let clip: Vec<&str> = original.names().filter(|n| n.starts_with("cond_stage_model.")).collect();
    assert!(clip.len() > 10);
    for name in clip {
        let (a, b) = (renamed.prefix(""), original.prefix(""));
        let shape = b.shape(name).unwrap();
        // Integer buffers (position_ids) are not weights: the export above left them out.
        let Ok(want) = b.f32(name, &shape) else { continue };
        assert_eq!(a.f32(name, &shape).unwrap(), want, "{name}");
    }
}
