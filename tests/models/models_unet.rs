//! The SD 1.x UNet (`models::unet`) against the tiny fixture
//! (tests/fixtures/sd_tiny/unet, computed by diffusers in float64): every
//! intermediate of all four timestep cases within 1e-4 in f32, a stated bound
//! in f16; config detection; ControlNet residual hook; broken checkpoints
//! name the bad key.

use crate::cases::{Case as Fixture, Edited, broken_checkpoint_error};
use crate::common::sd_tiny::{Layout, fixtures, source};
use gpu::testing::shared_gpu;
use gpu::{DType, Gpu, Tensor};
use models::checkpoint::weights::WeightSource;
use models::unet::{Unet, UnetConfig};
use models::unet_blocks::AttentionHeads;

const PREFIX: &str = "model.diffusion_model.";
const CASES: usize = 4;
/// The fixture's tolerance (unet/meta.json `tolerance.max_abs`).
const F32_TOL: f32 = 1e-4;
/// f16 weights and activations (model_f16.safetensors): measured 4.2e-3 on
/// noise_pred (values up to ~2.1) on lavapipe, bounded here at about 2.5x that.
const F16_TOL_OUTPUT: f32 = 1e-2;
/// ... and up to 4.1e-2 on the intermediates (up_blocks.2, values up to ~11.5:
/// a few f16 ulps), bounded at about 1.5x.
const F16_TOL_INTERMEDIATE: f32 = 6e-2;

/// The detected config with what the file cannot tell taken from sd_tiny/meta.json.
fn fixture_config(src: &WeightSource) -> UnetConfig {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap()).unwrap();
    let unet = &meta["configs"]["unet"];
    let norms = &meta["norms"]["unet"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    let mut cfg = UnetConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    // diffusers' `attention_head_dim` is the head count in SD 1.x configs.
    cfg.heads = AttentionHeads::Count(unet["attention_head_dim"].as_u64().unwrap() as usize);
    cfg.norm.groups = unet["norm_num_groups"].as_u64().unwrap() as usize;
    cfg.norm.resnet_eps = f(&unet["norm_eps"]);
    cfg.norm.transformer_eps = f(&norms["mid_block.attentions.N.norm"]["eps"]);
    cfg.norm.layer_norm_eps = f(&norms["mid_block.attentions.N.transformer_blocks.N.norm1"]["eps"]);
    cfg
}

fn load(gpu: &Gpu, layout: Layout, dtype: DType) -> Unet {
    let src = source(layout);
    let cfg = fixture_config(&src);
    Unet::load(gpu, &src.prefix(PREFIX), &cfg, dtype).unwrap()
}

/// Case `case`'s timesteps.
fn timesteps(fx: &Fixture, case: usize) -> Vec<f32> {
    fx.inputs.f32_any(&format!("case{case}.timesteps")).unwrap().1
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs every case and returns the worst error per tensor name (without the
/// `caseN.` prefix), checking shapes on the way.
fn run_cases(gpu: &Gpu, unet: &Unet) -> Vec<(String, f32)> {
    let fx = Fixture::open("unet");
    let x = fx.input(gpu, "sample");
    let ctx = fx.input(gpu, "encoder_hidden_states");
    let mut worst: Vec<(String, f32)> = Vec::new();
    for case in 0..CASES {
        let (y, mut inter) = unet.forward_with_intermediates(gpu, &x, &timesteps(&fx, case), &ctx).unwrap();
        assert_eq!(y.dtype(), DType::F32, "output in the input's dtype");
        inter.push(("noise_pred".into(), y));
        let names: Vec<&str> = inter.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "time_proj",
                "time_embedding",
                "conv_in",
                "down_blocks.0",
                "down_blocks.1",
                "down_blocks.2",
                "mid_block",
                "up_blocks.0",
                "up_blocks.1",
                "up_blocks.2",
                "noise_pred"
            ]
        );
        for (name, t) in &inter {
            let (shape, want) = fx.expected.f32_any(&format!("case{case}.{name}")).unwrap();
            assert_eq!(t.shape(), shape.as_slice(), "case{case}.{name}");
            let err = max_abs_diff(&gpu.download(t).unwrap(), &want);
            match worst.iter_mut().find(|(n, _)| n == name) {
                Some((_, e)) => *e = e.max(err),
                None => worst.push((name.clone(), err)),
            }
        }
    }
    worst
}

fn report(what: &str, worst: &[(String, f32)]) {
    println!("{what}: max abs error over {CASES} cases");
    for (name, e) in worst {
        println!("  {name:16} {e:.3e}");
    }
}

