//! `models::sampling::samplers` against k-diffusion 0.1.1.post1's sampler functions (ComfyUI's `sample_lcm` for lcm,
//! ComfyUI's own uni_pc.py for uni_pc and uni_pc_bh2, ComfyUI's own comfy/k_diffusion/sampling.py for the samplers
//! added since: see `comfyui_samplers_match_comfyui_trajectories`), run in float64 by
//! tests/fixtures/sampling/make_sampling_fixture.py on a fake model behind ComfyUI's eps/v + CFG wrapping, with every
//! noise draw recorded. No test runs Python.
//!
//! Tolerance: 1e-5 on every latent value, relative to max(1, |reference|) (the final latents are O(1); mid-run ones
//! reach 15 at sigma_max). The reference is float64 throughout; here the latent is rounded to f32 after every update
//! and at every model call, as the real model takes and returns f32, so each step adds ~1e-7 relative error,
//! which the samplers carry along (and CFG scales up). The worst case is printed; it is around 1e-6.

use std::cell::Cell;
use std::convert::Infallible;

use crate::cases::{f64s, sampling_fixture as fixture};
use models::sampling::noise::TorchRng;
use models::sampling::samplers::{
    BrownianNoise, CfgDenoiser, Denoiser, FnHooks, Guided, Job, NetOutput, NoHooks, Noise, NoisePredictor, NoiseSource,
    Prediction, SampleError, Sampler, StepInfo, UniPcVariant, UnknownSampler, ancestral_step, initial_latent,
    max_denoise, sample, sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun, sample_dpmpp_3m_sde, sample_dpmpp_sde,
    sample_euler, sample_unipc,
};
use models::sampling::schedulers::ModelSigmas;
use serde_json::Value;

const TOL: f64 = 1e-5;

/// Float32 data (the JSON holds the shortest decimal of each f32).
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Largest |got - want| / max(1, |want|).
fn err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs().max(1.0)).fold(0.0, f64::max)
}

/// The fixture's fake "UNet" (see `fake_net` in the script): per pixel p and channel c,
/// `(1 + 0.2 t/999) sum_k M[c,k] x_in[k,p] + (1 - t/999) b[c] + 0.05 tanh(x_in[c,p])`, computed in f64.
#[derive(Clone)]
struct FakeNet {
    m: [Vec<Vec<f64>>; 2],
    b: [Vec<f64>; 2],
    channels: usize,
    calls: usize,
    uncond_calls: usize,
}

impl FakeNet {
    fn from_fixture() -> FakeNet {
        let p = &fixture()["fake_net"];
        let mat = |v: &Value| v.as_array().unwrap().iter().map(f64s).collect::<Vec<_>>();
        FakeNet {
            m: [mat(&p["m_cond"]), mat(&p["m_uncond"])],
            b: [f64s(&p["b_cond"]), f64s(&p["b_uncond"])],
            channels: 4,
            calls: 0,
            uncond_calls: 0,
        }
    }

    fn run(&self, which: usize, x_in: &[f32], t: f64) -> Vec<f32> {
        let c = self.channels;
        let hw = x_in.len() / c;
        let tt = t / 999.0;
        let mut out = vec![0.0f32; x_in.len()];
        for ch in 0..c {
            for p in 0..hw {
                let mix: f64 = (0..c).map(|k| self.m[which][ch][k] * f64::from(x_in[k * hw + p])).sum();
                let xi = f64::from(x_in[ch * hw + p]);
                out[ch * hw + p] = (mix * (1.0 + 0.2 * tt) + self.b[which][ch] * (1.0 - tt) + 0.05 * xi.tanh()) as f32;
            }
        }
        out
    }
}

impl NoisePredictor for FakeNet {
    type Error = Infallible;

    fn predict(&mut self, x_in: &[f32], t: f64, _sigma: f64, with_uncond: bool) -> Result<NetOutput, Infallible> {
        assert_eq!(t, t.round(), "ComfyUI feeds integer timesteps");
        self.calls += 1;
        let cond = self.run(0, x_in, t);
        let uncond = with_uncond.then(|| {
            self.uncond_calls += 1;
            self.run(1, x_in, t)
        });
        Ok(NetOutput::whole(cond, uncond))
    }
}

/// Logs the sigma of every call.
struct Logged<D> {
    inner: D,
    sigmas: Vec<f64>,
}

impl<D: Denoiser> Denoiser for Logged<D> {
    type Error = D::Error;

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, D::Error> {
        self.sigmas.push(sigma);
        self.inner.denoise(x, sigma)
    }

    fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, D::Error> {
        self.sigmas.push(sigma);
        self.inner.denoise_with_uncond(x, sigma)
    }

    fn percent_to_sigma(&self, percent: f64) -> Option<f64> {
        self.inner.percent_to_sigma(percent)
    }
}

/// Replays recorded draws; panics when they run out.
struct Recorded {
    draws: Vec<Vec<f32>>,
    next: usize,
}

impl NoiseSource for Recorded {
    fn fill_noise(&mut self, _sigma: f64, _sigma_next: f64, out: &mut [f32]) {
        let d =
            self.draws.get(self.next).unwrap_or_else(|| panic!("more than the {} recorded draws", self.draws.len()));
        out.copy_from_slice(d);
        self.next += 1;
    }
}

