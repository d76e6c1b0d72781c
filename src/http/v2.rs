//! KServe V2 routes: health, server and model metadata, readiness, model config (what
//! perf_analyzer reads), statistics, and inference — JSON, binary and raw bodies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{ApiError, HttpState};
use crate::codec::{self, Payload, HEADER_LENGTH};
use crate::model::{EngineKind, TensorSpec};
use crate::serving::stats::VersionSnapshot;
use crate::serving::{LoadedVersion, ModelHandle, PayloadRequest, ServeError};

/// Extensions onnxd implements (advertised by `GET /v2`).
pub const EXTENSIONS: [&str; 5] = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
];

pub(super) async fn server_ready(State(state): State<Arc<HttpState>>) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

pub(super) async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "onnxd", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS }))
}

/// The model and version named by the path (`version` absent = the highest ready).
/// A model that has no ready version is "not ready" for metadata, config and readiness
/// alike: 400, as Triton answers readiness (inference on it is 503, unavailable).
fn resolve(
    state: &HttpState,
    params: &HashMap<String, String>,
) -> Result<(Arc<ModelHandle>, Arc<LoadedVersion>), ApiError> {
    let handle = state.router.get(&params["model"])?;
    let version = parse_version(params)?;
    let loaded = handle.pick(version).map_err(|e| match e {
        ServeError::Unavailable { .. } => ApiError::bad_request(e.to_string()),
        other => other.into(),
    })?;
    Ok((handle, loaded))
}

fn parse_version(params: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    params
        .get("version")
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("version '{v}' is not a number")))
        })
        .transpose()
}

fn platform(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Ort => "onnxruntime_onnx",
        EngineKind::Tract => "tract_onnx",
    }
}

fn spec_json(spec: &TensorSpec) -> Value {
    json!({
        "name": spec.name,
        "datatype": spec.dtype().map_or("", |d| d.kserve_name()),
        "shape": spec.dims.iter().map(|d| d.kserve()).collect::<Vec<_>>(),
    })
}

pub(super) async fn model_metadata(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (handle, loaded) = resolve(&state, &params)?;
    let versions: Vec<String> = match parse_version(&params)? {
        Some(v) => vec![v.to_string()],
        None => handle.versions().keys().map(u64::to_string).collect(),
    };
    let info = &loaded.model.info;
    Ok(Json(json!({
        "name": handle.name,
        "versions": versions,
        "platform": platform(loaded.model.engine),
        "inputs": info.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": info.outputs.iter().map(spec_json).collect::<Vec<_>>(),
        "parameters": { "engine": loaded.model.engine.to_string(), "provider": loaded.model.provider },
    })))
}

pub(super) async fn model_ready(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    match resolve(&state, &params) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => ApiError::bad_request(format!("model version not ready: {}", e.message)).into_response(),
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

pub(super) async fn model_config(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (handle, loaded) = resolve(&state, &params)?;
    let info = &loaded.model.info;
    // Batchable models report a batch size limit and dims without the batch dimension.
    let max_batch = if info.batchable() { 64 } else { 0 };
    let dims = |spec: &TensorSpec| -> Vec<i64> {
        let skip = usize::from(max_batch > 0);
        spec.dims.iter().skip(skip).map(|d| d.kserve()).collect()
    };
    let io = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "data_type": config_type(s), "dims": dims(s) }))
            .collect()
    };
    Ok(Json(json!({
        "name": handle.name,
        "platform": platform(loaded.model.engine),
        "backend": loaded.model.engine.to_string(),
        "max_batch_size": max_batch,
        "input": io(&info.inputs),
        "output": io(&info.outputs),
        "instance_group": [{ "count": 1, "kind": if loaded.model.provider.starts_with("CUDA") || loaded.model.provider.starts_with("Tensorrt") { "KIND_GPU" } else { "KIND_CPU" } }],
        "version_policy": { "latest": { "num_versions": handle.versions().len() } },
    })))
}

/// Statistics entries of a model: one per version asked for, or per ready version.
fn stats_json(handle: &ModelHandle, version: Option<u64>) -> Vec<Value> {
    let versions: Vec<u64> = match version {
        Some(v) => vec![v],
        None => handle.versions().keys().copied().collect(),
    };
    let stats = handle.stats.snapshot();
    versions
        .into_iter()
        .map(|v| version_stats_json(&handle.name, v, &stats.version(v)))
        .collect()
}

/// Triton's statistics entry of one version. Compute time includes converting the inputs
/// and outputs (the engines do not time those apart), so `compute_input`/`compute_output`
/// count requests with zero time.
fn version_stats_json(model: &str, version: u64, s: &VersionSnapshot) -> Value {
    let fail: u64 = s.failures.values().sum();
    let pair = |count: u64, ns: u64| json!({ "count": count, "ns": ns });
    json!({
        "name": model,
        "version": version.to_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.success,
        "execution_count": s.success,
        "inference_stats": {
            "success": pair(s.success, s.request_ns),
            "fail": pair(fail, 0),
            "queue": pair(s.success, s.queue_ns),
            "compute_input": pair(s.success, 0),
            "compute_infer": pair(s.success, s.compute_ns),
            "compute_output": pair(s.success, 0),
            "cache_hit": pair(0, 0),
            "cache_miss": pair(0, 0),
        },
        "batch_stats": [],
    })
}

pub(super) async fn model_stats(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let handle = state.router.get(&params["model"])?;
    Ok(Json(
        json!({ "model_stats": stats_json(&handle, parse_version(&params)?) }),
    ))
}

pub(super) async fn all_stats(State(state): State<Arc<HttpState>>) -> Json<Value> {
    let stats: Vec<Value> = state
        .router
        .models()
        .iter()
        .flat_map(|h| stats_json(h, None))
        .collect();
    Json(json!({ "model_stats": stats }))
}

pub(super) async fn infer(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|r| ApiError {
        status: r.status(),
        message: format!("cannot read the request body: {}", r.body_text()),
    })?;
    let header_length = headers
        .get(HEADER_LENGTH)
        .map(|v| codec::header_length(v.to_str().unwrap_or_default()))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let payload = Payload::parse(body, header_length);
    let encoding = payload.as_ref().map(Payload::encoding).unwrap_or_default();
    let response = state
        .router
        .infer_payload(PayloadRequest {
            model: params["model"].clone(),
            version: parse_version(&params)?,
            payload,
            arrived,
            deadline: None,
        })
        .await?;
    let (bytes, json_length) = codec::encode(&response.reply(), &encoding, Map::new());
    Ok(match json_length {
        Some(length) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::HeaderName::from_static(HEADER_LENGTH), length.to_string()),
            ],
            bytes,
        )
            .into_response(),
        None => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
    })
}
