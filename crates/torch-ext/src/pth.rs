//! PyTorch checkpoints as `torch.save` writes them, read without Python: the zip format
//! (PyTorch >= 1.6) and the legacy format (`_use_new_zipfile_serialization=False`).
//!
//! No maintained Rust crate reads these: pickle crates (serde-pickle) refuse the persistent
//! ids that torch uses for storages and drop the names of globals. So this module holds a
//! small pickle machine that *never calls anything*: a global is only a name, and the only
//! calls it evaluates are the ones torch uses to rebuild a state dict
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and its older and parameter
//! forms). Any other call (`os.system`, `argparse.Namespace`, ...) stays an opaque value and
//! a state dict that contains one is refused by name. The zip container is read with the
//! `zip` crate (the version tch already links).
//!
//! Which object is the state dict: the top-level dict if all its values are tensors, else
//! the one entry of it that is (`state_dict`, `model_state_dict`, `model`, `netG`, `net_G`,
//! `generator`, `G` are preferred in that order when several are). A `module.` prefix on
//! every name (DataParallel / DistributedDataParallel) is removed.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Device, Kind, Tensor};

/// Errors of reading a weights file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that cannot be read (safetensors or torch.save), or holds no state dict.
    #[error("weights file {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    /// An error raised by libtorch while rebuilding a tensor; `context` names the file.
    #[error("torch error while {context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
}

fn torch_err(context: String, source: tch::TchError) -> PthError {
    PthError::Torch { context, source }
}

/// How a weights file is stored, told from its first bytes (never from its extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// `torch.save`, zip container (PyTorch >= 1.6 default).
    TorchZip,
    /// `torch.save(..., _use_new_zipfile_serialization=False)`: pickles then raw storages.
    TorchLegacy,
}

/// Keys of a checkpoint dict that name the model's state dict, most specific first.
const PREFERRED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "netG",
    "net_G",
    "generator",
    "G",
];

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as pickle's LONG1 bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

fn werr(path: &Path, reason: impl Into<String>) -> PthError {
    PthError::Weights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PthError + '_ {
    move |source| PthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Tells the format of `path` by content: a safetensors header (an 8-byte little-endian
/// length that fits the file, then `{`), zip magic `PK\3\4`, a pickle's PROTO opcode
/// (legacy torch), else safetensors (whose own parser then says what is wrong). The
/// safetensors test comes first: its length's first byte can be `0x80` (a 3968-byte
/// header starts `80 0f`), which alone would read as a pickle.
pub fn sniff_format(path: &Path) -> Result<WeightsFormat, PthError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..]).map_err(io_err(path))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = &head[..n];
    if head.len() > 8 {
        let header_len = u64::from_le_bytes(head[..8].try_into().unwrap_or([0xff; 8]));
        if head[8] == b'{' && header_len.checked_add(8).is_some_and(|end| end <= file_len) {
            return Ok(WeightsFormat::Safetensors);
        }
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(WeightsFormat::TorchZip);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Err(werr(
            path,
            "a tar-format torch file (PyTorch < 0.4), which is not read; re-save it with a current torch.save",
        ));
    }
    if head.first() == Some(&0x80) {
        return Ok(WeightsFormat::TorchLegacy);
    }
    Ok(WeightsFormat::Safetensors)
}

/// Where a tensor's bytes are: a storage of the file and its element type.
#[derive(Debug)]
struct StorageRef {
    key: String,
    /// torch's storage class name, e.g. `FloatStorage`.
    type_name: String,
    numel: i64,
}

