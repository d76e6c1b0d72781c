//! `GET /metrics`: Prometheus text exposition (format 0.0.4, what `promtool check metrics`
//! lints), written by the `prometheus` crate. The figures are read from the serving core at
//! scrape time — per-model request counters with Triton's meaning (successes, failures by
//! reason, inferences, executions, pending requests, queue and compute seconds), model state,
//! an info metric with engine and provider, reloads by result — plus the process's resident
//! memory and CPU time.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{CounterVec, Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::HttpState;
use crate::serving::State as ModelState;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Renders every metric.
pub fn render(state: &HttpState) -> String {
    let registry = Registry::new();
    let success = counter(
        &registry,
        "onnxd_inference_request_success_total",
        "Successful inference requests.",
        &["model"],
    );
    let failure = counter(
        &registry,
        "onnxd_inference_request_failure_total",
        "Failed inference requests, by reason.",
        &["model", "reason"],
    );
    let inferences = counter(
        &registry,
        "onnxd_inference_count_total",
        "Inferences performed (a batch of n counts n).",
        &["model"],
    );
    let executions = counter(
        &registry,
        "onnxd_inference_exec_count_total",
        "Model executions (batches).",
        &["model"],
    );
    let pending = gauge(
        &registry,
        "onnxd_inference_pending_requests",
        "Requests queued for an inference thread.",
        &["model"],
    );
    let seconds = CounterVec::new(
        Opts::new(
            "onnxd_inference_duration_seconds_total",
            "Cumulative time of successful requests, by phase (queue, compute_infer).",
        ),
        &["model", "phase"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(seconds.clone()))
        .expect("unique metric");
    let model_state = gauge(
        &registry,
        "onnxd_model_state",
        "1 for the model's current state (LOADING, READY, UNAVAILABLE).",
        &["model", "state"],
    );
    let info = gauge(
        &registry,
        "onnxd_model_info",
        "The version serving and the engine and provider it really uses.",
        &["model", "version", "engine", "provider"],
    );
    let reloads = counter(
        &registry,
        "onnxd_model_reloads_total",
        "Reload attempts by result (ok, failed, unloaded).",
        &["model", "result"],
    );
    for handle in state.router.models() {
        let name = handle.name.as_str();
        let stats = handle.stats.snapshot();
        success.with_label_values(&[name]).inc_by(stats.success);
        inferences.with_label_values(&[name]).inc_by(stats.success);
        executions.with_label_values(&[name]).inc_by(stats.success);
        for (reason, count) in &stats.failures {
            failure.with_label_values(&[name, reason]).inc_by(*count);
        }
        for (result, count) in &stats.reloads {
            reloads.with_label_values(&[name, result]).inc_by(*count);
        }
        seconds
            .with_label_values(&[name, "queue"])
            .inc_by(stats.queue_ns as f64 / 1e9);
        seconds
            .with_label_values(&[name, "compute_infer"])
            .inc_by(stats.compute_ns as f64 / 1e9);
        let versions = handle.versions();
        pending
            .with_label_values(&[name])
            .set(versions.values().map(|v| v.model.queued() as i64).sum());
        let current = handle.state();
        for s in [ModelState::Loading, ModelState::Ready, ModelState::Unavailable] {
            let label = serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            model_state
                .with_label_values(&[name, &label])
                .set(i64::from(current.state == s));
        }
        if let Some(v) = versions.values().next_back() {
            let version = v.version.to_string();
            info.with_label_values(&[name, &version, &v.model.engine.to_string(), &v.model.provider])
                .set(1);
        }
    }
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique collector");
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("UTF-8 exposition")
}

pub(super) async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], render(&state))
}
