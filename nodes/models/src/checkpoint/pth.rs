//! PyTorch `.pth` / `.pt` state dicts (the zip format `torch.save` writes
//! since PyTorch 1.6) read without running Python or any pickled code.
//!
//! Layout: a ZIP archive holding `<folder>/data.pkl` (the pickled dict; the
//! folder is usually `archive` or the file's stem) and one raw storage per
//! `<folder>/data/<key>`. The pickle is read by the restricted reader in
//! `pickle`, each tensor's strided view is checked against its storage's
//! real size, and the tensors are copied out contiguously into an in-memory
//! [`SafeTensors`], so everything downstream (shape checks, dtype
//! conversion, error messages naming file and key) is shared with
//! `.safetensors` files.
//!
//! Wrapper dicts as training code saves them (`params_ema`, `params`,
//! `state_dict`, `model`) are unwrapped, and a DataParallel `module.`
//! prefix is dropped.

use std::collections::BTreeMap;
use std::path::Path;

use super::pickle::{Object, TensorRef, Unpickled, unpickle};
use super::safetensors::{CheckpointError, SafeTensors, TensorInfo};
use super::zip;

/// Keys under which training code nests the weights, most preferred first
/// (basicsr/Real-ESRGAN save `params_ema` next to `params`; EMA weights are the released ones).
pub const WRAPPER_KEYS: [&str; 4] = ["params_ema", "params", "state_dict", "model"];

/// Whether a path names a PyTorch pickle file by its extension.
pub fn is_pth(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        let e = e.to_ascii_lowercase();
        e == "pth" || e == "pt"
    })
}

/// Reads a `.pth` state dict into memory.
pub fn open(path: &Path) -> Result<SafeTensors, CheckpointError> {
    let err = |message: String| CheckpointError { file: path.to_path_buf(), key: None, message };
    let data = std::fs::read(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let (tensors, bytes) =
        parse(&data).map_err(|(key, message)| CheckpointError { file: path.to_path_buf(), key, message })?;
    Ok(SafeTensors::from_memory(path, bytes, tensors))
}

type Parsed = (BTreeMap<String, TensorInfo>, Vec<u8>);

/// An error, with the tensor's key when there is one.
type KeyedError = (Option<String>, String);

fn top(m: String) -> KeyedError {
    (None, m)
}

/// Parses a whole `.pth` file: its tensors, and the buffer they point into.
/// Errors carry the tensor's key when there is one.
pub fn parse(data: &[u8]) -> Result<Parsed, KeyedError> {
    parse_selected(data, |u, root| {
        let dict = state_dict(u, root).map_err(top)?;
        named_tensors(dict)
    })
}

/// The tensors `select` picks from the unpickled root, by name (for files that are not a flat state
/// dict, such as textual-inversion embeddings), copied out as [`parse`] does.
pub fn parse_selected(
    data: &[u8],
    select: impl FnOnce(&Unpickled, &Object) -> Result<Vec<(String, TensorRef)>, KeyedError>,
) -> Result<Parsed, KeyedError> {
    if !zip::is_zip(data) {
        let what = if data.first() == Some(&0x80) {
            "a legacy (pre-1.6) torch.save file, which sdgraph does not read; re-save it with a current PyTorch \
             (`torch.save(torch.load(f, weights_only=True), f)`) or convert it to .safetensors"
        } else {
            "not a PyTorch zip archive (no ZIP header)"
        };
        return Err(top(what.to_string()));
    }
    let archive = zip::read_archive(data).map_err(top)?;
    let (pkl, folder) = pickle_entry(&archive, data)?;
    let pickle = archive.read(data, pkl).map_err(top)?;
    let u = unpickle(pickle).map_err(|e| top(format!("{pkl}: {e}")))?;
    let root = u.root.clone().ok_or_else(|| top("empty pickle".into()))?;
    let named = select(&u, &root)?;

    // Copy each view out contiguously, checking it against its storage.
    // Views may overlap or repeat a storage, so the total is capped by the file size.
    let cap = data.len().saturating_mul(4).saturating_add(1 << 20);
    let mut out = Vec::new();
    let mut tensors = BTreeMap::new();
    for (key, t) in named {
        let bad = |m: String| (Some(key.clone()), m);
        let entry_name = format!("{folder}data/{}", t.storage.key);
        let bytes = archive.read(data, &entry_name).map_err(bad)?;
        let info = copy_tensor(&mut out, &t, bytes, &entry_name, cap, data.len()).map_err(bad)?;
        if tensors.insert(key.clone(), info).is_some() {
            return Err(bad("appears twice in the state dict".into()));
        }
    }
    Ok((tensors, out))
}

/// The pickle's entry, `<folder>/data.pkl` for exactly one top-level folder, and that
/// folder (with its slash); an error when the storages are not little-endian.
fn pickle_entry<'a>(archive: &'a zip::Archive, data: &[u8]) -> Result<(&'a str, &'a str), KeyedError> {
    let pkls: Vec<&str> = archive
        .entries
        .keys()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.as_str())
        .collect();
    let pkl = match pkls[..] {
        [one] => one,
        [] => return Err(top("the archive has no <folder>/data.pkl: not a torch.save file".into())),
        _ => return Err(top(format!("the archive has several pickles ({}); expected one", pkls.join(", ")))),
    };
    let folder = &pkl[..pkl.len() - "data.pkl".len()];
    if let Some(order) = archive.entries.get(&format!("{folder}byteorder")) {
        let order = archive.read(data, &order.name).map_err(top)?;
        if order != b"little" {
            return Err(top(format!(
                "the tensors are stored {:?}-endian; only little-endian files are supported",
                String::from_utf8_lossy(order)
            )));
        }
    }
    Ok((pkl, folder))
}

