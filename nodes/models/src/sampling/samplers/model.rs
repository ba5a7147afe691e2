//! ComfyUI's model wrapping for discrete eps/v models (SD 1.x/2.x): from a network's raw output to the denoised
//! estimate samplers want, with classifier-free guidance, plus the initial noise scaling of `KSAMPLER.sample`.
//!
//! Mirrors Comfy-Org/ComfyUI `comfy/model_base.py` `BaseModel._apply_model` (094c74c1b7f9cd5cdd9015741e8eb26acff1142a:
//! `calculate_input`, `timestep(sigma).float()`, `calculate_denoised`), `comfy/model_sampling.py` (2fd20839...:
//! `EPS`, `V_PREDICTION`, `noise_scaling`) and `comfy/samplers.py` (311c0140...: `sampling_function`, whose cfg 1
//! shortcut skips the negative prompt, `cfg_function`, `Sampler.max_denoise`). Arithmetic in f64, rounded to f32.

use super::Denoiser;
use crate::sampling::schedulers::ModelSigmas;

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base): `denoised = x - out * sigma`.
    Epsilon,
    /// v (SD 2.x 768-v): `denoised = x / (sigma^2 + 1) - out * sigma / sqrt(sigma^2 + 1)`.
    V,
}

/// A [`NoisePredictor`]'s raw outputs: for the positive conditioning, and for the negative one when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct NetOutput {
    pub cond: Vec<f32>,
    pub uncond: Option<Vec<f32>>,
}

/// The network with its conditionings bound (a UNet, a ControlNet-patched UNet...): raw outputs for the scaled input.
pub trait NoisePredictor {
    type Error;

    /// Runs the network on `x_in = x / sqrt(sigma^2 + 1)` at `timestep` (ComfyUI's integer-valued timestep of
    /// sigma, see [`ModelSigmas::sigma_to_t`]) for the positive conditioning, and also for the negative one when
    /// `with_uncond` (implementations usually batch the two). `sigma` is what the timestep was derived from, for
    /// networks that want it. Both outputs must have `x_in`'s length; `uncond` must be `Some` when asked for.
    fn predict(&mut self, x_in: &[f32], timestep: f64, sigma: f64, with_uncond: bool)
    -> Result<NetOutput, Self::Error>;

    /// See [`Denoiser::non_finite_cause`].
    fn non_finite_cause(&mut self) -> Option<String> {
        None
    }
}

/// Why [`CfgDenoiser::denoise`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CfgError<E> {
    #[error(transparent)]
    Model(E),
    #[error("the network returned {got} values for a latent of {expected}")]
    BadOutput { expected: usize, got: usize },
    #[error("the network did not return the unconditional output it was asked for")]
    MissingUncond,
}

/// A [`Denoiser`] from a [`NoisePredictor`]: ComfyUI's eps/v wrapping and classifier-free guidance
/// `uncond + (cond - uncond) * cfg` on the denoised estimates. With `cfg` equal to 1 (Python's `math.isclose`) only
/// the positive conditioning is run, as in ComfyUI.
pub struct CfgDenoiser<M> {
    pub model: M,
    pub sigmas: ModelSigmas,
    pub prediction: Prediction,
    pub cfg: f64,
}

impl<M> CfgDenoiser<M> {
    pub fn new(model: M, sigmas: ModelSigmas, prediction: Prediction, cfg: f64) -> CfgDenoiser<M> {
        CfgDenoiser { model, sigmas, prediction, cfg }
    }

    /// Whether the negative conditioning is evaluated (cfg not 1 within Python's `math.isclose` default, 1e-9).
    pub fn uses_uncond(&self) -> bool {
        (self.cfg - 1.0).abs() > 1e-9 * self.cfg.abs().max(1.0)
    }
}

/// `calculate_denoised` for one element.
fn denoised(prediction: Prediction, sigma: f64, out: f32, x: f32) -> f64 {
    let (o, x) = (f64::from(out), f64::from(x));
    match prediction {
        Prediction::Epsilon => x - o * sigma,
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            x / s2 - o * sigma / s2.sqrt()
        }
    }
}

impl<M: NoisePredictor> Denoiser for CfgDenoiser<M> {
    type Error = CfgError<M::Error>;

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, Self::Error> {
        let scale = (sigma * sigma + 1.0).sqrt();
        let x_in: Vec<f32> = x.iter().map(|&v| (f64::from(v) / scale) as f32).collect();
        let timestep = self.sigmas.sigma_to_t(sigma);
        let with_uncond = self.uses_uncond();
        let NetOutput { cond, uncond } =
            self.model.predict(&x_in, timestep, sigma, with_uncond).map_err(CfgError::Model)?;
        let check = |v: &Vec<f32>| {
            if v.len() == x.len() { Ok(()) } else { Err(CfgError::BadOutput { expected: x.len(), got: v.len() }) }
        };
        check(&cond)?;
        let p = self.prediction;
        if !with_uncond {
            return Ok(cond.iter().zip(x).map(|(&o, &xv)| denoised(p, sigma, o, xv) as f32).collect());
        }
        let uncond = uncond.ok_or(CfgError::MissingUncond)?;
        check(&uncond)?;
        let cfg = self.cfg;
        Ok(cond
            .iter()
            .zip(&uncond)
            .zip(x)
            .map(|((&c, &u), &xv)| {
                let (dc, du) = (denoised(p, sigma, c, xv), denoised(p, sigma, u, xv));
                (du + (dc - du) * cfg) as f32
            })
            .collect())
    }

    fn non_finite_cause(&mut self) -> Option<String> {
        self.model.non_finite_cause()
    }
}

/// ComfyUI's `Sampler.max_denoise`: whether the first sigma is the model's largest (within 1e-5 relative) or above,
/// i.e. a full txt2img run, in which case the initial noise is scaled by `sqrt(1 + sigma^2)` instead of `sigma`.
pub fn max_denoise(model: &ModelSigmas, first_sigma: f64) -> bool {
    let max_sigma = model.sigma_max();
    (max_sigma - first_sigma).abs() <= 1e-5 * max_sigma.abs().max(first_sigma.abs()) || first_sigma > max_sigma
}

/// The latent a sampler starts from (`noise_scaling` of eps/v models, in `KSAMPLER.sample`):
/// `noise * (max_denoise ? sqrt(1 + sigma^2) : sigma) + latent`, where `noise` is ComfyUI's `prepare_noise` output
/// and `latent` the input latent (zeros for txt2img; ComfyUI has applied the latent format's `process_in` to it).
///
/// # Panics
///
/// If `noise` and `latent` differ in length.
pub fn initial_latent(noise: &[f32], latent: &[f32], first_sigma: f64, max_denoise: bool) -> Vec<f32> {
    assert_eq!(noise.len(), latent.len(), "initial_latent: noise and latent differ in length");
    let scale = if max_denoise { (1.0 + first_sigma * first_sigma).sqrt() } else { first_sigma };
    noise.iter().zip(latent).map(|(&n, &l)| (f64::from(n) * scale + f64::from(l)) as f32).collect()
}
