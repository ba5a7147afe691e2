//! Sampling building blocks.
//!
//! - [`noise`]: PyTorch's CPU random generator (`torch.manual_seed` + `torch.randn`), bit for bit, and ComfyUI's
//!   `prepare_noise` on top of it: the initial latent noise, and the stream ancestral/SDE samplers draw from.
//! - [`areas`]: area conditionings paired across positive and negative before sampling, as ComfyUI does.
//! - [`controls`]: ControlNet applications during sampling: hints embedded once, residuals summed per step.
//! - [`noise_mask`]: inpainting masks, checked and resized to the latent as KSampler uses them.
//! - [`inpaint_concat`]: the mask and masked-image latent an inpainting UNet takes besides the latent.
//! - [`schedulers`]: the model's discrete sigmas and ComfyUI's KSampler schedules (simple, sgm_uniform, karras,
//!   exponential, ddim_uniform, beta, normal, linear_quadratic, kl_optimal; denoise < 1).
//! - [`samplers`]: k-diffusion/ComfyUI samplers over a `Denoiser` trait (euler, euler_cfg_pp, euler_ancestral,
//!   euler_ancestral_cfg_pp, heun, dpm_2, dpm_2_ancestral, lms, dpm_fast, dpmpp_2s_ancestral,
//!   dpmpp_2s_ancestral_cfg_pp, dpmpp_sde, dpmpp_sde_gpu, dpmpp_2m, dpmpp_2m_cfg_pp, dpmpp_2m_sde, dpmpp_2m_sde_gpu,
//!   ddpm, lcm, ipndm, ipndm_v, deis, res_multistep, res_multistep_cfg_pp, res_multistep_ancestral,
//!   res_multistep_ancestral_cfg_pp, gradient_estimation, gradient_estimation_cfg_pp, ddim, uni_pc, uni_pc_bh2), and
//!   the eps/v + CFG model wrapping (with the negative prompt's own estimate for the CFG++ samplers).

pub mod areas;
pub mod controls;
pub mod inpaint_concat;
pub mod noise;
pub mod noise_mask;
pub mod samplers;
pub mod schedulers;