#[test]
fn detects_config_from_weights() {
    let src = source(Layout::SingleFile);
    let cfg = UnetConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    assert_eq!(cfg.in_channels, 4);
    assert_eq!(cfg.out_channels, 4);
    assert_eq!(cfg.conv_in_kernel, 3);
    assert_eq!(cfg.model_channels, 8);
    assert_eq!(cfg.block_out_channels, [8, 16, 16]);
    assert_eq!(cfg.layers_per_block, 2);
    assert_eq!(cfg.transformer_depth, [1, 1, 0]);
    assert_eq!(cfg.mid_transformer_depth, 1);
    assert_eq!(cfg.context_dim, 32);
    assert_eq!(cfg.time_embed_dim, 32);
    assert_eq!(cfg.skip_count(), 9);
    // What the file cannot tell stays at SD 1.x's values.
    assert_eq!(cfg.heads, AttentionHeads::Count(8));
    assert_eq!(cfg.norm, UnetConfig::sd15().norm);
    // The f16 file and the diffusers folder describe the same network.
    assert_eq!(UnetConfig::detect_from_weights(&source(Layout::SingleFileF16).prefix(PREFIX)).unwrap(), cfg);
    assert_eq!(UnetConfig::detect_from_weights(&source(Layout::Diffusers).prefix(PREFIX)).unwrap(), cfg);
}

#[test]
fn f32_matches_reference() {
    let Some(gpu) = shared_gpu() else { return };
    for layout in [Layout::SingleFile, Layout::Diffusers] {
        let unet = load(gpu, layout, DType::F32);
        let worst = run_cases(gpu, &unet);
        report(&format!("f32, {layout:?}"), &worst);
        for (name, e) in &worst {
            assert!(*e <= F32_TOL, "{layout:?} {name}: max abs error {e} > {F32_TOL}");
        }
    }
}

#[test]
fn f16_close_to_reference() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = load(gpu, Layout::SingleFileF16, DType::F16);
    let worst = run_cases(gpu, &unet);
    report("f16 (model_f16.safetensors)", &worst);
    for (name, e) in &worst {
        let tol = if name == "noise_pred" { F16_TOL_OUTPUT } else { F16_TOL_INTERMEDIATE };
        assert!(*e <= tol, "f16 {name}: max abs error {e} > {tol}");
    }
}

/// One timestep for the whole batch is broadcast; per-item timesteps give
/// per-item results (case3 = [999, 1] mixes case2's item 0 and case0's item 1).
#[test]
fn timesteps_per_item_and_broadcast() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = load(gpu, Layout::SingleFile, DType::F32);
    let fx = Fixture::open("unet");
    let x = fx.input(gpu, "sample");
    let ctx = fx.input(gpu, "encoder_hidden_states");
    let one = gpu.download(&unet.forward(gpu, &x, &[500.0], &ctx).unwrap()).unwrap();
    let two = gpu.download(&unet.forward(gpu, &x, &[500.0, 500.0], &ctx).unwrap()).unwrap();
    assert_eq!(one, two);
    let err = unet.forward(gpu, &x, &[1.0, 2.0, 3.0], &ctx).unwrap_err().to_string();
    assert!(err.contains("3 timesteps for a batch of 2"), "{err}");
}

#[test]
fn controlnet_residuals() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = load(gpu, Layout::SingleFile, DType::F32);
    let fx = Fixture::open("unet");
    let x = fx.input(gpu, "sample");
    let ctx = fx.input(gpu, "encoder_hidden_states");
    let t = timesteps(&fx, 1);
    let plain = gpu.download(&unet.forward(gpu, &x, &t, &ctx).unwrap()).unwrap();

    // The skips' shapes: conv_in's and every input block's output.
    let (_, inter) = unet.forward_with_intermediates(gpu, &x, &t, &ctx).unwrap();
    let shape_of = |n: &str| inter.iter().find(|(m, _)| m == n).unwrap().1.shape().to_vec();
    let mut skip_shapes = vec![shape_of("conv_in")];
    for level in 0..3 {
        // Two ResBlocks at the level's width and resolution, then the downsampler (not after the last level).
        let full = if level == 0 { shape_of("conv_in") } else { shape_of(&format!("down_blocks.{}", level - 1)) };
        let down = shape_of(&format!("down_blocks.{level}"));
        let res = vec![full[0], down[1], full[2], full[3]];
        skip_shapes.extend([res.clone(), res]);
        if level < 2 {
            skip_shapes.push(down);
        }
    }
    assert_eq!(skip_shapes.len(), unet.config.skip_count());
    let mid_shape = shape_of("mid_block");
    let fill = |shape: &[usize], v: f32| gpu.upload(&vec![v; shape.iter().product()], shape, DType::F32).unwrap();
    let zeros: Vec<Tensor> = skip_shapes.iter().map(|s| fill(s, 0.0)).collect();
    let zero_mid = fill(&mid_shape, 0.0);

    let run = |down: Option<&[Tensor]>, mid: Option<&Tensor>| {
        gpu.download(&unet.forward_with_residuals(gpu, &x, &t, &ctx, down, mid).unwrap()).unwrap()
    };
    assert_eq!(run(None, None), plain);
    assert_eq!(run(Some(&zeros), Some(&zero_mid)), plain, "zero residuals change nothing");

    let mid = fill(&mid_shape, 0.5);
    assert!(max_abs_diff(&run(None, Some(&mid)), &plain) > 1e-3, "a mid residual changes the output");
    for i in [0, skip_shapes.len() - 1] {
        let mut down = zeros.clone();
        down[i] = fill(&skip_shapes[i], 0.5);
        assert!(max_abs_diff(&run(Some(&down), None), &plain) > 1e-3, "down residual {i} changes the output");
    }

    let err = unet.forward_with_residuals(gpu, &x, &t, &ctx, Some(&zeros[1..]), None).unwrap_err().to_string();
    assert!(err.contains("8 down residuals given, the UNet has 9"), "{err}");
    let mut bad = zeros.clone();
    bad[3] = fill(&mid_shape, 0.0);
    let err = unet.forward_with_residuals(gpu, &x, &t, &ctx, Some(&bad), None).unwrap_err().to_string();
    assert!(err.contains("down residual 3"), "{err}");
}

