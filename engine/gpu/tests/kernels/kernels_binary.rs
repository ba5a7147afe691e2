//! Broadcasting add/sub/mul/add_scaled/prelu and GEGLU against the f64
//! references, in f32 and f16, over shape pairs covering rank mismatch,
//! size-1 dims on either side and both sides broadcasting, at sizes that are
//! not multiples of the workgroup; plus shape and dtype errors.

use gpu::ops::binary::{add, add_scaled, geglu, mul, prelu, prelu_broadcast, sub};
use gpu::reference::binary as r;
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu, GpuError, Tensor};

/// (a, b) shape pairs that broadcast.
const PAIRS: &[(&[usize], &[usize])] = &[
    // Same shape: the residual add, merged to one dim.
    (&[2, 3, 5, 7], &[2, 3, 5, 7]),
    // ResNet time-embedding add.
    (&[2, 5, 6, 9], &[2, 5, 1, 1]),
    // Per-channel bias without batch.
    (&[2, 5, 6, 9], &[5, 1, 1]),
    // Both sides broadcast.
    (&[3, 1, 5], &[1, 4, 1]),
    // Scalar-like on either side, and a rank-0 tensor.
    (&[1], &[2, 3, 4]),
    (&[2, 3, 4], &[1]),
    (&[], &[3, 2]),
    // Rank mismatch, the smaller one broadcast to the larger.
    (&[5], &[3, 1]),
    (&[1, 1, 1, 1], &[2, 3, 4, 5]),
    // Six dims broadcasting alternately (nothing merges).
    (&[2, 1, 3, 1, 2, 1], &[1, 3, 1, 2, 1, 3]),
    // Lengths that are not multiples of the 256-wide workgroup.
    (&[257], &[257]),
    (&[3, 70001], &[70001]),
    (&[70001, 1], &[1, 3]),
];

#[derive(Debug, Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    AddScaled(f32),
    Prelu,
}

impl Op {
    fn run(self, gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
        match self {
            Op::Add => add(gpu, a, b),
            Op::Sub => sub(gpu, a, b),
            Op::Mul => mul(gpu, a, b),
            Op::AddScaled(s) => add_scaled(gpu, a, b, s),
            Op::Prelu => prelu_broadcast(gpu, a, b),
        }
    }

    fn reference(self, a: f64, b: f64) -> f64 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::AddScaled(s) => a + s as f64 * b,
            Op::Prelu => r::prelu(a, b),
        }
    }
}

const OPS: [Op; 5] = [Op::Add, Op::Sub, Op::Mul, Op::AddScaled(-7.5), Op::Prelu];

/// What the kernel sees of `data` stored as `dtype`.
fn stored(data: &[f32], dtype: DType) -> Vec<f32> {
    if dtype == DType::F16 { round_f16(data) } else { data.to_vec() }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn check_pairs(gpu: &Gpu, dtype: DType, tol: Tolerance) {
    for (k, &(sa, sb)) in PAIRS.iter().enumerate() {
        let da = random(sa.iter().product(), 11 + k as u64, -4.0, 4.0);
        let db = random(sb.iter().product(), 101 + k as u64, -4.0, 4.0);
        let a = gpu.upload(&da, sa, dtype).unwrap();
        let b = gpu.upload(&db, sb, dtype).unwrap();
        let (ea, eb) = (f64s(&stored(&da, dtype)), f64s(&stored(&db, dtype)));
        for op in OPS {
            let y = op.run(gpu, &a, &b).unwrap();
            let (want, shape) = r::broadcast(&ea, sa, &eb, sb, |x, y| op.reference(x, y));
            assert_eq!(y.shape(), shape.as_slice(), "{op:?} {sa:?} {sb:?}");
            assert_eq!(y.dtype(), dtype);
            tol.check(&gpu.download(&y).unwrap(), &want)
                .unwrap_or_else(|e| panic!("{op:?} {dtype:?} {sa:?} with {sb:?}: {e}"));
        }
    }
}

#[test]
fn broadcasting_ops_match_reference_for_many_shape_pairs_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    // One f32 rounding of the result (a + alpha*b may fuse into one fma: also one rounding).
    check_pairs(gpu, DType::F32, Tolerance::strict());
}