fn prediction(case: &Value) -> Prediction {
    match case["prediction"].as_str().unwrap() {
        "eps" => Prediction::Epsilon,
        "v" => Prediction::V,
        p => panic!("{p}"),
    }
}

fn denoiser(case: &Value) -> Logged<CfgDenoiser<FakeNet>> {
    let cfg = case["cfg"].as_f64().unwrap();
    Logged {
        inner: CfgDenoiser::new(FakeNet::from_fixture(), ModelSigmas::sd15(), prediction(case), cfg),
        sigmas: vec![],
    }
}

/// Runs one fixture case with `noise` (None: the recorded draws) and checks it; returns its largest error.
pub(crate) fn run_case(case: &Value, noise: Option<&mut dyn NoiseSource>) -> f64 {
    let name = case["sampler"].as_str().unwrap();
    let last_step = case.get("last_step").map(|n| format!(" to step {n}")).unwrap_or_default();
    let what = format!(
        "{name} {} {} steps{last_step} denoise {} {} cfg {}",
        case["scheduler"].as_str().unwrap(),
        case["steps"],
        case["denoise"],
        case["prediction"].as_str().unwrap(),
        case["cfg"]
    );
    let sigmas: Vec<f64> = f32s(&case["sigmas"]).into_iter().map(f64::from).collect();
    let ms = ModelSigmas::sd15();

    // KSAMPLER.sample: the initial latent from prepare_noise's noise.
    let md = max_denoise(&ms, sigmas[0]);
    assert_eq!(md, case["max_denoise"].as_bool().unwrap(), "{what}: max_denoise");
    let x0 = initial_latent(&f32s(&case["noise"]), &f32s(&case["latent"]), sigmas[0], md);
    let e0 = err(&x0, &f64s(&case["x0"]));
    assert!(e0 <= 1e-7, "{what}: initial latent off by {e0:e}");

    let draws: Vec<Vec<f32>> = case["noise_draws"].as_array().unwrap().iter().map(f32s).collect();
    let mut recorded = Recorded { draws: draws.clone(), next: 0 };
    let replaying = noise.is_none();
    let noise: &mut dyn NoiseSource = match noise {
        Some(n) => n,
        None => &mut recorded,
    };
    let mut den = denoiser(case);
    let mut steps: Vec<Vec<f32>> = Vec::new();
    let mut hooks = FnHooks {
        on_step: |info: &StepInfo<'_>| {
            assert_eq!(info.step, steps.len());
            assert_eq!(info.total, sigmas.len() - 1);
            if name != "dpm_fast" && name != "dpm_adaptive" {
                // dpm_fast and dpm_adaptive report the sigmas of their own steps.
                assert_eq!((info.sigma, info.sigma_next), (sigmas[info.step], sigmas[info.step + 1]));
            }
            steps.push(info.x.to_vec());
        },
        is_cancelled: || false,
    };
    let out = if name == "dpmpp_sde_raw" || (replaying && name == "dpmpp_sde") {
        // The sampler function itself, with raw (not Brownian) draws, or replaying ComfyUI's noise sampler's.
        sample_dpmpp_sde(
            Job { denoiser: &mut den, sigmas: &sigmas, hooks: &mut hooks },
            x0,
            Noise { source: noise, eta: 1.0, s_noise: 1.0 },
        )
    } else if replaying && matches!(name, "dpmpp_2m_sde" | "dpmpp_2m_sde_heun" | "dpmpp_3m_sde") {
        // Replaying ComfyUI's Brownian draws: the sampler function itself, not `sample`'s tree.
        let sampler = match name {
            "dpmpp_2m_sde" => sample_dpmpp_2m_sde,
            "dpmpp_2m_sde_heun" => sample_dpmpp_2m_sde_heun,
            _ => sample_dpmpp_3m_sde,
        };
        sampler(
            Job { denoiser: &mut den, sigmas: &sigmas, hooks: &mut hooks },
            x0,
            Noise { source: noise, eta: 1.0, s_noise: 1.0 },
        )
    } else {
        sample(
            Sampler::from_name(name).unwrap(),
            Job { denoiser: &mut den, sigmas: &sigmas, hooks: &mut hooks },
            x0,
            noise,
        )
    }
    .unwrap();

    let want_sigmas = f64s(&case["model_sigmas"]);
    assert_eq!(den.sigmas.len(), want_sigmas.len(), "{what}: model calls");
    // dpm_adaptive's step sizes follow the error between its two estimates, a small difference of the latents: the
    // f32 latents here (float64 in the fixture) move it by ~1e-4, and the sigmas drift by up to ~1e-6 over a run
    // (the same steps accepted and rejected, the latents within TOL).
    let sigma_tol = if name == "dpm_adaptive" { 1e-5 } else { 1e-12 };
    for (g, w) in den.sigmas.iter().zip(&want_sigmas) {
        assert!((g - w).abs() <= sigma_tol * w, "{what}: model called at sigma {g}, k-diffusion at {w}");
    }
    let net = &den.inner.model;
    assert_eq!(net.calls, want_sigmas.len());
    let cfg_pp = Sampler::from_name(name).is_ok_and(Sampler::needs_uncond);
    let uncond_calls = if den.inner.uses_uncond() || cfg_pp { net.calls } else { 0 };
    assert_eq!(net.uncond_calls, uncond_calls, "{what}: CFG calls");
    if replaying {
        assert_eq!(recorded.next, draws.len(), "{what}: noise draws used");
    }

    let want_steps = case["steps_x"].as_array().unwrap();
    assert_eq!(steps.len(), want_steps.len(), "{what}: callbacks");
    let mut worst: f64 = 0.0;
    for (i, (g, w)) in steps.iter().zip(want_steps).enumerate() {
        let e = err(g, &f64s(w));
        assert!(e <= TOL, "{what}: x at step {i} off by {e:e}");
        worst = worst.max(e);
    }
    let e = err(&out, &f64s(&case["final"]));
    assert!(e <= TOL, "{what}: final latent off by {e:e}");
    eprintln!("{what}: final error {e:.2e}, steps up to {worst:.2e}");
    worst.max(e)
}

