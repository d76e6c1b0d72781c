//! gRPC's protobuf forms ↔ the serving core's values. Requests: a `ModelInferRequest`'s
//! inputs — typed `contents` or `raw_input_contents` (little-endian, row-major; `BYTES` as
//! 4-byte little-endian lengths each followed by the element, as Triton does), never mixed;
//! FP16 and BF16 raw only — become an [`InferRequest`] of [`Tensor`]s. Responses: outputs
//! always go back as `raw_output_contents`, as Triton answers whichever form the request used.
//! Model metadata, configuration and statistics are the serving core's [`views`], only
//! re-shaped into their messages here.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::{self, InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::serving::{views, InferRequest, InferResponse};
use crate::tensor::{self, DType, Element, Tensor, TensorError};

/// A request that cannot be turned into tensors; the message says what was wrong and what
/// was expected (answered `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

/// The model version a request names: `""` is the highest ready one.
pub fn version(text: &str) -> Result<Option<u64>, ConvertError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ConvertError(format!("model version '{text}' is not a number")))
}

/// The serving request of a `ModelInferRequest` (its `id` stays with the caller, which
/// echoes it). `deadline` is the transport's (gRPC's `grpc-timeout`); the KServe `timeout`
/// parameter (microseconds) may shorten it.
pub fn request(message: ModelInferRequest, deadline: Option<Instant>) -> Result<InferRequest, ConvertError> {
    let ModelInferRequest {
        model_name,
        model_version,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = message;
    let timeout = timeout(&parameters)?.map(|t| Instant::now() + t);
    let inputs = tensors(inputs, raw_input_contents)?;
    Ok(InferRequest {
        model: model_name,
        version: version(&model_version)?,
        id: None,
        inputs,
        outputs: (!outputs.is_empty()).then(|| outputs.into_iter().map(|o| o.name).collect()),
        deadline: timeout.into_iter().chain(deadline).min(),
    })
}

/// The KServe `timeout` request parameter (microseconds), if given.
fn timeout(parameters: &HashMap<String, InferParameter>) -> Result<Option<Duration>, ConvertError> {
    let Some(parameter) = parameters.get("timeout") else {
        return Ok(None);
    };
    match parameter.parameter_choice {
        Some(ParameterChoice::Int64Param(us)) if us >= 0 => Ok(Some(Duration::from_micros(us as u64))),
        Some(ParameterChoice::Uint64Param(us)) => Ok(Some(Duration::from_micros(us))),
        _ => Err(ConvertError(
            "parameter 'timeout' must be a non-negative integer (microseconds)".into(),
        )),
    }
}

/// The named input tensors: all raw (one buffer per input, in order) or all typed.
fn tensors(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> Result<tensor::Tensors, ConvertError> {
    if !raw.is_empty() {
        if raw.len() != inputs.len() {
            return Err(ConvertError(format!(
                "raw_input_contents has {} buffers for {} inputs: expected one per input, in order",
                raw.len(),
                inputs.len()
            )));
        }
        if let Some(typed) = inputs.iter().find(|i| i.contents.is_some()) {
            return Err(ConvertError(format!(
                "input '{}' has typed contents but the request also has raw_input_contents: use one form for every input",
                typed.name
            )));
        }
        return inputs
            .into_iter()
            .zip(raw)
            .map(|(input, bytes)| input_tensor(input, Contents::Raw(bytes)))
            .collect();
    }
    inputs
        .into_iter()
        .map(|mut input| {
            let contents = input.contents.take().unwrap_or_default();
            input_tensor(input, Contents::Typed(contents))
        })
        .collect()
}

/// How one input's values arrived.
enum Contents {
    Raw(Bytes),
    Typed(InferTensorContents),
}

fn input_tensor(input: InferInputTensor, contents: Contents) -> Result<(String, Tensor), ConvertError> {
    let InferInputTensor {
        name,
        datatype,
        shape,
        ..
    } = input;
    let fail = |e: &dyn Display| ConvertError(format!("input '{name}': {e}"));
    let dtype = DType::from_kserve_name(&datatype).map_err(|e| fail(&e))?;
    let shape = tensor::shape_from_i64(&shape).map_err(|e| fail(&e))?;
    let tensor = match contents {
        Contents::Raw(bytes) if dtype == DType::Bytes => Tensor::from_wire(dtype, shape, &bytes),
        // A fixed-size buffer is a slice of the received message, not a copy.
        Contents::Raw(bytes) => Tensor::from_bytes(dtype, shape, bytes),
        Contents::Typed(contents) => typed(dtype, shape, contents).map_err(|e| fail(&e))?,
    }
    .map_err(|e| fail(&e))?;
    Ok((name, tensor))
}

/// The typed-contents field that holds a datatype's values; `None` for FP16 and BF16.
fn typed_field(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::Bool => "bool_contents",
        DType::U8 | DType::U16 | DType::U32 => "uint_contents",
        DType::U64 => "uint64_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::F32 => "fp32_contents",
        DType::F64 => "fp64_contents",
        DType::Bytes => "bytes_contents",
        DType::F16 | DType::BF16 => return None,
    })
}

