//! SD 2.x's UNet and ComfyUI's ModelSamplingDiscrete against tests/fixtures/sd2_unet (make_sd2_unet_fixture.py:
//! diffusers' UNet2DConditionModel shaped as SD 2.x's, tiny, run in float64; ComfyUI's model sampling ported).
//!
//! Checked: the single file's config is detected (levels, depths, context width, and the linear proj_in/proj_out
//! loaded as the same matrices as 1x1 convs) and, with heads by channel count (`AttentionHeads::Dim`, ComfyUI's
//! num_head_channels: 2, 2, 4, 4 heads here), the UNet call matches diffusers within 1e-4; ComfyUI's SD20.model_type
//! probe calls the fixture v-prediction and its eps variant eps; the noise tables of eps, eps + zsnr, lcm and lcm +
//! zsnr are ComfyUI's float32 buffers, with LCM's strided timesteps and every table's percent_to_sigma; and euler
//! KSampler runs with this UNet under v_prediction (plain and zsnr), eps, lcm, x0 and img_to_img agree with ComfyUI's
//! maths in float64 within `TOL * max(1, max |want|)` (eps finals reach ~100 on this random net).

use std::sync::OnceLock;

use gpu::testing::shared_gpu;
use gpu::{DType, Gpu};
use models::checkpoint::weights::WeightSource;
use models::model_detection::{SD2_V_PROBE, sd2_prediction};
use models::sampling::samplers::{
    CfgDenoiser, Job, ModelSampling, NetOutput, NoHooks, NoisePredictor, NoiseSource, Prediction, Sampler,
    initial_latent, max_denoise, sample,
};
use models::sampling::schedulers::Scheduler;
use models::unet::{Unet, UnetConfig};
use models::unet_blocks::AttentionHeads;

use crate::ksampler_fixture::{Fixture, dir};

const PREFIX: &str = "model.diffusion_model.";
/// meta.json's tolerance: absolute for the UNet call, relative to max(1, max |want|) for the sampled latents.
/// Measured on lavapipe: printed by the tests (`-- --nocapture`), see the commit.
const TOL: f64 = 1e-4;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::open("sd2_unet"))
}

fn source() -> WeightSource {
    WeightSource::single_file(&dir().join("sd2_unet/model.safetensors")).unwrap()
}

/// The detected config, with what the file cannot say from meta.json: head width and group count.
fn config(src: &WeightSource) -> UnetConfig {
    let meta = &fixture().meta;
    let mut cfg = UnetConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    cfg.heads = AttentionHeads::Dim(meta["head_width"].as_u64().unwrap() as usize);
    cfg.norm.groups = meta["unet_config"]["norm_num_groups"].as_u64().unwrap() as usize;
    cfg
}

fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs()).fold(0.0, f64::max)
}

/// One UNet call on the fixture's `unet.x`, `unet.t`, `unet.context`.
fn call(gpu: &Gpu, unet: &Unet) -> Vec<f32> {
    let fx = fixture();
    let (xs, x) = fx.tensor("unet.x");
    let (_, t) = fx.tensor("unet.t");
    let (cs, c) = fx.tensor("unet.context");
    let x = gpu.upload(&x, &xs, DType::F32).unwrap();
    let c = gpu.upload(&c, &cs, DType::F32).unwrap();
    gpu.download(&unet.forward(gpu, &x, &t, &c).unwrap()).unwrap()
}

#[test]
fn sd2_unet_config_is_detected_from_the_single_file() {
    let src = source();
    let cfg = UnetConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    assert_eq!(cfg.block_out_channels, [8, 8, 16, 16]);
    assert_eq!(cfg.transformer_depth, [1, 1, 1, 0]);
    assert_eq!(cfg.mid_transformer_depth, 1);
    assert_eq!(cfg.context_dim, 24);
    assert_eq!(cfg.layers_per_block, 2);
    // SD 2.x's proj_in is a linear: [C, C], not a [C, C, 1, 1] conv.
    assert_eq!(src.prefix(PREFIX).shape("input_blocks.1.1.proj_in.weight").unwrap(), [8, 8]);
    // Heads by channel count: 64-channel heads, as ComfyUI's num_head_channels, give 5, 10, 20, 20 at SD 2.x's widths.
    let heads: Vec<usize> = [320, 640, 1280, 1280].iter().map(|&c| AttentionHeads::Dim(64).heads(c).unwrap()).collect();
    assert_eq!(heads, [5, 10, 20, 20]);
}

