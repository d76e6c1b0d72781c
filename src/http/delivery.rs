//! Model delivery over HTTP (SPEC §7), behind the bearer token like every repository route:
//!
//! - `PUT /v2/repository/models/{m}/versions/{v}`: the ONNX file as the body, streamed to
//!   the staging area; `Content-Length` required and at most `repository.max_upload_bytes`
//!   (411 / 413 before a byte is read); a body that ends early is 400. 201 when stored.
//! - `PUT …/versions/{v}/files/{name}`: `model.toml`, `labels.txt` or `model.onnx.minisig`
//!   (bounded by `http.max_body_bytes`).
//! - `POST …/versions/{v}/commit?sha256=<hex>[&rollout=immediate|shadow]` (or the `X-Sha256`
//!   header): verify and roll out; 200 with the status once an immediate rollout serves, 202
//!   while a shadow runs (its verdict is the model's rollout status).
//! - `DELETE …/versions/{v}`, `POST /v2/repository/models/{m}/rollback`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::{ApiError, HttpState};
use crate::delivery::rollout::Rollout;
use crate::delivery::{Delivery, DeliveryError};

/// The header that may carry a commit's SHA-256.
pub const SHA256_HEADER: &str = "x-sha256";

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> ApiError {
        let status = match &e {
            DeliveryError::Invalid(_) | DeliveryError::Truncated(_) | DeliveryError::Checksum(_) => {
                StatusCode::BAD_REQUEST
            }
            DeliveryError::LengthRequired(_) => StatusCode::LENGTH_REQUIRED,
            DeliveryError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DeliveryError::Signature(_) | DeliveryError::Model(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DeliveryError::NotFound(_) => StatusCode::NOT_FOUND,
            DeliveryError::Conflict(_) => StatusCode::CONFLICT,
            DeliveryError::Download(_) => StatusCode::BAD_GATEWAY,
            DeliveryError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            DeliveryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

fn delivery(state: &HttpState) -> Result<&Arc<Delivery>, ApiError> {
    state.delivery.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this server does not take model deliveries".into(),
    })
}

fn version(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("version '{text}' is not a number")))
}

pub(super) async fn put_version(
    State(state): State<Arc<HttpState>>,
    Path((model, v)): Path<(String, String)>,
    headers: HeaderMap,
    mut body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery = delivery(&state)?;
    let version = version(&v)?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.parse::<u64>().ok());
    let mut part = delivery.put_version(&model, version, length).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let error = DeliveryError::Truncated(format!(
                "the upload broke off after {} of {} bytes: {e}",
                part.written(),
                part.expected()
            ));
            delivery.upload_failed(&error);
            error
        })?;
        if let Ok(data) = frame.into_data() {
            part.write(&data)
                .await
                .inspect_err(|e| delivery.upload_failed(e))?;
        }
    }
    let bytes = part.finish().await.inspect_err(|e| delivery.upload_failed(e))?;
    tracing::info!(
        model,
        version,
        bytes,
        "model file uploaded; commit to roll it out"
    );
    let reply = json!({ "model": model, "version": version, "bytes": bytes });
    Ok((StatusCode::CREATED, Json(reply)))
}

pub(super) async fn put_file(
    State(state): State<Arc<HttpState>>,
    Path((model, v, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery = delivery(&state)?;
    let version = version(&v)?;
    delivery.put_file(&model, version, &name, &body)?;
    let reply = json!({ "model": model, "version": version, "file": name, "bytes": body.len() });
    Ok((StatusCode::CREATED, Json(reply)))
}

pub(super) async fn commit(
    State(state): State<Arc<HttpState>>,
    Path((model, v)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery = delivery(&state)?;
    let version = version(&v)?;
    let sha256 = query.get("sha256").cloned().or_else(|| {
        headers
            .get(SHA256_HEADER)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let rollout = query
        .get("rollout")
        .map(|r| Rollout::parse(r))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let status = delivery.commit(&model, version, sha256, rollout).await?;
    let code = match status["state"].as_str() {
        Some("shadowing") => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((code, Json(status)))
}

pub(super) async fn delete_version(
    State(state): State<Arc<HttpState>>,
    Path((model, v)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let delivery = delivery(&state)?;
    Ok(Json(delivery.delete_version(&model, version(&v)?).await?))
}

pub(super) async fn rollback(
    State(state): State<Arc<HttpState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let delivery = delivery(&state)?;
    Ok(Json(delivery.rollback(&model).await?))
}
