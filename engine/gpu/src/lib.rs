//! The GPU runtime: device, tensors, buffer pool, pipeline cache, profiler,
//! kernel launchers (`ops`) and, behind the `testing` feature, their plain f64
//! CPU references (`reference`, never optimised, never deleted) and tolerances.
//! The WGSL itself and its registry are the `shaders` crate, re-exported here.
//! `tensor_cores` self-tests the cooperative-matrix kernels before they are used.

pub mod bench;
pub mod device;
pub mod launch;
pub mod ops;
pub mod pipeline_cache;
pub mod pool;
pub mod profile;
mod recording;
#[cfg(feature = "testing")]
pub mod reference;
pub use shaders;
pub mod tensor;
pub mod tensor_cores;
pub mod testing;
#[cfg(feature = "testing")]
pub mod tolerance;
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
mod vulkan_headless;

pub use device::{Gpu, GpuError, GpuFeatures, GpuInfo, GpuOptions};
pub use tensor::{DType, Tensor, WeakTensor};
