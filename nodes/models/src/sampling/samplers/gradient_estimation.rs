//! Gradient estimation (Permenter and Yuan 2024, "Interpreting and Improving Diffusion Models from an Optimization
//! Perspective"): ComfyUI's `sample_gradient_estimation` and its CFG++ form (`comfy/k_diffusion/sampling.py` @
//! Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832).

use super::{Denoiser, Job, Sampled, SamplerHooks};

/// ComfyUI's `ge_gamma`.
const GE_GAMMA: f64 = 2.0;

/// `sample_gradient_estimation(ge_gamma=2, cfg_pp)`: an Euler step whose slope `d = (x - denoised) / sigma` is
/// corrected from the second step on by `(ge_gamma - 1) (d - d_prev) dt`; the last step lands on the denoised
/// latent. With `cfg_pp` the slope comes from the negative prompt's estimate and the step from the guided one
/// (`x = denoised + d * sigma_next`).
pub fn sample_gradient_estimation<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    cfg_pp: bool,
) -> Sampled<D> {
    let mut old_d: Option<Vec<f64>> = None;
    let mut update = |_: &mut super::Run<'_, D, H>, st: super::Step, x: &mut Vec<f32>| {
        let (s, s_next) = (st.s, st.s_next);
        let base = if cfg_pp { &st.uncond } else { &st.den };
        let d: Vec<f64> = x.iter().zip(base).map(|(&xv, &bv)| (f64::from(xv) - f64::from(bv)) / s).collect();
        let dt = s_next - s;
        if s_next == 0.0 {
            x.copy_from_slice(&st.den);
        } else {
            for (j, xv) in x.iter_mut().enumerate() {
                let mut v = if cfg_pp { f64::from(st.den[j]) + d[j] * s_next } else { f64::from(*xv) + d[j] * dt };
                if let Some(old) = &old_d {
                    v += (GE_GAMMA - 1.0) * (d[j] - old[j]) * dt;
                }
                *xv = v as f32;
            }
        }
        old_d = Some(d);
        Ok(())
    };
    if cfg_pp { job.steps_with_uncond(x, &mut update) } else { job.steps(x, &mut update) }
}
