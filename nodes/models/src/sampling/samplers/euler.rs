//! Euler and Euler ancestral: k-diffusion 0.1.1.post1 `sample_euler` / `sample_euler_ancestral`, as in ComfyUI's
//! `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae). ComfyUI's `ddim`
//! sampler is `sample_euler`.

use super::ancestral::ancestral_steps;
use super::{Denoiser, Job, Noise, Sampled, SamplerHooks};

/// `sample_euler` without churn (`s_churn = 0`, as KSampler runs it): `x += (x - denoised) / sigma * (sigma_next -
/// sigma)`.
pub fn sample_euler<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    job.steps(x, &mut |_, st, x| {
        let dt = st.s_next - st.s;
        for (xv, &dv) in x.iter_mut().zip(&st.den) {
            let (xf, df) = (f64::from(*xv), f64::from(dv));
            *xv = (xf + (xf - df) / st.s * dt) as f32;
        }
        Ok(())
    })
}

/// `sample_euler_ancestral(eta, s_noise)`, ComfyUI's version: an Euler step down to `sigma_down`, then
/// `noise * s_noise * sigma_up` (one draw per step); a step whose `sigma_down` is 0 (the last, with eta <= 1) returns
/// the denoised latent and draws nothing. (k-diffusion computes `x + d * (0 - sigma)` there instead, the same up to
/// rounding, and for eta > 1 would still add noise where ComfyUI does not.)
pub fn sample_euler_ancestral<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    ancestral_steps(job, x, noise, false, &mut |_, st, x, sigma_down| {
        if sigma_down == 0.0 {
            return Ok((st.den.iter().map(|&dv| f64::from(dv)).collect(), false));
        }
        let (s, dt) = (st.s, sigma_down - st.s);
        let next = x.iter().zip(&st.den).map(|(&xv, &dv)| {
            let (xf, df) = (f64::from(xv), f64::from(dv));
            xf + (xf - df) / s * dt
        });
        Ok((next.collect(), true))
    })
}
