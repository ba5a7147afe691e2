//! A reader for `.safetensors` files, memory-mapped, that treats every file
//! as hostile: the header's JSON, dtypes, shapes and offsets are all checked
//! against the file before any tensor is touched.
//!
//! Format (huggingface/safetensors): 8-byte little-endian header length N,
//! N bytes of JSON `{"name": {"dtype": "F16", "shape": [..], "data_offsets":
//! [begin, end]}, "__metadata__": {..}}`, then the data; offsets are relative
//! to the end of the header.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Element types found in checkpoints. Only float types load as weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

/// One tensor's entry in the header, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A problem with a checkpoint file; always names the file, and the tensor when there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), key.as_ref().map(|k| format!(", tensor {k:?}")).unwrap_or_default())]
pub struct CheckpointError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

/// Largest header accepted: real checkpoints have a few hundred KiB of JSON.
const MAX_HEADER: u64 = 100 << 20;

/// Where a file's tensor bytes live: the mapped file, or memory (a `.pth`
/// state dict copied out by `pth`).
enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open `.safetensors` file (or tensors read from another format into memory).
pub struct SafeTensors {
    path: PathBuf,
    map: Backing,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafeTensors({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

impl SafeTensors {
    pub fn open(path: &Path) -> Result<SafeTensors, CheckpointError> {
        let err = |message: String| CheckpointError { file: path.to_path_buf(), key: None, message };
        if path.extension().is_some_and(|e| e == "ckpt" || e == "pt" || e == "pth" || e == "bin") {
            return Err(err(
                "this is a PyTorch pickle checkpoint, which can run code when loaded; sdgraph reads only .safetensors. Convert it once with Python: `import torch, safetensors.torch as st; sd = torch.load(\"in.ckpt\", map_location=\"cpu\", weights_only=True); st.save_file(sd.get(\"state_dict\", sd), \"out.safetensors\")`".into(),
            ));
        }
        let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only; if another process truncates the file
        // while we read it we may fault, as every mmap-based loader (candle,
        // safetensors itself) accepts; we never write through it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
        let (tensors, metadata) =
            parse_header(&map).map_err(|(key, message)| CheckpointError { file: path.to_path_buf(), key, message })?;
        Ok(SafeTensors { path: path.to_path_buf(), map: Backing::Mapped(map), tensors, metadata })
    }

    /// Tensors held in memory, read from `path` in another format. Each
    /// entry's `start..end` must lie inside `bytes` and match its dtype and shape.
    pub fn from_memory(path: &Path, bytes: Vec<u8>, tensors: BTreeMap<String, TensorInfo>) -> SafeTensors {
        debug_assert!(tensors.values().all(|t| t.end <= bytes.len() && t.end - t.start == t.numel() * t.dtype.size()));
        SafeTensors { path: path.to_path_buf(), map: Backing::Owned(bytes), tensors, metadata: BTreeMap::new() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    fn error(&self, key: &str, message: String) -> CheckpointError {
        CheckpointError { file: self.path.clone(), key: Some(key.to_string()), message }
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), CheckpointError> {
        let info = self.tensors.get(name).ok_or_else(|| self.error(name, "missing from the checkpoint".into()))?;
        Ok((info, &self.map[info.start..info.end]))
    }

    /// A float tensor converted to f32, checked against the expected shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let (info, bytes) = self.bytes(name)?;
        if info.shape != shape {
            return Err(self.error(name, format!("has shape {:?}, expected {shape:?}", info.shape)));
        }
        to_f32(info.dtype, bytes)
            .ok_or_else(|| self.error(name, format!("has dtype {:?}, expected a float type", info.dtype)))
    }

    /// A float tensor converted to f32, with whatever shape the file gives.
    pub fn f32_any(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
        let (info, bytes) = self.bytes(name)?;
        let v = to_f32(info.dtype, bytes)
            .ok_or_else(|| self.error(name, format!("has dtype {:?}, expected a float type", info.dtype)))?;
        Ok((info.shape.clone(), v))
    }
}

/// Converts little-endian float data of `dtype` into `dst`, little-endian
/// f32 or f16 as `out` says (`dst` holds exactly the elements of `src`);
/// tensors of millions of elements are split over the CPU's cores. `false`
/// for non-float dtypes or mismatched lengths.
pub fn convert_into(dtype: Dtype, src: &[u8], out: gpu::DType, dst: &mut [u8]) -> bool {
    let in_size = match dtype {
        Dtype::F64 => 8,
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => return false,
    };
    let n = dst.len() / out.size();
    if src.len() != n * in_size || dst.len() != n * out.size() {
        return false;
    }
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(16);
    let per = if n >= 1 << 20 { n.div_ceil(threads) } else { n }.max(1);
    std::thread::scope(|scope| {
        let mut parts = src.chunks(per * in_size).zip(dst.chunks_mut(per * out.size())).peekable();
        while let Some((s, d)) = parts.next() {
            if parts.peek().is_some() {
                scope.spawn(move || convert_chunk(dtype, s, out, d));
            } else {
                convert_chunk(dtype, s, out, d);
            }
        }
    });
    true
}

/// `f` on each `I`-byte element of `src`, written as `O` bytes into `dst`.
fn map_elems<const I: usize, const O: usize>(src: &[u8], dst: &mut [u8], f: impl Fn([u8; I]) -> [u8; O]) {
    for (d, s) in dst.chunks_exact_mut(O).zip(src.chunks_exact(I)) {
        // `chunks_exact` hands out exactly I bytes.
        d.copy_from_slice(&f(s.try_into().unwrap_or([0; I])));
    }
}

fn convert_chunk(dtype: Dtype, src: &[u8], out: gpu::DType, dst: &mut [u8]) {
    use gpu::DType as Out;
    use half::f16;
    let bf16 = bf16_to_f32;
    match (dtype, out) {
        (Dtype::F32, Out::F32) | (Dtype::F16, Out::F16) => dst.copy_from_slice(src),
        (Dtype::F16, Out::F32) => map_elems(src, dst, |b: [u8; 2]| f16::from_le_bytes(b).to_f32().to_le_bytes()),
        (Dtype::BF16, Out::F32) => map_elems(src, dst, |b: [u8; 2]| bf16(b).to_le_bytes()),
        (Dtype::F64, Out::F32) => map_elems(src, dst, |b: [u8; 8]| (f64::from_le_bytes(b) as f32).to_le_bytes()),
        (Dtype::F32, Out::F16) => map_elems(src, dst, |b: [u8; 4]| f16::from_f32(f32::from_le_bytes(b)).to_le_bytes()),
        (Dtype::BF16, Out::F16) => map_elems(src, dst, |b: [u8; 2]| f16::from_f32(bf16(b)).to_le_bytes()),
        (Dtype::F64, Out::F16) => map_elems(src, dst, |b: [u8; 8]| f16::from_f64(f64::from_le_bytes(b)).to_le_bytes()),
        // `convert_into` lets only float dtypes through.
        _ => {}
    }
}

/// A little-endian bf16: the top half of an f32.
fn bf16_to_f32(b: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}

/// Converts little-endian float data; `None` for non-float dtypes.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| bf16_to_f32([c[0], c[1]])).collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

type Header = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

fn parse_header(data: &[u8]) -> Result<Header, (Option<String>, String)> {
    let top = |m: String| (None, m);
    if data.len() < 8 {
        return Err(top(format!("file is {} bytes, too short to be safetensors (truncated?)", data.len())));
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    if n > MAX_HEADER {
        return Err(top(format!(
            "header claims {n} bytes, more than the {MAX_HEADER} allowed: not a safetensors file?"
        )));
    }
    let end = 8 + n as usize;
    if end > data.len() {
        return Err(top(format!(
            "header claims {n} bytes but the file has only {} after the length (truncated?)",
            data.len() - 8
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&data[8..end])
        .map_err(|e| top(format!("header is not valid JSON ({e}): not a safetensors file?")))?;
    let obj = json.as_object().ok_or_else(|| top("header is not a JSON object".into()))?;
    let data_len = data.len() - end;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut ranges: Vec<(usize, usize, &str)> = Vec::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, val) in m {
                    metadata.insert(k.clone(), val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string()));
                }
            }
            continue;
        }
        let bad = |m: String| (Some(name.clone()), m);
        let entry = v.as_object().ok_or_else(|| bad("header entry is not an object".into()))?;
        let dtype_s = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype".into()))?;
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| bad(format!("unsupported dtype {dtype_s:?}")))?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape must be a list of non-negative integers".into()))?;
        let offs = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| bad("data_offsets must be [begin, end]".into()))?;
        let numel =
            shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows".into()))?;
        let want = numel.checked_mul(dtype.size()).ok_or_else(|| bad("size overflows".into()))?;
        if offs.1 < offs.0 || offs.1 - offs.0 != want {
            return Err(bad(format!(
                "data_offsets {:?} span {} bytes, but {dtype_s} {shape:?} needs {want}",
                [offs.0, offs.1],
                offs.1.saturating_sub(offs.0)
            )));
        }
        if offs.1 > data_len {
            return Err(bad(format!(
                "data ends at byte {} but the file holds only {data_len} bytes of data (truncated?)",
                offs.1
            )));
        }
        ranges.push((offs.0, offs.1, name));
        tensors.insert(name.clone(), TensorInfo { dtype, shape, start: end + offs.0, end: end + offs.1 });
    }
    // Overlapping tensors mean a header that lies; refuse rather than alias weights.
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err((Some(w[1].2.to_string()), format!("its data overlaps tensor {:?}", w[0].2)));
        }
    }
    Ok((tensors, metadata))
}

