//! LoraLoader / LoraLoaderModelOnly against tests/fixtures/lora (tiny random LoRAs for the tiny SD
//! model, in the kohya-ss layout with diffusers and LDM module names and in diffusers/PEFT's, and one
//! file per other adapter kind ComfyUI merges: LoCon's Tucker mid, LoHa, LoKr, full diffs, DoRA, and a
//! file mixing them; references by diffusers' `load_lora_weights` + `fuse_lora` and by ComfyUI's maths
//! ported to f64): merged weights within 1e-5, UNet and CLIP outputs within 1e-4; strength 0, chaining
//! order, the model-only kind; bad files name the key and what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gpu::{DType, Gpu};
use graph::{NodeInputs, ParamValue, Registry, Value};
use models::checkpoint::convert::{UNET_PREFIX, unet_key_to_diffusers};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write};
use models::clip::ClipLayer;
use models::lora::{Adapter, Factor};
use nodes::lora_loader::{not_loaded_warning, read_lora};
use nodes::payload::{ClipHandle, ModelHandle};

use crate::common::sd_tiny::fixtures;

const MERGED_TOL: f32 = 1e-5;
const OUTPUT_TOL: f32 = 1e-4;

fn lora_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

fn try_kind(
    reg: &Registry,
    kind: &str,
    inputs: &[(&str, Value)],
    params: &[(&str, ParamValue)],
) -> Result<Vec<Value>, String> {
    let progress = graph::exec::NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let out = std::env::temp_dir();
    let mut ctx = graph::RunContext::new("t", Path::new("."), &out, "", &progress, &cancel);
    let mut inp = NodeInputs::default();
    for (k, v) in inputs {
        inp.inputs.insert(k.to_string(), v.clone());
    }
    for (k, v) in params {
        inp.params.insert(k.to_string(), v.clone());
    }
    reg.get(kind).unwrap().run(&mut ctx, &inp).map_err(|e| e.message)
}

fn checkpoint(reg: &Registry) -> (Value, Value) {
    let ckpt = fixtures().join("model.safetensors").display().to_string();
    let out = try_kind(reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", ParamValue::String(ckpt))]).unwrap();
    (out[0].clone(), out[1].clone())
}

/// The tiny checkpoint's UNet and text-encoder handles.
fn handles(reg: &Registry) -> (std::sync::Arc<ModelHandle>, std::sync::Arc<ClipHandle>) {
    let (model, clip) = checkpoint(reg);
    (model.downcast::<ModelHandle>().unwrap(), clip.downcast::<ClipHandle>().unwrap())
}

fn lora_loader(
    reg: &Registry,
    model: &Value,
    clip: &Value,
    file: &str,
    sm: f64,
    sc: f64,
) -> Result<(Value, Value), String> {
    let name = ParamValue::String(lora_dir().join(file).display().to_string());
    let out = try_kind(
        reg,
        "LoraLoader",
        &[("model", model.clone()), ("clip", clip.clone())],
        &[("lora_name", name), ("strength_model", ParamValue::Float(sm)), ("strength_clip", ParamValue::Float(sc))],
    )?;
    Ok((out[0].clone(), out[1].clone()))
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// The UNet's noise prediction for sd_tiny/unet's inputs at the `case1` timesteps.
fn unet_out(gpu: &Gpu, model: &Value) -> Vec<f32> {
    let m = model.downcast::<ModelHandle>().unwrap();
    let st = SafeTensors::open(&fixtures().join("unet/inputs.safetensors")).unwrap();
    let up = |n: &str| {
        let (shape, data) = st.f32_any(n).unwrap();
        gpu.upload(&data, &shape, DType::F32).unwrap()
    };
    let t = st.f32_any("case1.timesteps").unwrap().1;
    gpu.download(&m.unet.forward(gpu, &up("sample"), &t, &up("encoder_hidden_states")).unwrap()).unwrap()
}

/// CLIP's last_hidden_state for sd_tiny/clip's input ids.
fn clip_out(gpu: &Gpu, clip: &Value) -> Vec<f32> {
    let c = clip.downcast::<ClipHandle>().unwrap();
    let st = SafeTensors::open(&fixtures().join("clip/inputs.safetensors")).unwrap();
    let (_, bytes) = st.bytes("input_ids").unwrap();
    let ids: Vec<u32> = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let rows: Vec<Vec<u32>> = ids.chunks(77).map(<[u32]>::to_vec).collect();
    gpu.download(&c.model.forward(gpu, &rows, ClipLayer::Last).unwrap()).unwrap()
}

/// Every case of meta.json run as a chain of LoraLoaders: the merged weights (the handles'
/// patched tensors, exactly the weights the reference changed) and both networks' outputs.
#[test]
fn lora_loader_matches_the_references() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (base_model, base_clip) = checkpoint(&reg);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lora_dir().join("meta.json")).unwrap()).unwrap();
    let mut files: BTreeMap<String, SafeTensors> = BTreeMap::new();
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        // The adapter kinds' cases keep their references in a file of their own.
        let file = case["expected"].as_str().unwrap_or("expected.safetensors").to_string();
        let expected = files.entry(file).or_insert_with_key(|f| SafeTensors::open(&lora_dir().join(f)).unwrap());
        let (mut model, mut clip) = (base_model.clone(), base_clip.clone());
        for step in case["chain"].as_array().unwrap() {
            let f = |k: &str| step[k].as_f64().unwrap();
            (model, clip) = lora_loader(
                &reg,
                &model,
                &clip,
                step["file"].as_str().unwrap(),
                f("strength_model"),
                f("strength_clip"),
            )
            .unwrap();
        }
        let m = model.downcast::<ModelHandle>().unwrap();
        let c = clip.downcast::<ClipHandle>().unwrap();
        let (mu, mc) = (&m.source.as_ref().unwrap().weights, &c.source.as_ref().unwrap().weights);
        let prefix = format!("{name}.merged.");
        let mut want: Vec<&str> = expected.names().filter_map(|k| k.strip_prefix(&prefix)).collect();
        want.sort();
        let mut got: Vec<&str> = mu.patched_names().filter(|n| n.starts_with(UNET_PREFIX)).collect();
        got.extend(mc.patched_names().filter(|n| !n.starts_with(UNET_PREFIX)));
        got.sort();
        assert_eq!(got, want, "{name}: the weights merged");
        let mut worst = 0f32;
        for k in &want {
            let v = gpu.download(mu.patched(k).or(mc.patched(k)).unwrap()).unwrap();
            let (_, r) = expected.f32_any(&format!("{prefix}{k}")).unwrap();
            let e = max_abs(&v, &r);
            assert!(e <= MERGED_TOL, "{name}: {k} merged off by {e}");
            worst = worst.max(e);
        }
        let eu = max_abs(&unet_out(gpu, &model), &expected.f32_any(&format!("{name}.unet")).unwrap().1);
        let ec = max_abs(&clip_out(gpu, &clip), &expected.f32_any(&format!("{name}.clip")).unwrap().1);
        println!("{name}: {} weights, merged max err {worst:.2e}, unet {eu:.2e}, clip {ec:.2e}", want.len());
        assert!(eu <= OUTPUT_TOL && ec <= OUTPUT_TOL, "{name}: unet {eu}, clip {ec}");
    }
}