/// UniPC against ComfyUI's `sample_unipc`: every order regime (1 step: no update; 2: order 1; 3 and 4: order 2;
/// more: the 1, 2, 3 warm-up and the order 2, 1 finish), both variants, eps and v, cfg 1 and not, img2img. The
/// per-step latents are the ones the model was called on (the predicted ones the corrector then refines).
#[test]
fn unipc_matches_comfyui_trajectories() {
    let mut covered = std::collections::BTreeSet::new();
    let mut worst: f64 = 0.0;
    for case in fixture()["samplers"].as_array().unwrap() {
        let name = case["sampler"].as_str().unwrap();
        if !name.starts_with("uni_pc") {
            continue;
        }
        let sampler = Sampler::from_name(name).unwrap();
        assert!(sampler.discards_penultimate_sigma() && !sampler.uses_noise());
        covered.insert((name.to_string(), case["steps"].as_u64().unwrap(), case["prediction"].as_str().unwrap()));
        worst = worst.max(run_case(case, None));
    }
    for name in ["uni_pc", "uni_pc_bh2"] {
        for steps in [1, 2, 3, 4, 8, 20] {
            let prediction = if name == "uni_pc_bh2" && steps == 20 { "v" } else { "eps" };
            assert!(covered.contains(&(name.to_string(), steps, prediction)), "no {name} case of {steps} steps");
        }
        assert!(covered.iter().any(|(n, _, p)| n == name && *p == "v"), "no v-prediction case for {name}");
    }
    eprintln!("uni_pc, uni_pc_bh2: worst error {worst:.2e} (tolerance {TOL:e})");
}

/// The two variants differ (only B(h) does), and each is a different trajectory from DPM-Solver++(2M).
#[test]
fn unipc_variants_differ() {
    let case = fixture()["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sampler"] == "uni_pc" && c["steps"] == 8 && c["prediction"] == "eps")
        .unwrap();
    let sigmas: Vec<f64> = f32s(&case["sigmas"]).into_iter().map(f64::from).collect();
    let x0: Vec<f32> = f64s(&case["x0"]).into_iter().map(|v| v as f32).collect();
    let run = |variant| {
        let job = Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks };
        sample_unipc(job, x0.clone(), variant).unwrap()
    };
    let (a, b) = (run(UniPcVariant::Bh1), run(UniPcVariant::Bh2));
    let job = Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks };
    let c = sample(Sampler::Dpmpp2m, job, x0.clone(), &mut Zeros).unwrap();
    let diff = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
    assert!(diff(&a, &b) > 1e-3, "bh1 and bh2 agree: {}", diff(&a, &b));
    assert!(diff(&a, &c) > 1e-3 && diff(&b, &c) > 1e-3);
}

/// The samplers ComfyUI added after k-diffusion 0.1.1 (and dpm_2_ancestral, dpmpp_2s_ancestral, lms, dpm_fast)
/// against ComfyUI's own comfy/k_diffusion/sampling.py: every sampler in eps and v, cfg 1 and not, with img2img
/// cases; dpm_fast at 1, 2, 3, 4, 8 and 9 steps (every order pattern); the CFG++ ones with ComfyUI's post-CFG
/// `uncond_denoised` and the negative prompt run at cfg 1 too.
#[test]
fn comfyui_samplers_match_comfyui_trajectories() {
    const COMFY_RUN: [&str; 27] = [
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "lms",
        "dpm_fast",
        "ddpm",
        "ipndm",
        "ipndm_v",
        "deis",
        "res_multistep",
        "res_multistep_ancestral",
        "gradient_estimation",
        "euler_cfg_pp",
        "euler_ancestral_cfg_pp",
        "dpmpp_2m_cfg_pp",
        "dpmpp_2s_ancestral_cfg_pp",
        "res_multistep_cfg_pp",
        "res_multistep_ancestral_cfg_pp",
        "gradient_estimation_cfg_pp",
        "heunpp2",
        "dpmpp_2m_sde_heun",
        "dpmpp_3m_sde",
        "er_sde",
        "seeds_2",
        "seeds_3",
        "sa_solver",
        "sa_solver_pece",
        "dpm_adaptive",
    ];
    let mut worst: std::collections::BTreeMap<&str, f64> = Default::default();
    for case in fixture()["samplers"].as_array().unwrap() {
        let name = case["sampler"].as_str().unwrap();
        if let Some(n) = COMFY_RUN.iter().find(|n| **n == name) {
            let e = run_case(case, None);
            let w = worst.entry(n).or_default();
            *w = w.max(e);
        }
    }
    for name in COMFY_RUN {
        assert!(worst.contains_key(name), "no fixture case for {name}");
    }
    let steps = |name: &str| -> Vec<u64> {
        let cases = fixture()["samplers"].as_array().unwrap().iter().filter(|c| c["sampler"] == name);
        cases.map(|c| c["steps"].as_u64().unwrap()).collect()
    };
    for n in [1, 2, 3, 4, 8, 9] {
        assert!(steps("dpm_fast").contains(&n), "no dpm_fast case of {n} steps");
    }
    for (name, e) in &worst {
        eprintln!("{name}: worst error {e:.2e}");
    }
}

