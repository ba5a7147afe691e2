//! The tensor-core self-test, on any adapter: under the test switch (`TensorCoreFault`) the coop
//! results are corrupted (on lavapipe, which has no tensor cores, the portable kernel stands in
//! for the coop one), so every kernel must fail its self-test, `Auto` must still give the right
//! results (the portable path) and `Coop` must be refused naming the verdict; with a correct
//! stand-in every kernel passes. Verdicts are cached per adapter, driver and kernel source.

use std::path::{Path, PathBuf};

use gpu::ops::attention::{AttentionOptions, attention, coop_attention_available};
use gpu::ops::conv2d::{Conv2dCall, Conv2dOptions, ConvExtras, coop_conv_available};
use gpu::ops::matmul::{MatmulKernel, MatmulOptions, coop_available, matmul_with_kernel};
use gpu::reference;
use gpu::tensor_cores::{CoopKernel, KernelVerdict, TensorCoreFault, Verdict};
use gpu::testing::{random, round_f16, shared_gpu};
use gpu::tolerance::Tolerance;
use gpu::{DType, Gpu, GpuError, GpuOptions};

/// A `Gpu` of its own with the switch and cache file (the shared one has neither), on the adapter
/// the tests use (`SDGRAPH_ADAPTER`); `None` (skipped) where it has no f16 for the stand-in.
fn open(fault: TensorCoreFault, cache: Option<PathBuf>) -> Option<Gpu> {
    let shared = shared_gpu()?;
    if !shared.features().shader_f16 {
        eprintln!("skipped: {} has no f16, so nothing can stand in for the tensor-core kernels", shared.info.name);
        return None;
    }
    let env = GpuOptions::from_settings(|name| std::env::var(name).ok());
    let opts = GpuOptions { tensor_core_fault: fault, tensor_core_cache: cache, no_tensor_cores: false, ..env };
    Some(Gpu::new(&opts).expect("the adapter the shared GPU opened"))
}

/// Whether the adapter has the real kernel (else the portable one stands in).
fn on_adapter(gpu: &Gpu, kernel: CoopKernel) -> bool {
    match kernel {
        CoopKernel::Matmul => coop_available(gpu, DType::F16),
        CoopKernel::Conv2d => coop_conv_available(gpu, DType::F16),
        CoopKernel::Attention => coop_attention_available(gpu, DType::F16, 80),
    }
}

fn verdicts(gpu: &Gpu) -> Vec<KernelVerdict> {
    gpu.tensor_core_verdicts().unwrap().to_vec()
}

fn temp_cache(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sdgraph-tc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("tensor-core-check.json")
}

fn f16(gpu: &Gpu, shape: &[usize], seed: u64) -> (gpu::Tensor, Vec<f32>) {
    let data = round_f16(&random(shape.iter().product(), seed, -1.0, 1.0));
    (gpu.upload(&data, shape, DType::F16).unwrap(), data)
}

/// f16 matmul, conv2d and attention on `kernel` against the f64 references (f16 tolerance: the
/// corruption, 0.5 in one element, is far outside it).
fn ops_match_references(gpu: &Gpu, kernel: MatmulKernel) -> Result<(), String> {
    let tol = Tolerance::f16();
    let ((a, ad), (b, bd)) = (f16(gpu, &[37, 45], 1), f16(gpu, &[45, 61], 2));
    let c = matmul_with_kernel(gpu, &a, &b, &MatmulOptions::default(), kernel).map_err(|e| e.to_string())?;
    let (want, _) = reference::matmul::matmul(&ad, &[37, 45], &bd, &[45, 61], false, false, None);
    tol.check(&gpu.download(&c).unwrap(), &want).map_err(|e| format!("matmul: {e}"))?;

    let ((x, xd), (w, wd)) = (f16(gpu, &[1, 5, 9, 7], 3), f16(gpu, &[11, 5, 3, 3], 4));
    let opts = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let y = Conv2dCall { x: &x, weight: &w, bias: None, opts: &opts, extras: ConvExtras::default() }
        .run(gpu, kernel)
        .map_err(|e| e.to_string())?;
    let (want, _) = reference::conv2d::conv2d(&xd, [1, 5, 9, 7], &wd, [11, 5, 3, 3], None, (1, 1), (1, 1), (1, 1));
    tol.check(&gpu.download(&y).unwrap(), &want).map_err(|e| format!("conv2d: {e}"))?;

    let ((q, qd), (k, kd), (v, vd)) = (f16(gpu, &[1, 33, 80], 5), f16(gpu, &[1, 33, 80], 6), f16(gpu, &[1, 33, 80], 7));
    let o = attention(gpu, &q, &k, &v, AttentionOptions { kernel, ..AttentionOptions::new(2) })
        .map_err(|e| e.to_string())?;
    let shape = reference::attention::AttentionShape {
        batch: 1,
        lq: 33,
        lk: 33,
        heads: 2,
        head_dim: 40,
        causal: false,
        scale: 1.0 / 40f64.sqrt(),
    };
    let want = reference::attention::attention(&qd, &kd, &vd, shape);
    tol.check(&gpu.download(&o).unwrap(), &want).map_err(|e| format!("attention: {e}"))
}

