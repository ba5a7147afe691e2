//! The whole sampling pipeline on the real (tiny) UNet against PyTorch: ComfyUI's KSampler math run in float64 by
//! tests/fixtures/sampling_unet/make_sampling_unet_fixture.py (diffusers' UNet2DConditionModel, k-diffusion
//! 0.1.1.post1's samplers, ComfyUI's schedules, noise, timesteps and CFG) against the public pieces
//! `nodes::ksampler` is built from (`ksampler_sigmas`, `prepare_noise`, `initial_latent`, `max_denoise`,
//! `CfgDenoiser`, `sample`, `TorchRng`), wired exactly as ksampler.rs wires them, over `models::unet::Unet`
//! loaded from the single-file checkpoint with its sdgraph metadata (as CheckpointLoaderSimple does).
//!
//! Checked: the initial noise and every ancestral/LCM noise draw are PyTorch's bit for bit; the schedules are
//! ComfyUI's float32 sigmas bit for bit; each run makes the model calls PyTorch made, at the same integer
//! timesteps; the final latents (and euler's latent at every step) agree within `TOL`. Two of the cases also run
//! through the KSampler node itself (CheckpointLoaderSimple -> KSampler in a graph, with test nodes feeding the
//! fixture's prompts and latent), which covers the node's private predictor. No test runs Python.
//!
//! Tolerance. The reference is float64 throughout; sdgraph runs the UNet in f32 (within ~1e-5 of float64 per call,
//! see tests/models/models_unet.rs) and keeps the latent in f32. The tiny UNet is random, so its "noise" prediction does
//! not remove the noise: txt2img latents end at magnitude 50-80 (the initial 14.6-sigma noise plus sigma times the
//! guided eps), and every per-call error is carried along, scaled by the step sizes and by CFG (6 here). PyTorch
//! itself, running the same cases in float32, lands up to 3.1e-4 from its float64 reference (meta.json,
//! `torch_f32_max_abs_diff`), so a flat 1e-4 cannot hold; the bound scales with the values instead:
//! `max |got - want| <= TOL * max(1, max |want|)` per latent (1e-4 for img2img's values up to ~10, 5e-4 to 8e-4
//! for txt2img). The slips the fixture measures (meta.json `sensitivity`: timestep off by one, unquantised
//! timestep, cfg off by 0.1%) move the result 30 to 10000 times that. Measured errors are printed
//! (`cargo test --test sampling_unet -- --nocapture`) and listed at `TOL`.

use std::sync::OnceLock;

use gpu::testing::shared_gpu;
use gpu::{DType, Gpu, Tensor};
use graph::exec::Executor;
use models::checkpoint::convert::UNET_PREFIX;
use models::checkpoint::weights::WeightSource;
use models::sampling::noise::{TorchRng, prepare_noise};
use models::sampling::samplers::{
    CfgDenoiser, FnHooks, Job, NetOutput, NoisePredictor, NoiseSource, Prediction, Sampler, StepInfo, initial_latent,
    max_denoise, sample,
};
use models::sampling::schedulers::{ModelSigmas, Scheduler, ksampler_sigmas};
use models::unet::{Unet, UnetConfig};
use models::unet_blocks::AttentionHeads;
use nodes::checkpoint_loader::ConfigOverrides;
use serde_json::Value;

use crate::ksampler_fixture::{Fixture, dir, ksampler_graph, registry};

/// Relative bound, see the header. Measured on lavapipe (max abs error / max |value|): 0.3e-6 (lcm, cfg 1) to
/// 2.3e-6 (dpm_2: 1.20e-4 on values up to 52.3) over the final latents, 1.3e-6 over euler's steps; PyTorch's own f32
/// run of the same cases is at 0.4e-6 to 5.4e-6 (heun: 3.09e-4 on values up to 57.6).
const TOL: f64 = 1e-5;

