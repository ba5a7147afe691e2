//! LCM: ComfyUI's `sample_lcm` (`comfy/k_diffusion/sampling.py`, rattus128/ComfyUI @
//! 9b039406af3b518885b2cf891942df69d09ee8ae; not in k-diffusion): each step takes the denoised latent and, unless
//! the next sigma is 0, re-noises it with the eps/v models' `noise_scaling(sigma_next, noise, x)` =
//! `noise * sigma_next + x`.

use super::{Denoiser, Job, NoiseSource, Sampled, SamplerHooks, draw};

/// `sample_lcm`: one draw per step but the last.
pub fn sample_lcm<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: &mut dyn NoiseSource,
) -> Sampled<D> {
    job.steps(x, &mut |_, st, x| {
        *x = st.den;
        if st.s_next > 0.0 {
            let z = draw(noise, st.s, st.s_next, x.len());
            for (xv, &zv) in x.iter_mut().zip(&z) {
                *xv = (f64::from(zv) * st.s_next + f64::from(*xv)) as f32;
            }
        }
        Ok(())
    })
}
