//! Batched matrix multiplication, `torch.matmul` with optional transposes
//! and a fused epilogue (bias per column or row, activation or GEGLU,
//! residual add), and `linear` (PyTorch's `F.linear`, weight
//! `[out, in]`). Launches `shaders/matmul.wgsl` (portable tiled GEMM) or, for
//! f16 on adapters with cooperative matrices, `shaders/matmul_coop.wgsl`
//! (tensor cores: f16 inputs, f32 accumulation, f16 output).
//!
//! Operands larger than one storage binding are processed in batch windows;
//! a single matrix must fit one binding.

use std::num::NonZeroU64;

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, word};
use super::super::shaders::{ShaderFamily, Variant};
use super::super::tensor::{DType, Tensor};
use super::super::tensor_cores::{self, CoopKernel, Route};

/// An activation applied to the result in the kernel's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    Silu,
    /// The exact erf form (PyTorch's default `F.gelu`).
    Gelu,
    /// `x * sigmoid(1.702 x)`, CLIP's.
    QuickGelu,
}

impl Activation {
    /// The code the shaders' `activate` switches on.
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Silu => 1,
            Activation::Gelu => 2,
            Activation::QuickGelu => 3,
        }
    }
}

crate::kernel_params! {
    /// `Params` of `shaders/matmul.wgsl` and `shaders/matmul_coop.wgsl`:
    /// C `[batch, m, n]` = A `[m, k]` B `[k, n]` per batch item, A and B read
    /// through row and column strides, and the epilogue's switches.
    pub struct MatmulParams {
        pub m: u32,
        pub n: u32,
        pub k: u32,
        /// Element steps between batch items (0: shared by every item).
        pub batch_a: u32,
        pub batch_b: u32,
        pub batch_c: u32,
        pub a_rs: u32,
        pub a_cs: u32,
        pub b_rs: u32,
        pub b_cs: u32,
        /// Offsets (elements) of this dispatch's data inside the bound windows.
        pub off_a: u32,
        pub off_b: u32,
        pub off_c: u32,
        pub off_bias: u32,
        pub has_bias: u32,
        /// 0 none, 1 SiLU, 2 GELU (erf), 3 quick-GELU, 4 GEGLU.
        pub act: u32,
        pub tiles_n: u32,
        pub tiles_total: u32,
        /// The bias's strides over rows and columns (one is 0).
        pub bias_rs: u32,
        pub bias_cs: u32,
        pub has_res: u32,
        pub off_res: u32,
        /// C's row stride (n, or n / 2 with GEGLU).
        pub c_rs: u32,
    }
}

/// The shaders' `act` code for GEGLU on interleaved columns.
const ACT_GEGLU: u32 = 4;

/// What `matmul` computes besides the plain product.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatmulOptions<'a> {
    /// A is stored `[.., K, M]`.
    pub transpose_a: bool,
    /// B is stored `[.., N, K]` (a PyTorch `Linear` weight `[out, in]`).
    pub transpose_b: bool,
    /// Length-N vector added to every row of the result (length M added to
    /// every column with `bias_per_row`).
    pub bias: Option<&'a Tensor>,
    /// The bias has one value per row (M): a 1x1 conv written channels-first.
    pub bias_per_row: bool,
    pub activation: Activation,
    /// GEGLU on interleaved columns instead of an activation: result column
    /// `j` is `P[.., 2j] * gelu(P[.., 2j + 1])` of the product P (plus bias),
    /// so the result has N / 2 columns. See [`interleave_halves`].
    pub geglu: bool,
    /// Added to the result last (after the activation): `residual + f(x)`.
    /// Same shape and dtype as the result.
    pub residual: Option<&'a Tensor>,
}

/// Which kernel runs a product (or a convolution, in `conv2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulKernel {
    /// Cooperative matrices when `coop_available` and the kernel passed its tensor-core
    /// self-test (`tensor_cores`), else portable.
    #[default]
    Auto,
    /// The portable tiled kernel, whatever the adapter offers.
    Portable,
    /// Cooperative matrices; an error where `coop_available` is false or the kernel failed its
    /// self-test.
    Coop,
}

