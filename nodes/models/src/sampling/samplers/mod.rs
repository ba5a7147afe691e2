//! k-diffusion samplers as ComfyUI's KSampler runs them, on flat f32 latents, with the model behind a trait.
//!
//! Mirrors k-diffusion 0.1.1.post1 (`k_diffusion/sampling.py`, crowsonkb/k-diffusion) and ComfyUI's adaptation of
//! it, `comfy/k_diffusion/sampling.py` (read at rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae, a
//! fork tracking Comfy-Org/ComfyUI), with ComfyUI's name mapping from `comfy/samplers.py` (Comfy-Org/ComfyUI @
//! 311c01406130b2acbe8ab291043502de26cf3871: `ddim` is `ksampler("euler", inpaint_options={"random": True})`,
//! `DISCARD_PENULTIMATE_SIGMA_SAMPLERS`). The samplers ComfyUI added since (the CFG++ ones, ddpm, ipndm, deis,
//! res_multistep, gradient_estimation, heunpp2, dpmpp_2m_sde_heun, dpmpp_3m_sde, er_sde, seeds_2/3, sa_solver,
//! dpm_adaptive...) mirror Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832's
//! `comfy/k_diffusion/sampling.py`, `sa_solver.py` and `samplers.py` (`KSAMPLER_NAMES`, all of which are here). tests/models/samplers.rs checks every
//! sampler against k-diffusion's own functions (and ComfyUI's `sample_lcm`, `sample_unipc` and, for those newer
//! ones, ComfyUI's own sampling.py) run in float64 on a fake model.
//!
//! - [`Denoiser`]: `x, sigma -> denoised` (k-diffusion's `model(x, sigma)`); [`CfgDenoiser`] builds one from a
//!   network that predicts eps or v, with ComfyUI's input scaling, timestep and classifier-free guidance.
//! - [`NoiseSource`]: the Gaussian noise ancestral/SDE samplers add (k-diffusion's `noise_sampler(sigma,
//!   sigma_next)`); the crate's `TorchRng` is one, [`BrownianTreeNoise`] is ComfyUI's torchsde Brownian tree for the
//!   SDE samplers, [`BrownianNoise`] turns any stream into Brownian increments.
//! - [`SamplerHooks`]: a per-step callback (ComfyUI's `callback(i, denoised, x, total_steps)`) and a cancel check.
//! - [`Sampler`] and [`sample`]: the samplers by ComfyUI name; the `sample_*` functions take explicit options.
//!
//! Arithmetic: the latent stays f32 between steps (the model takes and returns f32) and every update is computed in
//! f64 per element from f64 sigmas, then rounded to f32. Features not mirrored: `s_churn` (KSampler never sets
//! it), inpainting masks (the caller's job), and the RF/CONST-model variants ComfyUI switches to for flow models.

mod ancestral;
mod brownian;
mod cfg_pp;
mod ddpm;
mod dpm_solver;
mod dpmpp;
mod er_sde;
mod euler;
mod gradient_estimation;
mod heun;
mod lcm;
mod model;
mod multistep;
mod res_multistep;
mod sa_solver;
mod seeds;
mod torchsde;
mod unipc;

use std::fmt;
use std::str::FromStr;

pub use ancestral::{sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral};
pub use brownian::BrownianNoise;
pub use cfg_pp::{sample_dpmpp_2m_cfg_pp, sample_dpmpp_2s_ancestral_cfg_pp, sample_euler_ancestral_cfg_pp};
pub use ddpm::sample_ddpm;
pub use dpm_solver::{sample_dpm_adaptive, sample_dpm_fast};
pub use dpmpp::{
    sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun, sample_dpmpp_3m_sde, sample_dpmpp_sde,
};
pub use er_sde::sample_er_sde;
pub use euler::{sample_euler, sample_euler_ancestral};
pub use gradient_estimation::sample_gradient_estimation;
pub use heun::{sample_dpm_2, sample_heun, sample_heunpp2};
pub use lcm::sample_lcm;
pub use model::{
    CfgDenoiser, CfgError, CondPart, LatentArea, ModelSampling, NetOutput, NoisePredictor, Prediction, initial_latent,
    max_denoise,
};
pub use multistep::{sample_deis, sample_ipndm, sample_ipndm_v, sample_lms};
pub use res_multistep::sample_res_multistep;
pub use sa_solver::sample_sa_solver;
pub use seeds::{sample_seeds_2, sample_seeds_3};
pub use torchsde::{BrownianTree, BrownianTreeNoise, SeedSequence};
pub use unipc::{UniPcVariant, sample_unipc};

use crate::sampling::noise::TorchRng;

/// The model as samplers see it: the denoised (x0) estimate of `x` at noise level `sigma`.
pub trait Denoiser {
    type Error;

    /// `x` has the latent's length; the result must too.
    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, Self::Error>;

    /// The CFG++ samplers' model call: the guided denoised estimate with the negative prompt's own (ComfyUI's
    /// `uncond_denoised`, which those samplers read through a `sampler_post_cfg_function`), the negative prompt run
    /// even at cfg 1 (they set `disable_cfg1_optimization`). `None` (the default): this denoiser cannot give it, and
    /// those samplers stop with [`SampleError::NoUncond`].
    fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, Self::Error> {
        let _ = (x, sigma);
        Ok(None)
    }

