//! Running a validated graph: scheduling, the output cache, progress.

pub mod cache;
pub mod executor;
pub mod progress;

pub use cache::CachePolicy;
pub use executor::{Executor, NodeReport, NodeStatus, RunOptions, RunReport};
pub use progress::{NoProgress, Progress};
