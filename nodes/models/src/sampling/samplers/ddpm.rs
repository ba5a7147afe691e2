//! DDPM: ComfyUI's `sample_ddpm` (`generic_step_sampler` with `DDPMSampler_step`, `comfy/k_diffusion/sampling.py`
//! @ Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832; not in k-diffusion): Ho et al.'s ancestral step
//! on the variance-preserving latent `x / sqrt(1 + sigma^2)`, with `alpha_cumprod = 1 / (1 + sigma^2)`.

use super::{Denoiser, Job, NoiseSource, Sampled, SamplerHooks, draw};

/// `sample_ddpm`: per step, with `eps = (x - denoised) / sigma`, `a = acp / acp_next`,
/// `mu = sqrt(1 / a) (x_vp - (1 - a) eps / sqrt(1 - acp))`, plus (unless `sigma_next` is 0)
/// `sqrt((1 - a) (1 - acp_next) / (1 - acp)) * noise`, scaled back by `sqrt(1 + sigma_next^2)`. One draw per step
/// but the last, which lands on the denoised latent.
pub fn sample_ddpm<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: &mut dyn NoiseSource,
) -> Sampled<D> {
    job.steps(x, &mut |_, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        let acp = 1.0 / (s * s + 1.0);
        let acp_prev = 1.0 / (s_next * s_next + 1.0);
        let alpha = acp / acp_prev;
        let vp = (1.0 + s * s).sqrt();
        let (k_mu, k_eps) = ((1.0 / alpha).sqrt(), (1.0 - alpha) / (1.0 - acp).sqrt());
        let z = (s_next > 0.0).then(|| draw(noise, s, s_next, x.len()));
        let k_noise = ((1.0 - alpha) * (1.0 - acp_prev) / (1.0 - acp)).sqrt();
        let out_scale = if s_next != 0.0 { (1.0 + s_next * s_next).sqrt() } else { 1.0 };
        for (j, (xv, &dv)) in x.iter_mut().zip(&st.den).enumerate() {
            let xf = f64::from(*xv);
            let eps = (xf - f64::from(dv)) / s;
            let mut mu = k_mu * (xf / vp - k_eps * eps);
            if let Some(z) = &z {
                mu += k_noise * f64::from(z[j]);
            }
            *xv = (mu * out_scale) as f32;
        }
        Ok(())
    })
}
