//! Kernel tests: every WGSL kernel against its plain f64 reference on random data, the
//! shader registry checked with naga (no GPU needed), and the kernel profiler.

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
