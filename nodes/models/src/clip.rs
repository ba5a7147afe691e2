//! The SD 1.x text encoder: OpenAI CLIP ViT-L/14's text tower, mirroring
//! transformers 5.23.0 `CLIPTextModel` (`models/clip/modeling_clip.py`:
//! `CLIPTextEmbeddings`, `CLIPEncoderLayer` = `CLIPAttention` + `CLIPMLP`,
//! `final_layer_norm`). In the single-file (LDM) checkpoint it is
//! `cond_stage_model.transformer` (LDM's `FrozenCLIPEmbedder` wraps the HF
//! model), so the weights sit under `cond_stage_model.transformer.text_model.`
//! with HF names: `embeddings.{token,position}_embedding.weight`,
//! `encoder.layers.{i}.{layer_norm1,self_attn.{q,k,v,out}_proj,layer_norm2,mlp.fc1,mlp.fc2}`,
//! `final_layer_norm`. `embeddings.position_ids` (an I64 buffer) is ignored:
//! positions are always `0..L`.
//!
//! Each encoder layer is pre-norm:
//! `x = x + out_proj(attn(layer_norm1(x)))` with causal self-attention, then
//! `x = x + fc2(quick_gelu(fc1(layer_norm2(x))))`.
//!
//! The token embedding is gathered on the CPU from an f32 copy of the table
//! (SD: 49408 x 768), so ids are checked before anything reaches the GPU and
//! the table never takes GPU memory; the gathered rows plus the position
//! embedding are uploaded as `[B, L, C]`. A position may take a given vector
//! instead of a token's row (textual-inversion embeddings, [`InputVector`]).

use gpu::ops::attention::{AttentionOptions, MAX_HEAD_DIM, attention};
use gpu::ops::layout::{concat, slice};
use gpu::ops::matmul::{Activation, MatmulOptions, matmul};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{LayerNorm, Linear};
use crate::checkpoint::weights::Weights;

/// CLIP's head dimension: ViT-L/14's text tower has 12 heads of 64 at width
/// 768 (OpenCLIP ViT-H/bigG, used by SD 2 and SDXL, also 64).
pub const CLIP_HEAD_DIM: usize = 64;

/// Sizes and constants of a CLIP text encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Rows of `embeddings.token_embedding.weight` (SD: 49408).
    pub vocab_size: usize,
    /// `hidden_size`, the width `C` (SD: 768).
    pub hidden_size: usize,
    /// Encoder layers (SD: 12).
    pub num_layers: usize,
    /// `mlp.fc1` outputs (SD: 3072).
    pub intermediate_size: usize,
    /// Attention heads (SD: 12). Not stored in checkpoints.
    pub num_heads: usize,
    /// Rows of `embeddings.position_embedding.weight`: the longest sequence (SD: 77).
    pub max_positions: usize,
    /// `layer_norm_eps` of every LayerNorm (SD: 1e-5).
    pub layer_norm_eps: f32,
    /// `hidden_act` of the MLP (SD 1.x: quick_gelu; OpenCLIP's towers use exact gelu).
    pub activation: Activation,
}

impl ClipTextConfig {
    /// Reads every size the weights (at `...text_model.`) hold. The head count
    /// is not among them: it is `hidden_size / 64` (CLIP's head dim), right for
    /// SD 1.x's ViT-L/14 (12 heads); a width that is not a multiple of 64 gets
    /// 1 head, and such models (the test fixture: 4 heads of 8) must set
    /// `num_heads` themselves.
    pub fn detect_from_weights(w: &Weights) -> Result<ClipTextConfig, ModelError> {
        let tok = w.shape("embeddings.token_embedding.weight")?;
        let [vocab_size, hidden_size] = tok[..] else {
            return Err(ModelError::Config(format!(
                "{} must be [vocab, hidden], got {tok:?}",
                w.full_name("embeddings.token_embedding.weight")
            )));
        };
        let pos = w.shape("embeddings.position_embedding.weight")?;
        let max_positions = match pos[..] {
            [p, c] if c == hidden_size => p,
            _ => {
                return Err(ModelError::Config(format!(
                    "{} has shape {pos:?}, expected [positions, {hidden_size}]",
                    w.full_name("embeddings.position_embedding.weight")
                )));
            }
        };
        let num_layers = count_layers(w);
        if num_layers == 0 {
            return Err(ModelError::Config(format!("no encoder layers under {}", w.full_name("encoder.layers.0"))));
        }
        let fc1 = w.shape("encoder.layers.0.mlp.fc1.weight")?;
        let intermediate_size = match fc1[..] {
            [i, c] if c == hidden_size => i,
            _ => {
                return Err(ModelError::Config(format!(
                    "{} has shape {fc1:?}, expected [intermediate, {hidden_size}]",
                    w.full_name("encoder.layers.0.mlp.fc1.weight")
                )));
            }
        };
        let num_heads = if hidden_size >= CLIP_HEAD_DIM && hidden_size.is_multiple_of(CLIP_HEAD_DIM) {
            hidden_size / CLIP_HEAD_DIM
        } else {
            1
        };
        Ok(ClipTextConfig {
            vocab_size,
            hidden_size,
            num_layers,
            intermediate_size,
            num_heads,
            max_positions,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        })
    }
}

