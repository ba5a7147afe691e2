//! `models::sampling::schedulers` against ComfyUI's schedulers and `ModelSamplingDiscrete` (ported line for line into
//! tests/fixtures/sampling/make_sampling_fixture.py from Comfy-Org/ComfyUI comfy/samplers.py @ 311c0140...,
//! comfy/model_sampling.py @ 2fd20839..., run with torch 2.11.0; see the script). No test runs Python.
//!
//! Tolerance: sigma sequences to 1e-6 relative. ComfyUI computes them with float32 torch ops (linspace, the
//! log-sigma interpolation, exp, pow) and returns float32; the Rust code computes in f64 from the same float32
//! inputs and rounds to f32, so the two differ by the few f32 ulps (about 1e-7 each) of torch's own rounding.

use crate::cases::{f64s, sampling_fixture as fixture};
use models::sampling::schedulers::{MAX_SCHEDULE_STEPS, ModelSigmas, ScheduleError, Scheduler, ksampler_sigmas};
use serde_json::Value;

/// Largest relative difference (absolute where the reference is 0).
fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(g, w)| if *w == 0.0 { g.abs() } else { ((g - w) / w).abs() }).fold(0.0, f64::max)
}

#[test]
fn sd15_sigmas_match_comfyui_buffers() {
    let ms = ModelSigmas::sd15();
    let model = &fixture()["model"];
    // The fixture's float32 values, as the f64 of each f32 (the JSON has the shortest decimal of the f32).
    let f32_values = |v: &Value| -> Vec<f64> { f64s(v).into_iter().map(|x| f64::from(x as f32)).collect() };
    let want = f32_values(&model["sigmas"]);
    let want_log = f32_values(&model["log_sigmas"]);
    assert_eq!(ms.len(), 1000);
    let got: Vec<f64> = ms.sigmas().iter().map(|&s| f64::from(s)).collect();
    let got_log: Vec<f64> = ms.log_sigmas().iter().map(|&s| f64::from(s)).collect();
    // Same float64 arithmetic as torch (linspace halves, square, sequential cumprod, sqrt), then float32: equal,
    // or at most one f32 ulp apart where torch's vectorised float64 log/sqrt round differently.
    let diff = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    let diff_log = got_log.iter().zip(&want_log).filter(|(g, w)| g != w).count();
    assert!(max_rel(&got, &want) <= 1.2e-7, "sigmas: {diff} differ, max rel {:e}", max_rel(&got, &want));
    assert!(max_rel(&got_log, &want_log) <= 1.2e-7, "log sigmas: {diff_log} differ");
    eprintln!("{diff} sigmas and {diff_log} log sigmas differ from torch's");
    assert!(diff <= 5 && diff_log <= 5, "{diff} sigmas and {diff_log} log sigmas differ from torch's float32 values");
    assert!((ms.sigma_min() - 0.029_167_158_9).abs() < 1e-9, "{}", ms.sigma_min());
    assert!((ms.sigma_max() - 14.614_641_9).abs() < 1e-6, "{}", ms.sigma_max());
}

#[test]
fn t_to_sigma_matches_comfyui() {
    let ms = ModelSigmas::sd15();
    let c = &fixture()["model"]["t_to_sigma"];
    let (ts, want) = (f64s(&c["t"]), f64s(&c["sigma"]));
    let got: Vec<f64> = ts.iter().map(|&t| ms.t_to_sigma(t)).collect();
    assert!(max_rel(&got, &want) <= 1e-6, "t_to_sigma: {got:?} vs {want:?}");
}

