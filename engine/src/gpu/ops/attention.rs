//! Multi-head scaled dot-product attention
//! (`torch.nn.functional.scaled_dot_product_attention` on heads split out of
//! the channel axis, as diffusers' `Attention` and CLIP's self-attention use
//! it), launching `shaders/attention.wgsl`: flash-style, the score matrix is
//! never stored.

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, Params, whole};
use super::super::shaders::ShaderFamily;
use super::super::tensor::Tensor;

/// Query rows per workgroup (`BQ` in the shader).
const BQ: usize = 64;
/// The largest head dimension the kernel's per-invocation arrays hold (`DMAX`).
pub const MAX_HEAD_DIM: usize = 160;
/// Workgroup memory the kernel declares: the staging block (32 x 160), the
/// score block (64 x 33) and three per-row arrays, all f32.
const WORKGROUP_BYTES: u32 = (32 * 160 + 64 * 33 + 3 * 64) * 4;

/// How to attend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions {
    /// Heads the channel axis splits into: `H*D` channels are `heads` heads of `D`.
    pub heads: usize,
    /// Query `i` attends to keys `0..=i` only (CLIP's causal mask; PyTorch's
    /// `is_causal`, aligned at the top left when `Lq != Lk`).
    pub causal: bool,
    /// Softmax scale; `None` is `1 / sqrt(D)`.
    pub scale: Option<f32>,
}

impl AttentionOptions {
    /// `heads` heads, no mask, the default scale.
    pub fn new(heads: usize) -> Self {
        Self { heads, causal: false, scale: None }
    }
}

/// `softmax(q k^T * scale) v` per (batch, head): `q` `[B, Lq, H*D]`, `k` and
/// `v` `[B, Lk, H*D]`, result `[B, Lq, H*D]` (the projections' layout, so no
/// permutes are needed). `D` may be 1..=160.
pub fn attention(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, opts: AttentionOptions) -> Result<Tensor, GpuError> {
    let err = |m: String| Err(GpuError::Shape(format!("attention: {m}")));
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 3 {
            return err(format!("{name} must be [B, L, H*D], got {:?}", t.shape()));
        }
        if t.dtype() != q.dtype() {
            return err(format!("{name} is {:?} but q is {:?}", t.dtype(), q.dtype()));
        }
    }
    let (b, lq, hd) = (q.dim(0), q.dim(1), q.dim(2));
    let lk = k.dim(1);
    let heads = opts.heads;
    if heads == 0 || hd % heads != 0 {
        return err(format!("{hd} channels do not split into {heads} heads"));
    }
    if k.dim(0) != b || v.dim(0) != b {
        return err(format!("batch sizes differ: q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape()));
    }
    if k.dim(2) != hd {
        return err(format!("k has {} channels but q has {hd} (q and k need the same head dim)", k.dim(2)));
    }
    if v.dim(2) != hd {
        return err(format!("v has {} channels but q has {hd}", v.dim(2)));
    }
    if v.dim(1) != lk {
        return err(format!("k has {lk} positions but v has {}", v.dim(1)));
    }
    let d = hd / heads;
    if d > MAX_HEAD_DIM {
        return err(format!("head dim {d} exceeds the supported {MAX_HEAD_DIM}"));
    }
    let out = gpu.empty(q.shape(), q.dtype())?;
    if b == 0 || lq == 0 || d == 0 {
        return Ok(out);
    }
    if lk == 0 {
        return err("no keys to attend to (Lk = 0)".into());
    }
    let available = gpu.limits.max_compute_workgroup_storage_size;
    if available < WORKGROUP_BYTES {
        return Err(GpuError::Wgpu(format!(
            "attention needs {WORKGROUP_BYTES} bytes of workgroup memory; {} offers {available}",
            gpu.info.name
        )));
    }
    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let params =
        Params::new().usize(lq).usize(lk).usize(heads).u32(opts.causal as u32).f32(scale * std::f32::consts::LOG2_E);
    // D chunks of 16 halve the barriers; 8 when 16 would pad (D = 40).
    let dk = if d.is_multiple_of(16) { 16.0 } else { 8.0 };
    let kernel = Kernel::new(ShaderFamily::Attention, q.dtype().variant(), "attention")
        .constant("HEAD_DIM", d as f64)
        .constant("DK", dk);
    gpu.dispatch(
        &kernel,
        params,
        &[whole(q), whole(k), whole(v), whole(&out)],
        [lq.div_ceil(BQ) as u32, heads as u32, b as u32],
    )?;
    Ok(out)
}