/// The keys of one encoder layer, relative to `encoder.layers.{i}.`.
const LAYER_KEYS: [&str; 16] = [
    "layer_norm1.weight",
    "layer_norm1.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "layer_norm2.weight",
    "layer_norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
];

/// Layers `0..n` such that layer `n` has none of its keys. A layer counts if
/// any key is present, so one missing tensor is reported as missing rather
/// than silently shortening the model.
fn count_layers(w: &Weights) -> usize {
    let layers = w.pp("encoder.layers");
    (0..).take_while(|&i| LAYER_KEYS.iter().any(|k| layers.pp(i).contains(k))).count()
}

/// Which hidden state to return, counted from the end as "CLIP skip" is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipLayer {
    /// The last layer's output (`Skip(1)`): SD 1.x's default conditioning.
    #[default]
    Last,
    /// The second-to-last layer's output (`Skip(2)`, "clip skip 2",
    /// ComfyUI's CLIPSetLastLayer -2, transformers' `hidden_states[-2]`).
    Penultimate,
    /// `Skip(n)` is the output `n - 1` layers before the last, i.e.
    /// `hidden_states[-n]`: 1 = last, 2 = penultimate, `num_layers + 1` =
    /// the embeddings. A1111's "clip skip" and ComfyUI's `-n`.
    Skip(usize),
}

impl ClipLayer {
    /// The index into `hidden_states` (0 = embeddings, `num_layers` = last layer).
    pub fn hidden_state_index(self, num_layers: usize) -> Result<usize, ModelError> {
        let n = match self {
            ClipLayer::Last => 1,
            ClipLayer::Penultimate => 2,
            ClipLayer::Skip(n) => n,
        };
        if n == 0 || n > num_layers + 1 {
            return Err(ModelError::Config(format!(
                "CLIP skip {n} is out of range: this text encoder has {num_layers} layers (1..={} allowed)",
                num_layers + 1
            )));
        }
        Ok(num_layers + 1 - n)
    }
}

