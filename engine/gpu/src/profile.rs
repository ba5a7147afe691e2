//! The kernel profiler behind `--profile`: GPU time per kernel (entry point
//! and variant), summed over calls.
//!
//! Every kernel runs in its own compute pass (`Gpu::dispatch`), so a pass is
//! a kernel call. Where the adapter has `TIMESTAMP_QUERY`, each profiled pass
//! writes a timestamp at its beginning and end into a query set; when the
//! encoder is submitted the used queries are resolved into a buffer that is
//! read back at the next `Gpu::sync`. Without timestamps the profiler falls
//! back to CPU timing: it waits for the queue before and after each pass,
//! which serialises the GPU and adds submission latency to every call (the
//! report says so).
//!
//! With profiling off the `Gpu` holds no profiler and a dispatch pays one
//! `Option` check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::shaders::Variant;

/// Passes per query set (two queries each; wgpu allows 4096 queries per set).
const PASSES_PER_SET: u32 = 2048;

/// How kernel times are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProfileClock {
    /// GPU timestamps written at the beginning and end of each pass.
    GpuTimestamps,
    /// Wall clock around each pass, with a queue wait before and after.
    CpuQueueWait,
}

impl ProfileClock {
    pub fn describe(self) -> &'static str {
        match self {
            ProfileClock::GpuTimestamps => "GPU timestamps around each compute pass",
            ProfileClock::CpuQueueWait => {
                "CPU timing with a queue wait around each pass (this adapter has no timestamp queries): \
                 times include submission latency, and the GPU runs one kernel at a time"
            }
        }
    }
}

/// Which kernel a pass ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelId {
    pub entry: &'static str,
    pub variant: Variant,
}

impl KernelId {
    /// `entry` for f32, `entry (f16)` or `entry (coop f16)` otherwise.
    pub fn name(self) -> String {
        match self.variant {
            Variant::F32 => self.entry.to_string(),
            Variant::F16 => format!("{} (f16)", self.entry),
            Variant::CoopF16 => format!("{} (coop f16)", self.entry),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct KernelTime {
    pub name: String,
    pub calls: u64,
    pub total_ms: f64,
    /// Fraction of all profiled time, 0..=1.
    pub share: f64,
}

/// What the profiler measured since it was created or last reset.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub clock: ProfileClock,
    pub total_ms: f64,
    pub calls: u64,
    /// Every kernel, most total time first.
    pub kernels: Vec<KernelTime>,
}

impl ProfileReport {
    /// A table of the `top` kernels by total time, and how they were timed.
    pub fn render(&self, top: usize) -> String {
        let mut s = format!(
            "profile: {} kernel calls, {:.3} ms of kernel time ({})\n",
            self.calls,
            self.total_ms,
            self.clock.describe()
        );
        s.push_str(&format!("{:<44} {:>8} {:>12} {:>7}\n", "kernel", "calls", "total ms", "share"));
        for k in self.kernels.iter().take(top) {
            s.push_str(&format!("{:<44} {:>8} {:>12.3} {:>6.1}%\n", k.name, k.calls, k.total_ms, k.share * 100.0));
        }
        if self.kernels.len() > top {
            let rest: f64 = self.kernels[top..].iter().map(|k| k.total_ms).sum();
            s.push_str(&format!("{:<44} {:>8} {:>12.3}\n", format!("({} more)", self.kernels.len() - top), "", rest));
        }
        s
    }
}

#[derive(Default, Clone, Copy)]
struct Totals {
    calls: u64,
    nanos: f64,
}

/// The query set being filled and the kernels of its passes, in order.
struct OpenSet {
    set: wgpu::QuerySet,
    kernels: Vec<KernelId>,
}

/// Resolved timestamps on their way back to the CPU.
struct InFlight {
    readback: wgpu::Buffer,
    kernels: Vec<KernelId>,
    requested: bool,
    mapped: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    open: Option<OpenSet>,
    closed: Vec<OpenSet>,
    in_flight: Vec<InFlight>,
    totals: HashMap<KernelId, Totals>,
}

/// Per-kernel GPU time; lives in a `Gpu` opened with `GpuOptions::profile`.
pub struct Profiler {
    clock: ProfileClock,
    /// Nanoseconds per timestamp tick.
    period: f64,
    state: Mutex<State>,
}

impl Profiler {
    pub(crate) fn new(clock: ProfileClock, period_ns: f32) -> Profiler {
        Profiler { clock, period: f64::from(period_ns), state: Mutex::default() }
    }

    pub fn clock(&self) -> ProfileClock {
        self.clock
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Timestamp writes for the next pass, which runs `kernel` (GPU-timestamp clock only).
    pub(crate) fn begin_pass(&self, device: &wgpu::Device, kernel: KernelId) -> (wgpu::QuerySet, u32) {
        let mut st = self.lock();
        if st.open.as_ref().is_some_and(|o| o.kernels.len() as u32 >= PASSES_PER_SET) {
            let full = st.open.take().expect("checked above");
            st.closed.push(full);
        }
        let open = st.open.get_or_insert_with(|| OpenSet {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * PASSES_PER_SET,
            }),
            kernels: Vec::new(),
        });
        let index = 2 * open.kernels.len() as u32;
        open.kernels.push(kernel);
        (open.set.clone(), index)
    }

    /// Records the resolution of every used query into `encoder`, which is
    /// about to be submitted; the results are read at the next [`Self::collect`].
    pub(crate) fn resolve(&self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder) {
        let mut st = self.lock();
        let mut sets = std::mem::take(&mut st.closed);
        sets.extend(st.open.take());
        for s in sets {
            if s.kernels.is_empty() {
                continue;
            }
            let n = 2 * s.kernels.len() as u32;
            let bytes = u64::from(n) * wgpu::QUERY_SIZE as u64;
            let resolved = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(&s.set, 0..n, &resolved, 0);
            encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, Some(bytes));
            st.in_flight.push(InFlight { readback, kernels: s.kernels, requested: false, mapped: Arc::default() });
        }
    }

