//! CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
//! Models"): ComfyUI's `sample_euler_ancestral_cfg_pp` (and `sample_euler_cfg_pp`, the same with eta 0),
//! `sample_dpmpp_2s_ancestral_cfg_pp` and `sample_dpmpp_2m_cfg_pp` (`comfy/k_diffusion/sampling.py` @
//! Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832).
//!
//! ComfyUI gets the negative prompt's denoised estimate (`uncond_denoised`) through a `sampler_post_cfg_function`
//! and sets `disable_cfg1_optimization`, so every model call runs the negative prompt, even at cfg 1; here every
//! call goes through [`super::Denoiser::denoise_with_uncond`]. The renoising direction comes from that estimate
//! and the step's target from the guided one. For eps/v models `alpha_t` is 1 (ComfyUI writes `sigma *
//! exp(-log sigma)`, computed as written here).

use super::ancestral::{ancestral_steps, dpmpp_2s_coefficients};
use super::{Denoiser, Guided, Job, Noise, Sampled, SamplerHooks, Step, ancestral_step, draw};

/// `sample_euler_ancestral_cfg_pp(eta, s_noise)`: `x = alpha_t denoised + sigma_down d` with
/// `d = (x - alpha_s uncond) / sigma`, then (when eta and s_noise are positive) `alpha_t noise s_noise sigma_up`;
/// the last step lands on the denoised latent. ComfyUI's `euler_cfg_pp` is eta 0, s_noise 0: no noise.
pub fn sample_euler_ancestral_cfg_pp<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    job.steps_with_uncond(x, &mut |_, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        if s_next == 0.0 {
            *x = st.den;
            return Ok(());
        }
        // alpha = sigma * exp(half_log_snr(sigma)), half_log_snr = -log sigma.
        let alpha_s = s * (-s.ln()).exp();
        let alpha_t = s_next * (-s_next.ln()).exp();
        let (sigma_down, sigma_up) = ancestral_step(s / alpha_s, s_next / alpha_t, eta);
        let sigma_down = alpha_t * sigma_down;
        let z = (eta > 0.0 && s_noise > 0.0).then(|| draw(source, s, s_next, x.len()));
        let amp = alpha_t * s_noise * sigma_up;
        for (j, xv) in x.iter_mut().enumerate() {
            let d = (f64::from(*xv) - alpha_s * f64::from(st.uncond[j])) / s;
            let mut v = alpha_t * f64::from(st.den[j]) + sigma_down * d;
            if let Some(z) = &z {
                v += f64::from(z[j]) * amp;
            }
            *xv = v as f32;
        }
        Ok(())
    })
}

/// `sample_dpmpp_2s_ancestral_cfg_pp(eta, s_noise)`: DPM-Solver++(2S) to `sigma_down` on `x + (denoised -
/// uncond)`, then, unless `sigma_next` is 0, `noise * s_noise * sigma_up`. As in ComfyUI, the final update's
/// `uncond` is the one of the step's second model call (at the midpoint), which overwrote the first's.
pub fn sample_dpmpp_2s_ancestral_cfg_pp<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    ancestral_steps(job, x, noise, true, &mut |run, st, x, sigma_down| {
        let s = st.s;
        let next: Vec<f64> = if sigma_down == 0.0 {
            // Euler: denoised + d * sigma_down with d from the negative prompt's estimate.
            (0..x.len())
                .map(|j| {
                    let d = (f64::from(x[j]) - f64::from(st.uncond[j])) / s;
                    f64::from(st.den[j]) + d * sigma_down
                })
                .collect()
        } else {
            let (sigma_mid, ratio1, c1, ratio, c) = dpmpp_2s_coefficients(s, sigma_down);
            let x2: Vec<f32> = (0..x.len())
                .map(|j| {
                    let (xv, dv, uv) = (f64::from(x[j]), f64::from(st.den[j]), f64::from(st.uncond[j]));
                    (ratio1 * (xv + (dv - uv)) - c1 * dv) as f32
                })
                .collect();
            let Guided { denoised: den2, uncond: uncond2 } = run.denoise_with_uncond(st.i, &x2, sigma_mid)?;
            (0..x.len())
                .map(|j| {
                    let (xv, dv, uv) = (f64::from(x[j]), f64::from(st.den[j]), f64::from(uncond2[j]));
                    ratio * (xv + (dv - uv)) - c * f64::from(den2[j])
                })
                .collect()
        };
        Ok((next, st.s_next > 0.0))
    })
}

/// `sample_dpmpp_2m_cfg_pp`: `x = denoised + mix + e^-h x` with `mix = -e^-h uncond`, plus from the second step
/// on (but not on the last) `-expm1(-h) / (2 r) (denoised - uncond_prev)`, `r = h_last / h`.
pub fn sample_dpmpp_2m_cfg_pp<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
) -> Sampled<D> {
    let sigmas = job.sigmas;
    let mut old_uncond: Option<Vec<f32>> = None;
    job.steps_with_uncond(x, &mut |_, st: Step, x| {
        let (s, s_next) = (st.s, st.s_next);
        if s_next == 0.0 {
            // e^-h is 0: denoised - 0 * uncond + 0 * x.
            x.copy_from_slice(&st.den);
        } else {
            let t_fn = |sigma: f64| -sigma.ln();
            let (t, t_next) = (t_fn(s), t_fn(s_next));
            let h = t_next - t;
            let decay = (-h).exp();
            let corr = old_uncond.as_ref().map(|old| {
                let r = (t - t_fn(sigmas[st.i - 1])) / h;
                (old, (-h).exp_m1() * (1.0 / (2.0 * r)))
            });
            for (j, xv) in x.iter_mut().enumerate() {
                let dv = f64::from(st.den[j]);
                let mut mix = -decay * f64::from(st.uncond[j]);
                if let Some((old, k)) = &corr {
                    mix -= k * (dv - f64::from(old[j]));
                }
                *xv = (dv + mix + decay * f64::from(*xv)) as f32;
            }
        }
        old_uncond = Some(st.uncond);
        Ok(())
    })
}