/// Strength 0 gives back the base outputs bit for bit, whether the loader passes the network
/// through (the node at 0) or merges `0 * up @ down` into a rebuilt one (the library at 0).
#[test]
fn strength_zero_is_the_base_model() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (model, clip) = checkpoint(&reg);
    let (u0, c0) = (unet_out(gpu, &model), clip_out(gpu, &clip));
    let (m, c) = lora_loader(&reg, &model, &clip, "kohya_diffusers.safetensors", 0.0, 0.0).unwrap();
    assert_eq!((unet_out(gpu, &m), clip_out(gpu, &c)), (u0.clone(), c0.clone()));
    let (m, c) = lora_loader(&reg, &model, &clip, "kohya_diffusers.safetensors", 0.0, 1.0).unwrap();
    assert_eq!(unet_out(gpu, &m), u0);
    assert!(max_abs(&clip_out(gpu, &c), &c0) > 1e-3, "strength_clip 1 changes the encoding");
    let mh = model.downcast::<ModelHandle>().unwrap();
    let ch = clip.downcast::<ClipHandle>().unwrap();
    let lora = read_lora(&lora_dir().join("peft.safetensors"), &mh, Some(&ch)).unwrap();
    let rebuilt = nodes::lora_loader::lora_model(gpu, &mh, &lora, 0.0).unwrap();
    let rebuilt_clip = nodes::lora_loader::lora_clip(gpu, &ch, &lora, 0.0).unwrap();
    assert!(rebuilt.source.as_ref().unwrap().weights.patched_names().count() > 10);
    assert_eq!(unet_out(gpu, &Value::payload(rebuilt)), u0, "merged at strength 0");
    assert_eq!(clip_out(gpu, &Value::payload(rebuilt_clip)), c0, "merged at strength 0");
}

/// Two LoRAs in either order agree within rounding, and differ from each alone.
#[test]
fn chained_loras_commute() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (model, clip) = checkpoint(&reg);
    let chain = |files: [&str; 2]| {
        let (mut m, mut c) = (model.clone(), clip.clone());
        for f in files {
            (m, c) = lora_loader(&reg, &m, &c, f, 0.8, -1.2).unwrap();
        }
        (unet_out(gpu, &m), clip_out(gpu, &c))
    };
    let (ua, ca) = chain(["kohya_diffusers.safetensors", "peft.safetensors"]);
    let (ub, cb) = chain(["peft.safetensors", "kohya_diffusers.safetensors"]);
    let (du, dc) = (max_abs(&ua, &ub), max_abs(&ca, &cb));
    let (m1, c1) = lora_loader(&reg, &model, &clip, "peft.safetensors", 0.8, -1.2).unwrap();
    let (d1u, d1c) = (max_abs(&ua, &unet_out(gpu, &m1)), max_abs(&ca, &clip_out(gpu, &c1)));
    println!("either order: unet {du:.2e}, clip {dc:.2e}; vs one LoRA: {d1u:.2e}, {d1c:.2e}");
    assert!(du <= 1e-5 && dc <= 1e-5, "order changed the result: {du} {dc}");
    assert!(d1u > 1e-3 && d1c > 1e-3, "the second LoRA changed nothing: {d1u} {d1c}");
}

