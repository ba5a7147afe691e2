//! Kernel benchmarks: wall-clock time and throughput of matmul, conv2d and attention at
//! a square 4096³ product and at Stable Diffusion 1.5 UNet shapes for a
//! 512x512 image with classifier-free guidance (batch 2, so 2 x 64 x 64 =
//! 8192 tokens at the top level). `BenchSize::Small` runs the same list
//! scaled down, to smoke-test it on a software adapter.

use std::time::Instant;

use serde::Serialize;

use super::device::{Gpu, GpuError};
use super::ops::attention::{AttentionOptions, attention, coop_attention_available};
use super::ops::conv2d::{Conv2dCall, Conv2dOptions, ConvExtras, coop_conv_available};
use super::ops::matmul::{MatmulKernel, MatmulOptions, coop_available, matmul_with_kernel};
use super::tensor::{DType, Tensor};
use super::tensor_cores::CoopKernel;
use super::testing::random;

/// Which sizes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchSize {
    /// The real shapes (seconds to minutes on a GPU; far too slow on a CPU adapter).
    Full,
    /// Every case at a small fraction of its size, one repetition.
    Small,
}

/// One timed kernel configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Op, dtype and kernel, e.g. "matmul f16 coop".
    pub name: String,
    pub shape: String,
    /// Milliseconds per call, averaged over the timed repetitions.
    pub ms: f64,
    /// Useful multiply-adds x 2 per second, in 10^12.
    pub tflops: f64,
}

enum Op {
    /// `[batch.., m, k] x [n, k]ᵀ` when `linear`, else `[m, k] x [k, n]`.
    Matmul { m: usize, k: usize, n: usize, linear: bool },
    /// 3x3 convolution, stride 1, padding 1.
    Conv3x3 { b: usize, cin: usize, cout: usize, hw: usize },
    /// Multi-head attention of `l` queries over `lk` keys (k = v).
    Attention { b: usize, l: usize, lk: usize, heads: usize, d: usize },
}

struct Case {
    label: &'static str,
    op: Op,
}

fn cases(size: BenchSize) -> Vec<Case> {
    // Small divides every size by 16 (8 for channels) so lavapipe finishes in a second.
    let (d, c) = if size == BenchSize::Full { (1, 1) } else { (16, 8) };
    vec![
        Case { label: "matmul", op: Op::Matmul { m: 4096 / d, k: 4096 / d, n: 4096 / d, linear: false } },
        // Self-attention q/k/v/out projections at the 64x64 level.
        Case { label: "linear attn-proj", op: Op::Matmul { m: 8192 / d, k: 320 / c, n: 320 / c, linear: true } },
        // GEGLU feed-forward: 320 -> 2 x 1280, then 1280 -> 320.
        Case { label: "linear ff-geglu", op: Op::Matmul { m: 8192 / d, k: 320 / c, n: 2560 / c, linear: true } },
        Case { label: "linear ff-out", op: Op::Matmul { m: 8192 / d, k: 1280 / c, n: 320 / c, linear: true } },
        // ResNet block convolutions at each UNet level.
        Case { label: "conv2d 3x3", op: Op::Conv3x3 { b: 2, cin: 320 / c, cout: 320 / c, hw: 64 / c } },
        Case { label: "conv2d 3x3", op: Op::Conv3x3 { b: 2, cin: 640 / c, cout: 640 / c, hw: 32 / c } },
        Case { label: "conv2d 3x3", op: Op::Conv3x3 { b: 2, cin: 1280 / c, cout: 1280 / c, hw: 16 / c } },
        // Self- and cross-attention (77 tokens) at the 64x64 level, self-attention at 32x32.
        Case { label: "attention self", op: Op::Attention { b: 2, l: 4096 / d, lk: 4096 / d, heads: 8, d: 40 } },
        Case { label: "attention cross", op: Op::Attention { b: 2, l: 4096 / d, lk: 77, heads: 8, d: 40 } },
        Case { label: "attention self", op: Op::Attention { b: 2, l: 1024 / d, lk: 1024 / d, heads: 8, d: 80 } },
    ]
}

impl Op {
    fn flops(&self) -> f64 {
        match *self {
            Op::Matmul { m, k, n, .. } => 2.0 * (m * k * n) as f64,
            Op::Conv3x3 { b, cin, cout, hw } => 2.0 * (b * cout * hw * hw * cin * 9) as f64,
            // Q K^T and P V; the softmax and the cooperative kernel's second Q K^T are not counted.
            Op::Attention { b, l, lk, heads, d } => 4.0 * (b * heads * l * lk * d) as f64,
        }
    }

