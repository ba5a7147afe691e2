//! Batched matmul and linear against the f64 reference, in f32 and f16, at
//! sizes that are not multiples of the tiles, with transposes, shared
//! weights, bias and fused activations; the cooperative-matrix kernel where
//! the adapter has one; shape errors.

use gpu::ops::matmul::{
    Activation, MatmulKernel, MatmulOptions, coop_available, interleave_halves, linear, matmul,
    matmul_with_binding_limit, matmul_with_kernel,
};
use gpu::reference::elementwise as act;
use gpu::reference::matmul as r;
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu, GpuError};

/// One product: operand shapes as stored, options, and whether it has a bias.
struct Case<'s> {
    a: &'s [usize],
    b: &'s [usize],
    ta: bool,
    tb: bool,
    bias: bool,
    act: Activation,
    /// The bias is per row (length M).
    row_bias: bool,
    geglu: bool,
    residual: bool,
}

impl<'s> Case<'s> {
    fn new(a: &'s [usize], b: &'s [usize]) -> Self {
        Self {
            a,
            b,
            ta: false,
            tb: false,
            bias: false,
            act: Activation::None,
            row_bias: false,
            geglu: false,
            residual: false,
        }
    }
    fn row_bias(mut self) -> Self {
        (self.bias, self.row_bias) = (true, true);
        self
    }
    fn geglu(mut self) -> Self {
        self.geglu = true;
        self
    }
    fn residual(mut self) -> Self {
        self.residual = true;
        self
    }
    fn m(&self) -> usize {
        let r = self.a.len();
        if self.ta { self.a[r - 1] } else { self.a[r - 2] }
    }
    fn t(mut self, ta: bool, tb: bool) -> Self {
        (self.ta, self.tb) = (ta, tb);
        self
    }
    fn bias(mut self, act: Activation) -> Self {
        (self.bias, self.act) = (true, act);
        self
    }
    fn n(&self) -> usize {
        let r = self.b.len();
        if self.tb { self.b[r - 2] } else { self.b[r - 1] }
    }
}

/// Runs `case` on `kernel` and compares with the reference on the inputs as
/// stored (f16-rounded for f16).
fn check(gpu: &Gpu, case: &Case, dtype: DType, kernel: MatmulKernel, tol: Tolerance, seed: u64) {
    let na: usize = case.a.iter().product();
    let nb: usize = case.b.iter().product();
    let round = |v: Vec<f32>| if dtype == DType::F16 { round_f16(&v) } else { v };
    let da = round(random(na, seed, -1.0, 1.0));
    let db = round(random(nb, seed + 1, -1.0, 1.0));
    let (m, n) = (case.m(), case.n());
    let bias_len = if case.row_bias { m } else { n };
    let dbias = round(random(bias_len, seed + 2, -1.0, 1.0));
    let a = gpu.upload(&da, case.a, dtype).unwrap();
    let b = gpu.upload(&db, case.b, dtype).unwrap();
    let bias = gpu.upload(&dbias, &[bias_len], dtype).unwrap();
    // The reference: the plain product, then the epilogue in f64.
    let (prod, mut shape) = r::matmul(&da, case.a, &db, case.b, case.ta, case.tb, None);
    let mut want: Vec<f64> = prod
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (row, col) = ((i / n) % m, i % n);
            let bias = if !case.bias {
                0.0
            } else if case.row_bias {
                dbias[row]
            } else {
                dbias[col]
            };
            v + bias as f64
        })
        .collect();
    if case.geglu {
        want = want.chunks(2).map(|p| p[0] * act::gelu(p[1])).collect();
        *shape.last_mut().unwrap() = n / 2;
    } else {
        want = want.into_iter().map(|v| act::activation(case.act, v)).collect();
    }
    let dres = round(random(want.len(), seed + 3, -1.0, 1.0));
    let res = gpu.upload(&dres, &shape, dtype).unwrap();
    if case.residual {
        want.iter_mut().zip(&dres).for_each(|(w, r)| *w += *r as f64);
    }
    let opts = MatmulOptions {
        transpose_a: case.ta,
        transpose_b: case.tb,
        bias: case.bias.then_some(&bias),
        bias_per_row: case.row_bias,
        activation: case.act,
        geglu: case.geglu,
        residual: case.residual.then_some(&res),
    };
    let c = matmul_with_kernel(gpu, &a, &b, &opts, kernel).unwrap();
    assert_eq!(c.shape(), &shape[..], "{:?} x {:?}", case.a, case.b);
    let got = gpu.download(&c).unwrap();
    tol.check(&got, &want).unwrap_or_else(|e| {
        panic!(
            "{dtype:?} {kernel:?} a {:?}{} b {:?}{} bias {} (per row {}) {:?} geglu {} residual {}: {e}",
            case.a,
            if case.ta { "ᵀ" } else { "" },
            case.b,
            if case.tb { "ᵀ" } else { "" },
            case.bias,
            case.row_bias,
            case.act,
            case.geglu,
            case.residual
        )
    });
}

