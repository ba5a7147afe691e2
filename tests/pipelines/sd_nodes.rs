//! The SD pipeline nodes on the tiny fixture checkpoint: loading (both
//! layouts), text encoding, VAE encode/decode, wired as graphs.

use std::path::{Path, PathBuf};

use crate::common::sd_tiny::{full_vocab_checkpoint, full_vocab_checkpoint_with};
use graph::exec::{Executor, NodeStatus};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_tiny").join(p)
}

fn run_graph(text: &str, dir: &Path) -> graph::exec::RunReport {
    let reg = nodes::builtin_registry();
    let g = crate::common::validate_str(text, &reg).unwrap_or_else(|e| panic!("{e}"));
    let mut exec = Executor::default();
    crate::common::run(&mut exec, &g, dir)
}

#[test]
fn vae_round_trip_graph_reconstructs_a_picture_of_the_cropped_size() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sd-vae");
    let ckpt = fixture("model.safetensors");
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "crop": (kind: "ImageCrop", inputs: {{ "image": "load.image" }}, params: {{ "width": 37, "height": 21, "x": 90, "y": 20 }}),
            "enc": (kind: "VAEEncode", inputs: {{ "pixels": "crop.image", "vae": "ckpt.vae" }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "enc.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "rt" }}),
        }})"#
    );
    let r = run_graph(&text, &dir);
    assert!(r.ok, "{:?}", r.errors());
    // The tiny VAE downsamples by 2: 37x21 is cropped to 36x20.
    let out = image::open(dir.join("rt_00001.png")).unwrap().to_rgb8();
    assert_eq!(out.dimensions(), (36, 20));
}

#[test]
fn text_encode_runs_on_both_checkpoint_layouts_and_long_prompts_chunk() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let dir = crate::common::temp_dir("sd-clip");
    let ckpt = full_vocab_checkpoint(&dir);
    let reg = nodes::builtin_registry();
    let loader = reg.get("CheckpointLoaderSimple").unwrap();
    let encode = reg.get("CLIPTextEncode").unwrap();
    let progress = graph::exec::NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut ctx = graph::RunContext::new("t", Path::new("."), &dir, "", &progress, &cancel);
    let mut inp = graph::NodeInputs::default();
    inp.params.insert("ckpt_name".into(), graph::ParamValue::String(ckpt.display().to_string()));
    let loaded = loader.run(&mut ctx, &inp).unwrap();
    let clip = loaded[1].clone();
    let mut inp = graph::NodeInputs::default();
    inp.inputs.insert("clip".into(), clip);
    let long = "a watercolor painting of a red fox in the snow, ".repeat(12);
    for (text, chunks) in [("a red fox", 1), (long.as_str(), 2)] {
        inp.params.insert("text".into(), graph::ParamValue::String(text.into()));
        let out = encode.run(&mut ctx, &inp).unwrap();
        let cond = out[0].downcast::<nodes::payload::Conditioning>().unwrap();
        assert_eq!(cond.entries[0].cond.shape(), &[1, 77 * chunks, 32], "{text}");
        let v = gpu.download(&cond.entries[0].cond).unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn loading_a_diffusers_folder_and_a_missing_file_through_the_graph() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sd-load");
    let missing = dir.join("nope.safetensors");
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {missing:?} }}),
            "empty": (kind: "EmptyLatentImage", params: {{ "width": 64, "height": 32 }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "empty.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}),
        }})"#
    );
    let r = run_graph(&text, &dir);
    assert!(!r.ok);
    assert_eq!(r.ids_with(NodeStatus::Failed), ["ckpt"]);
    assert!(r.errors()[0].contains("nope.safetensors") && r.errors()[0].contains("cannot open"), "{:?}", r.errors());
    // The diffusers folder has no sdgraph metadata: its UNet/VAE group count
    // (4) must come from somewhere, so loading it with SD defaults fails clearly.
    let folder = fixture("diffusers");
    let text = text.replace(&format!("{missing:?}"), &format!("{folder:?}"));
    let r = run_graph(&text, &dir);
    assert!(!r.ok);
    assert!(r.errors()[0].contains("group"), "{:?}", r.errors());
}

