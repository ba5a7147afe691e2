//! Second-order ancestral samplers: `sample_dpm_2_ancestral` and `sample_dpmpp_2s_ancestral` of ComfyUI's
//! `comfy/k_diffusion/sampling.py` (Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832; k-diffusion
//! 0.1.1's, less the RF branches for flow models). Each step but the last takes two model calls: one at the step's
//! sigma, one at a midpoint on the way to `sigma_down`; then one noise draw of `sigma_up` (none on the last step,
//! whose `sigma_down` is 0).
//!
//! [`ancestral_steps`] is the loop every ancestral sampler of this shape shares (these two, `euler_ancestral` and
//! `dpmpp_2s_ancestral_cfg_pp`): the step down to `sigma_down`, then the noise.

use super::{Denoiser, Job, Noise, Run, SampleError, Sampled, SamplerHooks, Step, ancestral_step, draw};

/// An ancestral sampler's deterministic part of a step: given the step, the latent and `sigma_down`, the latent at
/// `sigma_down` (in f64, before rounding) and whether this step then takes noise.
pub(crate) type ToDown<'u, D, H> = dyn FnMut(&mut Run<'_, D, H>, &Step, &[f32], f64) -> Result<(Vec<f64>, bool), SampleError<<D as Denoiser>::Error>>
    + 'u;

/// The ancestral loop: per step `(sigma_down, sigma_up) = get_ancestral_step(sigma, sigma_next, eta)`, `to_down`,
/// then (where it says so) `noise(sigma, sigma_next) * s_noise * sigma_up` added in f64; the sum is rounded to f32.
/// `with_uncond`: the model calls also give the negative prompt's estimate ([`Job::steps_with_uncond`]).
pub(crate) fn ancestral_steps<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
    with_uncond: bool,
    to_down: &mut ToDown<'_, D, H>,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    let mut update = |run: &mut Run<'_, D, H>, st: Step, x: &mut Vec<f32>| {
        let (sigma_down, sigma_up) = ancestral_step(st.s, st.s_next, eta);
        let (mut next, noisy) = to_down(run, &st, x, sigma_down)?;
        if noisy {
            let z = draw(source, st.s, st.s_next, x.len());
            let amp = s_noise * sigma_up;
            for (v, &zv) in next.iter_mut().zip(&z) {
                *v += f64::from(zv) * amp;
            }
        }
        for (xv, v) in x.iter_mut().zip(next) {
            *xv = v as f32;
        }
        Ok(())
    };
    if with_uncond { job.steps_with_uncond(x, &mut update) } else { job.steps(x, &mut update) }
}

/// DPM-Solver++(2S)'s coefficients from `sigma` to `sigma_down` (its midpoint at half the step in `-log sigma`):
/// `(sigma_mid, ratio1, c1, ratio, c)`, the midpoint latent being `ratio1 x - c1 denoised` and the step's end
/// `ratio x - c denoised_mid`.
pub(crate) fn dpmpp_2s_coefficients(s: f64, sigma_down: f64) -> (f64, f64, f64, f64, f64) {
    let (t, t_next) = (-s.ln(), -sigma_down.ln());
    let h = t_next - t;
    let t_mid = t + 0.5 * h;
    let sigma_mid = (-t_mid).exp();
    let (ratio1, c1) = (sigma_mid / (-t).exp(), (-h * 0.5).exp_m1());
    let (ratio, c) = ((-t_next).exp() / (-t).exp(), (-h).exp_m1());
    (sigma_mid, ratio1, c1, ratio, c)
}

/// `sample_dpm_2_ancestral(eta, s_noise)`: DPM-Solver-2 (an Euler half step to the log-midpoint of `sigma` and
/// `sigma_down`, whose slope takes the whole step to `sigma_down`), then `noise * s_noise * sigma_up`. A step with
/// `sigma_down` 0 is an Euler step there, without noise.
pub fn sample_dpm_2_ancestral<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    ancestral_steps(job, x, noise, false, &mut |run, st, x, sigma_down| {
        let s = st.s;
        let d: Vec<f64> = x.iter().zip(&st.den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / s).collect();
        if sigma_down == 0.0 {
            let dt = sigma_down - s;
            return Ok((x.iter().zip(&d).map(|(&xv, dv)| f64::from(xv) + dv * dt).collect(), false));
        }
        // sigmas[i].log().lerp(sigma_down.log(), 0.5).exp(): torch's lerp at weight 0.5 is `end - diff * 0.5`.
        let (l0, l1) = (s.ln(), sigma_down.ln());
        let sigma_mid = (l1 - (l1 - l0) * 0.5).exp();
        let (dt1, dt2) = (sigma_mid - s, sigma_down - s);
        let x2: Vec<f32> = x.iter().zip(&d).map(|(&xv, dv)| (f64::from(xv) + dv * dt1) as f32).collect();
        let den2 = run.denoise(st.i, &x2, sigma_mid)?;
        let next = x.iter().zip(&x2).zip(&den2).map(|((&xv, &x2v), &d2v)| {
            let d2 = (f64::from(x2v) - f64::from(d2v)) / sigma_mid;
            f64::from(xv) + d2 * dt2
        });
        Ok((next.collect(), true))
    })
}

/// `sample_dpmpp_2s_ancestral(eta, s_noise)`: DPM-Solver++(2S) from `sigma` to `sigma_down` (its midpoint at half
/// the step in `-log sigma`), then, unless `sigma_next` is 0, `noise * s_noise * sigma_up`.
pub fn sample_dpmpp_2s_ancestral<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    ancestral_steps(job, x, noise, false, &mut |run, st, x, sigma_down| {
        let (s, dt) = (st.s, sigma_down - st.s);
        let next: Vec<f64> = if sigma_down == 0.0 {
            // Euler to sigma_down.
            x.iter().zip(&st.den).map(|(&xv, &dv)| f64::from(xv) + (f64::from(xv) - f64::from(dv)) / s * dt).collect()
        } else {
            let (sigma_mid, ratio1, c1, ratio, c) = dpmpp_2s_coefficients(s, sigma_down);
            let x2: Vec<f32> =
                x.iter().zip(&st.den).map(|(&xv, &dv)| (ratio1 * f64::from(xv) - c1 * f64::from(dv)) as f32).collect();
            let den2 = run.denoise(st.i, &x2, sigma_mid)?;
            x.iter().zip(&den2).map(|(&xv, &dv)| ratio * f64::from(xv) - c * f64::from(dv)).collect()
        };
        Ok((next, st.s_next > 0.0))
    })
}
