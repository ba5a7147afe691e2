//! conv2d against the f64 reference (`F.conv2d` semantics) in f32 and f16:
//! 1x1 and 3x3 kernels, stride 1 and 2, padding 0 and 1, odd image sizes,
//! channel counts that are not multiples of the tiles, bias, fused
//! activations, binding windows; shape errors.

use gpu::ops::conv2d::{Conv2dCall, Conv2dOptions, ConvExtras, conv2d, conv2d_fused, conv2d_with, coop_conv_available};
use gpu::ops::matmul::{Activation, MatmulKernel};
use gpu::reference::conv2d as r;
use gpu::reference::elementwise as act;
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu, GpuError, Tensor};

/// One convolution: input `[B, Cin, H, W]`, weight `[Cout, Cin, kh, kw]`.
#[derive(Clone, Copy)]
struct Case {
    x: [usize; 4],
    w: [usize; 4],
    bias: bool,
    opts: Conv2dOptions,
    /// The bias is `[B, Cout]`.
    batch_bias: bool,
    residual: bool,
}

fn case(x: [usize; 4], cout: usize, k: usize, stride: usize, padding: usize, bias: bool) -> Case {
    let opts = Conv2dOptions { stride: (stride, stride), padding: (padding, padding), ..Default::default() };
    Case { x, w: [cout, x[1], k, k], bias, opts, batch_bias: false, residual: false }
}

impl Case {
    /// With a per-batch bias and a residual, as a ResNet block's convs use them.
    fn fused(mut self) -> Case {
        (self.bias, self.batch_bias, self.residual) = (true, true, true);
        self
    }
}

/// How to launch a case.
#[derive(Clone, Copy, Debug)]
enum Via {
    Auto,
    /// Through bindings of at most this many bytes (portable kernel).
    Limit(u64),
    Kernel(MatmulKernel),
}

/// Runs `c` and compares with the reference on the inputs as stored.
fn check_via(gpu: &Gpu, c: &Case, dtype: DType, seed: u64, via: Via) {
    let round = |v: Vec<f32>| if dtype == DType::F16 { round_f16(&v) } else { v };
    let dx = round(random(c.x.iter().product(), seed, -1.0, 1.0));
    let dw = round(random(c.w.iter().product(), seed + 1, -1.0, 1.0));
    let (batch, cout) = (c.x[0], c.w[0]);
    // A per-batch bias row holds other convs' values too: this conv's are columns 3..3 + cout.
    let (row, offset) = if c.batch_bias { (cout + 5, 3) } else { (cout, 0) };
    let bias_shape = if c.batch_bias { vec![batch, row] } else { vec![cout] };
    let db = round(random(bias_shape.iter().product(), seed + 2, -1.0, 1.0));
    let x = gpu.upload(&dx, &c.x, dtype).unwrap();
    let w = gpu.upload(&dw, &c.w, dtype).unwrap();
    let b = gpu.upload(&db, &bias_shape, dtype).unwrap();
    let bias = c.bias.then_some(&b);
    // The reference: the plain convolution, then the epilogue in f64.
    let (conv, shape) = r::conv2d(&dx, c.x, &dw, c.w, None, c.opts.stride, c.opts.padding, c.opts.dilation);
    let npix = shape[2] * shape[3];
    let dres = round(random(conv.len(), seed + 3, -1.0, 1.0));
    let res = gpu.upload(&dres, &shape, dtype).unwrap();
    let want: Vec<f64> = conv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (item, co) = (i / (cout * npix), (i / npix) % cout);
            let bias = match (c.bias, c.batch_bias) {
                (false, _) => 0.0,
                (true, false) => db[co] as f64,
                (true, true) => db[item * row + offset + co] as f64,
            };
            let v = act::activation(c.opts.activation, v + bias);
            if c.residual { v + dres[i] as f64 } else { v }
        })
        .collect();
    let extras = ConvExtras { bias_per_batch: c.batch_bias, bias_offset: offset, residual: c.residual.then_some(&res) };
    let plain = !c.batch_bias && !c.residual;
    let y = match via {
        Via::Auto if plain => conv2d_with(gpu, &x, &w, bias, &c.opts),
        Via::Auto => conv2d_fused(gpu, &x, &w, bias, &c.opts, extras),
        Via::Limit(l) => Conv2dCall { x: &x, weight: &w, bias, opts: &c.opts, extras }.run_with_binding_limit(gpu, l),
        Via::Kernel(k) => Conv2dCall { x: &x, weight: &w, bias, opts: &c.opts, extras }.run(gpu, k),
    }
    .unwrap();
    assert_eq!(y.shape(), shape);
    let tol = if dtype == DType::F16 { Tolerance::f16() } else { Tolerance::balanced() };
    tol.check(&gpu.download(&y).unwrap(), &want).unwrap_or_else(|e| {
        panic!(
            "{dtype:?} x {:?} w {:?} bias {} (per batch {}) residual {} {:?} {via:?}: {e}",
            c.x, c.w, c.bias, c.batch_bias, c.residual, c.opts
        )
    });
}

