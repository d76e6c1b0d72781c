//! The serving core's metrics (Triton's meaning): per model and version, successes, failures
//! by reason, inferences and executions, pending requests, request/queue/compute seconds,
//! load duration, the engine and provider in use, the model's state and its reloads by result.
//! Read from the router at scrape time.

use std::sync::Arc;

use prometheus::{CounterVec, GaugeVec, IntCounterVec, IntGaugeVec, Registry};

use super::stats::StatsSnapshot;
use super::{ModelHandle, Router, State as ModelState};
use crate::telemetry::{self, HistogramSample, MetricsSource};

/// The serving core's metrics, read from the router at scrape time.
pub struct ModelMetrics(pub Arc<Router>);

impl MetricsSource for ModelMetrics {
    fn render(&self, registry: &Registry) {
        render(&self.0, registry);
    }
}

/// Every family of a scrape.
struct Families {
    success: IntCounterVec,
    failure: IntCounterVec,
    inferences: IntCounterVec,
    executions: IntCounterVec,
    pending: IntGaugeVec,
    seconds: CounterVec,
    load_seconds: GaugeVec,
    model_state: IntGaugeVec,
    info: IntGaugeVec,
    reloads: IntCounterVec,
}

const PER_VERSION: [&str; 2] = ["model", "version"];
/// Failure reasons every serving version reports from the start (at 0), so the family and
/// its usual series exist before the first failure (dashboards, `rate()` from zero).
const FAILURES_AT_START: [&str; 3] = ["bad_input", "expired", "overloaded"];

impl Families {
    fn register(registry: &Registry) -> Families {
        Families {
            success: telemetry::counter(
                registry,
                "onnxd_inference_request_success_total",
                "Successful inference requests.",
                &PER_VERSION,
            ),
            failure: telemetry::counter(
                registry,
                "onnxd_inference_request_failure_total",
                "Failed inference requests, by reason (version is empty when none was chosen).",
                &["model", "version", "reason"],
            ),
            inferences: telemetry::counter(
                registry,
                "onnxd_inference_count_total",
                "Inferences performed (a batch of n counts n).",
                &PER_VERSION,
            ),
            executions: telemetry::counter(
                registry,
                "onnxd_inference_exec_count_total",
                "Model executions (batches).",
                &PER_VERSION,
            ),
            pending: telemetry::gauge(
                registry,
                "onnxd_inference_pending_requests",
                "Requests queued for an inference thread.",
                &PER_VERSION,
            ),
            seconds: telemetry::seconds(
                registry,
                "onnxd_inference_duration_seconds_total",
                "Cumulative time of successful requests, by phase: request (arrival to result), \
                 queue, compute_infer (includes input and output conversion).",
                &["model", "version", "phase"],
            ),
            load_seconds: telemetry::float_gauge(
                registry,
                "onnxd_model_load_duration_seconds",
                "How long loading, warming up and validating each serving version took.",
                &PER_VERSION,
            ),
            model_state: telemetry::gauge(
                registry,
                "onnxd_model_state",
                "1 for the model's current state (LOADING, READY, UNAVAILABLE).",
                &["model", "state"],
            ),
            info: telemetry::gauge(
                registry,
                "onnxd_model_info",
                "Each serving version and the engine and provider it really uses.",
                &["model", "version", "engine", "provider"],
            ),
            reloads: telemetry::counter(
                registry,
                "onnxd_model_reloads_total",
                "Reload attempts by result (ok, failed, unloaded).",
                &["model", "result"],
            ),
        }
    }

    /// Request counters of every version that has served or failed a request.
    fn requests(&self, name: &str, stats: &StatsSnapshot) {
        for (version, s) in &stats.versions {
            let version = version.to_string();
            let labels = [name, version.as_str()];
            self.success.with_label_values(&labels).inc_by(s.success);
            self.inferences.with_label_values(&labels).inc_by(s.inferences);
            self.executions.with_label_values(&labels).inc_by(s.executions);
            for (reason, count) in &s.failures {
                self.failure
                    .with_label_values(&[name, &version, reason])
                    .inc_by(*count);
            }
            for (phase, ns) in [
                ("request", s.request_ns),
                ("queue", s.queue_ns),
                ("compute_infer", s.compute_ns),
            ] {
                self.seconds
                    .with_label_values(&[name, &version, phase])
                    .inc_by(ns as f64 / 1e9);
            }
        }
        for (reason, count) in &stats.unversioned_failures {
            self.failure.with_label_values(&[name, "", reason]).inc_by(*count);
        }
        for (result, count) in &stats.reloads {
            self.reloads.with_label_values(&[name, result]).inc_by(*count);
        }
    }

    /// What each serving version is (engine, provider, load time, queue) and the model's state.
    fn versions(&self, handle: &ModelHandle) {
        let name = handle.name.as_str();
        for v in handle.versions().values() {
            let version = v.version.to_string();
            let labels = [name, version.as_str()];
            self.pending
                .with_label_values(&labels)
                .set(v.model.queued() as i64);
            self.load_seconds
                .with_label_values(&labels)
                .set(v.load_time.as_secs_f64());
            self.info
                .with_label_values(&[name, &version, &v.model.engine.to_string(), &v.model.provider])
                .set(1);
            for reason in FAILURES_AT_START {
                self.failure
                    .with_label_values(&[name, &version, reason])
                    .inc_by(0);
            }
        }
        let current = handle.state();
        for s in [ModelState::Loading, ModelState::Ready, ModelState::Unavailable] {
            let label = serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.model_state
                .with_label_values(&[name, &label])
                .set(i64::from(current.state == s));
        }
    }
}

fn render(router: &Router, registry: &Registry) {
    let families = Families::register(registry);
    let (mut batch_sizes, mut delays) = (Vec::new(), Vec::new());
    for handle in router.models() {
        families.requests(&handle.name, &handle.stats.snapshot());
        families.versions(&handle);
        for (version, stats) in handle.stats.all_versions() {
            let sample = |(buckets, sum, count): (Vec<(f64, u64)>, f64, u64)| HistogramSample {
                labels: vec![handle.name.clone(), version.to_string()],
                buckets,
                sum,
                count,
            };
            batch_sizes.push(sample(stats.batch_sizes.read()));
            delays.push(sample(stats.queue_delay.read()));
        }
    }
    telemetry::histogram(
        registry,
        "onnxd_batch_size",
        "Model executions by batch size (the rows of every request they ran).",
        &PER_VERSION,
        batch_sizes,
    );
    telemetry::histogram(
        registry,
        "onnxd_batch_queue_delay_seconds",
        "Time successful requests waited in their version's queue for an instance (and a batch).",
        &PER_VERSION,
        delays,
    );
}
