//! ComfyUI's custom-sampling nodes (`comfy_extras/nodes_custom_sampler.py`, Comfy-Org/ComfyUI @
//! 4be318aa1a66b91c028028cb587b6c27848fb6bf): the sampler, the sigmas, the noise and the guider as separate
//! values (SAMPLER, SIGMAS, NOISE, GUIDER) and the two nodes that sample with them, SamplerCustom and
//! SamplerCustomAdvanced. Both run KSampler's path ([`crate::sampling_run::run_sampling`]: the same noise, the
//! conditionings bound through the same UnetPredictor, inpainting with the latent's noise mask), so a SamplerCustom
//! over KSamplerSelect and BasicScheduler is KSampler bit for bit (for the samplers whose KSampler schedule is not
//! computed one step longer: `dpm_2`, `uni_pc` and `uni_pc_bh2` drop a sigma in KSampler only, as in ComfyUI).
//!
//! - KSamplerSelect: `sampler_name` -> SAMPLER.
//! - BasicScheduler (model, scheduler, steps, denoise), KarrasScheduler (steps, sigma_max, sigma_min, rho),
//!   ExponentialScheduler (steps, sigma_max, sigma_min), SDTurboScheduler (model, steps, denoise) -> SIGMAS.
//! - SplitSigmas (sigmas, step -> high_sigmas, low_sigmas), SetFirstSigma (sigmas, sigma).
//! - RandomNoise (noise_seed), DisableNoise -> NOISE.
//! - BasicGuider (model, conditioning), CFGGuider (model, positive, negative, cfg) -> GUIDER.
//! - SamplerCustom (model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image) and
//!   SamplerCustomAdvanced (noise, guider, sampler, sigmas, latent_image) -> output, denoised_output (the model's
//!   denoised estimate at the last step, ComfyUI's `x0_output`; the output itself when no step ran).

use std::sync::Arc;

use graph::node::NodeError;
use graph::node::err;
use graph::registry::DuplicateKind;
use graph::{PortType, Registry, Value};

use crate::payload::{Conditioning, Guider, InitialNoise, Latent, ModelHandle, SamplerChoice, Sigmas};
use crate::sampling_run::{Guidance, SamplingRun, check_latent, model_sigmas, run_sampling};
use models::sampling::samplers::Sampler;
use models::sampling::schedulers::{MAX_SCHEDULE_STEPS, Scheduler, exponential, karras};

/// Registers the custom-sampling kinds.
pub fn register(reg: &mut Registry) -> Result<(), DuplicateKind> {
    reg.register(Arc::new(KSamplerSelect::new()))?;
    reg.register(Arc::new(BasicScheduler::new()))?;
    reg.register(Arc::new(KarrasScheduler::new()))?;
    reg.register(Arc::new(ExponentialScheduler::new()))?;
    reg.register(Arc::new(SdTurboScheduler::new()))?;
    reg.register(Arc::new(SplitSigmas::new()))?;
    reg.register(Arc::new(SetFirstSigma::new()))?;
    reg.register(Arc::new(RandomNoise::new()))?;
    reg.register(Arc::new(DisableNoise::new()))?;
    reg.register(Arc::new(BasicGuider::new()))?;
    reg.register(Arc::new(CfgGuider::new()))?;
    reg.register(Arc::new(SamplerCustom::new()))?;
    reg.register(Arc::new(SamplerCustomAdvanced::new()))?;
    Ok(())
}

/// ComfyUI's float32 SIGMAS tensor of `values`.
fn sigmas_value(values: impl IntoIterator<Item = f64>) -> Value {
    Value::payload(Sigmas(values.into_iter().map(|s| f64::from(s as f32)).collect()))
}

// ---- SAMPLER ----

graph::node_fields! {
    struct KSamplerSelectFields {
        sampler_name: String = choice(&Sampler::NAMES, "euler", "Sampler, as ComfyUI names them."),
    }
}

node_kind!(
    KSamplerSelect,
    "KSamplerSelect",
    "model/sampling/samplers",
    "A sampler by name, with ComfyUI's default options, for SamplerCustom.",
    KSamplerSelectFields,
    [("sampler", Sampler, "The sampler.")],
    |_, f| Ok(vec![Value::payload(SamplerChoice(Sampler::from_name(&f.sampler_name).map_err(err)?))])
);

// ---- SIGMAS ----

graph::node_fields! {
    struct BasicSchedulerFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The model whose noise levels the schedule uses."),
        scheduler: String = choice(&Scheduler::NAMES, "normal", "Noise schedule, as ComfyUI names them."),
        steps: usize = int(1, 10000, 20, "Steps."),
        denoise: f64 = float(0.0, 1.0, 1.0, "Below 1: the last `steps` steps of a schedule of steps / denoise (img2img)."),
    }
}

