//! The self-test: each tensor-core kernel against the portable kernel on the same small random
//! f16 problems (two shapes each: one of whole 128-wide blocks, one of sizes that are not
//! multiples of any tile, with the epilogue in use), and the decision of every verdict (tested,
//! cached, unavailable or off), with the one warning per failed kernel.

use std::time::Instant;

use super::cache::{self, Entry};
use super::{CoopKernel, KernelVerdict, Route, TensorCoreCheck, Verdict};
use crate::device::{Gpu, GpuError, block_on};
use crate::ops::attention::{self, AttentionOptions, coop_attention_available};
use crate::ops::conv2d::{Conv2dCall, Conv2dOptions, ConvExtras, coop_conv_available};
use crate::ops::matmul::{self, Activation, MatmulOptions, coop_available};
use crate::tensor::{DType, Tensor};
use crate::testing::random;

/// The bound on `|coop - portable|` per element is `ABS + REL * |portable|`. Both kernels read the
/// same f16 inputs, accumulate in f32 and round the result to f16 (2^-11 = 4.9e-4 relative each);
/// the coop attention kernel also rounds the softmax weights to f16 (another 2^-11 of max |v|);
/// summation order changes f32 sums by about K * 2^-24, nothing at K <= 300. The kernel tests hold
/// each kernel to 2e-3 + 2e-3 * |x| of the f64 reference (`Tolerance::f16`), so two right results
/// lie within twice that of each other. A wrong kernel (a tile mis-indexed, a K-step dropped) is
/// off by 0.1 to 1 at these magnitudes (|results| < 10).
const REL: f32 = 4e-3;
const ABS: f32 = 4e-3;

/// Every kernel's verdict for `gpu`: off, unavailable, from the cache file, or tested now.
pub(super) fn decide(gpu: &Gpu) -> Result<Vec<KernelVerdict>, GpuError> {
    let check = &gpu.tensor_cores;
    let routes: Vec<(CoopKernel, Result<Route, KernelVerdict>)> =
        CoopKernel::ALL.iter().map(|&k| (k, plan(gpu, check, k))).collect();
    if routes.iter().all(|(_, r)| r.is_err()) {
        return Ok(routes.into_iter().filter_map(|(_, r)| r.err()).collect());
    }
    // Work recorded before belongs to its caller: its errors surface here, not as the self-test's.
    gpu.sync()?;
    let cached = check.cache_file.as_deref().map(cache::load).unwrap_or_default();
    let mut fresh = Vec::new();
    let mut verdicts = Vec::new();
    for (kernel, r) in routes {
        let route = match r {
            Ok(route) => route,
            Err(untested) => {
                verdicts.push(untested);
                continue;
            }
        };
        let key = key(check, kernel, route);
        let stand_in = route == Route::StandIn;
        let v = match cached.iter().find(|e| e.same_key(&key)) {
            Some(e) => {
                KernelVerdict { kernel, verdict: e.verdict, detail: e.detail.clone(), cached: true, stand_in, ms: None }
            }
            None => {
                let v = test(gpu, kernel, route);
                fresh.push(Entry { verdict: v.verdict, detail: v.detail.clone(), ..key });
                v
            }
        };
        verdicts.push(v);
    }
    if let Some(path) = &check.cache_file
        && !fresh.is_empty()
    {
        cache::store(path, &fresh);
    }
    for v in verdicts.iter().filter(|v| v.verdict == Verdict::Failed) {
        warn_failed(gpu, v);
    }
    Ok(verdicts)
}

/// How `kernel` would be tested, or its verdict when it is not (off, unavailable).
fn plan(gpu: &Gpu, check: &TensorCoreCheck, kernel: CoopKernel) -> Result<Route, KernelVerdict> {
    if let Some(why) = check.off {
        return Err(KernelVerdict::untested(kernel, Verdict::Off, Some(why.to_string())));
    }
    let on_adapter = match kernel {
        CoopKernel::Matmul => coop_available(gpu, DType::F16),
        CoopKernel::Conv2d => coop_conv_available(gpu, DType::F16),
        CoopKernel::Attention => coop_attention_available(gpu, DType::F16, 80),
    };
    if on_adapter {
        Ok(Route::TensorCores)
    } else if check.stand_in_allowed(gpu) {
        Ok(Route::StandIn)
    } else {
        Err(KernelVerdict::untested(kernel, Verdict::Unavailable, None))
    }
}

/// The cache key of `kernel` tested on `route` (its verdict a placeholder).
fn key(check: &TensorCoreCheck, kernel: CoopKernel, route: Route) -> Entry {
    Entry {
        adapter: check.adapter.clone(),
        kernel: kernel.name().to_string(),
        shader_hash: cache::shader_hash(kernel),
        mode: check.fault.mode().to_string(),
        stand_in: route == Route::StandIn,
        verdict: Verdict::Failed,
        detail: None,
    }
}

