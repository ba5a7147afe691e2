//! Provenance: the SHA-256 of every model file a run used, for the run report
//! and the PNGs it saves (`sdgraph check picture.png --verify` re-checks them).
//!
//! Hashing a multi-GB checkpoint takes seconds, so digests are cached by
//! (canonical path, size, mtime): in memory for the process, and on disk in
//! the file [`HashCache::configure_global`] names (the command passes
//! `$XDG_CACHE_HOME/sdgraph/file-hashes.json`, else `~/.cache/sdgraph/`;
//! `SDGRAPH_CACHE_DIR` overrides the folder), so a re-run costs one `stat`
//! per file. A node declares a file with
//! [`RunContext::record_input_file`](crate::node::RunContext::record_input_file),
//! which also starts hashing it on a background thread: the digest is usually
//! ready by the time SaveImage needs it, hidden behind model loading and
//! sampling.
//!
//! Like git's index, a size+mtime key trusts that a file rewritten in place
//! changes its mtime. A file modified within [`RACY_SECONDS`] of being hashed
//! is not cached, so a write landing in the same mtime tick is not missed.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A file whose mtime is this close to the time it was hashed may still be
/// being written in the same mtime tick: its digest is not cached.
pub const RACY_SECONDS: u64 = 2;

/// Most entries kept in the disk cache (oldest dropped first).
const MAX_DISK_ENTRIES: usize = 4096;

/// One file a node read, with its digest once known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDigest {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why there is no digest (the file vanished, the run was cancelled...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What identifies one version of a file for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    /// Modification time as (seconds, nanoseconds) since the Unix epoch (negative before it).
    mtime: (i64, u32),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let mtime = match meta.modified() {
            Ok(t) => match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => (-(e.duration().as_secs() as i64), e.duration().subsec_nanos()),
            },
            // No mtime on this platform: size alone would be too weak, so such files are never cached.
            Err(_) => (i64::MIN, 0),
        };
        Stamp { size: meta.len(), mtime }
    }

    /// Whether a digest of this version may be reused later.
    fn cacheable(&self, hashed_at: SystemTime) -> bool {
        if self.mtime.0 == i64::MIN {
            return false;
        }
        let now = hashed_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        now - self.mtime.0 > RACY_SECONDS as i64
    }
}

/// A digest being computed; waiters block on `ready`.
#[derive(Default)]
struct Pending {
    result: Mutex<Option<Result<String, String>>>,
    ready: Condvar,
}

enum Slot {
    Done(String),
    Running(Arc<Pending>),
}

#[derive(Default, Serialize, Deserialize)]
struct DiskFile {
    version: u32,
    /// Canonical path -> entry.
    files: BTreeMap<String, DiskEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct DiskEntry {
    #[serde(flatten)]
    stamp: Stamp,
    sha256: String,
    /// When it was hashed (seconds since the epoch), to drop the oldest first.
    hashed: u64,
}

const DISK_VERSION: u32 = 1;

static GLOBAL: OnceLock<HashCache> = OnceLock::new();

/// SHA-256 digests of files, cached by (path, size, mtime).
pub struct HashCache {
    /// The JSON cache file, or `None` to keep digests in memory only.
    disk_path: Option<PathBuf>,
    disk: OnceLock<Mutex<BTreeMap<String, DiskEntry>>>,
    mem: Mutex<HashMap<(PathBuf, Stamp), Slot>>,
    /// Files actually read to hash them (for tests: proves a cache hit).
    hashed_count: std::sync::atomic::AtomicUsize,
}

impl HashCache {
    /// A cache backed by `disk_path` (created on first write), or memory only.
    pub fn new(disk_path: Option<PathBuf>) -> HashCache {
        HashCache {
            disk_path,
            disk: OnceLock::new(),
            mem: Mutex::new(HashMap::new()),
            hashed_count: Default::default(),
        }
    }

    /// The process-wide cache, backed by the file [`Self::configure_global`]
    /// named (memory only when it was not called).
    pub fn global() -> &'static HashCache {
        GLOBAL.get_or_init(|| HashCache::new(None))
    }

    /// Sets the file behind [`Self::global`]; only the first call counts, and
    /// only before the cache is first used.
    pub fn configure_global(disk_path: Option<PathBuf>) {
        let _ = GLOBAL.set(HashCache::new(disk_path));
    }

    /// How many times a file's contents were read and hashed (cache misses).
    pub fn files_hashed(&self) -> usize {
        self.hashed_count.load(Ordering::Relaxed)
    }

    /// The lowercase hex SHA-256 of `path`'s contents, from the cache when
    /// the file's size and mtime are unchanged.
    pub fn sha256(&'static self, path: &Path) -> Result<String, String> {
        self.sha256_cancellable(path, &AtomicBool::new(false))
    }

