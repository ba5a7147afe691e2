//! Flash-style multi-head attention against the f64 reference (explicit
//! score matrix): lengths that are not multiples of the 64-query and 32-key
//! blocks, SD's and CLIP's head dims, batch 2, causal and not, cross-attention,
//! custom scales, f32 and f16; bad shapes give errors.

use gpu::ops::attention::{AttentionOptions, attention, attention_kv, attention_qkv, coop_attention_available};
use gpu::ops::matmul::MatmulKernel;
use gpu::reference::attention::{self as r, AttentionShape};
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu, GpuError};

/// One attention configuration.
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    head_dim: usize,
    causal: bool,
    scale: Option<f32>,
    /// Inputs are uniform in `-range..range`.
    range: f32,
}

const fn case(batch: usize, lq: usize, lk: usize, heads: usize, head_dim: usize, causal: bool) -> Case {
    Case { batch, lq, lk, heads, head_dim, causal, scale: None, range: 1.0 }
}

fn check(gpu: &Gpu, c: Case, dtype: DType, tol: Tolerance, seed: u64) {
    check_with(gpu, c, dtype, tol, seed, MatmulKernel::Auto)
}

fn check_with(gpu: &Gpu, c: Case, dtype: DType, tol: Tolerance, seed: u64, kernel: MatmulKernel) {
    let hd = c.heads * c.head_dim;
    let stored = |d: Vec<f32>| if dtype == DType::F16 { round_f16(&d) } else { d };
    let q = stored(random(c.batch * c.lq * hd, seed, -c.range, c.range));
    let k = stored(random(c.batch * c.lk * hd, seed + 1, -c.range, c.range));
    let v = stored(random(c.batch * c.lk * hd, seed + 2, -1.0, 1.0));
    let up = |d: &[f32], l: usize| gpu.upload(d, &[c.batch, l, hd], dtype).unwrap();
    let opts = AttentionOptions { causal: c.causal, scale: c.scale, kernel, ..AttentionOptions::new(c.heads) };
    let out = attention(gpu, &up(&q, c.lq), &up(&k, c.lk), &up(&v, c.lk), opts).unwrap();
    assert_eq!(out.shape(), [c.batch, c.lq, hd]);
    assert_eq!(out.dtype(), dtype);
    let got = gpu.download(&out).unwrap();
    let shape = AttentionShape {
        batch: c.batch,
        lq: c.lq,
        lk: c.lk,
        heads: c.heads,
        head_dim: c.head_dim,
        causal: c.causal,
        scale: c.scale.map_or(1.0 / (c.head_dim as f64).sqrt(), |s| s as f64),
    };
    let want = r::attention(&q, &k, &v, shape);
    tol.check(&got, &want).unwrap_or_else(|e| panic!("{c:?} {dtype:?} {kernel:?}: {e}"));
}

/// Self-attention, cross-attention and CLIP-style causal cases over SD's
/// head dims; lengths straddle the 64-row and 32-key blocks.
const CASES: [Case; 6] = [
    // SD 1.5 first block: 8 heads of 40, self-attention.
    case(2, 77, 77, 8, 40, false),
    // Cross-attention onto a 77-token context, D = 80.
    case(2, 100, 77, 2, 80, false),
    // D = 160 with more keys than queries.
    case(2, 65, 257, 1, 160, false),
    // CLIP ViT-L text encoder: 12 heads of 64, causal, 77 tokens.
    case(2, 77, 77, 12, 64, true),
    // Causal over several query and key blocks.
    case(1, 257, 257, 1, 64, true),
    // Causal with Lq != Lk (query i still sees keys 0..=i).
    case(2, 100, 130, 2, 40, true),
];

#[test]
fn attention_matches_reference_for_sd_and_clip_shapes_in_f32() {
    let Some(gpu) = shared_gpu() else { return };
    for (i, &c) in CASES.iter().enumerate() {
        check(gpu, c, DType::F32, Tolerance::balanced(), 100 + 3 * i as u64);
    }
}