/// LoraLoaderModelOnly merges the UNet modules only, as LoraLoader at strength_clip 0.
#[test]
fn model_only_leaves_the_text_encoder() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (model, clip) = checkpoint(&reg);
    let name = ParamValue::String(lora_dir().join("kohya_diffusers.safetensors").display().to_string());
    let out = try_kind(
        &reg,
        "LoraLoaderModelOnly",
        &[("model", model.clone())],
        &[("lora_name", name), ("strength_model", ParamValue::Float(0.6))],
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    let only = out[0].downcast::<ModelHandle>().unwrap();
    let names: Vec<&str> = only.source.as_ref().unwrap().weights.patched_names().collect();
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with(UNET_PREFIX)), "{names:?}");
    let (m, c) = lora_loader(&reg, &model, &clip, "kohya_diffusers.safetensors", 0.6, 0.0).unwrap();
    assert_eq!(unet_out(gpu, &out[0]), unet_out(gpu, &m));
    assert!(std::sync::Arc::ptr_eq(&c.downcast::<ClipHandle>().unwrap(), &clip.downcast::<ClipHandle>().unwrap()));
}

/// `unet_key_to_diffusers` inverts `unet_key` on every UNet weight of the tiny model.
#[test]
fn ldm_unet_names_map_back_to_diffusers() {
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ldm_to_diffusers_keys.json")).unwrap()).unwrap();
    let mut n = 0;
    for (ldm, diff) in map.iter().filter(|(k, _)| k.starts_with(UNET_PREFIX)) {
        assert_eq!(unet_key_to_diffusers(&ldm[UNET_PREFIX.len()..], 2).as_deref(), Some(diff.as_str()), "{ldm}");
        n += 1;
    }
    assert!(n > 100, "{n}");
}

/// Writes a LoRA file of f32 tensors.
fn lora_file(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
    let path = dir.join(name);
    let t: Vec<(&str, &[usize], &[f32])> = tensors.iter().map(|(k, s, v)| (*k, s.as_slice(), v.as_slice())).collect();
    write(&path, &t, Dtype::F32).unwrap();
    path
}

