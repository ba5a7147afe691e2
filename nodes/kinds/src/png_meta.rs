//! PNG writing with the graph that made the picture embedded in text chunks,
//! and reading it back, so `sdgraph run picture.png` re-runs the graph.

use std::io::Cursor;
use std::path::{Component, Path, PathBuf};

/// iTXt keyword holding the graph as RON text.
pub const GRAPH_KEY: &str = "sdgraph";
/// iTXt keyword holding the folder the graph's relative paths resolve against,
/// relative to the folder the PNG was saved in (absolute in PNGs from older
/// versions, or when absolute paths are asked for), so a shared picture does
/// not carry the user's folder names.
pub const BASE_DIR_KEY: &str = "sdgraph-base";
/// iTXt keyword holding the model files the picture was made with, as JSON
/// `{"path": "sha256 hex"}` (`{}` when none), each path relative to the
/// graph's folder (absolute in older PNGs, or when asked for).
pub const MODELS_KEY: &str = "sdgraph-models";

/// `path` made absolute against the working folder, with `.` and `..` taken
/// out lexically (what a path as the user wrote it names, not where links lead).
fn normalized(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// `path` relative to the folder `from` (`../models/x.safetensors`), both
/// normalised; `None` when they share no root (another drive on Windows).
pub fn relative_path(path: &Path, from: &Path) -> Option<PathBuf> {
    let (path, from) = (normalized(path), normalized(from));
    let (mut p, mut f) = (path.components().peekable(), from.components().peekable());
    if p.peek() != f.peek() {
        return None;
    }
    while p.peek().is_some() && p.peek() == f.peek() {
        p.next();
        f.next();
    }
    let mut out: PathBuf = f.map(|_| Component::ParentDir).collect();
    out.extend(p);
    Some(if out.as_os_str().is_empty() { PathBuf::from(".") } else { out })
}

/// How a path is recorded in a PNG: relative to `from` or, when `absolute`
/// is asked for or no relative path exists, as the normalised full path
/// (or, failing a relative one and not asked for absolute, the file name).
pub fn recorded_path(path: &Path, from: &Path, absolute: bool) -> String {
    let shown = if absolute {
        normalized(path)
    } else {
        relative_path(path, from).unwrap_or_else(|| path.file_name().map(PathBuf::from).unwrap_or_default())
    };
    shown.to_string_lossy().into_owned()
}

/// Encodes 8-bit pixels (`channels` 1 = gray, 2 = gray+alpha, 3 = RGB,
/// 4 = RGBA) as PNG, with `texts` as iTXt chunks ahead of the pixel data.
pub fn encode_png(
    width: u32,
    height: u32,
    channels: usize,
    pixels: &[u8],
    texts: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let color = match channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => return Err(format!("cannot save an image with {c} channels as PNG")),
    };
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(Cursor::new(&mut out), width, height);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in texts {
        enc.add_itxt_chunk(k.to_string(), v.to_string()).map_err(|e| format!("PNG text chunk {k:?}: {e}"))?;
    }
    let mut w = enc.write_header().map_err(|e| format!("PNG header: {e}"))?;
    w.write_image_data(pixels).map_err(|e| format!("PNG data: {e}"))?;
    w.finish().map_err(|e| format!("PNG finish: {e}"))?;
    Ok(out)
}

/// The text chunks (tEXt, zTXt, iTXt) found before the pixel data.
pub fn read_texts(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let dec = png::Decoder::new(Cursor::new(bytes));
    let reader = dec.read_info().map_err(|e| format!("not a readable PNG: {e}"))?;
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.uncompressed_latin1_text {
        out.push((t.keyword.clone(), t.text.clone()));
    }
    for t in &info.compressed_latin1_text {
        if let Ok(s) = t.get_text() {
            out.push((t.keyword.clone(), s));
        }
    }
    for t in &info.utf8_text {
        if let Ok(s) = t.get_text() {
            out.push((t.keyword.clone(), s));
        }
    }
    Ok(out)
}

