//! The SD 1.x VAE (`models::vae`) against the tiny fixture
//! (tests/fixtures/sd_tiny/vae, computed by diffusers in float64): encoder
//! output, moments, the posterior, post_quant_conv output and the decoded
//! image within 1e-4 in f32, through both mid-attention paths (flash kernel
//! and the score-matrix fallback SD's 512-channel attention needs, whole and
//! in query blocks) and both checkpoint layouts; a stated bound in f16;
//! config detection; input checks; broken checkpoints name the bad key.

use crate::cases::{Case as Fixture, Edited, broken_checkpoint_error};
use crate::common::sd_tiny::{Layout, fixtures, source};
use gpu::testing::shared_gpu;
use gpu::{DType, Gpu, Tensor};
use models::checkpoint::weights::WeightSource;
use models::vae::{Vae, VaeConfig};
use models::vae_blocks::{AttentionPath, attention_matmul};

const PREFIX: &str = "first_stage_model.";
/// The fixture's tolerance (vae/meta.json `tolerance.max_abs`).
const F32_TOL: f32 = 1e-4;
/// f16 weights and activations: measured 0.0061 on decoded (values up to ~3)
/// and 0.0028 to 0.0039 on the latent-side tensors (both attention paths), on
/// lavapipe; about 2.5x headroom for other adapters' rounding.
const F16_TOL: f32 = 0.015;

/// The detected config with what the file cannot tell taken from sd_tiny/meta.json.
fn fixture_config(src: &WeightSource) -> VaeConfig {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap()).unwrap();
    let vae = &meta["configs"]["vae"];
    let norm = &meta["norms"]["vae"]["encoder.conv_norm_out"];
    let mut cfg = VaeConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    cfg.norm_groups = vae["norm_num_groups"].as_u64().unwrap() as usize;
    cfg.norm_eps = norm["eps"].as_f64().unwrap() as f32;
    cfg.scaling_factor = vae["scaling_factor"].as_f64().unwrap() as f32;
    cfg
}

fn load(gpu: &Gpu, layout: Layout, dtype: DType) -> Vae {
    let src = source(layout);
    let cfg = fixture_config(&src);
    Vae::load(gpu, &src.prefix(PREFIX), &cfg, dtype).unwrap()
}

/// Max |got - expected| for a named output, checking the shape.
fn max_err(gpu: &Gpu, fx: &Fixture, name: &str, got: &Tensor) -> f32 {
    let (shape, want) = fx.want(name);
    assert_eq!(got.shape(), shape.as_slice(), "{name}: shape");
    let got = gpu.download(got).unwrap();
    got.iter().zip(&want).map(|(g, w)| if g.is_finite() { (g - w).abs() } else { f32::INFINITY }).fold(0.0, f32::max)
}

fn find<'a>(trace: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &trace.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no intermediate {name}")).1
}

/// Runs encode and decode(mean) and returns (name, max error) for every
/// tensor of expected.safetensors, decoding the model's own mean.
fn run_fixture(gpu: &Gpu, vae: &Vae) -> Vec<(String, f32)> {
    let fx = Fixture::open("vae");
    let (dist, enc) = vae.encode_with_intermediates(gpu, &fx.input(gpu, "image")).unwrap();
    let (decoded, dec) = vae.decode_with_intermediates(gpu, &dist.mean).unwrap();
    let outputs: Vec<(&str, &Tensor)> = vec![
        ("encoder_output", find(&enc, "encoder_output")),
        ("moments", find(&enc, "moments")),
        ("latent_dist.mean", &dist.mean),
        ("latent_dist.logvar", &dist.logvar),
        ("latent_dist.std", &dist.std),
        ("post_quant_conv_output", find(&dec, "post_quant_conv_output")),
        ("decoded", &decoded),
    ];
    let names: Vec<String> = fx.expected.names().map(String::from).collect();
    assert_eq!(names.len(), outputs.len(), "expected.safetensors has tensors this test does not check: {names:?}");
    outputs.into_iter().map(|(n, t)| (n.to_string(), max_err(gpu, &fx, n, t))).collect()
}

fn assert_within(errs: &[(String, f32)], tol: f32, what: &str) {
    eprintln!("{what}: {errs:?}");
    for (name, e) in errs {
        assert!(*e <= tol, "{what}: {name} max abs error {e} > {tol}");
    }
}

#[test]
fn f32_matches_reference() {
    let Some(gpu) = shared_gpu() else { return };
    let vae = load(gpu, Layout::SingleFile, DType::F32);
    assert_within(&run_fixture(gpu, &vae), F32_TOL, "f32 single-file, flash attention");
}

#[test]
fn f32_matches_reference_from_diffusers_folder() {
    let Some(gpu) = shared_gpu() else { return };
    let vae = load(gpu, Layout::Diffusers, DType::F32);
    assert_within(&run_fixture(gpu, &vae), F32_TOL, "f32 diffusers folder");
}

