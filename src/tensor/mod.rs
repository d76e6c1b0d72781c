//! Tensors as onnxd carries them between protocols and engines.
//!
//! A [`Tensor`] is a KServe-typed value: a [`DType`], a concrete shape and its elements, either
//! as little-endian bytes of fixed-size elements or, for `BYTES`, as a list of byte strings.
//! Every constructor validates (element count against shape, `BOOL` bytes being 0 or 1), so an
//! engine never sees a tensor whose buffer disagrees with its shape. Model signatures use
//! [`Dim`], which keeps symbolic dimensions (`batch`, `N`, unnamed `?`) apart from fixed ones.
//!
//! Conversions live in the submodules: [`kserve`] (V2 JSON, flat or nested data), [`npy`]
//! (`.npy` files) and [`proto`] (ONNX `TensorProto`, used by golden samples and conformance).
//! Raw little-endian bytes with Triton's length-prefixed `BYTES` are handled here.

pub mod kserve;
pub mod npy;
pub mod proto;

use std::fmt;

use bytes::Bytes;

/// Errors found while building or converting a tensor; each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The datatype name is not one of KServe's.
    #[error("unknown datatype '{0}' (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES)")]
    UnknownDatatype(String),
    /// A shape entry is negative or the element count overflows.
    #[error("invalid shape {0:?}: {1}")]
    InvalidShape(Vec<i64>, &'static str),
    /// The number of elements or bytes does not match the shape.
    #[error("{what} has {got} but shape {shape:?} of {dtype} needs {expected}")]
    LengthMismatch {
        /// What was counted ("data", "raw buffer").
        what: &'static str,
        /// Shape the caller declared.
        shape: Vec<usize>,
        /// Element type.
        dtype: DType,
        /// Found count, with unit.
        got: String,
        /// Required count, with unit.
        expected: String,
    },
    /// One element could not be read as the declared type.
    #[error("element {index}: {problem}")]
    BadElement {
        /// Flat index of the element.
        index: usize,
        /// What was wrong with it.
        problem: String,
    },
    /// The value's type cannot be expressed as a KServe tensor.
    #[error("{0}")]
    Unsupported(String),
    /// The encoded form (JSON, .npy, protobuf) is malformed.
    #[error("{0}")]
    Malformed(String),
}

/// Element types of KServe V2 (and Triton), the only ones onnxd carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// One byte, 0 or 1.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Variable-length byte strings (ONNX `string`).
    Bytes,
}

impl DType {
    /// Every datatype, in KServe's documentation order.
    pub const ALL: [DType; 14] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::Bytes,
    ];

    /// The KServe V2 name (`FP32`, `INT64`, `BYTES`, ...).
    pub fn kserve_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::BF16 => "BF16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    /// Parses a KServe V2 datatype name.
    pub fn from_kserve_name(name: &str) -> Result<DType, TensorError> {
        DType::ALL
            .into_iter()
            .find(|d| d.kserve_name() == name)
            .ok_or_else(|| TensorError::UnknownDatatype(name.to_string()))
    }

    /// Size of one element in bytes; `None` for `BYTES`.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// The ONNX `TensorProto.DataType` number of this type.
    pub fn onnx_type(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bytes => 8,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::BF16 => 16,
        }
    }

    /// Maps an ONNX `TensorProto.DataType` number; types KServe cannot carry (complex, FP8,
    /// INT4, FP4, ...) are an [`TensorError::Unsupported`] naming the type.
    pub fn from_onnx_type(code: i32) -> Result<DType, TensorError> {
        DType::ALL
            .into_iter()
            .find(|d| d.onnx_type() == code)
            .ok_or_else(|| {
                TensorError::Unsupported(format!(
                    "ONNX element type {} has no KServe datatype",
                    onnx_type_name(code)
                ))
            })
    }
}

/// Human name of an ONNX `TensorProto.DataType` number, for error messages.
pub fn onnx_type_name(code: i32) -> String {
    let name = match code {
        0 => "undefined",
        14 => "complex64",
        15 => "complex128",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        24 => "float8e8m0",
        25 => "uint2",
        26 => "int2",
        other => {
            return match DType::ALL.into_iter().find(|d| d.onnx_type() == other) {
                Some(d) => d.kserve_name().to_string(),
                None => format!("#{other}"),
            }
        }
    };
    name.to_string()
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kserve_name())
    }
}

/// One dimension of a model input or output as the model declares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A dynamic size, with its symbol name when the model gives one (`batch`, `N`).
    Symbolic(Option<String>),
}

