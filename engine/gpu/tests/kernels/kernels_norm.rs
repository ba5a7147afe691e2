//! GroupNorm (with and without fused SiLU), LayerNorm and softmax kernels
//! against the f64 references, in f32 and f16, at sizes that are not
//! multiples of the workgroup, with large offsets and large groups; bad
//! shapes give errors.

use gpu::ops::norm::{group_norm, layer_norm};
use gpu::ops::softmax::softmax;
use gpu::reference::norm as rn;
use gpu::reference::softmax as rs;
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu, GpuError};

const EPS: f32 = 1e-5;

/// What the kernel sees: the data as stored in `dtype`.
fn stored(data: &[f32], dtype: DType) -> Vec<f32> {
    if dtype == DType::F16 { round_f16(data) } else { data.to_vec() }
}

fn has_f16(gpu: &Gpu) -> bool {
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
    }
    gpu.features().shader_f16
}

/// Runs group norm on `x` in `[lo, hi)` and checks it against the reference.
#[allow(clippy::too_many_arguments)]
fn check_group_norm(
    gpu: &Gpu,
    shape: &[usize],
    groups: usize,
    silu: bool,
    dtype: DType,
    (lo, hi): (f32, f32),
    tol: Tolerance,
    seed: u64,
) {
    let c = shape[1];
    let n: usize = shape.iter().product();
    let x = stored(&random(n, seed, lo, hi), dtype);
    let gamma = stored(&random(c, seed + 1, 0.5, 1.5), dtype);
    let beta = stored(&random(c, seed + 2, -0.5, 0.5), dtype);
    let (tx, tg, tb) = (
        gpu.upload(&x, shape, dtype).unwrap(),
        gpu.upload(&gamma, &[c], dtype).unwrap(),
        gpu.upload(&beta, &[c], dtype).unwrap(),
    );
    let y = group_norm(gpu, &tx, groups, &tg, &tb, EPS, silu).unwrap();
    assert_eq!(y.shape(), shape);
    let got = gpu.download(&y).unwrap();
    let want = rn::group_norm(&x, shape, groups, &gamma, &beta, EPS as f64, silu);
    tol.check(&got, &want)
        .unwrap_or_else(|e| panic!("group_norm {shape:?} groups={groups} silu={silu} {dtype:?}: {e}"));
}

/// Shapes with odd spatial sizes, batch 2, and 1, 4 and 32 groups.
const GN_CASES: [(&[usize], usize); 5] =
    [(&[2, 32, 7, 9], 1), (&[2, 32, 7, 9], 4), (&[2, 64, 7, 9], 32), (&[1, 12, 13], 4), (&[3, 8], 2)];

#[test]
fn group_norm_matches_reference_with_odd_spatial_sizes_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    for (k, &(shape, groups)) in GN_CASES.iter().enumerate() {
        for silu in [false, true] {
            check_group_norm(gpu, shape, groups, silu, DType::F32, (-2.0, 3.0), Tolerance::balanced(), k as u64);
        }
    }
}

#[test]
fn group_norm_matches_reference_with_odd_spatial_sizes_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !has_f16(gpu) {
        return;
    }
    for (k, &(shape, groups)) in GN_CASES.iter().enumerate() {
        for silu in [false, true] {
            check_group_norm(gpu, shape, groups, silu, DType::F16, (-2.0, 3.0), Tolerance::f16(), 10 + k as u64);
        }
    }
}

#[test]
fn group_norm_keeps_precision_over_large_groups() {
    let Some(gpu) = shared_gpu() else { return };
    // SD-like: 2 channels x 97 x 101 per group, spread over several stats chunks.
    check_group_norm(gpu, &[1, 64, 97, 101], 32, true, DType::F32, (-1.0, 2.0), Tolerance::balanced(), 21);
    // VAE-like: 4 channels x 256 x 256 = 262,144 elements per group, 64 chunks.
    check_group_norm(gpu, &[1, 8, 256, 256], 2, false, DType::F32, (-1.0, 2.0), Tolerance::balanced(), 22);
}

#[test]
fn group_norm_is_stable_for_inputs_with_a_large_mean() {
    let Some(gpu) = shared_gpu() else { return };
    // 100 +- 1: E[x^2] - E[x]^2 in f32 would lose ~1e-3 of a variance of 0.33;
    // the kernel must stay within the plain f32 bound.
    check_group_norm(gpu, &[2, 32, 7, 9], 4, false, DType::F32, (99.0, 101.0), Tolerance::balanced(), 31);
    check_group_norm(gpu, &[1, 8, 256, 256], 2, false, DType::F32, (99.0, 101.0), Tolerance::balanced(), 32);
    if has_f16(gpu) {
        check_group_norm(gpu, &[2, 32, 7, 9], 4, true, DType::F16, (99.0, 101.0), Tolerance::f16(), 33);
    }
}

#[test]
fn group_norm_rejects_bad_shapes() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.zeros(&[2, 6, 3, 3], DType::F32).unwrap();
    let g6 = gpu.zeros(&[6], DType::F32).unwrap();
    let g5 = gpu.zeros(&[5], DType::F32).unwrap();
    let shape_err = |r: Result<_, GpuError>| matches!(r, Err(GpuError::Shape(_)));
    assert!(shape_err(group_norm(gpu, &x, 4, &g6, &g6, EPS, false)), "6 channels in 4 groups");
    assert!(shape_err(group_norm(gpu, &x, 0, &g6, &g6, EPS, false)), "zero groups");
    assert!(shape_err(group_norm(gpu, &x, 3, &g5, &g6, EPS, false)), "gamma of the wrong length");
    assert!(shape_err(group_norm(gpu, &x, 3, &g6, &g5, EPS, false)), "beta of the wrong length");
    let flat = gpu.zeros(&[6], DType::F32).unwrap();
    assert!(shape_err(group_norm(gpu, &flat, 3, &g6, &g6, EPS, false)), "rank 1");
    if gpu.features().shader_f16 {
        let h = gpu.zeros(&[6], DType::F16).unwrap();
        assert!(shape_err(group_norm(gpu, &x, 3, &h, &g6, EPS, false)), "f16 gamma with f32 x");
    }
}