/// The path SD's C = 512 mid attention takes (head dim > MAX_HEAD_DIM),
/// forced at the fixture's C = 16: whole score matrices, then query blocks
/// of 16 rows (16 x 256 f32 scores = 16 KiB; 32 blocks for the 2 images).
#[test]
fn f32_matmul_attention_fallback_matches_reference() {
    let Some(gpu) = shared_gpu() else { return };
    let mut vae = load(gpu, Layout::SingleFile, DType::F32);
    vae.set_attention_path(AttentionPath::Matmul { max_score_bytes: u64::MAX });
    assert_within(&run_fixture(gpu, &vae), F32_TOL, "f32, matmul attention");
    vae.set_attention_path(AttentionPath::Matmul { max_score_bytes: 16 * 256 * 4 });
    assert_within(&run_fixture(gpu, &vae), F32_TOL, "f32, matmul attention in 16-row blocks");
    vae.set_attention_path(AttentionPath::Matmul { max_score_bytes: 1 });
    let fx = Fixture::open("vae");
    let (dist, _) = vae.encode_with_intermediates(gpu, &fx.input(gpu, "image")).unwrap();
    let e = max_err(gpu, &fx, "latent_dist.mean", &dist.mean);
    assert!(e <= F32_TOL, "one query row per block: mean error {e}");
}

/// f16 weights (model_f16.safetensors) and f16 activations (see F16_TOL).
#[test]
fn f16_close_to_reference() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        return;
    }
    let mut vae = load(gpu, Layout::SingleFileF16, DType::F16);
    assert_eq!(vae.dtype, DType::F16);
    assert_within(&run_fixture(gpu, &vae), F16_TOL, "f16 flash attention");
    vae.set_attention_path(AttentionPath::Matmul { max_score_bytes: 16 * 256 * 2 });
    assert_within(&run_fixture(gpu, &vae), F16_TOL, "f16 matmul attention in blocks");
}

#[test]
fn detects_config_from_weights() {
    let src = source(Layout::SingleFile);
    let cfg = VaeConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    assert_eq!(cfg.block_out_channels, vec![8, 16]);
    assert_eq!(cfg.layers_per_block, 2);
    assert_eq!((cfg.in_channels, cfg.out_channels, cfg.latent_channels), (3, 3, 4));
    assert!(cfg.mid_attention && cfg.use_quant_conv && cfg.use_post_quant_conv);
    // What the file cannot tell stays at SD 1.x's values.
    assert_eq!((cfg.norm_groups, cfg.norm_eps, cfg.scaling_factor), (32, 1e-6, 0.18215));
    assert_eq!(cfg.downsample_factor(), 2);
    assert_eq!(VaeConfig::default().downsample_factor(), 8);
    let diffusers = source(Layout::Diffusers);
    assert_eq!(VaeConfig::detect_from_weights(&diffusers.prefix(PREFIX)).unwrap(), cfg);
    // SD's 32 groups do not divide the fixture's 8 channels: a load error, not a wrong result.
    let Some(gpu) = shared_gpu() else { return };
    let err = Vae::load(gpu, &src.prefix(PREFIX), &cfg, DType::F32).err().expect("32 groups of 8 channels").to_string();
    assert!(err.contains("groups") && err.contains("first_stage_model.encoder.down.0.block.0.norm1.weight"), "{err}");
}

/// latent_from_image = mean * scaling_factor; image_from_latent undoes the scale.
#[test]
fn scaling_helpers_and_sampling() {
    let Some(gpu) = shared_gpu() else { return };
    let vae = load(gpu, Layout::SingleFile, DType::F32);
    assert_eq!(vae.scaling_factor(), 0.18215);
    let fx = Fixture::open("vae");
    let sf = vae.scaling_factor();
    let latent = vae.latent_from_image(gpu, &fx.input(gpu, "image")).unwrap();
    let (_, mean) = fx.want("latent_dist.mean");
    let got = gpu.download(&latent).unwrap();
    let e = got.iter().zip(&mean).map(|(g, m)| (g - m * sf).abs()).fold(0.0, f32::max);
    assert!(e <= F32_TOL * sf, "latent_from_image: {e}");
    let image = vae.image_from_latent(gpu, &latent).unwrap();
    let e = max_err(gpu, &fx, "decoded", &image);
    assert!(e <= F32_TOL, "image_from_latent: {e}");
    // sample(noise) = mean + std * noise.
    let dist = vae.encode(gpu, &fx.input(gpu, "image")).unwrap();
    let noise_data = gpu::testing::random(mean.len(), 7, -2.0, 2.0);
    let noise = gpu.upload(&noise_data, dist.mean.shape(), DType::F32).unwrap();
    let got = gpu.download(&dist.sample(gpu, &noise).unwrap()).unwrap();
    let (_, std) = fx.want("latent_dist.std");
    let e = (0..mean.len()).map(|i| (got[i] - (mean[i] + std[i] * noise_data[i])).abs()).fold(0.0, f32::max);
    assert!(e <= 3.0 * F32_TOL, "sample: {e}");
}