/// One warning per failed kernel and `Gpu`: which kernel, on which adapter and driver, how far off.
fn warn_failed(gpu: &Gpu, v: &KernelVerdict) {
    let a = &gpu.tensor_cores.adapter;
    let how = if v.cached { "failed its self-test (verdict cached)" } else { "failed its self-test" };
    let stand_in = if v.stand_in { " [the portable kernel standing in, test switch]" } else { "" };
    log::warn!(
        "tensor-core kernel {} {how} on {} ({}, driver {} {}){stand_in}: {}; using the portable kernel instead",
        v.kernel.name(),
        a.name,
        a.backend,
        a.driver,
        a.driver_info,
        v.detail.as_deref().unwrap_or("")
    );
}

/// Runs `kernel`'s problems on the portable kernel and on `route`, under error scopes so that a
/// pipeline the driver rejects is this kernel's failure, not an error for some later call.
fn test(gpu: &Gpu, kernel: CoopKernel, route: Route) -> KernelVerdict {
    let t0 = Instant::now();
    let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = gpu.device.push_error_scope(wgpu::ErrorFilter::Internal);
    let outcome = problems(gpu, kernel, route);
    // Submit what an early error left recorded, so its errors land in the scopes too.
    gpu.flush();
    let scoped = [block_on(internal.pop()), block_on(validation.pop())].into_iter().flatten().next();
    let (verdict, detail) = match (outcome, scoped) {
        (_, Some(e)) => (Verdict::Failed, format!("GPU error: {e}")),
        (Err(e), None) => (Verdict::Failed, format!("error: {e}")),
        (Ok(results), None) => match compare_all(&results) {
            Ok(max) => (Verdict::Passed, format!("max difference {max:.1e}")),
            Err(mismatch) => (Verdict::Failed, mismatch),
        },
    };
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    KernelVerdict {
        kernel,
        verdict,
        detail: Some(detail),
        cached: false,
        stand_in: route == Route::StandIn,
        ms: Some(ms),
    }
}

/// One problem's description and its results on the portable kernel and on the tested route.
struct Compared {
    problem: &'static str,
    portable: Vec<f32>,
    coop: Vec<f32>,
}

/// The largest difference over every problem, or the first mismatch described.
fn compare_all(results: &[Compared]) -> Result<f32, String> {
    let mut max = 0f32;
    for c in results {
        max = max.max(compare(c)?);
    }
    Ok(max)
}

/// The largest `|coop - portable|` when every element is within the bound (NaN never is); else
/// how many are not and the worst (by its excess over the bound).
fn compare(c: &Compared) -> Result<f32, String> {
    if c.portable.len() != c.coop.len() {
        return Err(format!("{}: {} values against {}", c.problem, c.coop.len(), c.portable.len()));
    }
    let (mut max, mut bad, mut worst) = (0f32, 0usize, None::<(usize, f32)>);
    for (i, (&p, &q)) in c.portable.iter().zip(&c.coop).enumerate() {
        let diff = (q - p).abs();
        let excess = if diff.is_nan() { f32::INFINITY } else { diff / (ABS + REL * p.abs()) };
        if excess > 1.0 {
            bad += 1;
            if worst.is_none_or(|(_, w)| excess > w) {
                worst = Some((i, excess));
            }
        }
        max = max.max(diff);
    }
    match worst {
        None => Ok(max),
        Some((i, _)) => Err(format!(
            "{bad} of {} values off on {}; worst at element {i}: tensor cores {}, portable {}, off by {:.3e} \
             (tolerance {ABS:e} + {REL:e} x |portable|)",
            c.portable.len(),
            c.problem,
            c.coop[i],
            c.portable[i],
            (c.coop[i] - c.portable[i]).abs()
        )),
    }
}

/// Seeded values in `-range..range`, stored as f16.
fn rand(gpu: &Gpu, shape: &[usize], seed: u64, range: f32) -> Result<Tensor, GpuError> {
    gpu.upload(&random(shape.iter().product(), seed, -range, range), shape, DType::F16)
}

/// `run` on the portable kernel and on `route`, read back.
fn both(
    gpu: &Gpu,
    problem: &'static str,
    route: Route,
    run: impl Fn(Route) -> Result<Tensor, GpuError>,
) -> Result<Compared, GpuError> {
    let portable = gpu.download(&run(Route::Portable)?)?;
    let coop = gpu.download(&run(route)?)?;
    Ok(Compared { problem, portable, coop })
}

fn problems(gpu: &Gpu, kernel: CoopKernel, route: Route) -> Result<Vec<Compared>, GpuError> {
    match kernel {
        CoopKernel::Matmul => matmul_problems(gpu, route),
        CoopKernel::Conv2d => conv2d_problems(gpu, route),
        CoopKernel::Attention => attention_problems(gpu, route),
    }
}

