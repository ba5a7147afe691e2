//! A sampling run as KSampler, KSamplerAdvanced and the custom-sampling nodes share it: ComfyUI's
//! `comfy.samplers.sample` (a CFGGuider's `sample`) once the sigmas and the noise are chosen.
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

use graph::Value;
use graph::node::err;
use graph::node::{NodeError, RunContext};

use crate::payload::{Conditioning, InitialNoise, Latent, ModelHandle};
use crate::runtime;
use crate::unet_predictor::UnetPredictor;
use models::sampling::noise::{TorchRng, prepare_noise};
use models::sampling::noise_mask::expand_noise_mask;
use models::sampling::samplers::{
    CfgDenoiser, Denoiser, FnHooks, Guided, Job, KSamplerNoise, ModelSampling, SampleError, Sampler, StepInfo,
    initial_latent, max_denoise, sample,
};
use models::sampling::schedulers::ModelSigmas;

/// The latent's noise mask expanded to the latent (see [`expand_noise_mask`]), if it has one.
fn latent_mask(latent: &Latent) -> Result<Option<Vec<f32>>, NodeError> {
    let Some((mask_shape, data)) = &latent.noise_mask else { return Ok(None) };
    let mask = expand_noise_mask(mask_shape, data, latent.shape);
    mask.map(Some).map_err(|e| err(format!("input \"latent_image\": {e}")))
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
        let x_in = self.blend_input(x, sigma);
        let mut out = self.inner.denoise(&x_in, sigma)?;
        self.blend_output(&mut out);
        Ok(out)
    }

    /// The CFG++ call: the guided estimate blended as [`Self::denoise`]'s; the negative prompt's estimate passes
    /// through unmasked (what ComfyUI's post-CFG hook sees, inside the inpainting wrapper).
    fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, D::Error> {
        let x_in = self.blend_input(x, sigma);
        let Some(mut g) = self.inner.denoise_with_uncond(&x_in, sigma)? else { return Ok(None) };
        self.blend_output(&mut g.denoised);
        Ok(Some(g))
    }

    fn non_finite_cause(&mut self) -> Option<String> {
        self.inner.non_finite_cause()
    }

    fn percent_to_sigma(&self, percent: f64) -> Option<f64> {
        self.inner.percent_to_sigma(percent)
    }
}

impl<D> InpaintDenoiser<D> {
    /// `x * mask + (latent + noise * sigma) * (1 - mask)`, in f64 like the samplers' updates.
    fn blend_input(&self, x: &[f32], sigma: f64) -> Vec<f32> {
        x.iter()
            .zip(&self.mask)
            .zip(self.latent.iter().zip(&self.noise))
            .map(|((&xv, &m), (&l, &n))| {
                let (m, renoised) = (f64::from(m), f64::from(l) + f64::from(n) * sigma);
                (f64::from(xv) * m + renoised * (1.0 - m)) as f32
            })
            .collect()
    }

    /// `out * mask + latent * (1 - mask)`; a wrong-length output is left for the sampler to report.
    fn blend_output(&self, out: &mut [f32]) {
        for ((o, &m), &l) in out.iter_mut().zip(&self.mask).zip(&self.latent) {
            let m = f64::from(m);
            *o = (f64::from(*o) * m + f64::from(l) * (1.0 - m)) as f32;
        }
    }
}

/// ComfyUI's `KSampler.sample` cut of a schedule: with `last_step` before the end the sigmas up to it, the last set
/// to 0 when `force_full_denoise`; then from `start_step` on. `None` where `start_step` is at or past the last step
/// (ComfyUI then returns the input latent).
pub fn step_range(
    mut sigmas: Vec<f64>,
    start_step: usize,
    last_step: usize,
    force_full_denoise: bool,
) -> Option<Vec<f64>> {
    if last_step < sigmas.len().saturating_sub(1) {
        sigmas.truncate(last_step + 1);
        if force_full_denoise && let Some(last) = sigmas.last_mut() {
            *last = 0.0;
        }
    }
    if start_step < sigmas.len().saturating_sub(1) { Some(sigmas.split_off(start_step)) } else { None }
}