fn check(gpu: &Gpu, c: &Case, dtype: DType, seed: u64) {
    check_via(gpu, c, dtype, seed, Via::Auto)
}

/// The SD layer kinds at small odd sizes: (x, Cout, k, stride, padding, bias).
const CASES: [([usize; 4], usize, usize, usize, usize, bool); 8] = [
    ([2, 5, 7, 9], 70, 3, 1, 1, true),
    ([2, 19, 13, 5], 3, 3, 1, 1, false),
    ([2, 17, 7, 9], 66, 1, 1, 0, true),
    ([1, 67, 9, 7], 65, 1, 1, 0, false),
    ([2, 6, 13, 5], 33, 3, 2, 1, true),
    ([2, 6, 7, 9], 20, 3, 2, 0, false),
    ([1, 3, 13, 5], 9, 3, 1, 0, true),
    ([2, 33, 8, 8], 17, 3, 2, 1, true),
];

#[test]
fn conv2d_matches_reference_for_sd_layer_kinds_at_odd_sizes() {
    let Some(gpu) = shared_gpu() else { return };
    for (i, &(x, cout, k, s, p, bias)) in CASES.iter().enumerate() {
        check(gpu, &case(x, cout, k, s, p, bias), DType::F32, i as u64);
    }
}

#[test]
fn conv2d_matches_reference_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    for (i, &(x, cout, k, s, p, bias)) in CASES.iter().enumerate() {
        let c = case(x, cout, k, s, p, bias);
        check_via(gpu, &c, DType::F16, 20 + i as u64, Via::Kernel(MatmulKernel::Portable));
    }
}

#[test]
fn conv2d_matches_reference_when_width_not_multiple_of_tile() {
    let Some(gpu) = shared_gpu() else { return };
    // 9x15 = 135 output pixels: two full 64-pixel tiles and a 7-pixel one; 130 output
    // channels: two full 64-channel tiles and a 2-channel one; 20 input channels: one
    // full 16-channel step and a 4-channel one.
    check(gpu, &case([2, 20, 9, 15], 130, 3, 1, 1, true), DType::F32, 30);
}

#[test]
fn conv2d_supports_rectangular_kernels_strides_padding_and_dilation() {
    let Some(gpu) = shared_gpu() else { return };
    let opts = Conv2dOptions { stride: (2, 1), padding: (0, 2), dilation: (2, 1), activation: Activation::None };
    check(
        gpu,
        &Case { x: [2, 7, 13, 9], w: [11, 7, 4, 2], bias: true, opts, batch_bias: false, residual: false },
        DType::F32,
        40,
    );
    let opts = Conv2dOptions { stride: (1, 3), padding: (3, 0), dilation: (1, 2), activation: Activation::None };
    check(
        gpu,
        &Case { x: [1, 4, 6, 17], w: [5, 4, 7, 3], bias: false, opts, batch_bias: false, residual: false },
        DType::F32,
        41,
    );
    // Same-size 3x3 as in the UNet, through the two-argument API.
    let x = gpu.upload(&random(2 * 4 * 5 * 6, 42, -1.0, 1.0), &[2, 4, 5, 6], DType::F32).unwrap();
    let w = gpu.upload(&random(8 * 4 * 9, 43, -1.0, 1.0), &[8, 4, 3, 3], DType::F32).unwrap();
    assert_eq!(conv2d(gpu, &x, &w, None, 1, 1).unwrap().shape(), [2, 8, 5, 6]);
    assert_eq!(conv2d(gpu, &x, &w, None, 2, 1).unwrap().shape(), [2, 8, 3, 3]);
}