/// One `CLIPEncoderLayer` (`encoder.layers.{i}`).
pub struct ClipEncoderLayer {
    pub layer_norm1: LayerNorm,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl ClipEncoderLayer {
    fn load(gpu: &Gpu, w: &Weights, cfg: &ClipTextConfig, dtype: DType) -> Result<ClipEncoderLayer, ModelError> {
        let (c, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let attn = w.pp("self_attn");
        let mlp = w.pp("mlp");
        // HF's nn.Linear layers here all have biases; without one the file is not CLIP.
        let linear = |w: &Weights, inp, out| Linear::load_biased(gpu, w, inp, out, dtype);
        Ok(ClipEncoderLayer {
            layer_norm1: LayerNorm::load_sized(gpu, &w.pp("layer_norm1"), c, eps, dtype)?,
            q_proj: linear(&attn.pp("q_proj"), c, c)?,
            k_proj: linear(&attn.pp("k_proj"), c, c)?,
            v_proj: linear(&attn.pp("v_proj"), c, c)?,
            out_proj: linear(&attn.pp("out_proj"), c, c)?,
            layer_norm2: LayerNorm::load_sized(gpu, &w.pp("layer_norm2"), c, eps, dtype)?,
            fc1: linear(&mlp.pp("fc1"), c, i)?,
            fc2: linear(&mlp.pp("fc2"), i, c)?,
        })
    }

    /// `x [B, L, C] -> [B, L, C]`.
    fn forward(&self, gpu: &Gpu, x: &Tensor, heads: usize, activation: Activation) -> Result<Tensor, ModelError> {
        let h = self.layer_norm1.forward(gpu, x)?;
        let q = self.q_proj.forward(gpu, &h)?;
        let k = self.k_proj.forward(gpu, &h)?;
        let v = self.v_proj.forward(gpu, &h)?;
        // q, k, v stay [B, L, H*D]: the kernel splits heads itself. Scale is
        // CLIPAttention's head_dim^-0.5, the kernel's default.
        let a = attention(gpu, &q, &k, &v, AttentionOptions { causal: true, ..AttentionOptions::new(heads) })?;
        let x = self.out_proj.forward_residual(gpu, &a, Some(x))?;

        let h = self.layer_norm2.forward(gpu, &x)?;
        let (b, l, c) = (h.dim(0), h.dim(1), h.dim(2));
        // [B, L, C] -> [B*L, C]: one product shared by every token, with the
        // activation fused into fc1's epilogue.
        let h2 = h.reshape(&[b * l, c])?;
        let opts = MatmulOptions { transpose_b: true, bias: self.fc1.bias.as_ref(), activation, ..Default::default() };
        let m = matmul(gpu, &h2, &self.fc1.weight, &opts)?;
        // [B*L, I] -> [B, L, I]
        let m = m.reshape(&[b, l, self.fc1.out_features()])?;
        self.fc2.forward_residual(gpu, &m, Some(&x))
    }
}

/// Every hidden state of one forward pass (transformers' `output_hidden_states=True`).
pub struct ClipHiddenStates {
    /// `num_layers + 1` tensors `[B, L, C]`: `[0]` is the embeddings output,
    /// `[n]` the output of encoder layer `n - 1`, none with `final_layer_norm`.
    pub hidden_states: Vec<Tensor>,
    /// `final_layer_norm(hidden_states[num_layers])`, transformers' `last_hidden_state`.
    pub last_hidden_state: Tensor,
}

/// A vector that stands in for the token embedding at one position of one row (a textual-inversion
/// embedding's vector; its width is the model's `hidden_size`).
#[derive(Debug, Clone, Copy)]
pub struct InputVector<'a> {
    pub row: usize,
    pub position: usize,
    pub values: &'a [f32],
}

/// `CLIPTextModel` (`cond_stage_model.transformer.text_model`).
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    /// `embeddings.token_embedding.weight` `[vocab, C]`, kept in f32 on the CPU.
    pub token_embedding: Vec<f32>,
    /// `embeddings.position_embedding.weight` `[max_positions, C]`, f32 on the CPU.
    pub position_embedding: Vec<f32>,
    /// `encoder.layers`.
    pub layers: Vec<ClipEncoderLayer>,
    pub final_layer_norm: LayerNorm,
    /// Storage type of the weights and activations.
    pub dtype: DType,
}

impl ClipTextModel {
    /// Loads the weights under `w` (e.g. `cond_stage_model.transformer.text_model.`),
    /// checking every shape against `cfg`.
    pub fn load(gpu: &Gpu, w: &Weights, cfg: &ClipTextConfig, dtype: DType) -> Result<ClipTextModel, ModelError> {
        let c = cfg.hidden_size;
        if cfg.num_heads == 0 || !c.is_multiple_of(cfg.num_heads) {
            return Err(ModelError::Config(format!("hidden size {c} does not split into {} heads", cfg.num_heads)));
        }
        if c / cfg.num_heads > MAX_HEAD_DIM {
            return Err(ModelError::Config(format!(
                "head dim {} (hidden {c} / {} heads) exceeds the attention kernel's {MAX_HEAD_DIM}",
                c / cfg.num_heads,
                cfg.num_heads
            )));
        }
        let emb = w.pp("embeddings");
        let token_embedding = emb.f32("token_embedding.weight", &[cfg.vocab_size, c])?;
        let position_embedding = emb.f32("position_embedding.weight", &[cfg.max_positions, c])?;
        let found = count_layers(w);
        if found != cfg.num_layers {
            return Err(ModelError::Config(format!(
                "{} has {found} encoder layers, the config says {}",
                w.full_name("encoder.layers"),
                cfg.num_layers
            )));
        }
        let layers = (0..cfg.num_layers)
            .map(|i| ClipEncoderLayer::load(gpu, &w.pp("encoder.layers").pp(i), cfg, dtype))
            .collect::<Result<Vec<_>, _>>()?;
        let final_layer_norm = LayerNorm::load_sized(gpu, &w.pp("final_layer_norm"), c, cfg.layer_norm_eps, dtype)?;
        Ok(ClipTextModel { config: cfg.clone(), token_embedding, position_embedding, layers, final_layer_norm, dtype })
    }

