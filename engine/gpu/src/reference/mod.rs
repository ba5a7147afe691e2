//! Plain f64 CPU references for every kernel family: the definition each
//! GPU kernel is tested against. Written for clarity, not speed.

pub mod attention;
pub mod binary;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;