#[test]
fn rejects_bad_inputs() {
    let Some(gpu) = shared_gpu() else { return };
    let vae = load(gpu, Layout::SingleFile, DType::F32);
    let img = |shape: &[usize]| gpu.upload(&vec![0.0; shape.iter().product()], shape, DType::F32).unwrap();
    let err = vae.encode(gpu, &img(&[1, 3, 32, 33])).err().unwrap().to_string();
    assert!(err.contains("33x32") && err.contains("multiples of 2"), "{err}");
    let err = vae.encode(gpu, &img(&[1, 4, 32, 32])).err().unwrap().to_string();
    assert!(err.contains("4 channels"), "{err}");
    let err = vae.encode(gpu, &img(&[3, 32, 32])).err().unwrap().to_string();
    assert!(err.contains("[B, 3, H, W]"), "{err}");
    let err = vae.decode(gpu, &img(&[1, 3, 8, 8])).err().unwrap().to_string();
    assert!(err.contains("3 channels, the model takes 4"), "{err}");
    // Odd latent sizes are fine: only images must divide by the factor.
    let out = vae.decode(gpu, &img(&[1, 4, 3, 5])).unwrap();
    assert_eq!(out.shape(), &[1, 3, 6, 10]);
}

/// The error loading a copy of the fixture's VAE whose tensors went through `edit` (see
/// [`broken_checkpoint_error`]).
fn load_error(tag: &str, edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Edited) -> String {
    let Some(gpu) = shared_gpu() else { return String::new() };
    let err = broken_checkpoint_error(PREFIX, &format!("vae_{tag}"), edit, |src| {
        let mut cfg = VaeConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
        cfg.norm_groups = 4;
        Vae::load(gpu, &src.prefix(PREFIX), &cfg, DType::F32)
    });
    eprintln!("{err}");
    err
}

#[test]
fn missing_key_is_named() {
    if shared_gpu().is_none() {
        return;
    }
    for key in [
        "first_stage_model.decoder.up.1.block.2.conv1.bias",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "first_stage_model.post_quant_conv.bias",
    ] {
        let err = load_error("missing", |n, s, d| (n != key).then_some((s, d)));
        assert!(err.contains(key) && err.contains("missing"), "{key}: {err}");
    }
}

#[test]
fn misshapen_tensor_is_named() {
    if shared_gpu().is_none() {
        return;
    }
    for (key, shape) in [
        ("first_stage_model.encoder.down.1.block.0.conv2.weight", vec![16, 16, 1, 9]),
        ("first_stage_model.decoder.mid.attn_1.q.weight", vec![16, 8, 2, 1]),
        ("first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", vec![8, 8, 1, 1]),
        ("first_stage_model.encoder.norm_out.bias", vec![8, 2]),
    ] {
        let err = load_error("shape", |n, s, d| {
            if n != key {
                return Some((s, d));
            }
            let len = shape.iter().product::<usize>();
            Some((shape.clone(), d.into_iter().cycle().take(len).collect()))
        });
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// The score-matrix attention at a head dim the flash kernel refuses
/// (C = 192 > MAX_HEAD_DIM = 160, as SD's 512), against a CPU reference in
/// f64: whole, and in blocks of 7 query rows (L = 40 is not a multiple).
#[test]
fn matmul_attention_above_flash_head_dim() {
    let Some(gpu) = shared_gpu() else { return };
    let (b, l, c) = (2, 40, 192);
    let n = b * l * c;
    let data: Vec<Vec<f32>> = (0..3).map(|s| gpu::testing::random(n, 11 + s, -1.0, 1.0)).collect();
    let t: Vec<Tensor> = data.iter().map(|d| gpu.upload(d, &[b, l, c], DType::F32).unwrap()).collect();
    let flash = gpu::ops::attention::attention(gpu, &t[0], &t[1], &t[2], gpu::ops::attention::AttentionOptions::new(1));
    assert!(flash.is_err(), "the flash kernel took head dim {c}; the fallback is no longer needed");
    let (q, k, v) = (&data[0], &data[1], &data[2]);
    let mut want = vec![0.0f32; n];
    for bi in 0..b {
        for i in 0..l {
            let row = |j: usize| {
                (0..c).map(|d| f64::from(q[(bi * l + i) * c + d]) * f64::from(k[(bi * l + j) * c + d])).sum::<f64>()
                    / (c as f64).sqrt()
            };
            let s: Vec<f64> = (0..l).map(row).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..c {
                let o: f64 = (0..l).map(|j| e[j] / z * f64::from(v[(bi * l + j) * c + d])).sum();
                want[(bi * l + i) * c + d] = o as f32;
            }
        }
    }
    for budget in [u64::MAX, 7 * l as u64 * 4] {
        let got = gpu.download(&attention_matmul(gpu, &t[0], &t[1], &t[2], budget).unwrap()).unwrap();
        let e = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
        assert!(e <= 1e-5, "budget {budget}: max error {e}");
    }
}
