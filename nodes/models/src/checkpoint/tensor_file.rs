//! Opening one weights file whatever its container: a diffusers component folder's weights file,
//! and safetensors or a PyTorch zip archive (read without running code), for the standalone VAE
//! and UNet loaders.

use std::path::{Path, PathBuf};

use super::safetensors::{CheckpointError, SafeTensors};

/// The weights file of `path`: the file itself, or the weights of a diffusers component folder.
pub fn component_weights(path: &Path, what: &str) -> Result<PathBuf, CheckpointError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| CheckpointError {
            file: path.to_path_buf(),
            key: None,
            message: format!(
                "a folder, without diffusion_pytorch_model.safetensors: not a diffusers {what} folder (give a {what} file, or a diffusers {} folder; .bin weights are not read: convert them to safetensors)",
                what.to_lowercase() + "/"
            ),
        })
}

/// Opens `file` as tensors: safetensors, or a PyTorch zip archive (`.pt`, `.pth`, `.ckpt`, any
/// extension) through the restricted reader of [`super::pth`], which runs no code.
pub fn open_tensors(file: &Path) -> Result<SafeTensors, CheckpointError> {
    let mut head = [0u8; 4];
    let zipped = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|_| super::zip::is_zip(&head));
    if zipped { super::pth::open(file) } else { SafeTensors::open(file) }
}
