//! Model delivery's metrics: uploads and downloads by result, shadow comparisons by result,
//! promotions (by rollout) and rollbacks (by cause) per model. Counters only grow: the
//! comparison counters of a model are shared by all its shadows.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::Registry;

use super::journal::Origin;
use super::rollout::Rollout;
use crate::serving::shadow::ComparisonCounters;
use crate::telemetry::{self, MetricsSource};

/// Delivery counters.
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    uploads: Mutex<BTreeMap<&'static str, u64>>,
    downloads: Mutex<BTreeMap<&'static str, u64>>,
    promotions: Mutex<BTreeMap<(String, &'static str), u64>>,
    rollbacks: Mutex<BTreeMap<(String, &'static str), u64>>,
    comparisons: Mutex<BTreeMap<String, Arc<ComparisonCounters>>>,
}

impl DeliveryMetrics {
    /// Counts an upload (HTTP) or a download (MQTT deploy) by result (`ok` or a refusal).
    pub fn transfer(&self, origin: Origin, result: &'static str) {
        let map = match origin {
            Origin::Http => &self.uploads,
            Origin::Mqtt => &self.downloads,
        };
        *lock(map).entry(result).or_default() += 1;
    }

    /// Counts a version that took traffic.
    pub fn promotion(&self, model: &str, rollout: Rollout) {
        *lock(&self.promotions)
            .entry((model.to_string(), rollout.name()))
            .or_default() += 1;
    }

    /// Counts a rollback (`shadow`: by the verdict; `request`: on demand).
    pub fn rollback(&self, model: &str, cause: &'static str) {
        *lock(&self.rollbacks)
            .entry((model.to_string(), cause))
            .or_default() += 1;
    }

    /// The comparison counters of a model's shadows.
    pub fn comparisons(&self, model: &str) -> Arc<ComparisonCounters> {
        lock(&self.comparisons)
            .entry(model.to_string())
            .or_default()
            .clone()
    }
}

impl MetricsSource for DeliveryMetrics {
    fn render(&self, registry: &Registry) {
        let uploads = telemetry::counter(
            registry,
            "onnxd_delivery_uploads_total",
            "Model uploads over HTTP, by result (ok or why they were refused).",
            &["result"],
        );
        for (result, n) in lock(&self.uploads).iter() {
            uploads.with_label_values(&[result]).inc_by(*n);
        }
        let downloads = telemetry::counter(
            registry,
            "onnxd_delivery_downloads_total",
            "Model downloads of MQTT deploys, by result (ok or why they failed).",
            &["result"],
        );
        for (result, n) in lock(&self.downloads).iter() {
            downloads.with_label_values(&[result]).inc_by(*n);
        }
        let promotions = telemetry::counter(
            registry,
            "onnxd_delivery_promotions_total",
            "Delivered versions that took traffic, by rollout (immediate or shadow).",
            &["model", "rollout"],
        );
        for ((model, rollout), n) in lock(&self.promotions).iter() {
            promotions
                .with_label_values(&[model.as_str(), rollout])
                .inc_by(*n);
        }
        let rollbacks = telemetry::counter(
            registry,
            "onnxd_delivery_rollbacks_total",
            "Rollbacks, by cause (shadow: the shadow's verdict; request: on demand).",
            &["model", "cause"],
        );
        for ((model, cause), n) in lock(&self.rollbacks).iter() {
            rollbacks.with_label_values(&[model.as_str(), cause]).inc_by(*n);
        }
        self.render_comparisons(registry);
    }
}

impl DeliveryMetrics {
    fn render_comparisons(&self, registry: &Registry) {
        let comparisons = telemetry::counter(
            registry,
            "onnxd_shadow_comparisons_total",
            "Requests copied to a shadow version, by result (agree, disagree, error, dropped).",
            &["model", "result"],
        );
        for (model, counters) in lock(&self.comparisons).iter() {
            let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            for (result, n) in [
                ("agree", read(&counters.agree)),
                ("disagree", read(&counters.disagree)),
                ("error", read(&counters.error)),
                ("dropped", read(&counters.dropped)),
            ] {
                comparisons.with_label_values(&[model, result]).inc_by(n);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
