//! Whether the tensor-core (cooperative-matrix) kernels may be used. No test machine has tensor
//! cores, so a coop kernel could be wrong on the one adapter that runs it; each is therefore
//! checked against its portable counterpart on small random problems (`selftest.rs`) the first
//! time a `Gpu` would use one, and `MatmulKernel::Auto` takes the portable kernel for any that
//! fails (warning once, naming the kernel). Verdicts are kept per adapter, driver and shader
//! source in a small JSON file (`cache.rs`), so a process usually reads them instead of testing.
//!
//! For tests, [`TensorCoreFault`] (`SDGRAPH_TEST_TENSOR_CORE_FAULT`) corrupts the coop result, or on
//! an adapter without tensor cores lets the portable kernel stand in for the coop one, so the whole
//! path (compare, warn, cache, fall back) runs on lavapipe.

mod cache;
mod selftest;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::device::{Gpu, GpuError, GpuOptions};
use super::ops::matmul::MatmulKernel;
use super::tensor::Tensor;

/// A tensor-core kernel the self-test checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CoopKernel {
    #[serde(rename = "matmul_coop")]
    Matmul,
    #[serde(rename = "conv2d_coop")]
    Conv2d,
    #[serde(rename = "attention_coop")]
    Attention,
}

impl CoopKernel {
    pub const ALL: [CoopKernel; 3] = [CoopKernel::Matmul, CoopKernel::Conv2d, CoopKernel::Attention];

    /// The name warnings, errors, the cache and `sdgraph gpu` use.
    pub fn name(self) -> &'static str {
        match self {
            CoopKernel::Matmul => "matmul_coop",
            CoopKernel::Conv2d => "conv2d_coop",
            CoopKernel::Attention => "attention_coop",
        }
    }
}

/// A test-only switch (`SDGRAPH_TEST_TENSOR_CORE_FAULT`): makes the tensor-core path testable
/// where there are no tensor cores. Off for users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TensorCoreFault {
    #[default]
    None,
    /// `corrupt`: every result of the coop path has one element changed (by
    /// [`CORRUPTION`]); on an adapter without tensor cores the portable kernel stands in for the
    /// coop one first. The self-test must fail and everything fall back to the portable kernels.
    Corrupt,
    /// `correct`: the stand-in without the corruption, so the passing path is tested too.
    Correct,
}

/// What the `corrupt` fault adds to one element: far beyond the self-test's tolerance at these
/// sizes (results of magnitude < 10), yet small enough to look like a real indexing slip.
pub const CORRUPTION: f32 = 0.5;

impl TensorCoreFault {
    /// The setting's value: empty or `0` none, `corrupt`, `correct`.
    pub fn from_setting(value: &str) -> Result<Self, String> {
        match value.trim() {
            "" | "0" => Ok(TensorCoreFault::None),
            "corrupt" => Ok(TensorCoreFault::Corrupt),
            "correct" => Ok(TensorCoreFault::Correct),
            other => Err(format!("{other:?}: expected corrupt or correct (a switch for tests only)")),
        }
    }

    /// How the cache tells verdicts of the real path and of each test mode apart.
    fn mode(self) -> &'static str {
        match self {
            TensorCoreFault::None => "real",
            TensorCoreFault::Corrupt => "test-corrupt",
            TensorCoreFault::Correct => "test-correct",
        }
    }
}

/// The outcome of one kernel's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Agrees with the portable kernel: `Auto` uses it.
    Passed,
    /// Disagrees, or the GPU refused it: `Auto` uses the portable kernel, `Coop` is an error.
    Failed,
    /// The adapter cannot run it (no cooperative matrices, or not the subgroup size it needs).
    Unavailable,
    /// Switched off (`SDGRAPH_TENSOR_CORES=0`): not tested, not used.
    Off,
}

/// One kernel's verdict, as `sdgraph gpu` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KernelVerdict {
    pub kernel: CoopKernel,
    pub verdict: Verdict,
    /// Failed: how far off (the worst element, its problem, the tolerance) or the GPU's error;
    /// Off: why.
    pub detail: Option<String>,
    /// Read from the cache file rather than tested in this process.
    pub cached: bool,
    /// The portable kernel stood in for the coop one (the test switch, on an adapter without them).
    pub stand_in: bool,
    /// Milliseconds the test took in this process (pipelines compiled included); none when not run.
    pub ms: Option<f64>,
}

impl KernelVerdict {
    /// "passed", "FAILED (...)", "not available on this adapter" or "off (...)".
    pub fn summary(&self) -> String {
        let detail = self.detail.as_deref().unwrap_or("");
        match self.verdict {
            Verdict::Passed => "passed".into(),
            Verdict::Failed => format!("FAILED ({detail})"),
            Verdict::Unavailable => "not available on this adapter".into(),
            Verdict::Off => format!("off ({detail})"),
        }
    }

    fn untested(kernel: CoopKernel, verdict: Verdict, detail: Option<String>) -> Self {
        Self { kernel, verdict, detail, cached: false, stand_in: false, ms: None }
    }
}