/// How many values each typed field holds.
fn field_lengths(c: &InferTensorContents) -> [(&'static str, usize); 8] {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
}

/// A tensor from typed contents: the field of its datatype, values narrowed (and checked) to
/// the datatype's width.
fn typed(
    dtype: DType,
    shape: Vec<usize>,
    c: InferTensorContents,
) -> Result<Result<Tensor, TensorError>, String> {
    let Some(field) = typed_field(dtype) else {
        return Err(format!(
            "{dtype} has no typed contents field: send its values as raw_input_contents (little-endian)"
        ));
    };
    let lengths = field_lengths(&c);
    if let Some((other, _)) = lengths.iter().find(|(name, len)| *name != field && *len > 0) {
        return Err(format!(
            "{dtype} values go in contents.{field}, not contents.{other}"
        ));
    }
    let given = lengths
        .iter()
        .find(|(name, _)| *name == field)
        .map_or(0, |(_, len)| *len);
    let needed = tensor::element_count(&shape).map_err(|e| e.to_string())?;
    if given != needed {
        return Err(format!(
            "contents.{field} has {given} values but shape {shape:?} needs {needed}"
        ));
    }
    Ok(match dtype {
        DType::Bool => Tensor::from_raw(dtype, shape, c.bool_contents.into_iter().map(u8::from).collect()),
        DType::U8 => narrow::<u8, _>(shape, &c.uint_contents),
        DType::U16 => narrow::<u16, _>(shape, &c.uint_contents),
        DType::U32 => narrow::<u32, _>(shape, &c.uint_contents),
        DType::U64 => narrow::<u64, _>(shape, &c.uint64_contents),
        DType::I8 => narrow::<i8, _>(shape, &c.int_contents),
        DType::I16 => narrow::<i16, _>(shape, &c.int_contents),
        DType::I32 => narrow::<i32, _>(shape, &c.int_contents),
        DType::I64 => narrow::<i64, _>(shape, &c.int64_contents),
        DType::F32 => narrow::<f32, _>(shape, &c.fp32_contents),
        DType::F64 => narrow::<f64, _>(shape, &c.fp64_contents),
        DType::Bytes => Tensor::from_strings(shape, c.bytes_contents),
        DType::F16 | DType::BF16 => unreachable!("no typed field"),
    })
}

/// Values of a wider protobuf type as elements of `T`, refusing one that does not fit.
fn narrow<T, S>(shape: Vec<usize>, values: &[S]) -> Result<Tensor, TensorError>
where
    T: Element + TryFrom<S>,
    S: Copy + Display,
{
    let elements = values
        .iter()
        .enumerate()
        .map(|(index, &v)| {
            T::try_from(v).map_err(|_| TensorError::BadElement {
                index,
                problem: format!("{v} does not fit {}", T::DTYPE),
            })
        })
        .collect::<Result<Vec<T>, _>>()?;
    Tensor::from_values(shape, &elements)
}

/// A response message: the outputs as raw contents, the request's id echoed, the engine,
/// provider and inference time as parameters (and the `[output]` result as JSON, when the
/// model has one), as the HTTP response's `parameters` say.
pub fn response(response: InferResponse, id: String) -> ModelInferResponse {
    let mut parameters = HashMap::from([
        ("engine".to_string(), string_parameter(response.reply().engine)),
        ("provider".to_string(), string_parameter(&response.provider)),
        (
            "inference_us".to_string(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(
                    response.compute_time.as_micros() as i64
                )),
            },
        ),
    ]);
    if let Some(result) = &response.result {
        let json = serde_json::to_string(result).unwrap_or_default();
        parameters.insert("result".into(), string_parameter(&json));
    }
    let (outputs, raw_output_contents) = response.outputs.into_iter().map(output).unzip();
    ModelInferResponse {
        model_name: response.model,
        model_version: response.version.to_string(),
        id,
        parameters,
        outputs,
        raw_output_contents,
    }
}

fn string_parameter(value: &str) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(value.to_string())),
    }
}

