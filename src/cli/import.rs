//! `sdgraph import FILE [-o OUT]`: a ComfyUI workflow written out as an
//! sdgraph graph, to keep, edit and run like any other.

use std::path::Path;

use graph::comfy::{self, MissingFiles};
use graph::{Diagnostic, GraphErrors, Registry};

use super::EXIT_INVALID;
use super::load::{ModelPaths, PNG_SIGNATURE, Sources, read_limited};
use super::run::report_errors;

/// Writes the graph (even one that does not validate, so it can be fixed by
/// hand); exits 2 when the workflow cannot be imported or the graph has problems.
pub fn import(registry: &Registry, models: &ModelPaths, file: &Path, out: Option<&Path>) -> i32 {
    let name = file.display().to_string();
    let fail = |msg: String| {
        report_errors(&GraphErrors(vec![Diagnostic::new(&name, None, msg)]), false);
        EXIT_INVALID
    };
    let bytes = match read_limited(file) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let json = if bytes.starts_with(PNG_SIGNATURE) {
        match nodes::png_meta::comfy_workflow(&bytes) {
            Ok(Some(j)) => j.into_bytes(),
            Ok(None) => {
                return fail("this PNG carries no ComfyUI workflow (no \"prompt\" or \"workflow\" text)".into());
            }
            Err(e) => return fail(e),
        }
    } else if comfy::looks_like_json(&bytes) {
        bytes
    } else {
        return fail("not a ComfyUI workflow: expected JSON (API or UI format) or a PNG ComfyUI saved".into());
    };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let sources = Sources { registry, models, missing: MissingFiles::Warn };
    let imported = match super::load::import(&name, &json, &base_dir, &sources) {
        Ok(i) => i,
        Err(e) => {
            report_errors(&e, false);
            return EXIT_INVALID;
        }
    };
    match out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &imported.ron) {
                return fail(format!("cannot write {}: {e}", path.display()));
            }
        }
        None => print!("{}", imported.ron),
    }
    match graph::validate(imported.graph, registry) {
        Ok(g) => {
            let to = out.map(|p| format!(" -> {}", p.display())).unwrap_or_default();
            eprintln!("{name}: imported {} nodes{to}", g.nodes.len());
            0
        }
        Err(e) => {
            report_errors(&e, false);
            EXIT_INVALID
        }
    }
}