/// The graph text and base folder embedded by SaveImage, if any.
pub fn embedded_graph(bytes: &[u8]) -> Result<Option<(String, Option<String>)>, String> {
    let texts = read_texts(bytes)?;
    let find = |key: &str| texts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Ok(find(GRAPH_KEY).map(|g| (g, find(BASE_DIR_KEY))))
}

/// The workflow ComfyUI saved in a picture: the `prompt` text chunk (the API
/// form it ran) if there is one, else `workflow` (the UI form).
pub fn comfy_workflow(bytes: &[u8]) -> Result<Option<String>, String> {
    let texts = read_texts(bytes)?;
    let find = |key: &str| texts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Ok(find("prompt").or_else(|| find("workflow")))
}

/// The model files and digests embedded by SaveImage; `None` for a PNG that
/// records none (not saved by sdgraph, or by a version before it did).
pub fn embedded_models(bytes: &[u8]) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let texts = read_texts(bytes)?;
    let Some((_, json)) = texts.iter().find(|(k, _)| k == MODELS_KEY) else { return Ok(None) };
    serde_json::from_str(json).map(Some).map_err(|e| format!("the PNG's {MODELS_KEY:?} record is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_graph_round_trips_through_png() {
        let px = vec![10u8, 20, 30, 40, 50, 60];
        let graph = "(nodes: { \"a\": (kind: \"X\") }) // ünïcode";
        let png = encode_png(2, 1, 3, &px, &[(GRAPH_KEY, graph), (BASE_DIR_KEY, "/tmp/x")]).unwrap();
        let (g, base) = embedded_graph(&png).unwrap().unwrap();
        assert_eq!(g, graph);
        assert_eq!(base.as_deref(), Some("/tmp/x"));
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.as_raw(), &px);
    }

    #[test]
    fn model_digests_round_trip_and_a_bad_record_is_an_error() {
        let json = r#"{"/m/a.safetensors":"00ff"}"#;
        let png = encode_png(1, 1, 1, &[0], &[(MODELS_KEY, json)]).unwrap();
        let models = embedded_models(&png).unwrap().unwrap();
        assert_eq!(models.get("/m/a.safetensors").map(String::as_str), Some("00ff"));
        assert_eq!(embedded_models(&encode_png(1, 1, 1, &[0], &[]).unwrap()).unwrap(), None);
        let bad = encode_png(1, 1, 1, &[0], &[(MODELS_KEY, "[1, 2]")]).unwrap();
        assert!(embedded_models(&bad).unwrap_err().contains(MODELS_KEY));
    }

    #[cfg(unix)]
    #[test]
    fn recorded_paths_are_relative_to_the_graphs_folder_unless_absolute_is_asked_for() {
        let rel = |p: &str, from: &str| relative_path(Path::new(p), Path::new(from)).unwrap();
        assert_eq!(
            rel("/home/ann/work/models/m.safetensors", "/home/ann/work/graphs"),
            Path::new("../models/m.safetensors")
        );
        assert_eq!(rel("/home/ann/work/graphs/m.safetensors", "/home/ann/work/graphs/"), Path::new("m.safetensors"));
        assert_eq!(rel("/home/ann/work/graphs/../models/m", "/home/ann/work/./graphs"), Path::new("../models/m"));
        assert_eq!(rel("/home/ann/out", "/home/ann/out"), Path::new("."));
        assert_eq!(rel("/srv/m", "/home/ann/g"), Path::new("../../../srv/m"));
        let (m, g) = (Path::new("/home/ann/models/m.safetensors"), Path::new("/home/ann/graphs"));
        assert_eq!(recorded_path(m, g, false), "../models/m.safetensors");
        assert_eq!(recorded_path(m, g, true), "/home/ann/models/m.safetensors");
    }

    #[test]
    fn png_without_graph_reports_none_and_garbage_is_an_error() {
        let png = encode_png(1, 1, 1, &[0], &[]).unwrap();
        assert_eq!(embedded_graph(&png).unwrap(), None);
        assert!(read_texts(b"not a png").is_err());
    }
}
