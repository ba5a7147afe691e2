//! CLIPSetLastLayer ("clip skip"): the CLIP it returns encodes with an earlier hidden state,
//! checked against the tiny fixture's transformers reference and, through CLIPTextEncode,
//! against the model library's penultimate-layer forward.

use std::path::Path;
use std::sync::Arc;

use graph::{ParamValue, Registry, Value};
use models::checkpoint::safetensors::{Dtype, SafeTensors};
use models::clip::ClipLayer;
use models::prompt_weights::{encode_token_weights, tokenize_with_weights};
use nodes::payload::ClipHandle;

use crate::common::run_kind;
use crate::common::sd_tiny::{fixtures, full_vocab_checkpoint};

fn load_clip(reg: &Registry, ckpt: &Path) -> Value {
    let loaded =
        run_kind(reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", ParamValue::String(ckpt.display().to_string()))]);
    loaded[1].clone()
}

fn set_last_layer(reg: &Registry, clip: &Value, n: i64) -> Value {
    run_kind(reg, "CLIPSetLastLayer", &[("clip", clip.clone())], &[("stop_at_clip_layer", ParamValue::Int(n.into()))])
        .remove(0)
}

/// The fixture's token ids, `[2, 77]` stored as I64.
fn fixture_ids() -> Vec<Vec<u32>> {
    let st = SafeTensors::open(&fixtures().join("clip/inputs.safetensors")).unwrap();
    let (info, bytes) = st.bytes("input_ids").unwrap();
    assert_eq!(info.dtype, Dtype::I64);
    let ids: Vec<u32> =
        bytes.chunks_exact(8).map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap()).collect();
    ids.chunks(77).map(<[u32]>::to_vec).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// The handle CLIPSetLastLayer returns, run on the fixture's ids with the layer it carries,
/// matches transformers' `final_layer_norm(hidden_states[-n])` (`penultimate_ln` for -2,
/// `last_hidden_state` for -1) to the fixture's tolerance, and shares the loaded model.
#[test]
fn set_last_layer_matches_the_transformers_reference() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let reg = nodes::builtin_registry();
    let clip = load_clip(&reg, &fixtures().join("model.safetensors"));
    let loaded = clip.downcast::<ClipHandle>().unwrap();
    assert_eq!(loaded.layer, ClipLayer::Last);
    let expected = SafeTensors::open(&fixtures().join("clip/expected.safetensors")).unwrap();
    let ids = fixture_ids();
    for (n, reference) in [(-1, "last_hidden_state"), (-2, "penultimate_ln")] {
        let h = set_last_layer(&reg, &clip, n).downcast::<ClipHandle>().unwrap();
        assert!(Arc::ptr_eq(&h.model, &loaded.model) && Arc::ptr_eq(&h.tokenizer, &loaded.tokenizer), "{n}: shared");
        let got = gpu.download(&h.model.forward(gpu, &ids, h.layer).unwrap()).unwrap();
        let (_, want) = expected.f32_any(reference).unwrap();
        let e = max_abs(&got, &want);
        println!("stop_at_clip_layer {n} vs {reference}: max abs err {e:.3e}");
        assert!(e <= 1e-4, "stop_at_clip_layer {n}: max abs err {e} against {reference}");
    }
    // The input is left as it was (ComfyUI clones the CLIP).
    assert_eq!(loaded.layer, ClipLayer::Last);
}

/// What CLIPTextEncode computes for the CLIP CLIPSetLastLayer returns (the prompt's chunks
/// encoded with the handle's layer) is the model's penultimate-layer encoding for -2, unlike
/// -1; -3 differs again; a layer deeper than the 3-layer model (-24) is the last layer, as
/// ComfyUI falls back.
#[test]
fn set_last_layer_picks_the_layer_the_prompt_is_encoded_with() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let dir = crate::common::temp_dir("clip-skip");
    let reg = nodes::builtin_registry();
    let clip = load_clip(&reg, &full_vocab_checkpoint(&dir));
    let handle = clip.downcast::<ClipHandle>().unwrap();
    let text = "a red fox in the snow";
    let encode = |n: i64| -> Vec<f32> {
        let h = set_last_layer(&reg, &clip, n).downcast::<ClipHandle>().unwrap();
        let chunks = tokenize_with_weights(&h.tokenizer, text).unwrap().chunks;
        gpu.download(&encode_token_weights(gpu, &h.model, &chunks, h.layer).unwrap()).unwrap()
    };
    let ids = [handle.tokenizer.tokenize_77(text)];
    let direct = |layer| gpu.download(&handle.model.forward(gpu, &ids, layer).unwrap()).unwrap();
    let (last, skip2, skip3, deep) = (encode(-1), encode(-2), encode(-3), encode(-24));
    let (e2, e1) = (max_abs(&skip2, &direct(ClipLayer::Penultimate)), max_abs(&last, &direct(ClipLayer::Last)));
    let (d21, d32) = (max_abs(&skip2, &last), max_abs(&skip3, &skip2));
    println!("-2 vs Penultimate {e2:.3e}, -1 vs Last {e1:.3e}; -2 vs -1 {d21:.3}, -3 vs -2 {d32:.3}");
    assert!(e2 <= 1e-6 && e1 <= 1e-6, "{e2} {e1}");
    assert!(d21 > 0.1 && d32 > 0.1, "the layers should give different encodings: {d21} {d32}");
    assert_eq!(max_abs(&skip3, &direct(ClipLayer::Skip(3))), 0.0);
    assert_eq!(deep, last, "-24 on a 3-layer encoder is the last layer, as in ComfyUI");
}