/// One output: its description and its raw contents (moved, not copied, for fixed-size types).
fn output((name, tensor): (String, Tensor)) -> (InferOutputTensor, Bytes) {
    let wire = match tensor.dtype() {
        DType::Bytes => tensor.to_wire(),
        _ => Vec::new(),
    };
    let (dtype, shape, data) = tensor.into_parts();
    let raw = match data {
        tensor::TensorData::Fixed(bytes) => bytes,
        tensor::TensorData::Bytes(_) => Bytes::from(wire),
    };
    let description = InferOutputTensor {
        name,
        datatype: dtype.kserve_name().to_string(),
        shape: shape.iter().map(|&d| d as i64).collect(),
        parameters: HashMap::new(),
        contents: None,
    };
    (description, raw)
}

/// `ModelMetadataResponse` of the serving core's metadata.
pub fn metadata(m: views::Metadata) -> proto::ModelMetadataResponse {
    let tensors = |list: Vec<views::TensorMetadata>| {
        list.into_iter()
            .map(|t| TensorMetadata {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect()
    };
    proto::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform.to_string(),
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

/// `ModelConfig` of the serving core's configuration.
pub fn config(c: views::Config) -> proto::ModelConfig {
    let data_type =
        |name: &str| proto::DataType::from_str_name(name).unwrap_or(proto::DataType::TypeInvalid) as i32;
    proto::ModelConfig {
        name: c.name,
        platform: c.platform.to_string(),
        backend: c.backend,
        version_policy: Some(version_policy(&c.version_policy)),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: c
            .input
            .into_iter()
            .map(|t| proto::ModelInput {
                data_type: data_type(&t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        output: c
            .output
            .into_iter()
            .map(|t| proto::ModelOutput {
                data_type: data_type(&t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        instance_group: c.instance_group.into_iter().map(instance_group).collect(),
        dynamic_batching: c.dynamic_batching.map(dynamic_batching),
        model_transaction_policy: Some(proto::ModelTransactionPolicy { decoupled: false }),
        ..Default::default()
    }
}

fn instance_group(g: views::InstanceGroup) -> proto::ModelInstanceGroup {
    let kind = proto::model_instance_group::Kind::from_str_name(g.kind)
        .unwrap_or(proto::model_instance_group::Kind::Auto);
    proto::ModelInstanceGroup {
        name: String::new(),
        count: i32::try_from(g.count).unwrap_or(i32::MAX),
        gpus: g.gpus,
        kind: kind as i32,
    }
}

fn dynamic_batching(d: views::DynamicBatching) -> proto::ModelDynamicBatching {
    proto::ModelDynamicBatching {
        preferred_batch_size: d
            .preferred_batch_size
            .into_iter()
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            .collect(),
        max_queue_delay_microseconds: d.max_queue_delay_microseconds,
        preserve_ordering: d.preserve_ordering,
        default_queue_policy: Some(proto::ModelQueuePolicy {
            max_queue_size: u32::try_from(d.default_queue_policy.max_queue_size).unwrap_or(u32::MAX),
            default_timeout_microseconds: d.default_queue_policy.default_timeout_microseconds,
            ..Default::default()
        }),
    }
}

/// The version policy of the configuration's JSON form (`{"latest": {"num_versions": n}}`,
/// `{"all": {}}` or `{"specific": {"versions": [..]}}`).
fn version_policy(policy: &serde_json::Value) -> proto::ModelVersionPolicy {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let choice = if let Some(latest) = policy.get("latest") {
        PolicyChoice::Latest(Latest {
            num_versions: latest["num_versions"].as_u64().unwrap_or(1) as u32,
        })
    } else if let Some(specific) = policy.get("specific") {
        let versions = specific["versions"].as_array().into_iter().flatten();
        PolicyChoice::Specific(Specific {
            versions: versions.filter_map(serde_json::Value::as_i64).collect(),
        })
    } else {
        PolicyChoice::All(All {})
    };
    proto::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

/// `ModelStatistics` of one version's statistics.
pub fn statistics(s: views::VersionStatistics) -> proto::ModelStatistics {
    let d = |d: views::Duration| {
        Some(proto::StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    let i = s.inference_stats;
    proto::ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(proto::InferStatistics {
            success: d(i.success),
            fail: d(i.fail),
            queue: d(i.queue),
            compute_input: d(i.compute_input),
            compute_infer: d(i.compute_infer),
            compute_output: d(i.compute_output),
            cache_hit: d(i.cache_hit),
            cache_miss: d(i.cache_miss),
        }),
        batch_stats: s
            .batch_stats
            .into_iter()
            .map(|b| proto::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_infer: d(b.compute_infer),
                ..Default::default()
            })
            .collect(),
        memory_usage: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
