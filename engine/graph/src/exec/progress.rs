//! Progress reporting for long work: which node runs, sampler steps, model
//! loading, preview pictures. The CLI draws it on stderr; tests record it.

/// Receives progress events. Every method has a no-op default.
pub trait Progress: Send + Sync {
    fn node_start(&self, _id: &str, _kind: &str) {}
    fn node_end(&self, _id: &str, _status: &str, _seconds: f64) {}
    /// `done` of `total` units of `what` ("step", "tile", "MiB") in node `id`.
    fn step(&self, _id: &str, _done: u64, _total: u64, _what: &str) {}
    fn message(&self, _text: &str) {}
    /// Whether node `id` should make a preview picture at step `done` of
    /// `total`. Asked before making one, since that costs work.
    fn wants_preview(&self, _id: &str, _done: u64, _total: u64) -> bool {
        false
    }
    /// A picture of node `id`'s work in progress: 8-bit RGB, row-major.
    fn preview(&self, _id: &str, _width: u32, _height: u32, _rgb: &[u8]) {}
}

/// Discards all progress.
pub struct NoProgress;

impl Progress for NoProgress {}
