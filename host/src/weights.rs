//! Reading torchvision's legacy (non-zip) `.pth` checkpoints, such as the ImageNet
//! `mobilenet_v2-b0353104.pth`, without Python.
//!
//! libtorch's C++ API only reads the zip format that PyTorch writes since 1.6, so the
//! older format is parsed here. A legacy file is a sequence of pickles followed by raw
//! storage bytes:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c`, 2. the protocol version `1001`,
//! 3. a system-info dict (endianness, type sizes), 4. the state dict, an `OrderedDict`
//!    whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//!    ...)` calls with each storage given by a persistent id
//!    `('storage', torch.FloatStorage, key, location, numel, None)`,
//! 5. the list of storage keys, then for each key in that order an 8-byte little-endian
//!    element count followed by the storage's raw little-endian bytes.
//!
//! Only the pickle opcodes such files use are understood (protocol 2). Anything else is
//! an error naming the opcode and its byte offset, never a panic.
//!
//! Not supported: zip-format checkpoints (load those with `tch` directly), big-endian
//! files, storages other than float32 and int64, and non-contiguous tensor views.

use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::Tensor;

/// The magic number that starts a legacy torch file.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The legacy format's protocol version.
const PROTOCOL: i128 = 1001;

/// Why a legacy checkpoint could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("{path}: cannot read the weights file: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes ended in the middle of a record.
    #[error("weights file truncated at byte {offset} while reading {what}; download it again")]
    Truncated {
        /// Where the data ran out.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A pickle opcode this reader does not handle.
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {offset}: not a legacy torch file?")]
    Opcode {
        /// The opcode byte.
        opcode: u8,
        /// Its offset in the file.
        offset: usize,
    },
    /// The pickle stream is well-formed bytes but not the structure expected.
    #[error("malformed legacy torch file at byte {offset}: {what}")]
    Malformed {
        /// Where it was noticed.
        offset: usize,
        /// What was wrong.
        what: String,
    },
    /// A tensor of the file does not fit the model.
    #[error("tensor {name}: {what}")]
    Mismatch {
        /// The parameter name.
        name: String,
        /// What differs.
        what: String,
    },
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// `torch.FloatStorage`.
    F32,
    /// `torch.LongStorage` (e.g. BatchNorm's `num_batches_tracked`).
    I64,
}

impl DType {
    fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// The values of one tensor, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Float32 values.
    F32(Vec<f32>),
    /// Int64 values.
    I64(Vec<i64>),
}

/// One named tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The state-dict key, e.g. `features.0.0.weight`.
    pub name: String,
    /// The shape.
    pub shape: Vec<i64>,
    /// The values.
    pub data: TensorData,
}

impl NamedTensor {
    /// Converts to a libtorch tensor on the CPU.
    pub fn to_tensor(&self) -> Tensor {
        match &self.data {
            TensorData::F32(v) => Tensor::from_slice(v).reshape(&self.shape),
            TensorData::I64(v) => Tensor::from_slice(v).reshape(&self.shape),
        }
    }
}

/// A pickle value, reduced to what legacy torch files contain.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    Str(String),
    Global(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Storage {
        dtype: DType,
        key: String,
        numel: usize,
    },
    Tensor(TensorRef),
    /// The result of calling something this reader has no use for (e.g. module metadata).
    Opaque,
    Mark,
}

/// A tensor's view of a storage, before the storage bytes are read.
#[derive(Debug, Clone)]
struct TensorRef {
    dtype: DType,
    key: String,
    offset: usize,
    shape: Vec<i64>,
    stride: Vec<i64>,
}

/// A cursor over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WeightsError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(WeightsError::Truncated { offset: self.pos, what })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WeightsError> {
        Ok(self.take(1, "a pickle opcode")?[0])
    }

    fn le_u32(&mut self) -> Result<u32, WeightsError> {
        let b = self.take(4, "a 4-byte argument")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn le_u64(&mut self, what: &'static str) -> Result<u64, WeightsError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn malformed(&self, what: impl Into<String>) -> WeightsError {
        WeightsError::Malformed { offset: self.pos, what: what.into() }
    }
}

