//! A sweep's output folder, made safe for retries and for two processes given the same shard:
//!
//! - `row-000042/`: one row's files and `sweep-row.json` (its manifest record). A row is rendered into
//!   `.row-000042.partial-<pid>/` beside it (same depth, so the relative paths SaveImage records stay right), its
//!   files and folder fsynced, then renamed into place: a row folder either is complete or does not exist.
//! - `manifest-<I>-of-<N>.jsonl`: one JSON line per row of shard I, appended under an exclusive lock on the file
//!   and fsynced after each row. A line is written only after its row folder is in place; a process killed between
//!   the two leaves a folder whose `sweep-row.json` the next run appends (repair).
//! - `.locks/row-000042.lock`: an advisory `flock` held while a process looks at, renders or repairs that row.
//!   The kernel drops it when the process dies (even by SIGKILL), so a stale lock never blocks a retry. A second
//!   process given the same shard skips the rows the first holds, renders the others, then waits for each skipped
//!   row's lock and renders it only if the first did not finish it: every row is rendered and recorded once.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The file in each row folder holding the row's manifest record.
pub const RECORD: &str = "sweep-row.json";

/// `row-000042`: a row's folder name (zero-padded so folders sort in row order).
pub fn row_name(row: usize) -> String {
    format!("row-{row:06}")
}

/// The temporary folder prefix of a row being rendered.
fn partial_prefix(row: usize) -> String {
    format!(".{}.partial-", row_name(row))
}

pub fn manifest_name(shard: u64, shards: u64) -> String {
    format!("manifest-{shard}-of-{shards}.jsonl")
}

/// An exclusive advisory lock on a file, released when dropped (or when the process dies).
pub struct Lock(#[allow(dead_code)] File);

/// Takes an exclusive lock on `path` (created if missing): `Ok(None)` when another process holds it and `wait` is
/// false.
pub fn lock(path: &Path, wait: bool) -> std::io::Result<Option<Lock>> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    Ok(if flock(&f, wait)? { Some(Lock(f)) } else { None })
}

#[cfg(unix)]
fn flock(f: &File, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: flock on a descriptor this File owns and keeps open; it touches no memory.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Without `flock` (Windows), rows are not locked: two processes given the same shard may render a row twice
/// (each into its own folder; the second rename fails and its copy is dropped), and `--status` counts each row
/// once however many lines it has.
#[cfg(not(unix))]
fn flock(_f: &File, _wait: bool) -> std::io::Result<bool> {
    Ok(true)
}

/// Flushes a folder's entries (new names, renames) to disk; a no-op where folders cannot be opened (Windows).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    if cfg!(unix) { File::open(dir)?.sync_all() } else { Ok(()) }
}

/// The output folder of a sweep.
pub struct Store {
    pub dir: PathBuf,
    locks: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, String> {
        let locks = dir.join(".locks");
        fs::create_dir_all(&locks).map_err(|e| format!("cannot create {}: {e}", locks.display()))?;
        Ok(Store { dir: dir.to_path_buf(), locks })
    }

    /// The folder as it is, for reading (`--status`): nothing created.
    pub fn at(dir: &Path) -> Store {
        Store { dir: dir.to_path_buf(), locks: dir.join(".locks") }
    }

    pub fn row_dir(&self, row: usize) -> PathBuf {
        self.dir.join(row_name(row))
    }

    /// The row's lock; `Ok(None)` when another process holds it and `wait` is false.
    pub fn lock_row(&self, row: usize, wait: bool) -> Result<Option<Lock>, String> {
        let path = self.locks.join(format!("{}.lock", row_name(row)));
        lock(&path, wait).map_err(|e| format!("cannot lock {}: {e}", path.display()))
    }

    /// Whether a process holds the row's lock now (rendering it); creates no lock file.
    pub fn row_busy(&self, row: usize) -> bool {
        let path = self.locks.join(format!("{}.lock", row_name(row)));
        // Open for writing: NFS emulates flock with fcntl locks, whose exclusive kind needs it.
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => flock(&f, false).is_ok_and(|got| !got),
            Err(_) => false,
        }
    }

    /// Removes what an earlier, killed process left of this row. Call only holding the row's lock.
    pub fn remove_partials(&self, row: usize) {
        let prefix = partial_prefix(row);
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// A fresh, empty folder to render the row into.
    pub fn partial_dir(&self, row: usize) -> Result<PathBuf, String> {
        let p = self.dir.join(format!("{}{}", partial_prefix(row), std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(p)
    }

    /// Writes the record into the rendered folder, flushes it all to disk and renames it into place.
    pub fn commit(&self, row: usize, partial: &Path, record: &serde_json::Value) -> Result<(), String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let rec = partial.join(RECORD);
        let mut f = File::create(&rec).map_err(|e| io(&rec.display().to_string(), e))?;
        f.write_all(format!("{record}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io(RECORD, e))?;
        // SaveImage fsyncs each picture; their folders' entries need it too.
        let mut dirs: Vec<PathBuf> = walk_dirs(partial);
        dirs.push(partial.to_path_buf());
        for d in dirs {
            sync_dir(&d).map_err(|e| io(&d.display().to_string(), e))?;
        }
        let to = self.row_dir(row);
        fs::rename(partial, &to)
            .map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), to.display()))?;
        sync_dir(&self.dir).map_err(|e| io(&self.dir.display().to_string(), e))
    }

    /// The record in a row folder, if the folder is in place.
    pub fn row_record(&self, row: usize) -> Option<Result<serde_json::Value, String>> {
        let path = self.row_dir(row).join(RECORD);
        if !self.row_dir(row).is_dir() {
            return None;
        }
        Some(
            fs::read_to_string(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))),
        )
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_dirs(&e.path()));
            out.push(e.path());
        }
    }
    out
}

/// Appends one record as a line, under the file's lock, and fsyncs it. If an earlier writer died mid-line, the line
/// is ended first, so the torn line costs only itself.
pub fn append_line(path: &Path, record: &serde_json::Value) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot append to {}: {e}", path.display());
    let mut f = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(err)?;
    let _held = flock(&f, true).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    let mut line = format!("{record}\n");
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).and_then(|_| f.read_exact(&mut last)).map_err(err)?;
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
    }
    f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).map_err(err)
    // Closing the file drops its lock.
}

/// The records of a manifest (none if it does not exist yet), and how many lines were not records (torn).
pub fn read_manifest(path: &Path) -> Result<(Vec<serde_json::Value>, usize), String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut records = Vec::new();
    let mut torn = 0;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v.get("row").and_then(|r| r.as_u64()).is_some() => records.push(v),
            _ => torn += 1,
        }
    }
    Ok((records, torn))
}

/// Every `manifest-*-of-*.jsonl` in the folder, sorted.
pub fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("manifest-") && n.contains("-of-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    v
}