/// The same for the KSampler node when CheckpointLoaderSimple picks f16 weights and activations (GPUs with fast
/// f16): measured 1.5e-3 (lcm, 7.9e-2 on values up to 53) and 4.4e-3 (img2img euler_ancestral, 4.5e-2 on values up
/// to 10) on lavapipe with SDGRAPH_DTYPE=f16. Loose: it catches wiring slips such as an off-by-one timestep (7.7
/// on values up to 70), not the finer ones the f32 bound catches.
const TOL_F16: f64 = 2e-2;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::open("sampling_unet"))
}

/// The seed of every case.
fn seed() -> u64 {
    fixture().meta["seed"].as_u64().unwrap()
}

/// Every case.
fn cases() -> impl Iterator<Item = Case> {
    fixture().meta["cases"].as_array().unwrap().iter().map(Case::from_json)
}

/// One KSampler run of the fixture.
struct Case {
    name: String,
    sampler: Sampler,
    scheduler: Scheduler,
    steps: usize,
    denoise: f64,
    cfg: f64,
    img2img: bool,
    max_denoise: bool,
    /// The integer timestep of every model call PyTorch made, in order.
    timesteps: Vec<f64>,
    noise_draws: usize,
}

impl Case {
    fn from_json(c: &Value) -> Case {
        Case {
            name: c["name"].as_str().unwrap().to_string(),
            sampler: Sampler::from_name(c["sampler"].as_str().unwrap()).unwrap(),
            scheduler: Scheduler::from_name(c["scheduler"].as_str().unwrap()).unwrap(),
            steps: c["steps"].as_u64().unwrap() as usize,
            denoise: c["denoise"].as_f64().unwrap(),
            cfg: c["cfg"].as_f64().unwrap(),
            img2img: c["img2img"].as_bool().unwrap(),
            max_denoise: c["max_denoise"].as_bool().unwrap(),
            timesteps: c["timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect(),
            noise_draws: c["noise_draws"].as_u64().unwrap() as usize,
        }
    }

    /// `KSampler(...).sigmas` as ksampler.rs computes them.
    fn sigmas(&self) -> Vec<f64> {
        ksampler_sigmas(
            &ModelSigmas::sd15(),
            self.scheduler,
            self.steps,
            self.denoise,
            self.sampler.discards_penultimate_sigma(),
        )
        .unwrap()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The UNet with its config completed from the checkpoint's `__metadata__`, as CheckpointLoaderSimple loads it.
fn load_unet(gpu: &Gpu) -> (Unet, Prediction) {
    let src = WeightSource::single_file(&dir().join("sd_tiny/model.safetensors")).unwrap();
    let meta = ConfigOverrides::read(&src).unwrap();
    let w = src.prefix(UNET_PREFIX);
    let mut cfg = UnetConfig::detect_from_weights(&w).unwrap();
    if let Some(h) = meta.unet_heads {
        cfg.heads = AttentionHeads::Count(h);
    }
    if let Some(g) = meta.norm_groups {
        cfg.norm.groups = g;
    }
    (Unet::load(gpu, &w, &cfg, DType::F32).unwrap(), meta.prediction)
}

/// The UNet with both prompts bound, like ksampler.rs's private `UnetPredictor` (one batched call, uncond first),
/// recording the timestep of every call.
struct UnetPredictor<'a> {
    gpu: &'a Gpu,
    unet: &'a Unet,
    shape: [usize; 4],
    /// `[B, L, C]`.
    pos: Tensor,
    /// `[2B, L, C]`: negative then positive.
    both: Tensor,
    timesteps: Vec<f64>,
}

impl UnetPredictor<'_> {
    fn new<'a>(gpu: &'a Gpu, unet: &'a Unet, shape: [usize; 4]) -> UnetPredictor<'a> {
        let fx = fixture();
        let (pshape, pos) = fx.tensor("positive");
        let (nshape, neg) = fx.tensor("negative");
        assert_eq!(pshape, nshape);
        let b = shape[0];
        let repeat = |v: &[f32], n: usize| v.repeat(n);
        let ctx_shape = |n: usize| [n, pshape[1], pshape[2]];
        let both: Vec<f32> = [repeat(&neg, b), repeat(&pos, b)].concat();
        UnetPredictor {
            gpu,
            unet,
            shape,
            pos: gpu.upload(&repeat(&pos, b), &ctx_shape(b), DType::F32).unwrap(),
            both: gpu.upload(&both, &ctx_shape(2 * b), DType::F32).unwrap(),
            timesteps: Vec::new(),
        }
    }

    fn run(&self, x: &[f32], copies: usize, timestep: f64, context: &Tensor) -> Vec<f32> {
        let [b, c, h, w] = self.shape;
        let xt = self.gpu.upload(&x.repeat(copies), &[b * copies, c, h, w], DType::F32).unwrap();
        let out = self.unet.forward(self.gpu, &xt, &vec![timestep as f32; b * copies], context).unwrap();
        self.gpu.download(&out).unwrap()
    }
}

impl NoisePredictor for UnetPredictor<'_> {
    type Error = String;