/// Runs one pickle from the reader's position up to its STOP opcode.
fn unpickle(r: &mut Reader<'_>) -> Result<Value, WeightsError> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO: the version byte needs no action.
            }
            b'.' => return pop(&mut stack, r),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'K' => stack.push(Value::Int(i128::from(r.u8()?))),
            b'M' => {
                let b = r.take(2, "BININT2")?;
                stack.push(Value::Int(i128::from(u16::from_le_bytes([b[0], b[1]]))));
            }
            b'J' => stack.push(Value::Int(i128::from(r.le_u32()? as i32))),
            0x8a => stack.push(Value::Int(long1(r)?)),
            b'X' => {
                let n = r.le_u32()? as usize;
                stack.push(Value::Str(utf8(r, n)?));
            }
            0x8c => {
                let n = usize::from(r.u8()?);
                stack.push(Value::Str(utf8(r, n)?));
            }
            b'c' => {
                let module = line(r)?;
                let name = line(r)?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            b'q' => {
                let k = u32::from(r.u8()?);
                memo.insert(k, top(&stack, r)?.clone());
            }
            b'r' => {
                let k = r.le_u32()?;
                memo.insert(k, top(&stack, r)?.clone());
            }
            b'h' => {
                let k = u32::from(r.u8()?);
                stack.push(memo_get(&memo, k, r)?);
            }
            b'j' => {
                let k = r.le_u32()?;
                stack.push(memo_get(&memo, k, r)?);
            }
            b't' => {
                let items = pop_mark(&mut stack, r)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err(r.malformed("tuple opcode on a short stack"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'Q' => {
                let pid = pop(&mut stack, r)?;
                stack.push(storage_from_pid(pid, r)?);
            }
            b'R' => {
                let args = pop(&mut stack, r)?;
                let func = pop(&mut stack, r)?;
                stack.push(call(func, args, r)?);
            }
            b'b' => {
                // BUILD sets an object's state; only module `_metadata` uses it here.
                pop(&mut stack, r)?;
                top(&stack, r)?;
            }
            b's' => {
                let v = pop(&mut stack, r)?;
                let k = pop(&mut stack, r)?;
                dict_insert(&mut stack, vec![k, v], r)?;
            }
            b'u' => {
                let items = pop_mark(&mut stack, r)?;
                dict_insert(&mut stack, items, r)?;
            }
            b'a' => {
                let v = pop(&mut stack, r)?;
                list_extend(&mut stack, vec![v], r)?;
            }
            b'e' => {
                let items = pop_mark(&mut stack, r)?;
                list_extend(&mut stack, items, r)?;
            }
            _ => return Err(WeightsError::Opcode { opcode: op, offset: at }),
        }
    }
}

fn pop(stack: &mut Vec<Value>, r: &Reader<'_>) -> Result<Value, WeightsError> {
    stack.pop().ok_or_else(|| r.malformed("pickle stack underflow"))
}

fn top<'s>(stack: &'s [Value], r: &Reader<'_>) -> Result<&'s Value, WeightsError> {
    stack.last().ok_or_else(|| r.malformed("pickle stack is empty"))
}

fn memo_get(memo: &HashMap<u32, Value>, k: u32, r: &Reader<'_>) -> Result<Value, WeightsError> {
    memo.get(&k).cloned().ok_or_else(|| r.malformed(format!("memo key {k} was never stored")))
}

fn pop_mark(stack: &mut Vec<Value>, r: &Reader<'_>) -> Result<Vec<Value>, WeightsError> {
    let mark = stack.iter().rposition(|v| matches!(v, Value::Mark));
    let mark = mark.ok_or_else(|| r.malformed("no MARK on the pickle stack"))?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

fn dict_insert(stack: &mut [Value], items: Vec<Value>, r: &Reader<'_>) -> Result<(), WeightsError> {
    if items.len() % 2 != 0 {
        return Err(r.malformed("odd number of dict items"));
    }
    let Some(Value::Dict(d)) = stack.last_mut() else {
        return Err(r.malformed("SETITEM(S) on something that is not a dict"));
    };
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        d.push((k, v));
    }
    Ok(())
}

fn list_extend(stack: &mut [Value], items: Vec<Value>, r: &Reader<'_>) -> Result<(), WeightsError> {
    let Some(Value::List(l)) = stack.last_mut() else {
        return Err(r.malformed("APPEND(S) on something that is not a list"));
    };
    l.extend(items);
    Ok(())
}

fn long1(r: &mut Reader<'_>) -> Result<i128, WeightsError> {
    let n = usize::from(r.u8()?);
    let bytes = r.take(n, "LONG1")?;
    if n > 16 {
        return Err(r.malformed(format!("integer of {n} bytes is too large")));
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[..n].copy_from_slice(bytes);
    Ok(i128::from_le_bytes(buf))
}

fn utf8(r: &mut Reader<'_>, n: usize) -> Result<String, WeightsError> {
    let bytes = r.take(n, "a string")?;
    String::from_utf8(bytes.to_vec()).map_err(|_| r.malformed("string is not UTF-8"))
}

fn line(r: &mut Reader<'_>) -> Result<String, WeightsError> {
    let rest = &r.bytes[r.pos..];
    let n = rest.iter().position(|&b| b == b'\n');
    let n = n.ok_or(WeightsError::Truncated { offset: r.pos, what: "a GLOBAL name" })?;
    let s = utf8(r, n)?;
    r.pos += 1;
    Ok(s)
}

fn storage_from_pid(pid: Value, r: &Reader<'_>) -> Result<Value, WeightsError> {
    let Value::Tuple(items) = pid else {
        return Err(r.malformed("persistent id is not a tuple"));
    };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(ty), Value::Str(key), _, Value::Int(numel), ..]
            if kind == "storage" =>
        {
            let dtype = match ty.as_str() {
                "torch.FloatStorage" => DType::F32,
                "torch.LongStorage" => DType::I64,
                other => return Err(r.malformed(format!("storage type {other} not supported"))),
            };
            let numel = usize::try_from(*numel).map_err(|_| r.malformed("negative numel"))?;
            Ok(Value::Storage { dtype, key: key.clone(), numel })
        }
        _ => Err(r.malformed("persistent id is not ('storage', type, key, location, numel)")),
    }
}