    /// Why the last call's output held NaN or infinity, when the denoiser can tell better than "the checkpoint or
    /// f16" (a ControlNet whose residuals did it, say); asked only after such an output.
    fn non_finite_cause(&mut self) -> Option<String> {
        None
    }

    /// The model's `model_sampling.percent_to_sigma(percent)` (see `ModelSigmas::percent_to_sigma`), for the samplers
    /// that place something on the model's own schedule (`sa_solver`'s stochastic interval). `None` (the default):
    /// this denoiser does not know its model's schedule, and those samplers take SD 1.x's.
    fn percent_to_sigma(&self, percent: f64) -> Option<f64> {
        let _ = percent;
        None
    }
}

/// What [`Denoiser::denoise_with_uncond`] returns: both denoised estimates of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Guided {
    /// The guided estimate (what [`Denoiser::denoise`] returns, but with the negative prompt run even at cfg 1).
    pub denoised: Vec<f32>,
    /// The negative prompt's denoised estimate.
    pub uncond: Vec<f32>,
}

impl<D: Denoiser + ?Sized> Denoiser for &mut D {
    type Error = D::Error;

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, Self::Error> {
        (**self).denoise(x, sigma)
    }

    fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, Self::Error> {
        (**self).denoise_with_uncond(x, sigma)
    }

    fn non_finite_cause(&mut self) -> Option<String> {
        (**self).non_finite_cause()
    }

    fn percent_to_sigma(&self, percent: f64) -> Option<f64> {
        (**self).percent_to_sigma(percent)
    }
}

/// Standard normal noise for ancestral and SDE steps: k-diffusion's `noise_sampler(sigma, sigma_next)`, which
/// returns a latent-shaped N(0, 1) sample for the step from `sigma` to `sigma_next`. Plain generators ignore the
/// sigmas; [`BrownianTreeNoise`] and [`BrownianNoise`] use them.
pub trait NoiseSource {
    /// Fills `out` (one latent) with N(0, 1) noise.
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]);

    /// The KSampler seed (ComfyUI's `extra_args["seed"]`) when this is ComfyUI's default noise stream for it: then
    /// [`sample`] gives the Brownian SDE samplers (`dpmpp_sde`, `dpmpp_2m_sde`, `dpmpp_2m_sde_heun`, `dpmpp_3m_sde`
    /// and their `_gpu` names) ComfyUI's torchsde tree seeded with it
    /// ([`BrownianTreeNoise`]) instead of a [`BrownianNoise`] over this stream.
    fn ksampler_seed(&self) -> Option<u64> {
        None
    }
}

impl<N: NoiseSource + ?Sized> NoiseSource for &mut N {
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]) {
        (**self).fill_noise(sigma, sigma_next, out)
    }

    fn ksampler_seed(&self) -> Option<u64> {
        (**self).ksampler_seed()
    }
}

/// Successive `torch.randn(latent.shape, generator=g)` draws, as ComfyUI's `default_noise_sampler` on the CPU.
impl NoiseSource for TorchRng {
    fn fill_noise(&mut self, _sigma: f64, _sigma_next: f64, out: &mut [f32]) {
        let draw = self.randn(&[out.len()]);
        out.copy_from_slice(&draw);
    }
}

/// KSampler's noise for a seed, as ComfyUI draws it on the CPU: ancestral steps from `default_noise_sampler`'s
/// generator, seeded with the seed + 1 on the CPU, and the SDE samplers' torchsde tree seeded with the seed itself
/// (their `BrownianTreeNoiseSampler`).
pub struct KSamplerNoise {
    seed: u64,
    rng: TorchRng,
}

impl KSamplerNoise {
    pub fn new(seed: u64) -> KSamplerNoise {
        KSamplerNoise { seed, rng: TorchRng::new(seed.wrapping_add(1)) }
    }
}

impl NoiseSource for KSamplerNoise {
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]) {
        self.rng.fill_noise(sigma, sigma_next, out)
    }

    fn ksampler_seed(&self) -> Option<u64> {
        Some(self.seed)
    }
}

/// What a sampler reports once per step, right after the step's first model call (k-diffusion's callback dict).
#[derive(Debug, Clone, Copy)]
pub struct StepInfo<'a> {
    /// Step index, from 0.
    pub step: usize,
    /// Number of steps (`sigmas.len() - 1`).
    pub total: usize,
    /// `sigmas[step]`.
    pub sigma: f64,
    /// `sigmas[step + 1]`.
    pub sigma_next: f64,
    /// The latent at the start of the step.
    pub x: &'a [f32],
    /// The model's denoised estimate of `x` (what ComfyUI previews).
    pub denoised: &'a [f32],
}

/// Progress and cancellation for a sampling run.
pub trait SamplerHooks {
    /// Called once per step, after its first model evaluation.
    fn on_step(&mut self, _info: &StepInfo<'_>) {}

    /// Checked before every model evaluation; `true` stops the run with [`SampleError::Cancelled`].
    fn is_cancelled(&mut self) -> bool {
        false
    }
}

/// No callback, never cancelled.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl SamplerHooks for NoHooks {}

/// Hooks from two closures: `on_step` and `is_cancelled` (e.g. reading an `AtomicBool`).
pub struct FnHooks<S, C> {
    pub on_step: S,
    pub is_cancelled: C,
}

impl<S: FnMut(&StepInfo<'_>), C: FnMut() -> bool> SamplerHooks for FnHooks<S, C> {
    fn on_step(&mut self, info: &StepInfo<'_>) {
        (self.on_step)(info)
    }

    fn is_cancelled(&mut self) -> bool {
        (self.is_cancelled)()
    }
}

impl<H: SamplerHooks + ?Sized> SamplerHooks for &mut H {
    fn on_step(&mut self, info: &StepInfo<'_>) {
        (**self).on_step(info)
    }

