//! `sdgraph run` and `sdgraph check`.

use std::path::{Path, PathBuf};

use graph::exec::{Executor, NoProgress, Progress, RunOptions, RunReport};
use graph::{GraphErrors, Registry};

use nodes::preview::PreviewWriter;

use super::load::{ModelPaths, Sources, load};
use super::progress::StderrProgress;
use super::{EXIT_FAILED, EXIT_INVALID};
use graph::comfy::MissingFiles;

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

/// `check --verify` re-hashes the model files a PNG records (see verify.rs).
pub fn check(registry: &Registry, models: &ModelPaths, file: &Path, sets: &[String], json: bool, verify: bool) -> i32 {
    let sources = Sources { registry, models, missing: MissingFiles::Warn };
    let loaded = match load(file, sets, &sources) {
        Ok(l) => l,
        Err(e) => {
            report_errors(&e, json);
            return EXIT_INVALID;
        }
    };
    let base_dir = loaded.base_dir.clone();
    match graph::validate(loaded.graph, registry) {
        Ok(g) if verify => super::verify::verify(file, &base_dir, g.nodes.len(), json),
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

/// What `sdgraph run` was asked to do.
pub struct RunArgs {
    pub file: PathBuf,
    pub sets: Vec<String>,
    pub out_dir: PathBuf,
    /// Print the run report as JSON on stdout.
    pub json: bool,
    /// Draw progress on stderr.
    pub show_progress: bool,
    /// Folder for sampler previews, and the steps between them.
    pub preview: Option<(PathBuf, u64)>,
    /// Print the kernel profile (the shared GPU was opened with profiling on).
    pub profile: bool,
    /// Where a ComfyUI workflow's model names are looked up.
    pub models: ModelPaths,
}

pub fn run(registry: &Registry, args: &RunArgs) -> i32 {
    let RunArgs { file, sets, out_dir, json, .. } = args;
    let (file, json) = (file.as_path(), *json);
    let sources = Sources { registry, models: &args.models, missing: MissingFiles::Refuse };
    let loaded = match load(file, sets, &sources) {
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
    let shown: &dyn Progress = if args.show_progress { &stderr_progress } else { &NoProgress };
    let previews = match &args.preview {
        None => None,
        Some((dir, every)) => match PreviewWriter::new(shown, dir, *every) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("error: --preview: {e}");
                return EXIT_INVALID;
            }
        },
    };
    let progress: &dyn Progress = match &previews {
        Some(w) => w,
        None => shown,
    };
    let opts = RunOptions {
        base_dir: loaded.base_dir,
        out_dir: out_dir.to_path_buf(),
        graph_text: loaded.text,
        progress,
        cancel: super::interrupt::cancel_flag(),
    };
    let mut exec = Executor::default();
    let report = exec.run(&valid, &opts);
    if let Some(e) = previews.as_ref().and_then(PreviewWriter::error) {
        eprintln!("warning: {e}");
    }
    if report.cancelled || super::interrupt::interrupted() {
        if json {
            println!("{}", serde_json::json!({ "ok": false, "cancelled": true, "nodes": report.nodes }));
        }
        eprintln!("cancelled");
        return super::EXIT_INTERRUPTED;
    }
    let profile = if args.profile { profile_report() } else { None };
    if let (Some(p), false) = (&profile, json) {
        eprint!("{}", p.render(20));
    }
    if json {
        let mut v = serde_json::json!({
            "ok": report.ok,
            "file": file.display().to_string(),
            "seconds": report.seconds,
            "nodes": report.nodes,
            "outputs": report.outputs(),
            "previews": report.previews(),
            "models": models_json(&report),
            "errors": report.errors(),
        });
        if let (Some(p), Some(obj)) = (profile, v.as_object_mut()) {
            obj.insert("profile".into(), serde_json::to_value(p).unwrap_or_default());
        }
        println!("{v}");
    } else {
        for e in report.errors() {
            eprintln!("error: {e}");
        }
        for p in report.outputs() {
            println!("{}", p.display());
        }
        for p in report.previews() {
            eprintln!("preview: {}", p.display());
        }
    }
    if report.ok { 0 } else { EXIT_FAILED }
}

/// The kernel times of this run, from the shared GPU (opened with profiling by `main`).
fn profile_report() -> Option<gpu::profile::ProfileReport> {
    let gpu = match gpu::device::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("warning: --profile: {e}");
            return None;
        }
    };
    match gpu.profile_report() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warning: --profile: {e}");
            None
        }
    }
}

/// `{"path": "sha256"}` for every model file the run used (`null` where it
/// could not be hashed; the node's `files_read` entry says why).
fn models_json(report: &RunReport) -> serde_json::Value {
    let map = report
        .files_read()
        .into_iter()
        .map(|(path, f)| (path.display().to_string(), f.sha256.clone().map_or(serde_json::Value::Null, Into::into)))
        .collect();
    serde_json::Value::Object(map)
}