fn call(func: Value, args: Value, r: &Reader<'_>) -> Result<Value, WeightsError> {
    let Value::Global(name) = func else {
        return Err(r.malformed("REDUCE on something that is not a GLOBAL"));
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" => rebuild_tensor(args, r),
        _ => Ok(Value::Opaque),
    }
}

fn rebuild_tensor(args: Value, r: &Reader<'_>) -> Result<Value, WeightsError> {
    let Value::Tuple(items) = args else {
        return Err(r.malformed("_rebuild_tensor_v2 arguments are not a tuple"));
    };
    let [Value::Storage { dtype, key, numel }, Value::Int(offset), size_stride @ ..] =
        items.as_slice()
    else {
        return Err(r.malformed("_rebuild_tensor_v2(storage, offset, size, stride, ..) expected"));
    };
    let [Value::Tuple(size), Value::Tuple(stride), ..] = size_stride else {
        return Err(r.malformed("_rebuild_tensor_v2(storage, offset, size, stride, ..) expected"));
    };
    let ints = |t: &[Value]| -> Result<Vec<i64>, WeightsError> {
        t.iter()
            .map(|v| match v {
                Value::Int(i) => i64::try_from(*i).map_err(|_| r.malformed("dimension overflow")),
                _ => Err(r.malformed("tensor size or stride is not an integer")),
            })
            .collect()
    };
    let offset = usize::try_from(*offset).map_err(|_| r.malformed("negative storage offset"))?;
    let shape = ints(size)?;
    let stride = ints(stride)?;
    let count: i64 = shape.iter().product();
    if offset + count as usize > *numel {
        return Err(r.malformed(format!("tensor view exceeds storage {key}")));
    }
    Ok(Value::Tensor(TensorRef { dtype: *dtype, key: key.clone(), offset, shape, stride }))
}

/// Reads every tensor of a legacy `.pth` file, in the order of its state dict.
pub fn read_legacy_pth(path: &Path) -> Result<Vec<NamedTensor>, WeightsError> {
    let bytes = std::fs::read(path)
        .map_err(|source| WeightsError::Io { path: path.display().to_string(), source })?;
    parse_legacy(&bytes)
}

/// Parses the bytes of a legacy `.pth` file (see the module docs for the layout).
pub fn parse_legacy(bytes: &[u8]) -> Result<Vec<NamedTensor>, WeightsError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = unpickle(&mut r)?;
    if !matches!(magic, Value::Int(MAGIC)) {
        return Err(WeightsError::Malformed {
            offset: 0,
            what: "no legacy torch magic number (zip checkpoints load with tch directly)".into(),
        });
    }
    if !matches!(unpickle(&mut r)?, Value::Int(PROTOCOL)) {
        return Err(r.malformed("protocol version is not 1001"));
    }
    check_sys_info(&unpickle(&mut r)?, &r)?;
    let entries = match unpickle(&mut r)? {
        Value::Dict(d) => d,
        _ => return Err(r.malformed("the state dict is not a dict")),
    };
    let keys = match unpickle(&mut r)? {
        Value::List(l) => l,
        _ => return Err(r.malformed("the storage key list is not a list")),
    };
    let dtypes = entries
        .iter()
        .filter_map(|(_, v)| match v {
            Value::Tensor(t) => Some((t.key.clone(), t.dtype)),
            _ => None,
        })
        .collect();
    let storages = read_storages(&mut r, &keys, &dtypes)?;
    entries.into_iter().map(|(k, v)| named_tensor(k, v, &storages, &r)).collect()
}