    fn is_cancelled(&mut self) -> bool {
        (**self).is_cancelled()
    }
}

/// Why sampling stopped.
#[derive(Debug)]
pub enum SampleError<E> {
    /// The denoiser failed.
    Model(E),
    /// [`SamplerHooks::is_cancelled`] said so before a model call of this step.
    Cancelled { step: usize },
    /// The sigmas cannot be sampled (see [`sample`]).
    BadSigmas(String),
    /// The denoiser returned a latent of the wrong length.
    BadModelOutput { expected: usize, got: usize },
    /// The denoiser's output holds NaN or infinity (`value` at `index`) at step `step` (0-based), `sigma`;
    /// `cause` is the denoiser's own explanation, if it has one ([`Denoiser::non_finite_cause`]).
    NonFinite { step: usize, total: usize, sigma: f64, index: usize, value: f32, cause: Option<String> },
    /// A CFG++ sampler's denoiser cannot give the negative prompt's estimate ([`Denoiser::denoise_with_uncond`]).
    NoUncond,
}

impl<E: fmt::Display> fmt::Display for SampleError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleError::Model(e) => write!(f, "model failed: {e}"),
            SampleError::Cancelled { step } => write!(f, "cancelled at step {step}"),
            SampleError::BadSigmas(why) => write!(f, "bad sigmas: {why}"),
            SampleError::BadModelOutput { expected, got } => {
                write!(f, "the model returned {got} values for a latent of {expected}")
            }
            SampleError::NoUncond => f.write_str(
                "this CFG++ sampler needs the negative prompt's own prediction, which this model wrapper does not give",
            ),
            SampleError::NonFinite { step, total, sigma, index, value, cause } => {
                let cause = cause.as_deref().unwrap_or(
                    "the checkpoint holds NaN or infinite weights (a corrupt or badly merged file), or f16 \
                     overflowed (try SDGRAPH_DTYPE=f32)",
                );
                write!(
                    f,
                    "the model's prediction at step {}/{total} (sigma {sigma:.4}) is {value} at element {index}, so \
                     the picture would come out black or noise: {cause}",
                    step + 1
                )
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for SampleError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SampleError::Model(e) => Some(e),
            _ => None,
        }
    }
}

/// A sampler name was not one of [`Sampler::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sampler {:?} (known: {})", .0, Sampler::NAMES.join(", "))]
pub struct UnknownSampler(pub String);

