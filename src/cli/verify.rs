//! `sdgraph check picture.png --verify`: re-hashes the model files a saved
//! PNG records (`sdgraph-models`) and reports every one that changed or is
//! gone, so a picture can be trusted to come from the weights it names.

use std::path::{Path, PathBuf};

use graph::exec::provenance::sha256_file;
use nodes::png_meta;

use super::EXIT_INVALID;

/// One recorded model file and what it is now.
struct Checked {
    path: String,
    /// Where it was found, when not at the recorded path (the graph's folder moved).
    found_at: Option<String>,
    recorded: String,
    actual: Option<String>,
    /// "ok", "changed" or "unreadable".
    status: &'static str,
    error: Option<String>,
}

impl Checked {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "found_at": self.found_at,
            "recorded": self.recorded,
            "actual": self.actual,
            "status": self.status,
            "error": self.error,
        })
    }
}

/// Verifies `file`'s recorded model digests. `base_dir` is where a re-run
/// would resolve the graph's paths (see load.rs); `nodes` is for the report.
/// Exit 0 when every file matches, 2 when any differs or cannot be read, or
/// the PNG records nothing to verify.
pub fn verify(file: &Path, base_dir: &Path, nodes: usize, json: bool) -> i32 {
    let fail = |msg: String| {
        if json {
            println!("{}", serde_json::json!({ "ok": false, "errors": [msg], "nodes": nodes }));
        } else {
            eprintln!("error: {}: {msg}", file.display());
        }
        EXIT_INVALID
    };
    // load() already read this file and refused one over its size limit.
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read file: {e}")),
    };
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return fail(
            "--verify checks a PNG saved by sdgraph against the model files it records; this is a graph file".into(),
        );
    }
    let texts = png_meta::read_texts(&bytes).unwrap_or_default();
    let models = match png_meta::embedded_models(&bytes) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return fail("this PNG records no model digests (saved by an sdgraph that did not record them)".into());
        }
        Err(e) => return fail(e),
    };
    let recorded_base = texts.iter().find(|(k, _)| k == png_meta::BASE_DIR_KEY).map(|(_, v)| PathBuf::from(v.as_str()));
    if !json && !models.is_empty() {
        eprintln!("verifying {} model file{}...", models.len(), if models.len() == 1 { "" } else { "s" });
    }
    let mut checked = Vec::new();
    for (path, recorded) in &models {
        let (at, found_at) = locate(Path::new(path), recorded_base.as_deref(), base_dir);
        // Always the bytes: the digest cache trusts size and mtime, which anyone can restore.
        let (actual, error) = match sha256_file(&at).map_err(|e| format!("cannot read {}: {e}", at.display())) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        let status = match &actual {
            Some(d) if d.eq_ignore_ascii_case(recorded) => "ok",
            Some(_) => "changed",
            None => "unreadable",
        };
        let found_at = found_at.map(|p| p.display().to_string());
        checked.push(Checked { path: path.clone(), found_at, recorded: recorded.clone(), actual, status, error });
    }
    let bad = checked.iter().filter(|c| c.status != "ok").count();
    if json {
        let models: Vec<_> = checked.iter().map(Checked::to_json).collect();
        println!("{}", serde_json::json!({ "ok": bad == 0, "errors": [], "nodes": nodes, "models": models }));
    } else {
        for c in &checked {
            let shown = match &c.found_at {
                Some(at) => format!("{} (found at {at})", c.path),
                None => c.path.clone(),
            };
            match c.status {
                "ok" => eprintln!("ok: {shown}"),
                "changed" => eprintln!(
                    "error: {shown}: contents changed: sha256 was {} when the picture was made, now {}",
                    c.recorded,
                    c.actual.as_deref().unwrap_or("?")
                ),
                _ => eprintln!("error: {shown}: {}", c.error.as_deref().unwrap_or("cannot be read")),
            }
        }
        if bad == 0 {
            eprintln!("{}: ok ({} nodes, {} model files unchanged)", file.display(), nodes, checked.len());
        } else {
            eprintln!("{bad} of {} model files changed or cannot be read since the picture was made", checked.len());
        }
    }
    if bad == 0 { 0 } else { EXIT_INVALID }
}

/// Where to find a recorded file: under `base_dir` when recorded relative; at its recorded path, or, when that is gone
/// and it lay under the graph's recorded folder, at the same place under the
/// folder a re-run uses (the PNG moved along with its models).
fn locate(path: &Path, recorded_base: Option<&Path>, base_dir: &Path) -> (PathBuf, Option<PathBuf>) {
    // Recorded relative to the graph's folder: found under the folder a re-run uses.
    if path.is_relative() {
        let at = base_dir.join(path);
        return (at.clone(), Some(at));
    }
    if path.exists() {
        return (path.to_path_buf(), None);
    }
    let moved = recorded_base.and_then(|b| path.strip_prefix(b).ok()).map(|rel| base_dir.join(rel));
    match moved {
        Some(p) if p.exists() => (p.clone(), Some(p)),
        _ => (path.to_path_buf(), None),
    }
}