/// Refused and partly matching files say what is wrong, naming the file and the key.
#[test]
fn bad_loras_are_explained() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (mh, ch) = handles(&reg);
    let dir = crate::common::temp_dir("lora-bad");
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let pair_with = |up: Vec<usize>, down: Vec<usize>, v: f32| {
        let n = |s: &Vec<usize>| s.iter().product::<usize>();
        vec![
            (format!("{q}.lora_up.weight"), up.clone(), vec![v; n(&up)]),
            (format!("{q}.lora_down.weight"), down.clone(), vec![v; n(&down)]),
        ]
    };
    let pair = |up: Vec<usize>, down: Vec<usize>| pair_with(up, down, 0.1);
    // What LoraLoader does before building the networks: read, match, merge.
    let err = |path: &Path| {
        read_lora(path, &mh, Some(&ch)).and_then(|l| nodes::lora_loader::lora_model(gpu, &mh, &l, 1.0).map(|_| l))
    };
    let write_owned = |name: &str, v: Vec<(String, Vec<usize>, Vec<f32>)>| {
        let t: Vec<(&str, Vec<usize>, Vec<f32>)> =
            v.iter().map(|(k, s, d)| (k.as_str(), s.clone(), d.clone())).collect();
        lora_file(&dir, name, &t)
    };

    let p = write_owned("none.safetensors", vec![("some.weight".into(), vec![2], vec![1.0, 2.0])]);
    let e = err(&p).unwrap_err();
    assert!(e.contains("none.safetensors") && e.contains("no LoRA keys"), "{e}");

    // Adapter kinds sdgraph does not merge, and parts no adapter has, name the key.
    let p = write_owned("oft.safetensors", vec![(format!("{q}.oft_blocks"), vec![2, 4, 4], vec![0.0; 32])]);
    let e = err(&p).unwrap_err();
    assert!(e.contains("OFT") && e.contains(&format!("{q}.oft_blocks")), "{e}");
    let mut unknown = pair(vec![8, 2], vec![2, 8]);
    unknown.push((format!("{q}.lokr_w3"), vec![2, 2], vec![0.0; 4]));
    let e = err(&write_owned("unknown.safetensors", unknown)).unwrap_err();
    assert!(e.contains(&format!("{q}.lokr_w3")) && e.contains("no adapter part"), "{e}");

    // LoHa on the 8x8 to_q: a missing factor, a factor of the wrong shape, a NaN.
    let n = |s: &Vec<usize>| s.iter().product::<usize>();
    let loha = |w2b: Vec<usize>| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        [("w1_a", vec![8, 2]), ("w1_b", vec![2, 8]), ("w2_a", vec![8, 2]), ("w2_b", w2b)]
            .into_iter()
            .map(|(p, s)| (format!("{q}.hada_{p}"), s.clone(), vec![0.1; n(&s)]))
            .collect()
    };
    let mut missing = loha(vec![2, 8]);
    missing.pop();
    let e = err(&write_owned("loha_missing.safetensors", missing)).unwrap_err();
    assert!(e.contains("LoHa") && e.contains(&format!("{q}.hada_w2_b")), "{e}");
    let e = err(&write_owned("loha_shape.safetensors", loha(vec![2, 9]))).unwrap_err();
    assert!(e.contains(&format!("{q}.hada_w2_b")) && e.contains("[2, 9]"), "{e}");
    let mut nan = loha(vec![2, 8]);
    nan[3].2[5] = f32::NAN;
    let e = err(&write_owned("loha_nan.safetensors", nan)).unwrap_err();
    assert!(e.contains(&format!("{q}.hada_w2_b")) && e.contains("NaN"), "{e}");

    // LoKr whose Kronecker product is 8x4 for the 8x8 weight; a full diff and a bias diff of the wrong shape.
    let lokr =
        vec![(format!("{q}.lokr_w1"), vec![2, 2], vec![0.1; 4]), (format!("{q}.lokr_w2"), vec![4, 2], vec![0.1; 8])];
    let e = err(&write_owned("lokr_shape.safetensors", lokr)).unwrap_err();
    assert!(e.contains("LoKr") && e.contains(q) && e.contains("8x4") && e.contains("[8, 8]"), "{e}");
    let e = err(&write_owned("diff_shape.safetensors", vec![(format!("{q}.diff"), vec![8, 4], vec![0.1; 32])]))
        .unwrap_err();
    assert!(e.contains(&format!("{q}.diff")) && e.contains("[8, 4]"), "{e}");
    let o = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0";
    let e = err(&write_owned("diff_b_shape.safetensors", vec![(format!("{o}.diff_b"), vec![9], vec![0.1; 9])]))
        .unwrap_err();
    assert!(e.contains(&format!("{o}.diff_b")) && e.contains("[9]") && e.contains(".bias"), "{e}");
    // to_q has no bias in SD's attention.
    let e = err(&write_owned("no_bias.safetensors", vec![(format!("{q}.diff_b"), vec![8], vec![0.1; 8])])).unwrap_err();
    assert!(e.contains(q) && e.contains("to_q.bias") && e.contains("no such tensor"), "{e}");

    // DoRA's magnitude must span the output ([8, 1]) or the input axis ([1, 8]).
    let mut dora = pair(vec![8, 2], vec![2, 8]);
    dora.push((format!("{q}.dora_scale"), vec![8], vec![1.0; 8]));
    let e = err(&write_owned("dora.safetensors", dora)).unwrap_err();
    assert!(e.contains(&format!("{q}.dora_scale")) && e.contains("[8, 1, ..]"), "{e}");

    let e = err(&write_owned("shape.safetensors", pair(vec![8, 2], vec![2, 9]))).unwrap_err();
    assert!(e.contains(&format!("{q}.lora_down.weight")) && e.contains("[2, 9]"), "{e}");

    let mut nan = pair(vec![8, 2], vec![2, 8]);
    nan[1].2[3] = f32::NAN;
    let e = err(&write_owned("nan.safetensors", nan)).unwrap_err();
    assert!(e.contains(&format!("{q}.lora_down.weight")) && e.contains("NaN"), "{e}");
    // Finite factors whose product overflows f32: an error naming the module, not an infinite weight.
    let e = err(&write_owned("huge.safetensors", pair_with(vec![8, 2], vec![2, 8], 1e30))).unwrap_err();
    assert!(e.contains(q) && e.contains("inf"), "{e}");

    let mut sdxl = pair(vec![8, 2], vec![2, 8]);
    sdxl.push(("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(), vec![4, 1], vec![0.0; 4]));
    let e = err(&write_owned("sdxl.safetensors", sdxl)).unwrap_err();
    assert!(e.contains("SDXL") && e.contains("lora_te2_"), "{e}");

    // An SD 2.x-like cross-attention LoRA: 1024-wide text embeddings do not fit.
    let k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
    let sd2 = vec![
        (format!("{k}.lora_up.weight"), vec![8, 2], vec![0.1; 16]),
        (format!("{k}.lora_down.weight"), vec![2, 1024], vec![0.1; 2048]),
    ];
    let e = err(&write_owned("sd2.safetensors", sd2)).unwrap_err();
    assert!(e.contains("SD 2.x") && e.contains(k) && e.contains("SD 1.x model"), "{e}");

    // An SDXL UNet LoRA without text-encoder keys: a block past the first of a transformer (LDM and diffusers names).
    for k in [
        "lora_unet_input_blocks_4_1_transformer_blocks_9_attn2_to_k",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q",
    ] {
        let mut xl = pair(vec![8, 2], vec![2, 8]);
        xl.push((format!("{k}.lora_up.weight"), vec![8, 2], vec![0.1; 16]));
        xl.push((format!("{k}.lora_down.weight"), vec![2, 8], vec![0.1; 16]));
        let e = err(&write_owned("sdxl_unet.safetensors", xl)).unwrap_err();
        assert!(e.contains("targets SDXL") && e.contains(k) && e.contains("the model is SD 1.x"), "{e}");
    }

    let mut partly = pair(vec![8, 2], vec![2, 8]);
    for i in 0..7 {
        partly.push((format!("lora_unet_nothing_{i}.lora_up.weight"), vec![1, 1], vec![0.0]));
    }
    let lora = err(&write_owned("partly.safetensors", partly)).unwrap();
    let w = not_loaded_warning(&lora).unwrap();
    assert!(w.contains("7 keys not loaded") && w.contains("lora_unet_nothing_0.lora_up.weight"), "{w}");
    assert_eq!(lora.modules.len(), 1);
}

/// The adapter files cover every kind ComfyUI merges, each on a linear (2-D) and a conv (4-D) weight
/// of the tiny model, so the reference comparison above checks each kind on both.
#[test]
fn adapter_fixtures_cover_each_kind_on_linear_and_conv() {
    let Some(_gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (mh, ch) = handles(&reg);
    let src = mh.source.as_ref().unwrap().weights.prefix("");
    let mut seen: BTreeSet<(String, usize)> = BTreeSet::new();
    for file in ["locon_mid", "loha", "lokr", "diff", "dora", "mixed"] {
        let lora = read_lora(&lora_dir().join(format!("{file}.safetensors")), &mh, Some(&ch)).unwrap();
        assert!(lora.not_loaded.is_empty(), "{file}: {:?}", lora.not_loaded);
        for m in &lora.modules {
            let kind = match &m.adapter {
                Adapter::Lora { mid: Some(_), .. } => "LoCon mid".to_string(),
                Adapter::Loha { cores: Some(_), .. } => "LoHa CP".to_string(),
                Adapter::Lokr { t2: Some(_), .. } => "LoKr Tucker".to_string(),
                Adapter::Lokr { w1: Factor::Full(_), w2: Factor::Full(_), .. } => "LoKr whole".to_string(),
                Adapter::Diff(_) if m.target.ends_with(".bias") => "diff_b".to_string(),
                a => a.kind().to_string(),
            };
            let dims = src.shape(&m.target).unwrap().len();
            if m.dora_scale.is_some() {
                seen.insert((format!("DoRA {}", m.adapter.kind()), dims.min(4)));
            }
            seen.insert((kind, dims));
        }
    }
    let has = |k: &str, d: usize| seen.contains(&(k.to_string(), d));
    for kind in ["LoRA", "LoHa", "LoKr", "diff", "DoRA LoRA"] {
        assert!(has(kind, 2) && has(kind, 4), "{kind} on linear and conv: {seen:?}");
    }
    for (kind, dims) in [("LoCon mid", 4), ("LoHa CP", 4), ("LoKr Tucker", 4), ("LoKr whole", 2), ("LoKr whole", 4)] {
        assert!(has(kind, dims), "{kind} ({dims}-D): {seen:?}");
    }
    for (kind, dims) in [("DoRA LoHa", 2), ("DoRA LoKr", 4), ("diff_b", 1), ("diff", 1), ("set_weight", 4)] {
        assert!(has(kind, dims), "{kind} ({dims}-D): {seen:?}");
    }
}

/// Half the spacing of f16 values around `x`: what rounding a value to f16 may move it by.
fn f16_half_ulp(x: f32) -> f32 {
    let a = x.abs().max(2f32.powi(-14));
    2f32.powi(a.log2().floor() as i32 - 11)
}

/// On the f16 checkpoint with the networks stored in f16 (what GPUs run): the merge adds to the f16 base
/// read as f32 the same `strength * scale * up @ down` as on the f32 base and rounds the sum once to f16
/// (within 1e-5 beyond that rounding), and the outputs stay within f16's reach of the f32 reference (the
/// models tests' f16 bounds).
#[test]
fn f16_models_merge_the_same_delta() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry_with(nodes::Settings { dtype: Some(DType::F16), ..Default::default() });
    let ckpt = fixtures().join("model_f16.safetensors").display().to_string();
    let out = try_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", ParamValue::String(ckpt))]).unwrap();
    let (m, c) = lora_loader(&reg, &out[0], &out[1], "kohya_ldm.safetensors", 0.7, -0.5).unwrap();
    let mh = m.downcast::<ModelHandle>().unwrap();
    let ch = c.downcast::<ClipHandle>().unwrap();
    let (mu, mc) = (&mh.source.as_ref().unwrap().weights, &ch.source.as_ref().unwrap().weights);
    assert_eq!(mh.source.as_ref().unwrap().dtype, DType::F16);
    let expected = SafeTensors::open(&lora_dir().join("expected.safetensors")).unwrap();
    let base32 = SafeTensors::open(&fixtures().join("model.safetensors")).unwrap();
    let base16 = SafeTensors::open(&fixtures().join("model_f16.safetensors")).unwrap();
    let mut worst = 0f32;
    for k in expected.names().filter_map(|k| k.strip_prefix("kohya_ldm.merged.")) {
        let got = gpu.download(mu.patched(k).or(mc.patched(k)).unwrap()).unwrap();
        let want = expected.f32_any(&format!("kohya_ldm.merged.{k}")).unwrap().1;
        let (b32, b16) = (base32.f32_any(k).unwrap().1, base16.f32_any(k).unwrap().1);
        // The f16 base plus the reference's delta, which the merge rounds once to f16.
        for ((g, b), (w, b32)) in got.iter().zip(&b16).zip(want.iter().zip(&b32)) {
            let exact = b + (w - b32);
            worst = worst.max(((g - exact).abs() - f16_half_ulp(exact)).max(0.0));
        }
    }
    let eu = max_abs(&unet_out(gpu, &m), &expected.f32_any("kohya_ldm.unet").unwrap().1);
    let ec = max_abs(&clip_out(gpu, &c), &expected.f32_any("kohya_ldm.clip").unwrap().1);
    println!("f16: merged delta max err {worst:.2e}; outputs vs the f32 reference: unet {eu:.2e}, clip {ec:.2e}");
    assert!(worst <= MERGED_TOL, "{worst}");
    assert!(eu <= 1e-2 && ec <= 1e-2, "unet {eu}, clip {ec}");
}

/// Keeps the samples of the latent it is given (a sink that lets the test read a graph's result).
struct LatentSink(graph::NodeSchema, std::sync::Arc<std::sync::Mutex<Vec<f32>>>);

impl graph::NodeKind for LatentSink {
    fn schema(&self) -> &graph::NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut graph::RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, graph::NodeError> {
        let latent = inputs.inputs["samples"].downcast::<nodes::payload::Latent>().unwrap();
        *self.1.lock().unwrap() = latent.samples.clone();
        Ok(vec![])
    }
}

/// What `watch` does with a LoRA, through one Executor on the tiny model: a changed strength_model merges
/// again but leaves the prompts' encodings cached (LoraLoader's CLIP output has a key of its own), and
/// gives back the first picture bit for bit when undone; a changed strength_clip encodes again; the graph
/// without the LoRA gives back the base picture bit for bit; strength 0 is the base picture.
#[test]
fn watch_edits_merge_again_and_undo_exactly() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    use graph::exec::{Executor, NodeStatus};
    let dir = crate::common::temp_dir("lora-watch");
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    let lora = dir.join("style.safetensors");
    std::fs::copy(lora_dir().join("kohya_diffusers.safetensors"), &lora).unwrap();
    let graph = |strengths: Option<(f64, f64)>| {
        let (model, clip, lora_node) = match strengths {
            Some((sm, sc)) => (
                "lora.model",
                "lora.clip",
                format!(
                    r#""lora": (kind: "LoraLoader", inputs: {{ "model": "ckpt.model", "clip": "ckpt.clip" }},
                        params: {{ "lora_name": {lora:?}, "strength_model": {sm:?}, "strength_clip": {sc:?} }}),"#
                ),
            ),
            None => ("ckpt.model", "ckpt.clip", String::new()),
        };
        format!(
            r#"(nodes: {{
                "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
                {lora_node}
                "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": {clip:?} }}, params: {{ "text": "a red fox in the snow" }}),
                "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": {clip:?} }}, params: {{ "text": "blurry" }}),
                "empty": (kind: "EmptyLatentImage", params: {{ "width": 32, "height": 32 }}),
                "sample": (kind: "KSampler", inputs: {{ "model": {model:?}, "positive": "pos.conditioning",
                    "negative": "neg.conditioning", "latent_image": "empty.latent" }},
                    params: {{ "seed": 7, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal" }}),
                "sink": (kind: "LatentSink", inputs: {{ "samples": "sample.latent" }}),
            }})"#
        )
    };
    let mut reg = nodes::builtin_registry();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let schema = graph::NodeSchema::new("LatentSink", "test", "Keeps a latent.")
        .input("samples", graph::PortType::Latent, "It.")
        .sink();
    reg.register(std::sync::Arc::new(LatentSink(schema, got.clone()))).unwrap();
    let mut exec = Executor::default();
    // Runs the graph; returns the nodes that ran (not cached), LoraLoader's seconds and the latent.
    let mut run = |strengths: Option<(f64, f64)>| {
        let g = crate::common::validate_str(&graph(strengths), &reg).unwrap_or_else(|e| panic!("{e}"));
        let r = crate::common::run(&mut exec, &g, &dir);
        assert!(r.ok, "{strengths:?}: {:?}", r.errors());
        let ran: Vec<String> = r.ids_with(NodeStatus::Executed).into_iter().map(str::to_owned).collect();
        let secs = r.nodes.iter().find(|n| n.id == "lora").map(|n| n.seconds).unwrap_or(0.0);
        let digests: Vec<(PathBuf, Option<String>)> =
            r.files_read().into_values().map(|f| (f.path.clone(), f.sha256.clone())).collect();
        (ran, secs, got.lock().unwrap().clone(), digests)
    };
    let (_, _, base, _) = run(None);
    let (ran, first, a, digests) = run(Some((0.8, 0.5)));
    assert_eq!(ran, ["lora", "pos", "neg", "sample", "sink"]);
    // Provenance: the LoRA file with its SHA-256, as the checkpoint.
    let sha = graph::exec::provenance::sha256_file(&lora).unwrap();
    let abs = std::path::absolute(&lora).unwrap();
    assert!(digests.contains(&(abs.clone(), Some(sha))), "{digests:?}");
    let run = |s| {
        let (ran, secs, latent, _) = run(s);
        (ran, secs, latent)
    };
    let mut run = run;
    assert!(max_abs(&a, &base) > 1e-3, "the LoRA changed nothing");
    // strength_model only: merged again, the prompts stay encoded.
    let (ran, again, b) = run(Some((0.3, 0.5)));
    assert_eq!(ran, ["lora", "sample", "sink"]);
    assert!(max_abs(&a, &b) > 1e-4, "strength_model changed nothing");
    // Undone: the first picture bit for bit (merged again onto the same base tensors).
    let (ran, _, a2) = run(Some((0.8, 0.5)));
    assert_eq!(ran, ["lora", "sample", "sink"]);
    assert_eq!(a2, a);
    // strength_clip: the prompts are encoded again.
    let (ran, _, _) = run(Some((0.8, -0.5)));
    assert_eq!(ran, ["lora", "pos", "neg", "sample", "sink"]);
    // The cache key follows the file's contents: touched, it stays cached; replaced by another LoRA, merged again.
    let (ran, _, t) = run(Some((0.8, -0.5)));
    assert!(ran.is_empty(), "{ran:?}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&lora, std::fs::read(&lora).unwrap()).unwrap();
    let (ran, _, touched) = run(Some((0.8, -0.5)));
    assert!(ran.is_empty(), "rewritten with the same bytes: {ran:?}");
    assert_eq!(touched, t);
    std::fs::copy(lora_dir().join("peft.safetensors"), &lora).unwrap();
    let (ran, _, other) = run(Some((0.8, -0.5)));
    assert_eq!(ran, ["lora", "pos", "neg", "sample", "sink"]);
    assert!(max_abs(&other, &t) > 1e-4, "another LoRA changed nothing");
    // The LoRA removed: the base picture bit for bit, the checkpoint from the cache.
    let (ran, _, back) = run(None);
    assert!(!ran.contains(&"ckpt".to_string()), "{ran:?}");
    assert_eq!(back, base);
    // Both strengths 0: the base picture.
    let (_, _, zero) = run(Some((0.0, 0.0)));
    assert_eq!(zero, base);
    println!("LoraLoader on the tiny model (lavapipe): first merge {first:.3} s, strength_model changed {again:.3} s");
}