#[test]
fn broadcasting_ops_match_reference_for_many_shape_pairs_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    check_pairs(gpu, DType::F16, Tolerance::f16());
}

#[test]
fn add_and_sub_are_exact_and_mirror_each_other() {
    let Some(gpu) = shared_gpu() else { return };
    let da = random(1000, 5, -100.0, 100.0);
    let db = random(1000, 6, -100.0, 100.0);
    let a = gpu.upload(&da, &[10, 100], DType::F32).unwrap();
    let b = gpu.upload(&db, &[10, 100], DType::F32).unwrap();
    // f32 add and sub are correctly rounded; so must the kernel be (alpha = +-1 is exact).
    let s = gpu.download(&add(gpu, &a, &b).unwrap()).unwrap();
    let d = gpu.download(&sub(gpu, &a, &b).unwrap()).unwrap();
    for i in 0..1000 {
        assert_eq!(s[i].to_bits(), (da[i] + db[i]).to_bits(), "add at {i}");
        assert_eq!(d[i].to_bits(), (da[i] - db[i]).to_bits(), "sub at {i}");
    }
}

#[test]
fn incompatible_shapes_and_dtypes_are_refused_with_both_shapes_named() {
    let Some(gpu) = shared_gpu() else { return };
    for (sa, sb) in [(&[3, 4][..], &[5][..]), (&[2, 3, 4], &[3, 3, 1]), (&[0, 3], &[2, 3])] {
        let a = gpu.zeros(sa, DType::F32).unwrap();
        let b = gpu.zeros(sb, DType::F32).unwrap();
        for op in OPS {
            match op.run(gpu, &a, &b) {
                Err(GpuError::Shape(m)) => {
                    assert!(m.contains(&format!("{sa:?}")) && m.contains(&format!("{sb:?}")), "{m}")
                }
                other => panic!("{op:?} {sa:?} {sb:?}: expected a shape error, got {other:?}"),
            }
        }
    }
    if gpu.features().shader_f16 {
        let a = gpu.zeros(&[4], DType::F32).unwrap();
        let b = gpu.zeros(&[4], DType::F16).unwrap();
        let e = add(gpu, &a, &b).unwrap_err();
        assert!(e.to_string().contains("dtypes"), "{e}");
    }
}

#[test]
fn more_than_six_unmergeable_dims_are_refused() {
    let Some(gpu) = shared_gpu() else { return };
    let a = gpu.zeros(&[2, 1, 2, 1, 2, 1, 2], DType::F32).unwrap();
    let b = gpu.zeros(&[1, 2, 1, 2, 1, 2, 1], DType::F32).unwrap();
    let e = add(gpu, &a, &b).unwrap_err();
    assert!(e.to_string().contains("at most 6"), "{e}");
    // Seven dims that merge are fine.
    let c = gpu.upload(&[1.0; 128], &[2, 2, 2, 2, 2, 2, 2], DType::F32).unwrap();
    assert_eq!(gpu.download(&add(gpu, &c, &c).unwrap()).unwrap(), vec![2.0; 128]);
}

#[test]
fn empty_broadcast_gives_an_empty_tensor() {
    let Some(gpu) = shared_gpu() else { return };
    let a = gpu.zeros(&[0, 3], DType::F32).unwrap();
    let b = gpu.zeros(&[1, 3], DType::F32).unwrap();
    let y = add(gpu, &a, &b).unwrap();
    assert_eq!(y.shape(), [0, 3]);
    assert!(gpu.download(&y).unwrap().is_empty());
}

fn check_geglu(gpu: &Gpu, dtype: DType, tol: Tolerance) {
    for (k, shape) in [&[2, 7, 74][..], &[600], &[3, 1, 2, 258], &[1, 2]].into_iter().enumerate() {
        let data = random(shape.iter().product(), 40 + k as u64, -5.0, 5.0);
        let x = gpu.upload(&data, shape, dtype).unwrap();
        let y = geglu(gpu, &x).unwrap();
        let mut out = shape.to_vec();
        *out.last_mut().unwrap() /= 2;
        assert_eq!(y.shape(), out.as_slice());
        let want = r::geglu(&f64s(&stored(&data, dtype)), *shape.last().unwrap());
        tol.check(&gpu.download(&y).unwrap(), &want).unwrap_or_else(|e| panic!("geglu {dtype:?} {shape:?}: {e}"));
    }
}

