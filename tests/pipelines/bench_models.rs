//! `sdgraph bench models` on the tiny fixture checkpoint: its outputs equal
//! the networks' normal forward on the same inputs, every section is timed
//! and reported, a graph is timed end to end with sampling re-run, bad inputs
//! are errors naming the tensor; and `sdgraph run --profile` reports kernels.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gpu::testing::{random, shared_gpu};
use gpu::{DType, Gpu, Tensor};
use models::checkpoint::convert::open_checkpoint;
use models::checkpoint::safetensors::{Dtype, SafeTensors, write};
use models::clip::ClipLayer;
use nodes::checkpoint_loader::load_checkpoint;

fn sdgraph(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdgraph")).args(args).env("SDGRAPH_CACHE_DIR", dir.join("cache")).output().unwrap()
}

/// `sdgraph bench models` on `ckpt` with the inputs file `inputs`, writing `out`, then `extra`.
fn bench_models(dir: &Path, ckpt: &Path, inputs: &Path, out: &Path, extra: &[&str]) -> Output {
    let files = ["--checkpoint", ckpt.to_str().unwrap(), "--inputs", inputs.to_str().unwrap()];
    let args: Vec<&str> = ["bench", "models"]
        .into_iter()
        .chain(files)
        .chain(["--out", out.to_str().unwrap()])
        .chain(extra.iter().copied())
        .collect();
    sdgraph(dir, &args)
}

fn ids() -> Vec<f32> {
    // "a photo of a cat" and "" as the SD tokenizer pads them (eos repeated).
    let mut v = Vec::new();
    for row in [&[49406.0, 320.0, 1125.0, 539.0, 320.0, 2368.0, 49407.0][..], &[49406.0, 49407.0]] {
        v.extend_from_slice(row);
        v.extend(std::iter::repeat_n(49407.0, 77 - row.len()));
    }
    v
}

/// name, shape, data of every input.
fn inputs() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let r = |shape: &[usize], seed| random(shape.iter().product(), seed, -1.0, 1.0);
    vec![
        ("clip.input_ids", vec![2, 77], ids()),
        ("unet.b1.sample", vec![1, 4, 8, 8], r(&[1, 4, 8, 8], 1)),
        ("unet.b1.timestep", vec![1], vec![500.0]),
        ("unet.b1.context", vec![1, 77, 32], r(&[1, 77, 32], 2)),
        ("unet.b2.sample", vec![2, 4, 8, 8], r(&[2, 4, 8, 8], 3)),
        ("unet.b2.timestep", vec![2], vec![999.0, 1.0]),
        ("unet.b2.context", vec![2, 77, 32], r(&[2, 77, 32], 4)),
        ("vae.latent", vec![1, 4, 8, 8], r(&[1, 4, 8, 8], 5)),
        ("vae.image", vec![1, 3, 16, 16], r(&[1, 3, 16, 16], 6)),
    ]
}

fn write_inputs(path: &Path, inputs: &[(&str, Vec<usize>, Vec<f32>)]) {
    let t: Vec<(&str, &[usize], &[f32])> = inputs.iter().map(|(n, s, d)| (*n, s.as_slice(), d.as_slice())).collect();
    write(path, &t, Dtype::F32).unwrap();
}

fn up(gpu: &Gpu, inputs: &[(&str, Vec<usize>, Vec<f32>)], name: &str) -> Tensor {
    let (_, s, d) = inputs.iter().find(|(n, ..)| *n == name).unwrap();
    gpu.upload(d, s, DType::F32).unwrap()
}

fn graph(dir: &Path, ckpt: &Path) -> PathBuf {
    let g = dir.join("txt2img.ron");
    std::fs::write(
        &g,
        format!(
            r#"(nodes: {{
    "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
    "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a fox" }}),
    "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
    "empty": (kind: "EmptyLatentImage", params: {{ "width": 32, "height": 32 }}),
    "sample": (kind: "KSampler", inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning",
               "negative": "neg.conditioning", "latent_image": "empty.latent" }},
               params: {{ "steps": 2, "seed": 5, "sampler_name": "euler", "scheduler": "normal" }}),
    "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
    "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "b" }}),
}})"#
        ),
    )
    .unwrap();
    g
}