/// Latents whose size is not a multiple of 4 (2^(levels-1)) run: the
/// upsamplers meet the skips' sizes as diffusers' `upsample_size` does
/// (checked once against diffusers in float64 for 7x6, 5x9 and 3x3: within
/// 2e-6; the fixture has no such case, so this only checks shapes).
#[test]
fn odd_latent_sizes() {
    let Some(gpu) = shared_gpu() else { return };
    let unet = load(gpu, Layout::SingleFile, DType::F32);
    let fx = Fixture::open("unet");
    let ctx = fx.input(gpu, "encoder_hidden_states");
    for (h, w) in [(7, 6), (5, 9), (1, 1)] {
        let x = gpu.upload(&vec![0.3; 2 * 4 * h * w], &[2, 4, h, w], DType::F32).unwrap();
        let y = unet.forward(gpu, &x, &[10.0, 20.0], &ctx).unwrap();
        assert_eq!(y.shape(), [2, 4, h, w]);
        assert!(gpu.download(&y).unwrap().iter().all(|v| v.is_finite()));
    }
}

/// The error loading a copy of the fixture's UNet whose tensors went through `edit` (see
/// [`broken_checkpoint_error`]).
fn load_error(tag: &str, edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Edited) -> String {
    let gpu = shared_gpu().expect("checked by the caller");
    broken_checkpoint_error(PREFIX, &format!("unet_{tag}"), edit, |src| {
        Unet::load(gpu, &src.prefix(PREFIX), &fixture_config(src), DType::F32)
    })
}

#[test]
fn missing_key_is_named() {
    let Some(_) = shared_gpu() else { return };
    let key = "model.diffusion_model.output_blocks.5.2.conv.weight";
    let err = load_error("missing", |n, s, d| (n != key).then_some((s, d)));
    assert!(err.contains(key) && err.contains("missing"), "{err}");
}

#[test]
fn misshapen_tensor_is_named() {
    let Some(_) = shared_gpu() else { return };
    let key = "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight";
    let err = load_error("shape", |n, s, d| {
        if n == key {
            // [128, 16] -> [127, 16]: one GEGLU row short.
            assert_eq!(s, [128, 16]);
            Some((vec![127, 16], d[..127 * 16].to_vec()))
        } else {
            Some((s, d))
        }
    });
    assert!(err.contains(key) && err.contains("[127, 16]"), "{err}");
}

/// A sampling step as the samplers make it (upload the latent, run the UNet,
/// read the prediction back) creates no GPU buffer once warm: tensors come
/// from the pool, parameters and the upload from recycled arenas, the
/// readback from its own pool. And the results stay exact across steps.
#[test]
fn warm_steps_create_no_buffers() {
    if shared_gpu().is_none() {
        return;
    }
    // A context of its own: other tests' buffers must not count.
    let gpu = &Gpu::new(&gpu::GpuOptions::default()).unwrap();
    let unet = load(gpu, Layout::SingleFile, DType::F32);
    let fx = Fixture::open("unet");
    let (shape, latent) = fx.inputs.f32_any("sample").unwrap();
    let ctx = fx.input(gpu, "encoder_hidden_states");
    let step = |t: f32| {
        let x = gpu.upload(&latent, &shape, DType::F32).unwrap();
        gpu.download(&unet.forward(gpu, &x, &[t], &ctx).unwrap()).unwrap()
    };
    let first = step(500.0);
    step(400.0);
    let before = gpu.buffers_created();
    let dispatches = gpu.dispatch_count();
    for t in [300.0, 200.0, 100.0] {
        step(t);
    }
    assert!(gpu.dispatch_count() > dispatches, "the steps ran kernels");
    assert_eq!(gpu.buffers_created(), before, "a warm step created buffers");
    assert_eq!(step(500.0), first, "a reused buffer changed a result");
}