/// Writes a safetensors file (tests and tools): f32 tensors stored as `dtype`
/// (F32, F16 or BF16), in name order.
pub fn write(path: &Path, tensors: &[(&str, &[usize], &[f32])], dtype: Dtype) -> std::io::Result<()> {
    write_with_metadata(path, tensors, dtype, &[])
}

/// `write` with `__metadata__` string entries.
pub fn write_with_metadata(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
    dtype: Dtype,
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for &v in *values {
            match dtype {
                Dtype::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                Dtype::BF16 => data.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        let dt = match dtype {
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            _ => "F32",
        };
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dt, "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad the header with spaces so data starts 8-byte aligned, as the format recommends.
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sdgraph-st-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn raw(path: &Path, header: &str, data: &[u8]) {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn written_tensors_read_back_in_every_float_dtype() {
        let vals = [1.0f32, -2.5, 0.333, 65504.0, 1e-5, 0.0];
        for (dt, tol) in [(Dtype::F32, 0.0), (Dtype::F16, 1e-3), (Dtype::BF16, 1e-2)] {
            let p = temp(&format!("rt-{dt:?}.safetensors"));
            write(&p, &[("a.weight", &[2, 3], &vals), ("b", &[1], &[7.0])], dt).unwrap();
            let st = SafeTensors::open(&p).unwrap();
            assert_eq!(st.names().collect::<Vec<_>>(), ["a.weight", "b"]);
            let got = st.f32("a.weight", &[2, 3]).unwrap();
            for (g, v) in got.iter().zip(vals) {
                assert!((g - v).abs() <= tol * v.abs().max(1e-3), "{dt:?}: {g} vs {v}");
            }
            assert_eq!(st.f32("b", &[1]).unwrap(), [7.0]);
        }
    }

    #[test]
    fn errors_name_the_file_and_tensor() {
        let p = temp("shape.safetensors");
        write(&p, &[("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])], Dtype::F32).unwrap();
        let st = SafeTensors::open(&p).unwrap();
        let e = st.f32("w", &[4]).unwrap_err().to_string();
        assert_eq!(e, format!("{}, tensor \"w\": has shape [2, 2], expected [4]", p.display()));
        let e = st.f32("missing", &[1]).unwrap_err().to_string();
        assert!(e.ends_with("tensor \"missing\": missing from the checkpoint"), "{e}");
    }

    #[test]
    fn hostile_headers_are_refused_with_the_reason() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", &[0; 4], "truncated?"),
            ("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", &[0; 8], "needs 12"),
            ("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", &[0; 8], "span 0 bytes"),
            ("{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", &[0; 8], "unsupported dtype \"Q4\""),
            ("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", &[0; 8], "non-negative"),
            (
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                &[0; 8],
                "overlaps",
            ),
            (
                "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
                &[0; 8],
                "overflows",
            ),
            ("[1,2]", &[], "not a JSON object"),
            ("{not json", &[], "not valid JSON"),
        ];
        for (i, (header, data, want)) in cases.iter().enumerate() {
            let p = temp(&format!("bad{i}.safetensors"));
            raw(&p, header, data);
            let e = SafeTensors::open(&p).unwrap_err().to_string();
            assert!(e.contains(want), "case {i}: {e}");
            assert!(e.starts_with(&p.display().to_string()), "case {i}: {e}");
        }
        let p = temp("short.safetensors");
        std::fs::write(&p, [1, 2, 3]).unwrap();
        assert!(SafeTensors::open(&p).unwrap_err().to_string().contains("too short"));
        let p = temp("huge-header.safetensors");
        std::fs::write(&p, u64::MAX.to_le_bytes()).unwrap();
        assert!(SafeTensors::open(&p).unwrap_err().to_string().contains("more than the"));
    }

    #[test]
    fn pickle_checkpoints_are_refused_with_a_conversion_hint() {
        let p = temp("model.ckpt");
        std::fs::write(&p, b"PK\x03\x04").unwrap();
        let e = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(e.contains("pickle") && e.contains("weights_only=True"), "{e}");
    }

    #[test]
    fn random_corruption_never_panics() {
        let p = temp("fuzz-src.safetensors");
        write(&p, &[("x", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), ("y", &[2], &[0.5, 0.25])], Dtype::F16).unwrap();
        let good = std::fs::read(&p).unwrap();
        let mut s = 0x1234_5678u64;
        let q = temp("fuzz.safetensors");
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..3 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let i = (s as usize) % bytes.len();
                match s % 3 {
                    0 => bytes[i] = (s >> 32) as u8,
                    1 => bytes.truncate(i),
                    _ => bytes.insert(i, b'9'),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            std::fs::write(&q, &bytes).unwrap();
            if let Ok(st) = SafeTensors::open(&q) {
                for name in st.names().map(str::to_string).collect::<Vec<_>>() {
                    let _ = st.f32_any(&name);
                }
            }
        }
    }
}
