//! Heun and DPM-2: k-diffusion 0.1.1.post1 `sample_heun` / `sample_dpm_2` (no churn), as in ComfyUI's
//! `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae). Both take two
//! model calls per step except the last (to sigma 0), which is an Euler step.

use super::{Denoiser, Run, SampleError, SamplerHooks};

/// `sample_heun`: Euler predictor to `sigma_next`, then the average of both slopes.
pub fn sample_heun<D, H>(
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
        let d: Vec<f64> = x.iter().zip(&den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / s).collect();
        if s_next == 0.0 {
            for (xv, dv) in x.iter_mut().zip(&d) {
                *xv = (f64::from(*xv) + dv * dt) as f32;
            }
            continue;
        }
        let x2: Vec<f32> = x.iter().zip(&d).map(|(&xv, dv)| (f64::from(xv) + dv * dt) as f32).collect();
        let den2 = run.denoise(i, &x2, s_next)?;
        for (((xv, dv), &x2v), &d2v) in x.iter_mut().zip(&d).zip(&x2).zip(&den2) {
            let d2 = (f64::from(x2v) - f64::from(d2v)) / s_next;
            *xv = (f64::from(*xv) + (dv + d2) / 2.0 * dt) as f32;
        }
    }
    Ok(x)
}

/// `sample_dpm_2`: an Euler half step to the log-midpoint sigma, whose slope then takes the full step.
pub fn sample_dpm_2<D, H>(
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
        let d: Vec<f64> = x.iter().zip(&den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / s).collect();
        if s_next == 0.0 {
            let dt = s_next - s;
            for (xv, dv) in x.iter_mut().zip(&d) {
                *xv = (f64::from(*xv) + dv * dt) as f32;
            }
            continue;
        }
        // sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp(); torch's lerp at weight 0.5 is `end - diff * 0.5`.
        let (l0, l1) = (s.ln(), s_next.ln());
        let sigma_mid = (l1 - (l1 - l0) * 0.5).exp();
        let (dt1, dt2) = (sigma_mid - s, s_next - s);
        let x2: Vec<f32> = x.iter().zip(&d).map(|(&xv, dv)| (f64::from(xv) + dv * dt1) as f32).collect();
        let den2 = run.denoise(i, &x2, sigma_mid)?;
        for ((xv, &x2v), &d2v) in x.iter_mut().zip(&x2).zip(&den2) {
            let d2 = (f64::from(x2v) - f64::from(d2v)) / sigma_mid;
            *xv = (f64::from(*xv) + d2 * dt2) as f32;
        }
    }
    Ok(x)
}