    fn shape(&self) -> String {
        match *self {
            Op::Matmul { m, k, n, linear: false } => format!("[{m},{k}]x[{k},{n}]"),
            Op::Matmul { m, k, n, linear: true } => format!("[{m},{k}]x[{n},{k}]T"),
            Op::Conv3x3 { b, cin, cout, hw } => format!("[{b},{cin},{hw},{hw}] -> {cout} ch, 3x3 s1 p1"),
            Op::Attention { b, l, lk, heads, d } => format!("[{b},{l},{heads}x{d}] over {lk} keys"),
        }
    }

    /// Uploaded operands: (a, b) for matmul, (x, weight) for conv.
    fn inputs(&self, gpu: &Gpu, dtype: DType) -> Result<(Tensor, Tensor), GpuError> {
        let (sa, sb) = match *self {
            Op::Matmul { m, k, n, linear } => (vec![m, k], if linear { vec![n, k] } else { vec![k, n] }),
            Op::Conv3x3 { b, cin, cout, hw } => (vec![b, cin, hw, hw], vec![cout, cin, 3, 3]),
            Op::Attention { b, l, lk, heads, d } => (vec![b, l, heads * d], vec![b, lk, heads * d]),
        };
        let upload = |shape: &[usize], seed| {
            let n = shape.iter().product();
            gpu.upload(&random(n, seed, -1.0, 1.0), shape, dtype)
        };
        Ok((upload(&sa, 1)?, upload(&sb, 2)?))
    }

    fn run(&self, gpu: &Gpu, a: &Tensor, b: &Tensor, kernel: MatmulKernel) -> Result<Tensor, GpuError> {
        match *self {
            Op::Matmul { linear, .. } => {
                matmul_with_kernel(gpu, a, b, &MatmulOptions { transpose_b: linear, ..Default::default() }, kernel)
            }
            Op::Conv3x3 { .. } => {
                let opts = Conv2dOptions { padding: (1, 1), ..Default::default() };
                Conv2dCall { x: a, weight: b, bias: None, opts: &opts, extras: ConvExtras::default() }.run(gpu, kernel)
            }
            Op::Attention { heads, .. } => {
                attention(gpu, a, b, b, AttentionOptions { kernel, ..AttentionOptions::new(heads) })
            }
        }
    }
}

/// Mean seconds per call: one synced warm-up (pipeline compilation), one
/// timed call to size the run, then enough calls for about `target` seconds.
fn time(gpu: &Gpu, target: f64, mut call: impl FnMut() -> Result<Tensor, GpuError>) -> Result<f64, GpuError> {
    drop(call()?);
    gpu.sync()?;
    let t0 = Instant::now();
    drop(call()?);
    gpu.sync()?;
    let once = t0.elapsed().as_secs_f64();
    let reps = if target <= once { 1 } else { ((target / once.max(1e-6)).ceil() as usize).clamp(1, 200) };
    if reps == 1 {
        return Ok(once);
    }
    let t0 = Instant::now();
    for _ in 0..reps {
        // Dropping each output returns its buffer to the pool for the next call.
        drop(call()?);
    }
    gpu.sync()?;
    Ok(t0.elapsed().as_secs_f64() / reps as f64)
}

/// Times every case on every path the adapter has: f16 on cooperative
/// matrices (those that passed their self-test), f16 and f32 on the portable kernels.
pub fn bench_kernels(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchResult>, GpuError> {
    let target = if size == BenchSize::Full { 0.5 } else { 0.0 };
    let mut paths = Vec::new();
    // A tensor-core kernel that failed its self-test is not benchmarked: `Coop` refuses it.
    let passed = |k| gpu.tensor_core_passed(k);
    if coop_available(gpu, DType::F16) && passed(CoopKernel::Matmul)? {
        paths.push((DType::F16, MatmulKernel::Coop, "coop"));
    }
    if gpu.features().shader_f16 {
        paths.push((DType::F16, MatmulKernel::Portable, "portable"));
    }
    paths.push((DType::F32, MatmulKernel::Portable, "portable"));

    let mut out = Vec::new();
    for case in cases(size) {
        for &(dtype, kernel, kname) in &paths {
            let coop_ok = match case.op {
                Op::Matmul { .. } => true,
                Op::Conv3x3 { .. } => coop_conv_available(gpu, dtype) && passed(CoopKernel::Conv2d)?,
                Op::Attention { d, .. } => coop_attention_available(gpu, dtype, d) && passed(CoopKernel::Attention)?,
            };
            if kernel == MatmulKernel::Coop && !coop_ok {
                continue;
            }
            let (a, b) = case.op.inputs(gpu, dtype)?;
            let secs = time(gpu, target, || case.op.run(gpu, &a, &b, kernel))?;
            let dname = if dtype == DType::F16 { "f16" } else { "f32" };
            out.push(BenchResult {
                name: format!("{} {dname} {kname}", case.label),
                shape: case.op.shape(),
                ms: secs * 1e3,
                tflops: case.op.flops() / secs / 1e12,
            });
        }
    }
    Ok(out)
}