#[test]
fn attention_matches_reference_for_sd_and_clip_shapes_in_f16() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    for (i, &c) in CASES.iter().enumerate() {
        check_with(gpu, c, DType::F16, Tolerance::f16(), 200 + 3 * i as u64, MatmulKernel::Portable);
    }
}

/// Runs only where the adapter has f16 cooperative matrices (not lavapipe).
#[test]
fn coop_attention_matches_reference_when_adapter_has_cooperative_matrices() {
    let Some(gpu) = shared_gpu() else { return };
    if !coop_attention_available(gpu, DType::F16, 64) {
        eprintln!("skipped: {} has no usable f16 cooperative matrices", gpu.info.name);
        let q = gpu.zeros(&[1, 4, 16], DType::F32).unwrap();
        let opts = AttentionOptions { kernel: MatmulKernel::Coop, ..AttentionOptions::new(1) };
        // Asking for tensor cores where there are none is an error, not a fallback.
        assert!(matches!(attention(gpu, &q, &q, &q, opts), Err(GpuError::Shape(_))));
        return;
    }
    let coop = MatmulKernel::Coop;
    for (i, &c) in CASES.iter().enumerate() {
        check_with(gpu, c, DType::F16, Tolerance::f16(), 500 + 3 * i as u64, coop);
    }
    // Head dims off the 16-wide tiles, and SD 1.5's 40, 80 and 160 over many query and key blocks.
    for (i, d) in [1, 3, 20, 157].into_iter().enumerate() {
        check_with(gpu, case(2, 33, 45, 3, d, i % 2 == 1), DType::F16, Tolerance::f16(), 530 + i as u64, coop);
    }
    for (i, (l, heads, d)) in [(1024, 8, 40), (1024, 8, 80), (256, 8, 160)].into_iter().enumerate() {
        check_with(gpu, case(2, l, l, heads, d, false), DType::F16, Tolerance::f16(), 540 + i as u64, coop);
    }
    // Peaked scores (large logits) exercise the max/sum pass.
    let mut c = case(1, 70, 90, 2, 64, false);
    c.range = 6.0;
    check_with(gpu, c, DType::F16, Tolerance::f16(), 550, coop);
}

#[test]
fn attention_supports_head_dims_that_are_not_multiples_of_eight() {
    let Some(gpu) = shared_gpu() else { return };
    for (i, d) in [1, 3, 20, 157].into_iter().enumerate() {
        check(gpu, case(2, 33, 45, 3, d, i % 2 == 1), DType::F32, Tolerance::balanced(), 300 + 3 * i as u64);
    }
}

#[test]
fn attention_applies_a_custom_scale() {
    let Some(gpu) = shared_gpu() else { return };
    let c = Case { scale: Some(0.3), ..case(2, 70, 77, 4, 40, false) };
    check(gpu, c, DType::F32, Tolerance::balanced(), 400);
    let c = Case { scale: Some(1.0), ..case(1, 50, 50, 2, 16, true) };
    check(gpu, c, DType::F32, Tolerance::balanced(), 403);
}

#[test]
fn attention_rescales_correctly_when_scores_are_large_and_peaked() {
    let Some(gpu) = shared_gpu() else { return };
    // q, k in +-4 over D = 64 with scale 1: scores have a standard deviation
    // of ~43, so row maxima pass 100 (exp overflows f32 past 88.7 without the
    // max subtraction) and later key blocks often raise the running max,
    // which exercises the accumulator rescaling. Scores this size carry an
    // f32 rounding error of ~eps * sum|q k| = 6e-8 * 256 = 1.5e-5 (absolute,
    // in the exponent), which moves the weights and so the output by about
    // that much; allow 1e-4.
    let c = Case { scale: Some(1.0), range: 4.0, ..case(2, 70, 200, 2, 64, false) };
    check(gpu, c, DType::F32, Tolerance::rel_abs(1e-4, 1e-4), 500);
}

/// Rows of `[n, w]` blocks side by side: `[n, w * parts.len()]`.
fn side_by_side(parts: &[&[f32]], w: usize) -> Vec<f32> {
    let n = parts[0].len() / w;
    (0..n).flat_map(|i| parts.iter().flat_map(move |p| p[i * w..(i + 1) * w].iter().copied())).collect()
}

