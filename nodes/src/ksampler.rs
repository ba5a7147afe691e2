//! KSampler: ComfyUI's sampling node. Initial noise from the seed exactly as
//! ComfyUI draws it on the CPU (`torch.randn` with `manual_seed(seed)`),
//! ancestral noise from `seed + 1`, ComfyUI's schedules and k-diffusion's
//! samplers, classifier-free guidance over the UNet on the GPU.

use std::sync::Arc;

use engine::gpu::ops::layout::concat;
use engine::gpu::{DType, Gpu, Tensor};
use engine::node::{NodeError, NodeInputs, NodeKind, NodeSchema, ParamKind, ParamValue, RunContext};
use engine::{PortType, Value};

use crate::checkpoint_loader::ModelHandle;
use crate::latent::{Conditioning, Latent};
use crate::runtime;
use crate::sampling::noise::{TorchRng, prepare_noise};
use crate::sampling::samplers::{
    CfgDenoiser, FnHooks, NetOutput, NoisePredictor, Sampler, StepInfo, initial_latent, max_denoise, sample,
};
use crate::sampling::schedulers::{ModelSigmas, Scheduler, ksampler_sigmas};
use crate::vae_nodes::latent_of;

pub const SAMPLER_NAMES: [&str; 9] =
    ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim", "lcm"];
pub const SCHEDULER_NAMES: [&str; 6] = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"];

pub struct KSampler(NodeSchema);

impl KSampler {
    pub fn new() -> Self {
        Self(
            NodeSchema::new("KSampler", "sampling", "Denoises latents with the model, guided by the prompts.")
                .input("model", PortType::Model, "The UNet (from CheckpointLoaderSimple).")
                .input("positive", PortType::Conditioning, "What the picture should show.")
                .input("negative", PortType::Conditioning, "What it should not.")
                .input("latent_image", PortType::Latent, "Start latents: empty for txt2img, encoded for img2img.")
                .param(
                    "seed",
                    ParamKind::Int { min: 0, max: i64::MAX },
                    Some(ParamValue::Int(0)),
                    "Noise seed; the same seed gives ComfyUI's CPU noise.",
                )
                .int("steps", 1, 10000, 20, "Sampling steps.")
                .float("cfg", 0.0, 100.0, 8.0, "Classifier-free guidance scale (1 disables the negative prompt).")
                .choice("sampler_name", &SAMPLER_NAMES, "euler", "Sampler, as ComfyUI names them.")
                .choice("scheduler", &SCHEDULER_NAMES, "normal", "Noise schedule, as ComfyUI names them.")
                .float("denoise", 0.0, 1.0, 1.0, "How much of the schedule to run: below 1 keeps the input (img2img).")
                .output("latent", PortType::Latent, "The denoised latents."),
        )
    }
}

impl Default for KSampler {
    fn default() -> Self {
        Self::new()
    }
}

fn err(e: impl std::fmt::Display) -> NodeError {
    NodeError::new(e.to_string())
}

fn cond_of(inputs: &NodeInputs, name: &str) -> Result<Arc<Conditioning>, NodeError> {
    inputs
        .input(name)?
        .downcast::<Conditioning>()
        .ok_or_else(|| NodeError::new(format!("input {name:?} is not conditioning")))
}

/// The UNet with both prompts bound: one batched call for cond and uncond
/// when their token lengths agree, two calls otherwise.
struct UnetPredictor<'a> {
    gpu: &'a Gpu,
    model: &'a ModelHandle,
    shape: [usize; 4],
    /// `[B, L, C]` each, repeated over the batch.
    pos: Tensor,
    neg: Tensor,
    /// `[2B, L, C]`, uncond first, when the lengths allow batching.
    both: Option<Tensor>,
}

impl UnetPredictor<'_> {
    fn run(&self, x: &[f32], copies: usize, timestep: f64, context: &Tensor) -> Result<Vec<f32>, NodeError> {
        let [b, c, h, w] = self.shape;
        let mut batch = Vec::with_capacity(x.len() * copies);
        for _ in 0..copies {
            batch.extend_from_slice(x);
        }
        let xt = self.gpu.upload(&batch, &[b * copies, c, h, w], DType::F32).map_err(err)?;
        let t = vec![timestep as f32; b * copies];
        let out = self.model.unet.forward(self.gpu, &xt, &t, context).map_err(err)?;
        self.gpu.download(&out).map_err(err)
    }
}