// The sampling path KSampler, KSamplerAdvanced and the custom-sampling nodes (custom_sampling.rs) share: ComfyUI's
// `comfy.samplers.sample` (a CFGGuider's `sample`) once the sigmas and the noise are chosen.

/// The model's noise levels: SD's discrete schedule (scaled_linear 0.00085..0.012 over 1000 steps), as loaded;
/// ModelSamplingDiscrete's `zsnr` rescales it and its `lcm` takes the 50-step distilled table.
pub fn model_sigmas(model: &ModelHandle) -> ModelSigmas {
    ModelSampling { prediction: model.prediction, zsnr: model.zsnr }.sigmas()
}

/// A latent whose values match its shape (an error naming `latent_image` otherwise).
pub fn check_latent(latent: &Latent) -> Result<(), NodeError> {
    if latent.samples.len() != latent.shape.iter().product::<usize>() {
        return Err(err(format!(
            "input \"latent_image\": {} values for the shape {:?}",
            latent.samples.len(),
            latent.shape
        )));
    }
    Ok(())
}

/// The largest batch_index a latent may carry (ComfyUI draws noise for every index up to it).
const MAX_BATCH_INDEX: usize = 1 << 16;

/// The model and what guides it: ComfyUI's CFGGuider (`negative: None` is BasicGuider's positive alone, run at
/// cfg 1 as ComfyUI's `Guider_Basic`).
pub struct Guidance<'a> {
    pub model: &'a ModelHandle,
    pub positive: &'a Conditioning,
    pub negative: Option<&'a Conditioning>,
    pub cfg: f64,
}

/// One sampling run (ComfyUI's `guider.sample(noise, latent, sampler, sigmas, denoise_mask, seed=seed)`).
pub struct SamplingRun<'a> {
    pub guidance: Guidance<'a>,
    pub sampler: Sampler,
    pub sigmas: &'a [f64],
    /// The input latent; its noise mask, if any, makes the run inpaint.
    pub latent: &'a Arc<Latent>,
    pub noise: InitialNoise,
    /// `seed` of ComfyUI's sample call: the sampler's own noise (and ddim's inpaint noise) comes from `seed + 1`.
    pub seed: u64,
}

/// What a run gives: the latent, and (when asked for) the model's denoised estimate at the last step (ComfyUI's
/// `x0_output`, SamplerCustom's `denoised_output`; the latent itself when no step ran).
pub struct Sampled {
    pub samples: Value,
    pub denoised: Option<Value>,
}

