//! Broadcasting binary ops, launching `shaders/binary.wgsl`: `add`, `sub`,
//! `mul` and `add_scaled` (`torch.add(a, b, alpha=alpha)`) with NumPy /
//! PyTorch broadcasting, `prelu_broadcast` and its channel-wise form `prelu`
//! (`nn.PReLU`, SRVGGNetCompact's activation), and diffusers' `GEGLU` activation
//! (`h, gate = x.chunk(2, -1); h * F.gelu(gate)`), which is a product of two
//! strided views of one tensor.
//!
//! Operands are read through broadcast strides (0 along broadcast dims); the
//! planner in `layout` merges dims and windows big tensors.

use super::super::device::{Gpu, GpuError};
use super::super::launch::Kernel;
use super::super::shaders::ShaderFamily;
use super::super::tensor::Tensor;
use super::layout::{Strided, contiguous_strides, plan};

/// The broadcast shape of `a` and `b` (NumPy rules: align trailing dims;
/// each pair is equal or one of them is 1), or `None`.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let dim = |s: &[usize], d: usize| if d + s.len() >= r { s[d + s.len() - r] } else { 1 };
    (0..r)
        .map(|d| match (dim(a, d), dim(b, d)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

/// Strides that read a contiguous tensor of `shape` as if broadcast to `out`.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len()).map(|d| if d < lead || (shape[d - lead] == 1 && out[d] != 1) { 0 } else { own[d - lead] }).collect()
}

/// Records `y = op(a, b)` elementwise over `shape`, with `y` contiguous.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    alpha: f32,
    shape: &[usize],
    a: Strided<'_>,
    b: Strided<'_>,
) -> Result<Tensor, GpuError> {
    let y = gpu.empty(shape, a.tensor.dtype())?;
    let kernel = Kernel::new(ShaderFamily::Binary, a.tensor.dtype().variant(), entry);
    let (ta, tb) = (a.tensor, b.tensor);
    let out = Strided { tensor: &y, offset: 0, strides: contiguous_strides(shape) };
    for p in plan(gpu, shape, &[a, b, out])? {
        let params = p.params(p.offsets[2], alpha);
        gpu.dispatch(&kernel, &params, &[p.binding(0, ta), p.binding(1, tb), p.binding(2, &y)], p.groups(gpu))?;
    }
    Ok(y)
}

/// Checks dtypes, broadcasts and launches `entry`.
fn broadcasting(
    gpu: &Gpu,
    name: &str,
    entry: &'static str,
    alpha: f32,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor, GpuError> {
    if a.dtype() != b.dtype() {
        return Err(GpuError::Shape(format!("{name}: dtypes {:?} and {:?} differ", a.dtype(), b.dtype())));
    }
    let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(|| {
        GpuError::Shape(format!("{name}: shapes {:?} and {:?} do not broadcast", a.shape(), b.shape()))
    })?;
    let sa = Strided { tensor: a, offset: 0, strides: broadcast_strides(a.shape(), &shape) };
    let sb = Strided { tensor: b, offset: 0, strides: broadcast_strides(b.shape(), &shape) };
    launch(gpu, entry, alpha, &shape, sa, sb)
}

/// `a + b` with broadcasting (residual adds, `[B, C, H, W] + [B, C, 1, 1]`
/// time-embedding adds, biases).
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
    broadcasting(gpu, "add", "add", 1.0, a, b)
}

/// `a - b` with broadcasting (computed as `a + (-1) * b`, which is exact).
pub fn sub(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
    broadcasting(gpu, "sub", "add", -1.0, a, b)
}

/// `a * b` with broadcasting.
pub fn mul(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
    broadcasting(gpu, "mul", "mul", 1.0, a, b)
}

/// `a + alpha * b` with broadcasting, in f32 (sampler steps, CFG's
/// `uncond + s * (cond - uncond)` after a `sub`).
pub fn add_scaled(gpu: &Gpu, a: &Tensor, b: &Tensor, alpha: f32) -> Result<Tensor, GpuError> {
    broadcasting(gpu, "add_scaled", "add", alpha, a, b)
}

/// PReLU with a broadcast slope: `a` where `a >= 0`, else `a * b`.
pub fn prelu_broadcast(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
    broadcasting(gpu, "prelu", "prelu", 1.0, a, b)
}

/// `nn.PReLU(num_parameters=C)` on `x [B, C, ...]`: one slope per channel
/// (`weight [C]`), so `y = x` where `x >= 0`, else `weight[c] * x`.
pub fn prelu(gpu: &Gpu, x: &Tensor, weight: &Tensor) -> Result<Tensor, GpuError> {
    let c = if x.rank() >= 2 { x.shape()[1] } else { 0 };
    if weight.shape() != [c] || c == 0 {
        return Err(GpuError::Shape(format!(
            "prelu: x {:?} needs a weight of [C] for its channel dim 1; got {:?}",
            x.shape(),
            weight.shape()
        )));
    }
    // [C] read as [1, C, 1, ...] against x's shape.
    let mut shape = vec![1; x.rank()];
    shape[1] = c;
    let w = weight.reshape(&shape)?;
    prelu_broadcast(gpu, x, &w)
}

/// diffusers GEGLU's activation: `x [.., 2N] -> [.., N]`, `h * gelu(gate)`
/// where `h, gate = x.chunk(2, -1)` and GELU is the exact erf form.
pub fn geglu(gpu: &Gpu, x: &Tensor) -> Result<Tensor, GpuError> {
    let last = x.shape().last().copied().unwrap_or(0);
    if x.rank() == 0 || last % 2 != 0 {
        return Err(GpuError::Shape(format!("geglu: the last dim of {:?} must be even (2N)", x.shape())));
    }
    let n = last / 2;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank checked") = n;
    // [.., 2N] read as two [.., N] views: h at column 0, gate at column N.
    let strides = contiguous_strides(x.shape());
    let h = Strided { tensor: x, offset: 0, strides: strides.clone() };
    let gate = Strided { tensor: x, offset: n, strides };
    launch(gpu, "geglu", 1.0, &shape, h, gate)
}
