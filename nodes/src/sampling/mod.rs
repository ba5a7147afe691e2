//! Sampling building blocks.
//!
//! - [`noise`]: PyTorch's CPU random generator (`torch.manual_seed` + `torch.randn`), bit for bit, and ComfyUI's
//!   `prepare_noise` on top of it: the initial latent noise, and the stream ancestral/SDE samplers draw from.

pub mod noise;