fn has_f16(gpu: &Gpu) -> bool {
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
    }
    gpu.features().shader_f16
}

/// (M, K, N) around the 64-wide tiles and the 16-deep K-steps.
const ODD: [(usize, usize, usize); 7] =
    [(1, 1, 1), (17, 63, 65), (65, 17, 130), (63, 130, 17), (130, 65, 63), (3, 200, 1), (257, 33, 130)];

#[test]
fn matmul_matches_reference_when_sizes_are_not_multiples_of_tile() {
    let Some(gpu) = shared_gpu() else { return };
    for (i, &(m, k, n)) in ODD.iter().enumerate() {
        check(gpu, &Case::new(&[m, k], &[k, n]), DType::F32, MatmulKernel::Portable, Tolerance::balanced(), i as u64);
    }
}

#[test]
fn matmul_matches_reference_with_each_transpose() {
    let Some(gpu) = shared_gpu() else { return };
    let (m, k, n) = (33, 47, 70);
    for (ta, tb) in [(false, true), (true, false), (true, true)] {
        let a = if ta { [k, m] } else { [m, k] };
        let b = if tb { [n, k] } else { [k, n] };
        check(gpu, &Case::new(&a, &b).t(ta, tb), DType::F32, MatmulKernel::Portable, Tolerance::balanced(), 11);
    }
}

#[test]
fn batched_matmul_matches_reference_with_and_without_shared_operands() {
    let Some(gpu) = shared_gpu() else { return };
    let tol = Tolerance::balanced();
    let k = MatmulKernel::Portable;
    // Batch 3, every item its own B.
    check(gpu, &Case::new(&[3, 19, 33], &[3, 33, 70]), DType::F32, k, tol, 21);
    // A weight shared by every batch item, PyTorch Linear layout.
    check(gpu, &Case::new(&[3, 19, 33], &[70, 33]).t(false, true), DType::F32, k, tol, 22);
    // A shared left operand against batched right ones.
    check(gpu, &Case::new(&[19, 33], &[3, 33, 70]), DType::F32, k, tol, 23);
    // Two batch dims (batch x heads), both transposed.
    check(gpu, &Case::new(&[2, 3, 33, 19], &[2, 3, 70, 33]).t(true, true), DType::F32, k, tol, 24);
}

#[test]
fn bias_and_each_fused_activation_match_reference() {
    let Some(gpu) = shared_gpu() else { return };
    for (i, a) in [Activation::None, Activation::Silu, Activation::Gelu, Activation::QuickGelu].into_iter().enumerate()
    {
        let case = Case::new(&[2, 37, 70], &[67, 70]).t(false, true).bias(a);
        check(gpu, &case, DType::F32, MatmulKernel::Portable, Tolerance::balanced(), 30 + i as u64);
        if gpu.features().shader_f16 {
            check(gpu, &case, DType::F16, MatmulKernel::Portable, Tolerance::f16(), 40 + i as u64);
        }
    }
}