#[test]
fn packed_qkv_and_kv_projections_give_the_same_attention() {
    let Some(gpu) = shared_gpu() else { return };
    // SD's first level: 8 heads of 40, 2 x 77 positions; cross-attention onto 13 tokens.
    let (b, l, lk, heads, d) = (2, 77, 13, 8, 40);
    let hd = heads * d;
    let (q, k, v) =
        (random(b * l * hd, 400, -1.0, 1.0), random(b * l * hd, 401, -1.0, 1.0), random(b * l * hd, 402, -1.0, 1.0));
    let opts = AttentionOptions::new(heads);
    let shape =
        |lk| AttentionShape { batch: b, lq: l, lk, heads, head_dim: d, causal: false, scale: 1.0 / (d as f64).sqrt() };
    let qkv = gpu.upload(&side_by_side(&[&q, &k, &v], hd), &[b, l, 3 * hd], DType::F32).unwrap();
    let out = attention_qkv(gpu, &qkv, opts).unwrap();
    assert_eq!(out.shape(), [b, l, hd]);
    Tolerance::balanced().check(&gpu.download(&out).unwrap(), &r::attention(&q, &k, &v, shape(l))).unwrap();

    let (kc, vc) = (&k[..b * lk * hd], &v[..b * lk * hd]);
    let kv = gpu.upload(&side_by_side(&[kc, vc], hd), &[b, lk, 2 * hd], DType::F32).unwrap();
    let qt = gpu.upload(&q, &[b, l, hd], DType::F32).unwrap();
    let out = attention_kv(gpu, &qt, &kv, opts).unwrap();
    Tolerance::balanced().check(&gpu.download(&out).unwrap(), &r::attention(&q, kc, vc, shape(lk))).unwrap();

    // Widths that do not split into 3 (or 2) parts are errors.
    let bad = gpu.zeros(&[b, l, 3 * hd + 1], DType::F32).unwrap();
    assert!(matches!(attention_qkv(gpu, &bad, opts), Err(GpuError::Shape(_))));
    assert!(matches!(attention_kv(gpu, &qt, &bad, opts), Err(GpuError::Shape(_))));
}

#[test]
fn attention_rejects_bad_shapes() {
    let Some(gpu) = shared_gpu() else { return };
    let t = |shape: &[usize]| gpu.zeros(shape, DType::F32).unwrap();
    let shape_err = |r: Result<_, GpuError>| matches!(r, Err(GpuError::Shape(_)));
    let opts = AttentionOptions::new(2);
    let q = t(&[2, 10, 16]);
    let kv = t(&[2, 7, 16]);
    assert!(attention(gpu, &q, &kv, &kv, opts).is_ok());
    assert!(shape_err(attention(gpu, &q, &t(&[2, 7, 12]), &kv, opts)), "q/k head dim mismatch");
    assert!(shape_err(attention(gpu, &q, &kv, &t(&[2, 7, 12]), opts)), "q/v channel mismatch");
    assert!(shape_err(attention(gpu, &q, &kv, &kv, AttentionOptions::new(3))), "16 channels in 3 heads");
    assert!(shape_err(attention(gpu, &q, &kv, &kv, AttentionOptions::new(0))), "zero heads");
    assert!(shape_err(attention(gpu, &q, &kv, &t(&[2, 8, 16]), opts)), "k/v length mismatch");
    assert!(shape_err(attention(gpu, &q, &t(&[1, 7, 16]), &t(&[1, 7, 16]), opts)), "batch mismatch");
    assert!(shape_err(attention(gpu, &t(&[20, 16]), &kv, &kv, opts)), "rank 2 q");
    assert!(shape_err(attention(gpu, &t(&[1, 4, 2 * 161]), &t(&[1, 4, 2 * 161]), &t(&[1, 4, 2 * 161]), opts)), "D 161");
    assert!(shape_err(attention(gpu, &q, &t(&[2, 0, 16]), &t(&[2, 0, 16]), opts)), "no keys");
}