fn txt2img_graph(ckpt: &Path, sampler: &str, scheduler: &str, denoise: f64, latent_from: &str) -> String {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a red fox" }}),
            "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
            "empty": (kind: "EmptyLatentImage", params: {{ "width": 64, "height": 48, "batch_size": 2 }}),
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "small": (kind: "ImageScale", inputs: {{ "image": "load.image" }}, params: {{ "width": 32, "height": 24, "upscale_method": "area" }}),
            "enc": (kind: "VAEEncode", inputs: {{ "pixels": "small.image", "vae": "ckpt.vae" }}),
            "sample": (kind: "KSampler",
                inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning", "negative": "neg.conditioning", "latent_image": {latent_from:?} }},
                params: {{ "seed": 42, "steps": 3, "cfg": 5.0, "sampler_name": {sampler:?}, "scheduler": {scheduler:?}, "denoise": {denoise:?} }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "gen" }}),
        }})"#
    )
}

#[test]
fn txt2img_graph_runs_every_sampler_and_is_reproducible() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    use models::sampling::{samplers::Sampler, schedulers::Scheduler};
    let dir = crate::common::temp_dir("sd-txt2img");
    let ckpt = full_vocab_checkpoint(&dir);
    let mut first: Option<image::RgbImage> = None;
    // One executor for the sweep, so the checkpoint loads and the prompts encode once; the
    // reproducibility run below starts afresh.
    let reg = nodes::builtin_registry();
    let mut exec = Executor::default();
    for (i, sampler) in Sampler::NAMES.iter().enumerate() {
        let scheduler = Scheduler::NAMES[i % Scheduler::NAMES.len()];
        let out = dir.join(sampler);
        let text = txt2img_graph(&ckpt, sampler, scheduler, 1.0, "empty.latent");
        let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
        let r = crate::common::run(&mut exec, &g, &out);
        assert_eq!(r.ids_with(NodeStatus::Cached).contains(&"ckpt"), i > 0, "{sampler}");
        assert!(r.ok, "{sampler}/{scheduler}: {:?}", r.errors());
        // The tiny VAE upsamples by 2: a 64x48 request gives 32x24 latents... and 64x48 pictures.
        let a = image::open(out.join("gen_00001.png")).unwrap().to_rgb8();
        let b = image::open(out.join("gen_00002.png")).unwrap().to_rgb8();
        assert_eq!(a.dimensions(), (16, 12), "{sampler}");
        assert_ne!(a, b, "{sampler}: the two batch items got the same noise");
        if i == 0 {
            first = Some(a);
        }
    }
    // Same seed, same graph: the same picture.
    let out = dir.join("again");
    let r = run_graph(&txt2img_graph(&ckpt, Sampler::NAMES[0], Scheduler::NAMES[0], 1.0, "empty.latent"), &out);
    assert!(r.ok, "{:?}", r.errors());
    assert_eq!(image::open(out.join("gen_00001.png")).unwrap().to_rgb8(), first.unwrap());
}

#[test]
fn img2img_with_denoise_zero_returns_the_encoded_picture() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sd-img2img");
    let ckpt = full_vocab_checkpoint(&dir);
    let zero = dir.join("zero");
    let r = run_graph(&txt2img_graph(&ckpt, "euler", "normal", 0.0, "enc.latent"), &zero);
    assert!(r.ok, "{:?}", r.errors());
    // denoise 0 passes the latent through: the output is the VAE round trip of the input.
    let text = txt2img_graph(&ckpt, "euler", "normal", 0.0, "enc.latent")
        .replace(r#""samples": "sample.latent""#, r#""samples": "enc.latent""#);
    let direct = dir.join("direct");
    let r = run_graph(&text, &direct);
    assert!(r.ok, "{:?}", r.errors());
    let a = image::open(zero.join("gen_00001.png")).unwrap().to_rgb8();
    let b = image::open(direct.join("gen_00001.png")).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (32, 24));
    assert_eq!(a, b);
    // A partial denoise changes it, but keeps the size.
    let half = dir.join("half");
    let r = run_graph(&txt2img_graph(&ckpt, "dpmpp_2m", "karras", 0.5, "enc.latent"), &half);
    assert!(r.ok, "{:?}", r.errors());
    let c = image::open(half.join("gen_00001.png")).unwrap().to_rgb8();
    assert_eq!(c.dimensions(), (32, 24));
    assert_ne!(a, c);
}