/// The dict's tensors by key, without a DataParallel `module.` prefix when every key has one.
fn named_tensors(dict: &[(Object, Object)]) -> Result<Vec<(String, TensorRef)>, KeyedError> {
    let mut named: Vec<(String, TensorRef)> = Vec::new();
    for (k, v) in dict {
        let Object::Str(k) = k else {
            return Err(top(format!("the state dict has a key that is {k:?}, not a string")));
        };
        match v {
            Object::Tensor(t) => named.push((k.to_string(), TensorRef::clone(t))),
            // Plain numbers or strings beside the tensors (an iteration count) are harmless: skip them.
            Object::None | Object::Bool(_) | Object::Int(_) | Object::Float(_) | Object::Str(_) => {}
            other => return Err((Some(k.to_string()), format!("is {other:?}, not a tensor"))),
        }
    }
    if named.is_empty() {
        return Err(top("the state dict holds no tensors".into()));
    }
    if named.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in &mut named {
            k.drain(..7);
        }
    }
    Ok(named)
}

/// Appends the view `t` of `storage` (the bytes of `entry_name`) to `out`, contiguously,
/// after checking it lies inside its storage and that `out` stays within `cap` bytes.
fn copy_tensor(
    out: &mut Vec<u8>,
    t: &TensorRef,
    storage: &[u8],
    entry_name: &str,
    cap: usize,
    file_len: usize,
) -> Result<TensorInfo, String> {
    let elem = t.storage.dtype.size();
    let numel = t.storage.numel;
    if (storage.len() as u64) != numel.saturating_mul(elem as u64) {
        return Err(format!(
            "its storage {entry_name} claims {numel} elements ({} bytes) but holds {} bytes",
            numel.saturating_mul(elem as u64),
            storage.len()
        ));
    }
    let shape: Vec<usize> = t
        .size
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("size {:?} is too large", t.size)))
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("size {:?} overflows", t.size))?;
    let len = count
        .checked_mul(elem)
        .filter(|&n| out.len() + n <= cap)
        .ok_or_else(|| format!("size {:?} needs more memory than a file of {file_len} bytes can describe", t.size))?;
    let start = out.len();
    if count > 0 {
        // The furthest element the view touches must lie inside the storage.
        t.size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&n, &s)| a.checked_add((n - 1).checked_mul(s)?))
            .filter(|&last| last < numel)
            .ok_or_else(|| {
                format!(
                    "the view (offset {}, size {:?}, stride {:?}) reaches past its storage of {numel} elements",
                    t.offset, t.size, t.stride
                )
            })?;
        copy_view(out, storage, t, elem);
    }
    debug_assert_eq!(out.len() - start, len);
    Ok(TensorInfo { dtype: t.storage.dtype, shape, start, end: start + len })
}