impl Dim {
    /// KServe metadata form: the size, or -1 for a dynamic dimension.
    pub fn kserve(&self) -> i64 {
        match self {
            Dim::Fixed(n) => *n as i64,
            Dim::Symbolic(_) => -1,
        }
    }

    /// Whether a concrete size fits this dimension.
    pub fn accepts(&self, size: usize) -> bool {
        match self {
            Dim::Fixed(n) => *n == size as u64,
            Dim::Symbolic(_) => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(Some(name)) => f.write_str(name),
            Dim::Symbolic(None) => f.write_str("?"),
        }
    }
}

/// Formats a declared shape as `[N, 3, 224, 224]`.
pub fn format_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Named tensors, in model order.
pub type Tensors = Vec<(String, Tensor)>;

/// The elements of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, densely packed in row-major order. `Bytes`: a
    /// slice of a request body or of a batch's output, shared without copying.
    Fixed(Bytes),
    /// `BYTES` elements in row-major order.
    Bytes(Vec<Vec<u8>>),
}

/// A typed, shaped tensor whose buffer is known to match its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: TensorData,
}

/// Number of elements of a shape, refusing overflow.
pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            TensorError::InvalidShape(
                shape.iter().map(|&d| d as i64).collect(),
                "element count overflows",
            )
        })
}

/// Converts a wire shape (`i64` entries) to sizes, refusing negative entries.
pub fn shape_from_i64(shape: &[i64]) -> Result<Vec<usize>, TensorError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TensorError::InvalidShape(shape.to_vec(), "dimensions must be >= 0"))
}

/// `BYTES` data of `got` elements where `shape` holds `count`.
fn strings_mismatch(shape: Vec<usize>, count: usize, got: String) -> TensorError {
    TensorError::LengthMismatch {
        what: "data",
        shape,
        dtype: DType::Bytes,
        got,
        expected: format!("{count} elements"),
    }
}

