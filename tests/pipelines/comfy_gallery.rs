//! ComfyUI's own SD 1.x template workflows (the `comfyui-workflow-templates` 0.1.95 gallery, fetched from PyPI
//! by tests/fixtures/comfy/fetch_templates.py, never committed) import as they are, and run end to end on
//! stand-in models of the right architecture put under the names they ask for: the demo model as every
//! checkpoint, its VAE as every standalone VAE, the demo ControlNet as every ControlNet, the demo upscaler as
//! every upscaler, a random-weight T2I-adapter of the demo model's widths as every T2I-adapter (ComfyUI loads
//! those through ControlNetLoader too), a random-weight GLIGEN of the demo model's shapes as every GLIGEN, a
//! demo picture as every input image. Pictures are made small (sizes scaled down, 2 steps).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use graph::comfy::{self, ImportOptions, MissingFiles, ModelRoots};
use graph::exec::{Executor, NoProgress, RunOptions};
use graph::{Graph, ParamValue, Registry, SetOverride};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};

use crate::common::temp_dir;

/// The workflows that run, and the scale their sizes are multiplied by (the area-composition ones keep their
/// areas at least 64 pixels, ConditioningSetArea's smallest).
const RUNNABLE: &[(&str, f64)] = &[
    ("default", 0.125),
    ("image2image", 0.125),
    ("hiresfix_latent_workflow", 0.125),
    ("hiresfix_esrgan_workflow", 0.125),
    ("esrgan_example", 0.125),
    ("controlnet_example", 0.125),
    ("mixing_controlnets", 0.125),
    ("2_pass_pose_worship", 0.0625),
    ("latent_upscale_different_prompt_model", 0.125),
    ("area_composition", 0.18),
    ("area_composition_square_area_for_subject", 0.25),
    ("depth_controlnet", 0.0625),
    ("depth_t2i_adapter", 0.0625),
    ("lora", 0.125),
    ("lora_multiple", 0.125),
    ("gligen_textbox_example", 0.125),
];

/// The gallery's other SD 1.x workflows, and the node kinds sdgraph still lacks for them.
const NOT_YET: &[(&str, &[&str])] = &[];

/// The template folder: `SDGRAPH_COMFY_TEMPLATES`, else what the fetch script puts in target/comfy-templates
/// (running it if the files are not there yet; it needs python3 and PyPI).
fn templates() -> PathBuf {
    if let Some(dir) = std::env::var_os("SDGRAPH_COMFY_TEMPLATES") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/fixtures/comfy/fetch_templates.py"))
        .output()
        .expect("python3 runs tests/fixtures/comfy/fetch_templates.py, which fetches ComfyUI's templates from PyPI");
    assert!(out.status.success(), "fetch_templates.py failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn import(name: &str, reg: &Registry, roots: ModelRoots, missing: MissingFiles) -> Result<comfy::Imported, String> {
    let file = templates().join(format!("{name}.json"));
    let bytes = std::fs::read(&file).unwrap();
    let opts = ImportOptions { roots, missing };
    comfy::import(&format!("{name}.json"), &bytes, reg, &opts)
        .map_err(|e| e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
}

fn no_roots() -> ModelRoots {
    ModelRoots { roots: Vec::new(), extra: Vec::new(), base_dir: PathBuf::from("/nonexistent") }
}

#[test]
fn every_sd1_gallery_workflow_imports_or_names_exactly_what_it_lacks() {
    let reg = nodes::builtin_registry();
    for (name, _) in RUNNABLE {
        let imported = import(name, &reg, no_roots(), MissingFiles::Warn).unwrap_or_else(|e| panic!("{name}: {e}"));
        graph::validate(imported.graph, &reg).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, lacking) in NOT_YET {
        let e = import(name, &reg, no_roots(), MissingFiles::Warn).err().unwrap_or_else(|| panic!("{name} imported"));
        for kind in *lacking {
            assert!(e.contains(&format!("sdgraph has no node kind {kind:?}")), "{name}: {e}");
        }
        let named = e.lines().filter(|l| l.contains("sdgraph has no node kind")).count();
        assert!(named >= lacking.len() && e.contains("nothing was run"), "{name}: {e}");
    }
}

/// A file for a (loader kind, param) the workflows name, from the demo assets.
fn stand_in(kind: &str, models: &Path) -> Option<(&'static str, PathBuf)> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    Some(match kind {
        "CheckpointLoaderSimple" => ("checkpoints", demo.join("sdgraph-demo.safetensors")),
        "VAELoader" => ("vae", models.join("demo-vae.safetensors")),
        "ControlNetLoader" => ("controlnet", demo.join("sdgraph-demo-controlnet-canny.safetensors")),
        "UpscaleModelLoader" => ("upscale_models", demo.join("sdgraph-demo-upscaler-x4.safetensors")),
        "LoadImage" => ("input", demo.join("green_square.png")),
        "LoraLoader" | "LoraLoaderModelOnly" => ("loras", models.join("demo-lora.safetensors")),
        // Random weights in GLIGEN's architecture for the demo model (assets/demo/make_demo_gligen.py).
        "GLIGENLoader" => ("gligen", demo.join("sdgraph-demo-gligen-random.safetensors")),
        _ => return None,
    })
}