/// The samplers implemented, by their ComfyUI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampler {
    /// `euler`: k-diffusion `sample_euler` (Karras et al. 2022, Algorithm 2 without churn).
    Euler,
    /// `euler_ancestral`: `sample_euler_ancestral`, eta 1, s_noise 1.
    EulerAncestral,
    /// `heun`: `sample_heun` (2 model calls per step but the last).
    Heun,
    /// `dpm_2`: `sample_dpm_2` (2 calls per step but the last). KSampler computes its schedule with one more step
    /// and drops the penultimate sigma ([`Sampler::discards_penultimate_sigma`]).
    Dpm2,
    /// `dpmpp_2m`: `sample_dpmpp_2m`.
    Dpmpp2m,
    /// `dpmpp_2m_sde`: `sample_dpmpp_2m_sde`, midpoint, eta 1, s_noise 1; Brownian noise (see [`sample`]).
    Dpmpp2mSde,
    /// `dpmpp_sde`: `sample_dpmpp_sde`, r 1/2, eta 1, s_noise 1; Brownian noise (see [`sample`]).
    DpmppSde,
    /// `ddim`: ComfyUI runs `sample_euler` under this name (its inpaint-noise option only matters with masks).
    Ddim,
    /// `lcm`: ComfyUI's `sample_lcm` (denoise, then re-noise to the next sigma).
    Lcm,
    /// `uni_pc`: ComfyUI's `sample_unipc` (UniPC, B(h) = h, order 3, one call per step; see [`sample_unipc`]).
    /// KSampler drops the penultimate sigma, as for `dpm_2`.
    UniPc,
    /// `uni_pc_bh2`: `sample_unipc(variant='bh2')`, B(h) = e^h - 1.
    UniPcBh2,
    /// `euler_cfg_pp`: ComfyUI's `sample_euler_cfg_pp` (CFG++, Chung et al. 2024): the Euler slope from the negative
    /// prompt's estimate, the step from the guided one ([`sample_euler_ancestral_cfg_pp`] with eta 0; no noise).
    EulerCfgPp,
    /// `euler_ancestral_cfg_pp`: `sample_euler_ancestral_cfg_pp`, eta 1, s_noise 1.
    EulerAncestralCfgPp,
    /// `dpm_2_ancestral`: `sample_dpm_2_ancestral`, eta 1, s_noise 1 (2 calls per step but the last). KSampler drops
    /// the penultimate sigma, as for `dpm_2`.
    Dpm2Ancestral,
    /// `lms`: `sample_lms`, order 4 (linear multistep on the sigma axis).
    Lms,
    /// `dpm_fast`: ComfyUI's `dpm_fast` (k-diffusion's `sample_dpm_fast` from the first sigma to the last positive
    /// one with as many model calls as steps, DPM-Solver-3/2/1 on its own even grid in log sigma; see
    /// [`sample_dpm_fast`]).
    DpmFast,
    /// `dpmpp_2s_ancestral`: `sample_dpmpp_2s_ancestral`, eta 1, s_noise 1 (2 calls per step but the last).
    Dpmpp2sAncestral,
    /// `dpmpp_2s_ancestral_cfg_pp`: `sample_dpmpp_2s_ancestral_cfg_pp`, eta 1, s_noise 1.
    Dpmpp2sAncestralCfgPp,
    /// `dpmpp_sde_gpu`: `dpmpp_sde`. ComfyUI's `_gpu` variant keeps its Brownian tree on the sampling device; on the
    /// CPU that is the same tree, and here the noise is drawn as for `dpmpp_sde` (see [`sample`]).
    DpmppSdeGpu,
    /// `dpmpp_2m_cfg_pp`: `sample_dpmpp_2m_cfg_pp`.
    Dpmpp2mCfgPp,
    /// `dpmpp_2m_sde_gpu`: `dpmpp_2m_sde`, its noise drawn as on the CPU (see [`Sampler::DpmppSdeGpu`]).
    Dpmpp2mSdeGpu,
    /// `ddpm`: ComfyUI's `sample_ddpm` (DDPM ancestral steps on the variance-preserving latent).
    Ddpm,
    /// `ipndm`: `sample_ipndm`, order 4 (improved PNDM: fixed Adams-Bashforth weights).
    Ipndm,
    /// `ipndm_v`: `sample_ipndm_v`, order 4 (Adams-Bashforth weights for the actual step sizes).
    IpndmV,
    /// `deis`: `sample_deis`, order 3, `tab` mode (DEIS coefficients by ComfyUI's 10000-point quadrature).
    Deis,
    /// `res_multistep`: `sample_res_multistep` (RES second-order multistep, eta 0; no noise).
    ResMultistep,
    /// `res_multistep_cfg_pp`: `sample_res_multistep_cfg_pp`.
    ResMultistepCfgPp,
    /// `res_multistep_ancestral`: `sample_res_multistep_ancestral`, eta 1, s_noise 1.
    ResMultistepAncestral,
    /// `res_multistep_ancestral_cfg_pp`: `sample_res_multistep_ancestral_cfg_pp`, eta 1, s_noise 1.
    ResMultistepAncestralCfgPp,
    /// `gradient_estimation`: `sample_gradient_estimation`, ge_gamma 2.
    GradientEstimation,
    /// `gradient_estimation_cfg_pp`: `sample_gradient_estimation_cfg_pp`, ge_gamma 2.
    GradientEstimationCfgPp,
    /// `heunpp2`: `sample_heunpp2` (Euler, Heun or Heun++ steps: up to 3 calls per step).
    Heunpp2,
    /// `dpm_adaptive`: ComfyUI's `dpm_adaptive` (k-diffusion's `sample_dpm_adaptive` from the first sigma to the last
    /// positive one, DPM-Solver-23 with its own step sizes; see [`sample_dpm_adaptive`]).
    DpmAdaptive,
    /// `dpmpp_2m_sde_heun`: `sample_dpmpp_2m_sde_heun` (`dpmpp_2m_sde` with the Heun correction), eta 1, s_noise 1;
    /// Brownian noise (see [`sample`]).
    Dpmpp2mSdeHeun,
    /// `dpmpp_2m_sde_heun_gpu`: `dpmpp_2m_sde_heun`, its noise drawn as on the CPU (see [`Sampler::DpmppSdeGpu`]).
    Dpmpp2mSdeHeunGpu,
    /// `dpmpp_3m_sde`: `sample_dpmpp_3m_sde`, eta 1, s_noise 1; Brownian noise (see [`sample`]).
    Dpmpp3mSde,
    /// `dpmpp_3m_sde_gpu`: `dpmpp_3m_sde`, its noise drawn as on the CPU (see [`Sampler::DpmppSdeGpu`]).
    Dpmpp3mSdeGpu,
    /// `er_sde`: `sample_er_sde` (ER-SDE-Solver-3), s_noise 1.
    ErSde,
    /// `seeds_2`: `sample_seeds_2`, eta 1, s_noise 1 (2 calls and 2 draws per step but the last).
    Seeds2,
    /// `seeds_3`: `sample_seeds_3`, eta 1, s_noise 1 (3 calls and 3 draws per step but the last).
    Seeds3,
    /// `sa_solver`: `sample_sa_solver` (stochastic Adams predictor-corrector, orders 3 and 4).
    SaSolver,
    /// `sa_solver_pece`: `sample_sa_solver_pece` (the same, the corrected latent evaluated again: 2 calls per step).
    SaSolverPece,
}