fn check_layer_norm(gpu: &Gpu, shape: &[usize], dtype: DType, (lo, hi): (f32, f32), tol: Tolerance, seed: u64) {
    let c = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let x = stored(&random(n, seed, lo, hi), dtype);
    let gamma = stored(&random(c, seed + 1, 0.5, 1.5), dtype);
    let beta = stored(&random(c, seed + 2, -0.5, 0.5), dtype);
    let y = layer_norm(
        gpu,
        &gpu.upload(&x, shape, dtype).unwrap(),
        &gpu.upload(&gamma, &[c], dtype).unwrap(),
        &gpu.upload(&beta, &[c], dtype).unwrap(),
        EPS,
    )
    .unwrap();
    let got = gpu.download(&y).unwrap();
    let want = rn::layer_norm(&x, c, &gamma, &beta, EPS as f64);
    tol.check(&got, &want).unwrap_or_else(|e| panic!("layer_norm {shape:?} {dtype:?}: {e}"));
}

/// Row lengths across the launcher's workgroup sizes (32 to 256 invocations,
/// from under one element each to about ten).
const LN_SHAPES: [&[usize]; 6] = [&[2, 5, 1], &[2, 77, 77], &[2, 9, 320], &[2, 3, 768], &[1000], &[3, 2500]];

#[test]
fn layer_norm_matches_reference_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    for (k, shape) in LN_SHAPES.iter().enumerate() {
        check_layer_norm(gpu, shape, DType::F32, (-2.0, 3.0), Tolerance::balanced(), 40 + k as u64);
    }
}

#[test]
fn layer_norm_matches_reference_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !has_f16(gpu) {
        return;
    }
    for (k, shape) in LN_SHAPES.iter().enumerate() {
        check_layer_norm(gpu, shape, DType::F16, (-2.0, 3.0), Tolerance::f16(), 50 + k as u64);
    }
}

#[test]
fn layer_norm_is_stable_for_inputs_with_a_large_mean() {
    let Some(gpu) = shared_gpu() else { return };
    check_layer_norm(gpu, &[2, 7, 768], DType::F32, (99.0, 101.0), Tolerance::balanced(), 60);
}

#[test]
fn layer_norm_rejects_bad_shapes() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.zeros(&[2, 4, 8], DType::F32).unwrap();
    let g8 = gpu.zeros(&[8], DType::F32).unwrap();
    let g4 = gpu.zeros(&[4], DType::F32).unwrap();
    assert!(matches!(layer_norm(gpu, &x, &g4, &g8, EPS), Err(GpuError::Shape(_))));
    assert!(matches!(layer_norm(gpu, &x, &g8, &g4, EPS), Err(GpuError::Shape(_))));
}

fn check_softmax(gpu: &Gpu, shape: &[usize], dtype: DType, (lo, hi): (f32, f32), tol: Tolerance, seed: u64) {
    let n: usize = shape.iter().product();
    let x = stored(&random(n, seed, lo, hi), dtype);
    let y = gpu.download(&softmax(gpu, &gpu.upload(&x, shape, dtype).unwrap()).unwrap()).unwrap();
    let want = rs::softmax(&x, *shape.last().unwrap());
    tol.check(&y, &want).unwrap_or_else(|e| panic!("softmax {shape:?} {dtype:?} in [{lo}, {hi}): {e}"));
}

const SM_SHAPES: [&[usize]; 4] = [&[2, 3, 1], &[2, 3, 77], &[2, 1000], &[5, 4099]];

/// Softmax outputs are at most 1 and, for a row of 1000, around 1e-3: a
/// relative bound of 1e-5 (a few ulps through exp and the row sum) with an
/// absolute floor of 1e-8 for the entries that underflow toward zero.
const SOFTMAX_F32: Tolerance = Tolerance::rel_abs(1e-5, 1e-8);

#[test]
fn softmax_matches_reference_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    for (k, shape) in SM_SHAPES.iter().enumerate() {
        check_softmax(gpu, shape, DType::F32, (-5.0, 5.0), SOFTMAX_F32, 70 + k as u64);
    }
}

#[test]
fn softmax_does_not_overflow_with_large_inputs() {
    let Some(gpu) = shared_gpu() else { return };
    // Without max subtraction exp(500) is inf in f32 (its limit is exp(88.7)),
    // and +-80 puts the row sums within a few powers of ten of it.
    for (k, shape) in SM_SHAPES.iter().enumerate() {
        check_softmax(gpu, shape, DType::F32, (-80.0, 80.0), SOFTMAX_F32, 80 + k as u64);
        check_softmax(gpu, shape, DType::F32, (400.0, 500.0), SOFTMAX_F32, 85 + k as u64);
    }
}

#[test]
fn softmax_matches_reference_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !has_f16(gpu) {
        return;
    }
    for (k, shape) in SM_SHAPES.iter().enumerate() {
        check_softmax(gpu, shape, DType::F16, (-80.0, 80.0), Tolerance::f16(), 90 + k as u64);
    }
}
