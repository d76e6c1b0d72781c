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
use crate::serving::{views, LoadedVersion, ModelHandle, PayloadRequest, ServeError};

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

pub(super) async fn model_metadata(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<views::Metadata>, ApiError> {
    let (handle, loaded) = resolve(&state, &params)?;
    let versions: Vec<String> = match parse_version(&params)? {
        Some(v) => vec![v.to_string()],
        None => handle.versions().keys().map(u64::to_string).collect(),
    };
    Ok(Json(views::metadata(&handle, &loaded, versions)))
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

pub(super) async fn model_config(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<views::Config>, ApiError> {
    let (handle, loaded) = resolve(&state, &params)?;
    Ok(Json(views::config(&handle, &loaded)))
}

pub(super) async fn model_stats(
    State(state): State<Arc<HttpState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let handle = state.router.get(&params["model"])?;
    let stats = views::statistics(&handle, parse_version(&params)?);
    let mut body = json!({ "model_stats": stats });
    if let Some(rollout) = handle.rollout() {
        // Model delivery's last rollout status (onnxd's extension of Triton's answer).
        body["rollout"] = (*rollout).clone();
    }
    Ok(Json(body))
}

pub(super) async fn all_stats(State(state): State<Arc<HttpState>>) -> Json<Value> {
    let stats: Vec<views::VersionStatistics> = state
        .router
        .models()
        .iter()
        .flat_map(|h| views::statistics(h, None))
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
