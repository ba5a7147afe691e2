//! What the command tells the node kinds: the `SDGRAPH_*` settings it read
//! once at start-up (the library reads no environment). Kinds that need a
//! setting keep a copy from their construction.

use std::path::PathBuf;

use gpu::DType;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// The storage type for model weights and activations (`SDGRAPH_DTYPE`);
    /// `None`: f16 on GPUs with fast f16, f32 on CPU adapters. f16 is only
    /// honoured where the adapter has it.
    pub dtype: Option<DType>,
    /// The largest activation a VAE pass may make before VAEDecode/VAEEncode
    /// tile (`SDGRAPH_VAE_TILE_BYTES`); `None`: the adapter's binding limit.
    pub vae_tile_bytes: Option<u64>,
    /// The same for upscale models (`SDGRAPH_UPSCALE_TILE_BYTES`); `None`:
    /// the adapter's largest buffer.
    pub upscale_tile_bytes: Option<u64>,
    /// SaveImage records the graph's folder and the model files by absolute
    /// path (`SDGRAPH_ABSOLUTE_PATHS=1`) instead of relative ones, which keep
    /// the user's folder names out of shared pictures.
    pub absolute_paths: bool,
    /// The embeddings folders `embedding:NAME` is looked up in by
    /// CLIPTextEncode (`--embeddings-dir`, then each models folder's
    /// `embeddings/`, then `extra_model_paths.yaml`'s), before the graph's own
    /// `embeddings/` folder. Set once for the process by the command (hence
    /// `'static`, which keeps these settings `Copy`).
    pub embedding_dirs: &'static [PathBuf],
}
