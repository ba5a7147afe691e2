//! The CLIP text encoder against the tiny fixture (tests/fixtures/sd_tiny/clip,
//! transformers' `CLIPTextModel` run in float64): every hidden state,
//! `last_hidden_state`, both "clip skip 2" variants and the pooled output
//! within 1e-4 in f32, from the single file and the diffusers folder; the f16
//! checkpoint run in f16 within a stated bound; broken checkpoints and bad
//! token ids give errors that name the problem.

use std::path::{Path, PathBuf};

use gpu::testing::shared_gpu;
use gpu::{DType, Gpu, Tensor};
use models::ModelError;
use models::checkpoint::convert::open_checkpoint;
use models::checkpoint::safetensors::{self, Dtype, SafeTensors};
use models::checkpoint::weights::WeightSource;
use models::clip::{ClipLayer, ClipTextConfig, ClipTextModel};

const PREFIX: &str = "cond_stage_model.transformer.text_model.";
/// The fixture's end-of-text id (SD's is 49407).
const EOS: u32 = 999;
/// The fixture's head count (4 heads of 8; not stored in the weights).
const HEADS: usize = 4;
/// The bar for an f32 implementation.
const F32_TOL: f32 = 1e-4;
/// f16 weights and activations (`model_f16.safetensors` run in f16): measured 7.2e-3 worst (hidden_states.3,
/// |values| up to 7.6, where one f16 ulp is 3.9e-3; last_hidden_state 4.5e-3) on lavapipe. About 3x margin
/// for other adapters' rounding.
const F16_TOL: f32 = 0.02;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_tiny").join(p)
}

/// Where the weights come from: the lead adds layouts here; every test that
/// compares numbers runs on each.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `model.safetensors`, the LDM/CompVis single file (F32).
    SingleFile,
    /// `model_f16.safetensors`, the same keys stored as F16.
    SingleFileF16,
    /// `diffusers/`, mapped onto single-file names by `convert`.
    Diffusers,
}

impl Layout {
    fn source(self) -> WeightSource {
        let path = match self {
            Layout::SingleFile => fixture("model.safetensors"),
            Layout::SingleFileF16 => fixture("model_f16.safetensors"),
            Layout::Diffusers => fixture("diffusers"),
        };
        open_checkpoint(&path).unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }
}

fn config(src: &WeightSource) -> ClipTextConfig {
    let mut cfg = ClipTextConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    cfg.num_heads = HEADS;
    cfg
}

fn load(gpu: &Gpu, src: &WeightSource, dtype: DType) -> Result<ClipTextModel, ModelError> {
    ClipTextModel::load(gpu, &src.prefix(PREFIX), &config(src), dtype)
}

/// `input_ids`, stored as I64 [2, 77].
fn input_ids() -> Vec<Vec<u32>> {
    let st = SafeTensors::open(&fixture("clip/inputs.safetensors")).unwrap();
    let (info, bytes) = st.bytes("input_ids").unwrap();
    assert_eq!((info.dtype, info.shape.as_slice()), (Dtype::I64, &[2usize, 77][..]));
    let ids: Vec<u32> =
        bytes.chunks_exact(8).map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap()).collect();
    ids.chunks(77).map(<[u32]>::to_vec).collect()
}

fn expected(name: &str) -> (Vec<usize>, Vec<f32>) {
    let st = SafeTensors::open(&fixture("clip/expected.safetensors")).unwrap();
    st.f32_any(name).unwrap()
}

