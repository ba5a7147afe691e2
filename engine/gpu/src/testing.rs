//! Helpers for kernel tests: one shared GPU per test process, and seeded
//! random data.

use super::device::{Gpu, GpuOptions};

/// The GPU every test in this process shares (opening one per test is slow
/// on lavapipe). Without an adapter the test fails with the reason, unless
/// `SDGRAPH_SKIP_GPU_TESTS=1` asks to skip (then `None`). The test harness
/// is an edge like the command: it reads `SDGRAPH_ADAPTER` and
/// `SDGRAPH_TENSOR_CORES=0` as the command does.
pub fn shared_gpu() -> Option<&'static Gpu> {
    super::device::configure_shared(GpuOptions::from_settings(|name| std::env::var(name).ok()));
    match super::device::shared() {
        Ok(g) => Some(g),
        Err(_) if std::env::var("SDGRAPH_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") => None,
        Err(e) => panic!("GPU tests need an adapter ({e}); set SDGRAPH_SKIP_GPU_TESTS=1 to skip them"),
    }
}

/// Seeded uniform values in `lo..hi` (xorshift64*; no dependency).
pub fn random(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

/// `data` rounded to f16 and back, as a kernel's f16 input sees it.
pub fn round_f16(data: &[f32]) -> Vec<f32> {
    data.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect()
}
