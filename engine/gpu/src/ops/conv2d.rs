//! 2-D convolution, PyTorch's `F.conv2d` with groups = 1 (any kernel size,
//! stride, padding, dilation), with a fused epilogue: activation, a bias per
//! batch item, a residual added last. Launches
//! `shaders/conv2d.wgsl`, an implicit GEMM on the portable matmul tiling, or
//! for f16 on adapters with cooperative matrices the `conv2d` entry point of
//! `shaders/matmul_coop.wgsl` (f16 in and out, f32 accumulation).
//!
//! Tensors larger than one storage binding are processed in windows: batch
//! items, then output channels, then input channels (later splits add to
//! the output, the bias goes in with the first and the activation with the
//! last).

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, word};
use super::super::shaders::{ShaderFamily, Variant};
use super::super::tensor::{DType, Tensor};
use super::super::tensor_cores::{self, CoopKernel, Route};
use super::matmul::{Activation, COOP_BLOCK, MatmulKernel, Tile, coop_available, window, window_budget};

crate::kernel_params! {
    /// `Params` of `shaders/conv2d.wgsl` and `ConvParams` of
    /// `shaders/matmul_coop.wgsl`: one dispatch's slice of a convolution.
    pub struct Conv2dParams {
        /// Input channels of this dispatch, input size, output channels of this dispatch, output size.
        pub cin: u32,
        pub h: u32,
        pub w: u32,
        pub cout: u32,
        pub hout: u32,
        pub wout: u32,
        pub kh: u32,
        pub kw: u32,
        pub stride_y: u32,
        pub stride_x: u32,
        pub pad_y: u32,
        pub pad_x: u32,
        pub dil_y: u32,
        pub dil_x: u32,
        /// The weight's full input-channel count and the first channel of this dispatch.
        pub w_cin: u32,
        pub ci_start: u32,
        /// Element steps between batch items of x and y.
        pub batch_x: u32,
        pub batch_y: u32,
        /// Offsets (elements) of this dispatch's data inside the bound windows.
        pub off_x: u32,
        pub off_w: u32,
        pub off_bias: u32,
        pub off_y: u32,
        pub has_bias: u32,
        /// 0 none, 1 SiLU, 2 GELU (erf), 3 quick-GELU.
        pub act: u32,
        /// 1: add to what y holds (a later split of the input channels).
        pub accumulate: u32,
        pub tiles_n: u32,
        pub tiles_total: u32,
        /// The bias's step between batch items (0: one bias for all).
        pub bias_bs: u32,
        pub has_res: u32,
        pub off_res: u32,
    }
}

/// Geometry and epilogue of a convolution; (y, x) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub activation: Activation,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self { stride: (1, 1), padding: (0, 0), dilation: (1, 1), activation: Activation::None }
    }
}

/// Extra inputs of a convolution's epilogue.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvExtras<'a> {
    /// The bias has a row per batch item (a ResNet block's conv bias plus
    /// its time embedding): `[B, N]`, of which columns `bias_offset ..
    /// bias_offset + Cout` are this conv's (N = Cout, offset 0, unless the
    /// rows hold the biases of several convs). Otherwise the bias is `[Cout]`.
    pub bias_per_batch: bool,
    pub bias_offset: usize,
    /// Added to the output last, after the activation (`skip + conv(h)`);
    /// the output's shape and dtype.
    pub residual: Option<&'a Tensor>,
}

/// `F.conv2d(x, weight, bias, stride, padding)`: `x [B, Cin, H, W]`, `weight
/// [Cout, Cin, kh, kw]`, `bias [Cout]` -> `[B, Cout, Hout, Wout]`.
pub fn conv2d(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor, GpuError> {
    let opts = Conv2dOptions { stride: (stride, stride), padding: (padding, padding), ..Default::default() };
    conv2d_with(gpu, x, weight, bias, &opts)
}

/// `conv2d` with per-axis stride, padding, dilation and an activation.
pub fn conv2d_with(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &Conv2dOptions,
) -> Result<Tensor, GpuError> {
    conv2d_fused(gpu, x, weight, bias, opts, ConvExtras::default())
}

/// `conv2d_with` with a per-batch bias and/or a residual (see [`ConvExtras`]).
pub fn conv2d_fused(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &Conv2dOptions,
    extras: ConvExtras,
) -> Result<Tensor, GpuError> {
    Conv2dCall { x, weight, bias, opts, extras }.run(gpu, MatmulKernel::Auto)
}

/// One convolution's operands, as [`conv2d_fused`] takes them, for the entries that also say how it runs.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dCall<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub opts: &'a Conv2dOptions,
    pub extras: ConvExtras<'a>,
}