/// A LoRA'd network shares every tensor the LoRA does not patch with the network it came from, and a
/// changed strength merges onto the same base values again (nothing more is uploaded and kept).
#[test]
fn a_merged_network_shares_what_the_lora_does_not_patch() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let (model, clip) = checkpoint(&reg);
    let base = model.downcast::<ModelHandle>().unwrap();
    let base_clip = clip.downcast::<ClipHandle>().unwrap();
    let table = base.source.as_ref().unwrap().weights.resident_table().unwrap().clone();
    let (m1, c1) = lora_loader(&reg, &model, &clip, "kohya_diffusers.safetensors", 0.8, 0.5).unwrap();
    let kept = table.kept_bytes();
    let (m2, _) = lora_loader(&reg, &model, &clip, "kohya_diffusers.safetensors", -0.4, 0.5).unwrap();
    assert_eq!(table.kept_bytes(), kept, "a changed strength uploaded base values again");
    let (m1, m2) = (m1.downcast::<ModelHandle>().unwrap(), m2.downcast::<ModelHandle>().unwrap());
    let c1 = c1.downcast::<ClipHandle>().unwrap();
    // Not patched by this LoRA: the UNet's last conv and the text encoder's final norm.
    assert!(m1.unet.out_2.weight.same_buffer(&base.unet.out_2.weight));
    assert!(m2.unet.out_2.weight.same_buffer(&base.unet.out_2.weight));
    assert!(c1.model.final_layer_norm.weight.same_buffer(&base_clip.model.final_layer_norm.weight));
    // Patched (the first encoder layer's q_proj): a tensor of its own.
    let q = |c: &ClipHandle| c.model.layers[0].q_proj.weight.clone();
    assert!(!q(&c1).same_buffer(&q(&base_clip)));
    let src = m1.source.as_ref().unwrap();
    let patched = src.weights.patched_names().count();
    let names = src.weights.names().filter(|n| n.starts_with(UNET_PREFIX)).count();
    println!("UNet: {patched} of {names} tensors patched, base values kept for the merge: {kept} bytes");
    assert!(patched > 0 && patched < names);
    // The merged values equal the base's plus the LoRA's: strength 0.8 vs -0.4 on the same base.
    let name = src.weights.patched_names().next().unwrap().to_string();
    let w1 = gpu.download(src.weights.patched(&name).unwrap()).unwrap();
    let w2 = gpu.download(m2.source.as_ref().unwrap().weights.patched(&name).unwrap()).unwrap();
    let w0 = gpu.download(&base.source.as_ref().unwrap().weights.base_tensor(gpu, &name, DType::F32).unwrap()).unwrap();
    // w1 - w0 = 0.8 d, w2 - w0 = -0.4 d: w1 - w0 = -2 (w2 - w0).
    let d1: Vec<f32> = w1.iter().zip(&w0).map(|(a, b)| a - b).collect();
    let d2: Vec<f32> = w2.iter().zip(&w0).map(|(a, b)| -2.0 * (a - b)).collect();
    assert!(max_abs(&d1, &d2) < 1e-6 && d1.iter().any(|d| d.abs() > 1e-4), "{name}");
}