#[test]
fn conv2d_fuses_each_activation_after_the_bias() {
    let Some(gpu) = shared_gpu() else { return };
    for (i, a) in [Activation::Silu, Activation::Gelu, Activation::QuickGelu].into_iter().enumerate() {
        let mut c = case([2, 9, 7, 9], 21, 3, 1, 1, true);
        c.opts.activation = a;
        check(gpu, &c, DType::F32, 50 + i as u64);
    }
}

#[test]
fn conv2d_fuses_a_per_batch_bias_and_a_residual() {
    let Some(gpu) = shared_gpu() else { return };
    // A ResNet block's second conv (3x3, skip added) and a 1x1 shortcut-sized one, odd sizes.
    check(gpu, &case([2, 9, 7, 9], 21, 3, 1, 1, true).fused(), DType::F32, 55);
    check(gpu, &case([3, 17, 5, 7], 66, 1, 1, 0, true).fused(), DType::F32, 56);
    let mut c = case([2, 9, 7, 9], 21, 3, 1, 1, true).fused();
    c.opts.activation = Activation::Silu;
    check(gpu, &c, DType::F32, 57);
    if gpu.features().shader_f16 {
        check_via(
            gpu,
            &case([2, 9, 7, 9], 21, 3, 1, 1, true).fused(),
            DType::F16,
            58,
            Via::Kernel(MatmulKernel::Portable),
        );
    }
}

#[test]
fn conv2d_splits_batches_and_channels_over_binding_windows() {
    let Some(gpu) = shared_gpu() else { return };
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !gpu.features().shader_f16 {
            continue;
        }
        let es = dtype.size() as u64;
        let mut c = case([3, 10, 7, 9], 12, 3, 1, 1, true);
        c.opts.activation = Activation::Silu;
        // A limit of ~5 planes of 7x9 splits every batch item into 3-4 input-channel
        // windows (partial sums added, bias first, activation last) and 3 output-channel
        // windows, all at unaligned offsets.
        let limit = 5 * 63 * es + 64 + 8;
        check_via(gpu, &c, dtype, 60, Via::Limit(limit));
        // Room for two whole batch items per window.
        let c = case([5, 3, 5, 7], 4, 3, 2, 1, true);
        check_via(gpu, &c, dtype, 61, Via::Limit(2 * 3 * 35 * es + 64 + 8));
        // The same windows with a per-batch bias (first split) and a residual (last split).
        let mut c = case([3, 10, 7, 9], 12, 3, 1, 1, true).fused();
        c.opts.activation = Activation::Silu;
        check_via(gpu, &c, dtype, 62, Via::Limit(5 * 63 * es + 64 + 8));
        let c = case([5, 3, 5, 7], 4, 3, 2, 1, true).fused();
        check_via(gpu, &c, dtype, 63, Via::Limit(2 * 4 * 35 * es + 64 + 8));
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let Some(gpu) = shared_gpu() else { return };
    let t = |shape: &[usize]| gpu.zeros(shape, DType::F32).unwrap();
    let shape_err = |r: Result<Tensor, GpuError>| match r {
        Err(GpuError::Shape(msg)) => msg,
        other => panic!("expected a shape error, got {other:?}"),
    };
    let x = t(&[1, 4, 8, 8]);
    let msg = shape_err(conv2d(gpu, &t(&[4, 8, 8]), &t(&[2, 4, 3, 3]), None, 1, 1));
    assert!(msg.contains("[B, Cin, H, W]"), "{msg}");
    shape_err(conv2d(gpu, &x, &t(&[2, 4, 3]), None, 1, 1));
    let msg = shape_err(conv2d(gpu, &x, &t(&[2, 3, 3, 3]), None, 1, 1));
    assert!(msg.contains("channels"), "{msg}");
    let msg = shape_err(conv2d(gpu, &x, &t(&[2, 4, 3, 3]), Some(&t(&[3])), 1, 1));
    assert!(msg.contains("bias"), "{msg}");
    let per_batch = ConvExtras { bias_per_batch: true, ..Default::default() };
    let msg = shape_err(conv2d_fused(gpu, &x, &t(&[2, 4, 3, 3]), Some(&t(&[2])), &Default::default(), per_batch));
    assert!(msg.contains("(B, N >= 0 + Cout 2)"), "{msg}");
    let past_end = ConvExtras { bias_per_batch: true, bias_offset: 3, ..Default::default() };
    let msg = shape_err(conv2d_fused(gpu, &x, &t(&[2, 4, 3, 3]), Some(&t(&[1, 4])), &Default::default(), past_end));
    assert!(msg.contains("bias"), "{msg}");
    let res = t(&[1, 2, 8, 8]);
    let with_res = ConvExtras { residual: Some(&res), ..Default::default() };
    let msg = shape_err(conv2d_fused(gpu, &x, &t(&[2, 4, 3, 3]), None, &Default::default(), with_res));
    assert!(msg.contains("residual"), "{msg}");
    let msg = shape_err(conv2d(gpu, &x, &t(&[2, 4, 11, 11]), None, 1, 1));
    assert!(msg.contains("kernel spans"), "{msg}");
    shape_err(conv2d(gpu, &x, &t(&[2, 4, 3, 3]), None, 0, 1));
    let opts = Conv2dOptions { dilation: (0, 1), ..Default::default() };
    shape_err(conv2d_with(gpu, &x, &t(&[2, 4, 3, 3]), None, &opts));
    if gpu.features().shader_f16 {
        let h = gpu.zeros(&[2, 4, 3, 3], DType::F16).unwrap();
        shape_err(conv2d(gpu, &x, &h, None, 1, 1));
    }
    if !coop_conv_available(gpu, DType::F32) {
        let opts = Conv2dOptions::default();
        let w = t(&[2, 4, 3, 3]);
        let call = Conv2dCall { x: &x, weight: &w, bias: None, opts: &opts, extras: ConvExtras::default() };
        shape_err(call.run(gpu, MatmulKernel::Coop));
    }
    // A channel plane larger than one binding cannot be split.
    let (w, opts) = (t(&[2, 4, 3, 3]), Conv2dOptions::default());
    let call = Conv2dCall { x: &x, weight: &w, bias: None, opts: &opts, extras: ConvExtras::default() };
    let err = call.run_with_binding_limit(gpu, 200).unwrap_err();
    assert!(matches!(err, GpuError::TooLarge { .. }), "{err}");
}

