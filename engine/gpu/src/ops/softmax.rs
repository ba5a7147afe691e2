//! Softmax over the last axis (`torch.softmax(x, dim=-1)`), launching
//! `shaders/softmax.wgsl`: one workgroup per row, max-subtracted.

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, whole, word};
use super::super::shaders::ShaderFamily;
use super::super::tensor::Tensor;

crate::kernel_params! {
    /// `Params` of `shaders/softmax.wgsl`.
    pub struct SoftmaxParams {
        pub rows: u32,
        pub n: u32,
    }
}

/// `softmax(x)` along the last axis of `x` `[.., N]`; same shape and dtype.
pub fn softmax(gpu: &Gpu, x: &Tensor) -> Result<Tensor, GpuError> {
    if x.rank() < 1 {
        return Err(GpuError::Shape("softmax: x must have at least one axis".into()));
    }
    let y = gpu.empty(x.shape(), x.dtype())?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let n = x.dim(-1);
    let rows = x.numel() / n;
    gpu.dispatch(
        &Kernel::new(ShaderFamily::Softmax, x.dtype().variant(), "softmax"),
        &SoftmaxParams { rows: word(rows), n: word(n) },
        &[whole(x), whole(&y)],
        grid(rows as u32, gpu.limits.max_compute_workgroups_per_dimension),
    )?;
    Ok(y)
}
