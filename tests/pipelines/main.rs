//! Whole pipelines on tiny and demo models: the example graphs, the SD nodes,
//! inpainting, ControlNet, upscaling, tiled VAE, and `sdgraph bench`.

#[path = "../common/mod.rs"]
mod common;

mod bench_models;
mod clip_skip;
mod comfy_gallery;
mod controlnet_graph;
mod custom_sampling;
mod demo_model;
mod embedding_graph;
mod gligen;
mod graphs;
mod image_scale_total;
mod inpaint;
mod lora;
mod model_sampling;
mod outpaint_composite;
mod sd_nodes;
mod unet_loader;
mod upscale;
mod vae_loader;
mod vae_tiled;
