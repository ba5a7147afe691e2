//! Multi-head scaled dot-product attention
//! (`torch.nn.functional.scaled_dot_product_attention` on heads split out of
//! the channel axis, as diffusers' `Attention` and CLIP's self-attention use
//! it), launching `shaders/attention.wgsl`: flash-style, the score matrix is
//! never stored; or for f16 on adapters with cooperative matrices
//! `shaders/attention_coop.wgsl` (tensor cores, two passes over the keys).

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, whole, word};
use super::super::shaders::{ShaderFamily, Variant};
use super::super::tensor::DType;
use super::super::tensor::Tensor;
use super::super::tensor_cores::{self, CoopKernel, Route};
use super::matmul::{MatmulKernel, coop_available};

crate::kernel_params! {
    /// `Params` of `shaders/lib/attention_io.wgsl` (both attention kernels).
    pub struct AttentionParams {
        pub lq: u32,
        pub lk: u32,
        pub heads: u32,
        pub causal: u32,
        /// The softmax scale times log2(e): the kernels use exp2.
        pub scale_log2: f32,
        /// Row strides and offsets (elements) of q, k and v in their buffers.
        pub q_rs: u32,
        pub k_rs: u32,
        pub v_rs: u32,
        pub q_off: u32,
        pub k_off: u32,
        pub v_off: u32,
    }
}

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
    /// Which kernel: `Auto` uses cooperative matrices where the adapter and
    /// the shapes allow (f16, D <= 160), the portable kernel elsewhere.
    pub kernel: MatmulKernel,
}

impl AttentionOptions {
    /// `heads` heads, no mask, the default scale.
    pub fn new(heads: usize) -> Self {
        Self { heads, causal: false, scale: None, kernel: MatmulKernel::Auto }
    }
}

/// Workgroup memory the cooperative kernel declares, sized for D = 160: Q
/// (64 rows), K and V (16 rows each) in f16 with rows of 168, the score
/// tiles (4 x 16 x 16 f32), the P tiles (4 x 16 x 24 f16), the row sums.
const COOP_WORKGROUP_BYTES: u32 = (64 + 2 * 16) * 168 * 2 + 1024 * 4 + 1536 * 2 + 64 * 4;

/// Whether the adapter can run attention of `head_dim` on cooperative matrices.
/// The kernel keeps one row's statistics per invocation of a 16-row
/// subgroup tile, so it needs subgroups of at least 16. `MatmulKernel::Auto`
/// uses it where, besides, the kernel passed its self-test.
pub fn coop_attention_available(gpu: &Gpu, dtype: DType, head_dim: usize) -> bool {
    coop_available(gpu, dtype)
        && gpu.info.subgroup_size.0 >= 16
        && (1..=MAX_HEAD_DIM).contains(&head_dim)
        && COOP_WORKGROUP_BYTES <= gpu.limits.max_compute_workgroup_storage_size
}

/// `softmax(q k^T * scale) v` per (batch, head): `q` `[B, Lq, H*D]`, `k` and
/// `v` `[B, Lk, H*D]`, result `[B, Lq, H*D]` (the projections' layout, so no
/// permutes are needed). `D` may be 1..=160.
pub fn attention(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, opts: AttentionOptions) -> Result<Tensor, GpuError> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 3 {
            return Err(GpuError::Shape(format!("attention: {name} must be [B, L, H*D], got {:?}", t.shape())));
        }
    }
    let part = |t| Part { tensor: t, offset: 0, row: t.dim(2), channels: t.dim(2) };
    run(gpu, part(q), part(k), part(v), opts)
}

/// `attention` on the kernel `route` names, whatever the verdicts say: the tensor-core
/// self-test's entry (`opts.kernel` is not read).
pub(crate) fn run_routed(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: AttentionOptions,
    route: Route,
) -> Result<Tensor, GpuError> {
    fn part(t: &Tensor) -> Part<'_> {
        Part { tensor: t, offset: 0, row: t.dim(2), channels: t.dim(2) }
    }
    let (q, k, v) = (part(q), part(k), part(v));
    let d = check(&q, &k, &v, opts.heads)?;
    launch(gpu, q, k, v, opts, d, route)
}

/// Self-attention on one packed projection: `qkv` `[B, L, 3*H*D]` holds q,
/// k and v side by side in each row (the output of to_q, to_k and to_v
/// stacked into one weight). Result `[B, L, H*D]`.
pub fn attention_qkv(gpu: &Gpu, qkv: &Tensor, opts: AttentionOptions) -> Result<Tensor, GpuError> {
    if qkv.rank() != 3 || !qkv.dim(2).is_multiple_of(3) {
        return Err(GpuError::Shape(format!("attention: qkv must be [B, L, 3*H*D], got {:?}", qkv.shape())));
    }
    let (row, hd) = (qkv.dim(2), qkv.dim(2) / 3);
    let part = |i| Part { tensor: qkv, offset: i * hd, row, channels: hd };
    run(gpu, part(0), part(1), part(2), opts)
}

/// Cross-attention with k and v packed: `q` `[B, Lq, H*D]`, `kv` `[B, Lk,
/// 2*H*D]` (to_k and to_v stacked). Result `[B, Lq, H*D]`.
pub fn attention_kv(gpu: &Gpu, q: &Tensor, kv: &Tensor, opts: AttentionOptions) -> Result<Tensor, GpuError> {
    if q.rank() != 3 || kv.rank() != 3 || !kv.dim(2).is_multiple_of(2) {
        return Err(GpuError::Shape(format!(
            "attention: q must be [B, Lq, H*D] and kv [B, Lk, 2*H*D], got {:?} and {:?}",
            q.shape(),
            kv.shape()
        )));
    }
    let (row, hd) = (kv.dim(2), kv.dim(2) / 2);
    let q = Part { tensor: q, offset: 0, row: q.dim(2), channels: q.dim(2) };
    let kv_part = |i| Part { tensor: kv, offset: i * hd, row, channels: hd };
    run(gpu, q, kv_part(0), kv_part(1), opts)
}

