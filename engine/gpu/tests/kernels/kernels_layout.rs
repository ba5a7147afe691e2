//! Data movement kernels (slice, permute, concat, nearest upsampling, pixel
//! shuffle/unshuffle) against the reference index maps. They move bits
//! without arithmetic, so results must be bitwise equal, in f32 and f16,
//! including NaN, infinities and -0.

use gpu::ops::layout::{
    concat, permute, pixel_shuffle, pixel_unshuffle, slice, transpose_last2, upsample_nearest, upsample_nearest2x,
};
use gpu::reference::layout as r;
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::{DType, Gpu, GpuError, Tensor};

/// Random data with special values sprinkled in (they must pass through untouched).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut v = random(n, seed, -3.0, 3.0);
    for (k, s) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 65504.0].into_iter().enumerate() {
        if n > 0 {
            v[(k * 7919) % n] = s;
        }
    }
    v
}

/// The dtypes this adapter stores.
fn dtypes(gpu: &Gpu) -> Vec<DType> {
    if gpu.features().shader_f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

/// Uploads `data` as `dtype`, returning the tensor and the values it holds.
fn upload(gpu: &Gpu, data: &[f32], shape: &[usize], dtype: DType) -> (Tensor, Vec<f32>) {
    let held = if dtype == DType::F16 { round_f16(data) } else { data.to_vec() };
    (gpu.upload(data, shape, dtype).unwrap(), held)
}

fn assert_bitwise(gpu: &Gpu, y: &Tensor, want: &[f32], what: &str) {
    let got = gpu.download(y).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i}: got {g}, want {w}");
    }
}