impl Sampler {
    /// Every sampler, in ComfyUI's menu order (`SAMPLER_NAMES`: `KSAMPLER_NAMES`, then ddim, uni_pc, uni_pc_bh2).
    pub const ALL: [Sampler; 42] = [
        Sampler::Euler,
        Sampler::EulerCfgPp,
        Sampler::EulerAncestral,
        Sampler::EulerAncestralCfgPp,
        Sampler::Heun,
        Sampler::Heunpp2,
        Sampler::Dpm2,
        Sampler::Dpm2Ancestral,
        Sampler::Lms,
        Sampler::DpmFast,
        Sampler::DpmAdaptive,
        Sampler::Dpmpp2sAncestral,
        Sampler::Dpmpp2sAncestralCfgPp,
        Sampler::DpmppSde,
        Sampler::DpmppSdeGpu,
        Sampler::Dpmpp2m,
        Sampler::Dpmpp2mCfgPp,
        Sampler::Dpmpp2mSde,
        Sampler::Dpmpp2mSdeGpu,
        Sampler::Dpmpp2mSdeHeun,
        Sampler::Dpmpp2mSdeHeunGpu,
        Sampler::Dpmpp3mSde,
        Sampler::Dpmpp3mSdeGpu,
        Sampler::Ddpm,
        Sampler::Lcm,
        Sampler::Ipndm,
        Sampler::IpndmV,
        Sampler::Deis,
        Sampler::ResMultistep,
        Sampler::ResMultistepCfgPp,
        Sampler::ResMultistepAncestral,
        Sampler::ResMultistepAncestralCfgPp,
        Sampler::GradientEstimation,
        Sampler::GradientEstimationCfgPp,
        Sampler::ErSde,
        Sampler::Seeds2,
        Sampler::Seeds3,
        Sampler::SaSolver,
        Sampler::SaSolverPece,
        Sampler::Ddim,
        Sampler::UniPc,
        Sampler::UniPcBh2,
    ];

    /// Every sampler's ComfyUI name, in [`Sampler::ALL`]'s order (the KSampler menu).
    pub const NAMES: [&'static str; Sampler::ALL.len()] = {
        let mut names = [""; Sampler::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Sampler::ALL[i].name();
            i += 1;
        }
        names
    };