impl Conv2dCall<'_> {
    /// `conv2d_fused` on an explicit kernel choice (benchmarks and tests).
    pub fn run(&self, gpu: &Gpu, kernel: MatmulKernel) -> Result<Tensor, GpuError> {
        let pick = |dtype| use_coop(gpu, dtype, kernel);
        self.launch(gpu, pick, gpu.limits.max_storage_buffer_binding_size)
    }

    /// `conv2d_fused` as if one storage binding held at most `limit` bytes, to test the windows without
    /// gigabyte tensors.
    #[doc(hidden)]
    pub fn run_with_binding_limit(&self, gpu: &Gpu, limit: u64) -> Result<Tensor, GpuError> {
        let limit = limit.min(gpu.limits.max_storage_buffer_binding_size);
        self.launch(gpu, |_| Ok(Route::Portable), limit)
    }

    /// `conv2d_fused` on the kernel `route` names, whatever the verdicts say: the tensor-core self-test's entry.
    pub(crate) fn run_routed(&self, gpu: &Gpu, route: Route) -> Result<Tensor, GpuError> {
        self.launch(gpu, |_| Ok(route), gpu.limits.max_storage_buffer_binding_size)
    }
}

/// Whether the adapter can run conv2d on cooperative matrices: as for
/// matmul, and the 4-subgroup workgroup must cover whole 128-pixel rows of
/// the staging tile (subgroups of 32 or 64). `MatmulKernel::Auto` uses them
/// where, besides, the kernel passed its self-test.
pub fn coop_conv_available(gpu: &Gpu, dtype: DType) -> bool {
    let sg = gpu.info.subgroup_size.0;
    coop_available(gpu, dtype) && (4 * sg).is_multiple_of(COOP_BLOCK)
}

/// Output height and width, as PyTorch computes them; an error when the
/// (dilated) kernel does not fit the padded input or a step is zero.
pub fn output_size(h: usize, w: usize, kh: usize, kw: usize, opts: &Conv2dOptions) -> Result<(usize, usize), GpuError> {
    let axis = |len: usize, k: usize, s: usize, p: usize, d: usize, name: &str| {
        if s == 0 || d == 0 || k == 0 {
            return Err(GpuError::Shape(format!(
                "conv2d {name}: kernel size, stride and dilation must be >= 1 (kernel {k}, stride {s}, dilation {d})"
            )));
        }
        let span = d * (k - 1) + 1;
        if len + 2 * p < span {
            return Err(GpuError::Shape(format!(
                "conv2d {name}: kernel spans {span} but the padded input is only {}",
                len + 2 * p
            )));
        }
        Ok((len + 2 * p - span) / s + 1)
    };
    Ok((
        axis(h, kh, opts.stride.0, opts.padding.0, opts.dilation.0, "height")?,
        axis(w, kw, opts.stride.1, opts.padding.1, opts.dilation.1, "width")?,
    ))
}

/// The sizes of one convolution, checked against each other.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    hout: usize,
    wout: usize,
}

impl ConvShape {
    /// The shapes and dtypes of the operands, or an error naming the mismatch.
    fn check(conv: &Conv2dCall) -> Result<Self, GpuError> {
        let Conv2dCall { x, weight, bias, opts, extras } = *conv;
        let (&[b, cin, h, w], &[cout, wcin, kh, kw]) = (x.shape(), weight.shape()) else {
            return Err(GpuError::Shape(format!(
                "conv2d wants x [B, Cin, H, W] and weight [Cout, Cin, kh, kw]; got x {:?}, weight {:?}",
                x.shape(),
                weight.shape()
            )));
        };
        if cin != wcin {
            return Err(GpuError::Shape(format!(
                "conv2d: x has {cin} channels but the weight {:?} expects {wcin} (groups = 1 only)",
                weight.shape()
            )));
        }
        if x.dtype() != weight.dtype() {
            return Err(GpuError::Shape(format!("conv2d: x is {:?}, weight {:?}", x.dtype(), weight.dtype())));
        }
        if let Some(bias) = bias {
            check_bias(bias, x.dtype(), b, cout, &extras)?;
        }
        let (hout, wout) = output_size(h, w, kh, kw, opts)?;
        if let Some(r) = extras.residual
            && (r.shape() != [b, cout, hout, wout] || r.dtype() != x.dtype())
        {
            return Err(GpuError::Shape(format!(
                "conv2d residual is {:?} {:?}; the output is [{b}, {cout}, {hout}, {wout}] {:?}",
                r.shape(),
                r.dtype(),
                x.dtype()
            )));
        }
        Ok(Self { b, cin, h, w, cout, kh, kw, hout, wout })
    }
}

