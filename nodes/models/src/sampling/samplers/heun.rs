//! Heun and DPM-2: k-diffusion 0.1.1.post1 `sample_heun` / `sample_dpm_2` (no churn), as in ComfyUI's
//! `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae). Both take two
//! model calls per step except the last (to sigma 0), which is an Euler step. ComfyUI's `heunpp2` (up to three calls
//! a step) is here too.

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

/// `sample_heunpp2` (ComfyUI's, after Carzit/sd-webui-samplers-scheduler; Comfy-Org/ComfyUI @
/// a125cd84b054a57729b5eecab930ca9408719832), without churn as KSampler runs it: a step to the last sigma is an
/// Euler step; one to the sigma before it a Heun step whose slopes weigh `1 - w2` and `w2 = sigma_next / (2
/// sigmas[0])`; any other "Heun++": Euler predictors to `sigma_next` and on to the sigma after it, three slopes
/// weighed `1 - w2 - w3`, `w2 = sigma_next / (3 sigmas[0])`, `w3 = sigma_after / (3 sigmas[0])`, the step itself
/// still to `sigma_next` (three model calls).
pub fn sample_heunpp2<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    let sigmas = job.sigmas;
    // (Empty sigmas are refused by `steps` before any step.)
    let (first, end) = (sigmas.first().copied().unwrap_or(0.0), sigmas.last().copied().unwrap_or(0.0));
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let dt = s_next - s;
        let d = slope(x, &st.den, s);
        if s_next == end {
            *x = euler_to(x, &d, dt);
            return Ok(());
        }
        let x2 = euler_to(x, &d, dt);
        let den2 = run.denoise(st.i, &x2, s_next)?;
        let d2 = slope(&x2, &den2, s_next);
        let s_after = sigmas[st.i + 2];
        let d_prime: Vec<f64> = if s_after == end {
            let w2 = s_next / (2.0 * first);
            let w1 = 1.0 - w2;
            d.iter().zip(&d2).map(|(dv, d2v)| dv * w1 + d2v * w2).collect()
        } else {
            let x3 = euler_to(&x2, &d2, s_after - s_next);
            let den3 = run.denoise(st.i, &x3, s_after)?;
            let d3 = slope(&x3, &den3, s_after);
            let w = 3.0 * first;
            let (w2, w3) = (s_next / w, s_after / w);
            let w1 = 1.0 - w2 - w3;
            (0..x.len()).map(|j| w1 * d[j] + w2 * d2[j] + w3 * d3[j]).collect()
        };
        *x = euler_to(x, &d_prime, dt);
        Ok(())
    })
}
