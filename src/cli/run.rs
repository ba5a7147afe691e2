//! `sdgraph run` and `sdgraph check`.

use std::path::Path;

use engine::exec::{Executor, NoProgress, RunOptions};
use engine::{GraphErrors, Registry, graph};

use super::load::load;
use super::progress::StderrProgress;
use super::{EXIT_FAILED, EXIT_INVALID};

/// Prints every diagnostic, one per line, on stderr (or as JSON on stdout).
pub fn report_errors(errs: &GraphErrors, json: bool) {
    if json {
        let v = serde_json::json!({ "ok": false, "errors": errs.0 });
        println!("{v}");
    } else {
        for d in &errs.0 {
            eprintln!("error: {d}");
        }
        let n = errs.0.len();
        eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
    }
}

pub fn check(registry: &Registry, file: &Path, sets: &[String], json: bool) -> i32 {
    let loaded = match load(file, sets) {
        Ok(l) => l,
        Err(e) => {
            report_errors(&e, json);
            return EXIT_INVALID;
        }
    };
    match graph::validate(loaded.graph, registry) {
        Ok(g) => {
            if json {
                println!("{}", serde_json::json!({ "ok": true, "errors": [], "nodes": g.nodes.len() }));
            } else {
                eprintln!("{}: ok ({} nodes)", file.display(), g.nodes.len());
            }
            0
        }
        Err(e) => {
            report_errors(&e, json);
            EXIT_INVALID
        }
    }
}

pub fn run(registry: &Registry, file: &Path, sets: &[String], out_dir: &Path, json: bool, quiet: bool) -> i32 {
    let loaded = match load(file, sets) {
        Ok(l) => l,
        Err(e) => {
            report_errors(&e, json);
            return EXIT_INVALID;
        }
    };
    let valid = match graph::validate(loaded.graph, registry) {
        Ok(g) => g,
        Err(e) => {
            report_errors(&e, json);
            return EXIT_INVALID;
        }
    };
    let stderr_progress = StderrProgress::new();
    let progress: &dyn engine::exec::Progress = if quiet { &NoProgress } else { &stderr_progress };
    let opts = RunOptions {
        base_dir: loaded.base_dir,
        out_dir: out_dir.to_path_buf(),
        graph_text: loaded.text,
        progress,
        cancel: super::interrupt::cancel_flag(),
    };
    let mut exec = Executor::default();
    let report = exec.run(&valid, &opts);
    if report.cancelled || super::interrupt::interrupted() {
        if json {
            println!("{}", serde_json::json!({ "ok": false, "cancelled": true, "nodes": report.nodes }));
        }
        eprintln!("cancelled");
        return super::EXIT_INTERRUPTED;
    }
    if json {
        let v = serde_json::json!({
            "ok": report.ok,
            "file": file.display().to_string(),
            "seconds": report.seconds,
            "nodes": report.nodes,
            "outputs": report.outputs(),
            "errors": report.errors(),
        });
        println!("{v}");
    } else {
        for e in report.errors() {
            eprintln!("error: {e}");
        }
        for p in report.outputs() {
            println!("{}", p.display());
        }
    }
    if report.ok { 0 } else { EXIT_FAILED }
}