#[test]
fn corrupted_tensor_cores_fail_the_self_test_and_auto_falls_back_to_the_portable_kernels() {
    let Some(gpu) = open(TensorCoreFault::Corrupt, None) else { return };
    let all = verdicts(&gpu);
    assert_eq!(all.iter().map(|v| v.kernel).collect::<Vec<_>>(), CoopKernel::ALL);
    for v in &all {
        assert_eq!(v.verdict, Verdict::Failed, "{v:?}");
        assert!(!v.cached && v.ms.is_some_and(|ms| ms > 0.0), "{v:?}");
        assert_eq!(v.stand_in, !on_adapter(&gpu, v.kernel), "{v:?}");
        // The corruption is 0.5 in one element: the detail says how far off and where.
        let summary = v.summary();
        assert!(summary.starts_with("FAILED (1 of ") && summary.contains("off by 5.000e-1"), "{summary}");
    }
    // Auto takes the portable kernels, which are right; without the fallback it would take the
    // corrupted path and miss by 0.5.
    ops_match_references(&gpu, MatmulKernel::Auto).unwrap();
    // Asking for the failed kernels by name is an error naming the verdict.
    let (a, _) = f16(&gpu, &[4, 8], 1);
    let err = matmul_with_kernel(
        &gpu,
        &a,
        &a,
        &MatmulOptions { transpose_b: true, ..Default::default() },
        MatmulKernel::Coop,
    )
    .unwrap_err();
    let GpuError::Shape(msg) = err else { panic!("{err:?}") };
    assert!(msg.contains("tensor-core kernel matmul_coop is not used") && msg.contains("FAILED (1 of "), "{msg}");
    let err = ops_match_references(&gpu, MatmulKernel::Coop).unwrap_err();
    assert!(err.contains("matmul_coop"), "{err}");
}

#[test]
fn a_correct_stand_in_passes_the_self_test() {
    let Some(gpu) = open(TensorCoreFault::Correct, None) else { return };
    for v in verdicts(&gpu) {
        assert_eq!(v.verdict, Verdict::Passed, "{v:?}");
        assert_eq!(v.summary(), "passed");
        assert!(v.detail.as_deref().is_some_and(|d| d.starts_with("max difference")), "{v:?}");
    }
    ops_match_references(&gpu, MatmulKernel::Auto).unwrap();
    // The passed kernels (or their stand-ins) may be asked for by name.
    ops_match_references(&gpu, MatmulKernel::Coop).unwrap();
}