/// Benchmark, not run by default: LoraLoader at strength 0.5 after the same LoRA at 1.0 on the same
/// model (what `watch` does when a strength is edited), on the tiny model and, when
/// SDGRAPH_LORA_BENCH_DIR holds `model/` (a diffusers folder) and `lora_r32.safetensors`
/// (tests/fixtures/lora/make_lora_bench.py writes a half-width SD 1.5-shaped one), on that.
/// cargo test -p sdgraph --test pipelines lora::bench -- --ignored --nocapture
#[test]
#[ignore]
fn bench_lora_strength_change() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let reg = nodes::builtin_registry();
    let mut cases = vec![(fixtures().join("model.safetensors"), lora_dir().join("kohya_diffusers.safetensors"))];
    if let Ok(d) = std::env::var("SDGRAPH_LORA_BENCH_DIR") {
        cases.push((Path::new(&d).join("model"), Path::new(&d).join("lora_r32.safetensors")));
    }
    for (ckpt, lora) in cases {
        let t = std::time::Instant::now();
        let ckpt_name = ParamValue::String(ckpt.display().to_string());
        let out = try_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", ckpt_name)]).unwrap();
        let load = t.elapsed().as_secs_f64();
        let (model, clip) = (out[0].clone(), out[1].clone());
        // Waits for the GPU's queued work (a download waits for everything submitted before it).
        let sync = || {
            let gpu = gpu::testing::shared_gpu().unwrap();
            gpu.download(&gpu.zeros(&[1], DType::F32).unwrap()).unwrap();
        };
        sync();
        let mut times = Vec::new();
        // The previous result stays alive while the next is made, as in the executor's cache.
        let mut previous = None;
        for (sm, sc) in [(1.0, 1.0), (0.5, 1.0), (0.25, 1.0)] {
            let t = std::time::Instant::now();
            let r = lora_loader(&reg, &model, &clip, &lora.display().to_string(), sm, sc).unwrap();
            sync();
            times.push(t.elapsed().as_secs_f64());
            previous = Some(r);
        }
        drop(previous);
        // The two halves, at a strength not merged yet: the UNet's, the text encoder's.
        let (mh, ch) = (model.downcast::<ModelHandle>().unwrap(), clip.downcast::<ClipHandle>().unwrap());
        let parsed = read_lora(&lora, &mh, Some(&ch)).unwrap();
        let gpu = gpu::testing::shared_gpu().unwrap();
        sync();
        let t = std::time::Instant::now();
        let m = nodes::lora_loader::lora_model(gpu, &mh, &parsed, 0.7).unwrap();
        gpu.download(&m.unet.out_2.bias.clone().unwrap()).unwrap();
        let unet_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let c = nodes::lora_loader::lora_clip(gpu, &ch, &parsed, 0.7).unwrap();
        gpu.download(&c.model.final_layer_norm.weight).unwrap();
        println!("bench: UNet merge {unet_s:.3} s, text encoder merge {:.3} s", t.elapsed().as_secs_f64());
        // The merge's product alone: [1280, 32] @ [32, 5120] plus a [1280, 5120] residual (an ff.net.0.proj of SD 1.5).
        use gpu::ops::matmul::{MatmulOptions, matmul};
        let (up, down) = (
            gpu.upload(&vec![0.01; 1280 * 32], &[1280, 32], DType::F32).unwrap(),
            gpu.upload(&vec![0.01; 5120 * 32], &[5120, 32], DType::F32).unwrap(),
        );
        let w = gpu.upload(&vec![0.5; 1280 * 5120], &[1280, 5120], DType::F32).unwrap();
        sync();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            matmul(gpu, &up, &down, &MatmulOptions { residual: Some(&w), transpose_b: true, ..Default::default() })
                .unwrap();
        }
        sync();
        println!("bench: rank-32 product 1280x5120 with residual {:.3} s each", t.elapsed().as_secs_f64() / 5.0);
        let t = std::time::Instant::now();
        for _ in 0..5 {
            gpu::ops::binary::add(gpu, &w, &w).unwrap();
        }
        sync();
        println!("bench: add of 1280x5120 {:.3} s each", t.elapsed().as_secs_f64() / 5.0);
        println!(
            "bench {}: checkpoint {load:.2} s; LoraLoader at 1.0 {:.3} s, then 0.5 {:.3} s, then 0.25 {:.3} s",
            ckpt.display(),
            times[0],
            times[1],
            times[2]
        );
    }
}
