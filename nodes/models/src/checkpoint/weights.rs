//! Named weights for the models, whatever file layout they came from.
//!
//! Models ask for tensors by their single-file (LDM/CompVis) names, the
//! layout users download (`model.diffusion_model.input_blocks.0.0.weight`);
//! a diffusers folder is mapped onto those names by `convert`. Every lookup
//! checks the shape and names the file and key when something is wrong.
//!
//! A source can keep a table of the GPU tensors made from it ([`WeightSource::resident`]): a network
//! built again from the same source (LoraLoader's, with a few weights patched) then shares every
//! tensor it does not patch with the first one instead of reading and uploading it again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use gpu::{DType, Gpu, Tensor, WeakTensor};

use super::safetensors::{CheckpointError, SafeTensors, convert_into};

/// Where one canonical name's data lives.
#[derive(Debug, Clone)]
struct Location {
    file: usize,
    key: String,
    /// The shape under the canonical name when it differs from the stored
    /// one with the same data (diffusers' `[C, C]` linear for LDM's `[C, C, 1, 1]` conv).
    shape: Option<Vec<usize>>,
    /// How the canonical tensor is taken from the stored one.
    view: View,
}

impl Location {
    /// A name read as stored (no view).
    fn new(file: usize, key: String, shape: Option<Vec<usize>>) -> Location {
        Location { file, key, shape, view: View::Whole }
    }
}

/// How a canonical name's values are taken from its stored tensor: a layout conversion that is more than a
/// rename (`convert::open_clip_text_key`: open_clip's packed `in_proj` q/k/v and its `[width, proj]` text projection).
/// Names with a view other than `Whole` are read through f32 on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The stored tensor as it is.
    Whole,
    /// Part `index` of `parts` equal blocks along the first axis (`in_proj_weight` [3C, C] -> q, k, v [C, C]).
    Split { index: usize, parts: usize },
    /// The stored 2-D tensor transposed (`text_projection` [width, proj] -> a Linear's [proj, width]).
    Transposed,
}

/// The GPU tensors made from a source's files, shared by every source derived from it (its LoRA'd
/// copies). Tensors the networks own are held weakly, so the table costs no memory and forgets what
/// every network dropped; the base values of weights a LoRA patches are held (`kept`), so a changed
/// strength merges onto them again without reading the file.
#[derive(Default)]
pub struct Resident {
    /// (canonical name, dtype) -> the tensor uploaded for it.
    loaded: Mutex<HashMap<(String, DType), WeakTensor>>,
    /// (modules joined by `+`, dtype) -> what [`Weights::derived`] built from their unpatched weights.
    derived: Mutex<HashMap<(String, DType), Vec<WeakTensor>>>,
    kept: Mutex<HashMap<(String, DType), Tensor>>,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resident({} kept)", self.kept.lock().map(|k| k.len()).unwrap_or(0))
    }
}

impl Resident {
    fn get(&self, name: &str, dtype: DType) -> Option<Tensor> {
        let key = (name.to_string(), dtype);
        if let Some(t) = self.loaded.lock().ok()?.get(&key).and_then(WeakTensor::upgrade) {
            return Some(t);
        }
        self.kept.lock().ok()?.get(&key).cloned()
    }

    fn record(&self, name: &str, dtype: DType, t: &Tensor) {
        if let Ok(mut m) = self.loaded.lock() {
            m.insert((name.to_string(), dtype), t.downgrade());
        }
    }

    /// Bytes of the base values held for patched weights.
    pub fn kept_bytes(&self) -> u64 {
        self.kept.lock().map(|k| k.values().map(Tensor::bytes).sum()).unwrap_or(0)
    }
}

/// A set of checkpoint files seen through canonical names, with an overlay of
/// patched values (LoRA merges) that lookups consult first.
#[derive(Debug, Clone)]
pub struct WeightSource {
    files: Vec<Arc<SafeTensors>>,
    names: BTreeMap<String, Location>,
    /// Canonical name -> replacement values in f32 (same element count and order as the stored tensor).
    overlay: BTreeMap<String, Arc<Vec<f32>>>,
    /// Canonical name -> a replacement already on the GPU (a LoRA merged there), in the networks' dtype.
    patched: BTreeMap<String, Tensor>,
    /// The tensors made from the files so far; `None`: nothing is remembered.
    resident: Option<Arc<Resident>>,
}