impl Tensor {
    /// Builds a tensor of fixed-size elements from little-endian bytes.
    pub fn from_raw(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Tensor, TensorError> {
        Tensor::from_bytes(dtype, shape, Bytes::from(bytes))
    }

    /// [`Tensor::from_raw`] on shared bytes (a slice of a request body): no copy.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<Tensor, TensorError> {
        let Some(size) = dtype.size() else {
            return Tensor::from_wire(dtype, shape, &bytes);
        };
        let count = element_count(&shape)?;
        let expected = count.checked_mul(size).ok_or_else(|| {
            TensorError::InvalidShape(shape.iter().map(|&d| d as i64).collect(), "byte size overflows")
        })?;
        if bytes.len() != expected {
            return Err(TensorError::LengthMismatch {
                what: "raw buffer",
                shape,
                dtype,
                got: format!("{} bytes", bytes.len()),
                expected: format!("{expected} bytes"),
            });
        }
        if dtype == DType::Bool {
            if let Some(index) = bytes.iter().position(|&b| b > 1) {
                return Err(TensorError::BadElement {
                    index,
                    problem: format!("BOOL byte is {}, expected 0 or 1", bytes[index]),
                });
            }
        }
        Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Fixed(bytes),
        })
    }

    /// Builds a `BYTES` tensor from its elements.
    pub fn from_strings(shape: Vec<usize>, elements: Vec<Vec<u8>>) -> Result<Tensor, TensorError> {
        let count = element_count(&shape)?;
        if elements.len() != count {
            return Err(strings_mismatch(
                shape,
                count,
                format!("{} elements", elements.len()),
            ));
        }
        Ok(Tensor {
            dtype: DType::Bytes,
            shape,
            data: TensorData::Bytes(elements),
        })
    }

    /// Builds a tensor from Triton's binary wire form: little-endian elements, and for `BYTES`
    /// each element preceded by its length as a 4-byte little-endian integer.
    pub fn from_wire(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, TensorError> {
        if dtype != DType::Bytes {
            return Tensor::from_raw(dtype, shape, bytes.to_vec());
        }
        Tensor::strings_from_wire(shape, bytes)
    }

    /// [`Tensor::from_wire`] on shared bytes: fixed-size elements are not copied.
    pub fn from_wire_bytes(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<Tensor, TensorError> {
        match dtype {
            DType::Bytes => Tensor::strings_from_wire(shape, &bytes),
            _ => Tensor::from_bytes(dtype, shape, bytes),
        }
    }

    fn strings_from_wire(shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, TensorError> {
        let count = element_count(&shape)?;
        let mut elements = Vec::with_capacity(count.min(bytes.len() / 4));
        let mut rest = bytes;
        while !rest.is_empty() {
            let index = elements.len();
            if index == count {
                // More elements than the shape holds: refused before the rest is parsed (zero-
                // length elements would otherwise cost ~24 bytes of memory per 4 bytes sent).
                return Err(strings_mismatch(
                    shape,
                    count,
                    format!("more than {count} elements"),
                ));
            }
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(TensorError::BadElement {
                    index,
                    problem: format!(
                        "BYTES element needs a 4-byte length prefix, only {} bytes left",
                        rest.len()
                    ),
                });
            };
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(TensorError::BadElement {
                    index,
                    problem: format!(
                        "BYTES element declares {len} bytes but only {} remain",
                        tail.len()
                    ),
                });
            }
            elements.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        Tensor::from_strings(shape, elements)
    }

    /// A tensor of `shape` with every element `value` (converted to `dtype`; `BYTES` elements
    /// are the value's decimal text).
    pub fn filled(dtype: DType, shape: Vec<usize>, value: f64) -> Result<Tensor, TensorError> {
        let count = element_count(&shape)?;
        if dtype == DType::Bytes {
            return Tensor::from_strings(shape, vec![value.to_string().into_bytes(); count]);
        }
        let element = encode_f64(dtype, value);
        let bytes = element.repeat(count);
        Tensor::from_raw(dtype, shape, bytes)
    }

    /// Builds a tensor from typed values (test and fixture helper).
    pub fn from_values<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Tensor, TensorError> {
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(values));
        for v in values {
            v.push_le(&mut bytes);
        }
        Tensor::from_raw(T::DTYPE, shape, bytes)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len() / self.dtype.size().unwrap_or(1),
            TensorData::Bytes(e) => e.len(),
        }
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Little-endian bytes of a fixed-size tensor; `None` for `BYTES`.
    pub fn raw_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            TensorData::Fixed(b) => Some(b),
            TensorData::Bytes(_) => None,
        }
    }

    /// Elements of a `BYTES` tensor; `None` otherwise.
    pub fn strings(&self) -> Option<&[Vec<u8>]> {
        match &self.data {
            TensorData::Bytes(e) => Some(e),
            TensorData::Fixed(_) => None,
        }
    }

    /// The `BYTES` elements as UTF-8 strings (what engines' string tensors hold), naming the
    /// first element that is not; `None` for other dtypes.
    pub fn utf8_strings(&self) -> Option<Result<Vec<String>, TensorError>> {
        let elements = self.strings()?;
        Some(
            elements
                .iter()
                .enumerate()
                .map(|(index, e)| {
                    String::from_utf8(e.clone()).map_err(|_| TensorError::BadElement {
                        index,
                        problem: "BYTES element is not UTF-8, which engine string tensors require".into(),
                    })
                })
                .collect(),
        )
    }

    /// Triton's binary wire form (see [`Tensor::from_wire`]).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.write_wire(&mut out);
        out
    }

    /// The length of [`Tensor::to_wire`]'s bytes.
    pub fn wire_len(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(elements) => elements.iter().map(|e| e.len() + 4).sum(),
        }
    }

    /// Appends the binary wire form to `out`.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        match &self.data {
            TensorData::Fixed(b) => out.extend_from_slice(b),
            TensorData::Bytes(elements) => {
                for e in elements {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
            }
        }
    }

    /// The tensors stacked along dimension 0 (a batch): same dtype, same other dimensions.
    /// One copy of each part.
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts
            .first()
            .ok_or_else(|| TensorError::Malformed("nothing to concatenate".into()))?;
        let rows: usize = parts.iter().map(|t| t.shape.first().copied().unwrap_or(1)).sum();
        if let Some(odd) = parts
            .iter()
            .find(|t| t.dtype != first.dtype || t.shape.is_empty() || t.shape[1..] != first.shape[1..])
        {
            return Err(TensorError::Malformed(format!(
                "cannot stack {} {:?} with {} {:?}",
                odd.dtype, odd.shape, first.dtype, first.shape
            )));
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        match &first.data {
            TensorData::Fixed(_) => {
                let mut bytes =
                    Vec::with_capacity(parts.iter().map(|t| t.raw_bytes().map_or(0, <[u8]>::len)).sum());
                for part in parts {
                    bytes.extend_from_slice(part.raw_bytes().unwrap_or_default());
                }
                Tensor::from_raw(first.dtype, shape, bytes)
            }
            TensorData::Bytes(_) => {
                let elements = parts
                    .iter()
                    .flat_map(|t| t.strings().unwrap_or_default().iter().cloned());
                Tensor::from_strings(shape, elements.collect())
            }
        }
    }

    /// Rows `start..start + count` of dimension 0: a part of a batch's output. Fixed-size
    /// elements are shared, not copied.
    pub fn rows(&self, start: usize, count: usize) -> Result<Tensor, TensorError> {
        let total = self.shape.first().copied().unwrap_or(0);
        if start + count > total {
            return Err(TensorError::Malformed(format!(
                "rows {start}..{} of a tensor with {total}",
                start + count
            )));
        }
        let per_row = element_count(&self.shape[1..])?;
        let mut shape = self.shape.clone();
        shape[0] = count;
        let data = match &self.data {
            TensorData::Fixed(bytes) => {
                let row = per_row * self.dtype.size().expect("fixed size");
                TensorData::Fixed(bytes.slice(start * row..(start + count) * row))
            }
            TensorData::Bytes(elements) => {
                TensorData::Bytes(elements[start * per_row..(start + count) * per_row].to_vec())
            }
        };
        Ok(Tensor {
            dtype: self.dtype,
            shape,
            data,
        })
    }

    /// Decodes every element as `f64` (integers, floats, `BOOL` as 0/1); `None` for `BYTES`.
    /// Used for tolerant comparisons and JSON output.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        let bytes = self.raw_bytes()?;
        let size = self.dtype.size()?;
        Some(
            bytes
                .chunks_exact(size)
                .map(|c| decode_f64(self.dtype, c))
                .collect(),
        )
    }

    /// Consumes the tensor into its parts.
    pub fn into_parts(self) -> (DType, Vec<usize>, TensorData) {
        (self.dtype, self.shape, self.data)
    }
}

