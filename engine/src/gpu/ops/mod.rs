//! Op launchers: one file per shader family. Each checks shapes, allocates
//! the output and records dispatches; none waits for the GPU.

pub mod cast;
pub mod elementwise;