    /// As [`HashCache::sha256`], but gives up with `Err("cancelled")` soon
    /// after `cancel` is set (the hashing itself goes on in the background,
    /// so a later call still benefits from it).
    pub fn sha256_cancellable(&'static self, path: &Path, cancel: &AtomicBool) -> Result<String, String> {
        let pending = match self.lookup_or_start(path)? {
            Ok(done) => return Ok(done),
            Err(p) => p,
        };
        let mut guard = pending.result.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = guard.as_ref() {
                return r.clone();
            }
            if cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            guard = pending.ready.wait_timeout(guard, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Starts hashing `path` in the background if its digest is not known yet.
    pub fn prefetch(&'static self, path: &Path) {
        let _ = self.lookup_or_start(path);
    }

    /// A known digest (`Ok(Ok)`), or the pending computation to wait for
    /// (`Ok(Err)`), started on a new thread if none was running.
    #[allow(clippy::type_complexity)]
    fn lookup_or_start(&'static self, path: &Path) -> Result<Result<String, Arc<Pending>>, String> {
        let canon = std::fs::canonicalize(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let meta = std::fs::metadata(&canon).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a file", path.display()));
        }
        let stamp = Stamp::of(&meta);
        let key = (canon.clone(), stamp);
        let mut mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        match mem.get(&key) {
            Some(Slot::Done(d)) => return Ok(Ok(d.clone())),
            Some(Slot::Running(p)) => return Ok(Err(p.clone())),
            None => {}
        }
        if let Some(d) = self.disk_lookup(&canon, stamp) {
            mem.insert(key, Slot::Done(d.clone()));
            return Ok(Ok(d));
        }
        let pending = Arc::new(Pending::default());
        mem.insert(key.clone(), Slot::Running(pending.clone()));
        drop(mem);
        let job = pending.clone();
        let shown = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("sdgraph-hash".into()).spawn(move || {
            let result = self.compute(&shown, &key);
            *job.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            job.ready.notify_all();
        });
        if let Err(e) = spawned {
            self.mem.lock().unwrap_or_else(|e| e.into_inner()).remove(&(canon, stamp));
            return Err(format!("cannot start hashing {}: {e}", path.display()));
        }
        Ok(Err(pending))
    }

    /// Hashes the file and records the result (on the background thread).
    fn compute(&self, shown: &Path, key: &(PathBuf, Stamp)) -> Result<String, String> {
        let (canon, stamp) = key;
        let result = sha256_file(canon).map_err(|e| format!("cannot hash {}: {e}", shown.display()));
        self.hashed_count.fetch_add(1, Ordering::Relaxed);
        // A file that changed while being read has no single digest.
        let after = std::fs::metadata(canon).map(|m| Stamp::of(&m)).ok();
        let result = result.and_then(|d| {
            if after == Some(*stamp) {
                Ok(d)
            } else {
                Err(format!("{} changed while it was being hashed", shown.display()))
            }
        });
        let now = SystemTime::now();
        let mut mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(d) if stamp.cacheable(now) => {
                mem.insert(key.clone(), Slot::Done(d.clone()));
                drop(mem);
                self.disk_store(canon, *stamp, d, now);
            }
            // Not cached: the next request hashes again.
            _ => {
                mem.remove(key);
            }
        }
        result
    }

    fn disk_map(&self) -> Option<&Mutex<BTreeMap<String, DiskEntry>>> {
        let path = self.disk_path.as_ref()?;
        Some(self.disk.get_or_init(|| Mutex::new(read_disk(path))))
    }

    fn disk_lookup(&self, canon: &Path, stamp: Stamp) -> Option<String> {
        let map = self.disk_map()?.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(canon.to_str()?)?;
        (e.stamp == stamp && is_hex_digest(&e.sha256)).then(|| e.sha256.clone())
    }

    /// Adds an entry and rewrites the cache file atomically. Failing to write
    /// it only costs a re-hash next time, so errors are ignored.
    fn disk_store(&self, canon: &Path, stamp: Stamp, digest: &str, now: SystemTime) {
        let (Some(path), Some(map), Some(name)) = (self.disk_path.as_ref(), self.disk_map(), canon.to_str()) else {
            return;
        };
        let hashed = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        // Merge what other sdgraph processes wrote since we read the file.
        for (k, v) in read_disk(path) {
            map.entry(k).or_insert(v);
        }
        map.insert(name.to_string(), DiskEntry { stamp, sha256: digest.to_string(), hashed });
        // Forget files that are gone, then the oldest beyond the limit.
        map.retain(|k, _| Path::new(k).exists());
        if map.len() > MAX_DISK_ENTRIES {
            let mut by_age: Vec<(u64, String)> = map.iter().map(|(k, v)| (v.hashed, k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(map.len() - MAX_DISK_ENTRIES) {
                map.remove(&k);
            }
        }
        let file = DiskFile { version: DISK_VERSION, files: map.clone() };
        drop(map);
        let _ = write_atomic(path, &serde_json::to_vec_pretty(&file).unwrap_or_default());
    }
}

/// The disk cache's entries; an unreadable or foreign file counts as empty.
fn read_disk(path: &Path) -> BTreeMap<String, DiskEntry> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<DiskFile>(&b).ok())
        .filter(|f| f.version == DISK_VERSION)
        .map(|f| f.files)
        .unwrap_or_default()
}

/// Writes through a temporary file in the same folder and renames it over
/// `path`, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("cache");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Streams a file through SHA-256 (no caching).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 lowercase hex digits.
pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Digests for `paths` from the global cache, waiting for background hashing
/// (but not past `cancel`).
pub fn digests(paths: &[PathBuf], cancel: &AtomicBool) -> Vec<FileDigest> {
    paths
        .iter()
        .map(|p| match HashCache::global().sha256_cancellable(p, cancel) {
            Ok(d) => FileDigest { path: p.clone(), sha256: Some(d), error: None },
            Err(e) => FileDigest { path: p.clone(), sha256: None, error: Some(e) },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(sha256_bytes(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn racy_mtimes_are_not_cached() {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(!Stamp { size: 1, mtime: (secs, 0) }.cacheable(now));
        assert!(!Stamp { size: 1, mtime: (secs - 1, 0) }.cacheable(now));
        assert!(Stamp { size: 1, mtime: (secs - 10, 0) }.cacheable(now));
        assert!(!Stamp { size: 1, mtime: (i64::MIN, 0) }.cacheable(now));
    }
}
