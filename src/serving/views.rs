//! What the serving core says about a model, independent of the protocol: metadata,
//! configuration and statistics with KServe V2 / Triton's meaning. Their serde form is the
//! KServe V2 / Triton JSON that HTTP serves as it is; gRPC converts them to its messages. One
//! place decides what a model reports, whichever way it is asked.

use serde::Serialize;

use super::{LoadedVersion, ModelHandle};
use crate::model::{EngineKind, TensorSpec};

/// Model metadata (`GET /v2/models/{m}`, gRPC `ModelMetadata`).
#[derive(Clone, Debug, Serialize)]
pub struct Metadata {
    /// Model name.
    pub name: String,
    /// Versions described.
    pub versions: Vec<String>,
    /// `onnxruntime_onnx` or `tract_onnx`.
    pub platform: &'static str,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
    /// The engine and provider in use.
    pub parameters: EngineUsed,
}

/// One input or output: name, KServe datatype, shape with -1 for dynamic dimensions.
#[derive(Clone, Debug, Serialize)]
pub struct TensorMetadata {
    /// Name.
    pub name: String,
    /// KServe datatype.
    pub datatype: String,
    /// Dimensions (-1: dynamic).
    pub shape: Vec<i64>,
}

/// The engine and provider a version really uses, and how its warm-up went.
#[derive(Clone, Debug, Serialize)]
pub struct EngineUsed {
    /// `onnxruntime` or `tract`.
    pub engine: String,
    /// The execution provider.
    pub provider: String,
    /// `ok on …`, or `skipped: …` with the reason.
    pub warmup: String,
}

/// Model configuration as Triton reports it (`.../config`, gRPC `ModelConfig`).
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Model name.
    pub name: String,
    /// `onnxruntime_onnx` or `tract_onnx`.
    pub platform: &'static str,
    /// Engine name.
    pub backend: String,
    /// 0: no batching; else the largest batch (dims below omit the batch dimension).
    pub max_batch_size: u64,
    /// Inputs.
    pub input: Vec<ConfigTensor>,
    /// Outputs.
    pub output: Vec<ConfigTensor>,
    /// The instances serving the model.
    pub instance_group: Vec<InstanceGroup>,
    /// Dynamic batching settings, when the model batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Versions served (`{"latest": {"num_versions": n}}`).
    pub version_policy: serde_json::Value,
}

/// An input or output in Triton's configuration form.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigTensor {
    /// Name.
    pub name: String,
    /// `TYPE_FP32`, `TYPE_STRING`, ...
    pub data_type: String,
    /// Dimensions without the batch dimension when `max_batch_size > 0` (-1: dynamic).
    pub dims: Vec<i64>,
}

/// Triton's `instance_group` entry.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceGroup {
    /// Instances (per GPU for `KIND_GPU`).
    pub count: u64,
    /// `KIND_CPU` or `KIND_GPU`.
    pub kind: &'static str,
    /// GPUs, for `KIND_GPU`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<i32>,
}

/// Triton's `dynamic_batching`.
#[derive(Clone, Debug, Serialize)]
pub struct DynamicBatching {
    /// Preferred batch sizes.
    pub preferred_batch_size: Vec<u64>,
    /// Longest wait for a fuller batch.
    pub max_queue_delay_microseconds: u64,
    /// Responses in request order.
    pub preserve_ordering: bool,
    /// Queue policy: size bound and default timeout.
    pub default_queue_policy: QueuePolicy,
}

/// Triton's `ModelQueuePolicy`.
#[derive(Clone, Debug, Serialize)]
pub struct QueuePolicy {
    /// 0: bounded by the instance queue.
    pub max_queue_size: u64,
    /// 0: none.
    pub default_timeout_microseconds: u64,
}

/// Triton's statistics entry of one version.
#[derive(Clone, Debug, Serialize)]
pub struct VersionStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Milliseconds since the epoch of the last inference (0 = never).
    pub last_inference: u64,
    /// Inferences (a batch of n counts n).
    pub inference_count: u64,
    /// Executions (batches).
    pub execution_count: u64,
    /// Request counts and cumulative times.
    pub inference_stats: InferenceStatistics,
    /// Per batch size: executions and times.
    pub batch_stats: Vec<BatchStatistics>,
}

/// A count and its cumulative time.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Duration {
    /// Count.
    pub count: u64,
    /// Nanoseconds.
    pub ns: u64,
}

/// Triton's `InferStatistics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InferenceStatistics {
    /// Successful requests: arrival to result.
    pub success: Duration,
    /// Failed requests.
    pub fail: Duration,
    /// Time waiting for an instance.
    pub queue: Duration,
    /// Input conversion (counted inside `compute_infer`: zero time).
    pub compute_input: Duration,
    /// Time in the engine.
    pub compute_infer: Duration,
    /// Output conversion (counted inside `compute_infer`: zero time).
    pub compute_output: Duration,
    /// Response cache hits (no cache: zero).
    pub cache_hit: Duration,
    /// Response cache misses (no cache: zero).
    pub cache_miss: Duration,
}

