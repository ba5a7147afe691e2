//! `sdgraph watch FILE`: run the graph, then run it again whenever the graph
//! file, a file it reads or a plugin file changes. An edited plugin is
//! loaded again (its nodes' cache keys include its text, so they re-run). Results stay cached between runs, so an
//! edit re-runs only the nodes whose inputs changed; an invalid save prints
//! its errors and keeps the last good graph.

use std::path::{Path, PathBuf};
use std::time::Duration;

use graph::exec::{Executor, NoProgress, NodeStatus, Progress, RunOptions, RunReport};
use graph::watch::{FileWatcher, input_files};
use graph::{GraphErrors, Registry};

use super::EXIT_FAILED;
use super::load::{ModelPaths, Sources, load};
use super::progress::StderrProgress;
use graph::comfy::MissingFiles;

pub struct WatchArgs {
    /// Plugin files and folders (reloaded when one of their files changes).
    pub plugin_dirs: Vec<PathBuf>,
    /// What the command read from `SDGRAPH_*` for the node kinds.
    pub node_settings: nodes::Settings,
    pub file: PathBuf,
    pub sets: Vec<String>,
    pub out_dir: PathBuf,
    pub json: bool,
    pub debounce: Duration,
    /// Stop after this many runs (for scripts and tests).
    pub max_runs: Option<usize>,
    /// Where a ComfyUI workflow's model names are looked up.
    pub models: ModelPaths,
}

fn json_line(run: usize, report: Option<&RunReport>, errors: Vec<String>) -> String {
    let ids = |s: NodeStatus| -> Vec<String> {
        report.map(|r| r.ids_with(s).into_iter().map(str::to_string).collect()).unwrap_or_default()
    };
    let outputs: Vec<String> =
        report.map(|r| r.outputs().iter().map(|p| p.display().to_string()).collect()).unwrap_or_default();
    serde_json::json!({
        "run": run,
        "ok": report.is_some_and(|r| r.ok) && errors.is_empty(),
        "executed": ids(NodeStatus::Executed),
        "cached": ids(NodeStatus::Cached),
        "errors": errors,
        "outputs": outputs,
    })
    .to_string()
}

pub fn watch(mut registry: Registry, args: WatchArgs) -> i32 {
    let mut watcher = match FileWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    // Ctrl-C stops the run in progress and the watch.
    let stop = super::interrupt::cancel_flag();
    let stderr_progress = StderrProgress::new();
    let progress: &dyn Progress = if args.json { &NoProgress } else { &stderr_progress };
    let mut exec = Executor::default();
    let mut last_files: Vec<PathBuf> = vec![args.file.clone()];
    let mut run = 0usize;
    watcher.set_files(&last_files);
    let mut plugin_files = plugin::plugin_files(&args.plugin_dirs).0;
    let mut reload_plugins = false;
    loop {
        run += 1;
        if reload_plugins {
            plugin_files = plugin::plugin_files(&args.plugin_dirs).0;
            match super::build_registry(&args.plugin_dirs, args.node_settings) {
                Ok(r) => registry = r,
                Err(errs) => {
                    // Keep the last good plugins and wait for the next save.
                    report_plugin_errors(run, &errs, args.json);
                    if args.max_runs.is_some_and(|m| run >= m) {
                        return 0;
                    }
                    match wait(&mut watcher, &last_files, &plugin_files, &args, &stop) {
                        Some(plugins_changed) => reload_plugins = plugins_changed,
                        None => return 0,
                    }
                    continue;
                }
            }
        }
        let sources = Sources { registry: &registry, models: &args.models, missing: MissingFiles::Refuse };
        match load(&args.file, &args.sets, &sources).and_then(|l| {
            let files = input_files(&l.graph, &registry, &l.base_dir);
            graph::validate(l.graph, &registry).map(|g| (g, l.text, l.base_dir, files))
        }) {
            Err(errs) => report_invalid(run, &errs, args.json),
            Ok((valid, text, base_dir, files)) => {
                last_files = std::iter::once(args.file.clone()).chain(files).collect();
                // Watch before running: a save during the run queues another run
                // instead of being missed.
                for problem in watcher.set_files(&watched(&last_files, &plugin_files)) {
                    eprintln!("warning: {problem}");
                }
                let opts = RunOptions {
                    base_dir,
                    out_dir: args.out_dir.clone(),
                    graph_text: text,
                    progress,
                    cancel: stop.clone(),
                };
                let report = exec.run(&valid, &opts);
                if args.json {
                    println!("{}", json_line(run, Some(&report), report.errors()));
                } else {
                    print_report(run, &report);
                }
            }
        }
        if args.max_runs.is_some_and(|m| run >= m) {
            return 0;
        }
        match wait(&mut watcher, &last_files, &plugin_files, &args, &stop) {
            Some(plugins_changed) => reload_plugins = plugins_changed,
            None => return 0,
        }
    }
}

fn watched(graph_files: &[PathBuf], plugin_files: &[PathBuf]) -> Vec<PathBuf> {
    graph_files.iter().chain(plugin_files).cloned().collect()
}

/// Waits for the next change; `Some(true)` when a plugin file changed,
/// `None` on Ctrl-C.
fn wait(
    watcher: &mut FileWatcher,
    graph_files: &[PathBuf],
    plugin_files: &[PathBuf],
    args: &WatchArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<bool> {
    // After an invalid load, keep watching what the last good graph read
    // (and the graph file itself).
    let files = watched(graph_files, plugin_files);
    for problem in watcher.set_files(&files) {
        eprintln!("warning: {problem}");
    }
    if !args.json {
        eprintln!("watching {} file(s); Ctrl-C to stop", files.len());
    }
    let changed = watcher.wait(args.debounce, stop)?;
    if !args.json {
        let names: Vec<String> = changed.iter().map(|p| short(p)).collect();
        eprintln!("changed: {}", names.join(", "));
    }
    let plugins: Vec<PathBuf> = plugin_files.iter().map(|p| graph::watch::normalize(p)).collect();
    Some(changed.iter().any(|c| plugins.contains(c)))
}

fn report_plugin_errors(run: usize, errs: &[plugin::PluginError], json: bool) {
    if json {
        println!("{}", json_line(run, None, errs.iter().map(|e| e.to_string()).collect()));
    } else {
        for e in errs {
            eprintln!("error: {e}");
        }
        eprintln!("run {run}: a plugin failed to load; keeping the last good plugins");
    }
}

fn short(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn report_invalid(run: usize, errs: &GraphErrors, json: bool) {
    if json {
        println!("{}", json_line(run, None, errs.0.iter().map(|d| d.to_string()).collect()));
    } else {
        for d in &errs.0 {
            eprintln!("error: {d}");
        }
        eprintln!("run {run}: the graph is invalid; keeping the last good results");
    }
}

fn print_report(run: usize, r: &RunReport) {
    for e in r.errors() {
        eprintln!("error: {e}");
    }
    for p in r.outputs() {
        println!("{}", p.display());
    }
    eprintln!(
        "run {run}: {} executed, {} cached in {:.2}s{}",
        r.ids_with(NodeStatus::Executed).len(),
        r.ids_with(NodeStatus::Cached).len(),
        r.seconds,
        if r.ok { "" } else { " (with errors)" }
    );
}
