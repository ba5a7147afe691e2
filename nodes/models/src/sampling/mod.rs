//! Sampling building blocks.
//!
//! - [`noise`]: PyTorch's CPU random generator (`torch.manual_seed` + `torch.randn`), bit for bit, and ComfyUI's
//!   `prepare_noise` on top of it: the initial latent noise, and the stream ancestral/SDE samplers draw from.
//! - [`areas`]: area conditionings paired across positive and negative before sampling, as ComfyUI does.
//! - [`controls`]: ControlNet applications during sampling: hints embedded once, residuals summed per step.
//! - [`noise_mask`]: inpainting masks, checked and resized to the latent as KSampler uses them.
//! - [`schedulers`]: the model's discrete sigmas and ComfyUI's KSampler schedules (normal, karras, exponential,
//!   sgm_uniform, simple, ddim_uniform; denoise < 1).
//! - [`samplers`]: k-diffusion/ComfyUI samplers (euler, euler_ancestral, heun, dpm_2, dpmpp_2m, dpmpp_2m_sde,
//!   dpmpp_sde, ddim, lcm) over a `Denoiser` trait, and the eps/v + CFG model wrapping.

pub mod areas;
pub mod controls;
pub mod noise;
pub mod noise_mask;
pub mod samplers;
pub mod schedulers;