    fn predict(&mut self, x_in: &[f32], timestep: f64, _sigma: f64, with_uncond: bool) -> Result<NetOutput, String> {
        self.timesteps.push(timestep);
        if !with_uncond {
            return Ok(NetOutput::whole(self.run(x_in, 1, timestep, &self.pos), None));
        }
        let mut out = self.run(x_in, 2, timestep, &self.both);
        let cond = out.split_off(x_in.len());
        Ok(NetOutput::whole(cond, Some(out)))
    }
}

/// `TorchRng` (ComfyUI's CPU `default_noise_sampler`), keeping a copy of every draw.
struct Recorded {
    rng: TorchRng,
    draws: Vec<Vec<f32>>,
}

impl NoiseSource for Recorded {
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]) {
        self.rng.fill_noise(sigma, sigma_next, out);
        self.draws.push(out.to_vec());
    }
}

/// `max |got - want|`, and the bound it must stay within: `TOL * max(1, max |want|)`.
fn error_and_bound(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let err = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs()).fold(0.0, f64::max);
    let scale = want.iter().map(|&w| f64::from(w).abs()).fold(1.0, f64::max);
    (err, TOL * scale)
}

#[test]
fn initial_and_ancestral_noise_are_torch_randn_bit_for_bit() {
    let fx = fixture();
    let shape = fx.shape();
    let (s, want) = fx.tensor("noise");
    assert_eq!(s, shape);
    assert_eq!(bits(&prepare_noise(&shape, seed(), None)), bits(&want), "initial noise");
    // ComfyUI's default_noise_sampler on the CPU: successive torch.randn(latent.shape) from manual_seed(seed + 1).
    let mut checked = 0;
    for case in cases().filter(|c| c.sampler.uses_noise()) {
        let (s, draws) = fx.tensor(&format!("{}.noise_draws", case.name));
        assert_eq!(s[0], case.noise_draws, "{}", case.name);
        assert_eq!(s[1..], shape, "{}", case.name);
        let mut rng = TorchRng::new(seed() + 1);
        let n: usize = shape.iter().product();
        for (i, draw) in draws.chunks_exact(n).enumerate() {
            assert_eq!(bits(&rng.randn(&shape)), bits(draw), "{} draw {i}", case.name);
        }
        checked += 1;
    }
    assert!(checked >= 2, "the fixture has no ancestral/LCM case");
}

#[test]
fn schedules_are_comfyuis_float32_sigmas() {
    let fx = fixture();
    for case in cases() {
        let sigmas = case.sigmas();
        let (_, want) = fx.tensor(&format!("{}.sigmas", case.name));
        // ComfyUI's sigmas are a float32 tensor: ours must be exactly those values.
        let got: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        assert!(sigmas.iter().zip(&got).all(|(&s, &g)| s == f64::from(g)), "{}: {sigmas:?}", case.name);
        assert_eq!(bits(&got), bits(&want), "{}: {got:?} vs {want:?}", case.name);
        assert_eq!(max_denoise(&ModelSigmas::sd15(), sigmas[0]), case.max_denoise, "{}", case.name);
    }
}

struct Run {
    final_latent: Vec<f32>,
    steps_x: Vec<Vec<f32>>,
    timesteps: Vec<f64>,
    draws: Vec<Vec<f32>>,
}

