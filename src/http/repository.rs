//! The repository extension: `POST /v2/repository/index` (an empty body is fine, as
//! tritonclient sends), `…/models/{m}/load` — a validated reload through the repository
//! thread, answered with its outcome — and `…/models/{m}/unload`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, HttpState};
use crate::repository::watch::RepoEvent;

pub(super) async fn index(State(state): State<Arc<HttpState>>) -> Json<Value> {
    let models: Vec<Value> = state
        .router
        .models()
        .iter()
        .map(|h| {
            let s = h.state();
            json!({
                "name": h.name,
                "version": s.version.map(|v| v.to_string()).unwrap_or_default(),
                "state": s.state,
                "reason": s.error.clone().unwrap_or_default(),
            })
        })
        .collect();
    Json(Value::Array(models))
}

/// Sends an event carrying a reply channel to the repository thread and waits for the reply
/// off the async workers.
async fn ask<T: Send + 'static>(
    state: &HttpState,
    event: impl FnOnce(crossbeam_channel::Sender<T>) -> RepoEvent,
) -> Result<T, ApiError> {
    let repository = state.repository.clone().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this server has no repository thread".into(),
    })?;
    let (reply, answer) = crossbeam_channel::bounded(1);
    repository.send(event(reply)).map_err(|_| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the repository thread has stopped".into(),
    })?;
    tokio::task::spawn_blocking(move || answer.recv())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the repository thread has stopped".into(),
        })
}

pub(super) async fn load(
    State(state): State<Arc<HttpState>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    let report = ask(&state, |reply| RepoEvent::SyncNow(model.clone(), reply)).await?;
    if report.serving.is_empty() {
        let why = if report.errors.is_empty() {
            "no such model directory".to_string()
        } else {
            report.errors.join("; ")
        };
        return Err(ApiError::bad_request(format!("failed to load '{model}': {why}")));
    }
    if !report.errors.is_empty() {
        return Err(ApiError::bad_request(format!(
            "'{model}' keeps serving version(s) {:?}; the new files were refused: {}",
            report.serving,
            report.errors.join("; ")
        )));
    }
    Ok(StatusCode::OK)
}

pub(super) async fn unload(
    State(state): State<Arc<HttpState>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.router.get(&model)?;
    ask(&state, |reply| RepoEvent::Unload(model.clone(), reply)).await?;
    Ok(StatusCode::OK)
}