impl WeightSource {
    /// A single-file checkpoint: its names are already canonical.
    pub fn single_file(path: &Path) -> Result<WeightSource, CheckpointError> {
        Ok(Self::from_tensors(SafeTensors::open(path)?))
    }

    /// One already open file (or in-memory tensors, such as a `.pth` state dict), names as stored.
    pub fn from_tensors(st: SafeTensors) -> WeightSource {
        let names = st.names().map(|n| (n.to_string(), Location::new(0, n.to_string(), None))).collect();
        WeightSource {
            files: vec![Arc::new(st)],
            names,
            overlay: BTreeMap::new(),
            patched: BTreeMap::new(),
            resident: None,
        }
    }

    /// Builds a source from files and a table of canonical name -> (file,
    /// stored key, canonical shape when it differs from the stored one).
    pub fn from_parts(
        files: Vec<Arc<SafeTensors>>,
        table: Vec<(String, usize, String, Option<Vec<usize>>)>,
    ) -> WeightSource {
        let names = table.into_iter().map(|(name, file, key, shape)| (name, Location::new(file, key, shape))).collect();
        WeightSource { files, names, overlay: BTreeMap::new(), patched: BTreeMap::new(), resident: None }
    }

    /// This source with `patched` values replacing (or replacing again) those of existing names;
    /// the files are shared, not copied. Each value holds the weight's elements in its stored order.
    pub fn with_overlay(&self, patched: impl IntoIterator<Item = (String, Vec<f32>)>) -> WeightSource {
        let mut out = self.clone();
        for (name, values) in patched {
            out.overlay.insert(name, Arc::new(values));
        }
        out
    }

    /// This source remembering the GPU tensors made from it (a table of its own unless it has one), so
    /// that sources derived from it ([`with_patched`](Self::with_patched)) share them.
    pub fn resident(mut self) -> WeightSource {
        self.resident.get_or_insert_with(Default::default);
        self
    }

    /// The table of tensors made from this source's files, when it keeps one.
    pub fn resident_table(&self) -> Option<&Arc<Resident>> {
        self.resident.as_ref()
    }

    /// This source with GPU tensors replacing (or replacing again) those of existing names; everything
    /// else, the table of resident tensors included, is shared.
    pub fn with_patched(&self, patched: impl IntoIterator<Item = (String, Tensor)>) -> WeightSource {
        let mut out = self.clone();
        out.patched.extend(patched);
        out
    }

    /// The names replaced on the GPU, in order.
    pub fn patched_names(&self) -> impl Iterator<Item = &str> {
        self.patched.keys().map(|k| k.as_str())
    }

    /// The GPU replacement of `name`, when there is one.
    pub fn patched(&self, name: &str) -> Option<&Tensor> {
        self.patched.get(name)
    }

    /// Whether `name` is replaced (on the GPU or in the overlay).
    fn is_patched(&self, name: &str) -> bool {
        self.patched.contains_key(name) || self.overlay.contains_key(name)
    }

    /// The value of `name` as a network built from this source holds it, in `dtype` and its stored
    /// shape: a patch's, a resident tensor's, or the file's, uploaded once and kept in the resident
    /// table (what a LoRA merges onto, again at each strength).
    pub fn base_tensor(&self, gpu: &Gpu, name: &str, dtype: DType) -> Result<Tensor, WeightError> {
        let w = self.prefix("");
        let shape = w.shape(name)?;
        if self.is_patched(name) {
            return w.tensor(gpu, name, &shape, dtype);
        }
        if let Some(t) = self.resident.as_ref().and_then(|r| r.get(name, dtype)) {
            return t.reshape(&shape).map_err(|e| WeightError::Gpu(name.to_string(), e.to_string()));
        }
        let t = w.tensor(gpu, name, &shape, dtype)?;
        if let Some(r) = &self.resident
            && let Ok(mut kept) = r.kept.lock()
        {
            kept.insert((name.to_string(), dtype), t.clone());
        }
        Ok(t)
    }

    /// The patched values of `name`, when the overlay holds it.
    pub fn overlaid(&self, name: &str) -> Option<&[f32]> {
        self.overlay.get(name).map(|v| v.as_slice())
    }