/// ComfyUI takes seeds up to 2^64 - 1, and torch's CPU generator seeds its engine with the low 32 bits, so a seed and
/// the seed plus a multiple of 2^32 draw the same noise. At 2^64 - 1 the ancestral noise's `seed + 1` is 2^64, which
/// ComfyUI's `manual_seed` refuses; sdgraph wraps it to 0, the low 32 bits torch would use (documented in the README).
#[test]
fn seeds_take_the_full_u64_range_with_torchs_low_32_bit_noise() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sd-seeds");
    let ckpt = full_vocab_checkpoint(&dir);
    let graph = |seed: &str| {
        txt2img_graph(&ckpt, "euler_ancestral", "normal", 1.0, "empty.latent")
            .replace(r#""seed": 42"#, &format!(r#""seed": {seed}"#))
    };
    let reg = nodes::builtin_registry();
    let mut exec = Executor::default();
    let mut picture = |seed: &str| {
        let out = dir.join(seed);
        let g = crate::common::validate_str(&graph(seed), &reg).unwrap_or_else(|e| panic!("{e}"));
        let r = crate::common::run(&mut exec, &g, &out);
        assert!(r.ok, "seed {seed}: {:?}", r.errors());
        image::open(out.join("gen_00001.png")).unwrap().to_rgb8()
    };
    let max = picture("18446744073709551615"); // 2^64 - 1
    assert_eq!(max, picture("4294967295"), "2^64 - 1 and 2^32 - 1 share their low 32 bits");
    assert_eq!(picture("9223372036854788153"), picture("12345"), "2^63 + 12345 draws the noise of 12345");
    assert_ne!(max, picture("12345"));
    // Past the range: refused where it is written.
    // A literal past 2^64 - 1 is refused by the reader, at its line and column; -1 by the param's range, by name.
    for (seed, want) in
        [("18446744073709551616", "test.ron:11:35: malformed RON: integer literal too large"), ("-1", "seed")]
    {
        let err =
            crate::common::validate_str(&graph(seed), &reg).err().unwrap_or_else(|| panic!("seed {seed} accepted"));
        assert!(err.to_string().contains(want), "seed {seed}: {err}");
    }
}

/// PNG files under `dir`, recursively.
fn pngs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .flat_map(|e| if e.path().is_dir() { pngs(&e.path()) } else { vec![e.path()] })
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect()
}

#[test]
fn nan_weights_stop_the_run_naming_the_node_and_step_and_save_no_picture() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sd-nan");
    let poisoned = |file: &str, tensor: &'static str| {
        full_vocab_checkpoint_with(&dir, file, &move |name, data| {
            if name == tensor {
                data[0] = f32::NAN;
            }
        })
    };
    // NaN in the UNet's input convolution: the sampler stops at its first step.
    let ckpt = poisoned("unet_nan.safetensors", "model.diffusion_model.input_blocks.0.0.weight");
    let out = dir.join("unet");
    let r = run_graph(&txt2img_graph(&ckpt, "euler", "normal", 1.0, "empty.latent"), &out);
    let e = r.errors().join("\n");
    assert!(!r.ok && e.contains("node \"sample\"") && e.contains("step 1/3") && e.contains("NaN"), "{e}");
    assert!(e.contains("corrupt") && e.contains("SDGRAPH_DTYPE=f32"), "the likely causes: {e}");
    assert!(pngs(&out).is_empty(), "a picture was saved: {:?}", pngs(&out));
    // NaN in the VAE decoder's last convolution: the decode stops.
    let ckpt = poisoned("vae_nan.safetensors", "first_stage_model.decoder.conv_out.bias");
    let out = dir.join("vae");
    let r = run_graph(&txt2img_graph(&ckpt, "euler", "normal", 1.0, "empty.latent"), &out);
    let e = r.errors().join("\n");
    assert!(!r.ok && e.contains("node \"dec\"") && e.contains("the VAE decoder's output is NaN"), "{e}");
    assert!(pngs(&out).is_empty(), "a picture was saved: {:?}", pngs(&out));
}

/// The f16 VAE overflow that A1111's `--no-half-vae` works around cannot happen here: whatever the model's dtype,
/// the VAE loads and runs in f32 (diffusers' `force_upcast`), so no decode needs retrying in f32.
#[test]
fn the_vae_runs_in_f32_when_the_rest_of_the_model_is_f16() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        return;
    }
    let src = models::checkpoint::convert::open_checkpoint(&fixture("model.safetensors")).unwrap();
    let m = nodes::checkpoint_loader::load_checkpoint(gpu, &src, gpu::DType::F16, |_| {}).unwrap();
    assert_eq!((m.model.unet.dtype, m.vae.vae.dtype), (gpu::DType::F16, gpu::DType::F32));
}