    /// The ComfyUI name.
    pub const fn name(self) -> &'static str {
        match self {
            Sampler::Euler => "euler",
            Sampler::EulerAncestral => "euler_ancestral",
            Sampler::Heun => "heun",
            Sampler::Dpm2 => "dpm_2",
            Sampler::Dpmpp2m => "dpmpp_2m",
            Sampler::Dpmpp2mSde => "dpmpp_2m_sde",
            Sampler::DpmppSde => "dpmpp_sde",
            Sampler::Ddim => "ddim",
            Sampler::Lcm => "lcm",
            Sampler::UniPc => "uni_pc",
            Sampler::UniPcBh2 => "uni_pc_bh2",
            Sampler::EulerCfgPp => "euler_cfg_pp",
            Sampler::EulerAncestralCfgPp => "euler_ancestral_cfg_pp",
            Sampler::Dpm2Ancestral => "dpm_2_ancestral",
            Sampler::Lms => "lms",
            Sampler::DpmFast => "dpm_fast",
            Sampler::Dpmpp2sAncestral => "dpmpp_2s_ancestral",
            Sampler::Dpmpp2sAncestralCfgPp => "dpmpp_2s_ancestral_cfg_pp",
            Sampler::DpmppSdeGpu => "dpmpp_sde_gpu",
            Sampler::Dpmpp2mCfgPp => "dpmpp_2m_cfg_pp",
            Sampler::Dpmpp2mSdeGpu => "dpmpp_2m_sde_gpu",
            Sampler::Ddpm => "ddpm",
            Sampler::Ipndm => "ipndm",
            Sampler::IpndmV => "ipndm_v",
            Sampler::Deis => "deis",
            Sampler::ResMultistep => "res_multistep",
            Sampler::ResMultistepCfgPp => "res_multistep_cfg_pp",
            Sampler::ResMultistepAncestral => "res_multistep_ancestral",
            Sampler::ResMultistepAncestralCfgPp => "res_multistep_ancestral_cfg_pp",
            Sampler::GradientEstimation => "gradient_estimation",
            Sampler::GradientEstimationCfgPp => "gradient_estimation_cfg_pp",
            Sampler::Heunpp2 => "heunpp2",
            Sampler::DpmAdaptive => "dpm_adaptive",
            Sampler::Dpmpp2mSdeHeun => "dpmpp_2m_sde_heun",
            Sampler::Dpmpp2mSdeHeunGpu => "dpmpp_2m_sde_heun_gpu",
            Sampler::Dpmpp3mSde => "dpmpp_3m_sde",
            Sampler::Dpmpp3mSdeGpu => "dpmpp_3m_sde_gpu",
            Sampler::ErSde => "er_sde",
            Sampler::Seeds2 => "seeds_2",
            Sampler::Seeds3 => "seeds_3",
            Sampler::SaSolver => "sa_solver",
            Sampler::SaSolverPece => "sa_solver_pece",
        }
    }

    /// The sampler of a ComfyUI name.
    pub fn from_name(name: &str) -> Result<Sampler, UnknownSampler> {
        Sampler::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| UnknownSampler(name.into()))
    }

    /// Whether it draws from the [`NoiseSource`].
    pub fn uses_noise(self) -> bool {
        matches!(
            self,
            Sampler::EulerAncestral
                | Sampler::EulerAncestralCfgPp
                | Sampler::Dpm2Ancestral
                | Sampler::Dpmpp2sAncestral
                | Sampler::Dpmpp2sAncestralCfgPp
                | Sampler::DpmppSde
                | Sampler::DpmppSdeGpu
                | Sampler::Dpmpp2mSde
                | Sampler::Dpmpp2mSdeGpu
                | Sampler::Ddpm
                | Sampler::Lcm
                | Sampler::ResMultistepAncestral
                | Sampler::ResMultistepAncestralCfgPp
                | Sampler::Dpmpp2mSdeHeun
                | Sampler::Dpmpp2mSdeHeunGpu
                | Sampler::Dpmpp3mSde
                | Sampler::Dpmpp3mSdeGpu
                | Sampler::ErSde
                | Sampler::Seeds2
                | Sampler::Seeds3
                | Sampler::SaSolver
                | Sampler::SaSolverPece
        )
    }

    /// Whether it is a CFG++ sampler, which needs the negative prompt's own estimate from every model call
    /// ([`Denoiser::denoise_with_uncond`]).
    pub fn needs_uncond(self) -> bool {
        matches!(
            self,
            Sampler::EulerCfgPp
                | Sampler::EulerAncestralCfgPp
                | Sampler::Dpmpp2sAncestralCfgPp
                | Sampler::Dpmpp2mCfgPp
                | Sampler::ResMultistepCfgPp
                | Sampler::ResMultistepAncestralCfgPp
                | Sampler::GradientEstimationCfgPp
        )
    }

    /// Whether ComfyUI's KSampler computes its schedule for one step more and drops the penultimate sigma
    /// (`DISCARD_PENULTIMATE_SIGMA_SAMPLERS`); pass it to `ksampler_sigmas`.
    pub fn discards_penultimate_sigma(self) -> bool {
        matches!(self, Sampler::Dpm2 | Sampler::Dpm2Ancestral | Sampler::UniPc | Sampler::UniPcBh2)
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Sampler {
    type Err = UnknownSampler;

    fn from_str(s: &str) -> Result<Sampler, UnknownSampler> {
        Sampler::from_name(s)
    }
}

/// Runs `sampler` from the (already noised) latent `x` down the `sigmas`, with its ComfyUI default options.
///
/// `noise` is the Gaussian stream for the samplers that use one ([`Sampler::uses_noise`]); to reproduce ComfyUI on the
/// CPU pass [`KSamplerNoise::new(seed)`](KSamplerNoise) (ComfyUI's `default_noise_sampler` seeds a fresh CPU
/// generator with the KSampler seed + 1). `dpmpp_sde`, `dpmpp_2m_sde`, `dpmpp_2m_sde_heun` and `dpmpp_3m_sde` (and
/// their `_gpu` names) draw from ComfyUI's
/// `BrownianTreeNoiseSampler` instead, torchsde's tree seeded with the KSampler seed, bit for bit
/// ([`BrownianTreeNoise`]), when `noise` knows that seed ([`NoiseSource::ksampler_seed`]: a `KSamplerNoise` does);
/// any other source they see through a [`BrownianNoise`].
///
/// Sigmas: at least one; all finite; every one but the last positive, the last non-negative. With one sigma `x` is
/// returned as is (ComfyUI's samplers loop zero times).
pub fn sample<D, H>(sampler: Sampler, job: Job<'_, D, H>, x: Vec<f32>, noise: &mut dyn NoiseSource) -> Sampled<D>
where
    D: Denoiser + ?Sized,
    H: SamplerHooks + ?Sized,
{
    match sampler {
        Sampler::Euler | Sampler::Ddim => sample_euler(job, x),
        Sampler::EulerAncestral => sample_euler_ancestral(job, x, Noise::full(noise)),
        Sampler::Heun => sample_heun(job, x),
        Sampler::Dpm2 => sample_dpm_2(job, x),
        Sampler::Dpmpp2m => sample_dpmpp_2m(job, x),
        Sampler::Dpmpp2mSde => {
            let mut noise = brownian(noise, job.sigmas, x.len());
            sample_dpmpp_2m_sde(job, x, Noise::full(&mut *noise))
        }
        Sampler::DpmppSde => {
            let mut noise = brownian(noise, job.sigmas, x.len());
            sample_dpmpp_sde(job, x, Noise::full(&mut *noise))
        }
        Sampler::Lcm => sample_lcm(job, x, noise),
        Sampler::UniPc => sample_unipc(job, x, UniPcVariant::Bh1),
        Sampler::UniPcBh2 => sample_unipc(job, x, UniPcVariant::Bh2),
        // The `_gpu` names: the same maths, the noise as on the CPU.
        Sampler::DpmppSdeGpu => sample(Sampler::DpmppSde, job, x, noise),
        Sampler::Dpmpp2mSdeGpu => sample(Sampler::Dpmpp2mSde, job, x, noise),
        Sampler::EulerCfgPp => sample_euler_ancestral_cfg_pp(job, x, Noise { source: noise, eta: 0.0, s_noise: 0.0 }),
        Sampler::EulerAncestralCfgPp => sample_euler_ancestral_cfg_pp(job, x, Noise::full(noise)),
        Sampler::Dpm2Ancestral => sample_dpm_2_ancestral(job, x, Noise::full(noise)),
        Sampler::Lms => sample_lms(job, x),
        Sampler::DpmFast => sample_dpm_fast(job, x),
        Sampler::Dpmpp2sAncestral => sample_dpmpp_2s_ancestral(job, x, Noise::full(noise)),
        Sampler::Dpmpp2sAncestralCfgPp => sample_dpmpp_2s_ancestral_cfg_pp(job, x, Noise::full(noise)),
        Sampler::Dpmpp2mCfgPp => sample_dpmpp_2m_cfg_pp(job, x),
        Sampler::Ddpm => sample_ddpm(job, x, noise),
        Sampler::Ipndm => sample_ipndm(job, x),
        Sampler::IpndmV => sample_ipndm_v(job, x),
        Sampler::Deis => sample_deis(job, x),
        Sampler::ResMultistep => sample_res_multistep(job, x, Noise { source: noise, eta: 0.0, s_noise: 1.0 }, false),
        Sampler::ResMultistepCfgPp => {
            sample_res_multistep(job, x, Noise { source: noise, eta: 0.0, s_noise: 1.0 }, true)
        }
        Sampler::ResMultistepAncestral => sample_res_multistep(job, x, Noise::full(noise), false),
        Sampler::ResMultistepAncestralCfgPp => sample_res_multistep(job, x, Noise::full(noise), true),
        Sampler::GradientEstimation => sample_gradient_estimation(job, x, false),
        Sampler::GradientEstimationCfgPp => sample_gradient_estimation(job, x, true),
        Sampler::Heunpp2 => sample_heunpp2(job, x),
        Sampler::DpmAdaptive => sample_dpm_adaptive(job, x),
        Sampler::Dpmpp2mSdeHeun => {
            let mut noise = brownian(noise, job.sigmas, x.len());
            sample_dpmpp_2m_sde_heun(job, x, Noise::full(&mut *noise))
        }
        Sampler::Dpmpp3mSde => {
            let mut noise = brownian(noise, job.sigmas, x.len());
            sample_dpmpp_3m_sde(job, x, Noise::full(&mut *noise))
        }
        Sampler::Dpmpp2mSdeHeunGpu => sample(Sampler::Dpmpp2mSdeHeun, job, x, noise),
        Sampler::Dpmpp3mSdeGpu => sample(Sampler::Dpmpp3mSde, job, x, noise),
        Sampler::ErSde => sample_er_sde(job, x, Noise::full(noise)),
        Sampler::Seeds2 => sample_seeds_2(job, x, Noise::full(noise)),
        Sampler::Seeds3 => sample_seeds_3(job, x, Noise::full(noise)),
        Sampler::SaSolver => sample_sa_solver(job, x, Noise::full(noise), false),
        Sampler::SaSolverPece => sample_sa_solver(job, x, Noise::full(noise), true),
    }
}

/// The SDE samplers' noise (see [`sample`]): ComfyUI's torchsde tree when `noise` knows the KSampler seed and the
/// sigmas are valid (else the sampler stops before drawing), a [`BrownianNoise`] over `noise` otherwise.
fn brownian<'n>(noise: &'n mut dyn NoiseSource, sigmas: &[f64], len: usize) -> Box<dyn NoiseSource + 'n> {
    match noise.ksampler_seed() {
        Some(seed) if check_sigmas(sigmas).is_ok() && sigmas.iter().any(|&s| s > 0.0) => {
            Box::new(BrownianTreeNoise::new(seed, sigmas, len))
        }
        _ => Box::new(BrownianNoise::new(noise)),
    }
}