/// Compares a tensor with an expected one: same dtype and shape, floats within
/// `|got - want| <= atol + rtol * |want|` (NaN equals NaN), everything else exactly.
pub fn approx_eq(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("dtype {} != expected {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} != expected {:?}", got.shape(), want.shape()));
    }
    if !matches!(want.dtype(), DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
        return if got.data() == want.data() {
            Ok(())
        } else {
            Err("values differ".into())
        };
    }
    let (g, w) = (
        got.to_f64_vec().unwrap_or_default(),
        want.to_f64_vec().unwrap_or_default(),
    );
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
        if !same {
            return Err(format!("element {i}: {a} != expected {b}"));
        }
    }
    Ok(())
}

/// Reads one little-endian element of a fixed-size type as `f64`.
pub fn decode_f64(dtype: DType, c: &[u8]) -> f64 {
    match dtype {
        DType::Bool | DType::U8 => c[0] as f64,
        DType::I8 => c[0] as i8 as f64,
        DType::U16 => u16::from_le_bytes([c[0], c[1]]) as f64,
        DType::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
        DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
        DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
        DType::U32 => u32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
        DType::I32 => i32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
        DType::F32 => f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
        DType::U64 => u64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
        DType::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
        DType::F64 => f64::from_le_bytes(c.try_into().expect("8 bytes")),
        DType::Bytes => f64::NAN,
    }
}

/// The little-endian bytes of `value` as one element of a fixed-size type (integers
/// saturate, `BOOL` is `value != 0`); empty for `BYTES`.
pub fn encode_f64(dtype: DType, value: f64) -> Vec<u8> {
    match dtype {
        DType::Bool => vec![u8::from(value != 0.0)],
        DType::U8 => vec![value as u8],
        DType::I8 => (value as i8).to_le_bytes().to_vec(),
        DType::U16 => (value as u16).to_le_bytes().to_vec(),
        DType::I16 => (value as i16).to_le_bytes().to_vec(),
        DType::U32 => (value as u32).to_le_bytes().to_vec(),
        DType::I32 => (value as i32).to_le_bytes().to_vec(),
        DType::U64 => (value as u64).to_le_bytes().to_vec(),
        DType::I64 => (value as i64).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DType::F32 => (value as f32).to_le_bytes().to_vec(),
        DType::F64 => value.to_le_bytes().to_vec(),
        DType::Bytes => Vec::new(),
    }
}