/// The epilogues the models fuse, on shapes off the tile sizes: a linear
/// plus residual (attention output, feed-forward out), GEGLU on interleaved
/// columns (feed-forward in), a channels-first 1x1 conv with a per-row bias
/// plus residual (a transformer's proj_out written as NCHW).
fn fused_epilogue_cases(gpu: &Gpu, dtype: DType, kernel: MatmulKernel, tol: Tolerance, seed: u64) {
    let cases = [
        Case::new(&[2, 37, 70], &[67, 70]).t(false, true).bias(Activation::None).residual(),
        Case::new(&[2, 37, 70], &[67, 70]).t(false, true).residual(),
        Case::new(&[2, 37, 70], &[134, 70]).t(false, true).bias(Activation::None).geglu(),
        Case::new(&[75, 33], &[2, 130, 33]).t(false, true).row_bias().residual(),
        Case::new(&[2, 33, 75], &[41, 33]).t(true, true).bias(Activation::Silu).residual(),
    ];
    for (i, case) in cases.iter().enumerate() {
        check(gpu, case, dtype, kernel, tol, seed + i as u64);
    }
}

#[test]
fn fused_residual_geglu_and_row_bias_match_reference() {
    let Some(gpu) = shared_gpu() else { return };
    fused_epilogue_cases(gpu, DType::F32, MatmulKernel::Portable, Tolerance::balanced(), 300);
    if gpu.features().shader_f16 {
        fused_epilogue_cases(gpu, DType::F16, MatmulKernel::Portable, Tolerance::f16(), 310);
    }
}

#[test]
fn interleave_halves_pairs_value_and_gate_rows() {
    let Some(gpu) = shared_gpu() else { return };
    let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let t = gpu.upload(&data, &[4, 3], DType::F32).unwrap();
    let pairs = interleave_halves(gpu, &t).unwrap();
    assert_eq!(pairs.shape(), [4, 3]);
    // Rows 0, 2, 1, 3 of the original: (value 0, gate 0), (value 1, gate 1).
    assert_eq!(gpu.download(&pairs).unwrap(), [0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]);
    assert!(interleave_halves(gpu, &gpu.zeros(&[3, 2], DType::F32).unwrap()).is_err());
}

#[test]
fn long_reduction_matches_reference_in_f32_and_f16() {
    let Some(gpu) = shared_gpu() else { return };
    let case = Case::new(&[20, 1000], &[36, 1000]).t(false, true);
    check(gpu, &case, DType::F32, MatmulKernel::Portable, Tolerance::balanced(), 50);
    if has_f16(gpu) {
        // Only the output is rounded to f16 (inputs are exact, sums in f32): outputs of
        // size ~sqrt(K)/3 ≈ 10 round by up to 2^-11 relative, within the f16 bound.
        check(gpu, &case, DType::F16, MatmulKernel::Portable, Tolerance::f16(), 51);
    }
}

#[test]
fn matmul_matches_reference_in_f16_when_sizes_are_not_multiples_of_tile() {
    let Some(gpu) = shared_gpu() else { return };
    if !has_f16(gpu) {
        return;
    }
    for (i, &(m, k, n)) in ODD.iter().enumerate() {
        check(
            gpu,
            &Case::new(&[m, k], &[n, k]).t(false, true),
            DType::F16,
            MatmulKernel::Portable,
            Tolerance::f16(),
            60 + i as u64,
        );
    }
    check(gpu, &Case::new(&[3, 19, 33], &[33, 70]), DType::F16, MatmulKernel::Portable, Tolerance::f16(), 70);
}

#[test]
fn linear_matches_f_linear_on_sequences() {
    let Some(gpu) = shared_gpu() else { return };
    let (dx, dw, db) = (random(2 * 5 * 40, 80, -1.0, 1.0), random(24 * 40, 81, -1.0, 1.0), random(24, 82, -1.0, 1.0));
    let x = gpu.upload(&dx, &[2, 5, 40], DType::F32).unwrap();
    let w = gpu.upload(&dw, &[24, 40], DType::F32).unwrap();
    let b = gpu.upload(&db, &[24], DType::F32).unwrap();
    let y = linear(gpu, &x, &w, Some(&b)).unwrap();
    assert_eq!(y.shape(), [2, 5, 24]);
    let (want, _) = r::matmul(&dx, &[10, 40], &dw, &[24, 40], false, true, Some(&db));
    Tolerance::balanced().check(&gpu.download(&y).unwrap(), &want).unwrap();
    let y = linear(gpu, &x, &w, None).unwrap();
    let (want, _) = r::matmul(&dx, &[10, 40], &dw, &[24, 40], false, true, None);
    Tolerance::balanced().check(&gpu.download(&y).unwrap(), &want).unwrap();
}

