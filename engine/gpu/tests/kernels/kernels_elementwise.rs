//! Unary activation and cast kernels against the f64 references, in f32
//! and f16, at sizes that are not multiples of the workgroup.

use gpu::ops::cast::cast;
use gpu::ops::elementwise::{Unary, unary};
use gpu::reference::elementwise as r;
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu};

const SIZES: [usize; 4] = [1, 255, 257, 70_001];

fn reference(op: Unary, x: f64) -> f64 {
    match op {
        Unary::Silu => r::silu(x),
        Unary::Gelu => r::gelu(x),
        Unary::QuickGelu => r::quick_gelu(x),
        Unary::LeakyRelu(a) => r::leaky_relu(x, a as f64),
        Unary::Scale(a) => x * a as f64,
    }
}

fn check(gpu: &Gpu, op: Unary, dtype: DType, tol: Tolerance) {
    for (k, &n) in SIZES.iter().enumerate() {
        let data = random(n, 7 + k as u64, -8.0, 8.0);
        let x = gpu.upload(&data, &[n], dtype).unwrap();
        let y = gpu.download(&unary(gpu, &x, op).unwrap()).unwrap();
        // The kernel sees the input as stored (rounded, for f16).
        let seen = if dtype == DType::F16 { round_f16(&data) } else { data };
        let want: Vec<f64> = seen.iter().map(|&v| reference(op, v as f64)).collect();
        tol.check(&y, &want).unwrap_or_else(|e| panic!("{op:?} {dtype:?} n={n}: {e}"));
    }
}

const OPS: [Unary; 5] = [Unary::Silu, Unary::Gelu, Unary::QuickGelu, Unary::LeakyRelu(0.2), Unary::Scale(-0.37)];

#[test]
fn activations_match_reference_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    for op in OPS {
        check(gpu, op, DType::F32, Tolerance::strict());
    }
}

#[test]
fn activations_match_reference_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    for op in OPS {
        check(gpu, op, DType::F16, Tolerance::f16());
    }
}

#[test]
fn cast_round_trips_and_rounds_like_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        return;
    }
    let mut data = random(1001, 3, -70000.0, 70000.0);
    data.extend([0.1, -0.0, 1.0 / 3.0, 65504.0, 1e-6]);
    let x = gpu.upload(&data, &[data.len()], DType::F32).unwrap();
    let h = cast(gpu, &x, DType::F16).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    let back = gpu.download(&cast(gpu, &h, DType::F32).unwrap()).unwrap();
    // Out-of-range values saturate at f16's largest finite value.
    let want: Vec<f64> = data.iter().map(|v| half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f32() as f64).collect();
    Tolerance::rel_abs(0.0, 0.0).check(&back, &want).unwrap();
}

#[test]
fn tensor_larger_than_one_binding_is_processed_in_windows() {
    let Some(gpu) = shared_gpu() else { return };
    // Just over the per-binding limit (128 MiB on lavapipe and WebGPU defaults).
    let limit = gpu.limits.max_storage_buffer_binding_size as usize;
    if limit > 256 << 20 {
        eprintln!("skipped: binding limit {limit} makes the test tensor too large");
        return;
    }
    let n = limit / 4 + 1000;
    let x = gpu.zeros(&[n], DType::F32).unwrap();
    let y = gpu.download(&unary(gpu, &x, Unary::Scale(2.0)).unwrap()).unwrap();
    assert_eq!(y.len(), n);
    assert!(y.iter().all(|&v| v == 0.0));
    // A marker at both ends proves both windows ran.
    let mut data = vec![0.0f32; n];
    data[0] = 1.0;
    data[n - 1] = 3.0;
    let x = gpu.upload(&data, &[n], DType::F32).unwrap();
    let y = gpu.download(&unary(gpu, &x, Unary::Scale(2.0)).unwrap()).unwrap();
    assert_eq!((y[0], y[n / 2], y[n - 1]), (2.0, 0.0, 6.0));
}

#[test]
fn reshape_shares_data_and_checks_counts() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], DType::F32).unwrap();
    let y = x.reshape(&[3, 2]).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(x.reshape(&[4, 2]).is_err());
}

#[test]
fn dropped_tensors_are_reused_by_the_pool() {
    let Some(gpu) = shared_gpu() else { return };
    // Other tests share the pool and run meanwhile, so check the buffer
    // itself (no other test asks for this size), not the pool's byte counts.
    let t = gpu.zeros(&[12345], DType::F32).unwrap();
    let first = t.buffer().clone();
    drop(t);
    let t2 = gpu.zeros(&[12345], DType::F32).unwrap();
    assert!(*t2.buffer() == first, "the freed buffer was taken again");
    assert!(gpu.allocated_bytes() >= 12345 * 4);
}