#[test]
fn samplers_match_k_diffusion_trajectories() {
    let cases = fixture()["samplers"].as_array().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut worst: f64 = 0.0;
    for case in cases {
        seen.insert(case["sampler"].as_str().unwrap().trim_end_matches("_raw").to_string());
        worst = worst.max(run_case(case, None));
    }
    for s in Sampler::ALL {
        // The `_gpu` names run their base sampler (gpu_aliases_run_their_base_sampler).
        assert!(seen.contains(s.name().trim_end_matches("_gpu")), "no fixture case for {s}");
    }
    eprintln!("worst error over all samplers: {worst:.2e} (tolerance {TOL:e})");
}

/// The fixture's noise is what ComfyUI on the CPU draws: the initial noise from `torch.manual_seed(seed)`
/// (prepare_noise) and the sampler noise from a generator seeded with seed + 1 (default_noise_sampler). So the
/// crate's TorchRng reproduces whole ComfyUI runs of the ancestral samplers.
#[test]
fn torch_rng_reproduces_the_recorded_noise() {
    for case in fixture()["samplers"].as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let n = f32s(&case["noise"]);
        assert_eq!(TorchRng::new(seed).randn(&[1, 4, 4, 4]), n, "prepare_noise");
        if case.get("noise_sigmas").is_some() {
            // dpmpp_sde, dpmpp_2m_sde: torchsde's tree, not this stream (tests/models/torchsde.rs runs them).
            continue;
        }
        let draws: Vec<Vec<f32>> = case["noise_draws"].as_array().unwrap().iter().map(f32s).collect();
        let mut rng = TorchRng::new(seed + 1);
        for d in &draws {
            let mut out = vec![0.0; d.len()];
            rng.fill_noise(1.0, 0.5, &mut out);
            assert_eq!(&out, d);
        }
        if matches!(
            case["sampler"].as_str().unwrap(),
            "euler_ancestral"
                | "dpmpp_2m_sde"
                | "lcm"
                | "dpm_2_ancestral"
                | "dpmpp_2s_ancestral"
                | "ddpm"
                | "res_multistep_ancestral"
                | "euler_ancestral_cfg_pp"
                | "dpmpp_2s_ancestral_cfg_pp"
                | "res_multistep_ancestral_cfg_pp"
                | "er_sde"
                | "seeds_2"
                | "seeds_3"
                | "sa_solver"
                | "sa_solver_pece"
        ) {
            let mut rng = TorchRng::new(seed + 1);
            run_case(case, Some(&mut rng));
        }
    }
}

#[test]
fn cfg_wrapper_matches_comfyui() {
    let w = &fixture()["wrapper"];
    let x = f32s(&w["x"]);
    for call in w["calls"].as_array().unwrap() {
        let mut d = denoiser(call);
        let sigma = call["sigma"].as_f64().unwrap();
        let got = d.denoise(&x, sigma).unwrap();
        // f32 network outputs times sigma (up to 14.6) times cfg (up to 7): a few 1e-6 (see TOL).
        let e = err(&got, &f64s(&call["denoised"]));
        assert!(e <= TOL, "{} cfg {} sigma {sigma}: off by {e:e}", call["prediction"], call["cfg"]);
        let uses_uncond = (call["cfg"].as_f64().unwrap() - 1.0).abs() > 1e-9;
        assert_eq!(d.inner.model.uncond_calls, usize::from(uses_uncond));
    }
}

#[test]
fn cfg_one_skips_the_negative_prompt() {
    for (cfg, uncond) in
        [(1.0, false), (1.0 + 1e-12, false), (1.0 - 1e-12, false), (1.001, true), (7.5, true), (0.0, true)]
    {
        let mut d = CfgDenoiser::new(FakeNet::from_fixture(), ModelSigmas::sd15(), Prediction::Epsilon, cfg);
        assert_eq!(d.uses_uncond(), uncond, "cfg {cfg}");
        d.denoise(&[0.5; 64], 3.0).unwrap();
        assert_eq!(d.model.uncond_calls, usize::from(uncond), "cfg {cfg}");
    }
    // cfg 0 is the negative prompt alone.
    let net = FakeNet::from_fixture();
    let mut d0 = CfgDenoiser::new(net.clone(), ModelSigmas::sd15(), Prediction::Epsilon, 0.0);
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let sigma = 2.0;
    let t = ModelSigmas::sd15().sigma_to_t(sigma);
    let scale = (sigma * sigma + 1.0f64).sqrt();
    let x_in: Vec<f32> = x.iter().map(|&v| (f64::from(v) / scale) as f32).collect();
    let eps = net.run(1, &x_in, t);
    let want: Vec<f64> = x.iter().zip(&eps).map(|(&xv, &e)| f64::from(xv) - f64::from(e) * sigma).collect();
    assert!(err(&d0.denoise(&x, sigma).unwrap(), &want) < 1e-6);
}

