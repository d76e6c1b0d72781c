//! KServe V2 (Open Inference Protocol) JSON: the request and response bodies shared by
//! `onnxd infer`, HTTP and MQTT, and the conversion of their `data` arrays to and from
//! [`Tensor`]s. `data` may be flat or nested (row-major); nesting is flattened and only the
//! total count is checked against the shape, as Triton does.

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{element_count, shape_from_i64, DType, Tensor, TensorData, TensorError};

/// A V2 inference request body.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InferRequestBody {
    /// Caller's request id, echoed in the response as given (KServe says a string; MQTT 3.1.1
    /// clients also send numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Where MQTT 3.1.1 clients (which have no response topic) want the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Request parameters (`timeout`, `binary_data_output`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<InputTensor>,
    /// Requested outputs; all outputs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input of a V2 request.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct InputTensor {
    /// Input name.
    pub name: String,
    /// Concrete shape.
    pub shape: Vec<i64>,
    /// KServe datatype name.
    pub datatype: String,
    /// Per-input parameters (`binary_data_size`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Elements, flat or nested; absent when sent as binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One requested output of a V2 request.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Per-output parameters (`binary_data`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

/// A V2 inference response body.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct InferResponseBody {
    /// Name of the model that answered.
    pub model_name: String,
    /// Version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Echo of the request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Response parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Output tensors.
    pub outputs: Vec<OutputTensor>,
}

/// One output of a V2 response.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// KServe datatype name.
    pub datatype: String,
    /// Per-output parameters (`binary_data_size`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Flat elements; absent when sent as binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl InferRequestBody {
    /// The JSON `data` of every input as named tensors; an error names the input.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>, String> {
        self.inputs
            .iter()
            .map(|i| {
                i.to_tensor()
                    .map(|t| (i.name.clone(), t))
                    .map_err(|e| format!("input '{}': {e}", i.name))
            })
            .collect()
    }
}

impl InputTensor {
    /// Converts the JSON `data` of this input to a tensor.
    pub fn to_tensor(&self) -> Result<Tensor, TensorError> {
        let dtype = DType::from_kserve_name(&self.datatype)?;
        let shape = shape_from_i64(&self.shape)?;
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| TensorError::Malformed("has no 'data'".into()))?;
        tensor_from_json(dtype, shape, data)
    }
}

impl OutputTensor {
    /// Builds a JSON output from a tensor.
    pub fn from_tensor(name: &str, tensor: &Tensor) -> OutputTensor {
        OutputTensor {
            name: name.to_string(),
            shape: tensor.shape().to_vec(),
            datatype: tensor.dtype().kserve_name().to_string(),
            parameters: None,
            data: Some(tensor_to_json(tensor)),
        }
    }

    /// Converts the JSON `data` of this output back to a tensor.
    pub fn to_tensor(&self) -> Result<Tensor, TensorError> {
        let dtype = DType::from_kserve_name(&self.datatype)?;
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| TensorError::Malformed("has no 'data'".into()))?;
        tensor_from_json(dtype, self.shape.clone(), data)
    }
}

/// Converts a V2 `data` value (flat or nested array, or a scalar for shape `[]`).
pub fn tensor_from_json(dtype: DType, shape: Vec<usize>, data: &Value) -> Result<Tensor, TensorError> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let count = element_count(&shape)?;
    if flat.len() != count {
        return Err(TensorError::LengthMismatch {
            what: "data",
            shape,
            dtype,
            got: format!("{} elements", flat.len()),
            expected: format!("{count} elements"),
        });
    }
    if dtype == DType::Bytes {
        let elements = flat
            .iter()
            .enumerate()
            .map(|(index, v)| match v {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                other => Err(bad(index, other, "a string")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Tensor::from_strings(shape, elements);
    }
    let size = dtype.size().expect("fixed-size dtype");
    let mut bytes = Vec::with_capacity(count * size);
    for (index, v) in flat.iter().enumerate() {
        encode_json_element(dtype, index, v, &mut bytes)?;
    }
    Tensor::from_raw(dtype, shape, bytes)
}

fn flatten<'v>(value: &'v Value, out: &mut Vec<&'v Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

fn bad(index: usize, value: &Value, expected: &str) -> TensorError {
    let mut shown = value.to_string();
    if shown.len() > 40 {
        shown.truncate(40);
        shown.push('…');
    }
    TensorError::BadElement {
        index,
        problem: format!("{shown} is not {expected}"),
    }
}

fn encode_json_element(dtype: DType, index: usize, v: &Value, out: &mut Vec<u8>) -> Result<(), TensorError> {
    macro_rules! int {
        ($t:ty) => {{
            let n = v
                .as_i64()
                .and_then(|n| <$t>::try_from(n).ok())
                .or_else(|| v.as_u64().and_then(|n| <$t>::try_from(n).ok()))
                .ok_or_else(|| bad(index, v, concat!("an integer in the range of ", stringify!($t))))?;
            out.extend_from_slice(&n.to_le_bytes());
        }};
    }
    let float = |v: &Value| -> Result<f64, TensorError> {
        match v {
            Value::Null => Ok(f64::NAN),
            _ => v.as_f64().ok_or_else(|| bad(index, v, "a number")),
        }
    };
    match dtype {
        DType::Bool => match v {
            Value::Bool(b) => out.push(u8::from(*b)),
            Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                out.push(n.as_u64().unwrap_or(0) as u8)
            }
            _ => return Err(bad(index, v, "a boolean")),
        },
        DType::U8 => int!(u8),
        DType::U16 => int!(u16),
        DType::U32 => int!(u32),
        DType::U64 => int!(u64),
        DType::I8 => int!(i8),
        DType::I16 => int!(i16),
        DType::I32 => int!(i32),
        DType::I64 => int!(i64),
        DType::F16 => out.extend_from_slice(&half::f16::from_f64(float(v)?).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(float(v)?).to_le_bytes()),
        DType::F32 => out.extend_from_slice(&(float(v)? as f32).to_le_bytes()),
        DType::F64 => out.extend_from_slice(&float(v)?.to_le_bytes()),
        DType::Bytes => unreachable!("BYTES handled by the caller"),
    }
    Ok(())
}

/// Converts a tensor to a flat V2 `data` array (see [`JsonData`]).
pub fn tensor_to_json(tensor: &Tensor) -> Value {
    serde_json::to_value(JsonData(tensor)).expect("tensor elements serialise")
}

/// A tensor's elements as a flat V2 `data` array, serialised straight from its bytes.
/// Non-finite floats become `null` (JSON has no NaN); FP32 is written in its shortest form
/// (which reads back as the same FP32); `BYTES` that are not UTF-8 are written with
/// replacement characters.
pub struct JsonData<'a>(pub &'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let dtype = tensor.dtype();
        let mut seq = serializer.serialize_seq(None)?;
        match tensor.data() {
            TensorData::Bytes(elements) => {
                for e in elements {
                    seq.serialize_element(&String::from_utf8_lossy(e))?;
                }
            }
            TensorData::Fixed(bytes) => {
                let size = dtype.size().expect("fixed-size dtype");
                for c in bytes.chunks_exact(size) {
                    serialize_element(&mut seq, dtype, c)?;
                }
            }
        }
        seq.end()
    }
}

