//! `sdgraph sweep GRAPH --params FILE`: render the graph once per row of a params file, one process keeping its
//! models loaded across its rows (one `Executor`), each row's files in `OUT/row-NNNNNN/`. Shards come from the
//! batch scheduler (Kubernetes Indexed Jobs, Slurm job arrays) or `--shard I/N`: row r belongs to shard r % N.
//! Retries are safe: a finished row is skipped, a killed row leaves nothing that looks finished (store.rs), and
//! `--status` sums the manifests.

mod params;
mod store;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graph::exec::{Executor, NoProgress, NodeStatus, Progress, RunOptions};
use graph::{Graph, Registry};

use super::load::{ModelPaths, Sources, load};
use super::progress::StderrProgress;
use super::settings::SweepEnv;
use super::{EXIT_FAILED, EXIT_INVALID};
use params::{Row, place};
use store::{Store, manifest_name, row_name};

/// What `sdgraph sweep` was asked to do.
pub struct SweepArgs {
    pub graph: PathBuf,
    pub params: PathBuf,
    pub out_dir: PathBuf,
    /// `--shard I/N`.
    pub shard: Option<String>,
    /// `--shards N`: the count where the scheduler gives only an index.
    pub shards: Option<u64>,
    /// `--status`: sum the manifests instead of rendering.
    pub status: bool,
    pub json: bool,
    pub quiet: bool,
    pub env: SweepEnv,
    pub models: ModelPaths,
}

pub fn sweep(registry: &Registry, args: &SweepArgs) -> i32 {
    let sources = Sources { registry, models: &args.models, missing: graph::comfy::MissingFiles::Refuse };
    let loaded = match load(&args.graph, &[], &sources) {
        Ok(l) => l,
        Err(e) => {
            super::run::report_errors(&e, false);
            return EXIT_INVALID;
        }
    };
    let rows = match params::read(&args.params) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let file = args.params.display().to_string();
    if let Err(errs) = check_rows(&loaded.graph, registry, &rows, &file) {
        for e in &errs {
            eprintln!("error: {e}");
        }
        return EXIT_INVALID;
    }
    if args.status {
        return status(&args.out_dir, &rows, args.json);
    }
    let (shard, shards, from) = match resolve_shard(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let store = match Store::open(&args.out_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let mine: Vec<usize> = (0..rows.len()).filter(|r| *r as u64 % shards == shard).collect();
    if !args.quiet {
        eprintln!("shard {shard}/{shards} ({from}): {} of {} rows", mine.len(), rows.len());
    }
    let stderr_progress = StderrProgress::new();
    let progress: &dyn Progress = if args.quiet { &NoProgress } else { &stderr_progress };
    let mut shard_run = ShardRun {
        store,
        manifest: args.out_dir.join(manifest_name(shard, shards)),
        rows: &rows,
        registry,
        graph: &loaded.graph,
        base_dir: &loaded.base_dir,
        exec: Executor::default(),
        progress,
        quiet: args.quiet,
        shard: format!("{shard}/{shards}"),
        stall: args.env.test_stall_ms.map(Duration::from_millis),
        recorded: HashSet::new(),
        counts: Counts::default(),
    };
    if let Err(e) = shard_run.read_manifest() {
        eprintln!("error: {e}");
        return EXIT_INVALID;
    }
    let code = shard_run.run(&mine);
    let c = &shard_run.counts;
    if !args.quiet {
        eprintln!(
            "shard {shard}/{shards}: {} rendered, {} done before, {} done by another process, {} failed",
            c.rendered, c.skipped, c.by_other, c.failed
        );
    }
    code
}

/// Applies each row to the graph and validates it, so a bad value fails before the first model loads. Errors name
/// the row and column; the same problem in many rows is told once, with a count.
fn check_rows(graph: &Graph, registry: &Registry, rows: &[Row], file: &str) -> Result<(), Vec<String>> {
    // The graph on its own first: its errors are no row's.
    if let Err(e) = graph::validate(graph.clone(), registry) {
        return Err(e.0.iter().map(|d| d.to_string()).collect());
    }
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.value.as_str()).collect();
    // (column, message) -> (first place, how many more rows).
    let mut seen: BTreeMap<(String, String), (usize, String, usize)> = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        let mut problems: Vec<(String, String)> = Vec::new();
        for (col, _) in &row.sets {
            let node = col.rsplit_once('.').map_or(col.as_str(), |(n, _)| n);
            if graph.node(node).is_none() {
                let mut msg = format!("no node {node:?} in the graph");
                if let Some(near) = graph::suggest::nearest(node, ids.iter().copied()) {
                    msg.push_str(&format!(" (did you mean {near:?}?)"));
                }
                problems.push((col.clone(), msg));
            }
        }
        if problems.is_empty() {
            let mut g = graph.clone();
            let applied = g.apply_overrides(&row.overrides()).and_then(|_| graph::validate(g, registry).map(|_| ()));
            if let Err(errs) = applied {
                for d in errs.0 {
                    let col = match (&d.node, &d.part) {
                        (Some(n), Some(graph::error::Part::Param(p))) => format!("{n}.{p}"),
                        (Some(n), _) => n.clone(),
                        _ => String::new(),
                    };
                    problems.push((col, d.message));
                }
            }
        }
        for (col, msg) in problems {
            let at = place(file, r, row.line, (!col.is_empty()).then_some(col.as_str()));
            seen.entry((col, msg.clone())).and_modify(|e| e.2 += 1).or_insert((r, format!("{at}: {msg}"), 0));
        }
    }
    if seen.is_empty() {
        return Ok(());
    }
    let mut errs: Vec<(usize, String)> = seen
        .into_values()
        .map(|(r, msg, more)| (r, if more > 0 { format!("{msg} (and in {more} more rows)") } else { msg }))
        .collect();
    errs.sort();
    Err(errs.into_iter().map(|(_, m)| m).collect())
}