/// The dict of tensors inside `root`: `root` itself when it holds tensors,
/// else the first wrapper key (`params_ema`, ...) that is a dict.
fn state_dict<'u>(u: &'u Unpickled, root: &Object) -> Result<&'u [(Object, Object)], String> {
    let d = u.dict(root).ok_or_else(|| format!("the pickle holds a {root:?}, not a dict of tensors"))?;
    if d.iter().any(|(_, v)| matches!(v, Object::Tensor(_))) {
        return Ok(d);
    }
    for key in WRAPPER_KEYS {
        if let Some(inner) = u.get(root, key).and_then(|v| u.dict(v)) {
            return Ok(inner);
        }
    }
    let keys: Vec<String> = d
        .iter()
        .map(|(k, _)| match k {
            Object::Str(s) => format!("{s:?}"),
            other => format!("{other:?}"),
        })
        .take(10)
        .collect();
    Err(format!(
        "no tensors at the top level and none of {WRAPPER_KEYS:?} holds a dict; the keys are [{}]",
        keys.join(", ")
    ))
}

/// Appends the elements of view `t` of `storage`, row-major. The caller has
/// checked every index lies inside the storage.
fn copy_view(out: &mut Vec<u8>, storage: &[u8], t: &TensorRef, elem: usize) {
    let rank = t.size.len();
    let contiguous = {
        let mut want = 1u64;
        let mut ok = true;
        for d in (0..rank).rev() {
            if t.size[d] != 1 && t.stride[d] != want {
                ok = false;
            }
            want *= t.size[d];
        }
        ok
    };
    if contiguous {
        let count: u64 = t.size.iter().product();
        let a = t.offset as usize * elem;
        out.extend_from_slice(&storage[a..a + count as usize * elem]);
        return;
    }
    let mut idx = vec![0u64; rank];
    loop {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let a = at as usize * elem;
        out.extend_from_slice(&storage[a..a + elem]);
        // Next index, last dim fastest.
        let mut d = rank;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Protocol-2 pickle opcodes for `write`.
fn pickle_int(p: &mut Vec<u8>, v: u64) {
    if v < 256 {
        p.extend([b'K', v as u8]);
    } else if v < 65536 {
        p.push(b'M');
        p.extend((v as u16).to_le_bytes());
    } else if v < 1 << 31 {
        p.push(b'J');
        p.extend((v as u32).to_le_bytes());
    } else {
        p.extend([0x8a, 8]);
        p.extend(v.to_le_bytes());
    }
}

fn pickle_str(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

/// The pickle `torch.save` writes for an `OrderedDict` of contiguous
/// tensors, tensor `i` viewing storage key `i` of `dtype` (tests and tools).
pub fn state_dict_pickle(tensors: &[(&str, &[usize])], dtype: &str) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\nq\x00)R(");
    for (i, (name, shape)) in tensors.iter().enumerate() {
        pickle_str(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        pickle_str(&mut p, "storage");
        p.extend(format!("ctorch\n{dtype}\n").as_bytes());
        pickle_str(&mut p, &i.to_string());
        pickle_str(&mut p, "cpu");
        pickle_int(&mut p, shape.iter().product::<usize>() as u64);
        p.extend(b"tQ");
        pickle_int(&mut p, 0);
        p.push(b'(');
        for &d in *shape {
            pickle_int(&mut p, d as u64);
        }
        p.extend(b"t(");
        let mut stride = 1;
        let mut strides = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            strides[d] = stride;
            stride *= shape[d];
        }
        for s in strides {
            pickle_int(&mut p, s as u64);
        }
        p.extend(b"t\x89h\x00)Rtq\x01R");
    }
    p.extend(b"u.");
    p
}

/// Writes f32 tensors as a `.pth` state dict in `torch.save`'s zip layout,
/// under the top-level folder `folder` (tests and tools).
pub fn write(path: &Path, folder: &str, tensors: &[(&str, &[usize], &[f32])]) -> std::io::Result<()> {
    let names: Vec<(&str, &[usize])> = tensors.iter().map(|(n, s, _)| (*n, *s)).collect();
    let pickle = state_dict_pickle(&names, "FloatStorage");
    let data: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut entries: Vec<(String, &[u8])> = vec![
        (format!("{folder}/data.pkl"), &pickle),
        (format!("{folder}/byteorder"), b"little"),
        (format!("{folder}/version"), b"3\n"),
    ];
    for (i, d) in data.iter().enumerate() {
        entries.push((format!("{folder}/data/{i}"), d));
    }
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    std::fs::write(path, zip::write_stored(&refs))
}