/// What every sampler takes besides the latent: the model, the sigmas (see [`sample`]) and the hooks.
pub struct Job<'a, D: ?Sized, H: ?Sized> {
    pub denoiser: &'a mut D,
    pub sigmas: &'a [f64],
    pub hooks: &'a mut H,
}

/// A sampler's result: the final latent.
pub type Sampled<D> = Result<Vec<f32>, SampleError<<D as Denoiser>::Error>>;

/// The noise an ancestral or SDE sampler adds: its source, `eta` and `s_noise`.
pub struct Noise<'a> {
    pub source: &'a mut dyn NoiseSource,
    pub eta: f64,
    pub s_noise: f64,
}

impl<'a> Noise<'a> {
    /// KSampler's settings: `eta` 1, `s_noise` 1.
    pub fn full(source: &'a mut dyn NoiseSource) -> Self {
        Noise { source, eta: 1.0, s_noise: 1.0 }
    }
}

/// One step as a sampler's update sees it: its index, its sigmas, and the
/// model's denoised latent at the step's start.
pub(crate) struct Step {
    pub i: usize,
    pub s: f64,
    pub s_next: f64,
    pub den: Vec<f32>,
    /// The negative prompt's denoised latent ([`Job::steps_with_uncond`]; empty otherwise).
    pub uncond: Vec<f32>,
}

