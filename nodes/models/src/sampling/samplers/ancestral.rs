//! Second-order ancestral samplers: `sample_dpm_2_ancestral` and `sample_dpmpp_2s_ancestral` of ComfyUI's
//! `comfy/k_diffusion/sampling.py` (Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832; k-diffusion
//! 0.1.1's, less the RF branches for flow models). Each step but the last takes two model calls: one at the step's
//! sigma, one at a midpoint on the way to `sigma_down`; then one noise draw of `sigma_up` (none on the last step,
//! whose `sigma_down` is 0).

use super::{Denoiser, Job, Noise, Sampled, SamplerHooks, ancestral_step, draw};

/// `sample_dpm_2_ancestral(eta, s_noise)`: DPM-Solver-2 (an Euler half step to the log-midpoint of `sigma` and
/// `sigma_down`, whose slope takes the whole step to `sigma_down`), then `noise * s_noise * sigma_up`. A step with
/// `sigma_down` 0 is an Euler step there, without noise.
pub fn sample_dpm_2_ancestral<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let (sigma_down, sigma_up) = ancestral_step(s, s_next, eta);
        let d: Vec<f64> = x.iter().zip(&st.den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / s).collect();
        if sigma_down == 0.0 {
            let dt = sigma_down - s;
            for (xv, dv) in x.iter_mut().zip(&d) {
                *xv = (f64::from(*xv) + dv * dt) as f32;
            }
            return Ok(());
        }
        // sigmas[i].log().lerp(sigma_down.log(), 0.5).exp(): torch's lerp at weight 0.5 is `end - diff * 0.5`.
        let (l0, l1) = (s.ln(), sigma_down.ln());
        let sigma_mid = (l1 - (l1 - l0) * 0.5).exp();
        let (dt1, dt2) = (sigma_mid - s, sigma_down - s);
        let x2: Vec<f32> = x.iter().zip(&d).map(|(&xv, dv)| (f64::from(xv) + dv * dt1) as f32).collect();
        let den2 = run.denoise(st.i, &x2, sigma_mid)?;
        let z = draw(source, s, s_next, x.len());
        let amp = s_noise * sigma_up;
        for (((xv, &x2v), &d2v), &zv) in x.iter_mut().zip(&x2).zip(&den2).zip(&z) {
            let d2 = (f64::from(x2v) - f64::from(d2v)) / sigma_mid;
            *xv = (f64::from(*xv) + d2 * dt2 + f64::from(zv) * amp) as f32;
        }
        Ok(())
    })
}

/// `sample_dpmpp_2s_ancestral(eta, s_noise)`: DPM-Solver++(2S) from `sigma` to `sigma_down` (its midpoint at half
/// the step in `-log sigma`), then, unless `sigma_next` is 0, `noise * s_noise * sigma_up`.
pub fn sample_dpmpp_2s_ancestral<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let (sigma_down, sigma_up) = ancestral_step(s, s_next, eta);
        let mut next: Vec<f64> = if sigma_down == 0.0 {
            // Euler to sigma_down.
            let dt = sigma_down - s;
            x.iter().zip(&st.den).map(|(&xv, &dv)| f64::from(xv) + (f64::from(xv) - f64::from(dv)) / s * dt).collect()
        } else {
            let (t, t_next) = (-s.ln(), -sigma_down.ln());
            let h = t_next - t;
            let t_mid = t + 0.5 * h;
            let sigma_mid = (-t_mid).exp();
            let (ratio1, c1) = (sigma_mid / (-t).exp(), (-h * 0.5).exp_m1());
            let x2: Vec<f32> =
                x.iter().zip(&st.den).map(|(&xv, &dv)| (ratio1 * f64::from(xv) - c1 * f64::from(dv)) as f32).collect();
            let den2 = run.denoise(st.i, &x2, sigma_mid)?;
            let (ratio, c) = ((-t_next).exp() / (-t).exp(), (-h).exp_m1());
            x.iter().zip(&den2).map(|(&xv, &dv)| ratio * f64::from(xv) - c * f64::from(dv)).collect()
        };
        if s_next > 0.0 {
            let z = draw(source, s, s_next, x.len());
            let amp = s_noise * sigma_up;
            for (v, &zv) in next.iter_mut().zip(&z) {
                *v += f64::from(zv) * amp;
            }
        }
        for (xv, v) in x.iter_mut().zip(next) {
            *xv = v as f32;
        }
        Ok(())
    })
}
