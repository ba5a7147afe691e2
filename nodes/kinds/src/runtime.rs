//! The process-wide GPU that model nodes share, opened on first use so that
//! graphs of image nodes never touch the GPU.

use gpu::{DType, Gpu};
use graph::NodeError;

/// The shared GPU (the adapter named by `SDGRAPH_ADAPTER`, else the best one).
pub fn gpu() -> Result<&'static Gpu, NodeError> {
    gpu::device::shared().map_err(|e| NodeError::new(e.to_string()))
}

/// The storage type for model weights and activations: f16 on GPUs that
/// have it (half the memory, the fast path), f32 on CPU adapters where f16
/// buys nothing and costs precision. `wanted` (`SDGRAPH_DTYPE`,
/// [`Settings::dtype`](crate::settings::Settings)) overrides, f16 only where
/// the adapter has it.
pub fn model_dtype(gpu: &Gpu, wanted: Option<DType>) -> DType {
    match wanted {
        Some(DType::F32) => return DType::F32,
        Some(DType::F16) if gpu.features().shader_f16 => return DType::F16,
        _ => {}
    }
    if gpu.features().shader_f16 && gpu.info.device_type != "Cpu" { DType::F16 } else { DType::F32 }
}