/// Runs `run` (see [`SamplingRun`]); `want_denoised` keeps the last step's denoised estimate.
pub fn run_sampling(ctx: &RunContext<'_>, run: SamplingRun<'_>, want_denoised: bool) -> Result<Sampled, NodeError> {
    let SamplingRun { guidance, sampler, sigmas, latent, noise: initial, seed } = run;
    if sigmas.is_empty() {
        // ComfyUI's CFGGuider.sample returns the input for an empty schedule (KSampler's denoise 0).
        let same = Value::shared(latent.clone());
        return Ok(Sampled { samples: same.clone(), denoised: want_denoised.then_some(same) });
    }
    let mask = latent_mask(latent)?;
    if let Some(inds) = &latent.batch_index {
        // Every draw up to the largest index is made: a bound keeps a bad index from running for hours.
        if inds.len() != latent.shape[0] || inds.iter().any(|&i| i >= MAX_BATCH_INDEX) {
            return Err(err(format!(
                "input \"latent_image\": its batch_index {inds:?} does not fit a batch of {} (one index per \
                 latent, each below {MAX_BATCH_INDEX})",
                latent.shape[0]
            )));
        }
    }
    let model_sigmas = model_sigmas(guidance.model);
    let gpu = runtime::gpu()?;
    let shape = latent.shape;
    let noise = match initial {
        // ComfyUI's prepare_noise with the latent's batch_index: each item's noise as in the batch it came from.
        InitialNoise::Random { seed } => prepare_noise(&shape, seed, latent.batch_index.as_deref()),
        InitialNoise::Disabled => vec![0.0; latent.samples.len()],
    };
    let x = initial_latent(&noise, &latent.samples, sigmas[0], max_denoise(&model_sigmas, sigmas[0]));

    // BasicGuider: the positive alone, at cfg 1.
    let cfg = if guidance.negative.is_some() { guidance.cfg } else { 1.0 };
    // An inpainting UNet's mask and masked image default to the denoise mask and the input latent (ComfyUI's
    // process_conds with latent_image and denoise_mask).
    let predictor =
        UnetPredictor::bind(gpu, guidance.model, &model_sigmas, guidance.positive, guidance.negative, shape)?
            .with_inpaint(&latent.samples, mask.as_deref())?;
    let cfg_denoiser = CfgDenoiser::new(predictor, model_sigmas.clone(), guidance.model.prediction, cfg);
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
    // ComfyUI's noise on the CPU: default_noise_sampler seeded with seed + 1, the SDE samplers' tree with seed.
    let mut rng = KSamplerNoise::new(seed);
    let id = ctx.node_id.to_string();
    let progress = ctx.progress;
    let cancel = ctx.cancel;
    let total = (sigmas.len() - 1) as u64;
    let mut last_denoised: Option<Vec<f32>> = None;
    let mut hooks = FnHooks {
        on_step: |info: &StepInfo<'_>| {
            progress.step(&id, info.step as u64 + 1, total, "steps");
            // `sdgraph run --preview`: a latent-to-RGB picture every few steps (see preview.rs).
            crate::preview::sampler_step(progress, &id, info, shape);
            if want_denoised {
                // ComfyUI's x0_output: the callback's denoised, the last step's winning.
                last_denoised = Some(info.denoised.to_vec());
            }
        },
        is_cancelled: || cancel.load(std::sync::atomic::Ordering::Relaxed),
    };
    let job = Job { denoiser: &mut *denoiser, sigmas, hooks: &mut hooks };
    let mut samples = sample(sampler, job, x, &mut rng).map_err(|e| match e {
        SampleError::BadSigmas(why) => err(format!("input \"sigmas\": {why}")),
        e => err(e),
    })?;
    if let Some(mask) = &mask {
        // ComfyUI's result there is the input up to rounding; make it exact.
        for ((s, &m), &l) in samples.iter_mut().zip(mask).zip(&latent.samples) {
            if m == 0.0 {
                *s = l;
            }
        }
    }
    // The mask stays on the latent, as ComfyUI's `out = latent.copy()`, so a second KSampler inpaints too.
    // So does its batch_index, as ComfyUI's copy.
    let samples = Value::payload(Latent { shape, samples, ..(**latent).clone() });
    let denoised = want_denoised.then(|| match last_denoised {
        Some(d) => Value::payload(Latent { shape, samples: d, ..(**latent).clone() }),
        // No step ran (a single sigma): ComfyUI's denoised_output is the output.
        None => samples.clone(),
    });
    Ok(Sampled { samples, denoised })
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

        /// The negative prompt's estimate: 0.25 * x.
        fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, Self::Error> {
            let denoised = self.denoise(x, sigma)?;
            Ok(Some(Guided { denoised, uncond: x.iter().map(|v| 0.25 * v).collect() }))
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
    fn cfg_pp_calls_pass_through_inpainting_with_the_guided_estimate_blended_and_the_negative_as_is() {
        let mask = [0.0, 0.25, 1.0, 0.0];
        let mut d = inpaint(&mask);
        let x = [2.0f32, -1.0, 0.5, 3.0];
        let plain = inpaint(&mask).denoise(&x, 1.5).unwrap();
        let g = d.denoise_with_uncond(&x, 1.5).unwrap().expect("the inner denoiser gives the negative estimate");
        assert_eq!(g.denoised, plain);
        let x_in = &d.inner.0[0];
        let want: Vec<f32> = x_in.iter().map(|v| 0.25 * v).collect();
        assert_eq!(g.uncond, want);
        // And a CFG++ sampler runs on it (it stopped with NoUncond before).
        let sigmas = [14.6, 5.0, 1.2, 0.3, 0.0];
        let mut rng = TorchRng::new(1);
        let job = Job { denoiser: &mut d, sigmas: &sigmas, hooks: &mut NoHooks };
        let out = sample(Sampler::EulerCfgPp, job, x.to_vec(), &mut rng).unwrap();
        assert_eq!(out[0], d.latent[0], "unmasked: the latent");
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
