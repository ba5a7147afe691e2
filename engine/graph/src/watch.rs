//! File watching for `sdgraph watch`: which files a graph depends on (the
//! graph itself and every path param: input images, checkpoints, plugins),
//! and a debounced wait until one of them changes.
//!
//! Parent folders are watched rather than the files, because editors save by
//! writing a new file and renaming it over the old one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};

use crate::Graph;
use crate::node::{ParamKind, ParamValue};
use crate::registry::Registry;

/// The files a graph reads: path params resolved against `base_dir`.
/// Params of unknown kinds are skipped (the graph is invalid anyway).
pub fn input_files(graph: &Graph, registry: &Registry, base_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for node in &graph.nodes {
        let Some(kind) = registry.get(&node.kind.value) else { continue };
        for (name, value) in &node.params {
            let is_path = kind.schema().find_param(&name.value).is_some_and(|p| p.kind == ParamKind::Path);
            if let (true, ParamValue::String(p)) = (is_path, &value.value) {
                let p = Path::new(p);
                files.push(if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) });
            }
        }
    }
    files
}

/// Absolute, with `.` and `..` folded, without touching the file system
/// (the file may not exist yet).
pub fn normalize(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Watches a set of files and waits for changes to them.
pub struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    rx: Receiver<notify::Result<notify::Event>>,
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
}

impl FileWatcher {
    pub fn new() -> Result<FileWatcher, String> {
        let (tx, rx) = channel();
        let watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .map_err(|e| format!("cannot watch files: {e}"))?;
        Ok(FileWatcher { watcher, rx, dirs: BTreeSet::new(), files: BTreeSet::new() })
    }

    /// Replaces the watched set. Folders that cannot be watched (missing) are
    /// reported, not fatal: the graph may name a file that appears later.
    pub fn set_files(&mut self, files: &[PathBuf]) -> Vec<String> {
        let mut problems = Vec::new();
        self.files = files.iter().map(|f| normalize(f)).collect();
        let dirs: BTreeSet<PathBuf> =
            self.files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).filter(|d| d.is_dir()).collect();
        for old in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(old);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                problems.push(format!("cannot watch {}: {e}", new.display()));
            }
        }
        self.dirs = dirs;
        problems
    }

    fn relevant(&self, event: &notify::Event) -> Vec<PathBuf> {
        use notify::EventKind;
        if matches!(event.kind, EventKind::Access(_)) {
            return vec![];
        }
        event.paths.iter().map(|p| normalize(p)).filter(|p| self.files.contains(p)).collect()
    }

    /// Blocks until a watched file changes, then waits for `debounce` of
    /// quiet so a burst of writes (an editor's save) is one change. Returns the
    /// changed files, or `None` when `stop` was set.
    pub fn wait(&self, debounce: Duration, stop: &AtomicBool) -> Option<Vec<PathBuf>> {
        let mut changed: BTreeSet<PathBuf> = BTreeSet::new();
        let mut last_change: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let timeout = match last_change {
                Some(t) => debounce.saturating_sub(t.elapsed()).max(Duration::from_millis(1)),
                None => Duration::from_millis(100),
            };
            match self.rx.recv_timeout(timeout) {
                Ok(Ok(event)) => {
                    let hits = self.relevant(&event);
                    if !hits.is_empty() {
                        changed.extend(hits);
                        last_change = Some(Instant::now());
                    }
                }
                Ok(Err(_)) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(t) = last_change
                        && t.elapsed() >= debounce
                    {
                        return Some(changed.into_iter().collect());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}
