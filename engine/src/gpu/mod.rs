//! The GPU runtime: device, tensors, buffer pool, shader registry, pipeline
//! cache, kernel launchers (`ops`) and their plain f64 CPU references
//! (`reference`, never optimised, never deleted).

pub mod bench;
pub mod device;
pub mod launch;
pub mod ops;
pub mod pipeline_cache;
pub mod pool;
pub mod profile;
mod recording;
pub mod reference;
pub mod shaders;
pub mod tensor;
pub mod testing;
pub mod tolerance;

pub use device::{Gpu, GpuError, GpuFeatures, GpuInfo, GpuOptions};
pub use tensor::{DType, Tensor};
