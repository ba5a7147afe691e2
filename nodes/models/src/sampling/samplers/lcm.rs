//! LCM: ComfyUI's `sample_lcm` (`comfy/k_diffusion/sampling.py`, rattus128/ComfyUI @
//! 9b039406af3b518885b2cf891942df69d09ee8ae; not in k-diffusion): each step takes the denoised latent and, unless
//! the next sigma is 0, re-noises it with the eps/v models' `noise_scaling(sigma_next, noise, x)` =
//! `noise * sigma_next + x`.

use super::{Denoiser, NoiseSource, Run, SampleError, SamplerHooks, draw};

/// `sample_lcm`: one draw per step but the last.
pub fn sample_lcm<D, N, H>(
    denoiser: &mut D,
    mut x: Vec<f32>,
    sigmas: &[f64],
    noise: &mut N,
    hooks: &mut H,
) -> Result<Vec<f32>, SampleError<D::Error>>
where
    D: Denoiser + ?Sized,
    N: NoiseSource + ?Sized,
    H: SamplerHooks + ?Sized,
{
    let mut run = Run::new(denoiser, hooks, &x, sigmas)?;
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let den = run.denoise(i, &x, s)?;
        run.report(i, sigmas, &x, &den);
        x = den;
        if s_next > 0.0 {
            let z = draw(noise, s, s_next, x.len());
            for (xv, &zv) in x.iter_mut().zip(&z) {
                *xv = (f64::from(zv) * s_next + f64::from(*xv)) as f32;
            }
        }
    }
    Ok(x)
}