/// The portable kernel's tile: a workgroup computes BM x BN of C in BK-steps,
/// each invocation an 8x8 micro-tile, so the workgroup has (BM / 8) * (BN / 8)
/// invocations. Also used by `conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
}

impl Tile {
    pub fn workgroup(self) -> u32 {
        (self.bm / 8) * (self.bn / 8)
    }

    pub(crate) fn constants(self, kernel: Kernel) -> Kernel {
        kernel
            .constant("BM", self.bm as f64)
            .constant("BN", self.bn as f64)
            .constant("BK", self.bk as f64)
            .constant("WG", self.workgroup() as f64)
    }

    /// `TILE`, halved along a side whose extent is at most 64, so small
    /// products (one batch item of an 8x8 feature map, a few tokens) do not
    /// leave most of each block idle.
    pub fn for_shape(m: usize, n: usize) -> Tile {
        let half = |b: u32, len: usize| if len <= (b / 2) as usize { b / 2 } else { b };
        Tile { bm: half(TILE.bm, m), bn: half(TILE.bn, n), bk: TILE.bk }
    }
}

/// 128x128x16 with 256 invocations: 64 accumulators per invocation and four
/// vec4 shared-memory reads per 64 multiply-adds; 16.5 KiB of workgroup
/// memory, within lavapipe's 32 KiB. (Measured on lavapipe, 2 cores: 12.7
/// GFLOP/s at 512³ against 5.6 for 64x64x16 and 2.5 for 4x4 micro-tiles.)
pub const TILE: Tile = Tile { bm: 128, bn: 128, bk: 16 };

/// The cooperative kernels' block (fixed in the shader): 4 subgroups, each
/// 64x64 of C as 4x4 tiles of 16x16.
pub(crate) const COOP_BLOCK: u32 = 128;

/// Whether the adapter can run the cooperative-matrix matmul for `dtype`: f16
/// tensors on an adapter with 16x16x16 f16->f32 cooperative matrices and a
/// fixed subgroup size (the shader maps its 4 subgroups to quadrants).
/// `MatmulKernel::Auto` uses it where, besides, it passed its self-test.
pub fn coop_available(gpu: &Gpu, dtype: DType) -> bool {
    let f = gpu.features();
    let (lo, hi) = gpu.info.subgroup_size;
    dtype == DType::F16
        && f.coop_matrix_f16
        && f.subgroup
        && lo == hi
        && lo >= 1
        && 4 * lo <= gpu.limits.max_compute_invocations_per_workgroup
        && COOP_WORKGROUP_BYTES <= gpu.limits.max_compute_workgroup_storage_size
}

/// Workgroup memory matmul_coop.wgsl declares: two f16 staging tiles of
/// 5120 halves and four f32 16x16 tiles.
const COOP_WORKGROUP_BYTES: u32 = 2 * 5120 * 2 + 1024 * 4;

/// `op(a) · op(b) (+ bias) (then activation)`, batched over leading dims.
///
/// `a` is `[.., M, K]` (`[.., K, M]` with `transpose_a`), `b` `[.., K, N]`
/// (`[.., N, K]` with `transpose_b`). Batch dims must match, or one operand
/// has none and is shared by every batch item. Returns `[.., M, N]` in the
/// inputs' dtype.
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor, GpuError> {
    matmul_with_kernel(gpu, a, b, opts, MatmulKernel::Auto)
}

/// `matmul` with an explicit kernel choice (benchmarks and tests).
pub fn matmul_with_kernel(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    kernel: MatmulKernel,
) -> Result<Tensor, GpuError> {
    run(gpu, a, b, opts, kernel, gpu.limits.max_storage_buffer_binding_size)
}

/// `matmul` as if one storage binding held at most `limit` bytes, to test
/// the batch windows without gigabyte tensors.
#[doc(hidden)]
pub fn matmul_with_binding_limit(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    limit: u64,
) -> Result<Tensor, GpuError> {
    run(gpu, a, b, opts, MatmulKernel::Portable, limit.min(gpu.limits.max_storage_buffer_binding_size))
}