/// A sampler's update: moves `x` from `step.s` to `step.s_next`, calling the model again through the run if needed.
pub(crate) type Update<'u, D, H> =
    dyn FnMut(&mut Run<'_, D, H>, Step, &mut Vec<f32>) -> Result<(), SampleError<<D as Denoiser>::Error>> + 'u;

impl<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized> Job<'_, D, H> {
    /// Runs the steps from `x`: for each, the model at the step's sigma, the hooks, then `update`.
    pub(crate) fn steps(self, x: Vec<f32>, update: &mut Update<'_, D, H>) -> Sampled<D> {
        self.run_steps(x, false, update)
    }

    /// [`Job::steps`] for the CFG++ samplers: each step's model call also gives [`Step::uncond`].
    pub(crate) fn steps_with_uncond(self, x: Vec<f32>, update: &mut Update<'_, D, H>) -> Sampled<D> {
        self.run_steps(x, true, update)
    }

    fn run_steps(self, mut x: Vec<f32>, with_uncond: bool, update: &mut Update<'_, D, H>) -> Sampled<D> {
        let sigmas = self.sigmas;
        let mut run = Run::new(self.denoiser, self.hooks, &x, sigmas)?;
        for i in 0..sigmas.len() - 1 {
            let (s, s_next) = (sigmas[i], sigmas[i + 1]);
            let Guided { denoised: den, uncond } = if with_uncond {
                run.denoise_with_uncond(i, &x, s)?
            } else {
                Guided { denoised: run.denoise(i, &x, s)?, uncond: vec![] }
            };
            run.report(i, sigmas, &x, &den);
            update(&mut run, Step { i, s, s_next, den, uncond }, &mut x)?;
        }
        Ok(x)
    }
}

/// Shared plumbing of the samplers: the checked model call and the callback.
pub(crate) struct Run<'a, D: ?Sized, H: ?Sized> {
    denoiser: &'a mut D,
    hooks: &'a mut H,
    total: usize,
    len: usize,
}

impl<'a, D: Denoiser + ?Sized, H: SamplerHooks + ?Sized> Run<'a, D, H> {
    /// Checks the sigmas (see [`sample`]) and the latent.
    pub(crate) fn new(
        denoiser: &'a mut D,
        hooks: &'a mut H,
        x: &[f32],
        sigmas: &[f64],
    ) -> Result<Self, SampleError<D::Error>> {
        check_sigmas(sigmas).map_err(SampleError::BadSigmas)?;
        Ok(Run { denoiser, hooks, total: sigmas.len() - 1, len: x.len() })
    }

    /// One model call at step `step`: the cancel check, the call, the length check.
    pub(crate) fn denoise(&mut self, step: usize, x: &[f32], sigma: f64) -> Result<Vec<f32>, SampleError<D::Error>> {
        if self.hooks.is_cancelled() {
            return Err(SampleError::Cancelled { step });
        }
        let out = self.denoiser.denoise(x, sigma).map_err(SampleError::Model)?;
        self.check(step, sigma, &out)?;
        Ok(out)
    }

    /// [`Run::denoise`] through [`Denoiser::denoise_with_uncond`]: both estimates, both checked.
    pub(crate) fn denoise_with_uncond(
        &mut self,
        step: usize,
        x: &[f32],
        sigma: f64,
    ) -> Result<Guided, SampleError<D::Error>> {
        if self.hooks.is_cancelled() {
            return Err(SampleError::Cancelled { step });
        }
        let g =
            self.denoiser.denoise_with_uncond(x, sigma).map_err(SampleError::Model)?.ok_or(SampleError::NoUncond)?;
        self.check(step, sigma, &g.denoised)?;
        self.check(step, sigma, &g.uncond)?;
        Ok(g)
    }

    /// The length and finiteness of a model output.
    fn check(&mut self, step: usize, sigma: f64, out: &[f32]) -> Result<(), SampleError<D::Error>> {
        if out.len() != self.len {
            return Err(SampleError::BadModelOutput { expected: self.len, got: out.len() });
        }
        // The prediction is on the CPU already; one pass over it costs nothing next to the network.
        if let Some((index, &value)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let cause = self.denoiser.non_finite_cause();
            return Err(SampleError::NonFinite { step, total: self.total, sigma, index, value, cause });
        }
        Ok(())
    }

    pub(crate) fn report(&mut self, step: usize, sigmas: &[f64], x: &[f32], denoised: &[f32]) {
        let info = StepInfo { step, total: self.total, sigma: sigmas[step], sigma_next: sigmas[step + 1], x, denoised };
        self.hooks.on_step(&info);
    }

    /// A step report for samplers whose steps are not the sigmas' (`dpm_fast`).
    pub(crate) fn report_info(&mut self, info: &StepInfo<'_>) {
        self.hooks.on_step(info);
    }
}

fn check_sigmas(sigmas: &[f64]) -> Result<(), String> {
    let Some((last, rest)) = sigmas.split_last() else {
        return Err("no sigmas".into());
    };
    if let Some((i, s)) = rest.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
        return Err(format!("sigma {i} is {s}; all but the last must be finite and positive"));
    }
    if !(last.is_finite() && *last >= 0.0) {
        return Err(format!("the last sigma is {last}; it must be finite and non-negative"));
    }
    Ok(())
}

/// k-diffusion's `get_ancestral_step(sigma_from, sigma_to, eta)`: `(sigma_down, sigma_up)`.
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (eta
        * (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt())
    .min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (down, up)
}

/// Draws one latent of noise.
pub(crate) fn draw<N: NoiseSource + ?Sized>(noise: &mut N, sigma: f64, sigma_next: f64, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    noise.fill_noise(sigma, sigma_next, &mut out);
    out
}
