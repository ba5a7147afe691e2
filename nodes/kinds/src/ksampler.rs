//! KSampler and KSamplerAdvanced: ComfyUI's sampling nodes. Initial noise from the seed exactly as
//! ComfyUI draws it on the CPU (`torch.randn` with `manual_seed(seed)`), ancestral noise from
//! `seed + 1`, ComfyUI's schedules and k-diffusion's samplers, classifier-free guidance over the
//! UNet on the GPU; the run itself (shared with the custom-sampling nodes) is [`crate::sampling_run`].

use std::sync::Arc;

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use crate::payload::{Conditioning, InitialNoise, Latent, ModelHandle};
use crate::sampling_run::{Guidance, SamplingRun, check_latent, model_sigmas, run_sampling, step_range};
use models::sampling::samplers::Sampler;
use models::sampling::schedulers::{Scheduler, ksampler_sigmas};

pub struct KSampler(NodeSchema);

graph::node_fields! {
    struct KSamplerFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet (from CheckpointLoaderSimple)."),
        positive: Arc<Conditioning> = input(PortType::Conditioning, "What the picture should show."),
        negative: Arc<Conditioning> = input(PortType::Conditioning, "What it should not."),
        latent_image: Arc<Latent> = input(PortType::Latent, "Start latents: empty for txt2img, encoded for img2img."),
        seed: u64 = int(0, u64::MAX, 0, "Noise seed, 0 to 2^64 - 1; the same seed gives ComfyUI's CPU noise."),
        steps: usize = int(1, 10000, 20, "Sampling steps."),
        cfg: f64 = float(0.0, 100.0, 8.0, "Classifier-free guidance scale (1 disables the negative prompt)."),
        sampler_name: String = choice(&Sampler::NAMES, "euler", "Sampler, as ComfyUI names them."),
        scheduler: String = choice(&Scheduler::NAMES, "normal", "Noise schedule, as ComfyUI names them."),
        denoise: f64 = float(0.0, 1.0, 1.0, "How much of the schedule to run: below 1 keeps the input (img2img)."),
    }
}

impl KSampler {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("KSampler", "sampling", "Denoises latents with the model, guided by the prompts.")
                .fields(KSamplerFields::declare)
                .output("latent", PortType::Latent, "The denoised latents."),
        )
    }
}

impl Default for KSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for KSampler {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = KSamplerFields::read(inputs)?;
        let sampler = Sampler::from_name(f.sampler_name.as_str()).map_err(err)?;
        let scheduler = Scheduler::from_name(f.scheduler.as_str()).map_err(err)?;
        check_latent(&f.latent_image)?;
        let sigmas = ksampler_sigmas(
            &model_sigmas(&f.model),
            scheduler,
            f.steps,
            f.denoise,
            sampler.discards_penultimate_sigma(),
        )
        .map_err(err)?;
        let run = SamplingRun {
            guidance: Guidance { model: &f.model, positive: &f.positive, negative: Some(&f.negative), cfg: f.cfg },
            sampler,
            sigmas: &sigmas,
            latent: &f.latent_image,
            noise: InitialNoise::Random { seed: f.seed },
            seed: f.seed,
        };
        Ok(vec![run_sampling(ctx, run, false)?.samples])
    }
}

graph::node_fields! {
    struct KSamplerAdvancedFields {
        model: Arc<ModelHandle> = input(PortType::Model, "The UNet (from CheckpointLoaderSimple)."),
        add_noise: String = choice(&["enable", "disable"], "enable", "disable: start from the latent as it is (a second pass over a first pass's leftover noise)."),
        noise_seed: u64 = int(0, u64::MAX, 0, "Noise seed, 0 to 2^64 - 1, as KSampler's seed."),
        steps: usize = int(1, 10000, 20, "Steps of the whole schedule."),
        cfg: f64 = float(0.0, 100.0, 8.0, "Classifier-free guidance scale (1 disables the negative prompt)."),
        sampler_name: String = choice(&Sampler::NAMES, "euler", "Sampler, as ComfyUI names them."),
        scheduler: String = choice(&Scheduler::NAMES, "normal", "Noise schedule, as ComfyUI names them."),
        positive: Arc<Conditioning> = input(PortType::Conditioning, "What the picture should show."),
        negative: Arc<Conditioning> = input(PortType::Conditioning, "What it should not."),
        latent_image: Arc<Latent> = input(PortType::Latent, "Start latents."),
        start_at_step: usize = int(0, 10000, 0, "The first step of the schedule to run; at or past the last, the latent comes back unchanged."),
        end_at_step: usize = int(0, 10000, 10000, "The step to stop at (past the last: run to the end)."),
        return_with_leftover_noise: String = choice(&["disable", "enable"], "disable", "enable: stop at end_at_step's sigma (noise left for a later pass); disable: make that last step go to 0."),
    }
}

/// ComfyUI's KSamplerAdvanced: KSampler over a part of the schedule (`common_ksampler` with `disable_noise`,
/// `start_step`, `last_step`, `force_full_denoise`).
pub struct KSamplerAdvanced(NodeSchema);

impl KSamplerAdvanced {
    pub fn new() -> Self {
        Self(
            NodeSchema::new(
                "KSamplerAdvanced",
                "sampling",
                "KSampler over steps start_at_step..end_at_step of the schedule, with or without new noise.",
            )
            .fields(KSamplerAdvancedFields::declare)
            .output("latent", PortType::Latent, "The (partly) denoised latents."),
        )
    }
}

impl Default for KSamplerAdvanced {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeKind for KSamplerAdvanced {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = KSamplerAdvancedFields::read(inputs)?;
        let sampler = Sampler::from_name(f.sampler_name.as_str()).map_err(err)?;
        let scheduler = Scheduler::from_name(f.scheduler.as_str()).map_err(err)?;
        let enabled = |name: &str, v: &str| match v {
            "enable" => Ok(true),
            "disable" => Ok(false),
            _ => Err(err(format!("param {name:?}: {v:?} is not \"enable\" or \"disable\""))),
        };
        let add_noise = enabled("add_noise", &f.add_noise)?;
        let leftover = enabled("return_with_leftover_noise", &f.return_with_leftover_noise)?;
        check_latent(&f.latent_image)?;
        // KSamplerAdvanced passes denoise 1: the whole schedule, then the part asked for.
        let full =
            ksampler_sigmas(&model_sigmas(&f.model), scheduler, f.steps, 1.0, sampler.discards_penultimate_sigma())
                .map_err(err)?;
        let Some(sigmas) = step_range(full, f.start_at_step, f.end_at_step, !leftover) else {
            // ComfyUI returns the input latent when start_at_step leaves no step to run.
            return Ok(vec![Value::shared(f.latent_image.clone())]);
        };
        let run = SamplingRun {
            guidance: Guidance { model: &f.model, positive: &f.positive, negative: Some(&f.negative), cfg: f.cfg },
            sampler,
            sigmas: &sigmas,
            latent: &f.latent_image,
            noise: if add_noise { InitialNoise::Random { seed: f.noise_seed } } else { InitialNoise::Disabled },
            seed: f.noise_seed,
        };
        Ok(vec![run_sampling(ctx, run, false)?.samples])
    }
}
