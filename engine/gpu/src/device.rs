//! The `Gpu` context: adapter choice, feature detection, limits, and the
//! command encoder every op records into.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde::Serialize;

use super::pipeline_cache::PipelineCache;
use super::pool::BufferPool;
use super::profile::{ProfileClock, Profiler};
use super::recording::{ArenaPool, Recording};
use super::tensor_cores::{TensorCoreCheck, TensorCoreFault};

/// Why the GPU could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no usable GPU adapter found{0}. sdgraph needs Vulkan, Metal or DX12; on Linux without a GPU install Mesa's software driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)"
    )]
    NoAdapter(String),
    #[error("no adapter matches {wanted:?}; available: {available}")]
    AdapterNotFound { wanted: String, available: String },
    #[error("could not open the GPU device {adapter}: {message}")]
    Device { adapter: String, message: String },
    #[error("{0}")]
    Shape(String),
    #[error("tensor of {bytes} bytes exceeds this adapter's limit of {limit} bytes per {what}")]
    TooLarge { bytes: u64, limit: u64, what: &'static str },
    #[error("GPU error: {0}")]
    Wgpu(String),
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
}

/// Features sdgraph uses when the adapter has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuFeatures {
    /// f16 arithmetic and storage in shaders.
    pub shader_f16: bool,
    /// Subgroup operations.
    pub subgroup: bool,
    /// Cooperative matrices (tensor cores) with 16x16x16 f16 inputs and f32 accumulation.
    pub coop_matrix_f16: bool,
    /// GPU timestamps for profiling.
    pub timestamps: bool,
}

/// What `sdgraph gpu` prints.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub features: GpuFeatures,
    /// Cooperative matrix configurations the driver offers, as "MxNxK ab->cr".
    pub coop_matrix_configs: Vec<String>,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub subgroup_size: (u32, u32),
}

/// How to pick and open an adapter.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter's name or backend
    /// ("vulkan", "llvmpipe", "nvidia"); the best adapter when `None`.
    pub adapter: Option<String>,
    /// Use no optional feature (f16, subgroups, cooperative matrices): the
    /// portable path, for testing it on capable hardware.
    pub portable_only: bool,
    /// Keep to the portable kernels even where the adapter has tensor cores
    /// (cooperative matrices), other features still in use: a switch for
    /// users (`SDGRAPH_TENSOR_CORES=0`) and for comparing the two paths.
    pub no_tensor_cores: bool,
    /// Time every kernel (`--profile`): GPU timestamps where the adapter has
    /// them, else CPU timing with a queue wait per kernel (see `profile.rs`).
    pub profile: bool,
    /// With `profile`: use the CPU clock even where timestamps exist (to test that path).
    pub profile_cpu_clock: bool,
    /// Where the tensor-core self-test keeps its verdicts (`tensor-core-check.json` in the cache
    /// folder); `None`: test in every process.
    pub tensor_core_cache: Option<std::path::PathBuf>,
    /// For tests only (`SDGRAPH_TEST_TENSOR_CORE_FAULT`): corrupt the tensor-core results, or let
    /// the portable kernel stand in for them where there are none (see `tensor_cores`).
    pub tensor_core_fault: TensorCoreFault,
}

impl GpuOptions {
    /// The adapter (`SDGRAPH_ADAPTER`), tensor-core (`SDGRAPH_TENSOR_CORES=0`: off) and test-fault
    /// (`SDGRAPH_TEST_TENSOR_CORE_FAULT`) settings from
    /// `var`, the caller's view of the environment: the command and the test harness read it, this
    /// library does not.
    pub fn from_settings(var: impl Fn(&str) -> Option<String>) -> GpuOptions {
        GpuOptions {
            adapter: var("SDGRAPH_ADAPTER"),
            no_tensor_cores: var("SDGRAPH_TENSOR_CORES").is_some_and(|v| v.trim() == "0"),
            // The command refuses a malformed value before this (settings.rs).
            tensor_core_fault: var("SDGRAPH_TEST_TENSOR_CORE_FAULT")
                .and_then(|v| TensorCoreFault::from_setting(&v).ok())
                .unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// The one GPU context. Ops record into its current command encoder; reading
/// a tensor back submits what was recorded.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pub limits: wgpu::Limits,
    pub(crate) encoder: Mutex<Option<Recording>>,
    pub(crate) pool: Arc<BufferPool>,
    pub(crate) pipelines: PipelineCache,
    /// Present only when opened with `GpuOptions::profile`.
    pub(crate) profiler: Option<Profiler>,
    /// Errors wgpu reported outside any call (a bug in a kernel launch).
    errors: Arc<Mutex<Vec<String>>>,
    /// Kernel dispatches recorded since the context opened.
    pub(crate) dispatches: std::sync::atomic::AtomicU64,
    /// Uniform and small-upload buffers, recycled across submits.
    pub(crate) arenas: ArenaPool,
    /// Readback buffers by size, reused by later downloads.
    pub(crate) readbacks: Mutex<std::collections::HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Buffers made outside the pools (large-upload staging, readbacks).
    pub(crate) other_buffers: std::sync::atomic::AtomicU64,
    /// The tensor-core kernels' self-test verdicts, decided on first use.
    pub(crate) tensor_cores: TensorCoreCheck,
}

/// Polls a future that wgpu-core resolves immediately on native backends.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn describe(a: &wgpu::Adapter) -> String {
    let i = a.get_info();
    format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
}

/// Preference when no adapter is named: discrete GPU, then integrated,
/// then anything else, then the CPU.
fn rank(a: &wgpu::Adapter) -> u32 {
    match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
        wgpu::DeviceType::Cpu => 3,
    }
}