#[test]
fn batches_are_split_over_binding_windows_at_unaligned_offsets() {
    let Some(gpu) = shared_gpu() else { return };
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !gpu.features().shader_f16 {
            continue;
        }
        let es = dtype.size();
        // Items of 7x11 / 11x9 / 7x9 elements: odd sizes, so every window but the
        // first starts mid-alignment; the limit admits about two items.
        let (da, db) = (random(5 * 7 * 11, 90, -1.0, 1.0), random(5 * 11 * 9, 91, -1.0, 1.0));
        let (da, db) = if dtype == DType::F16 { (round_f16(&da), round_f16(&db)) } else { (da, db) };
        let a = gpu.upload(&da, &[5, 7, 11], dtype).unwrap();
        let b = gpu.upload(&db, &[5, 11, 9], dtype).unwrap();
        let limit = (2 * 11 * 9 * es + 256 + 8) as u64;
        let c = matmul_with_binding_limit(gpu, &a, &b, &MatmulOptions::default(), limit).unwrap();
        let (want, _) = r::matmul(&da, &[5, 7, 11], &db, &[5, 11, 9], false, false, None);
        let tol = if dtype == DType::F16 { Tolerance::f16() } else { Tolerance::balanced() };
        tol.check(&gpu.download(&c).unwrap(), &want).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        // One matrix larger than the limit cannot be split.
        let err = matmul_with_binding_limit(gpu, &a, &b, &MatmulOptions::default(), 64).unwrap_err();
        assert!(matches!(err, GpuError::TooLarge { .. }), "{err}");
    }
}

#[test]
fn empty_inner_dimension_gives_bias_and_empty_outer_gives_empty() {
    let Some(gpu) = shared_gpu() else { return };
    let a = gpu.upload(&[], &[3, 0], DType::F32).unwrap();
    let b = gpu.upload(&[], &[0, 2], DType::F32).unwrap();
    let bias = gpu.upload(&[1.5, -2.0], &[2], DType::F32).unwrap();
    let c = matmul(gpu, &a, &b, &MatmulOptions { bias: Some(&bias), ..Default::default() }).unwrap();
    assert_eq!(gpu.download(&c).unwrap(), [1.5, -2.0, 1.5, -2.0, 1.5, -2.0]);
    let a = gpu.upload(&[], &[0, 4], DType::F32).unwrap();
    let b = gpu.zeros(&[4, 2], DType::F32).unwrap();
    assert_eq!(matmul(gpu, &a, &b, &MatmulOptions::default()).unwrap().shape(), [0, 2]);
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let Some(gpu) = shared_gpu() else { return };
    let t = |shape: &[usize]| gpu.zeros(shape, DType::F32).unwrap();
    let plain = MatmulOptions::default();
    let shape_err = |r: Result<gpu::Tensor, GpuError>| match r {
        Err(GpuError::Shape(msg)) => msg,
        other => panic!("expected a shape error, got {other:?}"),
    };
    let msg = shape_err(matmul(gpu, &t(&[4, 5]), &t(&[6, 3]), &plain));
    assert!(msg.contains("inner dimensions"), "{msg}");
    // Transposed B [N, K] must agree on K too.
    shape_err(matmul(gpu, &t(&[4, 5]), &t(&[3, 6]), &MatmulOptions { transpose_b: true, ..plain }));
    let msg = shape_err(matmul(gpu, &t(&[5]), &t(&[5, 3]), &plain));
    assert!(msg.contains("rank"), "{msg}");
    shape_err(matmul(gpu, &t(&[4, 5]), &t(&[5]), &plain));
    let msg = shape_err(matmul(gpu, &t(&[2, 4, 5]), &t(&[3, 5, 6]), &plain));
    assert!(msg.contains("batch"), "{msg}");
    let bias = t(&[5]);
    let msg = shape_err(matmul(gpu, &t(&[4, 5]), &t(&[5, 6]), &MatmulOptions { bias: Some(&bias), ..plain }));
    assert!(msg.contains("bias"), "{msg}");
    let bias2 = t(&[1, 6]);
    shape_err(matmul(gpu, &t(&[4, 5]), &t(&[5, 6]), &MatmulOptions { bias: Some(&bias2), ..plain }));
    let bias6 = t(&[6]);
    let msg = shape_err(matmul(
        gpu,
        &t(&[4, 5]),
        &t(&[5, 6]),
        &MatmulOptions { bias: Some(&bias6), bias_per_row: true, ..plain },
    ));
    assert!(msg.contains("per row"), "{msg}");
    let res = t(&[4, 5]);
    let msg = shape_err(matmul(gpu, &t(&[4, 5]), &t(&[5, 6]), &MatmulOptions { residual: Some(&res), ..plain }));
    assert!(msg.contains("residual"), "{msg}");
    let msg = shape_err(matmul(gpu, &t(&[4, 5]), &t(&[5, 7]), &MatmulOptions { geglu: true, ..plain }));
    assert!(msg.contains("GEGLU"), "{msg}");
    shape_err(linear(gpu, &t(&[4, 5]), &t(&[6, 4]), None));
    shape_err(linear(gpu, &t(&[4, 5]), &t(&[2, 6, 5]), None));
    if gpu.features().shader_f16 {
        let h = gpu.zeros(&[5, 6], DType::F16).unwrap();
        let msg = shape_err(matmul(gpu, &t(&[4, 5]), &h, &plain));
        assert!(msg.contains("dtype"), "{msg}");
    }
    if !coop_available(gpu, DType::F32) {
        // Asking for tensor cores where there are none is an error, not a fallback.
        shape_err(matmul_with_kernel(gpu, &t(&[4, 5]), &t(&[5, 6]), &plain, MatmulKernel::Coop));
    }
}

