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
