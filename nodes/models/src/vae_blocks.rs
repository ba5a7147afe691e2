//! The building blocks of the SD 1.x VAE (see [`super::vae`]; its ResNet
//! blocks are the UNet's, [`super::resblock`]), mirroring LDM's
//! `ldm.modules.diffusionmodules.model.{AttnBlock, Downsample, Upsample}` and
//! diffusers 0.42.1's `Attention` (single head, `residual_connection=True`),
//! `Downsample2D(padding=0)` and `Upsample2D(use_conv=True)`.
//!
//! Every load checks each tensor's shape against the channels the caller
//! expects, so a misshapen checkpoint fails at load naming the key rather
//! than later in a kernel.

use gpu::ops::attention::{AttentionOptions, MAX_HEAD_DIM, attention};
use gpu::ops::elementwise::{Unary, unary};
use gpu::ops::layout::{concat, slice, upsample_nearest2x};
use gpu::ops::matmul::{MatmulOptions, matmul};
use gpu::ops::softmax::softmax;
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{Conv2d, GroupNorm, Linear};
use crate::checkpoint::weights::{WeightError, Weights};

/// LDM `Downsample(with_conv=True)`: `F.pad(x, (0, 1, 0, 1))` (one zero
/// column on the right, one zero row at the bottom) then a 3x3 conv,
/// stride 2, padding 0.
///
/// Our conv2d pads symmetrically, so the asymmetric pad is folded into the
/// weight instead of copying the activation: the stored 3x3 kernel is
/// embedded in the bottom-right of a 4x4 kernel whose first row and column
/// are zero, run with padding 1. Output pixel `o` of that conv reads padded
/// rows `2o - 1 .. 2o + 2`; the zero row meets row `2o - 1`, and the other
/// three are LDM's rows `2o .. 2o + 2` (the last is the bottom zero pad when
/// it falls off the image). The output size is the same as LDM's for every H:
/// `(H + 2 - 4) / 2 + 1 == (H + 1 - 3) / 2 + 1`. Exact (the extra terms are
/// `0 * x`); it costs 16/9 of the 3x3 conv's multiply-adds but no copy and
/// no padded temporary (two concats with zeros would copy the input twice).
pub struct Downsample {
    /// The 4x4 kernel `[C, C, 4, 4]` described above, padding 1, stride 2.
    pub conv: Conv2d,
}

impl Downsample {
    pub fn load(gpu: &Gpu, w: &Weights, c: usize, dtype: DType) -> Result<Downsample, ModelError> {
        let w = w.pp("conv");
        let k3 = w.f32("weight", &[c, c, 3, 3])?;
        let mut k4 = vec![0.0f32; c * c * 16];
        // [C, C, 3, 3] -> [C, C, 4, 4]: tap (i, j) moves to (i + 1, j + 1).
        for (plane, src) in k3.chunks_exact(9).enumerate() {
            for i in 0..3 {
                for j in 0..3 {
                    k4[plane * 16 + (i + 1) * 4 + (j + 1)] = src[i * 3 + j];
                }
            }
        }
        let weight = gpu
            .upload(&k4, &[c, c, 4, 4], dtype)
            .map_err(|e| ModelError::Weight(WeightError::Gpu(w.full_name("weight"), e.to_string())))?;
        let bias = w.tensor(gpu, "bias", &[c], dtype)?;
        Ok(Downsample { conv: Conv2d { weight, bias: Some(bias), stride: 2, padding: 1 } })
    }

    /// `x [B, C, H, W] -> [B, C, (H - 1) / 2 + 1 ... ]`, i.e. `H / 2` for even `H`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        self.conv.forward(gpu, x)
    }
}

/// LDM `Upsample(with_conv=True)`: nearest 2x, then a 3x3 conv, padding 1.
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    pub fn load(gpu: &Gpu, w: &Weights, c: usize, dtype: DType) -> Result<Upsample, ModelError> {
        Ok(Upsample { conv: Conv2d::load_sized(gpu, &w.pp("conv"), (c, c, 3), 1, 1, dtype)? })
    }

    /// `x [B, C, H, W] -> [B, C, 2H, 2W]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let up = upsample_nearest2x(gpu, x)?;
        self.conv.forward(gpu, &up)
    }
}

/// How [`AttnBlock`] computes `softmax(q k^T / sqrt(C)) v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The flash kernel when `C <= MAX_HEAD_DIM` (160), else `Matmul` with
    /// [`DEFAULT_SCORE_BYTES`]. SD's VAE has C = 512, so it takes `Matmul`.
    #[default]
    Auto,
    /// The flash kernel (an error when `C > MAX_HEAD_DIM`).
    Flash,
    /// Scores materialised: `matmul`, `softmax`, `matmul`, in blocks of
    /// query rows whose `[rows, HW]` score matrix takes at most
    /// `max_score_bytes` (at least one row per block).
    Matmul { max_score_bytes: u64 },
}

/// Score memory per block of the matmul path: 256 MiB holds SD's whole
/// 512 px mid block (64x64 latent: 4096^2 f32 = 64 MiB per image) for up
/// to four images in one go; larger images are split into query blocks.
/// The softmax writes a second matrix of the same size, so the peak is
/// twice this (plus q, k, v).
pub const DEFAULT_SCORE_BYTES: u64 = 256 << 20;

/// LDM `AttnBlock` (diffusers `Attention` with one head of `C` channels,
/// `upcast_softmax`, residual): `x + proj_out(attn(norm(x)))`. LDM stores
/// q, k, v and proj_out as 1x1 convs `[C, C, 1, 1]`; they are kept as
/// `[C, C]` linear weights and applied to the `[B, HW, C]` sequence.
pub struct AttnBlock {
    pub norm: GroupNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub proj_out: Linear,
    pub path: AttentionPath,
}