/// `F.linear(x, weight, bias)`: `x [.., in]`, `weight [out, in]`, `bias [out]`
/// -> `[.., out]`.
pub fn linear(gpu: &Gpu, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, GpuError> {
    if x.rank() == 0 || weight.rank() != 2 {
        return Err(GpuError::Shape(format!(
            "linear wants x [.., in] and weight [out, in]; got x {:?}, weight {:?}",
            x.shape(),
            weight.shape()
        )));
    }
    let inner = x.dim(-1);
    let rows: usize = x.shape()[..x.rank() - 1].iter().product();
    // [.., in] -> [rows, in]: one product with the weight shared by every row.
    let x2 = x.reshape(&[rows, inner])?;
    let y = matmul(gpu, &x2, weight, &MatmulOptions { transpose_b: true, bias, ..Default::default() })?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = weight.dim(0);
    y.reshape(&shape)
}

/// A GEGLU projection's output rows reordered for [`MatmulOptions::geglu`]:
/// `t` `[2n, ..]` holds the value rows then the gate rows (as `chunk(2)`
/// splits the product); the result holds them in (value, gate) pairs,
/// rows `2i` and `2i + 1`. For the weight `[2n, in]` and the bias `[2n]`.
pub fn interleave_halves(gpu: &Gpu, t: &Tensor) -> Result<Tensor, GpuError> {
    if t.rank() == 0 || !t.dim(0).is_multiple_of(2) {
        return Err(GpuError::Shape(format!("interleave_halves needs an even first axis; got {:?}", t.shape())));
    }
    let half = t.dim(0) / 2;
    let rest: usize = t.shape()[1..].iter().product();
    let pairs = super::layout::permute(gpu, &t.reshape(&[2, half, rest])?, &[1, 0, 2])?;
    pairs.reshape(t.shape())
}

/// A product's sizes and element strides, after the shape checks.
struct Plan {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    out_shape: Vec<usize>,
    // Element steps between batch items; 0 for a shared operand.
    batch_a: usize,
    batch_b: usize,
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_cs: usize,
}

fn plan(a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Plan, GpuError> {
    if a.rank() < 2 || b.rank() < 2 {
        return Err(GpuError::Shape(format!(
            "matmul needs operands of rank >= 2; got {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    if a.dtype() != b.dtype() {
        return Err(GpuError::Shape(format!("matmul operands differ in dtype: {:?} and {:?}", a.dtype(), b.dtype())));
    }
    let (ar, br) = (a.rank(), b.rank());
    let (r, c) = (a.shape()[ar - 2], a.shape()[ar - 1]);
    let (m, k) = if opts.transpose_a { (c, r) } else { (r, c) };
    let (r, c) = (b.shape()[br - 2], b.shape()[br - 1]);
    let (kb, n) = if opts.transpose_b { (c, r) } else { (r, c) };
    if k != kb {
        return Err(GpuError::Shape(format!(
            "matmul inner dimensions differ: a {:?}{} has K = {k}, b {:?}{} has K = {kb}",
            a.shape(),
            if opts.transpose_a { " (transposed)" } else { "" },
            b.shape(),
            if opts.transpose_b { " (transposed)" } else { "" },
        )));
    }
    let a_dims = &a.shape()[..ar - 2];
    let b_dims = &b.shape()[..br - 2];
    let batch_dims = if b_dims.is_empty() {
        a_dims
    } else if a_dims.is_empty() || a_dims == b_dims {
        b_dims
    } else {
        return Err(GpuError::Shape(format!(
            "matmul batch dimensions differ: {:?} and {:?} (they must match, or one operand has none)",
            a.shape(),
            b.shape()
        )));
    };
    if let Some(bias) = opts.bias {
        let (len, axis) = if opts.bias_per_row { (m, "M, one per row") } else { (n, "N") };
        if bias.rank() != 1 || bias.dim(0) != len {
            return Err(GpuError::Shape(format!("matmul bias must be [{len}] ({axis}); got {:?}", bias.shape())));
        }
        if bias.dtype() != a.dtype() {
            return Err(GpuError::Shape(format!("matmul bias is {:?}, operands {:?}", bias.dtype(), a.dtype())));
        }
    }
    if opts.geglu && (!n.is_multiple_of(2) || opts.activation != Activation::None || opts.residual.is_some()) {
        return Err(GpuError::Shape(format!(
            "matmul GEGLU needs an even N (got {n}) and no other activation or residual"
        )));
    }
    let mut out_shape = batch_dims.to_vec();
    out_shape.extend([m, if opts.geglu { n / 2 } else { n }]);
    if let Some(r) = opts.residual
        && (r.shape() != out_shape || r.dtype() != a.dtype())
    {
        return Err(GpuError::Shape(format!(
            "matmul residual is {:?} {:?}; the result is {out_shape:?} {:?}",
            r.shape(),
            r.dtype(),
            a.dtype()
        )));
    }
    let (a_rs, a_cs) = if opts.transpose_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if opts.transpose_b { (1, k) } else { (n, 1) };
    Ok(Plan {
        batch: batch_dims.iter().product(),
        m,
        n,
        k,
        out_shape,
        batch_a: if a_dims.is_empty() { 0 } else { m * k },
        batch_b: if b_dims.is_empty() { 0 } else { k * n },
        a_rs,
        a_cs,
        b_rs,
        b_cs,
    })
}

/// A binding of the elements `start..end` of `t`, starting at an offset the
/// adapter can bind, and the element offset of `start` inside it.
pub(crate) fn window<'t>(gpu: &Gpu, t: &'t Tensor, start: usize, end: usize) -> (wgpu::BufferBinding<'t>, u32) {
    let es = t.dtype().size() as u64;
    let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let first = start as u64 * es;
    let offset = first / align * align;
    let size = ((end.max(start + 1) as u64 * es - offset).div_ceil(4) * 4).min(t.buffer().size() - offset);
    let binding = wgpu::BufferBinding { buffer: t.buffer(), offset, size: NonZeroU64::new(size) };
    (binding, ((first - offset) / es) as u32)
}

/// Bytes of data one window may hold so that, with the alignment slack and
/// rounding `window` adds, its binding stays within `limit` (capped at 2 GiB
/// so element indices fit the shaders' u32 arithmetic).
pub(crate) fn window_budget(gpu: &Gpu, limit: u64) -> u64 {
    let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    limit.min(1 << 31).saturating_sub(align + 4)
}

fn run(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    kernel: MatmulKernel,
    limit: u64,
) -> Result<Tensor, GpuError> {
    let p = plan(a, b, opts)?;
    let dtype = a.dtype();
    let hardware = coop_available(gpu, dtype);
    let route = tensor_cores::route(gpu, CoopKernel::Matmul, kernel, hardware, dtype == DType::F16, || {
        format!(
            "cooperative-matrix matmul needs f16 tensors on an adapter with 16x16x16 f16 cooperative \
             matrices and a fixed subgroup size; got {dtype:?} on {}",
            gpu.info.name
        )
    })?;
    launch(gpu, a, b, opts, &p, route, limit)
}

/// `matmul` on the kernel `route` names, whatever the verdicts say: the tensor-core self-test's entry.
pub(crate) fn run_routed(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    route: Route,
) -> Result<Tensor, GpuError> {
    let p = plan(a, b, opts)?;
    launch(gpu, a, b, opts, &p, route, gpu.limits.max_storage_buffer_binding_size)
}

/// Records the dispatches of a checked product on `route` (the stand-in is the portable kernel).
fn launch(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    p: &Plan,
    route: Route,
    limit: u64,
) -> Result<Tensor, GpuError> {
    let dtype = a.dtype();
    let coop = route == Route::TensorCores;
    let c = gpu.empty(&p.out_shape, dtype)?;
    if c.numel() == 0 {
        return Ok(c);
    }
    // Elements between rows of C.
    let c_rs = if opts.geglu { p.n / 2 } else { p.n };
    let chunk = batch_chunk(gpu, p, a, b, c_rs, limit)?;
    let tile = Tile::for_shape(p.m, p.n);
    let (block_m, block_n) = if coop { (COOP_BLOCK, COOP_BLOCK) } else { (tile.bm, tile.bn) };
    let tiles_n = (p.n as u32).div_ceil(block_n);
    let tiles_total = (p.m as u32).div_ceil(block_m) * tiles_n;
    let k = if coop {
        let sg = gpu.info.subgroup_size.0;
        Kernel::new(ShaderFamily::MatmulCoop, Variant::CoopF16, "matmul").constant("SG", sg as f64)
    } else {
        tile.constants(Kernel::new(ShaderFamily::Matmul, dtype.variant(), "matmul"))
    };
    let call = MatmulCall { gpu, a, b, c: &c, opts, p, c_rs, tiles_n, tiles_total };
    for b0 in (0..p.batch).step_by(chunk) {
        call.dispatch(&k, b0, chunk.min(p.batch - b0))?;
    }
    tensor_cores::finish(gpu, route, c)
}

/// Batch items per dispatch: every batched operand's window, and each shared one, must fit `limit`.
fn batch_chunk(gpu: &Gpu, p: &Plan, a: &Tensor, b: &Tensor, c_rs: usize, limit: u64) -> Result<usize, GpuError> {
    let es = a.dtype().size() as u64;
    let budget = window_budget(gpu, limit);
    let per_item = p.batch_a.max(p.batch_b).max(p.m * c_rs) as u64 * es;
    let shared_bytes = [(p.batch_a == 0, a.bytes()), (p.batch_b == 0, b.bytes())]
        .into_iter()
        .filter(|(shared, _)| *shared)
        .map(|(_, bytes)| bytes)
        .max()
        .unwrap_or(0);
    if per_item > budget || shared_bytes > budget {
        return Err(GpuError::TooLarge {
            bytes: per_item.max(shared_bytes),
            limit,
            what: "storage binding (one matrix of a matmul)",
        });
    }
    let max_dim = gpu.limits.max_compute_workgroups_per_dimension;
    Ok(((budget / per_item.max(1)) as usize).clamp(1, max_dim as usize))
}

/// The operands of one matmul, for the dispatches that cover its batch.
struct MatmulCall<'a> {
    gpu: &'a Gpu,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    opts: &'a MatmulOptions<'a>,
    p: &'a Plan,
    c_rs: usize,
    tiles_n: u32,
    tiles_total: u32,
}

impl MatmulCall<'_> {
    /// Binds the windows of batch items `b0 .. b0 + items` and dispatches them.
    fn dispatch(&self, k: &Kernel, b0: usize, items: usize) -> Result<(), GpuError> {
        let Self { gpu, a, b, c, opts, p, c_rs, tiles_n, tiles_total } = *self;
        let (wa, off_a) = if p.batch_a == 0 {
            window(gpu, a, 0, a.numel())
        } else {
            window(gpu, a, b0 * p.batch_a, (b0 + items) * p.batch_a)
        };
        let (wb, off_b) = if p.batch_b == 0 {
            window(gpu, b, 0, b.numel())
        } else {
            window(gpu, b, b0 * p.batch_b, (b0 + items) * p.batch_b)
        };
        let mn = p.m * c_rs;
        let (wc, off_c) = window(gpu, c, b0 * mn, (b0 + items) * mn);
        // Without a bias or residual, bind A again (read-only) so the layout stays the same.
        let (wbias, off_bias) = match opts.bias {
            Some(bias) => window(gpu, bias, 0, bias.numel()),
            None => (wa.clone(), 0),
        };
        let (wres, off_res) = match opts.residual {
            Some(r) => window(gpu, r, b0 * mn, (b0 + items) * mn),
            None => (wa.clone(), 0),
        };
        let (bias_rs, bias_cs) = if opts.bias_per_row { (1, 0) } else { (0, 1) };
        let act = if opts.geglu { ACT_GEGLU } else { opts.activation.code() };
        let params = MatmulParams {
            m: word(p.m),
            n: word(p.n),
            k: word(p.k),
            batch_a: word(p.batch_a),
            batch_b: word(p.batch_b),
            batch_c: word(mn),
            a_rs: word(p.a_rs),
            a_cs: word(p.a_cs),
            b_rs: word(p.b_rs),
            b_cs: word(p.b_cs),
            off_a,
            off_b,
            off_c,
            off_bias,
            has_bias: opts.bias.is_some() as u32,
            act,
            tiles_n,
            tiles_total,
            bias_rs,
            bias_cs,
            has_res: opts.residual.is_some() as u32,
            off_res,
            c_rs: word(c_rs),
        };
        let [gx, gy, _] = grid(tiles_total, gpu.limits.max_compute_workgroups_per_dimension);
        gpu.dispatch(k, &params, &[wa, wb, wbias, wc, wres], [gx, gy, items as u32])
    }
}