fn serialize_element<S: SerializeSeq>(seq: &mut S, dtype: DType, c: &[u8]) -> Result<(), S::Error> {
    match dtype {
        DType::Bool => seq.serialize_element(&(c[0] != 0)),
        DType::U64 => seq.serialize_element(&u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        DType::I64 => seq.serialize_element(&i64::from_le_bytes(c.try_into().expect("8 bytes"))),
        DType::U8 | DType::U16 | DType::U32 | DType::I8 | DType::I16 | DType::I32 => {
            seq.serialize_element(&(super::decode_f64(dtype, c) as i64))
        }
        DType::F32 => {
            let f = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            seq.serialize_element(&f.is_finite().then_some(f))
        }
        _ => {
            let f = super::decode_f64(dtype, c);
            seq.serialize_element(&f.is_finite().then_some(f))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_data_give_the_same_tensor() {
        let nested = tensor_from_json(DType::I32, vec![2, 2], &json!([[1, 2], [3, 4]])).unwrap();
        let flat = tensor_from_json(DType::I32, vec![2, 2], &json!([1, 2, 3, 4])).unwrap();
        assert_eq!(nested, flat);
        assert_eq!(tensor_to_json(&flat), json!([1, 2, 3, 4]));
    }

    #[test]
    fn every_dtype_round_trips_through_json() {
        let cases = [
            (DType::Bool, json!([true, false])),
            (DType::U8, json!([0, 255])),
            (DType::U16, json!([0, 65535])),
            (DType::U32, json!([0, 4294967295u64])),
            (DType::U64, json!([0, u64::MAX])),
            (DType::I8, json!([-128, 127])),
            (DType::I16, json!([-32768, 32767])),
            (DType::I32, json!([i32::MIN, i32::MAX])),
            (DType::I64, json!([i64::MIN, i64::MAX])),
            (DType::F16, json!([1.5, -0.25])),
            (DType::BF16, json!([1.5, -0.25])),
            (DType::F32, json!([1.5, -0.25])),
            (DType::F64, json!([1.5, -0.25])),
            (DType::Bytes, json!(["abc", ""])),
        ];
        for (dtype, data) in cases {
            let t = tensor_from_json(dtype, vec![2], &data).unwrap();
            assert_eq!(tensor_to_json(&t), data, "{dtype}");
        }
    }

    #[test]
    fn wrong_counts_and_elements_are_named() {
        let err = tensor_from_json(DType::F32, vec![2, 3], &json!([1, 2, 3])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "data has 3 elements but shape [2, 3] of FP32 needs 6 elements"
        );
        let err = tensor_from_json(DType::I8, vec![2], &json!([1, 300])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "element 1: 300 is not an integer in the range of i8"
        );
        let err = tensor_from_json(DType::F32, vec![1], &json!(["x"])).unwrap_err();
        assert!(err.to_string().contains("is not a number"), "{err}");
        let err = tensor_from_json(DType::Bytes, vec![1], &json!([5])).unwrap_err();
        assert!(err.to_string().contains("is not a string"), "{err}");
        let err = tensor_from_json(DType::Bool, vec![1], &json!([2])).unwrap_err();
        assert!(err.to_string().contains("is not a boolean"), "{err}");
        let err = tensor_from_json(DType::I64, vec![1], &json!([1.5])).unwrap_err();
        assert!(err.to_string().contains("integer"), "{err}");
    }

    #[test]
    fn scalar_shape_takes_one_element() {
        let t = tensor_from_json(DType::F64, vec![], &json!(2.5)).unwrap();
        assert_eq!(t.to_f64_vec().unwrap(), vec![2.5]);
    }

    #[test]
    fn request_body_parses_with_optional_fields() {
        let body: InferRequestBody = serde_json::from_value(json!({
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]
        }))
        .unwrap();
        assert_eq!(body.inputs[0].to_tensor().unwrap().shape(), &[1]);
        let negative = InputTensor {
            shape: vec![-1],
            ..body.inputs[0].clone()
        };
        assert!(negative.to_tensor().unwrap_err().to_string().contains(">= 0"));
    }
}