/// Runs only where the adapter has f16 cooperative matrices (not lavapipe).
#[test]
fn coop_conv2d_matches_reference_when_adapter_has_cooperative_matrices() {
    let Some(gpu) = shared_gpu() else { return };
    if !crate::coop_or_skip(gpu, coop_conv_available(gpu, DType::F16)) {
        return;
    }
    let coop = Via::Kernel(MatmulKernel::Coop);
    for (i, &(x, cout, k, s, p, bias)) in CASES.iter().enumerate() {
        check_via(gpu, &case(x, cout, k, s, p, bias), DType::F16, 70 + i as u64, coop);
    }
    check_via(gpu, &case([2, 20, 9, 15], 130, 3, 1, 1, true), DType::F16, 80, coop);
    let opts = Conv2dOptions { stride: (2, 1), padding: (0, 2), dilation: (2, 1), activation: Activation::Gelu };
    check_via(
        gpu,
        &Case { x: [2, 7, 13, 9], w: [11, 7, 4, 2], bias: true, opts, batch_bias: false, residual: false },
        DType::F16,
        81,
        coop,
    );
    // Whole 128x128 blocks and several 32-channel steps, as in the UNet.
    check_via(gpu, &case([1, 96, 16, 16], 128, 3, 1, 1, true), DType::F16, 82, coop);
    check_via(gpu, &case([2, 9, 7, 9], 21, 3, 1, 1, true).fused(), DType::F16, 83, coop);
    check_via(gpu, &case([2, 96, 16, 16], 130, 3, 1, 1, true).fused(), DType::F16, 84, coop);
}

#[test]
fn conv2d_without_input_channels_gives_the_bias() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.upload(&[], &[1, 0, 2, 3], DType::F32).unwrap();
    let w = gpu.upload(&[], &[2, 0, 1, 1], DType::F32).unwrap();
    let b = gpu.upload(&[0.5, -1.0], &[2], DType::F32).unwrap();
    let y = conv2d(gpu, &x, &w, Some(&b), 1, 0).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]);
}