#[test]
fn sigma_to_t_matches_comfyui_and_k_diffusion() {
    let ms = ModelSigmas::sd15();
    let c = &fixture()["model"]["sigma_to_t"];
    let sigmas = f64s(&c["sigma"]);
    let timesteps: Vec<usize> =
        c["timestep"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let continuous = f64s(&c["continuous"]);
    for ((&s, &t), &tc) in sigmas.iter().zip(&timesteps).zip(&continuous) {
        assert_eq!(ms.timestep(s), t, "timestep({s})");
        assert_eq!(ms.sigma_to_t(s), t as f64, "sigma_to_t({s})");
        let got = ms.sigma_to_t_continuous(s);
        assert!((got - tc).abs() <= 1e-9 * tc.max(1.0), "sigma_to_t_continuous({s}) = {got}, k-diffusion {tc}");
    }
    // Round trips: the continuous inverse of t_to_sigma, and exact timesteps at the model's own sigmas.
    for t in [0.0, 0.5, 3.25, 499.5, 998.0, 999.0] {
        let back = ms.sigma_to_t_continuous(ms.t_to_sigma(t));
        assert!((back - t).abs() < 1e-4, "t {t} -> {back}");
    }
    for (t, &s) in ms.sigmas().iter().enumerate() {
        assert_eq!(ms.timestep(f64::from(s)), t);
    }
}

#[test]
fn percent_to_sigma_matches_comfyui() {
    let ms = ModelSigmas::sd15();
    let c = &fixture()["model"]["percent_to_sigma"];
    let (pct, want) = (f64s(&c["percent"]), f64s(&c["sigma"]));
    let got: Vec<f64> = pct.iter().map(|&p| ms.percent_to_sigma(p)).collect();
    assert!(max_rel(&got, &want) <= 1e-6, "{got:?} vs {want:?}");
}

#[test]
fn schedules_match_comfyui() {
    let ms = ModelSigmas::sd15();
    let cases = fixture()["schedules"].as_array().unwrap();
    assert!(cases.len() >= 9 * 10);
    for s in Scheduler::ALL {
        assert!(cases.iter().any(|c| c["scheduler"] == s.name()), "no fixture case for {s}");
    }
    let mut worst = (0.0, String::new());
    for case in cases {
        let scheduler = Scheduler::from_name(case["scheduler"].as_str().unwrap()).unwrap();
        let sampler = case["sampler"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let denoise = case["denoise"].as_f64().unwrap();
        let want = f64s(&case["sigmas"]);
        let what = format!("{scheduler} {sampler} steps {steps} denoise {denoise}");
        let got = ksampler_sigmas(&ms, scheduler, steps, denoise, sampler == "dpm_2").unwrap();
        assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
        let rel = max_rel(&got, &want);
        if scheduler == Scheduler::Beta {
            // Model sigmas at integer timesteps: the same float32 values.
            let want32: Vec<f64> = want.iter().map(|&w| f64::from(w as f32)).collect();
            assert_eq!(got, want32, "{what}");
        }
        assert!(rel <= 1e-6, "{what}: max relative difference {rel:e}\n{got:?}\nvs\n{want:?}");
        if !want.is_empty() {
            assert_eq!(*got.last().unwrap(), 0.0, "{what}: ends in 0");
        }
        if rel > worst.0 {
            worst = (rel, what);
        }
    }
    eprintln!("largest relative difference {:e} ({})", worst.0, worst.1);
}

#[test]
fn every_scheduler_at_full_denoise_has_steps_plus_one_sigmas_from_the_top() {
    let ms = ModelSigmas::sd15();
    for scheduler in Scheduler::ALL {
        for steps in [1, 2, 5, 20, 40] {
            if scheduler == Scheduler::KlOptimal && steps == 1 {
                continue; // an error, see kl_optimal_needs_two_steps
            }
            let s = scheduler.sigmas(&ms, steps).unwrap();
            // ddim_uniform's `1, 1 + k, 1 + 2k...` grid gives extra steps when 1000 % steps leaves room.
            let expected =
                if scheduler == Scheduler::DdimUniform { 999usize.div_ceil(1000 / steps) + 1 } else { steps + 1 };
            assert_eq!(s.len(), expected, "{scheduler} {steps}");
            assert!(s.windows(2).all(|w| w[0] > w[1]), "{scheduler} {steps}: decreasing: {s:?}");
            assert_eq!(s[s.len() - 1], 0.0);
            match scheduler {
                Scheduler::DdimUniform => {}
                // tan(atan(sigma_max)) through a float32 angle: within 2e-5 (tan's slope is 215 there).
                Scheduler::KlOptimal => assert!((s[0] - ms.sigma_max()).abs() < 2e-5, "{scheduler} {steps}"),
                _ => assert!((s[0] - ms.sigma_max()).abs() < 1e-5, "{scheduler} {steps} starts at sigma_max"),
            }
        }
    }
    assert_eq!(Scheduler::DdimUniform.sigmas(&ms, 30).unwrap().len(), 32);
    // beta drops repeated timesteps: near both ends the Beta(0.6, 0.6) quantiles crowd together.
    let beta = Scheduler::Beta.sigmas(&ms, 1000).unwrap();
    assert!(beta.len() < 1001 && beta.windows(2).all(|w| w[0] > w[1]), "{}", beta.len());
}

/// beta's timesteps: scipy's Beta(0.6, 0.6) quantiles times 999, rounded as numpy.rint does, for 1 to 400 steps
/// (each even count has the tie 499.5 -> 500), seen through the sigmas they pick.
#[test]
fn beta_timesteps_match_scipy() {
    let ms = ModelSigmas::sd15();
    let table = fixture()["beta_timesteps"].as_object().unwrap();
    assert_eq!(table.len(), 400);
    for (steps, ts) in table {
        let steps: usize = steps.parse().unwrap();
        let ts: Vec<usize> = ts.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
        assert_eq!(ts.len(), steps);
        let mut want: Vec<f64> = Vec::new();
        for (i, &t) in ts.iter().enumerate() {
            if i == 0 || ts[i - 1] != t {
                want.push(f64::from(ms.sigmas()[t]));
            }
        }
        want.push(0.0);
        assert_eq!(Scheduler::Beta.sigmas(&ms, steps).unwrap(), want, "{steps} steps: timesteps {ts:?}");
    }
}

#[test]
fn kl_optimal_needs_two_steps() {
    let ms = ModelSigmas::sd15();
    let e = Scheduler::KlOptimal.sigmas(&ms, 1).unwrap_err();
    assert_eq!(e, ScheduleError::TooFewSteps { scheduler: "kl_optimal", min: 2 });
    assert!(e.to_string().contains("kl_optimal scheduler needs at least 2 steps"), "{e}");
    assert_eq!(ksampler_sigmas(&ms, Scheduler::KlOptimal, 1, 1.0, false).unwrap_err(), e);
    assert_eq!(ksampler_sigmas(&ms, Scheduler::KlOptimal, 1, 1.0, true).unwrap().len(), 2);
    assert_eq!(Scheduler::KlOptimal.sigmas(&ms, 2).unwrap().len(), 3);
}

#[test]
fn denoise_keeps_the_tail_of_a_longer_schedule() {
    let ms = ModelSigmas::sd15();
    for scheduler in Scheduler::ALL {
        let full = scheduler.sigmas(&ms, 33).unwrap(); // int(20 / 0.6) = 33
        let part = ksampler_sigmas(&ms, scheduler, 20, 0.6, false).unwrap();
        assert_eq!(part, full[full.len() - 21..], "{scheduler}");
        // denoise above 0.9999 is a full schedule; 0 is empty (ComfyUI returns the latent unchanged).
        assert_eq!(ksampler_sigmas(&ms, scheduler, 20, 0.99995, false).unwrap(), scheduler.sigmas(&ms, 20).unwrap());
        assert_eq!(ksampler_sigmas(&ms, scheduler, 20, 0.0, false).unwrap(), Vec::<f64>::new());
        // dpm_2: one more step, penultimate sigma dropped.
        let more = scheduler.sigmas(&ms, 11).unwrap();
        let mut want = more[..more.len() - 2].to_vec();
        want.push(0.0);
        assert_eq!(ksampler_sigmas(&ms, scheduler, 10, 1.0, true).unwrap(), want, "{scheduler}");
    }
}

#[test]
fn bad_parameters_are_errors() {
    let ms = ModelSigmas::sd15();
    for scheduler in Scheduler::ALL {
        assert_eq!(scheduler.sigmas(&ms, 0), Err(ScheduleError::ZeroSteps));
        assert_eq!(ksampler_sigmas(&ms, scheduler, 0, 1.0, false), Err(ScheduleError::ZeroSteps));
        assert_eq!(ksampler_sigmas(&ms, scheduler, 0, 0.5, true), Err(ScheduleError::ZeroSteps));
        for d in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(ksampler_sigmas(&ms, scheduler, 10, d, false), Err(ScheduleError::BadDenoise(_))), "{d}");
        }
        assert!(matches!(ksampler_sigmas(&ms, scheduler, 10, 1e-9, false), Err(ScheduleError::TooManySteps(_))));
        assert!(matches!(scheduler.sigmas(&ms, MAX_SCHEDULE_STEPS + 1), Err(ScheduleError::TooManySteps(_))));
    }
    for name in ["", "Karras", "Beta", "kl-optimal", "linear", "normal ", "align_your_steps"] {
        assert_eq!(Scheduler::from_name(name), Err(ScheduleError::UnknownScheduler(name.into())));
        assert!(name.parse::<Scheduler>().is_err());
    }
    assert!(ModelSigmas::from_betas(&[]).is_err());
    assert!(ModelSigmas::from_betas(&[0.1]).is_err());
    assert!(ModelSigmas::from_betas(&[0.1, 1.0]).is_err());
    assert!(ModelSigmas::from_betas(&[0.1, f64::NAN]).is_err());
    assert!(ModelSigmas::from_sigmas_f64(&[0.5, 0.4]).is_err());
    assert!(ModelSigmas::scaled_linear(0.00085, 0.012, 1).is_err());
}

