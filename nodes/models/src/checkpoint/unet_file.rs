//! A diffusion model on its own, as ComfyUI's `UNETLoader` reads it from `models/diffusion_models`
//! (`comfy/sd.py`, `load_diffusion_model_state_dict`): a UNet without its text encoder and VAE, in the
//! LDM layout (`input_blocks.*`, optionally still under `model.diffusion_model.`) or diffusers'
//! (`conv_in.*`, `down_blocks.*`, a file or a diffusers `unet/` folder). Its weights are seen as a
//! checkpoint's UNet, under [`UNET_PREFIX`] + LDM names, so what loads a checkpoint's UNet loads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::convert::{UNET_PREFIX, UnetLayout, unet_key};
use super::safetensors::CheckpointError;
use super::tensor_file::{component_weights, open_tensors};
use super::weights::WeightSource;

/// The layout a standalone UNet file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnetFileLayout {
    /// A whole checkpoint (or its UNet part) under `model.diffusion_model.`.
    CheckpointPart,
    /// LDM names without a prefix (`input_blocks.0.0.weight`).
    Ldm,
    /// diffusers' `UNet2DConditionModel` (`conv_in.weight`, `down_blocks.*`).
    Diffusers,
}

/// Opens a standalone diffusion model (see the module header). What sdgraph does not run (SDXL, SD
/// 2.x, UNets taking other than 4 or 9 input channels, SD3 and Flux transformers) is refused naming the family
/// ([`super::family::check_single_file`]); a file that is no UNet at all names the keys expected and
/// some it has. Also returns the layout and the file read.
pub fn open_unet(path: &Path) -> Result<(WeightSource, UnetFileLayout, PathBuf), CheckpointError> {
    let file = component_weights(path, "UNet")?;
    let st = open_tensors(&file)?;
    let has = |k: &str| st.info(k).is_some();
    let (layout, table): (UnetFileLayout, Vec<_>) = if st.names().any(|k| k.starts_with(UNET_PREFIX)) {
        // A whole checkpoint: only its UNet part is this model.
        let table = st
            .names()
            .filter(|k| k.starts_with(UNET_PREFIX))
            .map(|k| (k.to_string(), 0, k.to_string(), None))
            .collect();
        (UnetFileLayout::CheckpointPart, table)
    } else if has("conv_in.weight") && st.names().any(|k| k.starts_with("down_blocks.")) {
        let layout = UnetLayout::from_keys(st.names());
        let table = st
            .names()
            .filter_map(|k| unet_key(k, &layout).map(|n| (format!("{UNET_PREFIX}{n}"), 0, k.to_string(), None)))
            .collect();
        (UnetFileLayout::Diffusers, table)
    } else if st
        .names()
        .any(|k| k.starts_with("input_blocks.") || k.starts_with("joint_blocks.") || k.starts_with("double_blocks."))
    {
        let table = st.names().map(|k| (format!("{UNET_PREFIX}{k}"), 0, k.to_string(), None)).collect();
        (UnetFileLayout::Ldm, table)
    } else {
        let some: Vec<&str> = st.names().take(3).collect();
        let what = if some.is_empty() { "no tensors".to_string() } else { format!("keys such as {}", some.join(", ")) };
        return Err(CheckpointError {
            file,
            key: None,
            message: format!(
                "not a UNet diffusion model: expected the LDM layout (input_blocks.*, middle_block.*, output_blocks.*, optionally under model.diffusion_model.) or diffusers' UNet2DConditionModel (conv_in.*, down_blocks.*), found {what}"
            ),
        });
    };
    let src = WeightSource::from_parts(vec![Arc::new(st)], table);
    super::family::check_single_file(&src, &file)?;
    Ok((src, layout, file))
}