/// Through a whole graph, CLIPTextEncode honours the layer: the picture after
/// CLIPSetLastLayer -1 (and -24, deeper than the model) is the one without the node, bit
/// for bit; after -2 it differs.
#[test]
fn text_encode_in_a_graph_uses_the_layer_set() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("clip-skip-graph");
    let ckpt = full_vocab_checkpoint(&dir);
    let graph = |clip: &str, n: i64| {
        format!(
            r#"(nodes: {{
                "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
                "skip": (kind: "CLIPSetLastLayer", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "stop_at_clip_layer": {n} }}),
                "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": {clip:?} }}, params: {{ "text": "a red fox in the snow" }}),
                "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": {clip:?} }}, params: {{ "text": "blurry" }}),
                "empty": (kind: "EmptyLatentImage", params: {{ "width": 32, "height": 32 }}),
                "sample": (kind: "KSampler", inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning",
                    "negative": "neg.conditioning", "latent_image": "empty.latent" }},
                    params: {{ "seed": 7, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal" }}),
                "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
                "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "pic" }}),
            }})"#
        )
    };
    let reg = nodes::builtin_registry();
    let mut exec = graph::exec::Executor::default();
    let mut picture = |name: &str, text: String| {
        let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
        let out = dir.join(name);
        let r = crate::common::run(&mut exec, &g, &out);
        assert!(r.ok, "{name}: {:?}", r.errors());
        image::open(out.join("pic_00001.png")).unwrap().to_rgb8()
    };
    let plain = picture("plain", graph("ckpt.clip", -1));
    let last = picture("last", graph("skip.clip", -1));
    let deep = picture("deep", graph("skip.clip", -24));
    let skip2 = picture("skip2", graph("skip.clip", -2));
    assert_eq!(last, plain);
    assert_eq!(deep, plain);
    let changed = skip2.as_raw().iter().zip(plain.as_raw()).filter(|(a, b)| a != b).count();
    println!("-2 changes {changed} of {} picture values", plain.as_raw().len());
    assert!(changed * 10 > plain.as_raw().len(), "clip skip 2 should change the picture: {changed} values");
}

/// stop_at_clip_layer outside ComfyUI's -24..=-1 is refused when the graph is checked,
/// naming the param; the kind is in the registry with ComfyUI's names.
#[test]
fn out_of_range_layers_are_refused_by_validation() {
    let reg = nodes::builtin_registry();
    let schema = reg.get("CLIPSetLastLayer").unwrap().schema();
    let names: Vec<&str> = schema.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["stop_at_clip_layer"]);
    assert_eq!(schema.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["clip"]);
    let graph = |n: i64| {
        format!(
            r#"(nodes: {{
                "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": "x.safetensors" }}),
                "skip": (kind: "CLIPSetLastLayer", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "stop_at_clip_layer": {n} }}),
                "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "skip.clip" }}, params: {{ "text": "a fox" }}),
                "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "skip.clip" }}, params: {{ "text": "" }}),
                "empty": (kind: "EmptyLatentImage", params: {{ "width": 64, "height": 64 }}),
                "sample": (kind: "KSampler", inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning",
                    "negative": "neg.conditioning", "latent_image": "empty.latent" }}),
                "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
                "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}),
            }})"#
        )
    };
    for bad in [0, 1, -25, -100] {
        let e = crate::common::errors_of(&graph(bad), &reg);
        assert!(e.contains("stop_at_clip_layer"), "{bad}: {e}");
    }
    for good in [-1, -2, -24] {
        crate::common::validate_str(&graph(good), &reg).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}