/// (index, count, where they came from): `--shard I/N`, else `JOB_COMPLETION_INDEX` with `--shards` or
/// `SDGRAPH_SWEEP_SHARDS`, else `SLURM_ARRAY_TASK_ID` (the shard itself when the count is given that way, else
/// minus `SLURM_ARRAY_TASK_MIN` out of `SLURM_ARRAY_TASK_COUNT`), else the whole sweep in one shard.
fn resolve_shard(args: &SweepArgs) -> Result<(u64, u64, &'static str), String> {
    let env = &args.env;
    let count = args.shards.or(env.shards);
    let checked = |i: u64, n: u64, from: &'static str| {
        if n == 0 {
            Err(format!("{from}: the shard count must be at least 1"))
        } else if i >= n {
            Err(format!("{from}: shard index {i} is not below the shard count {n}"))
        } else {
            Ok((i, n, from))
        }
    };
    if let Some(s) = &args.shard {
        let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        let Some((i, n)) = parsed else { return Err(format!("--shard {s:?}: expected I/N, as 0/4")) };
        return checked(i, n, "--shard");
    }
    if let Some(i) = env.k8s_index {
        let Some(n) = count else {
            return Err("JOB_COMPLETION_INDEX is set: give the shard count (the Job's completions) with --shards N \
                        or SDGRAPH_SWEEP_SHARDS"
                .into());
        };
        return checked(i, n, "JOB_COMPLETION_INDEX");
    }
    if let Some(id) = env.slurm_id {
        // With the count given, the task ID is the shard itself, so a retry of some shards (`--array=3,5`) works.
        if let Some(n) = count {
            return checked(id, n, "SLURM_ARRAY_TASK_ID");
        }
        if env.slurm_step.is_some_and(|s| s != 1) {
            return Err("SLURM_ARRAY_TASK_STEP is not 1: give the shard count with --shards N (the task ID is then \
                        the shard), or use --shard"
                .into());
        }
        let Some(n) = env.slurm_count else {
            return Err("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT: give --shards N".into());
        };
        let min = env.slurm_min.unwrap_or(0);
        let Some(i) = id.checked_sub(min) else {
            return Err(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"));
        };
        return checked(i, n, "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN");
    }
    if count.is_some_and(|n| n != 1) {
        return Err("--shards (or SDGRAPH_SWEEP_SHARDS) needs an index: JOB_COMPLETION_INDEX, \
                    SLURM_ARRAY_TASK_ID, or --shard I/N"
            .into());
    }
    Ok((0, 1, "the whole sweep"))
}

