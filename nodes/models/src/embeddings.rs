//! Textual-inversion embeddings: finding `embedding:NAME` in the embeddings folders and reading its vectors,
//! as ComfyUI's `comfy/sd1_clip.py` does (`expand_directory_list`, `load_embed`, `safe_load_embed_zip`,
//! `bundled_embed`; Comfy-Org/ComfyUI@4bd7a4004ab8bf0e516222036dc97733ddf3aa74, the same at
//! comfyanonymous/ComfyUI@b55c2247654476fbc744e572ba7a834fd9378745).
//!
//! # Finding the file
//!
//! Every folder and every folder below it (symbolic links followed) is tried: `folder/NAME` if it is a file, else
//! `folder/NAME.safetensors`, `.pt`, `.bin`, in that order. A name that leads out of the folder (`../x`, an
//! absolute path) is not looked up there. ComfyUI keeps the expanded folders in a Python `set`, so which of two
//! files of the same name wins is arbitrary there; here it is the folders in the order given, each followed by its
//! subfolders in name order.
//!
//! # Reading it
//!
//! - `.safetensors` (A1111's export `emb_params`; SDXL's `clip_l` / `clip_g`): the tensor under the key asked for
//!   (`clip_l` for SD 1.x), else the `bundle_emb.*.string_to_param.*` or `bundle_emb.*.<key>` tensors of a LoRA
//!   with bundled embeddings (concatenated), else the file's first tensor (the lowest data offset, the order
//!   `safetensors.torch.load_file` returns).
//! - `.pt` / `.bin` and anything else: PyTorch's zip format read by sdgraph's restricted unpickler, which runs no
//!   code and refuses any global but a state dict's (`torch.load(weights_only=True)` in ComfyUI). A1111's layout
//!   `{"string_to_param": {"*": tensor}, ...}` gives the first value of `string_to_param`; a diffusers
//!   `learned_embeds.bin` (`{token: tensor}`) its first tensor; otherwise the same key rules as safetensors. When
//!   the pickle is refused (an old embedding whose `string_to_param` is a `torch.nn.ParameterDict`, or a file
//!   calling `os.system`), ComfyUI's `safe_load_embed_zip` fallback reads the raw storages: the last `data/`
//!   entry of at least 768 floats, as rows of 768 when it divides, else 1024.
//!
//! The vectors are f32 whatever the file holds. A 1-D tensor is one vector; a 2-D tensor one vector per row.
//!
//! # Where sdgraph differs
//!
//! - A tensor of more than two dimensions is read as rows of its last dimension (ComfyUI inserts each
//!   `embed[i]` as one token position and fails when that is more than one vector).
//! - A file that cannot be read, or that holds no usable tensor, is reported with the reason; ComfyUI logs a
//!   traceback and skips it, or fails the prompt for some malformed files.
//! - A legacy (pre-1.6, not zip) `torch.save` file is not read.

use std::path::{Path, PathBuf};

use crate::checkpoint::pickle::{Object, TensorRef, Unpickled};
use crate::checkpoint::safetensors::{Dtype, SafeTensors, to_f32};
use crate::checkpoint::{pth, zip};

/// The extensions tried after the bare name, in ComfyUI's order.
pub const EXTENSIONS: [&str; 3] = [".safetensors", ".pt", ".bin"];

/// The key an SD 1.x text encoder's vectors are stored under in a multi-encoder file (ComfyUI's
/// `embedding_key` for SD 1.x's `SDTokenizer`).
pub const SD1_EMBEDDING_KEY: &str = "clip_l";

/// Folders, at most, one embeddings folder expands to: bounds the walk of a folder tree that links into itself
/// or holds far more than embeddings.
const MAX_FOLDERS: usize = 10_000;

/// The vectors of one embedding: `vectors` rows of `width` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vectors: usize,
    pub width: usize,
    /// `[vectors, width]`, row-major.
    pub data: Vec<f32>,
}

impl Embedding {
    /// Vector `i`.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
}

/// The folders `embedding:NAME` is looked up in, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddingFolders {
    pub dirs: Vec<PathBuf>,
}