/// A denoiser that always predicts `target` and counts its calls.
struct Constant {
    target: Vec<f32>,
    calls: Cell<usize>,
    len: usize,
}

impl Denoiser for Constant {
    type Error = String;

    fn denoise(&mut self, x: &[f32], _sigma: f64) -> Result<Vec<f32>, String> {
        assert_eq!(x.len(), self.target.len());
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() > 1000 {
            return Err("too many calls".into());
        }
        Ok(self.target[..self.len].to_vec())
    }

    /// The negative prompt's estimate is the target too.
    fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, String> {
        let denoised = self.denoise(x, sigma)?;
        Ok(Some(Guided { uncond: denoised.clone(), denoised }))
    }
}

fn constant(len: usize) -> Constant {
    Constant { target: (0..len).map(|i| i as f32 * 0.1).collect(), calls: Cell::new(0), len }
}

/// Zero noise of any length.
struct Zeros;

impl NoiseSource for Zeros {
    fn fill_noise(&mut self, _: f64, _: f64, out: &mut [f32]) {
        out.fill(0.0);
    }
}

const SIGMAS: [f64; 5] = [14.6, 5.0, 1.0, 0.2, 0.0];

#[test]
fn every_sampler_lands_on_a_constant_denoiser_target() {
    // With denoised == target whatever x is, every sampler must end exactly at target (the last step is to 0).
    // UniPC, as ComfyUI runs it, solves to sigma 0.001 instead of 0: it ends on the exact solution there,
    // target + (0.001 / sigma_0) (x - target).
    for s in Sampler::ALL {
        let mut d = constant(8);
        let x = vec![3.0f32; 8];
        let out = sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut NoHooks }, x, &mut TorchRng::new(1))
            .unwrap();
        // dpm_fast and dpm_adaptive stop at the last positive sigma, 0.2, on the exact solution.
        let end = match s {
            Sampler::UniPc | Sampler::UniPcBh2 => 0.001,
            Sampler::DpmFast | Sampler::DpmAdaptive => 0.2,
            _ => 0.0,
        };
        let want: Vec<f64> = d.target.iter().map(|&v| f64::from(v) + end / SIGMAS[0] * (3.0 - f64::from(v))).collect();
        let e = err(&out, &want);
        assert!(e < 1e-6, "{s}: {out:?}");
        let two_calls = [
            Sampler::Heun,
            Sampler::Dpm2,
            Sampler::DpmppSde,
            Sampler::DpmppSdeGpu,
            Sampler::Dpm2Ancestral,
            Sampler::Dpmpp2sAncestral,
            Sampler::Dpmpp2sAncestralCfgPp,
            Sampler::Seeds2,
        ];
        let steps = SIGMAS.len() - 2; // but the last, which takes one call
        let calls = match s {
            // Heun++ (3 calls) twice, then Heun (2) to the sigma before the last.
            Sampler::Heunpp2 => 3 + 3 + 2 + 1,
            Sampler::Seeds3 => 3 * steps + 1,
            // No corrector (nor its second call) on the first step; the last step is corrected too.
            Sampler::SaSolverPece => 1 + 2 * steps,
            // The error is 0, so every try is accepted and the step grows by 1 + atan(1e8^(1/3) - 1): 6 tries of 3
            // calls, from 0.05 in -log sigma to the 4.29 from 14.6 to 0.2.
            Sampler::DpmAdaptive => 6 * 3,
            s if two_calls.contains(&s) => 2 * steps + 1,
            _ => steps + 1,
        };
        assert_eq!(d.calls.get(), calls, "{s}: model calls");
    }
}

#[test]
fn cancel_stops_before_the_next_model_call() {
    for s in Sampler::ALL {
        let mut d = constant(8);
        let calls = Cell::new(0usize);
        let mut hooks = FnHooks {
            on_step: |_: &StepInfo<'_>| {},
            is_cancelled: || {
                calls.set(calls.get() + 1);
                calls.get() > 3
            },
        };
        let r = sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut hooks }, vec![1.0; 8], &mut Zeros);
        match r {
            Err(SampleError::Cancelled { step }) => assert!(step <= 3, "{s}: step {step}"),
            other => panic!("{s}: {other:?}"),
        }
        assert_eq!(d.calls.get(), 3, "{s}");
    }
}

#[test]
fn the_callback_sees_each_step_once_with_its_denoised_latent() {
    for s in Sampler::ALL {
        let mut d = constant(8);
        let target = d.target.clone();
        let mut seen = vec![];
        let mut hooks = FnHooks {
            on_step: |info: &StepInfo<'_>| {
                assert_eq!(info.denoised, &target[..]);
                assert_eq!(info.x.len(), 8);
                assert_eq!(info.total, SIGMAS.len() - 1);
                seen.push(info.step);
            },
            is_cancelled: || false,
        };
        sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut hooks }, vec![1.0; 8], &mut Zeros).unwrap();
        // dpm_fast's 4 model calls are a third-order step and a first-order one; dpm_adaptive takes 6 steps (see
        // every_sampler_lands_on_a_constant_denoiser_target).
        let want: &[usize] = match s {
            Sampler::DpmFast => &[0, 1],
            Sampler::DpmAdaptive => &[0, 1, 2, 3, 4, 5],
            _ => &[0, 1, 2, 3],
        };
        assert_eq!(seen, want, "{s}");
    }
}

