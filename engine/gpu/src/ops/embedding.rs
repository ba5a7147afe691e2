//! Sinusoidal timestep embedding, launching `shaders/embedding.wgsl`: as
//! diffusers' `get_timestep_embedding` (used by the UNet's `Timesteps`
//! module; SD 1.5: dim 320, `flip_sin_to_cos = true`, shift 0).

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, whole, word};
use super::super::shaders::ShaderFamily;
use super::super::tensor::{DType, Tensor};

crate::kernel_params! {
    /// `Params` of `shaders/embedding.wgsl`.
    pub struct EmbeddingParams {
        /// Elements of the output, `N * dim`.
        pub n: u32,
        pub dim: u32,
        pub half_dim: u32,
        pub flip: u32,
        pub neg_log_period: f32,
        pub denom: f32,
    }
}

const WG: u32 = 256;

/// `[N, dim]` embedding stored as `dtype`: with `half = dim / 2` and
/// `freq_k = exp(-ln(max_period) * k / (half - downscale_freq_shift))`, row
/// `n` is `[sin(t_n * freq), cos(t_n * freq)]`, or `[cos, sin]` when
/// `flip_sin_to_cos`, plus a zero column when `dim` is odd.
pub fn timestep_embedding_as(
    gpu: &Gpu,
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    max_period: f32,
    dtype: DType,
) -> Result<Tensor, GpuError> {
    let half = dim / 2;
    let denom = half as f32 - downscale_freq_shift;
    let valid = dim >= 1
        && max_period > 0.0
        && max_period.is_finite()
        && denom.is_finite()
        && (half == 0 || denom != 0.0)
        && timesteps.len().checked_mul(dim).is_some_and(|n| n <= u32::MAX as usize);
    if !valid {
        return Err(GpuError::Shape(format!(
            "timestep_embedding: dim {dim}, downscale_freq_shift {downscale_freq_shift}, max_period {max_period}: \
             needs dim >= 1, a finite max_period > 0, dim / 2 != downscale_freq_shift and N * dim < 2^32"
        )));
    }
    let n = timesteps.len();
    let y = gpu.empty(&[n, dim], dtype)?;
    if n == 0 {
        return Ok(y);
    }
    let t = gpu.upload(timesteps, &[n], DType::F32)?;
    let total = n * dim;
    let params = EmbeddingParams {
        n: word(total),
        dim: word(dim),
        half_dim: word(half),
        flip: flip_sin_to_cos as u32,
        // diffusers multiplies by the Python float -math.log(max_period), which PyTorch rounds to f32.
        neg_log_period: -(max_period as f64).ln() as f32,
        denom,
    };
    let groups = grid((total as u32).div_ceil(WG), gpu.limits.max_compute_workgroups_per_dimension);
    let kernel = Kernel::new(ShaderFamily::Embedding, dtype.variant(), "timestep_embedding");
    gpu.dispatch(&kernel, &params, &[whole(&t), whole(&y)], groups)?;
    Ok(y)
}