fn check_sys_info(info: &Value, r: &Reader<'_>) -> Result<(), WeightsError> {
    let Value::Dict(items) = info else {
        return Err(r.malformed("system info is not a dict"));
    };
    let little = items
        .iter()
        .any(|(k, v)| matches!((k, v), (Value::Str(k), Value::Bool(true)) if k == "little_endian"));
    if little {
        Ok(())
    } else {
        Err(r.malformed("file was written big-endian, which is not supported"))
    }
}

/// Raw storage bytes by key.
type Storages<'a> = HashMap<String, &'a [u8]>;

/// Reads the storages that follow the key list; each element size comes from the dtype
/// the state dict's persistent ids gave that key.
fn read_storages<'a>(
    r: &mut Reader<'a>,
    keys: &[Value],
    dtypes: &HashMap<String, DType>,
) -> Result<Storages<'a>, WeightsError> {
    let mut out = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(r.malformed("storage key is not a string"));
        };
        let dtype = dtypes.get(key).copied();
        let dtype = dtype.ok_or_else(|| r.malformed(format!("storage {key} has no tensor")))?;
        let count = r.le_u64("a storage's element count")?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size()))
            .ok_or_else(|| r.malformed(format!("storage {key} is impossibly large")))?;
        out.insert(key.clone(), r.take(len, "storage bytes")?);
    }
    Ok(out)
}

fn named_tensor(
    k: Value,
    v: Value,
    storages: &Storages<'_>,
    r: &Reader<'_>,
) -> Result<NamedTensor, WeightsError> {
    let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
        return Err(r.malformed("state-dict entry is not name -> tensor"));
    };
    let raw = storages.get(&t.key).ok_or_else(|| r.malformed(format!("no storage {}", t.key)))?;
    if !is_contiguous(&t.shape, &t.stride) {
        return Err(WeightsError::Mismatch { name, what: "non-contiguous view".into() });
    }
    let count = t.shape.iter().product::<i64>() as usize;
    let size = t.dtype.size();
    let start = t.offset * size;
    let slice = raw.get(start..start + count * size);
    let slice = slice.ok_or_else(|| r.malformed(format!("{name} exceeds its storage")))?;
    let data = match t.dtype {
        DType::F32 => TensorData::F32(
            slice.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ),
        DType::I64 => TensorData::I64(
            slice
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    i64::from_le_bytes(a)
                })
                .collect(),
        ),
    };
    Ok(NamedTensor { name, shape: t.shape, data })
}

fn is_contiguous(shape: &[i64], stride: &[i64]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

/// What [`load_into`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors in the file.
    pub total: usize,
    /// Tensors copied into the var store.
    pub copied: usize,
    /// `num_batches_tracked` counters, which the model does not keep.
    pub skipped: usize,
    /// Tensors outside the prefix (e.g. the ImageNet classifier).
    pub ignored: usize,
}

