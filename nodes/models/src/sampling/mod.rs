//! Sampling building blocks.
//!
//! - [`noise`]: PyTorch's CPU random generator (`torch.manual_seed` + `torch.randn`), bit for bit, and ComfyUI's
//!   `prepare_noise` on top of it: the initial latent noise, and the stream ancestral/SDE samplers draw from.
//! - [`schedulers`]: the model's discrete sigmas and ComfyUI's KSampler schedules (normal, karras, exponential,
//!   sgm_uniform, simple, ddim_uniform; denoise < 1).
//! - [`samplers`]: k-diffusion/ComfyUI samplers (euler, euler_ancestral, heun, dpm_2, dpmpp_2m, dpmpp_2m_sde,
//!   dpmpp_sde, ddim, lcm) over a `Denoiser` trait, and the eps/v + CFG model wrapping.

pub mod noise;
pub mod samplers;
pub mod schedulers;