/// Max abs error of `t` against the expected tensor `name` (shapes must agree).
fn max_err(gpu: &Gpu, t: &Tensor, name: &str) -> f32 {
    let (shape, want) = expected(name);
    assert_eq!(t.shape(), shape.as_slice(), "{name}");
    let got = gpu.download(t).unwrap();
    got.iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// Every output and intermediate the fixture has, with its max abs error.
fn all_errors(gpu: &Gpu, model: &ClipTextModel) -> Vec<(String, f32)> {
    let ids = input_ids();
    let out = model.forward_with_intermediates(gpu, &ids).unwrap();
    assert_eq!(out.hidden_states.len(), 4);
    let mut errs = Vec::new();
    for (i, h) in out.hidden_states.iter().enumerate() {
        let name = format!("hidden_states.{i}");
        errs.push((name.clone(), max_err(gpu, h, &name)));
    }
    errs.push(("last_hidden_state".into(), max_err(gpu, &out.last_hidden_state, "last_hidden_state")));
    let last = model.forward(gpu, &ids, ClipLayer::Last).unwrap();
    errs.push(("forward(Last)".into(), max_err(gpu, &last, "last_hidden_state")));
    let pen = model.forward_raw(gpu, &ids, ClipLayer::Penultimate).unwrap();
    errs.push(("forward_raw(Penultimate)".into(), max_err(gpu, &pen, "penultimate")));
    let pen_ln = model.forward(gpu, &ids, ClipLayer::Penultimate).unwrap();
    errs.push(("forward(Penultimate)".into(), max_err(gpu, &pen_ln, "penultimate_ln")));
    let pooled = model.pooled(gpu, &out.last_hidden_state, &ids, EOS).unwrap();
    errs.push(("pooled".into(), max_err(gpu, &pooled, "pooler_output")));
    errs
}

fn check_f32(layout: Layout) {
    let Some(gpu) = shared_gpu() else { return };
    let model = load(gpu, &layout.source(), DType::F32).unwrap();
    let errs = all_errors(gpu, &model);
    for (name, e) in &errs {
        println!("{layout:?} f32 {name}: max abs err {e:.3e}");
    }
    for (name, e) in &errs {
        assert!(*e <= F32_TOL, "{layout:?} f32 {name}: max abs err {e:e} > {F32_TOL:e}");
    }
}

#[test]
fn f32_single_file_matches_transformers() {
    check_f32(Layout::SingleFile);
}

#[test]
fn f32_diffusers_folder_matches_transformers() {
    check_f32(Layout::Diffusers);
}

#[test]
fn f16_checkpoint_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        return;
    }
    let model = load(gpu, &Layout::SingleFileF16.source(), DType::F16).unwrap();
    let errs = all_errors(gpu, &model);
    let worst = errs.iter().map(|(_, e)| *e).fold(0.0, f32::max);
    for (name, e) in &errs {
        println!("f16 {name}: max abs err {e:.3e}");
    }
    assert!(worst <= F16_TOL, "f16: worst max abs err {worst:e} > {F16_TOL:e}: {errs:?}");
}

#[test]
fn config_is_read_from_the_weights() {
    let src = Layout::SingleFile.source();
    let cfg = ClipTextConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    assert_eq!(
        (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.max_positions),
        (1000, 32, 3, 64, 77)
    );
    assert_eq!(cfg.layer_norm_eps, 1e-5);
    assert_eq!(cfg.activation, gpu::ops::matmul::Activation::QuickGelu);
    // 32 channels is below CLIP's head dim of 64: one head unless told otherwise.
    assert_eq!(cfg.num_heads, 1);
    assert_eq!(config(&Layout::Diffusers.source()), config(&src));
}