    /// Asks for the resolved timestamps of submitted work; call before a device poll.
    pub(crate) fn request_readback(&self) {
        let mut st = self.lock();
        for f in &mut st.in_flight {
            if f.requested {
                continue;
            }
            f.requested = true;
            let flag = f.mapped.clone();
            f.readback.map_async(wgpu::MapMode::Read, .., move |r| {
                if r.is_ok() {
                    flag.store(true, Ordering::Release);
                }
            });
        }
    }

    /// Adds the timestamps that have come back to the totals (after a device poll).
    pub(crate) fn collect(&self) {
        let mut st = self.lock();
        let in_flight = std::mem::take(&mut st.in_flight);
        for f in in_flight {
            if !f.mapped.load(Ordering::Acquire) {
                st.in_flight.push(f);
                continue;
            }
            let ticks: Vec<u64> = match f.readback.get_mapped_range(..) {
                Ok(view) => view.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
                Err(_) => continue,
            };
            f.readback.unmap();
            for (k, pair) in f.kernels.iter().zip(ticks.chunks_exact(2)) {
                // A timestamp pair out of order (a driver quirk) counts as zero time.
                let nanos = pair[1].saturating_sub(pair[0]) as f64 * self.period;
                let t = st.totals.entry(*k).or_default();
                t.calls += 1;
                t.nanos += nanos;
            }
        }
    }

    /// Adds one CPU-timed pass (CPU clock only).
    pub(crate) fn add_cpu_time(&self, kernel: KernelId, elapsed: Duration) {
        let mut st = self.lock();
        let t = st.totals.entry(kernel).or_default();
        t.calls += 1;
        t.nanos += elapsed.as_nanos() as f64;
    }

    /// The totals so far, most time first (call after `Gpu::sync`).
    pub fn report(&self) -> ProfileReport {
        let st = self.lock();
        let total: f64 = st.totals.values().map(|t| t.nanos).sum();
        let mut kernels: Vec<KernelTime> = st
            .totals
            .iter()
            .map(|(k, t)| KernelTime {
                name: k.name(),
                calls: t.calls,
                total_ms: t.nanos / 1e6,
                share: if total > 0.0 { t.nanos / total } else { 0.0 },
            })
            .collect();
        kernels.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.name.cmp(&b.name)));
        ProfileReport {
            clock: self.clock,
            total_ms: total / 1e6,
            calls: st.totals.values().map(|t| t.calls).sum(),
            kernels,
        }
    }

    /// Forgets the totals (times still in flight are kept and counted later).
    pub fn reset(&self) {
        self.lock().totals.clear();
    }
}
