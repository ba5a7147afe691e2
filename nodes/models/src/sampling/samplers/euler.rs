//! Euler and Euler ancestral: k-diffusion 0.1.1.post1 `sample_euler` / `sample_euler_ancestral`, as in ComfyUI's
//! `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae). ComfyUI's `ddim`
//! sampler is `sample_euler`.

use super::{Denoiser, NoiseSource, Run, SampleError, SamplerHooks, ancestral_step, draw};

/// `sample_euler` without churn (`s_churn = 0`, as KSampler runs it): `x += (x - denoised) / sigma * (sigma_next -
/// sigma)`.
pub fn sample_euler<D, H>(
    denoiser: &mut D,
    mut x: Vec<f32>,
    sigmas: &[f64],
    hooks: &mut H,
) -> Result<Vec<f32>, SampleError<D::Error>>
where
    D: Denoiser + ?Sized,
    H: SamplerHooks + ?Sized,
{
    let mut run = Run::new(denoiser, hooks, &x, sigmas)?;
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let den = run.denoise(i, &x, s)?;
        run.report(i, sigmas, &x, &den);
        let dt = s_next - s;
        for (xv, &dv) in x.iter_mut().zip(&den) {
            let (xf, df) = (f64::from(*xv), f64::from(dv));
            *xv = (xf + (xf - df) / s * dt) as f32;
        }
    }
    Ok(x)
}

/// `sample_euler_ancestral(eta, s_noise)`, ComfyUI's version: an Euler step down to `sigma_down`, then
/// `noise * s_noise * sigma_up` (one draw per step); a step whose `sigma_down` is 0 (the last, with eta <= 1) returns
/// the denoised latent and draws nothing. (k-diffusion computes `x + d * (0 - sigma)` there instead, the same up to
/// rounding, and for eta > 1 would still add noise where ComfyUI does not.)
pub fn sample_euler_ancestral<D, N, H>(
    denoiser: &mut D,
    mut x: Vec<f32>,
    sigmas: &[f64],
    noise: &mut N,
    hooks: &mut H,
    eta: f64,
    s_noise: f64,
) -> Result<Vec<f32>, SampleError<D::Error>>
where
    D: Denoiser + ?Sized,
    N: NoiseSource + ?Sized,
    H: SamplerHooks + ?Sized,
{
    let mut run = Run::new(denoiser, hooks, &x, sigmas)?;
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let den = run.denoise(i, &x, s)?;
        let (sigma_down, sigma_up) = ancestral_step(s, s_next, eta);
        run.report(i, sigmas, &x, &den);
        if sigma_down == 0.0 {
            x = den;
            continue;
        }
        let z = draw(noise, s, s_next, x.len());
        let dt = sigma_down - s;
        let amp = s_noise * sigma_up;
        for ((xv, &dv), &zv) in x.iter_mut().zip(&den).zip(&z) {
            let (xf, df) = (f64::from(*xv), f64::from(dv));
            *xv = (xf + (xf - df) / s * dt + f64::from(zv) * amp) as f32;
        }
    }
    Ok(x)
}