impl AttnBlock {
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        c: usize,
        (groups, eps): (usize, f32),
        dtype: DType,
    ) -> Result<AttnBlock, ModelError> {
        Ok(AttnBlock {
            norm: GroupNorm::load_sized(gpu, &w.pp("norm"), c, groups, eps, dtype)?,
            q: Linear::load_pointwise(gpu, &w.pp("q"), c, c, dtype)?,
            k: Linear::load_pointwise(gpu, &w.pp("k"), c, c, dtype)?,
            v: Linear::load_pointwise(gpu, &w.pp("v"), c, c, dtype)?,
            proj_out: Linear::load_pointwise(gpu, &w.pp("proj_out"), c, c, dtype)?,
            path: AttentionPath::Auto,
        })
    }

    /// `x [B, C, H, W] -> [B, C, H, W]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        let &[b, c, h, w] = x.shape() else {
            return Err(ModelError::Config(format!("AttnBlock expects [B, C, H, W], got {:?}", x.shape())));
        };
        let hn = self.norm.forward(gpu, x, false)?;
        // [B, C, H, W] -> [B, C, HW] (free); the projections read it transposed
        // (transpose_a), producing the [B, HW, C] sequence without a copy.
        let hn = hn.reshape(&[b, c, h * w])?;
        let project = |l: &Linear| {
            let opts =
                MatmulOptions { transpose_a: true, transpose_b: true, bias: l.bias.as_ref(), ..Default::default() };
            matmul(gpu, &hn, &l.weight, &opts)
        };
        let (q, k, v) = (project(&self.q)?, project(&self.k)?, project(&self.v)?);
        let path = match self.path {
            AttentionPath::Auto if c <= MAX_HEAD_DIM => AttentionPath::Flash,
            AttentionPath::Auto => AttentionPath::Matmul { max_score_bytes: DEFAULT_SCORE_BYTES },
            p => p,
        };
        let o = match path {
            AttentionPath::Matmul { max_score_bytes } => attention_matmul(gpu, &q, &k, &v, max_score_bytes)?,
            _ => attention(gpu, &q, &k, &v, AttentionOptions::new(1))?,
        };
        // x + proj_out(o), written channels-first: W [C, C] · o[b]ᵀ = [C, HW] per item.
        let x3 = x.reshape(&[b, c, h * w])?;
        let opts = MatmulOptions {
            transpose_b: true,
            bias: self.proj_out.bias.as_ref(),
            bias_per_row: true,
            residual: Some(&x3),
            ..Default::default()
        };
        Ok(matmul(gpu, &self.proj_out.weight, &o, &opts)?.reshape(&[b, c, h, w])?)
    }
}

/// Single-head `softmax(q k^T / sqrt(C)) v` with the scores stored, for head
/// dims the flash kernel does not take: `q`, `k`, `v` `[B, L, C]` ->
/// `[B, L, C]`. The score matrix is built in blocks of query rows of at most
/// `max_score_bytes`; when everything fits, the whole batch is one
/// `matmul`-`softmax`-`matmul`.
pub fn attention_matmul(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_score_bytes: u64,
) -> Result<Tensor, ModelError> {
    let &[b, l, c] = q.shape() else {
        return Err(ModelError::Config(format!("attention_matmul expects q [B, L, C], got {:?}", q.shape())));
    };
    if k.shape() != q.shape() || v.shape() != q.shape() {
        return Err(ModelError::Config(format!(
            "attention_matmul: q {:?}, k {:?}, v {:?} differ",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    // Scaling q (B*L*C values) is cheaper than scaling the scores (B*L*L).
    let q = unary(gpu, q, Unary::Scale(1.0 / (c as f32).sqrt()))?;
    let elem = q.dtype().size() as u64;
    let row_bytes = (l as u64 * elem).max(1);
    // One matrix must also fit one storage binding (matmul windows only over the batch).
    let budget = max_score_bytes.min(gpu.limits.max_storage_buffer_binding_size);
    let core = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor, ModelError> {
        // [.., Lq, C] x [.., L, C]^T -> scores [.., Lq, L]
        let scores = matmul(gpu, q, k, &MatmulOptions { transpose_b: true, ..Default::default() })?;
        let p = softmax(gpu, &scores)?;
        // [.., Lq, L] x [.., L, C] -> [.., Lq, C]
        Ok(matmul(gpu, &p, v, &MatmulOptions::default())?)
    };
    if b as u64 * l as u64 * row_bytes <= budget {
        return core(&q, k, v);
    }
    let rows = ((budget / row_bytes) as usize).clamp(1, l);
    let mut pieces = Vec::with_capacity(b * l.div_ceil(rows));
    for i in 0..b {
        // [B, L, C] -> [L, C] for item i (a view when B == 1, else a copy).
        let item = |t: &Tensor| -> Result<Tensor, ModelError> {
            let t = if b == 1 { t.clone() } else { slice(gpu, t, 0, i, 1)? };
            Ok(t.reshape(&[l, c])?)
        };
        let (qi, ki, vi) = (item(&q)?, item(k)?, item(v)?);
        let mut start = 0;
        while start < l {
            let n = rows.min(l - start);
            let qc = if n == l { qi.clone() } else { slice(gpu, &qi, 0, start, n)? };
            pieces.push(core(&qc, &ki, &vi)?);
            start += n;
        }
    }
    // The blocks in (item, row) order: [n_k, C] concatenated = [B * L, C] -> [B, L, C].
    let refs: Vec<&Tensor> = pieces.iter().collect();
    Ok(concat(gpu, &refs, 0)?.reshape(&[b, l, c])?)
}