node_kind!(
    BasicScheduler,
    "BasicScheduler",
    "model/sampling/schedulers",
    "The schedule KSampler would use, as SIGMAS.",
    BasicSchedulerFields,
    [("sigmas", Sigmas, "steps + 1 sigmas, the last 0 (none at denoise 0).")],
    |_, f| {
        // ComfyUI's BasicScheduler (not KSampler's 0.9999 threshold): denoise below 1 stretches the schedule.
        let mut total = f.steps;
        if f.denoise < 1.0 {
            if f.denoise <= 0.0 {
                return Ok(vec![sigmas_value([])]);
            }
            let stretched = f.steps as f64 / f.denoise;
            if stretched > MAX_SCHEDULE_STEPS as f64 {
                return Err(err(format!(
                    "param \"denoise\": {} asks for a schedule of {stretched:.0} steps, more than the {MAX_SCHEDULE_STEPS} \
                     supported",
                    f.denoise
                )));
            }
            total = stretched as usize;
        }
        let scheduler = Scheduler::from_name(&f.scheduler).map_err(err)?;
        let all = scheduler.sigmas(&model_sigmas(&f.model), total).map_err(err)?;
        let keep = (f.steps + 1).min(all.len());
        Ok(vec![sigmas_value(all[all.len() - keep..].iter().copied())])
    }
);

graph::node_fields! {
    struct KarrasSchedulerFields {
        steps: usize = int(1, 10000, 20, "Steps."),
        sigma_max: f64 = float(0.0, 5000.0, 14.614642, "The first sigma."),
        sigma_min: f64 = float(0.0, 5000.0, 0.0291675, "The last sigma before 0."),
        rho: f64 = float(0.0, 100.0, 7.0, "Karras et al.'s rho: higher spends more steps at low noise."),
    }
}

node_kind!(
    KarrasScheduler,
    "KarrasScheduler",
    "model/sampling/schedulers",
    "Karras et al. (2022)'s schedule between sigma_max and sigma_min, then 0.",
    KarrasSchedulerFields,
    [("sigmas", Sigmas, "steps + 1 sigmas, the last 0.")],
    |_, f| {
        if f.rho <= 0.0 {
            // ComfyUI divides by rho (`1 / rho`): 0 fails there too.
            return Err(err(format!("param \"rho\": {} must be above 0 (the schedule takes 1 / rho)", f.rho)));
        }
        Ok(vec![sigmas_value(karras(f.steps, f.sigma_min, f.sigma_max, f.rho))])
    }
);

graph::node_fields! {
    struct ExponentialSchedulerFields {
        steps: usize = int(1, 10000, 20, "Steps."),
        sigma_max: f64 = float(0.0, 5000.0, 14.614642, "The first sigma."),
        sigma_min: f64 = float(0.0, 5000.0, 0.0291675, "The last sigma before 0."),
    }
}

node_kind!(
    ExponentialScheduler,
    "ExponentialScheduler",
    "model/sampling/schedulers",
    "Sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0.",
    ExponentialSchedulerFields,
    [("sigmas", Sigmas, "steps + 1 sigmas, the last 0.")],
    |_, f| {
        for (name, v) in [("sigma_max", f.sigma_max), ("sigma_min", f.sigma_min)] {
            if v <= 0.0 {
                // ComfyUI takes math.log of both, which fails at 0.
                return Err(err(format!("param {name:?}: {v} must be above 0 (the schedule is spaced in log sigma)")));
            }
        }
        Ok(vec![sigmas_value(exponential(f.steps, f.sigma_min, f.sigma_max))])
    }
);

graph::node_fields! {
    struct SdTurboSchedulerFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The model whose noise levels the schedule uses."),
        steps: usize = int(1, 10, 1, "Steps (SD Turbo's timesteps 999, 899, ... 99)."),
        denoise: f64 = float(0.0, 1.0, 1.0, "Below 1: start that many tenths further down."),
    }
}

node_kind!(
    SdTurboScheduler,
    "SDTurboScheduler",
    "model/sampling/schedulers",
    "SD Turbo's schedule: the model's sigmas at timesteps 999, 899, ... 99, then 0.",
    SdTurboSchedulerFields,
    [("sigmas", Sigmas, "Up to steps + 1 sigmas, the last 0.")],
    |_, f| {
        let model = model_sigmas(&f.model);
        // start_step = 10 - int(10 * denoise); timesteps = [999, 899, ..., 99][start_step:start_step + steps].
        let start = 10 - ((10.0 * f.denoise) as usize).min(10);
        let timesteps = (0..10usize).map(|i| 999 - 100 * i).skip(start).take(f.steps);
        // model_sampling.sigma(t) at whole timesteps: exp(log_sigmas[t]), in float32.
        let sigmas = timesteps.map(|t| model.t_to_sigma(t as f64)).chain([0.0]);
        Ok(vec![sigmas_value(sigmas)])
    }
);