/// Copies the checkpoint tensors whose names start with `prefix` (e.g. `features.`) into
/// the var store by name. Each of them must exist in the store with the same shape, and
/// every store variable under `prefix` must be given by the file, so a renamed layer
/// cannot go unnoticed. Tensors outside the prefix are counted and ignored.
pub fn load_into(
    vs: &VarStore,
    tensors: &[NamedTensor],
    prefix: &str,
) -> Result<LoadReport, WeightsError> {
    let vars = vs.variables();
    let mut report = LoadReport { total: tensors.len(), copied: 0, skipped: 0, ignored: 0 };
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !t.name.starts_with(prefix) {
            report.ignored += 1;
            continue;
        }
        if t.name.ends_with("num_batches_tracked") {
            report.skipped += 1;
            continue;
        }
        let mismatch = |what: String| WeightsError::Mismatch { name: t.name.clone(), what };
        let var = vars.get(&t.name).ok_or_else(|| mismatch("not in the model".into()))?;
        if var.size() != t.shape {
            return Err(mismatch(format!(
                "shape {:?} in file, {:?} in model",
                t.shape,
                var.size()
            )));
        }
        let src = t.to_tensor().to_device(var.device()).to_kind(var.kind());
        tch::no_grad(|| var.shallow_clone().f_copy_(&src))?;
        seen.insert(t.name.as_str());
        report.copied += 1;
    }
    if let Some(missing) = vars.keys().find(|k| k.starts_with(prefix) && !seen.contains(k.as_str()))
    {
        return Err(WeightsError::Mismatch {
            name: missing.clone(),
            what: "in the model but not in the weights file".into(),
        });
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    /// The ImageNet weights setup.sh fetched; tests that need them are skipped without it.
    pub(crate) fn imagenet_path() -> Option<std::path::PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.weights/mobilenet_v2-b0353104.pth");
        p.exists().then_some(p)
    }

    #[test]
    fn reads_all_imagenet_tensors() {
        let Some(path) = imagenet_path() else {
            eprintln!("skipped: run scripts/setup.sh to fetch the ImageNet weights");
            return;
        };
        let tensors = read_legacy_pth(&path).unwrap();
        assert_eq!(tensors.len(), 314);
        let tracked = tensors.iter().filter(|t| t.name.ends_with("num_batches_tracked")).count();
        assert_eq!(tracked, 52);
        let by_name: HashMap<_, _> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(by_name["features.0.0.weight"].shape, vec![32, 3, 3, 3]);
        assert_eq!(by_name["features.18.0.weight"].shape, vec![1280, 320, 1, 1]);
        assert_eq!(by_name["classifier.1.weight"].shape, vec![1000, 1280]);
        let TensorData::F32(v) = &by_name["features.1.conv.0.1.running_var"].data else {
            panic!("running_var is not f32");
        };
        assert!(v.iter().all(|&x| x > 0.0 && x.is_finite()), "variances are positive");
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let Some(path) = imagenet_path() else { return };
        let bytes = std::fs::read(path).unwrap();
        for cut in [0, 10, 100, 5_000, 47_400, 60_000, bytes.len() - 1] {
            let err = parse_legacy(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, WeightsError::Truncated { .. } | WeightsError::Malformed { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn garbage_names_the_opcode_and_offset() {
        // A valid PROTO then an opcode no legacy torch file uses (0xff).
        let err = parse_legacy(&[0x80, 0x02, 0xff]).unwrap_err();
        assert!(matches!(err, WeightsError::Opcode { opcode: 0xff, offset: 2 }), "{err}");
        assert!(err.to_string().contains("0xff at byte 2"), "{err}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        // Pickle of the integer 7 (protocol 2): PROTO 2, BININT1 7, STOP.
        let err = parse_legacy(&[0x80, 0x02, b'K', 7, b'.']).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn long1_handles_sign_and_width() {
        let mut r = Reader { bytes: &[2, 0xff, 0x7f], pos: 0 };
        assert_eq!(long1(&mut r).unwrap(), 0x7fff);
        let mut r = Reader { bytes: &[1, 0xff], pos: 0 };
        assert_eq!(long1(&mut r).unwrap(), -1);
    }

    #[test]
    fn load_checks_names_and_shapes_both_ways() {
        let vs = VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let w = root.sub("features").sub("0").zeros("weight", &[2, 3]);
        let t = |name: &str, shape: Vec<i64>| NamedTensor {
            name: name.into(),
            data: TensorData::F32(vec![1.5; shape.iter().product::<i64>() as usize]),
            shape,
        };
        let err = load_into(&vs, &[t("features.0.weight", vec![3, 2])], "features.").unwrap_err();
        assert!(err.to_string().contains("shape [3, 2] in file, [2, 3] in model"), "{err}");
        let err = load_into(&vs, &[t("features.9.weight", vec![1])], "features.").unwrap_err();
        assert!(err.to_string().contains("features.9.weight: not in the model"), "{err}");
        let err = load_into(&vs, &[t("other.x", vec![1])], "features.").unwrap_err();
        assert!(err.to_string().contains("features.0.weight: in the model but not"), "{err}");
        let ok = load_into(&vs, &[t("features.0.weight", vec![2, 3])], "features.").unwrap();
        assert_eq!(ok.copied, 1);
        assert_eq!(w.sum(tch::Kind::Float).double_value(&[]), 9.0);
    }

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
    }
}