#[test]
fn geglu_matches_reference_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    // h * gelu(g): the shader's erf is within ~1.2e-7 relative (elementwise.wgsl's), plus two roundings.
    check_geglu(gpu, DType::F32, Tolerance::strict());
}

#[test]
fn geglu_matches_reference_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    check_geglu(gpu, DType::F16, Tolerance::f16());
}

#[test]
fn geglu_refuses_odd_last_dim_and_scalars() {
    let Some(gpu) = shared_gpu() else { return };
    for shape in [&[2, 5][..], &[]] {
        let x = gpu.zeros(shape, DType::F32).unwrap();
        match geglu(gpu, &x) {
            Err(GpuError::Shape(m)) => assert!(m.contains("even"), "{m}"),
            other => panic!("{shape:?}: expected a shape error, got {other:?}"),
        }
    }
}

#[test]
fn outputs_larger_than_one_binding_are_processed_in_windows() {
    let Some(gpu) = shared_gpu() else { return };
    let limit = gpu.limits.max_storage_buffer_binding_size as usize;
    if limit > 256 << 20 {
        eprintln!("skipped: binding limit {limit} makes the test tensor too large");
        return;
    }
    // [rows, 1] + 0.5 * [cols] -> [rows, cols], just over one binding: y is
    // windowed, a's window moves with the rows, b is read whole by every window.
    let cols = 1000;
    let rows = limit / 4 / cols + 3;
    let da: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    let db: Vec<f32> = (0..cols).map(|j| j as f32).collect();
    let a = gpu.upload(&da, &[rows, 1], DType::F32).unwrap();
    let b = gpu.upload(&db, &[cols], DType::F32).unwrap();
    let y = add_scaled(gpu, &a, &b, 0.5).unwrap();
    assert_eq!(y.shape(), [rows, cols]);
    let y = gpu.download(&y).unwrap();
    // Every value is exact in f32 (below 2^22, multiples of 0.5), and tells row and column apart.
    for (i, &v) in y.iter().enumerate() {
        let (row, col) = (i / cols, i % cols);
        assert_eq!(v, row as f32 + 0.5 * col as f32, "element {i} (row {row}, col {col})");
    }
}

fn check_prelu_channels(gpu: &Gpu, dtype: DType, tol: Tolerance) {
    // nn.PReLU(C) on [B, C, H, W]: SRVGGNetCompact's activation, at widths off the workgroup size.
    for (k, shape) in [&[1, 8, 5, 7][..], &[2, 3, 17, 19], &[1, 64, 3, 3]].into_iter().enumerate() {
        let c = shape[1];
        let data = random(shape.iter().product(), 70 + k as u64, -3.0, 3.0);
        let slope = random(c, 80 + k as u64, -0.5, 0.9);
        let x = gpu.upload(&data, shape, dtype).unwrap();
        let w = gpu.upload(&slope, &[c], dtype).unwrap();
        let y = prelu(gpu, &x, &w).unwrap();
        assert_eq!(y.shape(), shape);
        let (xs, ws) = (f64s(&stored(&data, dtype)), f64s(&stored(&slope, dtype)));
        let plane: usize = shape[2..].iter().product();
        let want: Vec<f64> = xs.iter().enumerate().map(|(i, &v)| r::prelu(v, ws[(i / plane) % c])).collect();
        tol.check(&gpu.download(&y).unwrap(), &want).unwrap_or_else(|e| panic!("prelu {dtype:?} {shape:?}: {e}"));
    }
    let x = gpu.zeros(&[1, 4, 2, 2], dtype).unwrap();
    let w = gpu.zeros(&[3], dtype).unwrap();
    let e = prelu(gpu, &x, &w).unwrap_err();
    assert!(e.to_string().contains("[1, 4, 2, 2]") && e.to_string().contains("[3]"), "{e}");
}

#[test]
fn prelu_applies_one_slope_per_channel_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    // One f32 product (or none): exact up to one rounding.
    check_prelu_channels(gpu, DType::F32, Tolerance::strict());
}

#[test]
fn prelu_applies_one_slope_per_channel_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    check_prelu_channels(gpu, DType::F16, Tolerance::f16());
}