/// Runs only where the adapter has f16 cooperative matrices (not lavapipe).
#[test]
fn coop_matmul_matches_reference_when_adapter_has_cooperative_matrices() {
    let Some(gpu) = shared_gpu() else { return };
    if !crate::coop_or_skip(gpu, coop_available(gpu, DType::F16)) {
        return;
    }
    let k = MatmulKernel::Coop;
    let tol = Tolerance::f16();
    for (i, &(m, kk, n)) in ODD.iter().enumerate() {
        check(gpu, &Case::new(&[m, kk], &[kk, n]), DType::F16, k, tol, 100 + i as u64);
        check(gpu, &Case::new(&[kk, m], &[n, kk]).t(true, true), DType::F16, k, tol, 110 + i as u64);
    }
    check(gpu, &Case::new(&[3, 19, 33], &[33, 70]), DType::F16, k, tol, 120);
    check(gpu, &Case::new(&[3, 130, 200], &[3, 200, 257]).t(false, false), DType::F16, k, tol, 121);
    check(gpu, &Case::new(&[19, 300], &[3, 270, 300]).t(false, true), DType::F16, k, tol, 122);
    for (i, a) in [Activation::None, Activation::Silu, Activation::Gelu, Activation::QuickGelu].into_iter().enumerate()
    {
        let case = Case::new(&[2, 137, 320], &[190, 320]).t(false, true).bias(a);
        check(gpu, &case, DType::F16, k, tol, 130 + i as u64);
    }
    check(gpu, &Case::new(&[20, 1000], &[36, 1000]).t(false, true), DType::F16, k, tol, 140);
    // Whole 128x128 blocks, the fast path's shape.
    check(gpu, &Case::new(&[256, 320], &[320, 384]), DType::F16, k, tol, 141);
    fused_epilogue_cases(gpu, DType::F16, k, tol, 150);
}

#[test]
fn small_kernel_benchmark_reports_finite_positive_timings() {
    let Some(gpu) = shared_gpu() else { return };
    let results = gpu::bench::bench_kernels(gpu, gpu::bench::BenchSize::Small).unwrap();
    // 7 cases on each path (f32, f16 where available); conv has no coop path.
    assert!(results.len() >= 7, "{results:?}");
    for r in &results {
        assert!(r.ms.is_finite() && r.ms > 0.0 && r.tflops.is_finite() && r.tflops > 0.0, "{r:?}");
    }
}
