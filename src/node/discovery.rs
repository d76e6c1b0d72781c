//! Home Assistant discovery, published: the device config that [`crate::homeassistant`]
//! builds, retained through the MQTT [`Sink`], and the node's own state topics its entities
//! read — `P/node` (models ready / total, version, uptime) and `P/models/<m>/stats` (rates) —
//! also retained, so every entity has a value from the start. The other topics the entities
//! read are published elsewhere: `P/status` and `P/models/<m>/status` by the MQTT publisher,
//! the camera topics by the cameras.
//!
//! [`Discovery::sync`] compares the config the node should have now (models in the router,
//! cameras and `[homeassistant]` as configured, the labels of each camera's detector) with
//! the one published last and publishes when they differ: components that went away (a model
//! removed from the repository, a camera removed by SIGHUP) are published once holding only
//! their platform, which is how HA removes them; a changed prefix clears the old topic; HA
//! turned off clears the device config (empty retained payload).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::rates::Rates;
use super::Desired;
use crate::config::{CameraConfig, HomeAssistantConfig};
use crate::homeassistant::{self, Camera, Components, Model, Node, CLEAR_PAYLOAD};
use crate::mqtt::topics::Topics;
use crate::mqtt::Sink;
use crate::pipeline::postprocess::Kind;
use crate::serving::{Router, State};

/// `P/node` is re-published at least this often (its uptime), else when its counts change.
const NODE_EVERY: Duration = Duration::from_secs(60);

/// The publisher of one node's discovery config and state topics.
pub struct Discovery {
    /// Where everything goes.
    pub sink: Sink,
    /// The node's topics.
    pub topics: Topics,
    /// `node_id`.
    pub node_id: String,
    /// The status page's URL (the device's "Visit" link).
    pub configuration_url: Option<String>,
    /// The serving core (models, their labels and states).
    pub router: Arc<Router>,
    /// The rates the stats topics carry.
    pub rates: Arc<Rates>,
    /// When the daemon started.
    pub started: Instant,
    /// The device topic and the components last published there.
    pub published: Option<(String, Components)>,
    /// Stats payloads last published, by model.
    pub stats: BTreeMap<String, String>,
    /// The node payload last published (without uptime) and when.
    pub node: Option<(String, Instant)>,
}

impl Discovery {
    /// Publishes the device config when it differs from the last one, or always with `force`
    /// (HA's birth message); clears it when discovery was turned off.
    pub fn sync(&mut self, desired: &Desired, force: bool) {
        let ha = &desired.homeassistant;
        if !ha.enabled {
            if let Some((topic, _)) = self.published.take() {
                tracing::info!(%topic, "Home Assistant discovery off: device config cleared");
                self.sink.retain(topic, CLEAR_PAYLOAD.to_vec());
            }
            return;
        }
        let node = self.node(desired);
        let (topic, components) = (node.topic(), node.components());
        let payload = match &self.published {
            Some((old, previous)) if *old == topic => {
                if !force && *previous == components {
                    return;
                }
                node.payload_removing(previous)
            }
            Some((old, _)) => {
                self.sink.retain(old.clone(), CLEAR_PAYLOAD.to_vec());
                node.payload()
            }
            None => node.payload(),
        };
        tracing::debug!(%topic, components = components.len(), "Home Assistant discovery published");
        self.sink.retain(topic.clone(), payload);
        self.published = Some((topic, components));
    }

    /// Publishes `P/node` and each model's `P/models/<m>/stats` when they changed (or with
    /// `force`); clears the stats of models that went away.
    pub fn publish_states(&mut self, force: bool) {
        let models = self.router.models();
        let ready = models.iter().filter(|m| m.state().state == State::Ready).count();
        let counts = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "models_ready": ready,
            "models_total": models.len(),
        })
        .to_string();
        let stale = self
            .node
            .as_ref()
            .is_none_or(|(last, at)| *last != counts || at.elapsed() >= NODE_EVERY);
        if force || stale {
            let mut node = serde_json::from_str::<serde_json::Value>(&counts).unwrap_or_default();
            node["uptime_secs"] = json!(self.started.elapsed().as_secs());
            self.sink
                .retain(self.topics.node_info(), node.to_string().into_bytes());
            self.node = Some((counts, Instant::now()));
        }
        let names: BTreeSet<String> = models.iter().map(|m| m.name.clone()).collect();
        for gone in self
            .stats
            .keys()
            .filter(|m| !names.contains(*m))
            .cloned()
            .collect::<Vec<_>>()
        {
            self.sink.retain(self.topics.model_stats(&gone), Vec::new());
            self.stats.remove(&gone);
        }
        for name in names {
            let rate = serde_json::to_string(&self.rates.model(&name)).unwrap_or_default();
            if force || self.stats.get(&name) != Some(&rate) {
                self.sink
                    .retain(self.topics.model_stats(&name), rate.clone().into_bytes());
                self.stats.insert(name, rate);
            }
        }
    }

    /// The node as HA discovery describes it now.
    fn node(&self, desired: &Desired) -> Node {
        let mut models: Vec<String> = self.router.models().iter().map(|m| m.name.clone()).collect();
        models.sort();
        Node {
            discovery_prefix: desired.homeassistant.discovery_prefix.clone(),
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            status_topic: self.topics.status(),
            node_topic: self.topics.node_info(),
            configuration_url: self.configuration_url.clone(),
            qos: 1,
            models: models
                .into_iter()
                .map(|name| Model {
                    status_topic: self.topics.model_status(&name),
                    stats_topic: self.topics.model_stats(&name),
                    name,
                })
                .collect(),
            cameras: desired
                .cameras
                .iter()
                .map(|camera| Camera {
                    name: camera.name.clone(),
                    labels: self.labels(camera, &desired.homeassistant),
                    status_topic: self.topics.camera_status(&camera.name),
                    result_topic: self.topics.camera_result(&camera.name),
                    snapshot_topic: self.topics.camera_snapshot(&camera.name),
                })
                .collect(),
        }
    }

    /// The labels counted for a camera: none unless its model detects (YOLO, SSD); then
    /// `[homeassistant] labels`, or else the model's own.
    fn labels(&self, camera: &CameraConfig, ha: &HomeAssistantConfig) -> Vec<String> {
        let Some(handle) = self.router.handle(&camera.model) else {
            return Vec::new();
        };
        let Some(version) = handle.versions().values().next_back().cloned() else {
            return Vec::new();
        };
        let detects = version
            .post
            .as_ref()
            .is_some_and(|p| matches!(p.kind(), Kind::Yolo | Kind::Ssd));
        match (detects, ha.labels.is_empty()) {
            (false, _) => Vec::new(),
            (true, false) => ha.labels.clone(),
            (true, true) => version.labels.clone().unwrap_or_default(),
        }
    }
}

/// The link HA shows on the device page: the status page, when HTTP listens on an address
/// others can reach (not a wildcard).
pub fn configuration_url(config: &crate::config::Config) -> Option<String> {
    let address = config.http.listen?;
    if address.ip().is_unspecified() {
        return None;
    }
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{address}/"))
}

/// Whether a message on the birth topic is HA's `online`.
pub fn is_birth(prefix: &str, payload: &[u8]) -> bool {
    homeassistant::is_birth(prefix, &homeassistant::birth_topic(prefix), payload)
}
