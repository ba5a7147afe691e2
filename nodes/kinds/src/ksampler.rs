//! KSampler: ComfyUI's sampling node. Initial noise from the seed exactly as
//! ComfyUI draws it on the CPU (`torch.randn` with `manual_seed(seed)`),
//! ancestral noise from `seed + 1`, ComfyUI's schedules and k-diffusion's
//! samplers, classifier-free guidance over the UNet on the GPU.
//!
//! Inpainting (a latent with a noise mask, from SetLatentNoiseMask) follows
//! ComfyUI's `KSamplerX0Inpaint` and `KSAMPLER.sample` (`comfy/samplers.py`,
//! Comfy-Org/ComfyUI @ 311c01406130b2acbe8ab291043502de26cf3871): the mask is
//! resized to the latent (`prepare_mask`, see [`expand_noise_mask`]); before
//! every model call the unmasked part of `x` is replaced by the input latent
//! re-noised to the call's sigma, `latent + noise * sigma` (`scale_latent_inpaint`
//! of SD models), and after it the unmasked part of the denoised estimate is the
//! input latent. `noise` is the initial noise, except for `ddim`, whose inpaint
//! noise is a fresh `randn` from `seed + 1` (`inpaint_options={"random": True}`).
//! One addition: where the resized mask is exactly 0 the result is the input
//! latent bit for bit (ComfyUI's sampler lands there only up to rounding).

use std::sync::Arc;

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use crate::payload::ModelHandle;
use crate::payload::{Conditioning, Latent};
use crate::runtime;
use crate::unet_predictor::UnetPredictor;
use models::sampling::noise::{TorchRng, prepare_noise};
use models::sampling::noise_mask::expand_noise_mask;
use models::sampling::samplers::{
    CfgDenoiser, Denoiser, FnHooks, Job, Sampler, StepInfo, initial_latent, max_denoise, sample,
};
use models::sampling::schedulers::{ModelSigmas, Scheduler, ksampler_sigmas};

pub struct KSampler(NodeSchema);

/// The latent's noise mask expanded to the latent (see [`expand_noise_mask`]), if it has one.
fn latent_mask(latent: &Latent) -> Result<Option<Vec<f32>>, NodeError> {
    let Some((mask_shape, data)) = &latent.noise_mask else { return Ok(None) };
    let mask = expand_noise_mask(mask_shape, data, latent.shape);
    mask.map(Some).map_err(|e| err(format!("input \"latent_image\": {e}")))
}

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

/// ComfyUI's `KSamplerX0Inpaint`: a denoiser that only changes the latent
/// where `mask` (one value per latent element, in 0..=1) is above 0.
pub struct InpaintDenoiser<D> {
    pub inner: D,
    /// `[B, C, h, w]`, as the latent.
    pub mask: Vec<f32>,
    /// The input latent (what the unmasked area keeps).
    pub latent: Vec<f32>,
    /// The noise the unmasked area is re-noised with.
    pub noise: Vec<f32>,
}

impl<D: Denoiser> Denoiser for InpaintDenoiser<D> {
    type Error = D::Error;

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, D::Error> {
        // x * mask + (latent + noise * sigma) * (1 - mask), in f64 like the samplers' updates.
        let x_in: Vec<f32> = x
            .iter()
            .zip(&self.mask)
            .zip(self.latent.iter().zip(&self.noise))
            .map(|((&xv, &m), (&l, &n))| {
                let (m, renoised) = (f64::from(m), f64::from(l) + f64::from(n) * sigma);
                (f64::from(xv) * m + renoised * (1.0 - m)) as f32
            })
            .collect();
        let mut out = self.inner.denoise(&x_in, sigma)?;
        // out * mask + latent * (1 - mask); a wrong-length output is left for the sampler to report.
        for ((o, &m), &l) in out.iter_mut().zip(&self.mask).zip(&self.latent) {
            let m = f64::from(m);
            *o = (f64::from(*o) * m + f64::from(l) * (1.0 - m)) as f32;
        }
        Ok(out)
    }

    fn non_finite_cause(&mut self) -> Option<String> {
        self.inner.non_finite_cause()
    }
}

impl NodeKind for KSampler {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = KSamplerFields::read(inputs)?;
        let (model, pos, neg, latent) = (f.model, f.positive, f.negative, f.latent_image);
        let (seed, steps, cfg, denoise) = (f.seed, f.steps, f.cfg, f.denoise);
        let sampler = Sampler::from_name(f.sampler_name.as_str()).map_err(err)?;
        let scheduler = Scheduler::from_name(f.scheduler.as_str()).map_err(err)?;
        if latent.samples.len() != latent.shape.iter().product::<usize>() {
            return Err(err(format!(
                "input \"latent_image\": {} values for the shape {:?}",
                latent.samples.len(),
                latent.shape
            )));
        }
        let mask = latent_mask(&latent)?;

        // SD 1.x's discrete schedule (scaled_linear 0.00085..0.012 over 1000 steps).
        let model_sigmas = ModelSigmas::sd15();
        let sigmas = ksampler_sigmas(&model_sigmas, scheduler, steps, denoise, sampler.discards_penultimate_sigma())
            .map_err(err)?;
        if sigmas.len() < 2 {
            // denoise 0: ComfyUI returns the input unchanged.
            return Ok(vec![Value::shared(latent.clone())]);
        }
        let gpu = runtime::gpu()?;
        let shape = latent.shape;
        let noise = prepare_noise(&shape, seed, None);
        let x = initial_latent(&noise, &latent.samples, sigmas[0], max_denoise(&model_sigmas, sigmas[0]));

