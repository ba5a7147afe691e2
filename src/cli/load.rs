//! Loading a graph for a command: from a .ron file or from the graph a PNG
//! carries, with `--set` overrides applied.

use std::path::{Path, PathBuf};

use graph::{self, Graph, SetOverride};
use graph::{Diagnostic, GraphErrors};

/// A graph read from disk, with what is needed to run it.
pub struct Loaded {
    pub graph: Graph,
    /// The text to embed in outputs: the file as written, or the graph
    /// re-serialised when `--set` changed it.
    pub text: String,
    /// Folder relative paths resolve against.
    pub base_dir: PathBuf,
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

pub fn load(file: &Path, sets: &[String]) -> Result<Loaded, GraphErrors> {
    let name = file.display().to_string();
    let one = |msg: String| GraphErrors(vec![Diagnostic::new(&name, None, msg)]);
    let overrides: Vec<SetOverride> = sets
        .iter()
        .map(|s| SetOverride::parse(s))
        .collect::<Result<_, _>>()
        .map_err(|e| GraphErrors(vec![Diagnostic::new("--set", None, e)]))?;
    let bytes = read_limited(file).map_err(one)?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (text_bytes, base_dir) = if bytes.starts_with(PNG_SIGNATURE) {
        match nodes::png_meta::embedded_graph(&bytes).map_err(one)? {
            Some((g, base)) => {
                // Prefer the folder the graph was first run from, if it still exists: recorded relative to
                // the picture's folder (absolute in older pictures, or when asked for).
                let base = base.map(|b| dir.join(b)).filter(|b| b.is_dir()).unwrap_or(dir);
                (g.into_bytes(), base)
            }
            None => {
                return Err(one("this PNG carries no sdgraph graph (it was not saved by sdgraph's SaveImage)".into()));
            }
        }
    } else {
        (bytes, dir)
    };
    let mut graph = graph::parse_graph(&name, &text_bytes)?;
    let text = if overrides.is_empty() {
        String::from_utf8_lossy(&text_bytes).into_owned()
    } else {
        graph.apply_overrides(&overrides)?;
        graph.to_ron()
    };
    Ok(Loaded { graph, text, base_dir })
}

/// Reads a file, refusing anything that is not a regular file or is far too
/// large to be a graph or a graph-carrying PNG.
fn read_limited(file: &Path) -> Result<Vec<u8>, String> {
    const MAX: u64 = 256 << 20;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX {
        return Err(format!("file is {} bytes; a graph (or PNG) over {MAX} bytes is refused", meta.len()));
    }
    std::fs::read(file).map_err(|e| format!("cannot read file: {e}"))
}
