//! Casts between f32 and f16 storage (`shaders/cast.wgsl`).

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, whole, word};
use super::super::shaders::{ShaderFamily, Variant};
use super::super::tensor::{DType, Tensor};

crate::kernel_params! {
    /// `Params` of `shaders/cast.wgsl`.
    pub struct CastParams {
        pub n: u32,
    }
}

const WG: u32 = 256;

/// `x` stored as `dtype` (a cheap clone when it already is).
pub fn cast(gpu: &Gpu, x: &Tensor, dtype: DType) -> Result<Tensor, GpuError> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let y = gpu.empty(x.shape(), dtype)?;
    let entry = match dtype {
        DType::F16 => "f32_to_f16",
        DType::F32 => "f16_to_f32",
    };
    let n = x.numel();
    let groups = grid((n as u32).div_ceil(WG), gpu.limits.max_compute_workgroups_per_dimension);
    gpu.dispatch(
        &Kernel::new(ShaderFamily::Cast, Variant::F16, entry),
        &CastParams { n: word(n) },
        &[whole(x), whole(&y)],
        groups,
    )?;
    Ok(y)
}