#[test]
fn scheduler_names_round_trip() {
    let names: Vec<&str> = Scheduler::ALL.iter().map(|s| s.name()).collect();
    // ComfyUI's SCHEDULER_HANDLERS order.
    assert_eq!(
        names,
        [
            "simple",
            "sgm_uniform",
            "karras",
            "exponential",
            "ddim_uniform",
            "beta",
            "normal",
            "linear_quadratic",
            "kl_optimal"
        ]
    );
    assert_eq!(Scheduler::NAMES, &names[..]);
    for s in Scheduler::ALL {
        assert_eq!(Scheduler::from_name(s.name()), Ok(s));
        assert_eq!(s.to_string().parse::<Scheduler>(), Ok(s));
    }
}

#[test]
fn from_betas_matches_sd15() {
    let n = 1000;
    let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let betas: Vec<f64> = (0..n)
        .map(|i| {
            let step = (b - a) / (n - 1) as f64;
            let v = if i < n / 2 { step.mul_add(i as f64, a) } else { (-step).mul_add((n - 1 - i) as f64, b) };
            v * v
        })
        .collect();
    assert_eq!(ModelSigmas::from_betas(&betas).unwrap(), ModelSigmas::sd15());
}

/// Where a schedule's sigma lies halfway between two table entries, the float32 distances ComfyUI compares are
/// equal and it takes the first (lower) timestep; an f64 comparison would pick the other one. `normal` at 19 steps
/// puts its second sigma at t = 943.5 and `sgm_uniform` at 18 steps one at t = 721.5 (999 * k / steps).
#[test]
fn timestep_ties_resolve_to_the_lower_timestep_as_comfyui_does() {
    let ms = ModelSigmas::sd15();
    for (scheduler, steps, step, want) in [(Scheduler::Normal, 19, 1, 943), (Scheduler::SgmUniform, 18, 5, 721)] {
        let sigmas = ksampler_sigmas(&ms, scheduler, steps, 1.0, false).unwrap();
        let sigma = sigmas[step];
        // The tie is real: in f64 the other neighbour is (slightly) nearer.
        let ls = sigma.ln();
        let (d_lo, d_hi) =
            ((ls - f64::from(ms.log_sigmas()[want])).abs(), (ls - f64::from(ms.log_sigmas()[want + 1])).abs());
        assert!(d_hi < d_lo, "{scheduler:?}/{steps}: sigma {sigma} is not an f64 near-tie ({d_lo} vs {d_hi})");
        assert_eq!(ms.timestep(sigma), want, "{scheduler:?} at {steps} steps, sigma {sigma}");
    }
}