impl EmbeddingFolders {
    pub fn new(dirs: Vec<PathBuf>) -> EmbeddingFolders {
        EmbeddingFolders { dirs }
    }

    /// ComfyUI's `expand_directory_list`: each folder, then every folder below it (links followed, each real
    /// folder once, subfolders in name order). Folders that do not exist are skipped.
    pub fn expanded(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for dir in &self.dirs {
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                if out.len() >= MAX_FOLDERS {
                    return out;
                }
                let Ok(real) = std::fs::canonicalize(&d) else { continue };
                if !real.is_dir() || !seen.insert(real) {
                    continue;
                }
                let mut subs: Vec<PathBuf> = std::fs::read_dir(&d)
                    .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                    .unwrap_or_default();
                subs.sort();
                out.push(d);
                stack.extend(subs.into_iter().rev());
            }
        }
        out
    }

    /// The file ComfyUI's `load_embed` would read for `name`, if any.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        find_in(&self.expanded(), name)
    }
}

/// [`EmbeddingFolders::find`] over folders already expanded (to walk the folders once for several names).
pub fn find_in(expanded: &[PathBuf], name: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    for dir in expanded {
        let Some(path) = inside(dir, name) else { continue };
        if path.is_file() {
            return Some(path);
        }
        for ext in EXTENSIONS {
            let mut p = path.clone().into_os_string();
            p.push(ext);
            let p = PathBuf::from(p);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// `dir/name` when it stays inside `dir` (ComfyUI: `os.path.commonpath((dir, abspath(join(dir, name)))) == dir`,
/// checked on the normalised path, links not resolved).
fn inside(dir: &Path, name: &str) -> Option<PathBuf> {
    use std::path::Component;
    let mut rel = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !rel.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if rel.as_os_str().is_empty() {
        // `dir` itself is a folder, never an embedding file; with an extension appended it is a sibling.
        return None;
    }
    Some(dir.join(rel))
}

/// Reads the embedding in `path` (see the module header); `key` is the text encoder's key (`clip_l` for SD 1.x).
/// Errors say why the file gives no vectors.
pub fn load_embedding(path: &Path, key: &str) -> Result<Embedding, String> {
    if path.to_string_lossy().to_lowercase().ends_with(".safetensors") {
        let st = SafeTensors::open(path).map_err(|e| e.message)?;
        let names = st.names().map(str::to_owned).collect();
        let name =
            pick_key(names, key, |n| st.info(n).map_or(usize::MAX, |i| i.start)).ok_or("the file holds no tensors")?;
        return from_tensors(&st, &name);
    }
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    match pth::parse_selected(&data, |u, root| select_pickled(u, root, key)) {
        Ok((tensors, bytes)) => {
            let st = SafeTensors::from_memory(path, bytes, tensors);
            let names: Vec<String> = st.names().map(str::to_owned).collect();
            let name = names.first().cloned().ok_or("the file holds no tensors")?;
            from_tensors(&st, &name)
        }
        Err((_, why)) if zip::is_zip(&data) => {
            raw_zip_fallback(&data).ok_or_else(|| format!("{why}; and it holds no raw storage of 768 floats or more"))
        }
        Err((_, why)) => Err(why),
    }
}

/// Which of `names` ComfyUI's `load_embed` takes from a dict of tensors: `key`, else the bundled-embedding keys
/// (several: joined with `\n`, concatenated by [`from_tensors`]), else the first by `order`.
fn pick_key(names: Vec<String>, key: &str, order: impl Fn(&str) -> usize) -> Option<String> {
    if names.iter().any(|n| n == key) {
        return Some(key.to_owned());
    }
    for suffix in [".string_to_param.*".to_owned(), format!(".{key}")] {
        let bundled: Vec<&String> =
            names.iter().filter(|n| n.starts_with("bundle_emb.") && n.ends_with(&suffix)).collect();
        if !bundled.is_empty() {
            return Some(bundled.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"));
        }
    }
    names.iter().min_by_key(|n| order(n)).cloned()
}

/// The tensor(s) named (several joined by `\n`: concatenated along the first axis) as vectors.
fn from_tensors(st: &SafeTensors, names: &str) -> Result<Embedding, String> {
    let mut out: Option<Embedding> = None;
    for name in names.split('\n') {
        let (shape, data) = st.f32_any(name).map_err(|e| e.message)?;
        let e = as_vectors(&shape, data).map_err(|m| format!("{name:?} {m}"))?;
        out = Some(match out {
            None => e,
            Some(mut acc) if acc.width == e.width => {
                acc.vectors += e.vectors;
                acc.data.extend(e.data);
                acc
            }
            Some(acc) => {
                return Err(format!(
                    "bundled embedding tensors of widths {} and {} do not concatenate",
                    acc.width, e.width
                ));
            }
        });
    }
    out.ok_or_else(|| "the file holds no tensors".into())
}

/// A tensor of `shape` as vectors of its last dimension.
fn as_vectors(shape: &[usize], data: Vec<f32>) -> Result<Embedding, String> {
    match shape {
        [] => Err("is a single number, not a vector".into()),
        [.., 0] => Err(format!("has shape {shape:?}: vectors of no values")),
        [.., w] => Ok(Embedding { vectors: data.len() / w, width: *w, data }),
    }
}

/// Tensors picked from a pickle by name, or the error (with the key when there is one) `pth` reports.
type Selected = Result<Vec<(String, TensorRef)>, (Option<String>, String)>;

/// The tensors ComfyUI's `load_embed` would take from an unpickled `torch.load` result, by name.
fn select_pickled(u: &Unpickled, root: &Object, key: &str) -> Selected {
    let top = |m: String| (None, m);
    if let Some(params) = u.get(root, "string_to_param") {
        // A1111: `{"string_to_token": {"*": 265}, "string_to_param": {"*": tensor}, "name": ..., "step": ...}`.
        let d = u.dict(params).ok_or_else(|| top(format!("string_to_param is {params:?}, not a dict")))?;
        return match d.first() {
            Some((_, Object::Tensor(t))) => Ok(vec![("string_to_param.*".into(), TensorRef::clone(t))]),
            Some((_, other)) => Err(top(format!("string_to_param's first value is {other:?}, not a tensor"))),
            None => Err(top("string_to_param is empty".into())),
        };
    }
    let d = u.dict(root).ok_or_else(|| top(format!("the pickle holds {root:?}, not a dict of tensors")))?;
    let mut tensors: Vec<(String, TensorRef)> = Vec::new();
    for (k, v) in d {
        if let (Object::Str(k), Object::Tensor(t)) = (k, v) {
            tensors.push((k.to_string(), TensorRef::clone(t)));
        }
    }
    let names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let pos = |n: &str| names.iter().position(|m| m == n).unwrap_or(usize::MAX);
    let picked = pick_key(names.clone(), key, pos).ok_or_else(|| top("the dict holds no tensors".into()))?;
    let wanted: Vec<&str> = picked.split('\n').collect();
    if wanted.len() > 1 {
        return Err(top("bundled embeddings (bundle_emb.*) are read from .safetensors files only".into()));
    }
    Ok(tensors.into_iter().filter(|(n, _)| n == wanted[0]).take(1).collect())
}

/// ComfyUI's `safe_load_embed_zip`: the last `data/` entry (in archive order) of at least 768 f32 values, as rows
/// of 768 when that divides its length, else of 1024.
fn raw_zip_fallback(data: &[u8]) -> Option<Embedding> {
    let archive = zip::read_archive(data).ok()?;
    let mut entries: Vec<&zip::Entry> = archive.entries.values().filter(|e| e.name.contains("data/")).collect();
    entries.sort_by_key(|e| e.start);
    for e in entries.into_iter().rev() {
        let bytes = archive.read(data, &e.name).ok()?;
        let number = bytes.len() / 4;
        if number < 768 {
            continue;
        }
        let width = if number.is_multiple_of(768) { 768 } else { 1024 };
        if !number.is_multiple_of(width) {
            // ComfyUI's reshape raises here.
            return None;
        }
        let values = to_f32(Dtype::F32, &bytes[..number * 4])?;
        return Some(Embedding { vectors: number / width, width, data: values });
    }
    None
}