#[test]
fn clip_skip_picks_hidden_states_from_the_end() {
    let Some(gpu) = shared_gpu() else { return };
    let model = load(gpu, &Layout::SingleFile.source(), DType::F32).unwrap();
    let ids = input_ids();
    let get = |layer| gpu.download(&model.forward_raw(gpu, &ids, layer).unwrap()).unwrap();
    assert_eq!(get(ClipLayer::Skip(1)), get(ClipLayer::Last));
    assert_eq!(get(ClipLayer::Skip(2)), get(ClipLayer::Penultimate));
    let all = model.forward_with_intermediates(gpu, &ids).unwrap();
    for n in 1..=4 {
        assert_eq!(get(ClipLayer::Skip(n)), gpu.download(&all.hidden_states[4 - n]).unwrap(), "skip {n}");
    }
    let e = model.forward(gpu, &ids, ClipLayer::Skip(3)).unwrap();
    let h1_ln = model.final_layer_norm.forward(gpu, &all.hidden_states[1]).unwrap();
    assert_eq!(gpu.download(&e).unwrap(), gpu.download(&h1_ln).unwrap());
    for n in [0, 5] {
        let e = model.forward(gpu, &ids, ClipLayer::Skip(n)).err().unwrap().to_string();
        assert!(e.contains(&format!("CLIP skip {n} is out of range")) && e.contains("3 layers"), "{e}");
    }
}

#[test]
fn batch_items_are_independent_and_fixed_arrays_work() {
    let Some(gpu) = shared_gpu() else { return };
    let model = load(gpu, &Layout::SingleFile.source(), DType::F32).unwrap();
    let ids = input_ids();
    let both = gpu.download(&model.forward(gpu, &ids, ClipLayer::Last).unwrap()).unwrap();
    let row1: [u32; 77] = ids[1].clone().try_into().unwrap();
    let one = model.forward(gpu, &[row1], ClipLayer::Last).unwrap();
    assert_eq!(one.shape(), [1, 77, 32]);
    let one = gpu.download(&one).unwrap();
    let half = both.len() / 2;
    let d = one.iter().zip(&both[half..]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d <= 1e-6, "row 1 alone differs from row 1 in the batch by {d}");
    // Causal attention: a prefix of the sequence gives the prefix of the output.
    let short = model.forward(gpu, &[&ids[1][..10]], ClipLayer::Last).unwrap();
    assert_eq!(short.shape(), [1, 10, 32]);
    let short = gpu.download(&short).unwrap();
    let d = short.iter().zip(&one).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d <= 1e-5, "a 10-token prefix differs by {d}");
}

#[test]
fn bad_token_ids_are_errors() {
    let Some(gpu) = shared_gpu() else { return };
    let model = load(gpu, &Layout::SingleFile.source(), DType::F32).unwrap();
    let mut ids = input_ids();
    ids[1][5] = 1000;
    let e = model.forward(gpu, &ids, ClipLayer::Last).err().unwrap().to_string();
    assert!(e.contains("token id 1000 (row 1, position 5) is outside the vocabulary of 1000"), "{e}");
    let e = model.forward(gpu, &[vec![EOS; 78]], ClipLayer::Last).err().unwrap().to_string();
    assert!(e.contains("78 tokens is longer than CLIP's 77 positions"), "{e}");
    let e = model.forward(gpu, &[vec![EOS; 77], vec![EOS; 76]], ClipLayer::Last).err().unwrap().to_string();
    assert!(e.contains("row 1 has 76"), "{e}");
    let none: &[Vec<u32>] = &[];
    assert!(model.forward(gpu, none, ClipLayer::Last).is_err());
    let h = model.forward(gpu, &[vec![5u32; 77]], ClipLayer::Last).unwrap();
    let e = model.pooled(gpu, &h, &[vec![5u32; 77]], EOS).err().unwrap().to_string();
    assert!(e.contains("row 0 has no end-of-text token 999"), "{e}");
}