    /// `CLIPTextEmbeddings`: `token_embedding[ids] + position_embedding[0..L]`
    /// computed on the CPU in f32 and uploaded, `[B, L, C]`. Every row of
    /// `ids` must have the same length `L <= max_positions` (SD: 77).
    pub fn embed<T: AsRef<[u32]>>(&self, gpu: &Gpu, ids: &[T]) -> Result<Tensor, ModelError> {
        self.embed_with_vectors(gpu, ids, &[])
    }

    /// [`embed`](Self::embed) with the token embedding of some positions replaced by given vectors
    /// (textual-inversion embeddings; transformers' `inputs_embeds`, ComfyUI's `process_tokens`): the position
    /// embedding is added to them as to any token, and the ids at those positions are not read.
    pub fn embed_with_vectors<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        ids: &[T],
        vectors: &[InputVector<'_>],
    ) -> Result<Tensor, ModelError> {
        let (vocab, c) = (self.config.vocab_size, self.config.hidden_size);
        let b = ids.len();
        let l = ids.first().map_or(0, |r| r.as_ref().len());
        if b == 0 || l == 0 {
            return Err(ModelError::Config("CLIP needs at least one sequence of at least one token".into()));
        }
        if l > self.config.max_positions {
            return Err(ModelError::Config(format!(
                "sequence of {l} tokens is longer than CLIP's {} positions",
                self.config.max_positions
            )));
        }
        // Which vector, if any, stands at each (row, position).
        let mut given: Vec<Option<&[f32]>> = vec![None; b * l];
        for v in vectors {
            if v.row >= b || v.position >= l || v.values.len() != c {
                return Err(ModelError::Config(format!(
                    "an input vector of {} values at row {}, position {} does not fit {b} rows of {l} positions of width {c}",
                    v.values.len(),
                    v.row,
                    v.position
                )));
            }
            given[v.row * l + v.position] = Some(v.values);
        }
        let mut data = Vec::with_capacity(b * l * c);
        for (row, seq) in ids.iter().enumerate() {
            let seq = seq.as_ref();
            if seq.len() != l {
                return Err(ModelError::Config(format!(
                    "token sequences differ in length: row 0 has {l}, row {row} has {}",
                    seq.len()
                )));
            }
            for (pos, &id) in seq.iter().enumerate() {
                let p = &self.position_embedding[pos * c..(pos + 1) * c];
                if let Some(v) = given[row * l + pos] {
                    data.extend(v.iter().zip(p).map(|(t, p)| t + p));
                    continue;
                }
                let id = id as usize;
                if id >= vocab {
                    return Err(ModelError::Config(format!(
                        "token id {id} (row {row}, position {pos}) is outside the vocabulary of {vocab}"
                    )));
                }
                let tok = &self.token_embedding[id * c..(id + 1) * c];
                data.extend(tok.iter().zip(p).map(|(t, p)| t + p));
            }
        }
        Ok(gpu.upload(&data, &[b, l, c], self.dtype)?)
    }

    /// Runs the embeddings and the first `n` encoder layers, returning the
    /// `n + 1` hidden states when `keep_all`, else only the last.
    fn hidden<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        ids: &[T],
        vectors: &[InputVector<'_>],
        n: usize,
        keep_all: bool,
    ) -> Result<Vec<Tensor>, ModelError> {
        let mut x = self.embed_with_vectors(gpu, ids, vectors)?;
        let mut out = Vec::new();
        for layer in &self.layers[..n] {
            let next = layer.forward(gpu, &x, self.config.num_heads, self.config.activation)?;
            if keep_all {
                out.push(x);
            }
            x = next;
        }
        out.push(x);
        Ok(out)
    }

    /// The conditioning SD 1.x feeds the UNet: the chosen hidden state with
    /// `final_layer_norm` applied, `[B, L, C]`. `Last` is transformers'
    /// `last_hidden_state`; `Penultimate` is "clip skip 2" as ComfyUI (SD1's
    /// `layer_norm_hidden_state=True`), A1111 and diffusers (`clip_skip=1`)
    /// compute it. Layers after the chosen one are not run.
    pub fn forward<T: AsRef<[u32]>>(&self, gpu: &Gpu, ids: &[T], layer: ClipLayer) -> Result<Tensor, ModelError> {
        self.forward_with_vectors(gpu, ids, &[], layer)
    }