#[test]
fn bad_sigmas_and_model_outputs_are_errors() {
    let bad: [&[f64]; 6] =
        [&[], &[1.0, -0.1], &[0.0, 0.0], &[1.0, 0.0, 0.5, 0.0], &[f64::NAN, 0.0], &[f64::INFINITY, 1.0, 0.0]];
    for s in Sampler::ALL {
        for sigmas in bad {
            let mut d = constant(4);
            let r = sample(s, Job { denoiser: &mut d, sigmas, hooks: &mut NoHooks }, vec![0.0; 4], &mut Zeros);
            assert!(matches!(r, Err(SampleError::BadSigmas(_))), "{s} {sigmas:?}: {r:?}");
            assert_eq!(d.calls.get(), 0);
        }
        // One sigma: nothing to do, as in ComfyUI.
        let mut d = constant(4);
        assert_eq!(
            sample(s, Job { denoiser: &mut d, sigmas: &[3.0], hooks: &mut NoHooks }, vec![0.25; 4], &mut Zeros)
                .unwrap(),
            [0.25; 4]
        );
        assert_eq!(d.calls.get(), 0);
        // A model returning the wrong length.
        let mut d = Constant { len: 3, ..constant(4) };
        let r = sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut NoHooks }, vec![0.0; 4], &mut Zeros);
        assert!(matches!(r, Err(SampleError::BadModelOutput { expected: 4, got: 3 })), "{s}: {r:?}");
        // A failing model.
        let mut d = constant(4);
        d.calls.set(1000);
        let r = sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut NoHooks }, vec![0.0; 4], &mut Zeros);
        assert!(matches!(r, Err(SampleError::Model(ref m)) if m == "too many calls"), "{s}: {r:?}");
        // A model predicting NaN or infinity: stopped at that step, naming it, the sigma and the value.
        for bad in [f32::NAN, f32::INFINITY] {
            let mut d = constant(4);
            d.target[2] = bad;
            let r = sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut NoHooks }, vec![0.0; 4], &mut Zeros);
            match r {
                Err(e @ SampleError::NonFinite { step: 0, total: 4, index: 2, .. }) => {
                    let text = e.to_string();
                    assert!(text.contains("step 1/4 (sigma 14.6000)") && text.contains(&bad.to_string()), "{text}");
                }
                other => panic!("{s} {bad}: {other:?}"),
            }
            assert_eq!(d.calls.get(), 1, "{s}: no step after the bad one");
        }
    }
}

#[test]
fn sampler_names() {
    let names: Vec<&str> = Sampler::ALL.iter().map(|s| s.name()).collect();
    // ComfyUI's SAMPLER_NAMES (KSAMPLER_NAMES, then ddim, uni_pc, uni_pc_bh2) @ a125cd84, all of them.
    assert_eq!(
        names,
        [
            "euler",
            "euler_cfg_pp",
            "euler_ancestral",
            "euler_ancestral_cfg_pp",
            "heun",
            "heunpp2",
            "dpm_2",
            "dpm_2_ancestral",
            "lms",
            "dpm_fast",
            "dpm_adaptive",
            "dpmpp_2s_ancestral",
            "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde",
            "dpmpp_sde_gpu",
            "dpmpp_2m",
            "dpmpp_2m_cfg_pp",
            "dpmpp_2m_sde",
            "dpmpp_2m_sde_gpu",
            "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu",
            "dpmpp_3m_sde",
            "dpmpp_3m_sde_gpu",
            "ddpm",
            "lcm",
            "ipndm",
            "ipndm_v",
            "deis",
            "res_multistep",
            "res_multistep_cfg_pp",
            "res_multistep_ancestral",
            "res_multistep_ancestral_cfg_pp",
            "gradient_estimation",
            "gradient_estimation_cfg_pp",
            "er_sde",
            "seeds_2",
            "seeds_3",
            "sa_solver",
            "sa_solver_pece",
            "ddim",
            "uni_pc",
            "uni_pc_bh2"
        ]
    );
    assert_eq!(Sampler::NAMES, &names[..]);
    for s in Sampler::ALL {
        assert_eq!(Sampler::from_name(s.name()), Ok(s));
        assert_eq!(s.to_string().parse::<Sampler>(), Ok(s));
        // ComfyUI's DISCARD_PENULTIMATE_SIGMA_SAMPLERS (of the samplers sdgraph has).
        let discards = matches!(s, Sampler::Dpm2 | Sampler::Dpm2Ancestral | Sampler::UniPc | Sampler::UniPcBh2);
        assert_eq!(s.discards_penultimate_sigma(), discards);
        assert_eq!(s.needs_uncond(), s.name().ends_with("_cfg_pp"), "{s}");
    }
    for name in ["", "Euler", "dpm_2_ancestral ", "uni_pc_bh1", "UniPC", "euler_a", "dpmpp_2m_karras", "heunpp"] {
        assert_eq!(Sampler::from_name(name), Err(UnknownSampler(name.into())));
    }
    assert!(UnknownSampler("x".into()).to_string().contains("dpmpp_2m_cfg_pp, dpmpp_2m_sde,"));
    let noisy: Vec<&str> = Sampler::ALL.into_iter().filter(|s| s.uses_noise()).map(Sampler::name).collect();
    assert_eq!(
        noisy,
        [
            "euler_ancestral",
            "euler_ancestral_cfg_pp",
            "dpm_2_ancestral",
            "dpmpp_2s_ancestral",
            "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde",
            "dpmpp_sde_gpu",
            "dpmpp_2m_sde",
            "dpmpp_2m_sde_gpu",
            "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu",
            "dpmpp_3m_sde",
            "dpmpp_3m_sde_gpu",
            "ddpm",
            "lcm",
            "res_multistep_ancestral",
            "res_multistep_ancestral_cfg_pp",
            "er_sde",
            "seeds_2",
            "seeds_3",
            "sa_solver",
            "sa_solver_pece"
        ]
    );
}

