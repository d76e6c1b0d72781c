//! Request payloads: classified once ([`PayloadKind`]), the JSON parsed once, then decoded into
//! tensors against the signature of the version that will run them. Triton's binary tensor
//! extension puts a JSON header of `Inference-Header-Content-Length` bytes first, then each
//! binary input's bytes in input order (`BYTES` elements length-prefixed); the raw form (header
//! length 0) is the single input's bytes, batch 1, at most one dynamic dimension found from
//! the size.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::response::Encoding;
use crate::model::ModelInfo;
use crate::pipeline::decode::is_image;
use crate::tensor::kserve::InferRequestBody;
use crate::tensor::{shape_from_i64, DType, Dim, Tensor, Tensors};

/// Why a payload could not be read; the message says what was wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// What a payload is (see the module table of [`super`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// A KServe V2 JSON request.
    Json,
    /// A JSON header of this many bytes, then binary inputs.
    Framed(usize),
    /// The single input's raw bytes.
    Raw,
    /// An encoded image, for a model with `[input]` pre-processing.
    Image,
}

/// A request payload, classified, with its JSON parsed.
#[derive(Debug)]
pub struct Payload {
    kind: PayloadKind,
    body: Bytes,
    header: InferRequestBody,
}

impl Payload {
    /// Classifies `body` by its header length (`Inference-Header-Content-Length`) and magic
    /// bytes, and parses its JSON.
    pub fn parse(body: Bytes, header_length: Option<usize>) -> Result<Payload, CodecError> {
        let kind = match header_length {
            None | Some(0) if is_image(&body) => PayloadKind::Image,
            None => PayloadKind::Json,
            Some(0) => PayloadKind::Raw,
            Some(length) if length > body.len() => {
                return Err(CodecError(format!(
                    "Inference-Header-Content-Length is {length} but the body has only {} bytes",
                    body.len()
                )))
            }
            Some(length) => PayloadKind::Framed(length),
        };
        let header = match kind {
            PayloadKind::Json => parse_json(&body)?,
            PayloadKind::Framed(length) => parse_json(&body[..length])?,
            PayloadKind::Raw | PayloadKind::Image => InferRequestBody::default(),
        };
        Ok(Payload { kind, body, header })
    }

    /// The payload's form.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The encoded image of an [`PayloadKind::Image`] payload.
    pub fn image(&self) -> Option<Bytes> {
        (self.kind == PayloadKind::Image).then(|| self.body.clone())
    }

    /// The caller's request id, echoed as given.
    pub fn id(&self) -> Option<&Value> {
        self.header.id.as_ref()
    }

    /// `reply_to` of the JSON: where MQTT 3.1.1 clients want the response.
    pub fn reply_to(&self) -> Option<&str> {
        self.header.reply_to.as_deref()
    }

    /// The KServe `timeout` parameter (microseconds).
    pub fn timeout(&self) -> Option<Duration> {
        parameter(self.header.parameters.as_ref(), "timeout")
            .and_then(Value::as_u64)
            .map(Duration::from_micros)
    }

    /// The outputs asked for, in order (all when `None`).
    pub fn outputs(&self) -> Option<Vec<String>> {
        let outputs = self.header.outputs.as_ref()?;
        Some(outputs.iter().map(|o| o.name.clone()).collect())
    }

    /// How the response's outputs go back: binary when the request asks (`binary_data_output`,
    /// or `binary_data` per output) or was raw; JSON otherwise.
    pub fn encoding(&self) -> Encoding {
        let per_output = self
            .header
            .outputs
            .iter()
            .flatten()
            .filter_map(|o| {
                let binary = parameter(o.parameters.as_ref(), "binary_data")?.as_bool()?;
                Some((o.name.clone(), binary))
            })
            .collect();
        let binary_default = self.kind == PayloadKind::Raw
            || parameter(self.header.parameters.as_ref(), "binary_data_output")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        Encoding::new(binary_default, per_output)
    }

    /// The input tensors, decoded against the signature of the version that will run them.
    pub fn decode(&self, info: &ModelInfo) -> Result<Tensors, CodecError> {
        match self.kind {
            PayloadKind::Json => framed_inputs(&self.header, Bytes::new()),
            PayloadKind::Framed(length) => framed_inputs(&self.header, self.body.slice(length..)),
            PayloadKind::Raw => raw_input(&self.body, info),
            PayloadKind::Image => Err(CodecError(
                "an image payload has no tensors: it goes through the model's [input] pre-processing".into(),
            )),
        }
    }
}

fn parameter<'a>(parameters: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a Value> {
    parameters?.get(key)
}

fn parse_json(json: &[u8]) -> Result<InferRequestBody, CodecError> {
    serde_json::from_slice(json).map_err(|e| CodecError(format!("malformed inference request JSON: {e}")))
}