/// The demo checkpoint's VAE alone (its `first_stage_model.` tensors, prefix removed, and the metadata its
/// architecture needs), as VAELoader reads vae-ft-mse-840000-ema-pruned.safetensors.
fn write_demo_vae(path: &Path) {
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/sdgraph-demo.safetensors");
    let st = SafeTensors::open(&ckpt).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .filter_map(|n| {
            let short = n.strip_prefix("first_stage_model.")?;
            let (shape, data) = st.f32_any(n).unwrap();
            Some((short.to_string(), shape, data))
        })
        .collect();
    assert!(!tensors.is_empty(), "the demo checkpoint has a first_stage_model");
    let t: Vec<(&str, &[usize], &[f32])> =
        tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    // What the demo VAE's architecture needs said (its GroupNorm groups, its latent scale).
    let meta: Vec<(&str, &str)> = ["sdgraph.norm_groups", "sdgraph.vae.scaling_factor"]
        .into_iter()
        .map(|k| (k, st.metadata()[k].as_str()))
        .collect();
    write_with_metadata(path, &t, Dtype::F32, &meta).unwrap();
}

/// A small random LoRA for the demo checkpoint, in the kohya-ss layout with LDM module names: rank 2 on
/// every UNet attention's `to_q` and `to_k`, the first 3x3 resnet conv, and the text encoder's first `q_proj`
/// and `mlp.fc1`, its shapes read from the checkpoint.
fn write_demo_lora(path: &Path) {
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/sdgraph-demo.safetensors");
    let st = SafeTensors::open(&ckpt).unwrap();
    let unet = "model.diffusion_model.";
    let clip = "cond_stage_model.transformer.text_model.encoder.layers.0.";
    let mut targets: Vec<(String, Vec<usize>)> = Vec::new();
    let mut conv = false;
    for n in st.names() {
        let shape = st.info(n).unwrap().shape.clone();
        let module = if let Some(m) = n.strip_prefix(unet).and_then(|m| m.strip_suffix(".weight")) {
            let attn = m.ends_with(".to_q") || m.ends_with(".to_k");
            let first_conv = !conv && m.ends_with("in_layers.2") && shape.len() == 4;
            conv |= first_conv;
            if !(attn || first_conv) {
                continue;
            }
            format!("lora_unet_{}", m.replace('.', "_"))
        } else if let Some(m) = n.strip_prefix(clip).and_then(|m| m.strip_suffix(".weight")) {
            match m {
                "self_attn.q_proj" => "lora_te_text_model_encoder_layers_0_self_attn_q_proj".to_string(),
                "mlp.fc1" => "lora_te_text_model_encoder_layers_0_mlp_fc1".to_string(),
                _ => continue,
            }
        } else {
            continue;
        };
        targets.push((module, shape));
    }
    assert!(conv && targets.len() > 4, "the demo checkpoint has attentions and convs: {targets:?}");
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (i, (module, shape)) in targets.iter().enumerate() {
        let rank = 2;
        let down: Vec<usize> = [rank].into_iter().chain(shape[1..].iter().copied()).collect();
        let up = if shape.len() == 4 { vec![shape[0], rank, 1, 1] } else { vec![shape[0], rank] };
        for (suffix, s) in [("lora_down.weight", down), ("lora_up.weight", up)] {
            let n = s.iter().product();
            owned.push((format!("{module}.{suffix}"), s, gpu::testing::random(n, 40 + i as u64, -0.1, 0.1)));
        }
        owned.push((format!("{module}.alpha"), vec![], vec![1.0]));
    }
    let t: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    write_with_metadata(path, &t, Dtype::F32, &[]).unwrap();
}