    /// The names the overlay replaces, in order.
    pub fn overlay_names(&self) -> impl Iterator<Item = &str> {
        self.overlay.keys().map(|k| k.as_str())
    }

    /// The text encoder's names as ComfyUI's SD 1.x `process_clip_state_dict` makes them: older
    /// exports store `cond_stage_model.transformer.X` without the `text_model.` level, which
    /// ComfyUI inserts (`comfy/supported_models.py`, `SD15.process_clip_state_dict`).
    pub fn with_clip_text_model_level(mut self) -> WeightSource {
        const CLIP: &str = "cond_stage_model.transformer.";
        let old: Vec<String> = self
            .names
            .keys()
            .filter(|k| k.starts_with(CLIP) && !k.starts_with("cond_stage_model.transformer.text_model."))
            .cloned()
            .collect();
        for k in old {
            if let Some(loc) = self.names.remove(&k) {
                self.names.insert(format!("{CLIP}text_model.{}", &k[CLIP.len()..]), loc);
            }
        }
        self
    }

    /// This source with the names under `prefix` renamed by a layout conversion (one of `convert`'s tables):
    /// `rename(rest)` gives the names (under the same prefix) that the stored name `prefix + rest` becomes, each
    /// with how it takes its values, or `None` to keep the name as it is.
    pub fn with_renamed_under(
        &self,
        prefix: &str,
        rename: impl Fn(&str) -> Option<Vec<(String, View)>>,
    ) -> WeightSource {
        let mut out = self.clone();
        let under: Vec<String> = self.names.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        for k in under {
            let Some(new) = rename(&k[prefix.len()..]) else { continue };
            let Some(loc) = out.names.remove(&k) else { continue };
            for (name, view) in new {
                out.names.insert(format!("{prefix}{name}"), Location { view, ..loc.clone() });
            }
        }
        out
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(|k| k.as_str())
    }

    /// The files the weights come from (one, or a diffusers folder's components).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path())
    }

    /// A `__metadata__` entry from any of the files (the first that has it).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.files.iter().find_map(|f| f.metadata().get(key).map(|s| s.as_str()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The weights under `prefix` (e.g. `"model.diffusion_model."`).
    pub fn prefix(&self, prefix: &str) -> Weights<'_> {
        Weights { src: self, prefix: prefix.to_string() }
    }

    fn missing(&self, name: &str) -> CheckpointError {
        CheckpointError {
            file: self.files.first().map(|f| f.path().to_path_buf()).unwrap_or_default(),
            key: Some(name.to_string()),
            message: "missing from the checkpoint".into(),
        }
    }

    fn lookup(&self, name: &str) -> Result<(&SafeTensors, &Location), CheckpointError> {
        let loc = self.names.get(name).ok_or_else(|| self.missing(name))?;
        Ok((&self.files[loc.file], loc))
    }
}

/// A view of a `WeightSource` under a name prefix, as candle's `VarBuilder::pp`.
#[derive(Debug, Clone)]
pub struct Weights<'a> {
    src: &'a WeightSource,
    prefix: String,
}