#[test]
fn ddim_is_euler() {
    let case = fixture()["samplers"].as_array().unwrap().iter().find(|c| c["sampler"] == "ddim").unwrap();
    let sigmas: Vec<f64> = f32s(&case["sigmas"]).into_iter().map(f64::from).collect();
    let x0: Vec<f32> = f64s(&case["x0"]).into_iter().map(|v| v as f32).collect();
    let a = sample(
        Sampler::Ddim,
        Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks },
        x0.clone(),
        &mut Zeros,
    )
    .unwrap();
    let b = sample_euler(Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks }, x0).unwrap();
    assert_eq!(a, b);
}

#[test]
fn ancestral_step_matches_k_diffusion() {
    let (down, up) = ancestral_step(10.0, 5.0, 1.0);
    assert!((up - (25.0f64 * 75.0 / 100.0).sqrt()).abs() < 1e-12);
    assert!((down - (25.0 - up * up).sqrt()).abs() < 1e-12);
    assert_eq!(ancestral_step(10.0, 5.0, 0.0), (5.0, 0.0));
    assert_eq!(ancestral_step(10.0, 0.0, 1.0), (0.0, 0.0));
    // eta large enough: sigma_up is capped at sigma_to, sigma_down is 0.
    assert_eq!(ancestral_step(10.0, 5.0, 10.0), (0.0, 5.0));
}

/// Fixed draws 1, 2, 3... (each a constant latent) to check the Brownian arithmetic.
struct Counting(f32);

impl NoiseSource for Counting {
    fn fill_noise(&mut self, _: f64, _: f64, out: &mut [f32]) {
        self.0 += 1.0;
        out.fill(self.0);
    }
}

#[test]
fn brownian_noise_is_a_brownian_path() {
    let mut b = BrownianNoise::new(Counting(0.0));
    let mut out = [0.0f32; 2];
    // Disjoint descending intervals (dpmpp_2m_sde): each call is exactly one raw draw.
    for (i, (s0, s1)) in [(14.6, 9.0), (9.0, 4.0), (4.0, 1.5)].into_iter().enumerate() {
        b.fill_noise(s0, s1, &mut out);
        assert!((out[0] - (i + 1) as f32).abs() < 1e-6, "{out:?}");
    }
    // Overlapping (dpmpp_sde): sigma -> mid draws z4; sigma -> next extends below mid with z5 and returns the
    // normalised sum of both increments.
    let (s, mid, next) = (1.5f64, 1.0f64, 0.25f64);
    b.fill_noise(s, mid, &mut out);
    assert!((out[0] - 4.0).abs() < 1e-6);
    b.fill_noise(s, next, &mut out);
    let want = ((s - mid).sqrt() * 4.0 + (mid - next).sqrt() * 5.0) / (s - next).sqrt();
    assert!((f64::from(out[0]) - want).abs() < 1e-6, "{out:?} vs {want}");
    // Reversed order gives the opposite sign; a known interval draws nothing.
    b.fill_noise(mid, s, &mut out);
    assert!((out[0] + 4.0).abs() < 1e-6);
    // A new point inside a known interval comes from the Brownian bridge between W(0.25) and W(1.0):
    // W(0.5) - W(1.0) = f (W(0.25) - W(1.0)) + sd z6, where (W(0.25) - W(1.0)) / sqrt(0.75) = 5 (the z5 above).
    b.fill_noise(mid, 0.5, &mut out);
    let f = (mid - 0.5) / (mid - next);
    let sd = ((mid - 0.5) * (0.5 - next) / (mid - next)).sqrt();
    let want = (f * 5.0 * (mid - next).sqrt() + sd * 6.0) / 0.5f64.sqrt();
    assert!((f64::from(out[0]) - want).abs() < 1e-5, "{out:?} vs {want}");
    assert_eq!(b.into_inner().0, 6.0);
}