graph::node_fields! {
    struct SplitSigmasFields {
        sigmas: Arc<Sigmas> = input(PortType::Sigmas, "The schedule to split."),
        step: usize = int(0, 10000, 0, "Where to split: high gets sigmas 0..=step, low gets step.. (both hold that sigma)."),
    }
}

node_kind!(
    SplitSigmas,
    "SplitSigmas",
    "model/sampling/sigmas",
    "Splits a schedule at a step, for two passes (the second with add_noise off).",
    SplitSigmasFields,
    [
        ("high_sigmas", Sigmas, "sigmas[..=step] (all of them past the end)."),
        ("low_sigmas", Sigmas, "sigmas[step..] (none past the end).")
    ],
    |_, f| {
        // Python's sigmas[:step + 1] and sigmas[step:].
        let s = &f.sigmas.0;
        let (high, low) = (&s[..(f.step.saturating_add(1)).min(s.len())], &s[f.step.min(s.len())..]);
        Ok(vec![Value::payload(Sigmas(high.to_vec())), Value::payload(Sigmas(low.to_vec()))])
    }
);

graph::node_fields! {
    struct SetFirstSigmaFields {
        sigmas: Arc<Sigmas> = input(PortType::Sigmas, "The schedule."),
        sigma: f64 = float(0.0, 20000.0, 136.0, "The new first sigma."),
    }
}

node_kind!(
    SetFirstSigma,
    "SetFirstSigma",
    "model/sampling/sigmas",
    "The schedule with its first sigma replaced.",
    SetFirstSigmaFields,
    [("sigmas", Sigmas, "The same sigmas but the first.")],
    |_, f| {
        let mut s = f.sigmas.0.clone();
        let Some(first) = s.first_mut() else {
            return Err(err("input \"sigmas\": the schedule is empty, it has no first sigma to set"));
        };
        *first = f.sigma;
        Ok(vec![sigmas_value(s)])
    }
);

// ---- NOISE ----

graph::node_fields! {
    struct RandomNoiseFields {
        noise_seed: u64 = int(0, u64::MAX, 0, "Noise seed, 0 to 2^64 - 1, as KSampler's seed."),
    }
}

node_kind!(
    RandomNoise,
    "RandomNoise",
    "model/sampling/noise",
    "The initial noise KSampler draws for a seed.",
    RandomNoiseFields,
    [("noise", Noise, "The noise.")],
    |_, f| Ok(vec![Value::payload(InitialNoise::Random { seed: f.noise_seed })])
);

graph::node_fields! {
    struct DisableNoiseFields {}
}

node_kind!(
    DisableNoise,
    "DisableNoise",
    "model/sampling/noise",
    "No initial noise: sampling starts from the latent as it is (its sampler noise from seed 0, as ComfyUI's).",
    DisableNoiseFields,
    [("noise", Noise, "Zeros.")],
    |_, _| Ok(vec![Value::payload(InitialNoise::Disabled)])
);

// ---- GUIDER ----

/// An error naming `input` when `c` has no entries (UnetPredictor would refuse it only when sampling).
fn non_empty(c: &Conditioning, input: &str) -> Result<(), NodeError> {
    if c.entries.is_empty() { Err(err(format!("input {input:?}: an empty conditioning"))) } else { Ok(()) }
}

graph::node_fields! {
    struct BasicGuiderFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet."),
        conditioning: Arc<Conditioning> = input(PortType::Conditioning, "The prompt, run alone (no negative, cfg 1)."),
    }
}

node_kind!(
    BasicGuider,
    "BasicGuider",
    "model/sampling/guiders",
    "The model guided by one conditioning, without classifier-free guidance.",
    BasicGuiderFields,
    [("guider", Guider, "The guider.")],
    |_, f| {
        non_empty(&f.conditioning, "conditioning")?;
        Ok(vec![Value::payload(Guider { model: f.model, positive: f.conditioning, negative: None, cfg: 1.0 })])
    }
);

graph::node_fields! {
    struct CfgGuiderFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet."),
        positive: Arc<Conditioning> = input(PortType::Conditioning, "What the picture should show."),
        negative: Arc<Conditioning> = input(PortType::Conditioning, "What it should not."),
        cfg: f64 = float(0.0, 100.0, 8.0, "Classifier-free guidance scale (1 disables the negative prompt)."),
    }
}

