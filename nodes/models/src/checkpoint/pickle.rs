//! A restricted unpickler for PyTorch state dicts. It builds plain data
//! and never calls anything: it understands only the opcodes a `torch.save`d
//! dict of tensors uses, and the only globals it accepts are
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` /
//! `_rebuild_parameter` and the typed storage classes (`torch.FloatStorage`,
//! ...). Any other global (`os.system`, a custom class, ...) or opcode is an
//! error naming it and its byte offset.
//!
//! Containers live in an arena and the memo holds references to them, as
//! Python's does, so the work is linear in the pickle's length whatever its
//! memo tricks. Opcodes as in CPython's `Lib/pickletools.py`.

use std::collections::HashMap;
use std::rc::Rc;

use super::safetensors::Dtype;

/// The element type of a `torch.<Name>Storage` class (PyTorch's typed storages).
fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "DoubleStorage" => Dtype::F64,
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::Bool,
        _ => return None,
    })
}

/// The callables a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(Dtype),
}

/// A storage a tensor views: `archive/data/<key>`, `numel` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub dtype: Dtype,
    pub key: String,
    pub numel: u64,
}

/// A tensor: a strided view of a storage (sizes and strides in elements).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// An unpickled value. Lists and dicts are indices into the arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Tuple(Rc<[Object]>),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "a bool",
            Object::Int(_) => "an int",
            Object::Float(_) => "a float",
            Object::Str(_) => "a string",
            Object::Tuple(_) => "a tuple",
            Object::List(_) => "a list",
            Object::Dict(_) => "a dict",
            Object::Global(_) => "a class or function",
            Object::Storage(_) => "a storage",
            Object::Tensor(_) => "a tensor",
        }
    }
}

/// The unpickled root and the containers it refers to.
#[derive(Debug, Default)]
pub struct Unpickled {
    pub root: Option<Object>,
    lists: Vec<Vec<Object>>,
    dicts: Vec<Vec<(Object, Object)>>,
}

impl Unpickled {
    /// A dict's entries in insertion order, a repeated key as often as it was
    /// set (`None` if `o` is not a dict).
    pub fn dict(&self, o: &Object) -> Option<&[(Object, Object)]> {
        match o {
            Object::Dict(i) => self.dicts.get(*i).map(|d| d.as_slice()),
            _ => None,
        }
    }

    /// A dict's value for a string key.
    pub fn get(&self, o: &Object, key: &str) -> Option<&Object> {
        self.dict(o)?.iter().find(|(k, _)| matches!(k, Object::Str(s) if &**s == key)).map(|(_, v)| v)
    }
}

/// Names of the opcodes this reader refuses, for error messages.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'R' => "REDUCE",
        b'P' => "PERSID",
        0x82..=0x84 => "EXT",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'B' | b'C' | 0x8e => "BINBYTES",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        b'l' => "LIST",
        b'd' => "DICT",
        b'p' => "PUT",
        b'g' => "GET",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        0x8b => "LONG4",
        _ => "unknown",
    }
}

/// Most items the stack may hold (real state dicts stay in the tens).
const MAX_STACK: usize = 1 << 20;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Object>,
    marks: Vec<usize>,
    memo: HashMap<u32, Object>,
    out: Unpickled,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            format!("the pickle ends inside an opcode at byte {} (truncated?)", self.pos.saturating_sub(1))
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    fn len(&mut self, n: u64) -> Result<usize, String> {
        usize::try_from(n).ok().filter(|&n| n <= self.data.len() - self.pos).ok_or_else(|| {
            format!("a string at byte {} claims {n} bytes but the pickle has fewer left (truncated?)", self.pos)
        })
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n =
            rest.iter().take(256).position(|&b| b == b'\n').ok_or_else(|| {
                format!("GLOBAL at byte {}: no end of line within 256 bytes", self.pos.saturating_sub(1))
            })?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| format!("GLOBAL at byte {}: not UTF-8", self.pos))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, o: Object) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("the pickle's stack grows past {MAX_STACK} items"));
        }
        self.stack.push(o);
        Ok(())
    }

    fn pop(&mut self, at: usize) -> Result<Object, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(format!("opcode at byte {at} pops past a MARK"));
        }
        self.stack.pop().ok_or_else(|| format!("opcode at byte {at} pops an empty stack"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Object>, String> {
        let m = self.marks.pop().ok_or_else(|| format!("opcode at byte {at} needs a MARK and there is none"))?;
        Ok(self.stack.split_off(m))
    }

    fn top(&mut self, at: usize) -> Result<&mut Object, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(format!("opcode at byte {at} needs an object below its MARK"));
        }
        self.stack.last_mut().ok_or_else(|| format!("opcode at byte {at} reads an empty stack"))
    }

    fn global(&self, module: &str, name: &str, at: usize) -> Result<Global, String> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => storage_dtype(class).map(Global::Storage),
            _ => None,
        };
        g.ok_or_else(|| {
            format!(
                "refused global {module}.{name} (byte {at}): a state dict holds only tensors, and this pickle \
                 would import and call {module}.{name} when PyTorch loads it"
            )
        })
    }

    fn new_dict(&mut self) -> Object {
        self.out.dicts.push(Vec::new());
        Object::Dict(self.out.dicts.len() - 1)
    }

    fn run(mut self) -> Result<Unpickled, String> {
        loop {
            let at = self.pos;
            let op = self.take(1).map_err(|_| "the pickle ends without STOP (truncated?)".to_string())?[0];
            if op == b'.' {
                let root = self.pop(at)?;
                self.out.root = Some(root);
                return Ok(self.out);
            }
            self.step(op, at)?;
        }
    }

    /// Carries out one opcode other than STOP.
    fn step(&mut self, op: u8, at: usize) -> Result<(), String> {
        match op {
            0x80 => {
                let v = self.u8()?;
                if v > 5 {
                    return Err(format!("pickle protocol {v} is not supported"));
                }
            }
            0x95 => {
                self.u64()?; // FRAME: a length hint
            }
            b'N' => self.push(Object::None)?,
            0x88 => self.push(Object::Bool(true))?,
            0x89 => self.push(Object::Bool(false))?,
            b'J' | b'K' | b'M' | 0x8a => {
                let v = self.int(op, at)?;
                self.push(Object::Int(v))?
            }
            b'G' => {
                let b = self.take(8)?;
                self.push(Object::Float(f64::from_be_bytes(b.try_into().unwrap_or_default())))?
            }
            b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                let s = self.string(op)?;
                self.push(Object::Str(s.into()))?
            }
            b'}' => {
                let d = self.new_dict();
                self.push(d)?
            }
            b']' => {
                self.out.lists.push(Vec::new());
                self.push(Object::List(self.out.lists.len() - 1))?
            }
            b')' => self.push(Object::Tuple(Rc::from(Vec::new())))?,
            b'(' => self.marks.push(self.stack.len()),
            b't' => {
                let items = self.pop_mark(at)?;
                self.push(Object::Tuple(items.into()))?
            }
            0x85..=0x87 => self.tuple_n((op - 0x84) as usize, at)?,
            b'a' | b'e' => self.append(op, at)?,
            b's' | b'u' => self.set_items(op, at)?,
            b'q' | b'r' | 0x94 => self.memo_put(op, at)?,
            b'h' | b'j' => {
                let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                let v = self.memo.get(&idx).cloned().ok_or_else(|| format!("memo {idx} at byte {at} is unset"))?;
                self.push(v)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = self.global(module, name, at)?;
                self.push(Object::Global(g))?
            }
            0x93 => self.stack_global(at)?,
            b'Q' => {
                let pid = self.pop(at)?;
                let s = storage_from_pid(&pid).map_err(|e| format!("persistent id at byte {at}: {e}"))?;
                self.push(Object::Storage(Rc::new(s)))?
            }
            b'R' => {
                let args = self.pop(at)?;
                let func = self.pop(at)?;
                let v = self.reduce(func, args).map_err(|e| format!("REDUCE at byte {at}: {e}"))?;
                self.push(v)?
            }
            b'b' => self.build(at)?,
            _ => {
                return Err(format!(
                    "opcode {op:#04x} ({}) at byte {at} is not allowed in a state dict",
                    opcode_name(op)
                ));
            }
        }
        Ok(())
    }

    /// The integer opcodes: BININT (i32), BININT1 (u8), BININT2 (u16), LONG1.
    fn int(&mut self, op: u8, at: usize) -> Result<i64, String> {
        match op {
            b'J' => Ok(self.u32()? as i32 as i64),
            b'K' => Ok(self.u8()? as i64),
            b'M' => Ok(self.u16()? as i64),
            _ => self.long1(at),
        }
    }

    /// LONG1: n bytes of little-endian two's complement.
    fn long1(&mut self, at: usize) -> Result<i64, String> {
        let n = self.u8()? as usize;
        if n > 8 {
            return Err(format!("integer of {n} bytes at byte {at} is too large"));
        }
        let b = self.take(n)?;
        let mut v: i64 = 0;
        for (i, &x) in b.iter().enumerate() {
            v |= (x as i64) << (8 * i);
        }
        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
            v -= 1i64 << (8 * n);
        }
        Ok(v)
    }

    /// The string opcodes: a length of 1, 4 or 8 bytes, then the text.
    fn string(&mut self, op: u8) -> Result<String, String> {
        let n = match op {
            b'X' => self.u32()? as u64,
            0x8d => self.u64()?,
            b'T' => self.u32()? as u64,
            _ => self.u8()? as u64,
        };
        let n = self.len(n)?;
        let b = self.take(n)?;
        // Unicode opcodes hold UTF-8; the protocol-2 byte strings (U, T) are Latin-1 text.
        Ok(if matches!(op, b'U' | b'T') {
            b.iter().map(|&c| c as char).collect()
        } else {
            String::from_utf8_lossy(b).into_owned()
        })
    }

    /// TUPLE1..3: the top `n` objects become a tuple.
    fn tuple_n(&mut self, n: usize, at: usize) -> Result<(), String> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop(at)?);
        }
        items.reverse();
        self.push(Object::Tuple(items.into()))
    }

    /// APPEND (one object) or APPENDS (down to the mark) onto the list below.
    fn append(&mut self, op: u8, at: usize) -> Result<(), String> {
        let items = if op == b'a' { vec![self.pop(at)?] } else { self.pop_mark(at)? };
        let Object::List(i) = *self.top(at)? else {
            return Err(format!("APPEND at byte {at} onto something that is not a list"));
        };
        self.out.lists[i].extend(items);
        Ok(())
    }

    /// SETITEM (one pair) or SETITEMS (pairs down to the mark) into the dict below.
    fn set_items(&mut self, op: u8, at: usize) -> Result<(), String> {
        let items = if op == b's' {
            let v = self.pop(at)?;
            let k = self.pop(at)?;
            vec![k, v]
        } else {
            self.pop_mark(at)?
        };
        if items.len() % 2 != 0 {
            return Err(format!("SETITEMS at byte {at} has an odd number of items"));
        }
        let target = self.top(at)?.clone();
        let Object::Dict(i) = target else {
            return Err(format!("SETITEM at byte {at} onto {}, not a dict", target.kind()));
        };
        // Entries are kept in order, repeats included (linear time whatever the
        // pickle); readers refuse a repeated key rather than pick one.
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.out.dicts[i].push((k, v));
        }
        Ok(())
    }

    /// BINPUT, LONG_BINPUT, MEMOIZE: remember the top object.
    fn memo_put(&mut self, op: u8, at: usize) -> Result<(), String> {
        let idx = match op {
            b'q' => self.u8()? as u32,
            b'r' => self.u32()?,
            _ => self.memo.len() as u32,
        };
        let v = self.top(at)?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    /// STACK_GLOBAL: module and name from the stack, checked against the allowed globals.
    fn stack_global(&mut self, at: usize) -> Result<(), String> {
        let name = self.pop(at)?;
        let module = self.pop(at)?;
        let (Object::Str(module), Object::Str(name)) = (module, name) else {
            return Err(format!("STACK_GLOBAL at byte {at} takes two strings"));
        };
        let g = self.global(&module, &name, at)?;
        self.push(Object::Global(g))
    }

    /// BUILD: only an OrderedDict's attributes (torch's `_metadata` versions), which are dropped.
    fn build(&mut self, at: usize) -> Result<(), String> {
        let _state = self.pop(at)?;
        let target = self.top(at)?;
        if !matches!(target, Object::Dict(_)) {
            return Err(format!("BUILD at byte {at} sets the state of {}; only dicts allowed", target.kind()));
        }
        Ok(())
    }

    fn reduce(&mut self, func: Object, args: Object) -> Result<Object, String> {
        let Object::Tuple(args) = args else {
            return Err(format!("the arguments are {}, not a tuple", args.kind()));
        };
        match func {
            Object::Global(Global::OrderedDict) if args.is_empty() => Ok(self.new_dict()),
            Object::Global(Global::RebuildTensorV2) => rebuild_tensor(&args).map(|t| Object::Tensor(Rc::new(t))),
            Object::Global(Global::RebuildParameter) => match args.first() {
                Some(Object::Tensor(t)) if args.len() == 3 => Ok(Object::Tensor(t.clone())),
                _ => Err("_rebuild_parameter takes (tensor, requires_grad, hooks)".into()),
            },
            Object::Global(g) => Err(format!("{g:?} may not be called with these arguments")),
            other => Err(format!("calls {}, which is not callable", other.kind())),
        }
    }
}

fn int(o: &Object, what: &str) -> Result<u64, String> {
    match o {
        Object::Int(v) if *v >= 0 => Ok(*v as u64),
        other => Err(format!("{what} is {}, expected a non-negative int", other.kind())),
    }
}

fn ints(o: &Object, what: &str) -> Result<Vec<u64>, String> {
    match o {
        Object::Tuple(items) => items.iter().map(|i| int(i, what)).collect(),
        other => Err(format!("{what} is {}, expected a tuple of ints", other.kind())),
    }
}

/// `('storage', torch.FloatStorage, key, location, numel)`.
fn storage_from_pid(pid: &Object) -> Result<StorageRef, String> {
    let Object::Tuple(t) = pid else {
        return Err(format!("is {}, expected a tuple", pid.kind()));
    };
    match &t[..] {
        [Object::Str(tag), Object::Global(Global::Storage(dtype)), Object::Str(key), Object::Str(_loc), n]
            if &**tag == "storage" =>
        {
            Ok(StorageRef { dtype: *dtype, key: key.to_string(), numel: int(n, "storage size")? })
        }
        _ => Err("expected ('storage', torch.<Type>Storage, key, location, size)".into()),
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
fn rebuild_tensor(args: &[Object]) -> Result<TensorRef, String> {
    if !(6..=7).contains(&args.len()) {
        return Err(format!("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", args.len()));
    }
    let Object::Storage(storage) = &args[0] else {
        return Err(format!("_rebuild_tensor_v2's storage is {}", args[0].kind()));
    };
    let offset = int(&args[1], "storage offset")?;
    let size = ints(&args[2], "size")?;
    let stride = ints(&args[3], "stride")?;
    if size.len() != stride.len() || size.len() > 8 {
        return Err(format!("size {size:?} and stride {stride:?} do not describe a tensor of at most 8 dims"));
    }
    Ok(TensorRef { storage: storage.clone(), offset, size, stride })
}

/// Unpickles `data`, refusing anything but the plain data of a state dict.
pub fn unpickle(data: &[u8]) -> Result<Unpickled, String> {
    let m =
        Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), out: Unpickled::default() };
    m.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `OrderedDict([("w", tensor)])` as torch.save writes it (hand-assembled).
    fn state_dict_pickle() -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03");
        p.extend(b"ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)Rq\x05tRq\x06u}q\x07bq\x08.");
        p
    }

    #[test]
    fn a_torch_state_dict_pickle_gives_its_tensor() {
        let u = unpickle(&state_dict_pickle()).unwrap();
        let root = u.root.clone().unwrap();
        let Some(Object::Tensor(t)) = u.get(&root, "w") else { panic!("{:?}", u.root) };
        assert_eq!((t.storage.key.as_str(), t.storage.numel, t.storage.dtype), ("0", 6, Dtype::F32));
        assert_eq!((t.offset, t.size.clone(), t.stride.clone()), (0, vec![2, 3], vec![3, 1]));
    }

    #[test]
    fn foreign_globals_and_opcodes_are_refused_by_name() {
        let e = unpickle(b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap_err();
        assert!(e.contains("refused global posix.system"), "{e}");
        let e = unpickle(b"\x80\x04\x8c\x02os\x8c\x06system\x93.").unwrap_err();
        assert!(e.contains("refused global os.system"), "{e}");
        let e = unpickle(b"\x80\x02ctorch\nload\n.").unwrap_err();
        assert!(e.contains("torch.load"), "{e}");
        let e = unpickle(b"(S'x'\nio\n.").unwrap_err();
        assert!(e.contains("STRING") || e.contains("INST"), "{e}");
        let e = unpickle(b"\x80\x02}q\x00(X\x01\x00\x00\x00a]\x81u.").unwrap_err();
        assert!(e.contains("NEWOBJ"), "{e}");
        // Calling a storage class (it would allocate) is refused too.
        let e = unpickle(b"\x80\x02ctorch\nFloatStorage\nK\x05\x85R.").unwrap_err();
        assert!(e.contains("may not be called"), "{e}");
    }

    #[test]
    fn truncated_and_malformed_pickles_are_errors() {
        let good = state_dict_pickle();
        for cut in 0..good.len() {
            assert!(unpickle(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut s = 0xDEAD_BEEFu64;
        for _ in 0..5000 {
            let mut b = good.clone();
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let i = (s as usize) % b.len();
            b[i] = (s >> 32) as u8;
            let _ = unpickle(&b);
        }
        assert!(unpickle(b"\x80\x02X\xff\xff\xff\xffab.").unwrap_err().contains("truncated"));
        assert!(unpickle(b"h\x05.").unwrap_err().contains("memo 5"));
        assert!(unpickle(b"0").unwrap_err().contains("POP"));
    }

    #[test]
    fn memo_tricks_stay_linear() {
        // A list put in the memo and appended to itself many times: one arena entry, no copies.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..10_000 {
            p.extend(b"h\x00a");
        }
        p.push(b'.');
        let u = unpickle(&p).unwrap();
        assert_eq!(u.lists[0].len(), 10_000);
    }
}