#[test]
fn sd2_unet_matches_diffusers_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    let src = source();
    let unet = Unet::load(gpu, &src.prefix(PREFIX), &config(&src), DType::F32).unwrap();
    let (_, want) = fixture().tensor("unet.out");
    let err = max_abs(&call(gpu, &unet), &want);
    println!("sd2 unet call: max abs err {err:.2e} (values up to {:.2})", max_abs(&want, &vec![0.0; want.len()]));
    assert!(err <= TOL, "UNet call off by {err:.2e}");
    // The same weights with one head count everywhere (SD 1.x's way) do not give diffusers' output.
    let mut fixed = config(&src);
    fixed.heads = AttentionHeads::Count(2);
    let wrong = Unet::load(gpu, &src.prefix(PREFIX), &fixed, DType::F32).unwrap();
    let moved = max_abs(&call(gpu, &wrong), &want);
    assert!(moved > 100.0 * TOL, "2 heads at every level moved the output by only {moved:.2e}");
}

#[test]
fn sd2_prediction_is_probed_as_comfyui_does() {
    let src = source();
    let w = src.prefix(PREFIX);
    assert_eq!(sd2_prediction(&w, 4).unwrap(), Prediction::V, "norm1.bias std 0.22 > 0.09");
    // Inpainting UNets are eps whatever the weight.
    assert_eq!(sd2_prediction(&w, 9).unwrap(), Prediction::Epsilon);
    let (_, eps_bias) = fixture().tensor("eps_norm1_bias");
    let eps = src.with_overlay([(format!("{PREFIX}{SD2_V_PROBE}"), eps_bias)]);
    assert_eq!(sd2_prediction(&eps.prefix(PREFIX), 4).unwrap(), Prediction::Epsilon, "std 0.05");
    // No probe weight (fewer than 12 output blocks): eps, as ComfyUI's state_dict.get.
    let sd1 = WeightSource::single_file(&dir().join("sd_tiny/model.safetensors")).unwrap();
    assert_eq!(sd2_prediction(&sd1.prefix(PREFIX), 4).unwrap(), Prediction::Epsilon);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn model_sampling_tables_are_comfyuis() {
    let fx = fixture();
    let (_, percents) = fx.tensor("percents");
    for (name, prediction, zsnr) in [
        ("eps", Prediction::Epsilon, false),
        ("eps_zsnr", Prediction::V, true),
        ("lcm", Prediction::Lcm, false),
        ("lcm_zsnr", Prediction::Lcm, true),
    ] {
        let ms = ModelSampling { prediction, zsnr }.sigmas();
        let (_, want) = fx.tensor(&format!("sigmas.{name}"));
        let max_rel =
            ms.sigmas().iter().zip(&want).map(|(&g, &w)| (f64::from(g) / f64::from(w) - 1.0).abs()).fold(0.0, f64::max);
        println!("{name}: {} sigmas, max relative difference {max_rel:.1e}", want.len());
        assert_eq!(ms.len(), want.len(), "{name}");
        // The float64 maths rounded once to f32, as ComfyUI's buffers: equal, or an ulp off where torch's f64 pow
        // and sqrt round differently.
        assert!(max_rel <= 2.0 * f64::from(f32::EPSILON), "{name}: {max_rel:e}");
        let (_, want_p) = fx.tensor(&format!("{name}.percent_to_sigma"));
        for (&p, &w) in percents.iter().zip(&want_p) {
            let got = ms.percent_to_sigma(f64::from(p)) as f32;
            let ok = if w > 1e8 { got > 1e8 } else { (f64::from(got) / f64::from(w) - 1.0).abs() <= 1e-6 || got == w };
            assert!(ok, "{name}: percent_to_sigma({p}) = {got}, ComfyUI {w}");
        }
    }
    // zsnr ends at about 4518.8 (alphas_cumprod 4.9e-8) instead of 14.6; LCM's 50 entries are every 20th.
    let z = ModelSampling { prediction: Prediction::Epsilon, zsnr: true }.sigmas();
    assert!((z.sigma_max() - 4518.8).abs() < 1.0, "{}", z.sigma_max());
    let lcm = ModelSampling { prediction: Prediction::Lcm, zsnr: false }.sigmas();
    assert_eq!(lcm.stride(), 20);
    let (_, probes) = fx.tensor("lcm.probe_sigmas");
    let (_, want_t) = fx.tensor("lcm.timesteps");
    let got_t: Vec<f32> = probes.iter().map(|&s| lcm.timestep(f64::from(s)) as f32).collect();
    assert_eq!(bits(&got_t), bits(&want_t), "{got_t:?} vs {want_t:?}");
}

/// The UNet with the fixture's two prompts bound (positive `unet.context[0]`, negative `[1]`), one call each.
struct Bound<'a> {
    gpu: &'a Gpu,
    unet: &'a Unet,
    shape: [usize; 4],
    pos: gpu::Tensor,
    neg: gpu::Tensor,
}

impl Bound<'_> {
    fn run(&self, x: &[f32], t: f64, ctx: &gpu::Tensor) -> Vec<f32> {
        let xt = self.gpu.upload(x, &self.shape, DType::F32).unwrap();
        self.gpu.download(&self.unet.forward(self.gpu, &xt, &[t as f32], ctx).unwrap()).unwrap()
    }
}

