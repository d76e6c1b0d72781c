//! `GET /metrics`: Prometheus text exposition (format 0.0.4, what `promtool check metrics`
//! lints), written by the `prometheus` crate. The figures are read from the serving core at
//! scrape time — per-model, per-version request counters with Triton's meaning (successes,
//! failures by reason, inferences, executions, pending requests, request/queue/compute
//! seconds), model state, an info metric with engine and provider, load duration, reloads by
//! result — MQTT connection, requests, delivery and outbox counters when MQTT is on, camera
//! frame counters, plus the process's resident memory and CPU time.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::HttpState;
use crate::camera::pipeline::CameraStats;
use crate::mqtt::stats::MqttSnapshot;
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
    let per_version = ["model", "version"];
    let success = counter(
        &registry,
        "onnxd_inference_request_success_total",
        "Successful inference requests.",
        &per_version,
    );
    let failure = counter(
        &registry,
        "onnxd_inference_request_failure_total",
        "Failed inference requests, by reason (version is empty when none was chosen).",
        &["model", "version", "reason"],
    );
    let inferences = counter(
        &registry,
        "onnxd_inference_count_total",
        "Inferences performed (a batch of n counts n).",
        &per_version,
    );
    let executions = counter(
        &registry,
        "onnxd_inference_exec_count_total",
        "Model executions (batches).",
        &per_version,
    );
    let pending = gauge(
        &registry,
        "onnxd_inference_pending_requests",
        "Requests queued for an inference thread.",
        &per_version,
    );
    let seconds = CounterVec::new(
        Opts::new(
            "onnxd_inference_duration_seconds_total",
            "Cumulative time of successful requests, by phase: request (arrival to result), \
             queue, compute_infer (includes input and output conversion).",
        ),
        &["model", "version", "phase"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(seconds.clone()))
        .expect("unique metric");
    let load_seconds = GaugeVec::new(
        Opts::new(
            "onnxd_model_load_duration_seconds",
            "How long loading, warming up and validating each serving version took.",
        ),
        &per_version,
    )
    .expect("valid metric");
    registry
        .register(Box::new(load_seconds.clone()))
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
        "Each serving version and the engine and provider it really uses.",
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
        for (version, s) in &stats.versions {
            let version = version.to_string();
            let labels = [name, version.as_str()];
            success.with_label_values(&labels).inc_by(s.success);
            inferences.with_label_values(&labels).inc_by(s.success);
            executions.with_label_values(&labels).inc_by(s.success);
            for (reason, count) in &s.failures {
                failure
                    .with_label_values(&[name, &version, reason])
                    .inc_by(*count);
            }
            for (phase, ns) in [
                ("request", s.request_ns),
                ("queue", s.queue_ns),
                ("compute_infer", s.compute_ns),
            ] {
                seconds
                    .with_label_values(&[name, &version, phase])
                    .inc_by(ns as f64 / 1e9);
            }
        }
        for (reason, count) in &stats.unversioned_failures {
            failure.with_label_values(&[name, "", reason]).inc_by(*count);
        }
        for (result, count) in &stats.reloads {
            reloads.with_label_values(&[name, result]).inc_by(*count);
        }
        for v in handle.versions().values() {
            let version = v.version.to_string();
            let labels = [name, version.as_str()];
            pending.with_label_values(&labels).set(v.model.queued() as i64);
            load_seconds
                .with_label_values(&labels)
                .set(v.load_time.as_secs_f64());
            info.with_label_values(&[name, &version, &v.model.engine.to_string(), &v.model.provider])
                .set(1);
        }
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
    }
    if let Some(mqtt) = &state.mqtt {
        mqtt_metrics(&registry, &mqtt.snapshot());
    }
    let cameras = state.cameras.read().unwrap_or_else(|e| e.into_inner()).clone();
    if !cameras.is_empty() {
        camera_metrics(&registry, &cameras);
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

fn mqtt_metrics(registry: &Registry, m: &MqttSnapshot) {
    let plain_counter = |name: &str, help: &str, value: u64| {
        counter(registry, name, help, &[])
            .with_label_values(&[] as &[&str])
            .inc_by(value);
    };
    let plain_gauge = |name: &str, help: &str, value: u64| {
        gauge(registry, name, help, &[])
            .with_label_values(&[] as &[&str])
            .set(value as i64);
    };
    plain_gauge(
        "onnxd_mqtt_connected",
        "1 while the broker connection is up.",
        u64::from(m.connected),
    );
    plain_counter(
        "onnxd_mqtt_connections_total",
        "Successful broker connections (CONNACK).",
        m.connections,
    );
    plain_counter(
        "onnxd_mqtt_connection_errors_total",
        "Failed connection attempts and dropped connections.",
        m.connection_errors,
    );
    let requests = counter(
        registry,
        "onnxd_mqtt_requests_total",
        "MQTT requests by outcome (ok or the error reason).",
        &["outcome"],
    );
    for (outcome, count) in &m.requests {
        requests.with_label_values(&[outcome]).inc_by(*count);
    }
    plain_counter(
        "onnxd_mqtt_duplicate_requests_total",
        "Requests the broker redelivered (answered again).",
        m.duplicates,
    );
    plain_counter(
        "onnxd_mqtt_retained_ignored_total",
        "Retained messages on request topics, ignored.",
        m.retained_ignored,
    );
    plain_counter(
        "onnxd_mqtt_published_total",
        "Messages acknowledged by the broker.",
        m.published,
    );
    plain_counter(
        "onnxd_mqtt_publish_refused_total",
        "Messages the broker refused in its PUBACK.",
        m.publish_refused,
    );
    plain_counter(
        "onnxd_mqtt_publish_timeouts_total",
        "Messages not acknowledged in time (moved to the outbox).",
        m.publish_timeouts,
    );
    plain_gauge(
        "onnxd_mqtt_outbox_records",
        "Undelivered messages in the outbox.",
        m.outbox_records,
    );
    plain_gauge(
        "onnxd_mqtt_outbox_bytes",
        "Bytes of undelivered messages in the outbox.",
        m.outbox_bytes,
    );
    plain_counter(
        "onnxd_mqtt_outbox_appended_total",
        "Messages written to the outbox.",
        m.outbox.appended,
    );
    let dropped = counter(
        registry,
        "onnxd_mqtt_outbox_dropped_total",
        "Outbox messages dropped, by cause (ttl, full, corrupt) - the only way a result is lost.",
        &["cause"],
    );
    for (cause, count) in [
        ("ttl", m.outbox.dropped_ttl),
        ("full", m.outbox.dropped_full),
        ("corrupt", m.outbox.dropped_corrupt),
    ] {
        dropped.with_label_values(&[cause]).inc_by(count);
    }
    let errors = counter(
        registry,
        "onnxd_mqtt_outbox_errors_total",
        "Outbox operations that failed, by kind (disk_full, io).",
        &["kind"],
    );
    errors
        .with_label_values(&["disk_full"])
        .inc_by(m.outbox_disk_full);
    errors.with_label_values(&["io"]).inc_by(m.outbox_errors);
    plain_counter(
        "onnxd_mqtt_outbox_torn_bytes_total",
        "Bytes of torn outbox tail cut off at start.",
        m.outbox.torn_bytes_cut,
    );
}

fn camera_metrics(registry: &Registry, cameras: &BTreeMap<String, Arc<CameraStats>>) {
    let camera = ["camera"];
    let online = gauge(
        registry,
        "onnxd_camera_online",
        "1 while the camera's source delivers frames.",
        &camera,
    );
    let received = counter(
        registry,
        "onnxd_camera_frames_received_total",
        "Frames received from the source.",
        &camera,
    );
    let processed = counter(
        registry,
        "onnxd_camera_frames_processed_total",
        "Frames run through the model.",
        &camera,
    );
    let skipped = counter(
        registry,
        "onnxd_camera_frames_skipped_total",
        "Frames not processed, by cause (fps, queue_full, corrupt, inference_error).",
        &["camera", "cause"],
    );
    let reconnects = counter(
        registry,
        "onnxd_camera_reconnects_total",
        "Times the source was reopened.",
        &camera,
    );
    let seconds = CounterVec::new(
        Opts::new(
            "onnxd_camera_inference_seconds_total",
            "Time in the model for camera frames (pre-processing, inference, post-processing).",
        ),
        &camera,
    )
    .expect("valid metric");
    registry
        .register(Box::new(seconds.clone()))
        .expect("unique metric");
    for (name, stats) in cameras {
        let s = stats.snapshot();
        let label = [name.as_str()];
        online.with_label_values(&label).set(i64::from(s.online));
        received.with_label_values(&label).inc_by(s.received);
        processed.with_label_values(&label).inc_by(s.processed);
        reconnects.with_label_values(&label).inc_by(s.reconnects);
        seconds
            .with_label_values(&label)
            .inc_by(s.inference_ns as f64 / 1e9);
        for (cause, count) in &s.skipped {
            skipped.with_label_values(&[name.as_str(), cause]).inc_by(*count);
        }
    }
}

pub(super) async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], render(&state))
}
