//! The process-wide GPU that model nodes share, opened on first use so that
//! graphs of image nodes never touch the GPU.

use engine::NodeError;
use engine::gpu::{DType, Gpu};

/// The shared GPU (the adapter named by `SDGRAPH_ADAPTER`, else the best one).
pub fn gpu() -> Result<&'static Gpu, NodeError> {
    engine::gpu::device::shared().map_err(|e| NodeError::new(e.to_string()))
}

/// The storage type for model weights and activations: f16 on GPUs that
/// have it (half the memory, the fast path), f32 on CPU adapters where f16
/// buys nothing and costs precision. `SDGRAPH_DTYPE=f32|f16` overrides.
pub fn model_dtype(gpu: &Gpu) -> DType {
    match std::env::var("SDGRAPH_DTYPE").ok().as_deref() {
        Some("f32") => return DType::F32,
        Some("f16") if gpu.features().shader_f16 => return DType::F16,
        _ => {}
    }
    if gpu.features().shader_f16 && gpu.info.device_type != "Cpu" { DType::F16 } else { DType::F32 }
}
