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
    let dir = std::env::temp_dir().join(format!("sdgraph-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