/// One operand: `channels` columns from `offset` of rows `row` elements
/// wide, in a `[B, L, row]` tensor.
#[derive(Clone, Copy)]
struct Part<'t> {
    tensor: &'t Tensor,
    offset: usize,
    row: usize,
    channels: usize,
}

/// The head dim of `q`, `k`, `v` split into `heads`, after checking that they fit together.
fn check(q: &Part, k: &Part, v: &Part, heads: usize) -> Result<usize, GpuError> {
    let err = |m: String| Err(GpuError::Shape(format!("attention: {m}")));
    for (name, p) in [("k", k), ("v", v)] {
        if p.tensor.dtype() != q.tensor.dtype() {
            return err(format!("{name} is {:?} but q is {:?}", p.tensor.dtype(), q.tensor.dtype()));
        }
    }
    let (b, hd) = (q.tensor.dim(0), q.channels);
    let lk = k.tensor.dim(1);
    if heads == 0 || hd % heads != 0 {
        return err(format!("{hd} channels do not split into {heads} heads"));
    }
    let (ks, vs) = (k.tensor.shape(), v.tensor.shape());
    if k.tensor.dim(0) != b || v.tensor.dim(0) != b {
        return err(format!("batch sizes differ: q {:?}, k {ks:?}, v {vs:?}", q.tensor.shape()));
    }
    if k.channels != hd {
        return err(format!("k has {} channels but q has {hd} (q and k need the same head dim)", k.channels));
    }
    if v.channels != hd {
        return err(format!("v has {} channels but q has {hd}", v.channels));
    }
    if v.tensor.dim(1) != lk {
        return err(format!("k has {lk} positions but v has {}", v.tensor.dim(1)));
    }
    let d = hd / heads;
    if d > MAX_HEAD_DIM {
        return err(format!("head dim {d} exceeds the supported {MAX_HEAD_DIM}"));
    }
    Ok(d)
}

fn run(gpu: &Gpu, q: Part, k: Part, v: Part, opts: AttentionOptions) -> Result<Tensor, GpuError> {
    let d = check(&q, &k, &v, opts.heads)?;
    let dtype = q.tensor.dtype();
    let hardware = coop_attention_available(gpu, dtype, d);
    let fits = dtype == DType::F16 && (1..=MAX_HEAD_DIM).contains(&d);
    let route = tensor_cores::route(gpu, CoopKernel::Attention, opts.kernel, hardware, fits, || {
        format!(
            "attention: the cooperative-matrix kernel needs f16 tensors, D <= {MAX_HEAD_DIM} and an adapter with \
             16x16x16 f16 cooperative matrices; got {dtype:?}, D = {d} on {}",
            gpu.info.name
        )
    })?;
    launch(gpu, q, k, v, opts, d, route)
}

/// Records the dispatch of a checked attention (head dim `d`) on `route`.
fn launch(
    gpu: &Gpu,
    q: Part,
    k: Part,
    v: Part,
    opts: AttentionOptions,
    d: usize,
    route: Route,
) -> Result<Tensor, GpuError> {
    let err = |m: String| Err(GpuError::Shape(format!("attention: {m}")));
    let (b, lq, hd) = (q.tensor.dim(0), q.tensor.dim(1), q.channels);
    let lk = k.tensor.dim(1);
    let heads = opts.heads;
    let out = gpu.empty(&[b, lq, hd], q.tensor.dtype())?;
    if b == 0 || lq == 0 || d == 0 {
        return Ok(out);
    }
    if lk == 0 {
        return err("no keys to attend to (Lk = 0)".into());
    }
    let dtype = q.tensor.dtype();
    let coop = route == Route::TensorCores;
    let available = gpu.limits.max_compute_workgroup_storage_size;
    if !coop && available < WORKGROUP_BYTES {
        return Err(GpuError::Wgpu(format!(
            "attention needs {WORKGROUP_BYTES} bytes of workgroup memory; {} offers {available}",
            gpu.info.name
        )));
    }
    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let params = AttentionParams {
        lq: word(lq),
        lk: word(lk),
        heads: word(heads),
        causal: opts.causal as u32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        q_rs: word(q.row),
        k_rs: word(k.row),
        v_rs: word(v.row),
        q_off: word(q.offset),
        k_off: word(k.offset),
        v_off: word(v.offset),
    };
    let kernel = if coop {
        let sg = gpu.info.subgroup_size.0;
        Kernel::new(ShaderFamily::AttentionCoop, Variant::CoopF16, "attention")
            .constant("SG", sg as f64)
            .constant("HEAD_DIM", d as f64)
    } else {
        // D chunks of 16 halve the barriers; 8 when 16 would pad (D = 40).
        let dk = if d.is_multiple_of(16) { 16.0 } else { 8.0 };
        Kernel::new(ShaderFamily::Attention, dtype.variant(), "attention")
            .constant("HEAD_DIM", d as f64)
            .constant("DK", dk)
    };
    gpu.dispatch(
        &kernel,
        &params,
        &[whole(q.tensor), whole(k.tensor), whole(v.tensor), whole(&out)],
        [lq.div_ceil(BQ) as u32, heads as u32, b as u32],
    )?;
    tensor_cores::finish(gpu, route, out)
}
