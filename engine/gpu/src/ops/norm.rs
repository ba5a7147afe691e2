//! GroupNorm (PyTorch `nn.GroupNorm`, with diffusers' SiLU optionally fused
//! after it) and LayerNorm over the last axis (`nn.LayerNorm`), launching
//! `shaders/norm.wgsl`. Both use the biased variance.

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, whole, word};
use super::super::shaders::ShaderFamily;
use super::super::tensor::{DType, Tensor};

crate::kernel_params! {
    /// `Params` of `shaders/norm.wgsl`, shared by GroupNorm's passes and
    /// LayerNorm (which uses `n` as its row count, `group_len` as the row
    /// length, and `eps`).
    pub struct NormParams {
        /// Elements (or groups, rows) the pass covers.
        pub n: u32,
        pub group_len: u32,
        pub chunk_len: u32,
        pub nchunks: u32,
        pub spatial: u32,
        pub channels: u32,
        pub channels_per_group: u32,
        pub silu: u32,
        pub eps: f32,
        /// 1: `gn_apply` merges the chunk statistics itself (no finalize pass).
        pub merge: u32,
    }
}

/// Workgroup size of the multi-pass GroupNorm kernels (`WG` in the shader).
const WG: usize = 256;

/// Workgroup size for one workgroup normalising `len` elements: about 8
/// elements per invocation, a power of two from 32 to 256. Short rows (a
/// transformer's 320 channels) then leave few invocations idle at the
/// reduction's barriers (on lavapipe a 256-wide reduction of 32 values
/// cost 1.7 ms per LayerNorm call).
fn single_wg(len: usize) -> usize {
    len.div_ceil(8).next_power_of_two().clamp(32, WG)
}
/// Elements one `gn_stats` workgroup folds: 16 per invocation, so each
/// invocation's Welford run is short and the groups spread over many workgroups.
/// A group of at most one chunk is normalised in a single pass (`gn_single`).
const CHUNK: usize = WG * 16;
/// Up to this many chunks per group, `gn_apply` merges the partials itself
/// (a few merges per element) instead of a `gn_finalize` pass: two kernel
/// calls instead of three for every UNet GroupNorm at 512x512.
const MERGE_IN_APPLY: usize = 16;

fn check_affine(x: &Tensor, gamma: &Tensor, beta: &Tensor, c: usize, op: &str) -> Result<(), GpuError> {
    for (name, t) in [("gamma", gamma), ("beta", beta)] {
        if t.shape() != [c] {
            return Err(GpuError::Shape(format!("{op}: {name} has shape {:?}, expected [{c}]", t.shape())));
        }
        if t.dtype() != x.dtype() {
            return Err(GpuError::Shape(format!("{op}: {name} is {:?} but x is {:?}", t.dtype(), x.dtype())));
        }
    }
    Ok(())
}

/// `nn.GroupNorm(groups, C, eps)` on `x` `[B, C, *spatial]` with per-channel
/// `gamma` and `beta` `[C]`, followed by SiLU when `silu`. Mean and variance
/// are taken over each group's `C / groups` channels and all spatial positions.
pub fn group_norm(
    gpu: &Gpu,
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    silu: bool,
) -> Result<Tensor, GpuError> {
    if x.rank() < 2 {
        return Err(GpuError::Shape(format!("group_norm: x must be [B, C, ...], got {:?}", x.shape())));
    }
    let (b, c) = (x.dim(0), x.dim(1));
    if groups == 0 || c % groups != 0 {
        return Err(GpuError::Shape(format!("group_norm: {c} channels do not split into {groups} groups")));
    }
    check_affine(x, gamma, beta, c, "group_norm")?;
    let y = gpu.empty(x.shape(), x.dtype())?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let spatial: usize = x.shape()[2..].iter().product();
    let cpg = c / groups;
    let group_len = cpg * spatial;
    let bg = b * groups;
    let nchunks = group_len.div_ceil(CHUNK);
    let limit = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if bg > limit || nchunks > limit {
        return Err(GpuError::Shape(format!(
            "group_norm: {bg} (batch, group) pairs of {group_len} elements exceed the dispatch limit"
        )));
    }
    // `n` differs per pass.
    let merge = nchunks <= MERGE_IN_APPLY;
    let params = |n: usize| NormParams {
        n: word(n),
        group_len: word(group_len),
        chunk_len: word(CHUNK),
        nchunks: word(nchunks),
        spatial: word(spatial),
        channels: word(c),
        channels_per_group: word(cpg),
        silu: silu as u32,
        eps,
        merge: merge as u32,
    };
    let variant = x.dtype().variant();
    let kernel = |entry| Kernel::new(ShaderFamily::Norm, variant, entry).constant("WG", WG as f64);
    let max = gpu.limits.max_compute_workgroups_per_dimension;
    if nchunks == 1 {
        let single = Kernel::new(ShaderFamily::Norm, variant, "gn_single").constant("WG", single_wg(group_len) as f64);
        gpu.dispatch(&single, &params(bg), &[whole(x), whole(gamma), whole(beta), whole(&y)], grid(bg as u32, max))?;
        return Ok(y);
    }
    // Per (group, chunk): count, mean, M2, pad. Per group: shift, mean - shift, rstd, pad.
    let partial = gpu.empty(&[bg * nchunks * 4], DType::F32)?;
    let stats = gpu.empty(&[bg * 4], DType::F32)?;
    gpu.dispatch(&kernel("gn_stats"), &params(0), &[whole(x), whole(&partial)], [nchunks as u32, bg as u32, 1])?;
    if !merge {
        gpu.dispatch(
            &kernel("gn_finalize"),
            &params(bg),
            &[whole(x), whole(&partial), whole(&stats)],
            grid(bg as u32, max),
        )?;
    }
    let n = x.numel();
    gpu.dispatch(
        &kernel("gn_apply"),
        &params(n),
        &[whole(x), whole(&partial), whole(&stats), whole(gamma), whole(beta), whole(&y)],
        grid(n.div_ceil(WG) as u32, max),
    )?;
    Ok(y)
}

/// `nn.LayerNorm(C, eps)` over the last axis of `x` `[.., C]`, with `gamma`
/// and `beta` `[C]`.
pub fn layer_norm(gpu: &Gpu, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor, GpuError> {
    if x.rank() < 1 {
        return Err(GpuError::Shape("layer_norm: x must have at least one axis".into()));
    }
    let c = x.dim(-1);
    check_affine(x, gamma, beta, c, "layer_norm")?;
    let y = gpu.empty(x.shape(), x.dtype())?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let rows = x.numel() / c;
    let params = NormParams { n: word(rows), group_len: word(c), eps, ..Default::default() };
    gpu.dispatch(
        &Kernel::new(ShaderFamily::Norm, x.dtype().variant(), "layer_norm").constant("WG", single_wg(c) as f64),
        &params,
        &[whole(x), whole(gamma), whole(beta), whole(&y)],
        grid(rows as u32, gpu.limits.max_compute_workgroups_per_dimension),
    )?;
    Ok(y)
}
