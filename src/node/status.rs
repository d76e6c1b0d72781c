//! The status page's data ([`NodeStatus`], the daemon's [`StatusSource`]): `/status.json` put
//! together at each request from the serving core (model states and versions), the rates
//! sampler, the camera counters and views, and the MQTT counters; and each camera's latest
//! annotated frame. The JSON's shape is documented in [`crate::web`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};

use super::outputs::CameraViews;
use super::rates::Rates;
use crate::camera::pipeline::CameraRegistry;
use crate::mqtt::stats::MqttStats;
use crate::serving::{ModelHandle, Router};
use crate::web::{snapshot_url, StatusSource};

/// What `/status.json` reads.
pub struct NodeStatus {
    /// The node id.
    pub node_id: String,
    /// When the daemon started.
    pub started: Instant,
    /// The serving core.
    pub router: Arc<Router>,
    /// Recent rates.
    pub rates: Arc<Rates>,
    /// Camera counters.
    pub cameras: CameraRegistry,
    /// Camera snapshots and details.
    pub views: CameraViews,
    /// The configured cameras (their names and models).
    pub desired: tokio::sync::watch::Receiver<super::Desired>,
    /// MQTT counters, when MQTT is on.
    pub mqtt: Option<Arc<MqttStats>>,
}

impl StatusSource for NodeStatus {
    fn status(&self) -> Value {
        json!({
            "node": self.node(),
            "models": self.router.models().iter().map(|h| self.model(h)).collect::<Vec<_>>(),
            "cameras": self.cameras(),
            "mqtt": self.mqtt(),
        })
    }

    fn snapshot(&self, camera: &str) -> Option<Bytes> {
        self.views.get(camera).snapshot
    }
}

impl NodeStatus {
    fn node(&self) -> Value {
        json!({
            "id": self.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "engine_library": crate::engine::ort::loaded_library().map(|p| p.display().to_string()),
            "providers": providers(),
        })
    }

    fn model(&self, handle: &ModelHandle) -> Value {
        let state = handle.state();
        let rate = self.rates.model(&handle.name);
        json!({
            "name": handle.name,
            "state": state.state,
            "versions": handle.versions().keys().collect::<Vec<_>>(),
            "version": state.version,
            "engine": state.engine,
            "provider": state.provider,
            "sha256": state.sha256,
            "error": state.error,
            "inferences_per_sec": rate.inferences_per_sec,
            "p50_ms": rate.p50_ms,
            "p99_ms": rate.p99_ms,
        })
    }

    fn cameras(&self) -> Vec<Value> {
        let counters = self.cameras.snapshot();
        let cameras = self.desired.borrow().cameras.clone();
        cameras
            .iter()
            .map(|camera| {
                let (name, model) = (&camera.name, &camera.model);
                let c = counters.get(name).cloned().unwrap_or_default();
                let view = self.views.get(name);
                let rate = self.rates.camera(name);
                json!({
                    "name": name,
                    "model": model,
                    "online": c.online,
                    "detail": view.detail.as_ref().map(detail),
                    "fps_in": rate.fps_in,
                    "fps_out": rate.fps_out,
                    "dropped": c.skipped,
                    "snapshot": view.snapshot.is_some().then(|| snapshot_url(name)),
                })
            })
            .collect()
    }

    fn mqtt(&self) -> Value {
        let Some(stats) = &self.mqtt else {
            return json!({ "enabled": false });
        };
        let m = stats.snapshot();
        json!({
            "enabled": true,
            "connected": m.connected,
            "outbox_records": m.outbox_records,
            "outbox_bytes": m.outbox_bytes,
            "dropped": m.outbox.dropped_ttl + m.outbox.dropped_full + m.outbox.dropped_corrupt,
        })
    }
}

/// A camera's status detail in one line: its error, or where it reads from.
fn detail(detail: &Value) -> String {
    match (detail["error"].as_str(), detail["source"].as_str()) {
        (Some(error), _) => error.to_string(),
        (None, Some(source)) => format!("reading {source}"),
        _ => String::new(),
    }
}

/// The execution providers of the loaded ONNX Runtime, else tract's CPU.
fn providers() -> Vec<String> {
    match crate::engine::ort::loaded_library() {
        Some(_) => crate::engine::ort::compiled_providers()
            .into_iter()
            .map(str::to_string)
            .collect(),
        None => vec!["tract (CPU)".to_string()],
    }
}