fn shape_error(r: Result<Tensor, GpuError>, needle: &str) {
    match r {
        Err(GpuError::Shape(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn upsample_nearest_matches_reference_bitwise() {
    let Some(gpu) = shared_gpu() else { return };
    for dtype in dtypes(gpu) {
        for (k, shape) in [[2, 3, 5, 7], [1, 1, 1, 1], [1, 4, 17, 33]].into_iter().enumerate() {
            let (x, held) = upload(gpu, &data(shape.iter().product(), k as u64), &shape, dtype);
            let y = upsample_nearest2x(gpu, &x).unwrap();
            assert_eq!(y.shape(), [shape[0], shape[1], shape[2] * 2, shape[3] * 2]);
            assert_bitwise(gpu, &y, &r::upsample_nearest(&held, shape, 2), &format!("2x {dtype:?} {shape:?}"));
            let y3 = upsample_nearest(gpu, &x, 3).unwrap();
            assert_bitwise(gpu, &y3, &r::upsample_nearest(&held, shape, 3), &format!("3x {dtype:?} {shape:?}"));
        }
    }
}

#[test]
fn upsample_refuses_non_4d_input_and_zero_scale() {
    let Some(gpu) = shared_gpu() else { return };
    shape_error(upsample_nearest2x(gpu, &gpu.zeros(&[3, 4, 5], DType::F32).unwrap()), "[B, C, H, W]");
    shape_error(upsample_nearest(gpu, &gpu.zeros(&[1, 3, 4, 5], DType::F32).unwrap(), 0), "scale");
}

#[test]
fn pixel_shuffle_and_unshuffle_match_reference_bitwise_and_invert_each_other() {
    let Some(gpu) = shared_gpu() else { return };
    for dtype in dtypes(gpu) {
        for (k, (shape, rr)) in
            [([2, 12, 5, 7], 2), ([1, 18, 3, 4], 3), ([2, 3, 4, 5], 1), ([1, 64, 9, 11], 4)].into_iter().enumerate()
        {
            let (x, held) = upload(gpu, &data(shape.iter().product(), 20 + k as u64), &shape, dtype);
            let y = pixel_shuffle(gpu, &x, rr).unwrap();
            assert_eq!(y.shape(), [shape[0], shape[1] / (rr * rr), shape[2] * rr, shape[3] * rr]);
            let want = r::pixel_shuffle(&held, shape, rr);
            assert_bitwise(gpu, &y, &want, &format!("shuffle {dtype:?} {shape:?} r={rr}"));
            let back = pixel_unshuffle(gpu, &y, rr).unwrap();
            assert_eq!(back.shape(), shape);
            assert_bitwise(gpu, &back, &held, &format!("unshuffle(shuffle) {dtype:?} {shape:?}"));
        }
        // RealESRGAN x2's input: unshuffle by 2 of an RGB image, odd channel count.
        let shape = [2, 3, 6, 10];
        let (x, held) = upload(gpu, &data(360, 30), &shape, dtype);
        let y = pixel_unshuffle(gpu, &x, 2).unwrap();
        assert_eq!(y.shape(), [2, 12, 3, 5]);
        assert_bitwise(gpu, &y, &r::pixel_unshuffle(&held, shape, 2), &format!("unshuffle {dtype:?}"));
    }
}

#[test]
fn pixel_ops_take_extra_leading_dims_as_batch() {
    let Some(gpu) = shared_gpu() else { return };
    let (x, held) = upload(gpu, &data(2 * 3 * 8 * 2 * 3, 31), &[2, 3, 8, 2, 3], DType::F32);
    let y = pixel_shuffle(gpu, &x, 2).unwrap();
    assert_eq!(y.shape(), [2, 3, 2, 4, 6]);
    assert_bitwise(gpu, &y, &r::pixel_shuffle(&held, [6, 8, 2, 3], 2), "5-d shuffle");
    let (x, held) = upload(gpu, &data(12, 32), &[3, 2, 2], DType::F32);
    let y = pixel_unshuffle(gpu, &x, 2).unwrap();
    assert_eq!(y.shape(), [12, 1, 1]);
    assert_bitwise(gpu, &y, &r::pixel_unshuffle(&held, [1, 3, 2, 2], 2), "3-d unshuffle");
}

#[test]
fn pixel_ops_refuse_indivisible_shapes() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.zeros(&[1, 6, 4, 4], DType::F32).unwrap();
    shape_error(pixel_shuffle(gpu, &x, 2), "r*r");
    shape_error(pixel_shuffle(gpu, &x, 0), "r*r");
    shape_error(pixel_unshuffle(gpu, &x, 3), "divide by r");
    shape_error(pixel_unshuffle(gpu, &gpu.zeros(&[4, 4], DType::F32).unwrap(), 2), "[*, C, H, W]");
}

#[test]
fn concat_matches_reference_bitwise_along_every_axis() {
    let Some(gpu) = shared_gpu() else { return };
    for dtype in dtypes(gpu) {
        let base = [2, 3, 5, 7];
        for axis in 0..4 {
            // Three inputs of sizes 1, base and 4 along the axis (the middle one the largest).
            let shapes: Vec<[usize; 4]> = [1, base[axis], 4]
                .iter()
                .map(|&n| {
                    let mut s = base;
                    s[axis] = n;
                    s
                })
                .collect();
            let inputs: Vec<(Tensor, Vec<f32>)> = shapes
                .iter()
                .enumerate()
                .map(|(k, s)| upload(gpu, &data(s.iter().product(), 50 + k as u64), s, dtype))
                .collect();
            let refs: Vec<&Tensor> = inputs.iter().map(|i| &i.0).collect();
            let y = concat(gpu, &refs, axis as isize).unwrap();
            let mut out = base;
            out[axis] = 5 + base[axis];
            assert_eq!(y.shape(), out);
            let parts: Vec<(&[f32], &[usize])> = inputs.iter().zip(&shapes).map(|(i, s)| (&i.1[..], &s[..])).collect();
            assert_bitwise(gpu, &y, &r::concat(&parts, axis), &format!("concat {dtype:?} axis {axis}"));
            // Negative axes count from the end.
            let y2 = concat(gpu, &refs, axis as isize - 4).unwrap();
            assert_bitwise(gpu, &y2, &r::concat(&parts, axis), &format!("concat {dtype:?} axis {}", axis as isize - 4));
        }
    }
}

#[test]
fn concat_of_unet_skip_connection_along_channels_with_batch() {
    let Some(gpu) = shared_gpu() else { return };
    // [B, C1, H, W] ++ [B, C2, H, W] -> [B, C1 + C2, H, W], sizes off the workgroup grid.
    let (a, ha) = upload(gpu, &data(2 * 13 * 9 * 11, 60), &[2, 13, 9, 11], DType::F32);
    let (b, hb) = upload(gpu, &data(2 * 6 * 9 * 11, 61), &[2, 6, 9, 11], DType::F32);
    let empty = gpu.zeros(&[2, 0, 9, 11], DType::F32).unwrap();
    let y = concat(gpu, &[&a, &empty, &b], 1).unwrap();
    assert_eq!(y.shape(), [2, 19, 9, 11]);
    let want = r::concat(&[(&ha, &[2, 13, 9, 11]), (&hb, &[2, 6, 9, 11])], 1);
    assert_bitwise(gpu, &y, &want, "skip concat");
    // A single input is a copy.
    assert_bitwise(gpu, &concat(gpu, &[&a], 1).unwrap(), &ha, "single concat");
}

#[test]
fn concat_refuses_mismatched_shapes_dtypes_axes_and_empty_lists() {
    let Some(gpu) = shared_gpu() else { return };
    let a = gpu.zeros(&[2, 3, 4], DType::F32).unwrap();
    let b = gpu.zeros(&[2, 5, 5], DType::F32).unwrap();
    let c = gpu.zeros(&[2, 3], DType::F32).unwrap();
    shape_error(concat(gpu, &[&a, &b], 1), "differ off that axis");
    shape_error(concat(gpu, &[&a, &c], 0), "differ off that axis");
    shape_error(concat(gpu, &[&a, &a], 3), "out of range");
    shape_error(concat(gpu, &[&a, &a], -4), "out of range");
    shape_error(concat(gpu, &[], 0), "no tensors");
    if gpu.features().shader_f16 {
        let h = gpu.zeros(&[2, 3, 4], DType::F16).unwrap();
        shape_error(concat(gpu, &[&a, &h], 0), "dtypes");
    }
}

#[test]
fn slice_matches_reference_bitwise_along_every_axis() {
    let Some(gpu) = shared_gpu() else { return };
    for dtype in dtypes(gpu) {
        let shape = [4, 3, 9, 11];
        let (x, held) = upload(gpu, &data(shape.iter().product(), 70), &shape, dtype);
        for axis in 0..4 {
            let n = shape[axis];
            for (start, len) in [(0, n), (1, n - 2), (n - 1, 1), (n / 2, 0)] {
                let y = slice(gpu, &x, axis as isize, start, len).unwrap();
                let mut out = shape;
                out[axis] = len;
                assert_eq!(y.shape(), out);
                let want = r::slice(&held, &shape, axis, start, len);
                assert_bitwise(gpu, &y, &want, &format!("slice {dtype:?} axis {axis} {start}+{len}"));
            }
        }
        // CFG's batch split: the halves of a [2B, ...] tensor.
        let (lo, hi) = (slice(gpu, &x, 0, 0, 2).unwrap(), slice(gpu, &x, -4, 2, 2).unwrap());
        let half = held.len() / 2;
        assert_bitwise(gpu, &lo, &held[..half], "batch half 0");
        assert_bitwise(gpu, &hi, &held[half..], "batch half 1");
    }
}

#[test]
fn slice_refuses_out_of_range_requests() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.zeros(&[4, 3], DType::F32).unwrap();
    shape_error(slice(gpu, &x, 0, 3, 2), "out of range");
    shape_error(slice(gpu, &x, 1, 0, 4), "out of range");
    shape_error(slice(gpu, &x, 2, 0, 1), "out of range");
    shape_error(slice(gpu, &x, 0, usize::MAX, 2), "out of range");
}

#[test]
fn permute_matches_reference_bitwise() {
    let Some(gpu) = shared_gpu() else { return };
    let cases: [(&[usize], &[usize]); 7] = [
        (&[2, 13, 37], &[0, 2, 1]),
        (&[3, 4, 5, 6], &[0, 2, 3, 1]),
        (&[3, 4, 5, 6], &[3, 2, 1, 0]),
        (&[2, 3, 4, 5, 6], &[4, 0, 3, 1, 2]),
        (&[2, 3, 4, 5, 6, 2], &[5, 4, 3, 2, 1, 0]),
        (&[300, 257], &[1, 0]),
        (&[7], &[0]),
    ];
    for dtype in dtypes(gpu) {
        for (k, (shape, perm)) in cases.iter().enumerate() {
            let (x, held) = upload(gpu, &data(shape.iter().product(), 80 + k as u64), shape, dtype);
            let y = permute(gpu, &x, perm).unwrap();
            let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            assert_eq!(y.shape(), out.as_slice());
            assert_bitwise(gpu, &y, &r::permute(&held, shape, perm), &format!("permute {dtype:?} {shape:?} {perm:?}"));
        }
    }
}

#[test]
fn transpose_last2_swaps_sequence_and_channels_and_back() {
    let Some(gpu) = shared_gpu() else { return };
    // [B, C, HW] -> [B, HW, C] -> [B, C, HW], as around attention blocks.
    let (x, held) = upload(gpu, &data(2 * 40 * 63, 90), &[2, 40, 63], DType::F32);
    let t = transpose_last2(gpu, &x).unwrap();
    assert_eq!(t.shape(), [2, 63, 40]);
    assert_bitwise(gpu, &t, &r::permute(&held, &[2, 40, 63], &[0, 2, 1]), "transpose");
    assert_bitwise(gpu, &transpose_last2(gpu, &t).unwrap(), &held, "transpose back");
    shape_error(transpose_last2(gpu, &gpu.zeros(&[5], DType::F32).unwrap()), "at least 2 dims");
}

#[test]
fn permute_refuses_non_permutations() {
    let Some(gpu) = shared_gpu() else { return };
    let x = gpu.zeros(&[2, 3, 4], DType::F32).unwrap();
    for perm in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3], &[0, 1, 2, 3]] {
        shape_error(permute(gpu, &x, perm), "not a permutation");
    }
}

#[test]
fn upsample_output_larger_than_one_binding_is_written_in_windows() {
    let Some(gpu) = shared_gpu() else { return };
    let limit = gpu.limits.max_storage_buffer_binding_size as usize;
    if limit > 256 << 20 {
        eprintln!("skipped: binding limit {limit} makes the test tensor too large");
        return;
    }
    // The output is just over one binding, as in a VAE decoder's last upsample.
    let (c, w) = (2, 1024);
    let h = limit / 4 / (4 * c * w) + 3;
    let n = c * h * w;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let xt = gpu.upload(&x, &[1, c, h, w], DType::F32).unwrap();
    let y = gpu.download(&upsample_nearest2x(gpu, &xt).unwrap()).unwrap();
    assert_eq!(y.len(), 4 * n);
    for (i, &v) in y.iter().enumerate() {
        let (ch, oh, ow) = (i / (4 * h * w), i / (2 * w) % (2 * h), i % (2 * w));
        assert_eq!(v, x[(ch * h + oh / 2) * w + ow / 2], "element {i}");
    }
}