/// A tensor as the pickle describes it (no bytes read yet).
#[derive(Debug)]
struct TensorMeta {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// An opaque call or instance: recorded, never run.
#[derive(Debug)]
struct Object {
    callable: String,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as pickle's little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float,
    Str(Rc<str>),
    /// Bytes are never part of a state dict; their content is not kept.
    Bytes,
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<[Value]>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    Global(Rc<(String, String)>),
    Object(Rc<Object>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorMeta>),
}

impl Value {
    /// A short phrase for error messages (never recursive: pickles may be cyclic).
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes => "bytes".into(),
            Value::List(l) => format!("a list of {}", l.borrow().len()),
            Value::Tuple(t) => format!("a tuple of {}", t.len()),
            Value::Dict(d) => format!("a dict of {} entries", d.borrow().len()),
            Value::Set(_) => "a set".into(),
            Value::Global(g) => format!("the global {}.{}", g.0, g.1),
            Value::Object(o) => format!(
                "an object made by {} (a pickle global that is not a tensor rebuild; not run)",
                o.callable
            ),
            Value::Storage(_) => "a bare storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }
}

/// Element type and size of a torch storage class.
fn storage_kind(type_name: &str) -> Option<(Kind, usize)> {
    Some(match type_name {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// Bytes per element of every torch storage class, including those not read as tensors
/// (the legacy layout must skip them).
fn element_size(type_name: &str) -> Option<usize> {
    storage_kind(type_name)
        .map(|(_, es)| es)
        .or(match type_name {
            "ComplexDoubleStorage" => Some(16),
            "ComplexFloatStorage" => Some(8),
            "QInt32Storage" => Some(4),
            "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => Some(1),
            _ => None,
        })
}

/// The restricted pickle machine (protocols 0-5). Errors are plain strings; the caller
/// adds the file name.
struct Unpickler<'r, R: BufRead> {
    r: &'r mut R,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Every storage a persistent id named, by key (the legacy layout needs all of them).
    seen: HashMap<String, Rc<StorageRef>>,
}

type PResult<T> = Result<T, String>;

impl<'r, R: BufRead> Unpickler<'r, R> {
    fn new(r: &'r mut R) -> Self {
        Unpickler {
            r,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            seen: HashMap::new(),
        }
    }

    fn bytes(&mut self, n: usize) -> PResult<Vec<u8>> {
        // Read in bounded chunks so that a corrupt length fails at the end of the file
        // instead of allocating gigabytes first.
        let mut out = Vec::with_capacity(n.min(1 << 20));
        let got = (&mut *self.r)
            .take(n as u64)
            .read_to_end(&mut out)
            .map_err(|e| format!("read error in the pickle: {e}"))?;
        if got != n {
            return Err("the pickle ends early (truncated or corrupt file)".into());
        }
        Ok(out)
    }

    fn arr<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let v = self.bytes(N)?;
        Ok(v.try_into().expect("read exactly N bytes"))
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.arr::<1>()?[0])
    }

    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn line(&mut self) -> PResult<String> {
        let mut v = Vec::new();
        self.r
            .read_until(b'\n', &mut v)
            .map_err(|e| format!("read error in the pickle: {e}"))?;
        if v.pop() != Some(b'\n') {
            return Err("the pickle ends early (truncated or corrupt file)".into());
        }
        String::from_utf8(v).map_err(|_| "a text opcode's argument is not UTF-8".into())
    }

    fn text(&self, b: Vec<u8>) -> PResult<Value> {
        String::from_utf8(b)
            .map(|s| Value::Str(s.into()))
            .map_err(|_| "a pickled str is not UTF-8".into())
    }

    fn pop(&mut self) -> PResult<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle stack underflow (corrupt file)".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow (corrupt file)".into())
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow (corrupt file)".into())
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or("pickle MARK missing (corrupt file)")?;
        if m > self.stack.len() {
            return Err("pickle MARK beyond the stack (corrupt file)".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, k: u64) -> PResult<Value> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| format!("pickle memo entry {k} is missing (corrupt file)"))
    }

    fn memo_put(&mut self, k: u64) -> PResult<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or("pickle stack underflow (corrupt file)")?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items (corrupt file)".into());
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let Some(slot) = d.iter_mut().find(|(x, _)| same_key(x, &k)) {
                        slot.1 = v;
                    } else {
                        d.push((k, v));
                    }
                }
                Ok(())
            }
            // Items of an opaque object's dict: irrelevant to a state dict.
            Value::Object(_) => Ok(()),
            other => Err(format!("SETITEMS on {} (corrupt file)", other.describe())),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(format!("APPEND on {} (corrupt file)", other.describe())),
        }
    }

    /// Evaluates `callable(*args)` for the few callables torch's state dicts use; any other
    /// becomes an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> PResult<Value> {
        let Value::Global(g) = &callable else {
            return Err(format!(
                "REDUCE of {} (only globals are called)",
                callable.describe()
            ));
        };
        let args: Rc<[Value]> = match args {
            Value::Tuple(t) => t,
            other => return Err(format!("REDUCE arguments are {}", other.describe())),
        };
        let name = format!("{}.{}", g.0, g.1);
        Ok(match name.as_str() {
            "collections.OrderedDict" if args.is_empty() => {
                Value::Dict(Rc::new(RefCell::new(Vec::new())))
            }
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                rebuild_tensor(&args)?
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match args.first() {
                    Some(t @ Value::Tensor(_)) => t.clone(),
                    _ => return Err(format!("{name} without a tensor argument")),
                }
            }
            // Tensor subclasses: (func, new_type, func_args, state); a plain Tensor or
            // Parameter type is a tensor, the rest stays opaque.
            "torch._tensor._rebuild_from_type_v2" => {
                match (args.first(), args.get(1), args.get(2)) {
                    (Some(f), Some(Value::Global(t)), Some(a))
                        if matches!(
                            (t.0.as_str(), t.1.as_str()),
                            ("torch", "Tensor") | ("torch.nn.parameter", "Parameter")
                        ) =>
                    {
                        self.call(f.clone(), a.clone())?
                    }
                    _ => Value::Object(Rc::new(Object { callable: name })),
                }
            }
            _ => Value::Object(Rc::new(Object { callable: name })),
        })
    }

    /// A persistent id: torch's `('storage', storage_type, key, location, numel[, view])`.
    fn persistent(&mut self, pid: Value) -> PResult<Value> {
        let Value::Tuple(t) = &pid else {
            return Err(format!(
                "persistent id is {}, not a torch storage",
                pid.describe()
            ));
        };
        match (t.first(), t.get(1), t.get(2), t.get(4)) {
            (Some(Value::Str(tag)), Some(Value::Global(ty)), Some(key), Some(Value::Int(n)))
                if &**tag == "storage" && *n >= 0 =>
            {
                if let Some(v) = t.get(5)
                    && !matches!(v, Value::None)
                {
                    return Err(
                        "a storage view (PyTorch < 1.0 file), which is not read; re-save it with a current torch.save"
                            .into(),
                    );
                }
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    other => return Err(format!("storage key is {}", other.describe())),
                };
                let s = Rc::new(StorageRef {
                    key: key.clone(),
                    type_name: ty.1.clone(),
                    numel: *n,
                });
                self.seen.insert(key, s.clone());
                Ok(Value::Storage(s))
            }
            _ => Err("a persistent id that is not a torch storage".into()),
        }
    }

    /// Runs the machine to STOP and returns the pickled object.
    fn load(&mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("pickle protocol {p} is not known"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("bad INT `{s}`"))?),
                    };
                    self.stack.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'L' => {
                    let l = self.line()?;
                    let s = l.trim_end_matches('L');
                    let v = match s.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::BigInt(Rc::from(s.as_bytes())),
                    };
                    self.stack.push(v);
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.bytes(n)?;
                    self.stack.push(long_from_le(&b));
                }
                b'F' => {
                    let l = self.line()?;
                    l.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("bad FLOAT `{l}`"))?;
                    self.stack.push(Value::Float);
                }
                b'G' => {
                    self.arr::<8>()?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.bytes(n)?;
                    let v = self.text(b)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.bytes(n)?;
                    let v = self.text(b)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "str too long")?;
                    let b = self.bytes(n)?;
                    let v = self.text(b)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack
                        .push(Value::Str(unescape_raw_unicode(&l)?.into()));
                }
                b'S' => {
                    let l = self.line()?;
                    l.strip_prefix(['\'', '"'])
                        .and_then(|s| s.strip_suffix(['\'', '"']))
                        .ok_or_else(|| format!("bad STRING `{l}`"))?;
                    self.stack.push(Value::Bytes);
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    self.bytes(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    self.bytes(n)?;
                    self.stack.push(Value::Bytes);
                }
                0x8e | 0x96 => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "bytes too long")?;
                    self.bytes(n)?;
                    self.stack.push(Value::Bytes);
                }
                b']' => self
                    .stack
                    .push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b')' => self.stack.push(Value::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(items.into()));
                }
                b'}' => self
                    .stack
                    .push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack
                        .push(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                0x8f => self
                    .stack
                    .push(Value::Set(Rc::new(RefCell::new(Vec::new())))),
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Set(s) => s.borrow_mut().extend(items),
                        other => return Err(format!("ADDITEMS on {}", other.describe())),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Set(Rc::new(RefCell::new(items))));
                }
                b'p' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| format!("bad PUT `{l}`"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()?.into();
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?.into();
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| format!("bad GET `{l}`"))?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let k = self.u8()?.into();
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = self.u32()?.into();
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    self.stack.push(Value::Global(Rc::new((m, n))));
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (m, n) {
                        (Value::Str(m), Value::Str(n)) => self
                            .stack
                            .push(Value::Global(Rc::new((m.to_string(), n.to_string())))),
                        _ => return Err("STACK_GLOBAL without two strs".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // kwargs
                    }
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    let v = match &cls {
                        Value::Global(g) if g.0 == "collections" && g.1 == "OrderedDict" => {
                            Value::Dict(Rc::new(RefCell::new(Vec::new())))
                        }
                        Value::Global(g) => Value::Object(Rc::new(Object {
                            callable: format!("{}.{}", g.0, g.1),
                        })),
                        other => return Err(format!("NEWOBJ of {}", other.describe())),
                    };
                    self.stack.push(v);
                }
                b'i' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    self.pop_mark()?;
                    self.stack.push(Value::Object(Rc::new(Object {
                        callable: format!("{m}.{n}"),
                    })));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let cls = items.remove(0);
                    let callable = match &cls {
                        Value::Global(g) => format!("{}.{}", g.0, g.1),
                        other => other.describe(),
                    };
                    self.stack.push(Value::Object(Rc::new(Object { callable })));
                }
                b'b' => {
                    // BUILD sets an instance's state. An OrderedDict's state is its
                    // attributes (`_metadata` of a state dict), an opaque object's is
                    // irrelevant; neither changes the tensors.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Object(_) | Value::Tensor(_) => {}
                        other => return Err(format!("BUILD on {}", other.describe())),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    return Err("a text persistent id (not written by torch.save)".into());
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} is not read (corrupt file, or not written by torch.save)"
                    ));
                }
            }
        }
    }
}