/// A random T2I-adapter for the demo UNet (levels of 32 and 64 channels): ComfyUI's full `Adapter` layout with
/// 2 ResBlocks per level and 1x1 kernels, as TencentARC's depth adapter, its weights uniform in +-0.02. Nothing
/// trained: it only has to load, run and reach the UNet (the test below measures that it moves the picture).
fn write_demo_t2i_adapter(path: &Path) {
    let mut shapes: Vec<(String, Vec<usize>)> = vec![("conv_in".into(), vec![32, 3 * 64, 3, 3])];
    for (i, (cin, c)) in [(32, 32), (32, 32), (32, 64), (64, 64)].into_iter().enumerate() {
        if cin != c {
            shapes.push((format!("body.{i}.in_conv"), vec![c, cin, 1, 1]));
        }
        shapes.push((format!("body.{i}.block1"), vec![c, c, 3, 3]));
        shapes.push((format!("body.{i}.block2"), vec![c, c, 1, 1]));
    }
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (i, (name, s)) in shapes.into_iter().enumerate() {
        let n = s.iter().product();
        let bias = vec![s[0]];
        owned.push((format!("{name}.weight"), s, gpu::testing::random(n, 70 + i as u64, -0.02, 0.02)));
        owned.push((format!("{name}.bias"), bias.clone(), gpu::testing::random(bias[0], 90 + i as u64, -0.02, 0.02)));
    }
    let t: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    write_with_metadata(path, &t, Dtype::F32, &[("sdgraph.t2i.nums_rb", "2")]).unwrap();
}

/// Puts a stand-in under every file name `g` (imported without a models folder) asks for.
fn furnish(g: &Graph, models: &Path) {
    for n in &g.nodes {
        let Some((folder, src)) = stand_in(&n.kind.value, models) else { continue };
        for (param, v) in &n.params {
            let ParamValue::String(name) = &v.value else { continue };
            if comfy::models::folder_of(&n.kind.value, &param.value).is_none() {
                continue;
            }
            // A T2I-adapter is asked for through ControlNetLoader, by a name that says so.
            let t2i = n.kind.value == "ControlNetLoader" && name.to_lowercase().contains("t2iadapter");
            let src = if t2i { models.join("demo-t2i-adapter.safetensors") } else { src.clone() };
            let dest = models.join(folder).join(name.split(['/', '\\']).collect::<PathBuf>());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            if !dest.exists() {
                std::fs::copy(&src, &dest).unwrap();
            }
        }
    }
}

/// The graph made small: picture sizes and area offsets times `scale` (second-pass sizes times at most 1/8;
/// sizes a multiple of 8, at least 64), 2 sampling steps, img2img inputs scaled to about 0.01 megapixels.
fn shrink(g: &mut Graph, scale: f64) {
    let mut sets = Vec::new();
    for n in &g.nodes {
        let id = &n.id.value;
        // Second passes at an eighth of their size whatever the first pass's scale.
        let s = if matches!(n.kind.value.as_str(), "LatentUpscale" | "ImageScale") { scale.min(0.125) } else { scale };
        let scaled: &[&str] = match n.kind.value.as_str() {
            "EmptyLatentImage" | "LatentUpscale" | "ImageScale" => &["width", "height"],
            "ConditioningSetArea" | "GLIGENTextBoxApply" => &["width", "height", "x", "y"],
            "KSampler" => {
                sets.push(format!("{id}.steps=2"));
                &[]
            }
            "ImageScaleToTotalPixels" => {
                sets.push(format!("{id}.megapixels=0.01"));
                &[]
            }
            _ => &[],
        };
        for p in scaled {
            let Some(v) = n.param(p).and_then(|v| v.value.as_int()) else { continue };
            let v = (v as f64 * s / 8.0).round() as i128 * 8;
            // Areas at least 64 pixels (ConditioningSetArea's smallest), GLIGEN boxes at least 8 (its smallest).
            let least = if n.kind.value == "GLIGENTextBoxApply" { 8 } else { 64 };
            let v = if matches!(*p, "x" | "y") { v } else { v.max(least) };
            sets.push(format!("{id}.{p}={v}"));
        }
    }
    let overrides: Vec<SetOverride> = sets.iter().map(|s| SetOverride::parse(s).unwrap()).collect();
    g.apply_overrides(&overrides).unwrap();
}