node_kind!(
    CfgGuider,
    "CFGGuider",
    "model/sampling/guiders",
    "The model with classifier-free guidance between two conditionings, as KSampler's.",
    CfgGuiderFields,
    [("guider", Guider, "The guider.")],
    |_, f| {
        non_empty(&f.positive, "positive")?;
        non_empty(&f.negative, "negative")?;
        Ok(vec![Value::payload(Guider {
            model: f.model,
            positive: f.positive,
            negative: Some(f.negative),
            cfg: f.cfg,
        })])
    }
);

// ---- Sampling ----

graph::node_fields! {
    struct SamplerCustomFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet."),
        add_noise: bool = bool(true, "Whether to add the seed's noise (off: start from the latent as it is)."),
        noise_seed: u64 = int(0, u64::MAX, 0, "Noise seed, 0 to 2^64 - 1; also seeds the sampler's own noise."),
        cfg: f64 = float(0.0, 100.0, 8.0, "Classifier-free guidance scale (1 disables the negative prompt)."),
        positive: Arc<Conditioning> = input(PortType::Conditioning, "What the picture should show."),
        negative: Arc<Conditioning> = input(PortType::Conditioning, "What it should not."),
        sampler: Arc<SamplerChoice> = input(PortType::Sampler, "The sampler (KSamplerSelect)."),
        sigmas: Arc<Sigmas> = input(PortType::Sigmas, "The schedule (BasicScheduler and the like)."),
        latent_image: Arc<Latent> = input(PortType::Latent, "Start latents."),
    }
}

node_kind!(
    SamplerCustom,
    "SamplerCustom",
    "model/sampling/custom",
    "KSampler with the sampler and the schedule given as values.",
    SamplerCustomFields,
    [
        ("output", Latent, "The sampled latents."),
        ("denoised_output", Latent, "The model's denoised estimate at the last step.")
    ],
    |ctx, f| {
        check_latent(&f.latent_image)?;
        let noise = if f.add_noise { InitialNoise::Random { seed: f.noise_seed } } else { InitialNoise::Disabled };
        let run = SamplingRun {
            guidance: Guidance { model: &f.model, positive: &f.positive, negative: Some(&f.negative), cfg: f.cfg },
            sampler: f.sampler.0,
            sigmas: &f.sigmas.0,
            latent: &f.latent_image,
            noise,
            // ComfyUI's SamplerCustom passes noise_seed whether or not it adds the noise.
            seed: f.noise_seed,
        };
        let out = run_sampling(ctx, run, true)?;
        Ok(vec![out.samples.clone(), out.denoised.unwrap_or(out.samples)])
    }
);

graph::node_fields! {
    struct SamplerCustomAdvancedFields {
        noise: Arc<InitialNoise> = input(PortType::Noise, "The initial noise (RandomNoise, DisableNoise)."),
        guider: Arc<Guider> = input(PortType::Guider, "The model and its guidance (CFGGuider, BasicGuider)."),
        sampler: Arc<SamplerChoice> = input(PortType::Sampler, "The sampler (KSamplerSelect)."),
        sigmas: Arc<Sigmas> = input(PortType::Sigmas, "The schedule (BasicScheduler and the like)."),
        latent_image: Arc<Latent> = input(PortType::Latent, "Start latents."),
    }
}

node_kind!(
    SamplerCustomAdvanced,
    "SamplerCustomAdvanced",
    "model/sampling/custom",
    "Samples with a noise, a guider, a sampler and a schedule given as values.",
    SamplerCustomAdvancedFields,
    [
        ("output", Latent, "The sampled latents."),
        ("denoised_output", Latent, "The model's denoised estimate at the last step.")
    ],
    |ctx, f| {
        check_latent(&f.latent_image)?;
        let g = &*f.guider;
        let run = SamplingRun {
            guidance: Guidance { model: &g.model, positive: &g.positive, negative: g.negative.as_deref(), cfg: g.cfg },
            sampler: f.sampler.0,
            sigmas: &f.sigmas.0,
            latent: &f.latent_image,
            noise: *f.noise,
            // ComfyUI passes `noise.seed`: the seed of RandomNoise, 0 for DisableNoise.
            seed: f.noise.seed(),
        };
        let out = run_sampling(ctx, run, true).map_err(|e| {
            // The conditionings came in through the guider: say so.
            if e.message.starts_with("input \"positive\"") || e.message.starts_with("input \"negative\"") {
                err(format!("input \"guider\": its {}", e.message.trim_start_matches("input ")))
            } else {
                e
            }
        })?;
        Ok(vec![out.samples.clone(), out.denoised.unwrap_or(out.samples)])
    }
);