#[derive(Default)]
struct Counts {
    rendered: usize,
    skipped: usize,
    by_other: usize,
    failed: usize,
}

enum Outcome {
    Rendered,
    DoneBefore,
    ByOther,
    Failed,
    Cancelled,
}

/// One shard's rows, rendered by one executor.
struct ShardRun<'a> {
    store: Store,
    manifest: PathBuf,
    rows: &'a [Row],
    registry: &'a Registry,
    graph: &'a Graph,
    base_dir: &'a Path,
    exec: Executor,
    progress: &'a dyn Progress,
    quiet: bool,
    shard: String,
    stall: Option<Duration>,
    /// Rows this shard's manifest records as done.
    recorded: HashSet<usize>,
    counts: Counts,
}

impl ShardRun<'_> {
    /// Reads which rows the manifest holds as done; a done row recorded with other params means the folder belongs
    /// to another sweep.
    fn read_manifest(&mut self) -> Result<(), String> {
        let (records, _) = store::read_manifest(&self.manifest)?;
        self.recorded.clear();
        for rec in records {
            let Some(row) = rec["row"].as_u64().map(|r| r as usize) else { continue };
            if rec["ok"] != true {
                continue;
            }
            match self.rows.get(row) {
                Some(r) if rec["params"] == r.json() => {
                    self.recorded.insert(row);
                }
                _ => {
                    return Err(format!(
                        "{}: row {row} was rendered with other params ({}) than the params file gives: \
                         this folder holds another sweep; use another --out-dir",
                        self.manifest.display(),
                        rec["params"]
                    ));
                }
            }
        }
        Ok(())
    }

    fn say(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// Renders the rows; the rows another process holds are left for the end, then waited for.
    fn run(&mut self, mine: &[usize]) -> i32 {
        let cancel = super::interrupt::cancel_flag();
        let mut deferred = Vec::new();
        for (pass, list) in [(0, mine.to_vec()), (1, Vec::new())] {
            let list = if pass == 0 { list } else { std::mem::take(&mut deferred) };
            for row in list {
                if super::interrupt::interrupted() {
                    eprintln!("cancelled");
                    return super::EXIT_INTERRUPTED;
                }
                if self.recorded.contains(&row) && self.store.row_dir(row).is_dir() {
                    self.counts.skipped += 1;
                    self.say(format!("row {row}: done before"));
                    continue;
                }
                let lock = match self.store.lock_row(row, pass == 1) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        self.say(format!("row {row}: another process holds it; coming back to it"));
                        deferred.push(row);
                        continue;
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return EXIT_FAILED;
                    }
                };
                let outcome = self.row(row, &cancel);
                drop(lock);
                match outcome {
                    Ok(Outcome::Rendered) => self.counts.rendered += 1,
                    Ok(Outcome::DoneBefore) => self.counts.skipped += 1,
                    Ok(Outcome::ByOther) => self.counts.by_other += 1,
                    Ok(Outcome::Failed) => self.counts.failed += 1,
                    Ok(Outcome::Cancelled) => {
                        eprintln!("cancelled");
                        return super::EXIT_INTERRUPTED;
                    }
                    // The folder or the manifest cannot be written: no later row can be either.
                    Err(e) => {
                        eprintln!("error: row {row}: {e}");
                        return EXIT_FAILED;
                    }
                }
            }
        }
        if self.counts.failed > 0 { EXIT_FAILED } else { 0 }
    }

    /// One row, holding its lock.
    fn row(&mut self, row: usize, cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<Outcome, String> {
        let params = self.rows[row].json();
        if let Some(rec) = self.store.row_record(row) {
            // In place: finished by another process since we read the manifest, or by one killed before its
            // manifest line.
            let rec = rec?;
            if rec["params"] != params {
                return Err(format!("{} holds a render of other params ({})", row_name(row), rec["params"]));
            }
            self.read_manifest()?;
            if self.recorded.contains(&row) {
                self.say(format!("row {row}: done by another process"));
                return Ok(Outcome::ByOther);
            }
            store::append_line(&self.manifest, &rec)?;
            self.recorded.insert(row);
            self.say(format!("row {row}: was in place without its manifest line; recorded"));
            return Ok(Outcome::DoneBefore);
        }
        self.store.remove_partials(row);
        self.say(format!("row {row}: rendering"));
        let start = Instant::now();
        let partial = self.store.partial_dir(row)?;
        let rendered = self.render(row, &partial, cancel);
        let seconds = start.elapsed().as_secs_f64();
        let adapter = gpu::device::shared().ok().map(|g| format!("{} ({})", g.info.name, g.info.backend));
        let mut record = serde_json::json!({
            "row": row,
            "shard": self.shard,
            "params": params,
            "seconds": seconds,
            "adapter": adapter,
        });
        match rendered {
            Ok(Some((files, models))) => {
                record["ok"] = true.into();
                record["files"] = files;
                record["models"] = models;
                if let Some(stall) = self.stall {
                    self.say(format!("row {row}: committing"));
                    std::thread::sleep(stall);
                }
                self.store.commit(row, &partial, &record)?;
                store::append_line(&self.manifest, &record)?;
                self.recorded.insert(row);
                let names: Vec<&str> =
                    record["files"].as_array().into_iter().flatten().filter_map(|f| f["path"].as_str()).collect();
                self.say(format!("row {row}: rendered in {seconds:.2}s: {}", names.join(", ")));
                Ok(Outcome::Rendered)
            }
            Ok(None) => {
                let _ = std::fs::remove_dir_all(&partial);
                Ok(Outcome::Cancelled)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                eprintln!("error: row {row}: {e}");
                record["ok"] = false.into();
                record["error"] = e.into();
                store::append_line(&self.manifest, &record)?;
                Ok(Outcome::Failed)
            }
        }
    }

    /// Runs the row's graph into `partial`: its files (paths relative to the output folder, SHA-256) and the model
    /// files it read, `Ok(None)` when cancelled, or the row's error.
    #[allow(clippy::type_complexity)]
    fn render(
        &mut self,
        row: usize,
        partial: &Path,
        cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Option<(serde_json::Value, serde_json::Value)>, String> {
        let mut g = self.graph.clone();
        g.apply_overrides(&self.rows[row].overrides()).map_err(|e| e.to_string())?;
        let text = g.to_ron();
        let valid = graph::validate(g, self.registry).map_err(|e| e.to_string())?;
        let opts = RunOptions {
            base_dir: self.base_dir.to_path_buf(),
            out_dir: partial.to_path_buf(),
            graph_text: text,
            progress: self.progress,
            cancel: cancel.clone(),
        };
        let mut report = self.exec.run(&valid, &opts);
        // A row the same as the one before it finds even its SaveImage in the cache, and would write nothing:
        // run it again on an empty cache (the models load again, once).
        let sink_cached = report.nodes.iter().any(|n| {
            n.status == NodeStatus::Cached && valid.nodes.iter().any(|v| v.id == n.id && v.kind.schema().output_node)
        });
        if report.ok && sink_cached {
            self.exec = Executor::default();
            report = self.exec.run(&valid, &opts);
        }
        if report.cancelled || super::interrupt::interrupted() {
            return Ok(None);
        }
        if !report.ok {
            return Err(report.errors().join("; "));
        }
        let mut files = Vec::new();
        for path in report.outputs() {
            let rel =
                path.strip_prefix(partial).map_err(|_| format!("{} was written outside the row", path.display()))?;
            let sha = graph::exec::provenance::sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = Path::new(&row_name(row)).join(rel);
            files.push(serde_json::json!({ "path": name.to_string_lossy().replace('\\', "/"), "sha256": sha }));
        }
        if files.is_empty() {
            return Err("the graph wrote no files (a sweep's graph needs a SaveImage)".into());
        }
        let models: serde_json::Map<String, serde_json::Value> = report
            .files_read()
            .into_iter()
            .map(|(p, f)| (p.display().to_string(), f.sha256.clone().map_or(serde_json::Value::Null, Into::into)))
            .collect();
        Ok(Some((files.into(), models.into())))
    }
}

/// `--status`: every manifest in the folder summed over the params file's rows. Exit 0 when every row is done.
fn status(out_dir: &Path, rows: &[Row], json: bool) -> i32 {
    let store = Store::at(out_dir);
    let mut done: BTreeMap<usize, usize> = BTreeMap::new();
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    let mut torn = 0;
    let mut other_params = Vec::new();
    for m in store::manifests(out_dir) {
        let (records, t) = match store::read_manifest(&m) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        };
        torn += t;
        for rec in records {
            let Some(row) = rec["row"].as_u64().map(|r| r as usize).filter(|r| *r < rows.len()) else { continue };
            if rec["params"] != rows[row].json() {
                other_params.push(row);
                continue;
            }
            if rec["ok"] == true && store.row_dir(row).is_dir() {
                *done.entry(row).or_default() += 1;
            } else if rec["ok"] == false {
                failed.insert(row, rec["error"].as_str().unwrap_or("").to_string());
            }
        }
    }
    failed.retain(|r, _| !done.contains_key(r));
    let missing: Vec<usize> = (0..rows.len()).filter(|r| !done.contains_key(r) && !failed.contains_key(r)).collect();
    let duplicates = done.values().filter(|n| **n > 1).count();
    // Of the rows not done, those a process is rendering now (it holds their lock).
    let running: Vec<usize> = missing.iter().chain(failed.keys()).copied().filter(|r| store.row_busy(*r)).collect();
    if json {
        let failed_json: Vec<serde_json::Value> =
            failed.iter().map(|(r, e)| serde_json::json!({ "row": r, "error": e })).collect();
        println!(
            "{}",
            serde_json::json!({
                "rows": rows.len(),
                "done": done.len(),
                "failed": failed_json,
                "missing": missing,
                "running": running,
                "duplicate_lines": duplicates,
                "torn_lines": torn,
                "other_params": other_params,
            })
        );
    } else {
        println!("{} rows: {} done, {} failed, {} missing", rows.len(), done.len(), failed.len(), missing.len());
        for (r, e) in &failed {
            println!("failed {r}: {e}");
        }
        if !running.is_empty() {
            let shown: Vec<String> = running.iter().map(|r| r.to_string()).collect();
            println!("being rendered now: {}", shown.join(" "));
        }
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(50).map(|r| r.to_string()).collect();
            let more = if missing.len() > 50 { format!(" ... ({} more)", missing.len() - 50) } else { String::new() };
            println!("missing: {}{more}", shown.join(" "));
        }
        if duplicates > 0 {
            println!("{duplicates} row(s) recorded more than once (counted once)");
        }
        if torn > 0 {
            println!("{torn} manifest line(s) unreadable (a process killed while writing; the row is re-rendered)");
        }
        if !other_params.is_empty() {
            println!("{} manifest line(s) record other params than the params file's", other_params.len());
        }
    }
    if done.len() == rows.len() { 0 } else { EXIT_FAILED }
}
