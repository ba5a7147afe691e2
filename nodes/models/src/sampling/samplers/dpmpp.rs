//! DPM-Solver++ samplers: k-diffusion 0.1.1.post1 `sample_dpmpp_2m`, `sample_dpmpp_2m_sde` (midpoint) and
//! `sample_dpmpp_sde`, as in ComfyUI's `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @
//! 9b039406af3b518885b2cf891942df69d09ee8ae). ComfyUI writes the SDE ones in half-log-SNR form with `alpha_t`
//! factors, which are 1 for eps/v (non-flow) models, leaving k-diffusion's formulas; like ComfyUI, the last step
//! (to sigma 0) returns the denoised latent, and no noise is drawn when `eta` or `s_noise` is 0.

use super::{Denoiser, Job, Noise, Sampled, SamplerHooks, ancestral_step, draw};

/// k-diffusion's `t_fn` and `sigma_fn`: time is the negative log sigma.
fn t_fn(sigma: f64) -> f64 {
    -sigma.ln()
}

fn sigma_fn(t: f64) -> f64 {
    (-t).exp()
}

/// `sample_dpmpp_2m`: the second-order multistep DPM-Solver++ (first order on the first and last steps).
pub fn sample_dpmpp_2m<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    let sigmas = job.sigmas;
    let mut old_denoised: Option<Vec<f32>> = None;
    job.steps(x, &mut |_, st, x| {
        let (s, s_next, den) = (st.s, st.s_next, st.den);
        if s_next == 0.0 {
            // (0 / sigma) * x - expm1(-inf) * denoised.
            x.copy_from_slice(&den);
        } else {
            let (t, t_next) = (t_fn(s), t_fn(s_next));
            let h = t_next - t;
            let ratio = sigma_fn(t_next) / sigma_fn(t);
            let c = -(-h).exp_m1();
            match &old_denoised {
                None => {
                    for (xv, &dv) in x.iter_mut().zip(&den) {
                        *xv = (ratio * f64::from(*xv) + c * f64::from(dv)) as f32;
                    }
                }
                Some(old) => {
                    let h_last = t - t_fn(sigmas[st.i - 1]);
                    let r = h_last / h;
                    let (a, b) = (1.0 + 1.0 / (2.0 * r), 1.0 / (2.0 * r));
                    for ((xv, &dv), &ov) in x.iter_mut().zip(&den).zip(old) {
                        let dd = a * f64::from(dv) - b * f64::from(ov);
                        *xv = (ratio * f64::from(*xv) + c * dd) as f32;
                    }
                }
            }
        }
        old_denoised = Some(den);
        Ok(())
    })
}

/// `sample_dpmpp_2m_sde(eta, s_noise, solver_type='midpoint')`: one noise draw per step but the last.
pub fn sample_dpmpp_2m_sde<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    dpmpp_2m_sde(job, x, noise, false)
}

/// `sample_dpmpp_2m_sde_heun(eta, s_noise)`: `sample_dpmpp_2m_sde` with `solver_type='heun'`, whose second-order
/// correction weighs `denoised - old_denoised` by `phi_2(h_eta) = -expm1(-h_eta) / -h_eta + 1` instead of the
/// midpoint's `-expm1(-h_eta) / 2`. ComfyUI's `dpmpp_2m_sde_heun` (and `_gpu`); its noise as `dpmpp_2m_sde`'s.
pub fn sample_dpmpp_2m_sde_heun<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    dpmpp_2m_sde(job, x, noise, true)
}

/// DPM-Solver++(2M) SDE with the midpoint (`heun` false) or Heun correction.
fn dpmpp_2m_sde<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
    heun: bool,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    let mut old_denoised: Option<Vec<f32>> = None;
    let mut h_last: Option<f64> = None;
    let mut h: Option<f64> = None;
    job.steps(x, &mut |_, st, x| {
        let (s, s_next, den) = (st.s, st.s_next, st.den);
        if s_next == 0.0 {
            x.copy_from_slice(&den);
        } else {
            let (t, t_next) = (-s.ln(), -s_next.ln());
            let hh = t_next - t;
            h = Some(hh);
            let eta_h = eta * hh;
            let ratio = s_next / s * (-eta_h).exp();
            let c = -(-hh - eta_h).exp_m1();
            // midpoint: 0.5 * c * (1 / r) * (denoised - old_denoised), r = h_last / h; heun: (c / (h + eta_h) + 1)
            // in place of 0.5 * c, as k-diffusion writes it.
            let corr = match (&old_denoised, h_last) {
                (Some(old), Some(hl)) if heun => Some((old, (c / (-hh - eta_h) + 1.0) * (1.0 / (hl / hh)))),
                (Some(old), Some(hl)) => Some((old, 0.5 * c * (1.0 / (hl / hh)))),
                _ => None,
            };
            let z = if eta > 0.0 && s_noise > 0.0 { Some(draw(source, s, s_next, x.len())) } else { None };
            let amp = s_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise;
            for (j, xv) in x.iter_mut().enumerate() {
                let dv = f64::from(den[j]);
                let mut v = ratio * f64::from(*xv) + c * dv;
                if let Some((old, k)) = corr {
                    v += k * (dv - f64::from(old[j]));
                }
                if let Some(z) = &z {
                    v += f64::from(z[j]) * amp;
                }
                *xv = v as f32;
            }
        }
        old_denoised = Some(den);
        h_last = h;
        Ok(())
    })
}

