//! The tiny SD fixture (tests/fixtures/sd_tiny) in each of its layouts.

use std::path::{Path, PathBuf};

use nodes::checkpoint::convert::open_diffusers_folder;
use nodes::checkpoint::weights::WeightSource;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_tiny")
}

/// Where the fixture's weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// `model.safetensors` (LDM names, f32).
    SingleFile,
    /// `model_f16.safetensors` (LDM names, f16).
    SingleFileF16,
    /// `diffusers/` (the folder layout, mapped onto LDM names).
    Diffusers,
}

pub fn source(layout: Layout) -> WeightSource {
    match layout {
        Layout::SingleFile => WeightSource::single_file(&fixtures().join("model.safetensors")).unwrap(),
        Layout::SingleFileF16 => WeightSource::single_file(&fixtures().join("model_f16.safetensors")).unwrap(),
        Layout::Diffusers => open_diffusers_folder(&fixtures().join("diffusers")).unwrap(),
    }
}