impl NoisePredictor for UnetPredictor<'_> {
    type Error = NodeError;

    fn predict(&mut self, x_in: &[f32], timestep: f64, _sigma: f64, with_uncond: bool) -> Result<NetOutput, NodeError> {
        if !with_uncond {
            return Ok(NetOutput { cond: self.run(x_in, 1, timestep, &self.pos)?, uncond: None });
        }
        if let Some(both) = &self.both {
            let mut out = self.run(x_in, 2, timestep, both)?;
            let cond = out.split_off(x_in.len());
            return Ok(NetOutput { cond, uncond: Some(out) });
        }
        let uncond = self.run(x_in, 1, timestep, &self.neg)?;
        let cond = self.run(x_in, 1, timestep, &self.pos)?;
        Ok(NetOutput { cond, uncond: Some(uncond) })
    }
}

/// `cond [1, L, C]` repeated to `[n, L, C]`.
fn repeat(gpu: &Gpu, cond: &Tensor, n: usize) -> Result<Tensor, NodeError> {
    if n == 1 {
        return Ok(cond.clone());
    }
    let parts: Vec<&Tensor> = std::iter::repeat_n(cond, n).collect();
    concat(gpu, &parts, 0).map_err(err)
}

impl NodeKind for KSampler {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let model = inputs
            .input("model")?
            .downcast::<ModelHandle>()
            .ok_or_else(|| NodeError::new("input \"model\" is not a loaded model"))?;
        let pos = cond_of(inputs, "positive")?;
        let neg = cond_of(inputs, "negative")?;
        let latent = latent_of(inputs, "latent_image")?;
        let seed = inputs.int("seed")? as u64;
        let steps = inputs.usize("steps")?;
        let cfg = inputs.float("cfg")?;
        let denoise = inputs.float("denoise")?;
        let sampler = Sampler::from_name(inputs.str("sampler_name")?).map_err(err)?;
        let scheduler = Scheduler::from_name(inputs.str("scheduler")?).map_err(err)?;
        if latent.noise_mask.is_some() {
            return Err(NodeError::new("latent noise masks (inpainting) are not supported by KSampler yet"));
        }

        // SD 1.x's discrete schedule (scaled_linear 0.00085..0.012 over 1000 steps).
        let model_sigmas = ModelSigmas::sd15();
        let sigmas = ksampler_sigmas(&model_sigmas, scheduler, steps, denoise, sampler.discards_penultimate_sigma())
            .map_err(err)?;
        if sigmas.len() < 2 {
            // denoise 0: ComfyUI returns the input unchanged.
            return Ok(vec![Value::Opaque(PortType::Latent, latent.clone())]);
        }
        let gpu = runtime::gpu()?;
        let shape = latent.shape;
        let b = shape[0];
        let noise = prepare_noise(&shape, seed, None);
        let x = initial_latent(&noise, &latent.samples, sigmas[0], max_denoise(&model_sigmas, sigmas[0]));

        let pos_t = repeat(gpu, &pos.cond, b)?;
        let neg_t = repeat(gpu, &neg.cond, b)?;
        let both = if pos.cond.shape() == neg.cond.shape() {
            // [2B, L, C]: uncond first, as the predictor splits it.
            Some(concat(gpu, &[&neg_t, &pos_t], 0).map_err(err)?)
        } else {
            None
        };
        let predictor = UnetPredictor { gpu, model: &model, shape, pos: pos_t, neg: neg_t, both };
        let mut denoiser = CfgDenoiser::new(predictor, model_sigmas.clone(), model.prediction, cfg);
        // ComfyUI's default_noise_sampler on the CPU: a fresh generator seeded with seed + 1.
        let mut rng = TorchRng::new(seed.wrapping_add(1));
        let id = ctx.node_id.to_string();
        let progress = ctx.progress;
        let cancel = ctx.cancel;
        let total = (sigmas.len() - 1) as u64;
        let mut hooks = FnHooks {
            on_step: |info: &StepInfo<'_>| progress.step(&id, info.step as u64 + 1, total, "steps"),
            is_cancelled: || cancel.load(std::sync::atomic::Ordering::Relaxed),
        };
        let samples = sample(sampler, &mut denoiser, x, &sigmas, &mut rng, &mut hooks).map_err(err)?;
        Ok(vec![Value::Opaque(PortType::Latent, Arc::new(Latent { shape, samples, noise_mask: None }))])
    }
}