/// `sample_dpmpp_3m_sde(eta, s_noise)` (ComfyUI's, Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832):
/// DPM-Solver++(3M) SDE, the first step first order, the second DPM-Solver++(2M) SDE, then third order from the last
/// three denoised latents; one noise draw per step but the last, which returns the denoised latent. Written as
/// ComfyUI writes it, in half-log-SNR `lambda = -log sigma` with `alpha_t = sigma_next * exp(lambda_t)` (1 up to
/// rounding for eps/v models).
pub fn sample_dpmpp_3m_sde<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    // The last two denoised latents and the steps (in lambda) before this one: (denoised_1, h_1), (denoised_2, h_2).
    let mut den_1: Option<Vec<f32>> = None;
    let mut den_2: Option<Vec<f32>> = None;
    let (mut h, mut h_1, mut h_2): (Option<f64>, Option<f64>, Option<f64>) = (None, None, None);
    job.steps(x, &mut |_, st, x| {
        let (s, s_next, den) = (st.s, st.s_next, st.den);
        if s_next == 0.0 {
            x.copy_from_slice(&den);
        } else {
            let (lambda_s, lambda_t) = (t_fn(s), t_fn(s_next));
            let hh = lambda_t - lambda_s;
            h = Some(hh);
            let h_eta = hh * (eta + 1.0);
            let alpha_t = s_next * lambda_t.exp();
            let ratio = s_next / s * (-hh * eta).exp();
            let c = alpha_t * -(-h_eta).exp_m1();
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
            let phi_3 = phi_2 / h_eta - 0.5;
            let z = if eta > 0.0 && s_noise > 0.0 { Some(draw(source, s, s_next, x.len())) } else { None };
            let amp = s_next * (-(-2.0 * hh * eta).exp_m1()).sqrt() * s_noise;
            for (j, xv) in x.iter_mut().enumerate() {
                let dv = f64::from(den[j]);
                let mut v = ratio * f64::from(*xv) + c * dv;
                match (&den_1, &den_2, h_1, h_2) {
                    (Some(d1), Some(d2), Some(h1), Some(h2)) => {
                        let (r0, r1) = (h1 / hh, h2 / hh);
                        let d1_0 = (dv - f64::from(d1[j])) / r0;
                        let d1_1 = (f64::from(d1[j]) - f64::from(d2[j])) / r1;
                        let dd1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1);
                        let dd2 = (d1_0 - d1_1) / (r0 + r1);
                        v = v + (alpha_t * phi_2) * dd1 - (alpha_t * phi_3) * dd2;
                    }
                    (Some(d1), _, Some(h1), _) => {
                        let d = (dv - f64::from(d1[j])) / (h1 / hh);
                        v += (alpha_t * phi_2) * d;
                    }
                    _ => {}
                }
                if let Some(z) = &z {
                    v += f64::from(z[j]) * amp;
                }
                *xv = v as f32;
            }
        }
        den_2 = den_1.replace(den);
        (h_2, h_1) = (h_1, h);
        Ok(())
    })
}

/// `sample_dpmpp_sde(eta, s_noise, r=1/2)`: two model calls and two noise draws per step but the last. The draws are
/// for the steps from `sigma` to the intermediate sigma and from `sigma` to `sigma_next` (ComfyUI's arguments; these
/// overlap, which matters to [`super::BrownianNoise`]).
pub fn sample_dpmpp_sde<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    const R: f64 = 0.5;
    let Noise { source, eta, s_noise } = noise;
    let noisy = eta > 0.0 && s_noise > 0.0;
    job.steps(x, &mut |run, st, x| {
        let (s, s_next, den) = (st.s, st.s_next, &st.den);
        if s_next == 0.0 {
            x.copy_from_slice(den);
            return Ok(());
        }
        let (t, t_next) = (t_fn(s), t_fn(s_next));
        let h = t_next - t;
        let t_s = t + h * R;
        let fac = 1.0 / (2.0 * R);
        let sigma_s = sigma_fn(t_s);

        // Step 1
        let (sd, su) = ancestral_step(sigma_fn(t), sigma_s, eta);
        let s_ = t_fn(sd);
        let ratio = sigma_fn(s_) / sigma_fn(t);
        let c = (t - s_).exp_m1();
        let z1 = if noisy { Some(draw(source, s, sigma_s, x.len())) } else { None };
        let amp1 = s_noise * su;
        let x2: Vec<f32> = (0..x.len())
            .map(|j| {
                let mut v = ratio * f64::from(x[j]) - c * f64::from(den[j]);
                if let Some(z) = &z1 {
                    v += f64::from(z[j]) * amp1;
                }
                v as f32
            })
            .collect();
        let den2 = run.denoise(st.i, &x2, sigma_s)?;

        // Step 2
        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(t_next), eta);
        let t_next_ = t_fn(sd);
        let ratio = sigma_fn(t_next_) / sigma_fn(t);
        let c = (t - t_next_).exp_m1();
        let z2 = if noisy { Some(draw(source, s, s_next, x.len())) } else { None };
        let amp2 = s_noise * su;
        for (j, xv) in x.iter_mut().enumerate() {
            let dd = (1.0 - fac) * f64::from(den[j]) + fac * f64::from(den2[j]);
            let mut v = ratio * f64::from(*xv) - c * dd;
            if let Some(z) = &z2 {
                v += f64::from(z[j]) * amp2;
            }
            *xv = v as f32;
        }
        Ok(())
    })
}
