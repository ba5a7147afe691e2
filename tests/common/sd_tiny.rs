//! The tiny SD fixture (tests/fixtures/sd_tiny) in each of its layouts.

use std::path::{Path, PathBuf};

use models::checkpoint::convert::open_diffusers_folder;
use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};
use models::checkpoint::weights::WeightSource;

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

/// The fixture checkpoint with a full 49408-token embedding, so the real
/// tokenizer's ids are in range (the fixture's CLIP has 1000 tokens to stay small).
pub fn full_vocab_checkpoint(dir: &Path) -> PathBuf {
    full_vocab_checkpoint_with(dir, "tiny_full_vocab.safetensors", &|_, _| {})
}

/// `full_vocab_checkpoint` written to `dir/file` with `edit` applied to each tensor's values.
pub fn full_vocab_checkpoint_with(dir: &Path, file: &str, edit: &dyn Fn(&str, &mut Vec<f32>)) -> PathBuf {
    let path = dir.join(file);
    let st = SafeTensors::open(&fixtures().join("model.safetensors")).unwrap();
    let emb = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for name in st.names() {
        let Ok((shape, mut data)) = st.f32_any(name) else { continue }; // skip integer buffers
        let mut shape = shape;
        if name == emb {
            let width = shape[1];
            data.extend(gpu::testing::random((49408 - shape[0]) * width, 9, -0.5, 0.5));
            shape[0] = 49408;
        }
        edit(name, &mut data);
        owned.push((name.to_string(), shape, data));
    }
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    let meta = [("sdgraph.unet.heads", "2"), ("sdgraph.clip.heads", "4"), ("sdgraph.norm_groups", "4")];
    write_with_metadata(&path, &tensors, Dtype::F32, &meta).unwrap();
    path
}

/// Writes `src`'s tensors (as f32) to `dst` with tensor `key` replaced by `replace` (added when `src` lacks it),
/// or dropped when `replace` is `None`, and with `meta` as the metadata: a broken copy of a fixture.
pub fn copy_with_tensor(
    src: &Path,
    dst: &Path,
    key: &str,
    replace: Option<(Vec<usize>, Vec<f32>)>,
    meta: &[(&str, &str)],
) -> PathBuf {
    let st = SafeTensors::open(src).unwrap();
    let mut owned = Vec::new();
    for n in st.names() {
        let (shape, data) = st.f32_any(n).unwrap();
        if n == key {
            if let Some((s, d)) = &replace {
                owned.push((n.to_string(), s.clone(), d.clone()));
            }
            continue;
        }
        owned.push((n.to_string(), shape, data));
    }
    if let Some((s, d)) = replace.filter(|_| st.info(key).is_none()) {
        owned.push((key.to_string(), s, d));
    }
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    write_with_metadata(dst, &tensors, Dtype::F32, meta).unwrap();
    dst.to_path_buf()
}