#[test]
fn sde_samplers_without_noise_are_deterministic_and_draw_nothing() {
    let case = fixture()["samplers"].as_array().unwrap().iter().find(|c| c["sampler"] == "dpmpp_2m_sde").unwrap();
    let sigmas: Vec<f64> = f32s(&case["sigmas"]).into_iter().map(f64::from).collect();
    let x0: Vec<f32> = f64s(&case["x0"]).into_iter().map(|v| v as f32).collect();
    let mut none = Recorded { draws: vec![], next: 0 };
    let a = sample_dpmpp_2m_sde(
        Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks },
        x0.clone(),
        Noise { source: &mut none, eta: 1.0, s_noise: 0.0 },
    )
    .unwrap();
    let b = sample_dpmpp_sde(
        Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks },
        x0,
        Noise { source: &mut none, eta: 0.0, s_noise: 1.0 },
    )
    .unwrap();
    assert!(a.iter().chain(&b).all(|v| v.is_finite()));
}

/// A denoiser that cannot give the negative prompt's estimate (the trait's default).
struct NoUncond(Constant);

impl Denoiser for NoUncond {
    type Error = String;

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, String> {
        self.0.denoise(x, sigma)
    }
}

#[test]
fn cfg_pp_samplers_need_the_negative_prompt_estimate() {
    for s in Sampler::ALL {
        let mut d = NoUncond(constant(8));
        let r = sample(s, Job { denoiser: &mut d, sigmas: &SIGMAS, hooks: &mut NoHooks }, vec![1.0; 8], &mut Zeros);
        if s.needs_uncond() {
            match r {
                Err(e @ SampleError::NoUncond) => assert!(e.to_string().contains("negative prompt"), "{e}"),
                other => panic!("{s}: {other:?}"),
            }
            assert_eq!(d.0.calls.get(), 0, "{s}");
        } else {
            assert!(r.is_ok(), "{s}: {r:?}");
        }
    }
}

/// CfgDenoiser's `denoise_with_uncond`: the negative prompt runs even at cfg 1 (ComfyUI's
/// `disable_cfg1_optimization`), its estimate is what cfg 0 gives, and the guided one is what `denoise` gives.
#[test]
fn cfg_denoiser_gives_the_negative_prompt_estimate() {
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
    for (prediction, cfg, sigma) in
        [(Prediction::Epsilon, 1.0, 3.0), (Prediction::V, 1.0, 0.7), (Prediction::Epsilon, 4.5, 1.2)]
    {
        let mut d = CfgDenoiser::new(FakeNet::from_fixture(), ModelSigmas::sd15(), prediction, cfg);
        let g = d.denoise_with_uncond(&x, sigma).unwrap().unwrap();
        assert_eq!((d.model.calls, d.model.uncond_calls), (1, 1), "cfg {cfg}: one batched call with the negative");
        let mut d0 = CfgDenoiser::new(FakeNet::from_fixture(), ModelSigmas::sd15(), prediction, 0.0);
        assert_eq!(g.uncond, d0.denoise(&x, sigma).unwrap(), "cfg {cfg}");
        let mut dc = CfgDenoiser::new(FakeNet::from_fixture(), ModelSigmas::sd15(), prediction, cfg);
        let plain = dc.denoise(&x, sigma).unwrap();
        if cfg == 1.0 {
            // uncond + (cond - uncond) * 1 against cond alone: equal up to rounding, not necessarily bit for bit.
            assert!(err(&g.denoised, &plain.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()) < 1e-6);
            assert_ne!(g.uncond, plain);
        } else {
            assert_eq!(g.denoised, plain);
        }
    }
}

/// The `_gpu` names are their base samplers with the noise drawn as on the CPU: the same latent, bit for bit, from
/// the same stream (a TorchRng, which the SDE samplers see as KSampler's seed + 1, and a plain recorded one).
#[test]
fn gpu_aliases_run_their_base_sampler() {
    let case = fixture()["samplers"].as_array().unwrap().iter().find(|c| c["sampler"] == "dpmpp_sde").unwrap();
    let sigmas: Vec<f64> = f32s(&case["sigmas"]).into_iter().map(f64::from).collect();
    let x0: Vec<f32> = f64s(&case["x0"]).into_iter().map(|v| v as f32).collect();
    for (gpu, base) in [
        (Sampler::DpmppSdeGpu, Sampler::DpmppSde),
        (Sampler::Dpmpp2mSdeGpu, Sampler::Dpmpp2mSde),
        (Sampler::Dpmpp2mSdeHeunGpu, Sampler::Dpmpp2mSdeHeun),
        (Sampler::Dpmpp3mSdeGpu, Sampler::Dpmpp3mSde),
    ] {
        assert!(gpu.uses_noise() && gpu.name() == format!("{}_gpu", base.name()));
        let run = |s: Sampler, noise: &mut dyn NoiseSource| {
            let job = Job { denoiser: &mut denoiser(case), sigmas: &sigmas, hooks: &mut NoHooks };
            sample(s, job, x0.clone(), noise).unwrap()
        };
        let a = run(gpu, &mut TorchRng::new(42));
        assert_eq!(a, run(base, &mut TorchRng::new(42)), "{gpu}");
        assert_ne!(a, run(base, &mut TorchRng::new(43)), "{gpu}: the noise matters");
        let draws: Vec<Vec<f32>> = (0..40).map(|k| TorchRng::new(k).randn(&[x0.len()])).collect();
        let b = run(gpu, &mut Recorded { draws: draws.clone(), next: 0 });
        assert_eq!(b, run(base, &mut Recorded { draws, next: 0 }), "{gpu}");
    }
}