/// A bias is `[Cout]`, or `[B, N]` with this conv's columns inside N when it is per batch item.
fn check_bias(bias: &Tensor, dtype: DType, b: usize, cout: usize, extras: &ConvExtras) -> Result<(), GpuError> {
    let off = extras.bias_offset;
    let ok = match *bias.shape() {
        [bb, n] if extras.bias_per_batch => bb == b && n >= off + cout,
        [n] if !extras.bias_per_batch => n == cout && off == 0,
        _ => false,
    };
    if !ok {
        let want = if extras.bias_per_batch {
            format!("[{b}, N] (B, N >= {off} + Cout {cout})")
        } else {
            format!("[{cout}] (Cout)")
        };
        return Err(GpuError::Shape(format!("conv2d bias must be {want}; got {:?}", bias.shape())));
    }
    if bias.dtype() != dtype {
        return Err(GpuError::Shape(format!("conv2d: bias is {:?}, x {dtype:?}", bias.dtype())));
    }
    Ok(())
}

/// Which kernel this call runs on; an error when tensor cores were asked for and are missing or failed.
fn use_coop(gpu: &Gpu, dtype: DType, kernel: MatmulKernel) -> Result<Route, GpuError> {
    let hardware = coop_conv_available(gpu, dtype);
    tensor_cores::route(gpu, CoopKernel::Conv2d, kernel, hardware, dtype == DType::F16, || {
        format!(
            "cooperative-matrix conv2d needs f16 tensors on an adapter with 16x16x16 f16 cooperative \
             matrices and a fixed subgroup size of 32 or 64; got {dtype:?} on {}",
            gpu.info.name
        )
    })
}

/// How many batch items, output channels and input channels one dispatch covers, so that
/// every window it binds fits in `limit` bytes.
#[derive(Debug, Clone, Copy)]
struct Windows {
    b_n: usize,
    co_n: usize,
    ci_n: usize,
}

impl Windows {
    fn plan(gpu: &Gpu, s: &ConvShape, es: u64, bias_len: Option<usize>, limit: u64) -> Result<Self, GpuError> {
        let ConvShape { b, cin, h, w, cout, kh, kw, hout, wout } = *s;
        let (hw, npix, khw) = (h * w, hout * wout, kh * kw);
        let budget = window_budget(gpu, limit);
        let fits = |elems: usize| elems as u64 * es <= budget;
        // Output channels per window: their output plane and weight rows fit.
        let co_n = (1..=cout).rev().find(|&n| fits(n * npix) && fits(n * cin * khw)).unwrap_or(0);
        // Input channels per window (one empty window when there are none, so the bias is still written).
        let ci_n = if fits(cin * hw) { cin.max(1) } else { (budget / (hw as u64 * es).max(1)) as usize };
        if co_n == 0 || ci_n == 0 || bias_len.is_some_and(|n| !fits(n)) {
            return Err(GpuError::TooLarge {
                bytes: (npix.max(hw).max(cin * khw) as u64) * es,
                limit,
                what: "storage binding (one channel of a conv2d)",
            });
        }
        let max_dim = gpu.limits.max_compute_workgroups_per_dimension as usize;
        // Whole batch items per window when all channels fit at once.
        let b_n = if co_n == cout && ci_n == cin {
            (1..=b).rev().find(|&n| fits(n * cin * hw) && fits(n * cout * npix)).unwrap_or(1).min(max_dim)
        } else {
            1
        };
        Ok(Self { b_n, co_n, ci_n })
    }
}

/// One convolution, its output and checked sizes, for the dispatches that cover it.
struct Dispatches<'a> {
    gpu: &'a Gpu,
    conv: &'a Conv2dCall<'a>,
    y: &'a Tensor,
    s: ConvShape,
}

/// One dispatch's slice: `items` batch items from `b0`, output channels `co`, input channels `ci`.
struct Slice {
    b0: usize,
    items: usize,
    co: std::ops::Range<usize>,
    ci: std::ops::Range<usize>,
}

