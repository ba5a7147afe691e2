//! The sinusoidal timestep embedding against the exact (f64) formula of
//! diffusers' `get_timestep_embedding`, at SD's settings and around them.

use gpu::DType;
use gpu::GpuError;
use gpu::ops::embedding::timestep_embedding_as;
use gpu::reference::embedding as r;
use gpu::testing::shared_gpu;
use gpu::tolerance::Tolerance;

const TIMESTEPS: [f32; 5] = [0.0, 1.0, 999.0, 500.5, 37.25];

/// u = 2^-24, f32's unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Bound on |kernel - exact| for timestep t, following the f32 computation
/// (which is diffusers' own f32 computation, so PyTorch is off by as much):
/// - exponent e = fl(fl(-ln P) * k) / fl(half - shift): 3 roundings, |de| <= 3u|e|;
/// - freq = exp(e): WGSL allows 3 + 2|e| ulp, an ulp being <= 2u * freq, so
///   freq's relative error is <= 3u|e| + (6 + 4|e|)u = (6 + 7|e|)u;
/// - arg = fl(t * freq): one more u, so |d arg| <= t * exp(e) * (7 + 7|e|) u
///   <= 7u * t, as exp(e)(1 + |e|) <= 1 for e <= 0;
/// - Cody-Waite reduction to [-pi, pi]: exact but for k * LO, <= 2u * pi;
/// - sin/cos on [-pi, pi]: WGSL allows 2^-11 absolute, which would hide
///   real bugs; lavapipe measured well under 1e-6 and NVIDIA documents its
///   hardware sin/cos at 2^-21.4 there, so 4e-6 is allowed.
///
/// At t = 999 this is 4.2e-4 + 4e-6 (measured on lavapipe: 1.0e-4 at most);
/// args near 1000 in f32 lose ~1e-4.
fn bound(t: f64) -> Tolerance {
    Tolerance::rel_abs(0.0, 7.0 * U * t + 2.0 * U * std::f64::consts::PI + 4e-6)
}

fn check(dtype: DType) {
    let Some(gpu) = shared_gpu() else { return };
    let mut worst = 0.0f64;
    for dim in [320, 321, 1, 2, 7] {
        for flip in [true, false] {
            for shift in [0.0, 1.0] {
                if dim / 2 == 1 && shift == 1.0 {
                    continue; // half - shift = 0 divides by zero (refused; tested below)
                }
                let y = timestep_embedding_as(gpu, &TIMESTEPS, dim, flip, shift, 10000.0, dtype).unwrap();
                assert_eq!(y.shape(), [TIMESTEPS.len(), dim]);
                assert_eq!(y.dtype(), dtype);
                let got = gpu.download(&y).unwrap();
                for (row, &t) in TIMESTEPS.iter().enumerate() {
                    let want = r::timestep_embedding(&[t as f64], dim, flip, shift as f64, 10000.0);
                    let mut tol = bound(t as f64);
                    if dtype == DType::F16 {
                        // Plus rounding the output (|v| <= 1) to f16: half an ulp of [0.5, 1) is 2^-12.
                        tol.abs += 1.0 / 4096.0;
                    }
                    let have = &got[row * dim..(row + 1) * dim];
                    for (a, e) in have.iter().zip(&want) {
                        worst = worst.max((*a as f64 - e).abs());
                    }
                    tol.check(have, &want)
                        .unwrap_or_else(|e| panic!("{dtype:?} dim {dim} flip {flip} shift {shift} t {t}: {e}"));
                }
            }
        }
    }
    eprintln!("{dtype:?}: largest error {worst:e}");
}

#[test]
fn timestep_embedding_matches_formula_in_f32() {
    check(DType::F32);
}

#[test]
fn timestep_embedding_matches_formula_in_f16() {
    if shared_gpu().is_some_and(|g| !g.features().shader_f16) {
        eprintln!("skipped: no f16");
        return;
    }
    check(DType::F16);
}

#[test]
fn sd15_embedding_puts_cos_first_and_pads_odd_dims_with_zero() {
    let Some(gpu) = shared_gpu() else { return };
    // t = 0: cos = 1, sin = 0. SD 1.5 flips, so the first half is ones.
    let y =
        gpu.download(&timestep_embedding_as(gpu, &[0.0, 0.0], 321, true, 0.0, 10000.0, DType::F32).unwrap()).unwrap();
    for row in y.chunks(321) {
        assert!(row[..160].iter().all(|&v| v == 1.0));
        assert!(row[160..].iter().all(|&v| v == 0.0));
    }
    // Unflipped, t = 1: column 0 is sin(1 * freq_0) = sin(1).
    let y = gpu.download(&timestep_embedding_as(gpu, &[1.0], 320, false, 0.0, 10000.0, DType::F32).unwrap()).unwrap();
    assert!((y[0] as f64 - 1f64.sin()).abs() < 1e-6 && (y[160] as f64 - 1f64.cos()).abs() < 1e-6);
}

#[test]
fn timestep_embedding_of_no_timesteps_is_empty() {
    let Some(gpu) = shared_gpu() else { return };
    let y = timestep_embedding_as(gpu, &[], 320, true, 0.0, 10000.0, DType::F32).unwrap();
    assert_eq!(y.shape(), [0, 320]);
}

#[test]
fn timestep_embedding_refuses_degenerate_settings() {
    let Some(gpu) = shared_gpu() else { return };
    for (dim, shift, period) in [(0, 0.0, 10000.0), (2, 1.0, 10000.0), (320, 0.0, 0.0), (320, 0.0, f32::NAN)] {
        match timestep_embedding_as(gpu, &[1.0], dim, true, shift, period, DType::F32) {
            Err(GpuError::Shape(m)) => assert!(m.contains("timestep_embedding"), "{m}"),
            other => panic!("dim {dim} shift {shift} period {period}: expected a shape error, got {other:?}"),
        }
    }
}
