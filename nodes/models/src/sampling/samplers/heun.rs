//! Heun and DPM-2: k-diffusion 0.1.1.post1 `sample_heun` / `sample_dpm_2` (no churn), as in ComfyUI's
//! `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae). Both take two
//! model calls per step except the last (to sigma 0), which is an Euler step.

use super::{Denoiser, Job, Sampled, SamplerHooks};

/// The Euler slope `(x - denoised) / sigma`, per element in f64.
fn slope(x: &[f32], den: &[f32], sigma: f64) -> Vec<f64> {
    x.iter().zip(den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / sigma).collect()
}

/// `x + d * dt`, rounded to f32.
fn euler_to(x: &[f32], d: &[f64], dt: f64) -> Vec<f32> {
    x.iter().zip(d).map(|(&xv, dv)| (f64::from(xv) + dv * dt) as f32).collect()
}

/// `sample_heun`: Euler predictor to `sigma_next`, then the average of both slopes.
pub fn sample_heun<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let dt = s_next - s;
        let d = slope(x, &st.den, s);
        let x2 = euler_to(x, &d, dt);
        if s_next == 0.0 {
            *x = x2;
            return Ok(());
        }
        let den2 = run.denoise(st.i, &x2, s_next)?;
        for (((xv, dv), &x2v), &d2v) in x.iter_mut().zip(&d).zip(&x2).zip(&den2) {
            let d2 = (f64::from(x2v) - f64::from(d2v)) / s_next;
            *xv = (f64::from(*xv) + (dv + d2) / 2.0 * dt) as f32;
        }
        Ok(())
    })
}

/// `sample_dpm_2`: an Euler half step to the log-midpoint sigma, whose slope then takes the full step.
pub fn sample_dpm_2<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let d = slope(x, &st.den, s);
        if s_next == 0.0 {
            *x = euler_to(x, &d, s_next - s);
            return Ok(());
        }
        // sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp(); torch's lerp at weight 0.5 is `end - diff * 0.5`.
        let (l0, l1) = (s.ln(), s_next.ln());
        let sigma_mid = (l1 - (l1 - l0) * 0.5).exp();
        let (dt1, dt2) = (sigma_mid - s, s_next - s);
        let x2 = euler_to(x, &d, dt1);
        let den2 = run.denoise(st.i, &x2, sigma_mid)?;
        for ((xv, &x2v), &d2v) in x.iter_mut().zip(&x2).zip(&den2) {
            let d2 = (f64::from(x2v) - f64::from(d2v)) / sigma_mid;
            *xv = (f64::from(*xv) + d2 * dt2) as f32;
        }
        Ok(())
    })
}
