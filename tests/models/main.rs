//! The model library against fixtures made by the reference code: checkpoint formats,
//! the tokenizer, noise, samplers and schedulers, and each network against diffusers.

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod checkpoints;
mod comfy_pixels;
mod embeddings;
mod inpaint_unet;
mod ksampler_fixture;
mod models_clip;
mod models_controlnet;
mod models_gligen;
mod models_open_clip;
mod models_t2i_adapter;
mod models_unet;
mod models_upscale;
mod models_vae;
mod noise;
mod preprocessors;
mod prompt_weights;
mod pth;
mod samplers;
mod sampling_unet;
mod schedulers;
mod sd2_unet;
mod tokenizer;
mod torchsde;
