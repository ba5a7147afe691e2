//! The graph engine end to end: graph errors, validation, the cache, `watch`, Lua
//! plugins, provenance in saved PNGs, and the command line.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod cli_embeddings;
mod cli_interrupt;
mod cli_preview;
mod comfy_import;
mod exec_cache;
mod graph_errors;
mod graph_mutation;
mod layers;
mod plugins;
mod preview_image;
mod provenance;
mod serve;
mod sweep;
mod watch;
