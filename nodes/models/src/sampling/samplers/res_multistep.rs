//! RES multistep (Zhang et al. 2023, "Improving Sample Quality of Diffusion Models Using Refined Exponential
//! Solvers", arXiv 2308.02157): ComfyUI's `res_multistep` behind `sample_res_multistep`,
//! `sample_res_multistep_ancestral` and their `_cfg_pp` forms (`comfy/k_diffusion/sampling.py` @ Comfy-Org/ComfyUI
//! a125cd84b054a57729b5eecab930ca9408719832).

use super::{Denoiser, Job, Noise, Sampled, SamplerHooks, Step, ancestral_step, draw};

/// `res_multistep(eta, s_noise, cfg_pp)`: the first step and any step whose `sigma_down` is 0 (the last) are Euler
/// steps to `sigma_down`; the others the second-order exponential multistep update from the step's and the last
/// step's denoised latents. Then, unless `sigma_next` is 0, `noise * s_noise * sigma_up`. With eta 0
/// (`res_multistep`) `sigma_up` is 0 and no noise is drawn (ComfyUI draws it and multiplies it by 0).
/// With `cfg_pp` the negative prompt's estimate drives the update (ComfyUI's CFG++ form).
pub fn sample_res_multistep<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
    cfg_pp: bool,
) -> Sampled<D> {
    let Noise { source, eta, s_noise } = noise;
    let sigmas = job.sigmas;
    // The last step's sigma_down and denoised latent (its negative prompt's, with cfg_pp).
    let mut old: Option<(f64, Vec<f32>)> = None;
    let mut update = |_: &mut super::Run<'_, D, H>, st: Step, x: &mut Vec<f32>| {
        let (s, s_next) = (st.s, st.s_next);
        let (sigma_down, sigma_up) = ancestral_step(s, s_next, eta);
        let mut next: Vec<f64> = match &old {
            Some((old_sigma_down, old_den)) if sigma_down != 0.0 => {
                let t_fn = |sigma: f64| -sigma.ln();
                let (t, t_old, t_next, t_prev) =
                    (t_fn(s), t_fn(*old_sigma_down), t_fn(sigma_down), t_fn(sigmas[st.i - 1]));
                let h = t_next - t;
                let c2 = (t_prev - t_old) / h;
                let phi1 = (-h).exp_m1() / -h;
                let phi2 = (phi1 - 1.0) / -h;
                let nan0 = |v: f64| if v.is_nan() { 0.0 } else { v };
                let (b1, b2) = (nan0(phi1 - phi2 / c2), nan0(phi2 / c2));
                let decay = (-h).exp();
                (0..x.len())
                    .map(|j| {
                        let (xv, dv, ov) = (f64::from(x[j]), f64::from(st.den[j]), f64::from(old_den[j]));
                        if cfg_pp {
                            let uv = f64::from(st.uncond[j]);
                            decay * (xv + (dv - uv)) + h * (b1 * uv + b2 * ov)
                        } else {
                            decay * xv + h * (b1 * dv + b2 * ov)
                        }
                    })
                    .collect()
            }
            _ => (0..x.len())
                .map(|j| {
                    let (xv, dv) = (f64::from(x[j]), f64::from(st.den[j]));
                    if cfg_pp {
                        dv + (xv - f64::from(st.uncond[j])) / s * sigma_down
                    } else {
                        xv + (xv - dv) / s * (sigma_down - s)
                    }
                })
                .collect(),
        };
        if s_next > 0.0 && sigma_up != 0.0 {
            let z = draw(source, s, s_next, x.len());
            let amp = s_noise * sigma_up;
            for (v, &zv) in next.iter_mut().zip(&z) {
                *v += f64::from(zv) * amp;
            }
        }
        for (xv, v) in x.iter_mut().zip(next) {
            *xv = v as f32;
        }
        old = Some((sigma_down, if cfg_pp { st.uncond } else { st.den }));
        Ok(())
    };
    if cfg_pp { job.steps_with_uncond(x, &mut update) } else { job.steps(x, &mut update) }
}