/// The inputs of a JSON request, binary ones taken in order from `binary`.
/// Binary inputs share the body's memory (no copy for fixed-size elements).
fn framed_inputs(header: &InferRequestBody, mut binary: Bytes) -> Result<Tensors, CodecError> {
    let mut inputs = Vec::with_capacity(header.inputs.len());
    for input in &header.inputs {
        let named = |e: String| CodecError(format!("input '{}': {e}", input.name));
        let binary_size = parameter(input.parameters.as_ref(), "binary_data_size");
        let tensor = match (binary_size, &input.data) {
            (Some(size), _) => {
                let size = size
                    .as_u64()
                    .and_then(|size| usize::try_from(size).ok())
                    .ok_or_else(|| named("binary_data_size must be a non-negative integer".into()))?;
                if size > binary.len() {
                    return Err(named(format!(
                        "binary_data_size is {size} but only {} bytes of binary data remain",
                        binary.len()
                    )));
                }
                let bytes = binary.split_to(size);
                let dtype = DType::from_kserve_name(&input.datatype).map_err(|e| named(e.to_string()))?;
                let shape = shape_from_i64(&input.shape).map_err(|e| named(e.to_string()))?;
                Tensor::from_wire_bytes(dtype, shape, bytes)
            }
            (None, Some(_)) => input.to_tensor(),
            (None, None) => return Err(named("has neither 'data' nor binary_data_size".into())),
        }
        .map_err(|e| named(e.to_string()))?;
        inputs.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(CodecError(format!(
            "{} bytes of binary data follow the inputs and belong to none",
            binary.len()
        )));
    }
    Ok(inputs)
}

/// The raw form: one input, batch 1, at most one dynamic dimension (found from the size).
fn raw_input(body: &Bytes, info: &ModelInfo) -> Result<Tensors, CodecError> {
    let [spec] = &info.inputs[..] else {
        return Err(CodecError(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly one input"
                .into(),
        ));
    };
    let named = |e: String| CodecError(format!("input '{}': {e}", spec.name));
    let dtype = spec
        .dtype()
        .ok_or_else(|| CodecError(format!("input '{}' is {}", spec.name, spec.kind)))?;
    if dtype == DType::Bytes {
        let tensor = Tensor::from_wire(dtype, vec![1], body).map_err(|e| named(e.to_string()))?;
        return Ok(vec![(spec.name.clone(), tensor)]);
    }
    let element = dtype.size().expect("fixed size");
    let symbolic = spec.dims.iter().filter(|d| matches!(d, Dim::Symbolic(_))).count();
    let fixed: usize = spec
        .dims
        .iter()
        .map(|d| if let Dim::Fixed(n) = d { *n as usize } else { 1 })
        .product();
    let free = match symbolic {
        0 => 1,
        1 if fixed > 0 && body.len() % (fixed * element) == 0 => body.len() / (fixed * element),
        1 => {
            return Err(CodecError(format!(
                "raw body of {} bytes is not a whole number of {} {}",
                body.len(),
                spec.describe(),
                dtype
            )))
        }
        _ => {
            return Err(CodecError(format!(
                "a raw binary request needs at most one dynamic dimension; '{}' is {}",
                spec.name,
                spec.describe()
            )))
        }
    };
    let shape: Vec<usize> = spec
        .dims
        .iter()
        .map(|d| if let Dim::Fixed(n) = d { *n as usize } else { free })
        .collect();
    let tensor = Tensor::from_bytes(dtype, shape, body.clone()).map_err(|e| named(e.to_string()))?;
    Ok(vec![(spec.name.clone(), tensor)])
}

/// The encoded image of a request whose only input is one `BYTES` element holding an image
/// (how Triton clients send images as tensors).
pub fn image_in_tensors(inputs: &Tensors) -> Option<Bytes> {
    let [(_, tensor)] = inputs.as_slice() else {
        return None;
    };
    match tensor.strings()? {
        [image] if is_image(image) => Some(Bytes::copy_from_slice(image)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_classifies_alike() {
        let jpeg = Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0, 0, 0]);
        assert_eq!(
            Payload::parse(jpeg.clone(), None).unwrap().kind(),
            PayloadKind::Image
        );
        assert_eq!(Payload::parse(jpeg, Some(0)).unwrap().kind(), PayloadKind::Image);
        let raw = Bytes::from_static(&[0, 0, 128, 63]);
        assert_eq!(Payload::parse(raw, Some(0)).unwrap().kind(), PayloadKind::Raw);
        let json = Bytes::from_static(br#"{"id": 7, "reply_to": "r/1", "inputs": []}"#);
        let payload = Payload::parse(json, None).unwrap();
        assert_eq!(payload.kind(), PayloadKind::Json);
        assert_eq!(payload.id(), Some(&Value::from(7)));
        assert_eq!(payload.reply_to(), Some("r/1"));
        let err = Payload::parse(Bytes::from_static(b"{}"), Some(9)).unwrap_err();
        assert!(err.0.contains("only 2 bytes"), "{err}");
        let err = Payload::parse(Bytes::from_static(b"{oops"), None).unwrap_err();
        assert!(err.0.starts_with("malformed inference request JSON"), "{err}");
    }

    #[test]
    fn framed_requests_take_binary_inputs_in_order() {
        let header = br#"{"inputs": [{"name": "a", "shape": [2], "datatype": "INT8", "parameters": {"binary_data_size": 2}}, {"name": "b", "shape": [1], "datatype": "INT8", "data": [5]}], "parameters": {"binary_data_output": true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[1, 2]);
        let payload = Payload::parse(Bytes::from(body.clone()), Some(header.len())).unwrap();
        let info = ModelInfo::default();
        let inputs = payload.decode(&info).unwrap();
        assert_eq!(inputs[0].1.raw_bytes(), Some(&[1u8, 2][..]));
        assert_eq!(inputs[1].1.raw_bytes(), Some(&[5u8][..]));
        assert!(payload.encoding().binary("anything"));
        body.push(9);
        let extra = Payload::parse(Bytes::from(body), Some(header.len())).unwrap();
        assert!(extra.decode(&info).unwrap_err().0.contains("belong to none"));
    }
}