impl<'a> Weights<'a> {
    /// A deeper prefix: `w.pp("input_blocks.1").pp("0")`.
    pub fn pp(&self, part: impl std::fmt::Display) -> Weights<'a> {
        Weights { src: self.src, prefix: format!("{}{part}.", self.prefix) }
    }

    pub fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(&self.full_name(name))
    }

    /// The stored shape of a weight.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, CheckpointError> {
        let full = self.full_name(name);
        let (st, loc) = self.src.lookup(&full)?;
        if loc.view != View::Whole {
            return view_shape(st, loc, &full);
        }
        Ok(loc.shape.clone().or_else(|| st.info(&loc.key).map(|i| i.shape.clone())).unwrap_or_default())
    }

    /// A weight as f32 on the CPU, checked against `shape` (the overlay's value when it has one).
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let full = self.full_name(name);
        let (st, loc) = self.src.lookup(&full)?;
        if let Some(v) = self.src.overlaid(&full) {
            check_overlay(st, &full, v, shape)?;
            return Ok(v.to_vec());
        }
        if loc.view != View::Whole {
            return read_view(st, loc, &full, shape);
        }
        st.f32(&loc.key, &stored_shape(st, loc, shape)).map_err(|mut e| {
            e.key = Some(full);
            e
        })
    }

    /// What `build` makes from the weights of `modules` (names under this prefix), shared with every
    /// network of the same source whose `modules` are not patched: a stacked or reordered weight is
    /// made once, as its parts' tensors are uploaded once.
    pub fn derived<E: From<WeightError>>(
        &self,
        modules: &[&str],
        dtype: DType,
        build: impl FnOnce(&Weights<'a>) -> Result<Vec<Tensor>, E>,
    ) -> Result<Vec<Tensor>, E> {
        let fulls: Vec<String> = modules.iter().map(|m| format!("{}.", self.full_name(m))).collect();
        let patched = self.src.patched.keys().chain(self.src.overlay.keys());
        let untouched = !patched.into_iter().any(|k| fulls.iter().any(|f| k.starts_with(f.as_str())));
        let Some(r) = self.src.resident.as_ref().filter(|_| untouched) else { return build(self) };
        let key = (fulls.join("+"), dtype);
        let found =
            r.derived.lock().ok().and_then(|m| {
                m.get(&key).and_then(|ts| ts.iter().map(WeakTensor::upgrade).collect::<Option<Vec<_>>>())
            });
        if let Some(ts) = found {
            return Ok(ts);
        }
        let ts = build(self)?;
        if let Ok(mut m) = r.derived.lock() {
            m.insert(key, ts.iter().map(Tensor::downgrade).collect());
        }
        Ok(ts)
    }

    /// A weight uploaded to the GPU as `dtype`, checked against `shape` (or the same tensor another
    /// network of this source uploaded, or its patched replacement).
    pub fn tensor(&self, gpu: &Gpu, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, WeightError> {
        let full = self.full_name(name);
        let (st, loc) = self.src.lookup(&full)?;
        let gpu_error = |e: gpu::GpuError| WeightError::Gpu(full.clone(), e.to_string());
        if let Some(t) = self.src.patched.get(&full) {
            if t.dtype() != dtype {
                let message = format!("patched as {:?}, wanted as {dtype:?}", t.dtype());
                return Err(CheckpointError { file: st.path().to_path_buf(), key: Some(full.clone()), message }.into());
            }
            return t.reshape(shape).map_err(gpu_error);
        }
        let resident = self.src.resident.as_ref().filter(|_| !self.src.overlay.contains_key(&full));
        if let Some(t) = resident.and_then(|r| r.get(&full, dtype))
            && t.numel() == gpu::tensor::numel(shape)
        {
            return t.reshape(shape).map_err(gpu_error);
        }
        let t = self.upload(gpu, &full, st, loc, shape, dtype)?;
        if let Some(r) = resident {
            r.record(&full, dtype, &t);
        }
        Ok(t)
    }

    /// Reads `full` from its file (or the overlay) and uploads it.
    fn upload(
        &self,
        gpu: &Gpu,
        full: &str,
        st: &SafeTensors,
        loc: &Location,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor, WeightError> {
        let full = full.to_string();
        if let Some(v) = self.src.overlaid(&full) {
            check_overlay(st, &full, v, shape)?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            return gpu
                .upload_filled(shape, dtype, |dst| {
                    convert_into(super::safetensors::Dtype::F32, &bytes, dtype, dst);
                })
                .map_err(|e| WeightError::Gpu(full.clone(), e.to_string()));
        }
        if loc.view != View::Whole {
            let bytes: Vec<u8> = read_view(st, loc, &full, shape)?.iter().flat_map(|x| x.to_le_bytes()).collect();
            return gpu
                .upload_filled(shape, dtype, |dst| {
                    convert_into(super::safetensors::Dtype::F32, &bytes, dtype, dst);
                })
                .map_err(|e| WeightError::Gpu(full.clone(), e.to_string()));
        }
        let stored = stored_shape(st, loc, shape);
        let error =
            |message: String| CheckpointError { file: st.path().to_path_buf(), key: Some(full.clone()), message };
        let (info, bytes) = st.bytes(&loc.key).map_err(|e| error(e.message))?;
        if info.shape != stored {
            return Err(error(format!("has shape {:?}, expected {stored:?}", info.shape)).into());
        }
        let mut converted = true;
        let t = gpu
            .upload_filled(shape, dtype, |dst| converted = convert_into(info.dtype, bytes, dtype, dst))
            .map_err(|e| WeightError::Gpu(full.clone(), e.to_string()))?;
        if !converted {
            return Err(error(format!("has dtype {:?}, expected a float type", info.dtype)).into());
        }
        Ok(t)
    }
}

/// The shape the file must hold for a weight wanted as `shape`: a name
/// mapped from another layout with its own canonical shape (a 1x1 conv read
/// as a linear) holds the same elements in the same order, so the file's
/// shape stands; otherwise `shape` itself.
fn stored_shape(st: &SafeTensors, loc: &Location, shape: &[usize]) -> Vec<usize> {
    match &loc.shape {
        Some(canonical) if canonical == shape => st.info(&loc.key).map(|i| i.shape.clone()).unwrap_or_default(),
        _ => shape.to_vec(),
    }
}

/// The canonical shape of a name with a view, from its stored shape; an error names the stored tensor.
fn view_shape(st: &SafeTensors, loc: &Location, full: &str) -> Result<Vec<usize>, CheckpointError> {
    let s = st.info(&loc.key).map(|i| i.shape.clone()).unwrap_or_default();
    let error =
        |message: String| CheckpointError { file: st.path().to_path_buf(), key: Some(loc.key.clone()), message };
    match (loc.view, &s[..]) {
        (View::Whole, _) => Ok(s),
        (View::Split { parts, .. }, [n, rest @ ..]) if n % parts == 0 => Ok([&[n / parts], rest].concat()),
        (View::Split { parts, .. }, _) => Err(error(format!(
            "has shape {s:?}, which does not split into {parts} equal parts along its first axis (read as {full})"
        ))),
        (View::Transposed, &[a, b]) => Ok(vec![b, a]),
        (View::Transposed, _) => Err(error(format!("has shape {s:?}: read transposed as {full}, it must be 2-D"))),
    }
}

/// The values of a name with a view, as f32 in canonical order, checked against `shape` (the stored tensor must be
/// exactly what that shape implies: `parts` times as long along the first axis, or the transpose).
fn read_view(st: &SafeTensors, loc: &Location, full: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
    let error =
        |message: String| CheckpointError { file: st.path().to_path_buf(), key: Some(loc.key.clone()), message };
    let (info, bytes) = st.bytes(&loc.key)?;
    let (stored, how) = match (loc.view, shape) {
        (View::Split { index, parts }, [n, rest @ ..]) => {
            ([&[n * parts], rest].concat(), format!("part {} of {parts} along the first axis", index + 1))
        }
        (View::Transposed, &[a, b]) => (vec![b, a], "transposed".to_string()),
        _ => (shape.to_vec(), "as stored".to_string()),
    };
    if info.shape != stored {
        return Err(error(format!(
            "has shape {:?}, expected {stored:?} (read as {full} {shape:?}: {how})",
            info.shape
        )));
    }
    // A part along the first axis is a contiguous run of the stored bytes: only it is converted.
    let bytes = match loc.view {
        View::Split { index, parts } => {
            let part = bytes.len() / parts;
            &bytes[index * part..(index + 1) * part]
        }
        _ => bytes,
    };
    let values = super::safetensors::to_f32(info.dtype, bytes)
        .ok_or_else(|| error(format!("has dtype {:?}, expected a float type", info.dtype)))?;
    Ok(match (loc.view, &stored[..]) {
        // stored [r, c] -> [c, r]: element (i, j) of the result is stored (j, i).
        (View::Transposed, &[r, c]) => (0..r * c).map(|k| values[(k % r) * c + k / r]).collect(),
        _ => values,
    })
}

/// An overlay value must hold as many elements as the shape asked for.
fn check_overlay(st: &SafeTensors, full: &str, v: &[f32], shape: &[usize]) -> Result<(), CheckpointError> {
    let want: usize = shape.iter().product();
    if v.len() == want {
        return Ok(());
    }
    Err(CheckpointError {
        file: st.path().to_path_buf(),
        key: Some(full.to_string()),
        message: format!("patched value has {} elements, expected shape {shape:?}", v.len()),
    })
}

/// Loading a weight failed: the file was wrong, or the GPU refused it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("uploading {0}: {1}")]
    Gpu(String, String),
}