impl NoisePredictor for Bound<'_> {
    type Error = String;

    fn predict(&mut self, x_in: &[f32], t: f64, _sigma: f64, with_uncond: bool) -> Result<NetOutput, String> {
        let cond = self.run(x_in, t, &self.pos);
        let uncond = with_uncond.then(|| self.run(x_in, t, &self.neg));
        Ok(NetOutput::whole(cond, uncond))
    }
}

struct NoNoise;

impl NoiseSource for NoNoise {
    fn fill_noise(&mut self, _: f64, _: f64, _: &mut [f32]) {
        panic!("euler draws no noise");
    }
}

#[test]
fn sampling_types_sample_as_comfyui_with_the_sd2_unet() {
    let Some(gpu) = shared_gpu() else { return };
    let fx = fixture();
    let src = source();
    let unet = Unet::load(gpu, &src.prefix(PREFIX), &config(&src), DType::F32).unwrap();
    let (cs, c) = fx.tensor("unet.context");
    let n = cs[1] * cs[2];
    let ctx = |i: usize| gpu.upload(&c[i * n..(i + 1) * n], &[1, cs[1], cs[2]], DType::F32).unwrap();
    let mut failures = Vec::new();
    let cases = fx.meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let prediction = Prediction::from_name(case["sampling"].as_str().unwrap()).unwrap();
        let ms = ModelSampling { prediction, zsnr: case["zsnr"].as_bool().unwrap() }.sigmas();
        let scheduler = Scheduler::from_name(case["scheduler"].as_str().unwrap()).unwrap();
        let sigmas = scheduler.sigmas(&ms, case["steps"].as_u64().unwrap() as usize).unwrap();
        let (_, want_sigmas) = fx.tensor(&format!("{name}.sigmas"));
        let got_sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        assert_eq!(bits(&got_sigmas), bits(&want_sigmas), "{name}: sigmas {got_sigmas:?} vs {want_sigmas:?}");
        let (ns, noise) = fx.tensor(&format!("{name}.noise"));
        let shape = [ns[0], ns[1], ns[2], ns[3]];
        let x = initial_latent(&noise, &vec![0.0; noise.len()], sigmas[0], max_denoise(&ms, sigmas[0]));
        let bound = Bound { gpu, unet: &unet, shape, pos: ctx(0), neg: ctx(1) };
        let mut denoiser = CfgDenoiser::new(bound, ms, prediction, case["cfg"].as_f64().unwrap());
        let job = Job { denoiser: &mut denoiser, sigmas: &sigmas, hooks: &mut NoHooks };
        let got = sample(Sampler::from_name("euler").unwrap(), job, x, &mut NoNoise).unwrap();
        let (_, want) = fx.tensor(&format!("{name}.final"));
        let err = max_abs(&got, &want);
        let scale = want.iter().map(|&w| f64::from(w).abs()).fold(1.0, f64::max);
        let moved = case["moved_from_eps"].as_f64().unwrap();
        println!("{name:18} final: max abs err {err:.2e} (bound {:.1e}; read as eps it moves {moved:.2})", TOL * scale);
        if err > TOL * scale {
            failures.push(format!("{name}: off by {err:.2e} (bound {:.2e})", TOL * scale));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SD 2.1 needs ComfyUI's attention upcast (`attn_precision` f32) because its f16 `q k^T` overflows: raw scores pass
/// f16's 65504 before the 1/sqrt(64) scale. sdgraph's attention kernels (attention.wgsl, and attention_coop.wgsl on
/// tensor cores) keep f16 storage but compute the scores, the softmax and the `P V` sums in f32, so they need no
/// upcast switch: with f16 q, k, v of an SD 2.x-like head (64 channels, values ~40, raw scores ~1e5) the output is
/// finite and matches the f64 reference of the same f16-rounded inputs.
#[test]
fn f16_attention_does_not_overflow_where_sd21_needs_the_upcast() {
    let Some(gpu) = shared_gpu() else { return };
    use gpu::ops::attention::{AttentionOptions, attention};
    use gpu::reference::attention::{AttentionShape, attention as reference};
    let (b, lq, lk, heads, d) = (1, 40, 24, 2, 64);
    let n = |l: usize| b * l * heads * d;
    // Deterministic values around 40 (row and channel dependent), so scores differ by O(1) after scaling.
    let wave = |l: usize, seed: f32| -> Vec<f32> {
        (0..n(l)).map(|i| 40.0 + 2.0 * ((i as f32 * 0.37 + seed).sin() + (i as f32 * 0.011 * seed).cos())).collect()
    };
    let up = |v: &[f32], l: usize| gpu.upload(v, &[b, l, heads * d], DType::F16).unwrap();
    let (q, k, v) = (up(&wave(lq, 1.0), lq), up(&wave(lk, 2.0), lk), up(&wave(lk, 3.0), lk));
    // The f16-rounded inputs, as the kernel sees them.
    let (qf, kf, vf) = (gpu.download(&q).unwrap(), gpu.download(&k).unwrap(), gpu.download(&v).unwrap());
    let raw_max = (0..lq)
        .flat_map(|i| (0..lk).map(move |j| (i, j)))
        .map(|(i, j)| (0..d).map(|c| qf[i * heads * d + c] * kf[j * heads * d + c]).sum::<f32>())
        .fold(0.0f32, f32::max);
    assert!(raw_max > 65504.0, "raw q k^T reaches {raw_max}: a naive f16 product would be inf");
    let out = gpu.download(&attention(gpu, &q, &k, &v, AttentionOptions::new(heads)).unwrap()).unwrap();
    let shape = AttentionShape { batch: b, lq, lk, heads, head_dim: d, causal: false, scale: 1.0 / (d as f64).sqrt() };
    let want = reference(&qf, &kf, &vf, shape);
    let err = out.iter().zip(&want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
    println!("f16 attention with raw scores up to {raw_max:.0}: max abs err {err:.2e} on values ~40");
    assert!(out.iter().all(|x| x.is_finite()), "non-finite output");
    // The f16 output's rounding (ulp 0.03 at 32..64) plus the f32 scores' (~6e-8 * 1e5 in the exponent).
    assert!(err < 0.05, "off by {err}");
}

/// Full width: a random SD 2.1 UNet (stabilityai/stable-diffusion-2-1's config: 320..1280 channels, 5, 10, 20, 20
/// heads of 64, linear projections, context 1024) made by tests/fixtures/sd2_unet/make_sd21_full_width.py (1.7 GB,
/// not committed), loaded with nothing but what detection finds, against diffusers in float64 at an 8x8 latent.
/// `SD21_WIDE_FIXTURE=/tmp/sd21 cargo test -p sdgraph --test models full_width_sd21 -- --ignored --nocapture`.
#[test]
#[ignore = "needs the 1.7 GB fixture made by make_sd21_full_width.py (SD21_WIDE_FIXTURE)"]
fn full_width_sd21_unet_from_env() {
    let Some(gpu) = shared_gpu() else { return };
    let dir = std::path::PathBuf::from(std::env::var("SD21_WIDE_FIXTURE").expect("SD21_WIDE_FIXTURE"));
    let src = WeightSource::single_file(&dir.join("model.safetensors")).unwrap();
    let reference = models::checkpoint::safetensors::SafeTensors::open(&dir.join("reference.safetensors")).unwrap();
    let t = |n: &str| reference.f32_any(n).unwrap();
    let cfg = UnetConfig::detect_from_weights(&src.prefix(PREFIX)).unwrap();
    assert_eq!(cfg.heads, AttentionHeads::Dim(64), "SD 2.x: heads of 64 channels");
    assert_eq!((cfg.context_dim, cfg.norm.groups), (1024, 32));
    assert_eq!(sd2_prediction(&src.prefix(PREFIX), 4).unwrap(), Prediction::V, "norm biases drawn with std 0.2");
    let ((xs, x), (_, ts), (cs, c), (_, want)) = (t("x"), t("t"), t("context"), t("out"));
    for (dtype, check) in [(DType::F32, "1 - cos < 1e-6"), (DType::F16, "cos >= 0.9999")] {
        let start = std::time::Instant::now();
        let unet = Unet::load(gpu, &src.prefix(PREFIX), &cfg, dtype).unwrap();
        let loaded = start.elapsed().as_secs_f64();
        let (xg, cg) = (gpu.upload(&x, &xs, dtype).unwrap(), gpu.upload(&c, &cs, dtype).unwrap());
        let y = unet.forward(gpu, &xg, &ts, &cg).unwrap();
        let got = gpu.download(&y).unwrap();
        let dot: f64 = got.iter().zip(&want).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let norm = |v: &[f32]| v.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>().sqrt();
        let cos = dot / (norm(&got) * norm(&want));
        let err = max_abs(&got, &want);
        println!(
            "full-width SD 2.1 UNet {dtype:?}: 1 - cos {:.2e}, max abs err {err:.2e} (values up to {:.2}); load {loaded:.1} s, \
             call {:.1} s",
            1.0 - cos,
            max_abs(&want, &vec![0.0; want.len()]),
            start.elapsed().as_secs_f64() - loaded
        );
        match dtype {
            DType::F32 => assert!(1.0 - cos < 1e-6, "{check}: {}", 1.0 - cos),
            _ => assert!(cos >= 0.9999, "{check}: {cos}"),
        }
    }
}
