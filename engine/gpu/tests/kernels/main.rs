//! Kernel tests: every WGSL kernel against its plain f64 reference on random data, the
//! shader registry checked with naga (no GPU needed), the kernel profiler, and the tensor-core
//! self-test (its failure and fallback through a test switch, on any adapter).

mod contracts;
mod kernels_attention;
mod kernels_binary;
mod kernels_conv2d;
mod kernels_elementwise;
mod kernels_embedding;
mod kernels_layout;
mod kernels_matmul;
mod kernels_norm;
mod profile;
mod shaders;
mod tensor_cores;

/// Whether a tensor-core test can run on `gpu` (`available`); says why not when it cannot.
pub fn coop_or_skip(gpu: &gpu::Gpu, available: bool) -> bool {
    if !available {
        eprintln!(
            "skipped: {} has no usable f16 cooperative matrices (configs: {:?}, subgroup size {:?})",
            gpu.info.name, gpu.info.coop_matrix_configs, gpu.info.subgroup_size
        );
    }
    available
}
