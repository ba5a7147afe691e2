//! sdgraph's built-in node kinds.
//!
//! - [`checkpoint`]: safetensors files and weight layouts
//! - [`image_nodes`]: LoadImage, SaveImage, ImageScale, ImageScaleBy, ImageCrop, ImageBlend, ImageInvert
//! - [`image_ops`]: the pure pixel operations behind them
//! - [`models`]: the SD networks on the GPU kernels
//! - [`png_meta`]: the graph embedded in saved PNGs

pub mod checkpoint;
pub mod image_nodes;
pub mod image_ops;
pub mod models;
pub mod png_meta;
pub mod tokenizer;

use engine::Registry;
use engine::registry::DuplicateKind;

/// Registers every built-in node kind.
pub fn register_builtin(reg: &mut Registry) -> Result<(), DuplicateKind> {
    image_nodes::register(reg)
}

/// A registry holding the built-in kinds.
pub fn builtin_registry() -> Registry {
    let mut reg = Registry::new();
    // Built-in names are distinct by construction; a clash is a bug caught by tests.
    register_builtin(&mut reg).expect("built-in node kinds have unique names");
    reg
}
