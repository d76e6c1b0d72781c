//! The one response encoder: a KServe V2 response JSON — model name and version, the echoed id,
//! `parameters` with the engine, provider and inference time (also at the top level, where
//! MQTT clients and cameras read them, SPEC §6), the post-processed `result` when the model has
//! `[output]`, the transport's extra fields — and the outputs, each as JSON `data` or, when the
//! request asked for binary, as raw bytes after the JSON (Triton's binary tensor extension).

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::pipeline::postprocess::Detection;
use crate::tensor::kserve::JsonData;
use crate::tensor::Tensors;

/// What a response says, independent of the transport.
#[derive(Debug)]
pub struct Reply<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version that answered.
    pub version: u64,
    /// The request's id, echoed.
    pub id: Option<&'a Value>,
    /// Engine name (`onnxruntime`, `tract`).
    pub engine: &'a str,
    /// Provider (`CPUExecutionProvider`, `tract-cpu`).
    pub provider: &'a str,
    /// Time in the engine, microseconds.
    pub inference_us: u64,
    /// The `[output]` post-processing, when the model has it.
    pub result: Option<&'a [Detection]>,
    /// Output tensors, in the order asked for.
    pub outputs: &'a Tensors,
}

/// Which outputs go back as binary.
#[derive(Clone, Debug, Default)]
pub struct Encoding {
    binary_default: bool,
    per_output: Vec<(String, bool)>,
}

impl Encoding {
    /// Binary for `per_output` entries that say so, else `binary_default`.
    pub fn new(binary_default: bool, per_output: Vec<(String, bool)>) -> Encoding {
        Encoding {
            binary_default,
            per_output,
        }
    }

    /// Every output as JSON.
    pub fn json() -> Encoding {
        Encoding::default()
    }

    /// Whether output `name` goes back binary.
    pub fn binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.binary_default, |(_, binary)| *binary)
    }
}

/// The JSON header of a response, serialised straight from the reply (no `Value` tree):
/// field order as Triton writes it, then the transport's extra fields.
#[derive(Serialize)]
struct Header<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    parameters: Parameters<'a>,
    outputs: Vec<Output<'a>>,
    engine: &'a str,
    inference_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a [Detection]>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct Parameters<'a> {
    engine: &'a str,
    provider: &'a str,
    inference_us: u64,
}

/// One output: its elements as JSON `data`, or the size of its bytes after the JSON.
#[derive(Serialize)]
struct Output<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// Encodes a response; `extra` fields join the JSON header. Returns the body and, when binary
/// outputs follow the JSON, the JSON's length (`Inference-Header-Content-Length`).
pub fn encode(reply: &Reply<'_>, encoding: &Encoding, extra: Map<String, Value>) -> (Vec<u8>, Option<usize>) {
    let mut binary = Vec::new();
    let outputs = reply
        .outputs
        .iter()
        .map(|(name, tensor)| {
            let as_binary = encoding.binary(name);
            if as_binary {
                binary.push(tensor);
            }
            Output {
                name,
                shape: tensor.shape(),
                datatype: tensor.dtype().kserve_name(),
                parameters: as_binary.then(|| BinarySize {
                    binary_data_size: tensor.wire_len(),
                }),
                data: (!as_binary).then_some(JsonData(tensor)),
            }
        })
        .collect();
    let header = Header {
        model_name: reply.model,
        model_version: reply.version.to_string(),
        id: reply.id,
        parameters: Parameters {
            engine: reply.engine,
            provider: reply.provider,
            inference_us: reply.inference_us,
        },
        outputs,
        engine: reply.engine,
        inference_us: reply.inference_us,
        result: reply.result,
        extra: &extra,
    };
    let mut body = Vec::with_capacity(256 + binary.iter().map(|t| t.wire_len()).sum::<usize>());
    serde_json::to_writer(&mut body, &header).expect("response serialises");
    if binary.is_empty() {
        return (body, None);
    }
    let length = body.len();
    for tensor in binary {
        tensor.write_wire(&mut body);
    }
    (body, Some(length))
}

/// An error reply `{"error": message}`, with the request's id when it had one.
pub fn error(message: &str, id: Option<&Value>) -> Vec<u8> {
    let mut body = json!({ "error": message });
    if let Some(id) = id {
        body["id"] = id.clone();
    }
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn binary_outputs_follow_the_json_header() {
        let outputs = vec![
            ("a".to_string(), Tensor::from_values(vec![2], &[1u8, 2]).unwrap()),
            ("b".to_string(), Tensor::from_values(vec![1], &[3u8]).unwrap()),
        ];
        let id = Value::from("r1");
        let reply = Reply {
            model: "m",
            version: 2,
            id: Some(&id),
            engine: "tract",
            provider: "tract-cpu",
            inference_us: 5,
            result: None,
            outputs: &outputs,
        };
        let (body, length) = encode(
            &reply,
            &Encoding::new(false, vec![("a".into(), true)]),
            Map::new(),
        );
        let length = length.expect("a is binary");
        let header: Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(&body[length..], &[1, 2]);
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 2);
        assert_eq!(header["outputs"][1]["data"], json!([3]));
        assert_eq!((&header["id"], &header["model_version"]), (&id, &json!("2")));
        assert_eq!(header["parameters"]["engine"], "tract");
        let (json_only, none) = encode(&reply, &Encoding::json(), Map::new());
        assert!(none.is_none() && serde_json::from_slice::<Value>(&json_only).is_ok());
    }
}