        let predictor = UnetPredictor::bind(gpu, &model, &model_sigmas, &pos, &neg, shape)?;
        let cfg_denoiser = CfgDenoiser::new(predictor, model_sigmas.clone(), model.prediction, cfg);
        let mut denoiser: Box<dyn Denoiser<Error = _>> = match &mask {
            None => Box::new(cfg_denoiser),
            Some(mask) => {
                let inpaint_noise = if sampler == Sampler::Ddim {
                    // ComfyUI's ddim: `torch.manual_seed(seed + 1)`, then `randn(noise.shape)`.
                    TorchRng::new(seed.wrapping_add(1)).randn(&shape)
                } else {
                    noise.clone()
                };
                Box::new(InpaintDenoiser {
                    inner: cfg_denoiser,
                    mask: mask.clone(),
                    latent: latent.samples.clone(),
                    noise: inpaint_noise,
                })
            }
        };
        // ComfyUI's default_noise_sampler on the CPU: a fresh generator seeded with seed + 1.
        let mut rng = TorchRng::new(seed.wrapping_add(1));
        let id = ctx.node_id.to_string();
        let progress = ctx.progress;
        let cancel = ctx.cancel;
        let total = (sigmas.len() - 1) as u64;
        let mut hooks = FnHooks {
            on_step: |info: &StepInfo<'_>| {
                progress.step(&id, info.step as u64 + 1, total, "steps");
                // `sdgraph run --preview`: a latent-to-RGB picture every few steps (see preview.rs).
                crate::preview::sampler_step(progress, &id, info, shape);
            },
            is_cancelled: || cancel.load(std::sync::atomic::Ordering::Relaxed),
        };
        let job = Job { denoiser: &mut *denoiser, sigmas: &sigmas, hooks: &mut hooks };
        let mut samples = sample(sampler, job, x, &mut rng).map_err(err)?;
        if let Some(mask) = &mask {
            // ComfyUI's result there is the input up to rounding; make it exact.
            for ((s, &m), &l) in samples.iter_mut().zip(mask).zip(&latent.samples) {
                if m == 0.0 {
                    *s = l;
                }
            }
        }
        // The mask stays on the latent, as ComfyUI's `out = latent.copy()`, so a second KSampler inpaints too.
        let noise_mask = latent.noise_mask.clone();
        Ok(vec![Value::payload(Latent { shape, samples, noise_mask })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::sampling::samplers::NoHooks;

    /// A stand-in model: denoised = 0.5 * x + 0.3, remembering what it was given.
    struct Fake(Vec<Vec<f32>>);

    impl Denoiser for Fake {
        type Error = std::convert::Infallible;

        fn denoise(&mut self, x: &[f32], _sigma: f64) -> Result<Vec<f32>, Self::Error> {
            self.0.push(x.to_vec());
            Ok(x.iter().map(|v| 0.5 * v + 0.3).collect())
        }
    }

    fn inpaint(mask: &[f32]) -> InpaintDenoiser<Fake> {
        let n = mask.len();
        InpaintDenoiser {
            inner: Fake(vec![]),
            mask: mask.to_vec(),
            latent: (0..n).map(|i| i as f32 * 0.1 - 0.2).collect(),
            noise: (0..n).map(|i| 1.0 - i as f32 * 0.3).collect(),
        }
    }

    #[test]
    fn inpaint_denoiser_blends_input_and_output_as_comfyui() {
        let mask = [0.0, 0.25, 1.0, 0.0];
        let mut d = inpaint(&mask);
        let x = [2.0f32, -1.0, 0.5, 3.0];
        let sigma = 1.5;
        let out = d.denoise(&x, sigma).unwrap();
        for i in 0..4 {
            let (m, l, n) = (mask[i] as f64, d.latent[i] as f64, d.noise[i] as f64);
            // x * mask + (latent + noise * sigma) * (1 - mask)
            let x_in = x[i] as f64 * m + (l + n * sigma) * (1.0 - m);
            assert!((d.inner.0[0][i] as f64 - x_in).abs() < 1e-6, "x_in {i}");
            // out * mask + latent * (1 - mask)
            let want = (0.5 * x_in as f32 as f64 + 0.3) * m + l * (1.0 - m);
            assert!((out[i] as f64 - want).abs() < 1e-6, "out {i}");
        }
        // Exact where the mask is 0 or 1.
        assert_eq!(out[0], d.latent[0]);
        assert_eq!(d.inner.0[0][2], x[2]);
    }

    #[test]
    fn sampling_with_the_inpaint_denoiser_lands_on_the_latent_where_unmasked() {
        // What ComfyUI returns before sdgraph's exact copy: the input latent up to rounding.
        let mask = [0.0, 1.0, 0.0, 0.5];
        let mut d = inpaint(&mask);
        let sigmas = [14.6, 5.0, 1.2, 0.3, 0.0];
        let x = initial_latent(&d.noise, &d.latent, sigmas[0], true);
        let latent = d.latent.clone();
        for sampler in [Sampler::Euler, Sampler::Heun, Sampler::Dpmpp2m, Sampler::EulerAncestral] {
            let mut rng = TorchRng::new(1);
            let job = Job { denoiser: &mut d, sigmas: &sigmas, hooks: &mut NoHooks };
            let out = sample(sampler, job, x.clone(), &mut rng).unwrap();
            for i in [0, 2] {
                assert!((out[i] - latent[i]).abs() < 1e-5, "{sampler}: {} vs {}", out[i], latent[i]);
            }
            assert!((out[1] - latent[1]).abs() > 0.1, "{sampler}: the masked element was not sampled");
        }
    }
}
