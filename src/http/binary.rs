//! Request and response bodies of `POST …/infer`: KServe V2 JSON, Triton's binary tensor
//! extension (a JSON header of `Inference-Header-Content-Length` bytes, then each binary
//! input's bytes in input order, `BYTES` elements length-prefixed), and the raw form
//! (header length 0: the whole body is the single input's bytes). Outputs are binary when the
//! request asks (`binary_data_output`, or `binary_data` per output) or was raw.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::engine::{ModelInfo, Tensors};
use crate::pipeline::preprocess::is_image;
use crate::serving::image::{Image, ImageRequest};
use crate::serving::{InferRequest, InferResponse, Router, ServeError};
use crate::tensor::kserve::{InferRequestBody, OutputTensor};
use crate::tensor::{shape_from_i64, DType, Dim, Tensor};

/// A decoded infer request body.
#[derive(Debug)]
pub struct DecodedRequest {
    /// The JSON part (for the id, parameters and requested outputs).
    pub body: InferRequestBody,
    /// Input tensors.
    pub inputs: Tensors,
    /// Whether every output goes back binary by default.
    pub binary_default: bool,
}

impl DecodedRequest {
    /// The serving-core request; the KServe `timeout` parameter (µs) counts from `arrived`
    /// and is capped by `deadline` (e.g. an MQTT message expiry).
    pub fn take_request(
        &mut self,
        model: &str,
        version: Option<u64>,
        arrived: Instant,
        deadline: Option<Instant>,
    ) -> InferRequest {
        let timeout = self
            .body
            .parameters
            .as_ref()
            .and_then(|p| p.get("timeout"))
            .and_then(Value::as_u64)
            .map(|us| arrived + Duration::from_micros(us));
        InferRequest {
            model: model.to_string(),
            version,
            id: self.body.id.clone(),
            inputs: std::mem::take(&mut self.inputs),
            outputs: self
                .body
                .outputs
                .as_ref()
                .map(|o| o.iter().map(|o| o.name.clone()).collect()),
            deadline: timeout.into_iter().chain(deadline).min(),
        }
    }

    /// Encodes `response` as the reply to this request (see [`encode_response`]); `extra`
    /// fields join the JSON header.
    pub fn encode_reply(
        &self,
        response: &InferResponse,
        extra: Map<String, Value>,
    ) -> (Vec<u8>, Option<usize>) {
        encode_response(response_header(response, extra), &response.outputs, |name| {
            wants_binary(self, name)
        })
    }
}

/// The JSON header of a response — model name and version, id, engine, provider and
/// inference time — with `extra` fields added.
fn response_header(response: &InferResponse, extra: Map<String, Value>) -> Map<String, Value> {
    let mut header = Map::new();
    header.insert("model_name".into(), response.model.clone().into());
    header.insert("model_version".into(), response.version.to_string().into());
    if let Some(id) = &response.id {
        header.insert("id".into(), id.clone().into());
    }
    header.insert(
        "parameters".into(),
        json!({ "engine": response.engine.to_string(), "provider": response.provider, "inference_us": response.compute_time.as_micros() as u64 }),
    );
    if let Some(result) = &response.result {
        header.insert(
            "result".into(),
            serde_json::to_value(result).expect("detections serialise"),
        );
    }
    header.extend(extra);
    header
}

/// A response with every output as JSON (for requests that were not tensors, e.g. images).
pub fn encode_json_reply(response: &InferResponse, extra: Map<String, Value>) -> Vec<u8> {
    encode_response(response_header(response, extra), &response.outputs, |_| false).0
}

/// Name of the header (HTTP) or user property (MQTT 5) holding the JSON header's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why an encoded request got no outputs.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body could not be decoded against the model's signature.
    #[error("{0}")]
    BadInput(String),
    /// The serving core refused or failed it.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Decodes an encoded request against the version it will run on (waiting while the model is
/// `LOADING`), then runs it. A body that does not decode is counted as `bad_input`. For a
/// model with `[input]` pre-processing, a single BYTES element holding an encoded image is
/// run as an image.
pub async fn run_encoded(
    router: &Router,
    model: &str,
    version: Option<u64>,
    body: &[u8],
    header_length: Option<usize>,
    arrived: Instant,
    deadline: Option<Instant>,
) -> Result<(DecodedRequest, InferResponse), RequestError> {
    let handle = router.get(model)?;
    let loaded = router.pick(&handle, version, deadline).await?;
    let mut decoded = decode_request(body, header_length, &loaded.model.info).map_err(|e| {
        handle.stats.failure(Some(loaded.version), "bad_input");
        RequestError::BadInput(e)
    })?;
    let image_model = loaded.image.is_some();
    drop(loaded);
    let request = decoded.take_request(model, version, arrived, deadline);
    if let Some(image) = image_model.then(|| encoded_image(&request.inputs)).flatten() {
        // One BYTES element holding an encoded image, for a model with `[input]`.
        let answer = router
            .infer_image(ImageRequest {
                model: request.model,
                version: request.version,
                id: request.id,
                image: Image::Encoded(image),
                deadline: request.deadline,
            })
            .await?;
        return Ok((decoded, answer.response));
    }
    let response = router.infer(request).await?;
    Ok((decoded, response))
}

/// The image of a request whose only input is one BYTES element holding an encoded image.
fn encoded_image(inputs: &Tensors) -> Option<Bytes> {
    let [(_, tensor)] = inputs.as_slice() else {
        return None;
    };
    match tensor.strings()? {
        [image] if is_image(image) => Some(Bytes::copy_from_slice(image)),
        _ => None,
    }
}

