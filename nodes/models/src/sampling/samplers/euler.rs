//! Euler and Euler ancestral: k-diffusion 0.1.1.post1 `sample_euler` / `sample_euler_ancestral`, as in ComfyUI's
//! `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae). ComfyUI's `ddim`
//! sampler is `sample_euler`.

use super::{Denoiser, Job, Noise, Sampled, SamplerHooks, ancestral_step, draw};

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
    let Noise { source, eta, s_noise } = noise;
    job.steps(x, &mut |_, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let (sigma_down, sigma_up) = ancestral_step(s, s_next, eta);
        if sigma_down == 0.0 {
            *x = st.den;
            return Ok(());
        }
        let z = draw(source, s, s_next, x.len());
        let dt = sigma_down - s;
        let amp = s_noise * sigma_up;
        for ((xv, &dv), &zv) in x.iter_mut().zip(&st.den).zip(&z) {
            let (xf, df) = (f64::from(*xv), f64::from(dv));
            *xv = (xf + (xf - df) / s * dt + f64::from(zv) * amp) as f32;
        }
        Ok(())
    })
}