/// Executions of one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct BatchStatistics {
    /// Batch size.
    pub batch_size: u64,
    /// Executions and time in the engine.
    pub compute_infer: Duration,
}

fn platform(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Ort => "onnxruntime_onnx",
        EngineKind::Tract => "tract_onnx",
    }
}

fn tensor_metadata(spec: &TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: spec.name.clone(),
        datatype: spec.dtype().map_or("", |d| d.kserve_name()).to_string(),
        shape: spec.dims.iter().map(|d| d.kserve()).collect(),
    }
}

/// Triton's `TYPE_*` name of a datatype.
fn config_type(spec: &TensorSpec) -> String {
    let name = spec.dtype().map_or("INVALID", |d| match d.kserve_name() {
        "BYTES" => "STRING",
        other => other,
    });
    format!("TYPE_{name}")
}

/// The metadata of `version` of a model; `versions` are the versions the answer names.
pub fn metadata(handle: &ModelHandle, version: &LoadedVersion, versions: Vec<String>) -> Metadata {
    let info = &version.model.info;
    Metadata {
        name: handle.name.clone(),
        versions,
        platform: platform(version.model.engine),
        inputs: info.inputs.iter().map(tensor_metadata).collect(),
        outputs: info.outputs.iter().map(tensor_metadata).collect(),
        parameters: EngineUsed {
            engine: version.model.engine.to_string(),
            provider: version.model.provider.clone(),
            warmup: version.warmup.clone(),
        },
    }
}

/// The configuration of `version` of a model: its real batching and instances.
pub fn config(handle: &ModelHandle, version: &LoadedVersion) -> Config {
    let info = &version.model.info;
    let policy = version.model.policy();
    let max_batch_size = if policy.batches() {
        policy.max_batch_size as u64
    } else {
        0
    };
    let tensors = |specs: &[TensorSpec]| -> Vec<ConfigTensor> {
        // A batching model's dims leave out the batch dimension.
        let skip = usize::from(max_batch_size > 0);
        specs
            .iter()
            .map(|s| ConfigTensor {
                name: s.name.clone(),
                data_type: config_type(s),
                dims: s.dims.iter().skip(skip).map(|d| d.kserve()).collect(),
            })
            .collect()
    };
    let gpus: std::collections::BTreeSet<i32> = version.model.gpus.iter().copied().collect();
    let gpu = !gpus.is_empty()
        || ["CUDA", "Tensorrt"]
            .iter()
            .any(|p| version.model.provider.starts_with(p));
    Config {
        name: handle.name.clone(),
        platform: platform(version.model.engine),
        backend: version.model.engine.to_string(),
        max_batch_size,
        input: tensors(&info.inputs),
        output: tensors(&info.outputs),
        instance_group: vec![InstanceGroup {
            count: (version.model.instances / gpus.len().max(1)) as u64,
            kind: if gpu { "KIND_GPU" } else { "KIND_CPU" },
            gpus: gpus.into_iter().collect(),
        }],
        dynamic_batching: (max_batch_size > 0).then(|| DynamicBatching {
            preferred_batch_size: policy.preferred.iter().map(|&p| p as u64).collect(),
            max_queue_delay_microseconds: policy.max_queue_delay.as_micros() as u64,
            preserve_ordering: policy.preserve_ordering,
            default_queue_policy: QueuePolicy {
                max_queue_size: policy.max_queue_size as u64,
                default_timeout_microseconds: policy.default_timeout.map_or(0, |t| t.as_micros() as u64),
            },
        }),
        version_policy: serde_json::json!({ "latest": { "num_versions": handle.versions().len() } }),
    }
}

/// Statistics of a model: of `version`, or of every ready version.
pub fn statistics(handle: &ModelHandle, version: Option<u64>) -> Vec<VersionStatistics> {
    let versions: Vec<u64> = match version {
        Some(v) => vec![v],
        None => handle.versions().keys().copied().collect(),
    };
    let stats = handle.stats.snapshot();
    versions
        .into_iter()
        .map(|v| {
            let s = stats.version(v);
            let pair = |count: u64, ns: u64| Duration { count, ns };
            VersionStatistics {
                name: handle.name.clone(),
                version: v.to_string(),
                last_inference: s.last_inference_ms,
                inference_count: s.inferences,
                execution_count: s.executions,
                inference_stats: InferenceStatistics {
                    success: pair(s.success, s.request_ns),
                    fail: pair(s.failures.values().sum(), 0),
                    queue: pair(s.success, s.queue_ns),
                    compute_input: pair(s.success, 0),
                    compute_infer: pair(s.success, s.compute_ns),
                    compute_output: pair(s.success, 0),
                    ..InferenceStatistics::default()
                },
                batch_stats: s
                    .batches
                    .iter()
                    .map(|(&size, &(count, ns))| BatchStatistics {
                        batch_size: size as u64,
                        compute_infer: pair(count, ns),
                    })
                    .collect(),
            }
        })
        .collect()
}