/// A copy of the fixture's text-encoder tensors (F32) with `edit` applied,
/// written to a temp file and opened.
fn broken_copy(tag: &str, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> WeightSource {
    let st = SafeTensors::open(&fixture("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .filter(|n| n.starts_with(PREFIX) && !n.ends_with("position_ids"))
        .map(|n| {
            let (shape, v) = st.f32_any(n).unwrap();
            (n.to_string(), shape, v)
        })
        .collect();
    edit(&mut tensors);
    let path = crate::common::scratch_file(&format!("{tag}.safetensors"));
    let refs: Vec<(&str, &[usize], &[f32])> =
        tensors.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
    safetensors::write(&path, &refs, Dtype::F32).unwrap();
    WeightSource::single_file(&path).unwrap()
}

fn load_error(src: &WeightSource) -> String {
    let gpu = shared_gpu().expect("checked by the caller");
    let w = src.prefix(PREFIX);
    let cfg = match ClipTextConfig::detect_from_weights(&w) {
        Ok(mut cfg) => {
            cfg.num_heads = HEADS;
            cfg
        }
        Err(e) => return e.to_string(),
    };
    match ClipTextModel::load(gpu, &w, &cfg, DType::F32) {
        Ok(_) => panic!("loading a broken checkpoint succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_weights_are_named() {
    let Some(_) = shared_gpu() else { return };
    // The copy without edits loads: the test's own plumbing is sound.
    let gpu = shared_gpu().unwrap();
    assert!(load(gpu, &broken_copy("intact", |_| {}), DType::F32).is_ok());
    for key in [
        "encoder.layers.2.mlp.fc2.bias",
        "encoder.layers.2.layer_norm1.weight",
        "encoder.layers.0.self_attn.k_proj.bias",
        "final_layer_norm.bias",
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        "encoder.layers.0.mlp.fc1.weight",
    ] {
        let full = format!("{PREFIX}{key}");
        let src = broken_copy(&format!("missing-{key}"), |t| t.retain(|(n, _, _)| *n != full));
        let e = load_error(&src);
        assert!(e.contains(&format!("{full:?}: missing from the checkpoint")), "{key}: {e}");
    }
    // A whole layer gone is a smaller model, but one the config must agree with.
    let src = broken_copy("no-layer-2", |t| t.retain(|(n, _, _)| !n.contains("encoder.layers.2.")));
    let w = src.prefix(PREFIX);
    assert_eq!(ClipTextConfig::detect_from_weights(&w).unwrap().num_layers, 2);
    let e = ClipTextModel::load(gpu, &w, &config(&Layout::SingleFile.source()), DType::F32).err().unwrap().to_string();
    assert!(e.contains("has 2 encoder layers, the config says 3"), "{e}");
}

#[test]
fn misshapen_weights_are_named() {
    let Some(_) = shared_gpu() else { return };
    let cases: [(&str, &[usize], &str); 5] = [
        ("encoder.layers.1.self_attn.v_proj.weight", &[32, 31], "has shape [32, 31], expected [32, 32]"),
        ("encoder.layers.2.mlp.fc2.weight", &[32, 63], "has shape [32, 63], expected [32, 64]"),
        ("encoder.layers.0.layer_norm2.bias", &[31], "has shape [31], expected [32]"),
        ("final_layer_norm.weight", &[33], "has shape [33], expected [32]"),
        ("embeddings.position_embedding.weight", &[77, 31], "has shape [77, 31], expected [positions, 32]"),
    ];
    for (key, shape, want) in cases {
        let full = format!("{PREFIX}{key}");
        let src = broken_copy(&format!("shape-{key}"), |t| {
            let entry = t.iter_mut().find(|(n, _, _)| *n == full).unwrap();
            entry.1 = shape.to_vec();
            entry.2 = vec![0.5; shape.iter().product()];
        });
        let e = load_error(&src);
        assert!(e.contains(&full) && e.contains(want), "{key}: {e}");
    }
}

#[test]
fn heads_that_do_not_divide_the_width_are_refused() {
    let Some(gpu) = shared_gpu() else { return };
    let src = Layout::SingleFile.source();
    let mut cfg = config(&src);
    cfg.num_heads = 5;
    let e = ClipTextModel::load(gpu, &src.prefix(PREFIX), &cfg, DType::F32).err().unwrap().to_string();
    assert!(e.contains("hidden size 32 does not split into 5 heads"), "{e}");
}
