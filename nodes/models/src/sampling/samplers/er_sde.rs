//! ER-SDE-Solver-3 (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDE for diffusion
//! models", arXiv 2309.06169): ComfyUI's `sample_er_sde` (`comfy/k_diffusion/sampling.py` @ Comfy-Org/ComfyUI
//! a125cd84b054a57729b5eecab930ca9408719832) with KSampler's defaults: s_noise 1, the default noise scaler
//! `x (exp(x^0.3) + 10)`, up to 3 stages (the first step Euler, the second 2-stage, then 3-stage), one model call
//! and (but the last step, which returns the denoised latent) one noise draw per step, from the KSampler's seed + 1
//! stream (ComfyUI's `default_noise_sampler`).
//!
//! The stage-2/3 integrals are ComfyUI's 200-point Riemann sums; their points are float32 as in ComfyUI (torch
//! promotes the float32 `arange` times a float64 scalar to float32), the sums kept in f64 and rounded to f32.

use super::{Denoiser, Job, Noise, Sampled, SamplerHooks, draw};

/// ComfyUI's `default_er_sde_noise_scaler`.
fn noise_scaler(x: f64) -> f64 {
    x * (x.powf(0.3).exp() + 10.0)
}

/// [`noise_scaler`] on a float32 value, in float32.
fn noise_scaler_f32(x: f32) -> f32 {
    x * ((x.powf(0.3)).exp() + 10.0)
}

/// `sample_er_sde(s_noise, max_stage=3)`.
pub fn sample_er_sde<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    const MAX_STAGE: usize = 3;
    const POINTS: usize = 200;
    let Noise { source, s_noise, .. } = noise;
    let sigmas = job.sigmas;
    // er_lambda = sigma / alpha = exp(-half_log_snr), half_log_snr = -log sigma (0 at sigma 0).
    let er_lambdas: Vec<f64> = sigmas.iter().map(|s| (-(-s.ln())).exp()).collect();
    let mut old_denoised: Option<Vec<f32>> = None;
    let mut old_denoised_d: Option<Vec<f64>> = None;
    job.steps(x, &mut |_, st, x| {
        let i = st.i;
        let stage_used = MAX_STAGE.min(i + 1);
        if st.s_next == 0.0 {
            x.copy_from_slice(&st.den);
            old_denoised = Some(st.den);
            return Ok(());
        }
        let (er_s, er_t) = (er_lambdas[i], er_lambdas[i + 1]);
        let alpha_s = st.s / er_s;
        let alpha_t = st.s_next / er_t;
        let r_alpha = alpha_t / alpha_s;
        let r = noise_scaler(er_t) / noise_scaler(er_s);

        // Stage 1 Euler
        let (a, b) = (r_alpha * r, alpha_t * (1.0 - r));
        let mut next: Vec<f64> =
            x.iter().zip(&st.den).map(|(&xv, &dv)| a * f64::from(xv) + b * f64::from(dv)).collect();

        if stage_used >= 2 {
            let old = old_denoised.as_ref().expect("a step before");
            let dt = er_t - er_s;
            let step = -dt / POINTS as f64;
            // lambda_pos = er_lambda_t + arange(200) * step, in float32.
            let lambda_pos: Vec<f32> = (0..POINTS).map(|k| (k as f32) * (step as f32) + er_t as f32).collect();
            let scaled: Vec<f32> = lambda_pos.iter().map(|&l| noise_scaler_f32(l)).collect();

            // Stage 2
            let sum: f64 = scaled.iter().map(|&p| f64::from(1.0 / p)).sum();
            let s_int = f64::from(sum as f32) * step;
            let denoised_d: Vec<f64> =
                (0..x.len()).map(|j| (f64::from(st.den[j]) - f64::from(old[j])) / (er_s - er_lambdas[i - 1])).collect();
            let k2 = alpha_t * (dt + s_int * noise_scaler(er_t));
            for (v, dd) in next.iter_mut().zip(&denoised_d) {
                *v += k2 * dd;
            }

            if stage_used >= 3 {
                // Stage 3
                let old_d = old_denoised_d.as_ref().expect("a stage-2 step before");
                let sum: f64 = lambda_pos.iter().zip(&scaled).map(|(&l, &p)| f64::from((l - er_s as f32) / p)).sum();
                let s_u = f64::from(sum as f32) * step;
                let k3 = alpha_t * (dt * dt / 2.0 + s_u * noise_scaler(er_t));
                let half_gap = (er_s - er_lambdas[i - 2]) / 2.0;
                for ((v, dd), od) in next.iter_mut().zip(&denoised_d).zip(old_d) {
                    *v += k3 * ((dd - od) / half_gap);
                }
            }
            old_denoised_d = Some(denoised_d);
        }

        if s_noise > 0.0 {
            let z = draw(source, st.s, st.s_next, x.len());
            let spread = (er_t * er_t - er_s * er_s * (r * r)).sqrt();
            let spread = if spread.is_nan() { 0.0 } else { spread };
            for (v, &zv) in next.iter_mut().zip(&z) {
                *v += alpha_t * f64::from(zv) * s_noise * spread;
            }
        }
        for (xv, v) in x.iter_mut().zip(next) {
            *xv = v as f32;
        }
        old_denoised = Some(st.den);
        Ok(())
    })
}