/// One KSampler run, wired as `KSampler::run` in nodes/kinds/src/ksampler.rs.
fn run_case(gpu: &Gpu, unet: &Unet, prediction: Prediction, case: &Case) -> Run {
    let fx = fixture();
    let shape = fx.shape();
    let seed = seed();
    let model_sigmas = ModelSigmas::sd15();
    let sigmas = case.sigmas();
    let latent = if case.img2img { fx.tensor("img2img.latent").1 } else { vec![0.0; shape.iter().product()] };
    let noise = prepare_noise(&shape, seed, None);
    let x = initial_latent(&noise, &latent, sigmas[0], max_denoise(&model_sigmas, sigmas[0]));
    let predictor = UnetPredictor::new(gpu, unet, shape);
    let mut denoiser = CfgDenoiser::new(predictor, model_sigmas, prediction, case.cfg);
    let mut rng = Recorded { rng: TorchRng::new(seed.wrapping_add(1)), draws: Vec::new() };
    let mut steps_x = Vec::new();
    let mut hooks = FnHooks { on_step: |info: &StepInfo<'_>| steps_x.push(info.x.to_vec()), is_cancelled: || false };
    let final_latent =
        sample(case.sampler, Job { denoiser: &mut denoiser, sigmas: &sigmas, hooks: &mut hooks }, x, &mut rng)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    Run { final_latent, steps_x, timesteps: denoiser.model.timesteps, draws: rng.draws }
}

/// Runs the fixture's cases that `select` picks and checks each against PyTorch (see the header); returns how many
/// ran.
fn check_cases(gpu: &Gpu, select: impl Fn(&Case) -> bool) -> usize {
    let fx = fixture();
    let (unet, prediction) = load_unet(gpu);
    assert_eq!(prediction, Prediction::Epsilon);
    let mut failures = Vec::new();
    let mut ran = 0;
    for (case, meta) in cases().zip(fx.meta["cases"].as_array().unwrap()).filter(|(c, _)| select(c)) {
        ran += 1;
        let run = run_case(gpu, &unet, prediction, &case);
        let (_, want) = fx.tensor(&format!("{}.final", case.name));
        let (err, bound) = error_and_bound(&run.final_latent, &want);
        let torch_f32 = meta["torch_f32_max_abs_diff"].as_f64().unwrap();
        println!("{:32} final: max abs err {err:.2e} (bound {bound:.1e}); PyTorch in f32: {torch_f32:.2e}", case.name);
        if err > bound {
            failures.push(format!("{}: final latent off by {err:.2e} (bound {bound:.2e})", case.name));
        }
        // The same model calls at ComfyUI's integer timesteps, and the same noise draws.
        if run.timesteps != case.timesteps {
            failures.push(format!("{}: timesteps {:?}, PyTorch {:?}", case.name, run.timesteps, case.timesteps));
        }
        let draws = match case.noise_draws {
            0 => Vec::new(),
            _ => fx.tensor(&format!("{}.noise_draws", case.name)).1,
        };
        if run.draws.iter().flat_map(|d| bits(d)).collect::<Vec<_>>() != bits(&draws) {
            failures.push(format!(
                "{}: {} noise draws differ from PyTorch's {}",
                case.name,
                run.draws.len(),
                case.noise_draws
            ));
        }
        // The per-step latents of one run: the error stays bounded along the way, not only at the end.
        if let Ok((s, steps)) = fx.tensors.f32_any(&format!("{}.steps_x", case.name)) {
            assert_eq!(run.steps_x.len(), s[0], "{}: steps", case.name);
            for (i, (got, want)) in run.steps_x.iter().zip(steps.chunks_exact(want.len())).enumerate() {
                let (err, bound) = error_and_bound(got, want);
                println!("{:32}   x at step {i}: max abs err {err:.2e} (bound {bound:.1e})", "");
                if err > bound {
                    failures.push(format!("{}: x at step {i} off by {err:.2e} (bound {bound:.2e})", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    ran
}

#[test]
fn deterministic_samplers_match_pytorch() {
    let Some(gpu) = shared_gpu() else { return };
    // euler, heun, dpm_2, dpmpp_2m, ddim; txt2img and img2img.
    let ran = check_cases(gpu, |c| !c.sampler.uses_noise());
    assert!(ran >= 6, "{ran} deterministic cases");
}

#[test]
fn noise_driven_samplers_match_pytorch_given_the_same_draws() {
    let Some(gpu) = shared_gpu() else { return };
    // euler_ancestral, dpmpp_2m_sde (sdgraph's Brownian construction over the same draws), lcm.
    let ran = check_cases(gpu, |c| c.sampler.uses_noise());
    assert!(ran >= 4, "{ran} ancestral/SDE/LCM cases");
}

#[test]
fn tolerance_is_far_below_what_a_slip_does() {
    // The fixture's sensitivity runs: timestep off by one, unquantised timestep, cfg off by 0.1%.
    let fx = fixture();
    assert_eq!(fx.meta["tolerance"]["max_abs_relative_to_max_value"].as_f64(), Some(TOL), "meta.json and TOL");
    let sens = fx.meta["sensitivity"].as_object().unwrap();
    let slips: Vec<f64> = sens.values().filter_map(Value::as_f64).collect();
    assert_eq!(slips.len(), 3, "{sens:?}");
    let case = sens["case"].as_str().unwrap();
    let (_, want) = fx.tensor(&format!("{case}.final"));
    let (_, bound) = error_and_bound(&want, &want);
    let smallest = slips.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(smallest > 20.0 * bound, "a slip moves {case} by only {smallest:.2e}, the bound is {bound:.2e}");
}

// ---- the KSampler node itself, in a graph ----

/// `SDGRAPH_DTYPE` as the command reads it, so the f16 path can be tested on lavapipe too.
fn dtype_setting() -> Option<DType> {
    std::env::var("SDGRAPH_DTYPE").ok().and_then(|v| DType::from_setting(&v).ok())
}

#[test]
fn ksampler_node_matches_pytorch() {
    // CheckpointLoaderSimple -> KSampler with the fixture's prompts and latent: the node's own predictor (batched
    // cond/uncond, or cond alone at cfg 1), seeds and name parsing.
    let Some(gpu) = shared_gpu() else { return };
    // The loader stores the UNet in f16 on GPUs with fast f16 (not lavapipe, unless SDGRAPH_DTYPE=f16).
    let f16 = nodes::runtime::model_dtype(gpu, dtype_setting()) == DType::F16;
    let fx = fixture();
    let out = crate::common::temp_dir("sampling-unet");
    let mut ran = 0;
    for case in cases().filter(|c| ["img2img_euler_ancestral_karras", "lcm_normal_cfg1"].contains(&c.name.as_str())) {
        let meta = fx.meta["cases"].as_array().unwrap().iter().find(|m| m["name"] == case.name.as_str()).unwrap();
        let text =
            ksampler_graph(meta, seed(), r#""keep": (kind: "Capture", inputs: { "samples": "sample.latent" }),"#);
        let (reg, slot) = registry(fx, nodes::Settings { dtype: dtype_setting(), ..Default::default() });
        let g = crate::common::validate_str(&text, &reg).unwrap_or_else(|e| panic!("{e}"));
        let report = crate::common::run(&mut Executor::default(), &g, &out);
        assert!(report.ok, "{}: {:?}", case.name, report.errors());
        let got = std::mem::take(&mut *slot.lock().unwrap()).latent.expect("the capture node ran");
        assert_eq!(got.shape, fx.shape());
        let (_, want) = fx.tensor(&format!("{}.final", case.name));
        let (err, bound) = error_and_bound(&got.samples, &want);
        let bound = if f16 { bound * TOL_F16 / TOL } else { bound };
        println!(
            "KSampler node ({}), {:32} max abs err {err:.2e} (bound {bound:.1e})",
            if f16 { "f16" } else { "f32" },
            case.name
        );
        assert!(err <= bound, "{}: the KSampler node is off by {err:.2e} (bound {bound:.2e})", case.name);
        ran += 1;
    }
    assert_eq!(ran, 2);
}