/// Dict keys compare by value for the scalar kinds state dicts use.
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

fn long_from_le(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = [if neg { 0xff } else { 0 }; 8];
        buf[..b.len()].copy_from_slice(b);
        return Value::Int(i64::from_le_bytes(buf));
    }
    Value::BigInt(Rc::from(b))
}

/// Python's raw-unicode-escape (protocol 0 `UNICODE`): `\uXXXX` and `\UXXXXXXXX` only.
fn unescape_raw_unicode(s: &str) -> PResult<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        let width = match (c, s[i + 1..].chars().next()) {
            ('\\', Some('u')) => 4,
            ('\\', Some('U')) => 8,
            _ => {
                out.push(c);
                continue;
            }
        };
        let hex = s.get(i + 2..i + 2 + width).ok_or("bad escape in UNICODE")?;
        let code = u32::from_str_radix(hex, 16).map_err(|_| "bad escape in UNICODE")?;
        out.push(char::from_u32(code).ok_or("bad code point in UNICODE")?);
        for _ in 0..width + 1 {
            it.next();
        }
    }
    Ok(out)
}

fn ints(v: &Value, what: &str) -> PResult<Vec<i64>> {
    match v {
        Value::Tuple(t) => t
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(format!("tensor {what} holds {}", other.describe())),
            })
            .collect(),
        other => Err(format!("tensor {what} is {}", other.describe())),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...)`.
fn rebuild_tensor(args: &[Value]) -> PResult<Value> {
    match args {
        [Value::Storage(s), Value::Int(offset), size, stride, ..] => {
            let size = ints(size, "size")?;
            let stride = ints(stride, "stride")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "tensor size {size:?} and stride {stride:?} differ in length"
                ));
            }
            Ok(Value::Tensor(Rc::new(TensorMeta {
                storage: s.clone(),
                offset: *offset,
                size,
                stride,
            })))
        }
        _ => Err("a tensor rebuild without (storage, offset, size, stride)".into()),
    }
}

/// Named tensor descriptions, in the file's order.
type StateDict = Vec<(String, Rc<TensorMeta>)>;

/// Picks the state dict out of the unpickled object and removes a `module.` prefix.
fn state_dict_of(top: &Value) -> PResult<StateDict> {
    fn as_state_dict(v: &Value) -> Option<StateDict> {
        let Value::Dict(d) = v else { return None };
        let d = d.borrow();
        if d.is_empty() {
            return None;
        }
        d.iter()
            .map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.to_string(), t.clone())),
                _ => None,
            })
            .collect()
    }
    /// Why a dict is not a state dict: its first entry that is not a named tensor.
    fn why_not(v: &Value) -> String {
        let Value::Dict(d) = v else {
            return format!("the file holds {}", v.describe());
        };
        let d = d.borrow();
        if d.is_empty() {
            return "the file holds an empty dict".into();
        }
        for (k, v) in d.iter() {
            match (k, v) {
                (Value::Str(_), Value::Tensor(_)) => {}
                (Value::Str(k), v) => return format!("entry `{k}` is {}", v.describe()),
                (k, _) => return format!("a key is {}, not a str", k.describe()),
            }
        }
        unreachable!("a dict of named tensors is a state dict")
    }

    let mut sd = match as_state_dict(top) {
        Some(sd) => sd,
        None => {
            let Value::Dict(d) = top else {
                return Err(format!("not a state dict: {}", why_not(top)));
            };
            let d = d.borrow();
            let found: Vec<(String, StateDict)> = d
                .iter()
                .filter_map(|(k, v)| match k {
                    Value::Str(k) => as_state_dict(v).map(|sd| (k.to_string(), sd)),
                    _ => None,
                })
                .collect();
            let pick = PREFERRED_KEYS
                .iter()
                .find_map(|p| found.iter().position(|(k, _)| k == p))
                .or(if found.len() == 1 { Some(0) } else { None });
            match pick {
                Some(i) => found.into_iter().nth(i).expect("index in range").1,
                None if found.is_empty() => {
                    let keys: Vec<String> = d
                        .iter()
                        .filter_map(|(k, _)| match k {
                            Value::Str(k) => Some(format!("`{k}`")),
                            _ => None,
                        })
                        .take(12)
                        .collect();
                    let nested = d.iter().find_map(|(k, v)| match (k, v) {
                        (Value::Str(k), Value::Dict(_)) => {
                            Some(format!("; in `{k}`, {}", why_not(v)))
                        }
                        _ => None,
                    });
                    return Err(format!(
                        "not a state dict: {}, and none of its entries ({}) is a state dict{}",
                        why_not(top),
                        keys.join(", "),
                        nested.unwrap_or_default()
                    ));
                }
                None => {
                    let names: Vec<String> = found.iter().map(|(k, _)| format!("`{k}`")).collect();
                    return Err(format!(
                        "holds several state dicts ({}) and none under a known key ({})",
                        names.join(", "),
                        PREFERRED_KEYS.join(", ")
                    ));
                }
            }
        }
    };
    if sd.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in &mut sd {
            k.drain(.."module.".len());
        }
    }
    for (name, t) in &sd {
        if storage_kind(&t.storage.type_name).is_none() {
            return Err(format!(
                "tensor `{name}` has the unsupported dtype torch.{} (read: float32/64/16, bfloat16, int64/32/16/8, uint8, bool)",
                t.storage.type_name
            ));
        }
    }
    Ok(sd)
}

/// Where the bytes of each storage are.
enum Storages {
    Zip {
        archive: zip::ZipArchive<BufReader<File>>,
        prefix: String,
    },
    /// Storage key -> (byte offset in the file, numel recorded there).
    Legacy {
        file: BufReader<File>,
        at: HashMap<String, (u64, i64)>,
    },
}

/// A parsed `torch.save` file: the state dict's names and tensor descriptions; bytes are
/// read by [`TorchFile::tensors`].
struct TorchFile {
    entries: StateDict,
    storages: Storages,
}

fn open_zip(path: &Path) -> Result<TorchFile, PthError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| werr(path, format!("a corrupt zip file: {e}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let pkl: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let prefix = match pkl.as_slice() {
        [one] => one.trim_end_matches("data.pkl").to_string(),
        [] => {
            return Err(werr(
                path,
                "a zip file without <archive>/data.pkl: not written by torch.save",
            ));
        }
        _ => return Err(werr(path, "a zip file with several data.pkl records")),
    };
    if names
        .iter()
        .any(|n| n == &format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")))
    {
        return Err(werr(
            path,
            "a TorchScript archive (torch.jit.save), not a state dict: save `model.state_dict()` with torch.save",
        ));
    }
    if let Ok(mut e) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        e.read_to_string(&mut s)
            .map_err(|e| werr(path, format!("reading byteorder: {e}")))?;
        if s.trim() != "little" {
            return Err(werr(
                path,
                format!(
                    "written with byte order `{}`; only little-endian files are read",
                    s.trim()
                ),
            ));
        }
    }
    let top = {
        // Read whole, so that the zip's CRC of the pickle is checked before it is parsed.
        let mut pkl = Vec::new();
        archive
            .by_name(&format!("{prefix}data.pkl"))
            .and_then(|mut e| e.read_to_end(&mut pkl).map_err(Into::into))
            .map_err(|e| werr(path, format!("reading data.pkl: {e} (corrupt file)")))?;
        let mut r = std::io::Cursor::new(pkl);
        Unpickler::new(&mut r)
            .load()
            .map_err(|e| werr(path, format!("data.pkl: {e}")))?
    };
    let entries = state_dict_of(&top).map_err(|e| werr(path, e))?;
    Ok(TorchFile {
        entries,
        storages: Storages::Zip { archive, prefix },
    })
}

fn open_legacy(path: &Path) -> Result<TorchFile, PthError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut r = BufReader::new(f);
    let next = |what: &str, r: &mut BufReader<File>| {
        Unpickler::new(r)
            .load()
            .map_err(|e| werr(path, format!("{what}: {e}")))
    };
    match next("magic number", &mut r)? {
        Value::BigInt(b) if *b == LEGACY_MAGIC => {}
        _ => {
            return Err(werr(
                path,
                "a pickle that is not a torch.save file (no torch magic number)",
            ));
        }
    }
    match next("protocol version", &mut r)? {
        Value::Int(LEGACY_PROTOCOL) => {}
        v => {
            return Err(werr(
                path,
                format!(
                    "torch legacy protocol {} is not read (expected {LEGACY_PROTOCOL})",
                    v.describe()
                ),
            ));
        }
    }
    if let Value::Dict(d) = next("system info", &mut r)? {
        let little = d.borrow().iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Bool(b)) if &**k == "little_endian" => Some(*b),
            _ => None,
        });
        if little == Some(false) {
            return Err(werr(
                path,
                "written big-endian; only little-endian files are read",
            ));
        }
    }
    let mut main = Unpickler::new(&mut r);
    let top = main
        .load()
        .map_err(|e| werr(path, format!("state dict pickle: {e}")))?;
    let seen = std::mem::take(&mut main.seen);
    let entries = state_dict_of(&top).map_err(|e| werr(path, e))?;
    let keys: Vec<String> = match next("storage keys", &mut r)? {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                other => Err(werr(path, format!("a storage key is {}", other.describe()))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(werr(
                path,
                format!("storage keys are {}, not a list", other.describe()),
            ));
        }
    };
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    let mut at = HashMap::new();
    let mut pos = r.stream_position().map_err(io_err(path))?;
    for key in &keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n).map_err(|_| {
            werr(
                path,
                format!("storage {key}: the file ends early (truncated)"),
            )
        })?;
        let numel = i64::from_le_bytes(n);
        pos += 8;
        // Storages the state dict does not use (an optimiser's, a discriminator's) are
        // skipped, which needs their element size too.
        let es = seen
            .get(key)
            .and_then(|s| element_size(&s.type_name))
            .ok_or_else(|| {
                werr(
                    path,
                    format!("storage {key}: its element type is unknown, so the storages after it cannot be found"),
                )
            })?;
        let nbytes = u64::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(es as u64))
            .filter(|&b| pos + b <= len)
            .ok_or_else(|| {
                werr(path, format!("storage {key}: {numel} elements do not fit in the file (truncated or corrupt)"))
            })?;
        at.insert(key.clone(), (pos, numel));
        pos += nbytes;
        r.seek(SeekFrom::Start(pos)).map_err(io_err(path))?;
    }
    Ok(TorchFile {
        entries,
        storages: Storages::Legacy { file: r, at },
    })
}

fn open(path: &Path, format: WeightsFormat) -> Result<TorchFile, PthError> {
    match format {
        WeightsFormat::TorchZip => open_zip(path),
        WeightsFormat::TorchLegacy => open_legacy(path),
        WeightsFormat::Safetensors => unreachable!("safetensors files are read by safetensors"),
    }
}

impl TorchFile {
    /// Bytes of storage `s`, checked to hold its elements.
    fn storage_bytes(
        &mut self,
        path: &Path,
        s: &StorageRef,
        es: usize,
    ) -> Result<Vec<u8>, PthError> {
        let want = usize::try_from(s.numel)
            .ok()
            .and_then(|n| n.checked_mul(es))
            .ok_or_else(|| werr(path, format!("storage {}: bad size {}", s.key, s.numel)))?;
        let mut buf = Vec::new();
        match &mut self.storages {
            Storages::Zip { archive, prefix } => {
                let name = format!("{prefix}data/{}", s.key);
                let mut e = archive
                    .by_name(&name)
                    .map_err(|e| werr(path, format!("record {name}: {e}")))?;
                if e.size() != want as u64 {
                    return Err(werr(
                        path,
                        format!(
                            "record {name} has {} bytes, its tensor needs {want}",
                            e.size()
                        ),
                    ));
                }
                e.read_to_end(&mut buf)
                    .map_err(|e| werr(path, format!("record {name}: {e} (corrupt file)")))?;
            }
            Storages::Legacy { file, at } => {
                let &(off, numel) = at
                    .get(&s.key)
                    .ok_or_else(|| werr(path, format!("storage {} is not in the file", s.key)))?;
                if numel != s.numel {
                    return Err(werr(
                        path,
                        format!(
                            "storage {} holds {numel} elements, the pickle says {}",
                            s.key, s.numel
                        ),
                    ));
                }
                file.seek(SeekFrom::Start(off)).map_err(io_err(path))?;
                buf.resize(want, 0);
                file.read_exact(&mut buf).map_err(io_err(path))?;
            }
        }
        if buf.len() != want {
            return Err(werr(path, format!("storage {} is truncated", s.key)));
        }
        Ok(buf)
    }

    /// Materialises every tensor of the state dict on the CPU, contiguous, bit for bit.
    fn tensors(mut self, path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
        let mut cache: HashMap<String, Tensor> = HashMap::new();
        let entries = std::mem::take(&mut self.entries);
        let mut out = Vec::with_capacity(entries.len());
        for (name, t) in entries {
            let (kind, es) = storage_kind(&t.storage.type_name).expect("checked by state_dict_of");
            let numel = t.storage.numel;
            let bad = || {
                werr(
                    path,
                    format!(
                        "tensor `{name}`: size {:?}, stride {:?}, offset {} reach outside its storage of {numel} elements",
                        t.size, t.stride, t.offset
                    ),
                )
            };
            if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&d| d < 0) {
                return Err(bad());
            }
            if t.size.iter().all(|&d| d > 0) {
                let mut last = t.offset;
                for (d, s) in t.size.iter().zip(&t.stride) {
                    last = (d - 1)
                        .checked_mul(*s)
                        .and_then(|x| x.checked_add(last))
                        .ok_or_else(bad)?;
                }
                if last >= numel {
                    return Err(bad());
                }
            }
            let base = match cache.get(&t.storage.key) {
                Some(b) => b.shallow_clone(),
                None => {
                    let bytes = self.storage_bytes(path, &t.storage, es)?;
                    let b = Tensor::f_from_data_size(&bytes, &[numel], kind)
                        .map_err(|e| torch_err(format!("reading {}", path.display()), e))?;
                    cache.insert(t.storage.key.clone(), b.shallow_clone());
                    b
                }
            };
            let torch = |e| torch_err(format!("rebuilding `{name}` of {}", path.display()), e);
            let view = base
                .f_as_strided(&t.size, &t.stride, Some(t.offset))
                .map_err(torch)?;
            let mut own = Tensor::f_empty(&t.size, (kind, Device::Cpu)).map_err(torch)?;
            own.f_copy_(&view).map_err(torch)?;
            out.push((name, own));
        }
        Ok(out)
    }
}

/// The state dict of a `torch.save` file at `path`, names as in the file less a
/// DataParallel `module.` prefix.
pub fn read_torch(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let format = sniff_format(path)?;
    if format == WeightsFormat::Safetensors {
        return Err(werr(path, "a safetensors file, not a torch.save file"));
    }
    open(path, format)?.tensors(path)
}

/// Names and shapes of the state dict of a `torch.save` file (no tensor bytes are read).
pub fn torch_shapes(path: &Path) -> Result<BTreeMap<String, Vec<i64>>, PthError> {
    let format = sniff_format(path)?;
    if format == WeightsFormat::Safetensors {
        return Err(werr(path, "a safetensors file, not a torch.save file"));
    }
    Ok(open(path, format)?
        .entries
        .into_iter()
        .map(|(k, t)| (k, t.size.clone()))
        .collect())
}

/// The state dict of a weights file, told apart by content: a safetensors file (checked
/// first, see [`sniff_format`]) or a `torch.save` file (zip or legacy), on the CPU, names
/// as in the file less a DataParallel `module.` prefix. The one reader of every crate that
/// takes weights (generators, VGG16, Inception, DRN).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    if sniff_format(path)? != WeightsFormat::Safetensors {
        return read_torch(path);
    }
    Tensor::read_safetensors(path).map_err(|e| PthError::Weights {
        path: path.to_path_buf(),
        reason: format!("not a safetensors file: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> PResult<Value> {
        let mut r = std::io::Cursor::new(bytes.to_vec());
        Unpickler::new(&mut r).load()
    }

    #[test]
    fn a_call_of_an_unknown_global_is_recorded_not_run_and_refused_as_a_state_dict() {
        // pickle.dumps of an object whose __reduce__ is (os.system, ("echo hi",)), protocol 2.
        let p = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let v = run(p).unwrap();
        let e = state_dict_of(&v).unwrap_err();
        assert!(e.contains("posix.system") && e.contains("not run"), "{e}");
    }

    #[test]
    fn truncated_and_unknown_opcodes_are_errors_not_panics() {
        assert!(
            run(b"\x80\x02X\xff\x00\x00\x00ab")
                .unwrap_err()
                .contains("ends early")
        );
        assert!(run(b"\x80\x02\xff").unwrap_err().contains("opcode 0xff"));
        assert!(run(b"\x80\x02.").unwrap_err().contains("underflow"));
        assert!(run(b"\x80\x02(t(u.").unwrap_err().contains("SETITEMS"));
    }

    #[test]
    fn long1_decodes_the_torch_magic_and_small_signed_values() {
        let mut p = b"\x80\x02\x8a\x0a".to_vec();
        p.extend(LEGACY_MAGIC);
        p.push(b'.');
        assert!(matches!(run(&p).unwrap(), Value::BigInt(b) if *b == LEGACY_MAGIC));
        assert!(matches!(run(b"\x8a\x01\xff.").unwrap(), Value::Int(-1)));
        assert!(matches!(
            run(b"\x8a\x02\x00\x01.").unwrap(),
            Value::Int(256)
        ));
    }

    /// A safetensors file whose header is 3968 bytes long starts `80 0f`, a pickle's PROTO
    /// opcode: it must still read as safetensors (a teacher's export hit this).
    #[test]
    fn a_safetensors_header_length_starting_with_0x80_is_not_a_pickle() {
        let dir = tempfile::tempdir().unwrap();
        let json = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut header = json.to_vec();
        header.resize(0x0f80, b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        assert_eq!(bytes[..2], [0x80, 0x0f]);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            sniff_format(&path).unwrap(),
            WeightsFormat::Safetensors
        ));
        let t = tch::Tensor::read_safetensors(&path).unwrap();
        assert_eq!(t[0].1.double_value(&[0]), 1.5);
    }
}