/// The process-wide GPU (opened with the options [`configure_shared`] set,
/// else the defaults: the best adapter), opened on first use. Tensors from different `Gpu`s must never
/// meet, so everything that does not need its own context shares this one.
pub fn shared() -> Result<&'static Gpu, GpuError> {
    static GPU: std::sync::OnceLock<Result<Gpu, GpuError>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| Gpu::new(SHARED_OPTIONS.get().unwrap_or(&GpuOptions::default()))).as_ref().map_err(|e| e.clone())
}

static SHARED_OPTIONS: std::sync::OnceLock<GpuOptions> = std::sync::OnceLock::new();

/// Sets the options the shared GPU opens with (the command's `--adapter`,
/// `SDGRAPH_ADAPTER`, `SDGRAPH_TENSOR_CORES`, `--profile`).
/// Only the first call counts, and only before the GPU is first used.
pub fn configure_shared(opts: GpuOptions) {
    let _ = SHARED_OPTIONS.set(opts);
}

impl GpuFeatures {
    /// What this process uses of what the adapter offers: nothing optional with
    /// `portable_only`, no tensor cores with `no_tensor_cores`, and cooperative
    /// matrices only where the driver lists 16x16x16 f16 -> f32.
    fn choose(adapter: &wgpu::Adapter, opts: &GpuOptions) -> Self {
        let af = adapter.features();
        let coop_f16 = adapter.cooperative_matrix_properties().iter().any(|p| {
            p.m_size == 16
                && p.n_size == 16
                && p.k_size == 16
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        });
        let portable = opts.portable_only;
        GpuFeatures {
            shader_f16: !portable && af.contains(wgpu::Features::SHADER_F16),
            subgroup: !portable && af.contains(wgpu::Features::SUBGROUP),
            coop_matrix_f16: !portable
                && !opts.no_tensor_cores
                && coop_f16
                && af.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
                && af.contains(wgpu::Features::SHADER_F16),
            timestamps: af.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }

    /// The device features these need.
    fn required(self) -> wgpu::Features {
        let mut required = wgpu::Features::empty();
        for (on, feature) in [
            (self.shader_f16, wgpu::Features::SHADER_F16),
            (self.subgroup, wgpu::Features::SUBGROUP),
            (self.coop_matrix_f16, wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            (self.timestamps, wgpu::Features::TIMESTAMP_QUERY),
        ] {
            if on {
                required |= feature;
            }
        }
        required
    }
}

/// wgpu's instance for `desc`; on Linux and FreeBSD one without display-server
/// extensions (see `vulkan_headless`), else, or where that fails, wgpu's own.
fn instance(desc: wgpu::InstanceDescriptor) -> wgpu::Instance {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    if let Some(instance) = super::vulkan_headless::instance(&desc) {
        return instance;
    }
    wgpu::Instance::new(desc)
}

impl Gpu {
    /// Opens the best adapter (or the one `opts.adapter` names).
    pub fn new(opts: &GpuOptions) -> Result<Gpu, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        // Validation layers slow kernels down badly and are not needed to find our bugs.
        desc.flags = wgpu::InstanceFlags::empty();
        let instance = instance(desc);
        let mut adapters = block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter(String::new()));
        }
        adapters.sort_by_key(rank);
        let wanted = opts.adapter.clone().filter(|s| !s.is_empty());
        let adapter = match &wanted {
            None => adapters.remove(0),
            Some(w) => {
                let w_low = w.to_lowercase();
                let pos = adapters.iter().position(|a| {
                    let i = a.get_info();
                    i.name.to_lowercase().contains(&w_low) || format!("{:?}", i.backend).to_lowercase() == w_low
                });
                match pos {
                    Some(p) => adapters.remove(p),
                    None => {
                        let available = adapters.iter().map(describe).collect::<Vec<_>>().join(", ");
                        return Err(GpuError::AdapterNotFound { wanted: w.clone(), available });
                    }
                }
            }
        };
        Self::open(adapter, opts)
    }

    fn open(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Gpu, GpuError> {
        let ai = adapter.get_info();
        let coop_props = adapter.cooperative_matrix_properties();
        let features = GpuFeatures::choose(&adapter, opts);
        // The adapter's own limits, not WebGPU's defaults: those cap buffers at 256 MiB.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("sdgraph"),
            required_features: features.required(),
            required_limits: limits.clone(),
            // SAFETY: cooperative matrices are wgpu's only experimental feature we
            // request, and every configuration we use is checked against the
            // driver's list above (wgpu does not check shaders against it).
            experimental_features: if features.coop_matrix_f16 {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = block_on(adapter.request_device(&desc))
            .map_err(|e| GpuError::Device { adapter: describe(&adapter), message: e.to_string() })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        // wgpu's default handler panics; record instead and surface at the next sync point.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let info = GpuInfo {
            name: ai.name.clone(),
            backend: format!("{:?}", ai.backend),
            device_type: format!("{:?}", ai.device_type),
            driver: format!("{} {}", ai.driver, ai.driver_info).trim().to_string(),
            features,
            coop_matrix_configs: coop_props
                .iter()
                .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                .collect(),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            subgroup_size: (ai.subgroup_min_size, ai.subgroup_max_size),
        };
        let profiler = opts.profile.then(|| {
            let clock = if features.timestamps && !opts.profile_cpu_clock {
                ProfileClock::GpuTimestamps
            } else {
                ProfileClock::CpuQueueWait
            };
            Profiler::new(clock, queue.get_timestamp_period())
        });
        Ok(Gpu {
            profiler,
            device,
            queue,
            info,
            limits,
            encoder: Mutex::new(None),
            pool: Arc::new(BufferPool::default()),
            pipelines: PipelineCache::default(),
            errors,
            dispatches: Default::default(),
            arenas: ArenaPool::default(),
            readbacks: Mutex::default(),
            other_buffers: Default::default(),
            tensor_cores: TensorCoreCheck::new(&ai, opts),
        })
    }

    pub fn features(&self) -> GpuFeatures {
        self.info.features
    }

    /// Runs `f` with the current command encoder, creating one if needed.
    pub(crate) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        self.with_recording(|rec| f(rec.encoder()))
    }

    /// Runs `f` with what is being recorded for the next submit.
    pub(crate) fn with_recording<R>(&self, f: impl FnOnce(&mut Recording) -> R) -> R {
        let mut guard = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
        let rec = guard.get_or_insert_with(|| Recording::new(&self.device));
        f(rec)
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        // Submit while holding the lock: otherwise another thread could take
        // a newer encoder and submit it first, running work out of order.
        let mut guard = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = guard.take() {
            let (mut enc, arenas) = rec.finish(&self.queue);
            if let Some(p) = &self.profiler {
                p.resolve(&self.device, &mut enc);
            }
            self.queue.submit([enc.finish()]);
            // Their writes are queued: the next submit may write them again.
            self.arenas.give_back(arenas);
        }
    }

    /// Submits and waits until the GPU has finished all work, then reports
    /// any error wgpu raised meanwhile.
    pub fn sync(&self) -> Result<(), GpuError> {
        self.flush();
        if let Some(p) = &self.profiler {
            p.request_readback();
        }
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Wgpu(e.to_string()))?;
        if let Some(p) = &self.profiler {
            p.collect();
        }
        self.take_error()
    }

    /// The kernel profiler, when opened with `GpuOptions::profile`.
    pub fn profiler(&self) -> Option<&Profiler> {
        self.profiler.as_ref()
    }

    /// Waits for all work and returns the kernel times so far (None unless profiling).
    pub fn profile_report(&self) -> Result<Option<super::profile::ProfileReport>, GpuError> {
        if self.profiler.is_none() {
            return Ok(None);
        }
        self.sync()?;
        Ok(self.profiler.as_ref().map(Profiler::report))
    }

    pub(crate) fn take_error(&self) -> Result<(), GpuError> {
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() { Ok(()) } else { Err(GpuError::Wgpu(std::mem::take(&mut *errs).join("; "))) }
    }

    /// GPU buffers created so far: tensors (the pool's), arenas, staging and
    /// readback buffers. A warm sampling step adds none.
    pub fn buffers_created(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.pool.created() + self.arenas.created.load(Relaxed) + self.other_buffers.load(Relaxed)
    }

    /// Kernel dispatches recorded so far (benchmarks report them per call).
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes held by the buffer pool for reuse.
    pub fn pooled_bytes(&self) -> u64 {
        self.pool.pooled_bytes()
    }

    /// Bytes of every tensor buffer held, in use or idle in the pool.
    pub fn allocated_bytes(&self) -> u64 {
        self.pool.allocated_bytes()
    }

    /// The most tensor-buffer bytes held at once since the last [`Self::reset_peak_bytes`].
    pub fn peak_bytes(&self) -> u64 {
        self.pool.peak_bytes()
    }

    /// Starts a new peak measurement from what is held now.
    pub fn reset_peak_bytes(&self) {
        self.pool.reset_peak();
    }

    /// Frees the idle buffers of the pool (tensors in use keep theirs).
    pub fn release_idle_buffers(&self) {
        self.pool.clear();
        if let Ok(mut r) = self.readbacks.lock() {
            r.clear();
        }
    }
}
