//! Running a validated graph: scheduling, the output cache, progress, and the
//! provenance (file digests) of what a run used.

pub mod cache;
pub mod executor;
pub mod progress;
pub mod provenance;

pub use cache::CachePolicy;
pub use executor::{Executor, NodeReport, NodeStatus, RunOptions, RunReport};
pub use progress::{NoProgress, Progress};