/// Whole 128x128 blocks (the fast path), then a batched `linear` with odd sizes, a bias and GELU.
fn matmul_problems(gpu: &Gpu, route: Route) -> Result<Vec<Compared>, GpuError> {
    let (a, b) = (rand(gpu, &[128, 64], 1, 1.0)?, rand(gpu, &[64, 128], 2, 0.25)?);
    let plain = MatmulOptions::default();
    let blocks = both(gpu, "matmul [128, 64] x [64, 128]", route, |r| matmul::run_routed(gpu, &a, &b, &plain, r))?;
    let (x, w, bias) = (rand(gpu, &[2, 37, 45], 3, 1.0)?, rand(gpu, &[61, 45], 4, 0.25)?, rand(gpu, &[61], 5, 1.0)?);
    let opts =
        MatmulOptions { transpose_b: true, bias: Some(&bias), activation: Activation::Gelu, ..Default::default() };
    let odd = both(gpu, "linear [2, 37, 45] x [61, 45]^T + bias, GELU", route, |r| {
        matmul::run_routed(gpu, &x, &w, &opts, r)
    })?;
    Ok(vec![blocks, odd])
}

/// A 3x3 conv of 128 output channels over a 32-channel step (whole blocks), then a strided one
/// with odd sizes, a bias and SiLU.
fn conv2d_problems(gpu: &Gpu, route: Route) -> Result<Vec<Compared>, GpuError> {
    let (x, w, b) =
        (rand(gpu, &[1, 32, 16, 16], 6, 1.0)?, rand(gpu, &[128, 32, 3, 3], 7, 0.1)?, rand(gpu, &[128], 8, 1.0)?);
    let pad = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let blocks = both(gpu, "conv2d [1, 32, 16, 16] * [128, 32, 3, 3], padding 1", route, |r| {
        Conv2dCall { x: &x, weight: &w, bias: Some(&b), opts: &pad, extras: ConvExtras::default() }.run_routed(gpu, r)
    })?;
    let (x, w, b) =
        (rand(gpu, &[2, 5, 9, 7], 9, 1.0)?, rand(gpu, &[11, 5, 3, 3], 10, 0.3)?, rand(gpu, &[11], 11, 1.0)?);
    let opts = Conv2dOptions { stride: (2, 2), padding: (1, 1), activation: Activation::Silu, ..Default::default() };
    let odd = both(gpu, "conv2d [2, 5, 9, 7] * [11, 5, 3, 3], stride 2, padding 1, bias, SiLU", route, |r| {
        Conv2dCall { x: &x, weight: &w, bias: Some(&b), opts: &opts, extras: ConvExtras::default() }.run_routed(gpu, r)
    })?;
    Ok(vec![blocks, odd])
}

/// SD 1.5's head dims: cross-attention over CLIP's 77 tokens with D = 40 (not a multiple of the
/// 16-wide tiles), then causal self-attention with D = 80.
fn attention_problems(gpu: &Gpu, route: Route) -> Result<Vec<Compared>, GpuError> {
    let (q, k, v) =
        (rand(gpu, &[1, 70, 80], 12, 1.0)?, rand(gpu, &[1, 77, 80], 13, 1.0)?, rand(gpu, &[1, 77, 80], 14, 1.0)?);
    let cross = both(gpu, "attention q [1, 70, 2x40], k/v [1, 77, 2x40]", route, |r| {
        attention::run_routed(gpu, &q, &k, &v, AttentionOptions::new(2), r)
    })?;
    let (q, k, v) =
        (rand(gpu, &[2, 64, 80], 15, 1.0)?, rand(gpu, &[2, 64, 80], 16, 1.0)?, rand(gpu, &[2, 64, 80], 17, 1.0)?);
    let causal = AttentionOptions { causal: true, ..AttentionOptions::new(1) };
    let selfattn =
        both(gpu, "causal attention [2, 64, 1x80]", route, |r| attention::run_routed(gpu, &q, &k, &v, causal, r))?;
    Ok(vec![cross, selfattn])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compared(portable: &[f32], coop: &[f32]) -> Compared {
        Compared { problem: "p", portable: portable.to_vec(), coop: coop.to_vec() }
    }

    #[test]
    fn compare_allows_f16_rounding_and_names_the_worst_element() {
        // One f16 ulp at 2.0 is 2^-10 * 2 ~ 2e-3: within the bound.
        assert!(compare(&compared(&[2.0, 0.0, -1.0], &[2.002, 0.003, -1.0])).is_ok());
        // Worst by excess over the bound: 2 off at 5 (bound 0.024) beats 0.1 off at 0 (bound 0.004).
        let err = compare(&compared(&[2.0, 0.0, -1.0, 5.0], &[2.0, 0.1, -1.0, 7.0])).unwrap_err();
        assert!(err.starts_with("2 of 4 values off on p; worst at element 3: tensor cores 7, portable 5"), "{err}");
        let err = compare(&compared(&[1.0, 1.0], &[1.0, f32::NAN])).unwrap_err();
        assert!(err.contains("element 1"), "{err}");
        assert!(compare(&compared(&[1.0], &[1.0, 2.0])).is_err());
    }
}