/// Rust types that are elements of a fixed-size [`DType`].
pub trait Element: Copy {
    /// The matching datatype.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn push_le(&self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $d:expr),* $(,)?) => {$(
        impl Element for $t {
            const DTYPE: DType = $d;
            fn push_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

element!(
    u8 => DType::U8, u16 => DType::U16, u32 => DType::U32, u64 => DType::U64,
    i8 => DType::I8, i16 => DType::I16, i32 => DType::I32, i64 => DType::I64,
    half::f16 => DType::F16, half::bf16 => DType::BF16, f32 => DType::F32, f64 => DType::F64,
);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn push_le(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kserve_names_round_trip_for_every_dtype() {
        for d in DType::ALL {
            assert_eq!(DType::from_kserve_name(d.kserve_name()), Ok(d));
            assert_eq!(DType::from_onnx_type(d.onnx_type()), Ok(d));
        }
        assert!(matches!(
            DType::from_kserve_name("FLOAT"),
            Err(TensorError::UnknownDatatype(_))
        ));
        let err = DType::from_onnx_type(17).unwrap_err().to_string();
        assert!(err.contains("float8e4m3fn"), "{err}");
    }

    #[test]
    fn raw_buffer_length_must_match_shape() {
        let err = Tensor::from_raw(DType::F32, vec![2, 3], vec![0; 20]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "raw buffer has 20 bytes but shape [2, 3] of FP32 needs 24 bytes"
        );
        assert!(Tensor::from_raw(DType::F32, vec![2, 3], vec![0; 24]).is_ok());
        assert!(Tensor::from_raw(DType::F32, vec![0, 3], vec![]).is_ok());
    }

    #[test]
    fn bool_bytes_must_be_zero_or_one() {
        let err = Tensor::from_raw(DType::Bool, vec![3], vec![0, 1, 7]).unwrap_err();
        assert!(err.to_string().contains("element 2"), "{err}");
    }

    #[test]
    fn overflowing_shape_is_refused() {
        let err = Tensor::from_raw(DType::F64, vec![usize::MAX, 2], vec![]).unwrap_err();
        assert!(matches!(err, TensorError::InvalidShape(..)), "{err}");
    }

    #[test]
    fn bytes_wire_form_round_trips_and_rejects_truncation() {
        let t = Tensor::from_strings(vec![2], vec![b"ab".to_vec(), vec![]]).unwrap();
        let wire = t.to_wire();
        assert_eq!(wire, [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(Tensor::from_wire(DType::Bytes, vec![2], &wire).unwrap(), t);
        let err = Tensor::from_wire(DType::Bytes, vec![2], &wire[..5]).unwrap_err();
        assert!(err.to_string().contains("declares 2 bytes"), "{err}");
        let err = Tensor::from_wire(DType::Bytes, vec![2], &[1, 0]).unwrap_err();
        assert!(err.to_string().contains("length prefix"), "{err}");
        let err = Tensor::from_wire(DType::Bytes, vec![3], &wire).unwrap_err();
        assert!(err.to_string().contains("2 elements"), "{err}");
        // Too many elements are refused at the first one past the shape, not after parsing
        // them all (a million empty elements were a million allocations).
        let err = Tensor::from_wire(DType::Bytes, vec![1], &vec![0; 4 << 20]).unwrap_err();
        assert!(err.to_string().contains("more than 1 elements"), "{err}");
    }

    #[test]
    fn filled_tensors_round_trip_through_f64() {
        for dtype in DType::ALL {
            let t = Tensor::filled(dtype, vec![2, 2], 1.0).unwrap();
            assert_eq!(t.len(), 4, "{dtype}");
            if dtype != DType::Bytes {
                assert_eq!(t.to_f64_vec().unwrap(), vec![1.0; 4], "{dtype}");
            }
        }
    }

    #[test]
    fn batches_stack_and_split_along_dimension_zero() {
        let a = Tensor::from_values(vec![1, 2], &[1i32, 2]).unwrap();
        let b = Tensor::from_values(vec![2, 2], &[3i32, 4, 5, 6]).unwrap();
        let batch = Tensor::concat(&[&a, &b]).unwrap();
        assert_eq!(batch.shape(), &[3, 2]);
        assert_eq!(batch.rows(0, 1).unwrap(), a);
        assert_eq!(batch.rows(1, 2).unwrap(), b);
        assert!(batch.rows(2, 2).is_err());
        let s = Tensor::from_strings(vec![1], vec![b"x".to_vec()]).unwrap();
        let t = Tensor::from_strings(vec![2], vec![b"y".to_vec(), b"z".to_vec()]).unwrap();
        let strings = Tensor::concat(&[&s, &t]).unwrap();
        assert_eq!(strings.rows(1, 2).unwrap(), t);
        let other = Tensor::from_values(vec![1, 3], &[1i32, 2, 3]).unwrap();
        assert!(Tensor::concat(&[&a, &other]).is_err());
    }

    #[test]
    fn f64_view_decodes_each_type() {
        let t = Tensor::from_values(vec![2], &[half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]).unwrap();
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.5, -2.0]);
        let t = Tensor::from_values(vec![2], &[-3i8, 4]).unwrap();
        assert_eq!(t.to_f64_vec().unwrap(), vec![-3.0, 4.0]);
    }
}