#[test]
fn outputs_equal_the_networks_forward_and_every_section_is_timed() {
    let Some(gpu) = shared_gpu() else { return };
    let dir = crate::common::temp_dir("bench-models");
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    let inp = inputs();
    let (inputs_path, out) = (dir.join("inputs.safetensors"), dir.join("out.safetensors"));
    write_inputs(&inputs_path, &inp);
    let g = graph(&dir, &ckpt);
    let extra = ["--graph", g.to_str().unwrap(), "--warmup", "1", "--runs", "2", "--json"];
    let o = bench_models(&dir, &ckpt, &inputs_path, &out, &extra);

    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ops = v["ops"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text_encoder", "unet_b1", "unet_b2", "vae_decode", "vae_encode", "txt2img"]);
    for op in ops {
        assert!(op["ms"].as_f64().unwrap() > 0.0, "{op}");
        assert!(op["min_ms"].as_f64().unwrap() <= op["ms"].as_f64().unwrap(), "{op}");
        assert_eq!(op["runs"], 2);
        assert!(op["peak_bytes"].as_u64().unwrap() > 0, "{op}");
        assert!(op.get("profile").is_none(), "no profile unless asked");
    }
    assert!(v["load_ms"].as_f64().unwrap() > 0.0);
    // The graph: a first run, 1 warm-up and 2 timed runs, each with its own seed, so each saved a picture.
    assert!(v["graph"]["first_run_ms"].as_f64().unwrap() > 0.0);
    let first = PathBuf::from(v["graph"]["outputs"][0].as_str().unwrap());
    assert!(first.is_file(), "{first:?}");
    let pngs = std::fs::read_dir(first.parent().unwrap()).unwrap().count();
    assert_eq!(pngs, 4);

    // The same networks, loaded and run in this process.
    let src = open_checkpoint(&ckpt).unwrap();
    let m = load_checkpoint(gpu, &src, nodes::runtime::model_dtype(gpu, None), |_| {}).unwrap();
    let got = SafeTensors::open(&out).unwrap();
    let check = |name: &str, t: Tensor| {
        let (shape, data) = got.f32_any(name).unwrap();
        assert_eq!(shape, t.shape(), "{name}");
        let want = gpu.download(&t).unwrap();
        let max = want.iter().zip(&data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert_eq!(max, 0.0, "{name}: bench output differs from the forward by {max}");
    };
    let rows: Vec<Vec<u32>> = ids().chunks(77).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    check("clip.last_hidden_state", m.clip.model.forward(gpu, &rows, ClipLayer::Last).unwrap());
    for (b, t) in [(1, vec![500.0]), (2, vec![999.0, 1.0])] {
        let x = up(gpu, &inp, &format!("unet.b{b}.sample"));
        let c = up(gpu, &inp, &format!("unet.b{b}.context"));
        check(&format!("unet.b{b}.out"), m.model.unet.forward(gpu, &x, &t, &c).unwrap());
    }
    check("vae.decoded", m.vae.vae.decode(gpu, &up(gpu, &inp, "vae.latent")).unwrap());
    check("vae.encoded_mean", m.vae.vae.encode(gpu, &up(gpu, &inp, "vae.image")).unwrap().mode().clone());
}

#[test]
fn profile_reports_kernels_per_network_and_for_a_run() {
    if shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("bench-profile");
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    let inputs_path = dir.join("inputs.safetensors");
    let only_unet: Vec<_> = inputs().into_iter().filter(|(n, ..)| n.starts_with("unet.b1")).collect();
    write_inputs(&inputs_path, &only_unet);
    let out = dir.join("out.safetensors");
    let profile = |runs: &str| {
        let o = bench_models(&dir, &ckpt, &inputs_path, &out, &["--runs", runs, "--profile", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ops = v["ops"].as_array().unwrap().clone();
        assert_eq!(ops.len(), 1, "only the UNet at batch 1 had inputs");
        ops[0]["profile"].clone()
    };
    let calls = |p: &serde_json::Value| -> std::collections::BTreeMap<String, u64> {
        p["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["name"].as_str().unwrap().to_string(), k["calls"].as_u64().unwrap()))
            .collect()
    };
    let (one, three) = (profile("1"), profile("3"));
    let (c1, c3) = (calls(&one), calls(&three));
    // Only the timed calls count (not the warm-up): every kernel runs exactly 3 times as often.
    assert_eq!(c1.keys().collect::<Vec<_>>(), c3.keys().collect::<Vec<_>>());
    for (k, n) in &c1 {
        assert_eq!(c3[k], 3 * n, "{k}");
    }
    for k in ["conv2d", "attention", "matmul", "gn_single", "layer_norm"] {
        assert!(c1.get(k).is_some_and(|&n| n > 0), "{k} missing from {c1:?}");
    }
    assert_eq!(three["calls"].as_u64().unwrap(), c3.values().sum::<u64>());
    assert!(three["total_ms"].as_f64().unwrap() > 0.0);

    // `sdgraph run --profile`: the table on stderr, or in the --json report.
    let g = graph(&dir, &ckpt);
    let run = |extra: &[&str]| {
        let mut a = vec!["run", g.to_str().unwrap(), "--out-dir", dir.to_str().unwrap(), "--quiet"];
        a.extend_from_slice(extra);
        sdgraph(&dir, &a)
    };
    let o = run(&["--profile"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("profile:") && err.contains("conv2d") && err.contains("share"), "{err}");
    let o = run(&["--profile", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["profile"]["calls"].as_u64().unwrap() > 0, "{v}");
    let o = run(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("profile").is_none(), "{v}");
}

#[test]
fn bad_inputs_are_errors_naming_the_tensor_or_file() {
    if shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("bench-bad");
    let ckpt = crate::common::sd_tiny::fixtures().join("model.safetensors");
    let run = |inputs: &[(&str, Vec<usize>, Vec<f32>)], ckpt: &Path| {
        let p = dir.join("in.safetensors");
        write_inputs(&p, inputs);
        let out = dir.join("out.safetensors");
        let o = bench_models(&dir, ckpt, &p, &out, &["--runs", "1"]);

        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let all = inputs();
    let no_ctx: Vec<_> =
        all.iter().filter(|(n, ..)| *n == "unet.b1.sample" || *n == "unet.b1.timestep").cloned().collect();
    assert!(run(&no_ctx, &ckpt).contains("unet.b1.context missing"));
    let bad_ids = vec![("clip.input_ids", vec![1, 3], vec![1.0, 2.5, 3.0])];
    assert!(run(&bad_ids, &ckpt).contains("clip.input_ids: 2.5 is not a token id"));
    let flat_ids = vec![("clip.input_ids", vec![3], vec![1.0, 2.0, 3.0])];
    assert!(run(&flat_ids, &ckpt).contains("clip.input_ids: shape [3]"));
    let missing = dir.join("nope.safetensors");
    assert!(run(&bad_ids, &missing).contains("nope.safetensors"));
    // A UNet input of the wrong width is the model's shape error, not a panic.
    let mut wrong = no_ctx.clone();
    wrong.push(("unet.b1.context", vec![1, 77, 5], vec![0.0; 77 * 5]));
    let e = run(&wrong, &ckpt);
    assert!(!e.contains("panicked"), "{e}");
}
