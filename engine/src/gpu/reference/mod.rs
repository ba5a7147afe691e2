//! Plain f64 CPU references for every kernel family: the definition each
//! GPU kernel is tested against. Written for clarity, not speed.

pub mod elementwise;