    /// [`forward`](Self::forward) with some positions' token embeddings replaced by `vectors`
    /// (see [`embed_with_vectors`](Self::embed_with_vectors)).
    pub fn forward_with_vectors<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        ids: &[T],
        vectors: &[InputVector<'_>],
        layer: ClipLayer,
    ) -> Result<Tensor, ModelError> {
        let n = layer.hidden_state_index(self.config.num_layers)?;
        let h = self.hidden(gpu, ids, vectors, n, false)?.pop().expect("hidden returns at least one tensor");
        self.final_layer_norm.forward(gpu, &h)
    }

    /// The chosen hidden state without `final_layer_norm` (transformers'
    /// `hidden_states[-n]`; what SDXL takes from its CLIP penultimate layer).
    pub fn forward_raw<T: AsRef<[u32]>>(&self, gpu: &Gpu, ids: &[T], layer: ClipLayer) -> Result<Tensor, ModelError> {
        let n = layer.hidden_state_index(self.config.num_layers)?;
        let mut h = self.hidden(gpu, ids, &[], n, false)?;
        Ok(h.pop().expect("hidden returns at least one tensor"))
    }

    /// The raw hidden state `layer` picks (no `final_layer_norm`) and, when `with_last`, `last_hidden_state`
    /// from the same pass: SD 2.x and SDXL take their conditioning from the one and the pooled output from the
    /// other (`text_encoder::ClipTextEncoder`). Without `with_last`, the layers after `layer` are not run.
    pub fn forward_hidden_and_last<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        ids: &[T],
        vectors: &[InputVector<'_>],
        layer: ClipLayer,
        with_last: bool,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let n = layer.hidden_state_index(self.config.num_layers)?;
        let run = if with_last { self.config.num_layers } else { n };
        let mut x = self.embed_with_vectors(gpu, ids, vectors)?;
        let mut picked = None;
        for (i, l) in self.layers[..run].iter().enumerate() {
            // Before layer i runs, x is hidden_states[i].
            if i == n {
                picked = Some(x.clone());
            }
            x = l.forward(gpu, &x, self.config.num_heads, self.config.activation)?;
        }
        let last = if with_last { Some(self.final_layer_norm.forward(gpu, &x)?) } else { None };
        Ok((picked.unwrap_or(x), last))
    }

    /// Every hidden state and `last_hidden_state`, for tests and debugging.
    pub fn forward_with_intermediates<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        ids: &[T],
    ) -> Result<ClipHiddenStates, ModelError> {
        let hidden_states = self.hidden(gpu, ids, &[], self.config.num_layers, true)?;
        let last = hidden_states.last().expect("hidden returns at least one tensor");
        let last_hidden_state = self.final_layer_norm.forward(gpu, last)?;
        Ok(ClipHiddenStates { hidden_states, last_hidden_state })
    }

    /// transformers' `pooler_output`: `last_hidden_state [B, L, C]` at each
    /// row's first `eos_token_id` (SD: 49407), `[B, C]`. A row without one is
    /// an error (transformers would silently take position 0).
    pub fn pooled<T: AsRef<[u32]>>(
        &self,
        gpu: &Gpu,
        last_hidden_state: &Tensor,
        ids: &[T],
        eos_token_id: u32,
    ) -> Result<Tensor, ModelError> {
        let (b, l, c) = match last_hidden_state.shape() {
            &[b, l, c] if b == ids.len() => (b, l, c),
            s => {
                return Err(ModelError::Config(format!(
                    "pooled: hidden state {s:?} does not match {} token rows",
                    ids.len()
                )));
            }
        };
        // [B, L, C] -> [B*L, C], so each row's eos token is one slice.
        let flat = last_hidden_state.reshape(&[b * l, c])?;
        let rows = ids
            .iter()
            .enumerate()
            .map(|(row, seq)| {
                let pos = seq.as_ref().iter().take(l).position(|&t| t == eos_token_id).ok_or_else(|| {
                    ModelError::Config(format!("pooled: row {row} has no end-of-text token {eos_token_id}"))
                })?;
                Ok(slice(gpu, &flat, 0, row * l + pos, 1)?)
            })
            .collect::<Result<Vec<Tensor>, ModelError>>()?;
        Ok(concat(gpu, &rows.iter().collect::<Vec<_>>(), 0)?)
    }
}
