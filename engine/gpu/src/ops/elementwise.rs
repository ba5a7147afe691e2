//! Unary activations (SiLU, GELU, quick-GELU, leaky ReLU, scale), launching
//! `shaders/elementwise.wgsl`. Tensors larger than one storage binding are
//! processed in windows, so any size the adapter can allocate works.

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, word};
use super::super::shaders::ShaderFamily;
use super::super::tensor::Tensor;

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Silu,
    Gelu,
    QuickGelu,
    LeakyRelu(f32),
    Scale(f32),
}

impl Unary {
    fn entry(self) -> (&'static str, f32) {
        match self {
            Unary::Silu => ("silu", 0.0),
            Unary::Gelu => ("gelu", 0.0),
            Unary::QuickGelu => ("quick_gelu", 0.0),
            Unary::LeakyRelu(a) => ("leaky_relu", a),
            Unary::Scale(a) => ("scale", a),
        }
    }
}

crate::kernel_params! {
    /// `Params` of `shaders/elementwise.wgsl`: the element count and the
    /// activation's parameter (leaky ReLU's slope, the scale).
    pub struct ElementwiseParams {
        pub n: u32,
        pub alpha: f32,
    }
}

const WG: u32 = 256;

/// Applies `op` to every element; the output has `x`'s shape and dtype.
pub fn unary(gpu: &Gpu, x: &Tensor, op: Unary) -> Result<Tensor, GpuError> {
    let y = gpu.empty(x.shape(), x.dtype())?;
    let (entry, alpha) = op.entry();
    let kernel = Kernel::new(ShaderFamily::Elementwise, x.dtype().variant(), entry);
    for (start, len) in windows(gpu, x.numel(), x.dtype().size()) {
        let groups = grid((len as u32).div_ceil(WG), gpu.limits.max_compute_workgroups_per_dimension);
        let offset = (start * x.dtype().size()) as u64;
        let size = std::num::NonZeroU64::new(((len * x.dtype().size()) as u64).div_ceil(4) * 4);
        let bx = wgpu::BufferBinding { buffer: x.buffer(), offset, size };
        let by = wgpu::BufferBinding { buffer: y.buffer(), offset, size };
        gpu.dispatch(&kernel, &ElementwiseParams { n: word(len), alpha }, &[bx, by], groups)?;
    }
    Ok(y)
}

/// Splits `n` elements into windows that each fit one storage binding and
/// start at an offset the adapter can bind.
pub fn windows(gpu: &Gpu, n: usize, elem: usize) -> Vec<(usize, usize)> {
    let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as usize;
    let max_bytes = gpu.limits.max_storage_buffer_binding_size as usize;
    let per = (max_bytes / align * align / elem).max(1);
    // Also bounded by what one dispatch can address.
    let per = per.min(gpu.limits.max_compute_workgroups_per_dimension as usize * 65535 * WG as usize);
    (0..n.max(1)).step_by(per).map(|s| (s, per.min(n - s))).filter(|&(_, l)| l > 0).collect()
}