#[test]
fn gallery_workflows_run_end_to_end_on_stand_in_models() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let reg = nodes::builtin_registry();
    let dir = temp_dir("comfy-gallery");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    write_demo_vae(&models.join("demo-vae.safetensors"));
    write_demo_lora(&models.join("demo-lora.safetensors"));
    write_demo_t2i_adapter(&models.join("demo-t2i-adapter.safetensors"));
    let mut exec = Executor::default();
    for (name, scale) in RUNNABLE {
        let plain = import(name, &reg, no_roots(), MissingFiles::Warn).unwrap();
        furnish(&plain.graph, &models);
        let roots = ModelRoots { roots: vec![models.clone()], extra: Vec::new(), base_dir: dir.to_path_buf() };
        let mut imported = import(name, &reg, roots, MissingFiles::Refuse).unwrap_or_else(|e| panic!("{name}: {e}"));
        shrink(&mut imported.graph, *scale);
        let g = graph::validate(imported.graph, &reg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = dir.join("out").join(name);
        let opts = RunOptions {
            base_dir: dir.to_path_buf(),
            out_dir: out.clone(),
            graph_text: imported.ron,
            progress: &NoProgress,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let t = std::time::Instant::now();
        let r = exec.run(&g, &opts);
        eprintln!("{name}: {:.1} s", t.elapsed().as_secs_f64());
        assert!(r.ok, "{name}: {:?}", r.errors());
        let saves = g.nodes.iter().filter(|n| n.kind.schema().kind == "SaveImage").count();
        let saved: Vec<&PathBuf> = r.nodes.iter().filter(|n| n.kind == "SaveImage").flat_map(|n| &n.outputs).collect();
        assert_eq!(saved.len(), saves, "{name}: one picture per SaveImage");
        for p in saved {
            let img = image::open(p).unwrap_or_else(|e| panic!("{name}: {}: {e}", p.display())).to_rgb8();
            let (min, max) = img.pixels().flat_map(|p| p.0).fold((255u8, 0u8), |(lo, hi), v| (lo.min(v), hi.max(v)));
            assert!(max > min + 20, "{name}: {} is flat ({min}..{max})", p.display());
        }
    }
}

/// The gallery's T2I-adapter workflow, made small as the test above makes it, with its ControlNetApplyAdvanced at
/// `strength`: its picture's RGB bytes.
fn run_depth_t2i_adapter(dir: &Path, strength: f64) -> Vec<u8> {
    let reg = nodes::builtin_registry();
    let name = "depth_t2i_adapter";
    let models = dir.join("models");
    let plain = import(name, &reg, no_roots(), MissingFiles::Warn).unwrap();
    furnish(&plain.graph, &models);
    let roots = ModelRoots { roots: vec![models.clone()], extra: Vec::new(), base_dir: dir.to_path_buf() };
    let mut imported = import(name, &reg, roots, MissingFiles::Refuse).unwrap_or_else(|e| panic!("{e}"));
    shrink(&mut imported.graph, 0.0625);
    let apply = imported.graph.nodes.iter().find(|n| n.kind.value == "ControlNetApplyAdvanced").unwrap();
    let set = SetOverride::parse(&format!("{}.strength={strength}", apply.id.value)).unwrap();
    imported.graph.apply_overrides(&[set]).unwrap();
    let g = graph::validate(imported.graph, &reg).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join(format!("out-{strength}"));
    let opts = RunOptions {
        base_dir: dir.to_path_buf(),
        out_dir: out,
        graph_text: imported.ron,
        progress: &NoProgress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let r = Executor::default().run(&g, &opts);
    assert!(r.ok, "strength {strength}: {:?}", r.errors());
    let saved: Vec<&PathBuf> = r.nodes.iter().filter(|n| n.kind == "SaveImage").flat_map(|n| &n.outputs).collect();
    image::open(saved[0]).unwrap().to_rgb8().into_raw()
}

#[test]
fn the_gallery_t2i_adapter_workflow_is_steered_by_its_adapter() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = temp_dir("comfy-gallery-t2i");
    std::fs::create_dir_all(dir.join("models")).unwrap();
    write_demo_t2i_adapter(&dir.join("models/demo-t2i-adapter.safetensors"));
    // Strength 0 is ComfyUI's "conditionings unchanged"; 1 adds the (random, small) adapter's features.
    let (with, without) = (run_depth_t2i_adapter(&dir, 1.0), run_depth_t2i_adapter(&dir, 0.0));
    let diff = with.iter().zip(&without).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / with.len() as f64;
    eprintln!("depth_t2i_adapter: the adapter moves the picture by {diff:.2} levels on average");
    assert!(diff > 0.5, "the T2I-adapter does not change the picture ({diff:.3} levels)");
}