impl Dispatches<'_> {
    /// Binds the windows of one slice and dispatches it on `tiles_total` workgroups.
    fn dispatch(&self, kernel: &Kernel, slice: &Slice, tiles_n: u32, tiles_total: u32) -> Result<(), GpuError> {
        let Self { gpu, conv, y, s } = self;
        let Conv2dCall { x, weight, bias, opts, extras } = **conv;
        let ConvShape { cin, h, w, cout, kh, kw, hout, wout, .. } = *s;
        let (hw, npix, khw) = (h * w, hout * wout, kh * kw);
        let Slice { b0, items, .. } = *slice;
        let (co0, co_len) = (slice.co.start, slice.co.len());
        let (ci0, ci_len) = (slice.ci.start, slice.ci.len());
        let first = ci0 == 0;
        let last = ci0 + ci_len >= cin;
        let [gx, gy, _] = grid(tiles_total, gpu.limits.max_compute_workgroups_per_dimension);
        let (wx, off_x) = window(gpu, x, b0 * cin * hw + ci0 * hw, (b0 + items - 1) * cin * hw + (ci0 + ci_len) * hw);
        let out_range = (b0 * cout * npix + co0 * npix, (b0 + items - 1) * cout * npix + (co0 + co_len) * npix);
        let (wy, off_y) = window(gpu, y, out_range.0, out_range.1);
        let (ww, off_w) = window(gpu, weight, co0 * cin * khw, (co0 + co_len) * cin * khw);
        let has_bias = first && bias.is_some();
        // The residual goes in with the last input-channel split, after the activation.
        let has_res = last && extras.residual.is_some();
        let bias_bs = match bias {
            Some(t) if extras.bias_per_batch => t.dim(1),
            _ => 0,
        };
        // Without a bias or residual, bind the weight again (read-only) so the layout stays the same.
        let (wb, off_bias) = match bias {
            Some(t) if has_bias => {
                let (bb, off) = window(gpu, t, 0, t.numel());
                (bb, off + (b0 * bias_bs + extras.bias_offset + co0) as u32)
            }
            _ => (ww.clone(), 0),
        };
        let (wr, off_res) = match extras.residual {
            Some(r) if has_res => window(gpu, r, out_range.0, out_range.1),
            _ => (ww.clone(), 0),
        };
        let params = Conv2dParams {
            cin: word(ci_len),
            h: word(h),
            w: word(w),
            cout: word(co_len),
            hout: word(hout),
            wout: word(wout),
            kh: word(kh),
            kw: word(kw),
            stride_y: word(opts.stride.0),
            stride_x: word(opts.stride.1),
            pad_y: word(opts.padding.0),
            pad_x: word(opts.padding.1),
            dil_y: word(opts.dilation.0),
            dil_x: word(opts.dilation.1),
            w_cin: word(cin),
            ci_start: word(ci0),
            batch_x: word(cin * hw),
            batch_y: word(cout * npix),
            off_x,
            off_w,
            off_bias,
            off_y,
            has_bias: has_bias as u32,
            act: if last { opts.activation.code() } else { 0 },
            accumulate: !first as u32,
            tiles_n,
            tiles_total,
            bias_bs: word(bias_bs),
            has_res: has_res as u32,
            off_res,
        };
        gpu.dispatch(kernel, &params, &[wx, ww, wb, wy, wr], [gx, gy, items as u32])
    }
}

impl Conv2dCall<'_> {
    /// `pick` chooses the kernel once the shapes are checked (so a wrong shape is reported before any
    /// tensor-core self-test runs).
    fn launch(
        &self,
        gpu: &Gpu,
        pick: impl FnOnce(DType) -> Result<Route, GpuError>,
        limit: u64,
    ) -> Result<Tensor, GpuError> {
        let Conv2dCall { x, bias, .. } = *self;
        let s = ConvShape::check(self)?;
        let route = pick(x.dtype())?;
        let coop = route == Route::TensorCores;
        let ConvShape { b, cin, cout, hout, wout, .. } = s;
        let y = gpu.empty(&[b, cout, hout, wout], x.dtype())?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let npix = hout * wout;
        let Windows { b_n, co_n, ci_n } =
            Windows::plan(gpu, &s, x.dtype().size() as u64, bias.map(Tensor::numel), limit)?;
        let (kernel, block_m, block_n) = if coop {
            let sg = gpu.info.subgroup_size.0;
            let k = Kernel::new(ShaderFamily::MatmulCoop, Variant::CoopF16, "conv2d").constant("SG", sg as f64);
            (k, COOP_BLOCK, COOP_BLOCK)
        } else {
            let tile = Tile::for_shape(co_n, npix);
            (tile.constants(Kernel::new(ShaderFamily::Conv2d, x.dtype().variant(), "conv2d")), tile.bm, tile.bn)
        };
        let call = Dispatches { gpu, conv: self, y: &y, s };
        for b0 in (0..b).step_by(b_n) {
            let items = b_n.min(b - b0);
            for co0 in (0..cout).step_by(co_n) {
                let co = co0..co0 + co_n.min(cout - co0);
                let tiles_n = (npix as u32).div_ceil(block_n);
                let tiles_total = (co.len() as u32).div_ceil(block_m) * tiles_n;
                for ci0 in (0..cin.max(1)).step_by(ci_n) {
                    let ci = ci0..ci0 + ci_n.min(cin - ci0);
                    call.dispatch(&kernel, &Slice { b0, items, co: co.clone(), ci }, tiles_n, tiles_total)?;
                }
            }
        }
        tensor_cores::finish(gpu, route, y)
    }
}