/// Reads the cache file as JSON.
fn read_cache(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Edits the cached entry of `kernel`: `field` of the entry (or of its adapter) set to `value`.
fn edit_entry(path: &Path, kernel: &str, field: &str, value: &str) {
    let mut file = read_cache(path);
    let entry = file["entries"].as_array_mut().unwrap().iter_mut().find(|e| e["kernel"] == kernel).unwrap();
    if entry.get(field).is_some() {
        entry[field] = value.into();
    } else {
        entry["adapter"][field] = value.into();
    }
    std::fs::write(path, serde_json::to_vec(&file).unwrap()).unwrap();
}

fn cached(gpu: &Gpu) -> Vec<(CoopKernel, bool)> {
    verdicts(gpu).iter().map(|v| (v.kernel, v.cached)).collect()
}

#[test]
fn verdicts_are_cached_per_adapter_driver_and_kernel_source() {
    let path = temp_cache("cached");
    let Some(first) = open(TensorCoreFault::Corrupt, Some(path.clone())) else { return };
    assert!(verdicts(&first).iter().all(|v| v.verdict == Verdict::Failed && !v.cached));
    let file = read_cache(&path);
    let entries = file["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{file:#}");
    for (e, k) in entries.iter().zip(CoopKernel::ALL) {
        assert_eq!(e["kernel"], k.name());
        assert_eq!(e["verdict"], "failed");
        assert_eq!(e["mode"], "test-corrupt");
        assert_eq!(e["adapter"]["name"], first.info.name.as_str());
    }
    // A second Gpu (as a second process would) reads every verdict, tests nothing.
    let [m, c, a] = CoopKernel::ALL;
    let second = open(TensorCoreFault::Corrupt, Some(path.clone())).unwrap();
    assert_eq!(cached(&second), [(m, true), (c, true), (a, true)]);
    assert!(verdicts(&second).iter().all(|v| v.verdict == Verdict::Failed && v.ms.is_none()));
    // A changed kernel source or driver is another key: those kernels are tested again.
    edit_entry(&path, "matmul_coop", "shader_hash", "0123456789abcdef");
    edit_entry(&path, "conv2d_coop", "driver_info", "Mesa 99.0");
    let third = open(TensorCoreFault::Corrupt, Some(path.clone())).unwrap();
    assert_eq!(cached(&third), [(m, false), (c, false), (a, true)]);
    // The verdicts of the other test mode are not these.
    let correct = open(TensorCoreFault::Correct, Some(path.clone())).unwrap();
    assert!(verdicts(&correct).iter().all(|v| v.verdict == Verdict::Passed && !v.cached));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_corrupt_or_unwritable_cache_file_is_not_an_error() {
    let path = temp_cache("corrupt");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{ half a fi").unwrap();
    let Some(gpu) = open(TensorCoreFault::Corrupt, Some(path.clone())) else { return };
    assert!(verdicts(&gpu).iter().all(|v| v.verdict == Verdict::Failed && !v.cached));
    // Rewritten whole.
    assert_eq!(read_cache(&path)["entries"].as_array().unwrap().len(), 3);
    // A folder where the file should be: nothing can be written, the verdicts still come.
    let blocked = path.parent().unwrap().join("blocked.json");
    std::fs::create_dir_all(blocked.join("x")).unwrap();
    let gpu = open(TensorCoreFault::Correct, Some(blocked)).unwrap();
    assert!(verdicts(&gpu).iter().all(|v| v.verdict == Verdict::Passed && !v.cached));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn without_the_switch_verdicts_say_unavailable_or_off() {
    let Some(shared) = shared_gpu() else { return };
    for v in verdicts(shared) {
        // No tensor cores (lavapipe): nothing to test; with them, a verdict of the real kernel.
        if on_adapter(shared, v.kernel) {
            assert!(matches!(v.verdict, Verdict::Passed | Verdict::Failed | Verdict::Off), "{v:?}");
        } else {
            assert_eq!((v.verdict, v.summary().as_str()), (Verdict::Unavailable, "not available on this adapter"));
        }
    }
    let env = GpuOptions::from_settings(|name| std::env::var(name).ok());
    let off =
        Gpu::new(&GpuOptions { no_tensor_cores: true, tensor_core_fault: TensorCoreFault::Corrupt, ..env }).unwrap();
    for v in verdicts(&off) {
        assert_eq!((v.verdict, v.summary().as_str()), (Verdict::Off, "off (SDGRAPH_TENSOR_CORES=0)"));
    }
}