/// Decodes a request body; `header_length` is `Inference-Header-Content-Length`.
pub fn decode_request(
    body: &[u8],
    header_length: Option<usize>,
    info: &ModelInfo,
) -> Result<DecodedRequest, String> {
    match header_length {
        Some(0) => decode_raw(body, info),
        Some(length) if length > body.len() => Err(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )),
        Some(length) => decode_framed(&body[..length], &body[length..]),
        None => decode_framed(body, &[]),
    }
}

fn decode_framed(json: &[u8], mut binary: &[u8]) -> Result<DecodedRequest, String> {
    let body: InferRequestBody =
        serde_json::from_slice(json).map_err(|e| format!("malformed inference request JSON: {e}"))?;
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for input in &body.inputs {
        let binary_size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
        let tensor = match (binary_size, &input.data) {
            (Some(size), _) => {
                let size = size
                    .as_u64()
                    .and_then(|size| usize::try_from(size).ok())
                    .ok_or_else(|| {
                        format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            input.name
                        )
                    })?;
                if size > binary.len() {
                    return Err(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    ));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                let dtype = DType::from_kserve_name(&input.datatype)
                    .map_err(|e| format!("input '{}': {e}", input.name))?;
                let shape =
                    shape_from_i64(&input.shape).map_err(|e| format!("input '{}': {e}", input.name))?;
                Tensor::from_wire(dtype, shape, bytes)
            }
            (None, Some(_)) => input.to_tensor(),
            (None, None) => {
                return Err(format!(
                    "input '{}' has neither 'data' nor binary_data_size",
                    input.name
                ))
            }
        }
        .map_err(|e| format!("input '{}': {e}", input.name))?;
        inputs.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data follow the inputs and belong to none",
            binary.len()
        ));
    }
    let binary_default = flag(body.parameters.as_ref(), "binary_data_output");
    Ok(DecodedRequest {
        body,
        inputs,
        binary_default,
    })
}

/// The raw form: one input, batch 1, at most one dynamic dimension (found from the size).
fn decode_raw(body: &[u8], info: &ModelInfo) -> Result<DecodedRequest, String> {
    let [spec] = &info.inputs[..] else {
        return Err(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly one input"
                .into(),
        );
    };
    let dtype = spec
        .dtype()
        .ok_or_else(|| format!("input '{}' is {}", spec.name, spec.kind))?;
    let tensor = if dtype == DType::Bytes {
        Tensor::from_wire(dtype, vec![1], body)
    } else {
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
                return Err(format!(
                    "raw body of {} bytes is not a whole number of {} {}",
                    body.len(),
                    spec.describe(),
                    dtype
                ))
            }
            _ => {
                return Err(format!(
                    "a raw binary request needs at most one dynamic dimension; '{}' is {}",
                    spec.name,
                    spec.describe()
                ))
            }
        };
        let shape: Vec<usize> = spec
            .dims
            .iter()
            .map(|d| if let Dim::Fixed(n) = d { *n as usize } else { free })
            .collect();
        Tensor::from_raw(dtype, shape, body.to_vec())
    }
    .map_err(|e| format!("input '{}': {e}", spec.name))?;
    let body = InferRequestBody {
        inputs: Vec::new(),
        ..Default::default()
    };
    Ok(DecodedRequest {
        body,
        inputs: vec![(spec.name.clone(), tensor)],
        binary_default: true,
    })
}

fn flag(parameters: Option<&Map<String, Value>>, key: &str) -> bool {
    parameters
        .and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Whether the output `name` goes back binary.
fn wants_binary(request: &DecodedRequest, name: &str) -> bool {
    let explicit = request.body.outputs.iter().flatten().find(|o| o.name == name);
    match explicit
        .and_then(|o| o.parameters.as_ref())
        .and_then(|p| p.get("binary_data"))
        .and_then(Value::as_bool)
    {
        Some(binary) => binary,
        None => request.binary_default,
    }
}

/// Encodes the response: JSON alone, or JSON followed by binary outputs. Returns the body and,
/// when binary outputs follow, the JSON header's length.
fn encode_response(
    mut header: Map<String, Value>,
    outputs: &Tensors,
    binary: impl Fn(&str) -> bool,
) -> (Vec<u8>, Option<usize>) {
    let mut tail = Vec::new();
    let json_outputs: Vec<OutputTensor> = outputs
        .iter()
        .map(|(name, tensor)| {
            if binary(name) {
                let bytes = tensor.to_wire();
                let mut parameters = Map::new();
                parameters.insert("binary_data_size".into(), bytes.len().into());
                tail.extend_from_slice(&bytes);
                OutputTensor {
                    name: name.clone(),
                    shape: tensor.shape().to_vec(),
                    datatype: tensor.dtype().kserve_name().into(),
                    parameters: Some(parameters),
                    data: None,
                }
            } else {
                OutputTensor::from_tensor(name, tensor)
            }
        })
        .collect();
    header.insert(
        "outputs".into(),
        serde_json::to_value(json_outputs).expect("outputs serialise"),
    );
    let mut body = serde_json::to_vec(&header).expect("response serialises");
    if tail.is_empty() {
        return (body, None);
    }
    let length = body.len();
    body.extend_from_slice(&tail);
    (body, Some(length))
}