/// Which kernel one call runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Portable,
    TensorCores,
    /// The portable kernel standing in for the coop one (the test switch only).
    StandIn,
}

/// A `Gpu`'s tensor-core state: what identifies its adapter and driver, the switches, and the
/// verdicts once decided.
pub(crate) struct TensorCoreCheck {
    adapter: cache::AdapterIdentity,
    fault: TensorCoreFault,
    /// Why tensor cores are off, when they are.
    off: Option<&'static str>,
    cache_file: Option<PathBuf>,
    verdicts: OnceLock<Vec<KernelVerdict>>,
    /// Held while deciding, so two threads do not both test.
    deciding: Mutex<()>,
}

impl TensorCoreCheck {
    pub(crate) fn new(info: &wgpu::AdapterInfo, opts: &GpuOptions) -> Self {
        let off = if opts.no_tensor_cores {
            Some("SDGRAPH_TENSOR_CORES=0")
        } else if opts.portable_only {
            Some("portable kernels only")
        } else {
            None
        };
        Self {
            adapter: cache::AdapterIdentity::of(info),
            fault: opts.tensor_core_fault,
            off,
            cache_file: opts.tensor_core_cache.clone(),
            verdicts: OnceLock::new(),
            deciding: Mutex::new(()),
        }
    }

    /// Whether the portable kernel may stand in for a coop one (the test switch, f16 available).
    fn stand_in_allowed(&self, gpu: &Gpu) -> bool {
        self.fault != TensorCoreFault::None && self.off.is_none() && gpu.features().shader_f16
    }
}

impl Gpu {
    /// Every tensor-core kernel's verdict, deciding them on the first call: from the cache file
    /// where it has them for this adapter, driver and shader source, else by the self-test.
    /// An error only when earlier work on this `Gpu` failed (reported here as at any sync point).
    pub fn tensor_core_verdicts(&self) -> Result<&[KernelVerdict], GpuError> {
        let check = &self.tensor_cores;
        if let Some(v) = check.verdicts.get() {
            return Ok(v);
        }
        let _deciding = check.deciding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = check.verdicts.get() {
            return Ok(v);
        }
        let verdicts = selftest::decide(self)?;
        Ok(check.verdicts.get_or_init(|| verdicts))
    }

    /// One kernel's verdict (see [`Gpu::tensor_core_verdicts`]).
    pub fn tensor_core_verdict(&self, kernel: CoopKernel) -> Result<&KernelVerdict, GpuError> {
        let all = self.tensor_core_verdicts()?;
        Ok(all.iter().find(|v| v.kernel == kernel).expect("a verdict for every kernel"))
    }

    /// Whether `Auto` may run `kernel` on tensor cores: the adapter has them and it passed.
    pub fn tensor_core_passed(&self, kernel: CoopKernel) -> Result<bool, GpuError> {
        Ok(self.tensor_core_verdict(kernel)?.verdict == Verdict::Passed)
    }
}

/// Where a call runs: `hardware` says the adapter can run the coop kernel for it, `call_fits`
/// that the call suits it apart from the adapter (f16, a head dim it holds). `Auto` takes the coop
/// path (or under the test switch its stand-in) only once `kernel` has passed its self-test;
/// `Coop` where it cannot is the error `unavailable` words, or one naming the failed verdict.
pub(crate) fn route(
    gpu: &Gpu,
    kernel: CoopKernel,
    request: MatmulKernel,
    hardware: bool,
    call_fits: bool,
    unavailable: impl FnOnce() -> String,
) -> Result<Route, GpuError> {
    if request == MatmulKernel::Portable {
        return Ok(Route::Portable);
    }
    let path = if hardware {
        Route::TensorCores
    } else if call_fits && gpu.tensor_cores.stand_in_allowed(gpu) {
        Route::StandIn
    } else if request == MatmulKernel::Coop {
        return Err(GpuError::Shape(unavailable()));
    } else {
        return Ok(Route::Portable);
    };
    let v = gpu.tensor_core_verdict(kernel)?;
    match (v.verdict, request) {
        (Verdict::Passed, _) => Ok(path),
        (_, MatmulKernel::Auto) => Ok(Route::Portable),
        _ => Err(GpuError::Shape(format!(
            "the tensor-core kernel {} is not used on {}: its self-test says {}",
            kernel.name(),
            gpu.info.name,
            v.summary()
        ))),
    }
}

/// A coop-path result, corrupted under the `corrupt` test switch (one element, by
/// [`CORRUPTION`], in the middle of the tensor); every other result as it is.
pub(crate) fn finish(gpu: &Gpu, route: Route, t: Tensor) -> Result<Tensor, GpuError> {
    if route == Route::Portable || gpu.tensor_cores.fault != TensorCoreFault::Corrupt || t.numel() == 0 {
        return Ok(t);
    }
    // Through the host: slow, but only ever under the test switch.
    let mut data = gpu.download(&t)?;
    let i = data.len() / 2;
    data[i] += CORRUPTION;
    gpu.upload(&data, t.shape(), t.dtype())
}
