//! Op launchers: one file per shader family. Each checks shapes, allocates
//! the output and records dispatches; none waits for the GPU.

pub mod attention;
pub mod binary;
pub mod cast;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;

use shaders::{Access, EntryPoint, ShaderFamily};

use crate::launch::{KernelParams, ParamField};

/// Which parameter block fills each WGSL uniform: (shader family, uniform
/// variable, the Rust block's fields). The kernel-contract test checks every
/// uniform of every shader and variant against this table, both ways; a
/// launcher passing another block fails a debug assertion in `Gpu::dispatch`.
pub const PARAM_BLOCKS: &[(ShaderFamily, &str, &[ParamField])] = &[
    (ShaderFamily::Elementwise, "params", elementwise::ElementwiseParams::FIELDS),
    (ShaderFamily::Cast, "params", cast::CastParams::FIELDS),
    (ShaderFamily::Binary, "params", layout::StridedParams::FIELDS),
    (ShaderFamily::Layout, "params", layout::StridedParams::FIELDS),
    (ShaderFamily::Embedding, "params", embedding::EmbeddingParams::FIELDS),
    (ShaderFamily::Matmul, "params", matmul::MatmulParams::FIELDS),
    (ShaderFamily::MatmulCoop, "params", matmul::MatmulParams::FIELDS),
    (ShaderFamily::MatmulCoop, "cparams", conv2d::Conv2dParams::FIELDS),
    (ShaderFamily::Conv2d, "params", conv2d::Conv2dParams::FIELDS),
    (ShaderFamily::Norm, "params", norm::NormParams::FIELDS),
    (ShaderFamily::Softmax, "params", softmax::SoftmaxParams::FIELDS),
    (ShaderFamily::Attention, "params", attention::AttentionParams::FIELDS),
    (ShaderFamily::AttentionCoop, "params", attention::AttentionParams::FIELDS),
];

/// The fields of the block bound to `entry`'s uniform, if it has one.
pub fn param_block_of(family: ShaderFamily, entry: &EntryPoint) -> Option<&'static [ParamField]> {
    let uniform = entry.bindings.iter().find(|b| b.access == Access::Uniform)?;
    PARAM_BLOCKS.iter().find(|(f, name, _)| *f == family && *name == uniform.name).map(|(_, _, fields)| *fields)
}
