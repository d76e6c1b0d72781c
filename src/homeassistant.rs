//! Home Assistant MQTT discovery: pure builders of the one retained **device-based** discovery
//! config that makes a node, its models and its cameras appear in Home Assistant at start —
//! no I/O here: the caller publishes [`Discovery::payload`] (retained) on [`Discovery::topic`],
//! again when HA's birth message arrives ([`is_birth`], after [`rediscovery_delay`]), and
//! [`Discovery::payload_removing`] when models or cameras went away. Topics come from the
//! caller as strings (this module knows nothing of `crate::mqtt`).
//!
//! Entities, with the topics they read:
//!
//! | component | platform | state from |
//! |---|---|---|
//! | `connectivity` | `binary_sensor` (connectivity) | `P/status`: `online` → on, anything else (`offline`, `stopped`) → off |
//! | `models_ready` | `sensor` | `P/node` JSON `models_ready`; attributes: the JSON |
//! | `model_<m>_state` | `sensor` (enum) | `P/models/<m>/status` JSON `state`; attributes: the JSON |
//! | `model_<m>_rate` | `sensor` (inferences/s) | `P/models/<m>/stats` JSON `inferences_per_sec`; attributes: the JSON |
//! | `camera_<c>_online` | `binary_sensor` (connectivity) | `P/cameras/<c>/status`: `online` / `offline` |
//! | `camera_<c>_result` | `sensor` | `P/cameras/<c>/result`: the first (best) `result` label, `none` without one; attributes: the JSON |
//! | `camera_<c>_count_<l>` | `sensor` | the same topic: how many `result` entries have label `l` |
//! | `camera_<c>_snapshot` | `image` | `P/cameras/<c>/snapshot`: raw JPEG bytes |
//!
//! What HA documents and does (its MQTT integration page, "Device discovery payload", the
//! `binary_sensor.mqtt`, `sensor.mqtt` and `image.mqtt` pages, and the MQTT integration's
//! discovery code and schemas, read while writing this):
//! - The topic is `<discovery_prefix>/device/<object_id>/config`; `object_id` (and the optional
//!   `node_id` level) must match `[a-zA-Z0-9_-]+`, else HA drops the message with a warning.
//! - The payload's root holds `dev` (`device`: at least one of `ids`/`cns`; `name`, `mf`, `mdl`,
//!   `sw`, `hw`, `sn`, `cu`, `sa` optional), `o` (`origin`: `name` required, `sw`, `url`
//!   = support URL), both required, and `cmps` (`components`): a map from component id to the
//!   component's config with `p` (`platform`) required, and `unique_id` required for entities.
//!   Root-level `availability` options, `state_topic`, `command_topic`, `qos` and `encoding`
//!   are shared: HA copies them into each component that does not set its own. Each
//!   component id becomes the component's discovery object id, so it follows the id rule too.
//! - Keys may be abbreviated (`uniq_id`, `stat_t`, `val_tpl`, `avty`, `t`, …) at every level;
//!   unknown keys are ignored. Here the root uses the documented `dev`/`o`/`cmps`/`p` and the
//!   components long names, like HA's own example.
//! - Removing one component: publish the device config again with that component's entry
//!   holding only `p` (HA treats a component config that is empty once `p` is taken out as
//!   its removal); later configs may leave the id out. An empty retained payload on the device
//!   topic removes every component of the device ([`CLEAR_PAYLOAD`]).
//! - `sensor` and `binary_sensor` need `state_topic`; `binary_sensor` compares the (templated)
//!   payload with `payload_on`/`payload_off` (default `ON`/`OFF`). A `sensor` with
//!   `device_class: enum` needs `options` and takes no unit or state class. `image` needs
//!   exactly one of `image_topic` (the raw image bytes; `content_type` defaults to
//!   `image/jpeg`) and `url_topic`.
//! - Availability: a list of `{topic, payload_available, payload_not_available,
//!   value_template}` (defaults `online`/`offline`); a payload matching neither leaves the
//!   entity as it was, so `stopped` (onnxd's clean exit) goes through a `value_template` that
//!   maps everything but `online` to `offline`.
//! - HA's birth message is `online` on `<discovery_prefix>/status` (by default); HA wants
//!   discovery re-sent then, after a short random delay so that many nodes do not answer at once.
//!
//! Availability is per component, not at the root: a root-level one would be copied into
//! every component, including the connectivity sensor, which must stay available to show
//! "disconnected" when the node is gone (it would show "unavailable" instead).
//!
//! Topics are used as given. A model or camera name with `+` or `#` makes topics that no
//! broker accepts for publishing and HA rejects for subscribing: the configuration must refuse
//! such names (this module's ids stay valid whatever the name).
//!
//! Ids: [`sanitize`] maps a name to HA's character class; the component ids are
//! `<kind>_<sanitized names>` and each entity's `unique_id` is `onnxd_<node>_<component id>`,
//! so they are stable across restarts and unique across nodes. Composite ids that still
//! collide (camera `a_count_b` with label `c` against camera `a` with label `b_count_c`) get a
//! hash of their parts appended.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The origin's support URL in every discovery config: the README.
pub const SUPPORT_URL: &str = "https://github.com/onnxd/onnxd#readme";
/// The origin's and the device's manufacturer name.
pub const ORIGIN_NAME: &str = "onnxd";
/// The device's model in Home Assistant's device page.
pub const DEVICE_MODEL: &str = "ONNX inference daemon";
/// The payload that removes the whole device and all its entities (retained, on the topic).
pub const CLEAR_PAYLOAD: &[u8] = b"";
/// Longest random wait before discovery is re-sent after HA's birth message.
pub const REDISCOVERY_DELAY_MAX: Duration = Duration::from_secs(5);
/// The model states, as `P/models/<m>/status` reports them (the enum sensor's options).
pub const MODEL_STATES: [&str; 3] = ["LOADING", "READY", "UNAVAILABLE"];

/// Availability template: `online` stays, anything else (`offline`, `stopped`) is `offline`.
const AVAILABILITY_TEMPLATE: &str = "{{ 'online' if value == 'online' else 'offline' }}";

/// Everything discovery needs to know about one node; topics as the daemon publishes them.
#[derive(Clone, Debug)]
pub struct Node {
    /// `[homeassistant] discovery_prefix`, e.g. `homeassistant`.
    pub discovery_prefix: String,
    /// The node id (`[mqtt] node_id`), any characters.
    pub node_id: String,
    /// onnxd's version.
    pub version: String,
    /// `P/status`: `online` / `offline` / `stopped`.
    pub status_topic: String,
    /// `P/node`: retained JSON `{version, uptime_secs, models_ready, models_total}`.
    pub node_topic: String,
    /// The status page URL, shown as the device's "Visit" link (must be http(s)).
    pub configuration_url: Option<String>,
    /// QoS HA subscribes with.
    pub qos: u8,
    /// The models served.
    pub models: Vec<Model>,
    /// The cameras.
    pub cameras: Vec<Camera>,
}

/// A model's topics.
#[derive(Clone, Debug)]
pub struct Model {
    /// Model name.
    pub name: String,
    /// `P/models/<m>/status`: retained JSON `{state, version, engine, provider, sha256,
    /// loaded_at, error}`.
    pub status_topic: String,
    /// `P/models/<m>/stats`: JSON `{inferences_per_sec, p50_ms, p99_ms}`.
    pub stats_topic: String,
}

/// A camera's topics and the labels that get a count sensor.
#[derive(Clone, Debug)]
pub struct Camera {
    /// Camera name.
    pub name: String,
    /// Labels counted per frame (one sensor each; empty for classifiers).
    pub labels: Vec<String>,
    /// `P/cameras/<c>/status`: `online` / `offline`.
    pub status_topic: String,
    /// `P/cameras/<c>/result`: the per-frame result JSON.
    pub result_topic: String,
    /// `P/cameras/<c>/snapshot`: the latest annotated JPEG.
    pub snapshot_topic: String,
}

/// Component id → platform of a device config, kept by the caller to remove components later.
pub type Components = BTreeMap<String, String>;

/// `name` in HA's id alphabet `[a-zA-Z0-9_-]`: unchanged when it already is (and not empty);
/// otherwise every other character becomes `_` and `_` plus 8 hex digits of the name's
/// SHA-256 is appended, so that `front door`, `front/door` and `front_door` stay three ids
/// and an id never changes while the name does not.
pub fn sanitize(name: &str) -> String {
    if !name.is_empty() && name.chars().all(valid_id_char) {
        return name.to_string();
    }
    let mapped: String = name
        .chars()
        .map(|c| if valid_id_char(c) { c } else { '_' })
        .collect();
    format!("{mapped}_{}", short_hash(&[name]))
}

/// Whether `id` is a valid HA discovery id: `[a-zA-Z0-9_-]+`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(valid_id_char)
}

fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// 8 hex digits of the SHA-256 of the parts (NUL-separated).
fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// HA's birth topic: `<discovery_prefix>/status`.
pub fn birth_topic(discovery_prefix: &str) -> String {
    format!("{discovery_prefix}/status")
}

/// Whether a message is HA's birth message (`online` on the birth topic): discovery must be
/// re-sent, after [`rediscovery_delay`].
pub fn is_birth(discovery_prefix: &str, topic: &str, payload: &[u8]) -> bool {
    topic == birth_topic(discovery_prefix) && payload.trim_ascii() == b"online"
}

/// A random wait in `[0, REDISCOVERY_DELAY_MAX)` before re-sending discovery.
pub fn rediscovery_delay() -> Duration {
    REDISCOVERY_DELAY_MAX.mul_f64(fastrand::f64())
}

impl Node {
    /// `<discovery_prefix>/device/<sanitized node id>/config`.
    pub fn topic(&self) -> String {
        format!(
            "{}/device/{}/config",
            self.discovery_prefix,
            sanitize(&self.node_id)
        )
    }

    /// The device config (publish retained).
    pub fn payload(&self) -> Vec<u8> {
        self.config(&Components::new()).to_string().into_bytes()
    }

    /// The device config that also removes the components of `previous` (an earlier
    /// [`Node::components`]) that this one no longer has: each holds only `p`. Publish it
    /// retained when models or cameras went away; later publications may use [`Node::payload`].
    pub fn payload_removing(&self, previous: &Components) -> Vec<u8> {
        self.config(previous).to_string().into_bytes()
    }

    /// Component id → platform of this node's config.
    pub fn components(&self) -> Components {
        self.entities()
            .into_iter()
            .map(|e| (e.id, e.platform.to_string()))
            .collect()
    }

    /// The config as JSON, with removal entries for the components of `previous` not in it.
    pub fn config(&self, previous: &Components) -> Value {
        let node = sanitize(&self.node_id);
        let mut components = Map::new();
        for entity in self.entities() {
            let id = entity.id.clone();
            components.insert(id, entity.into_config(&node, self));
        }
        for (id, platform) in previous {
            if !components.contains_key(id) {
                components.insert(id.clone(), json!({ "p": platform }));
            }
        }
        let mut device = json!({
            "ids": [format!("onnxd_{node}")],
            "name": format!("onnxd {}", self.node_id),
            "mf": ORIGIN_NAME,
            "mdl": DEVICE_MODEL,
            "sw": self.version,
        });
        if let Some(url) = &self.configuration_url {
            device["cu"] = json!(url);
        }
        json!({
            "dev": device,
            "o": { "name": ORIGIN_NAME, "sw": self.version, "url": SUPPORT_URL },
            "cmps": components,
            "qos": self.qos,
        })
    }

    /// Every entity, ids made unique.
    fn entities(&self) -> Vec<Entity> {
        let mut entities = self.node_entities();
        for model in &self.models {
            entities.extend(model_entities(model));
        }
        for camera in &self.cameras {
            entities.extend(camera_entities(camera));
        }
        let mut seen = BTreeSet::new();
        let mut counts = BTreeMap::<String, usize>::new();
        for entity in &entities {
            *counts.entry(entity.id.clone()).or_default() += 1;
        }
        for entity in &mut entities {
            if counts[&entity.id] > 1 || seen.contains(&entity.id) {
                let parts: Vec<&str> = entity.parts.iter().map(String::as_str).collect();
                entity.id = format!("{}_{}", entity.id, short_hash(&parts));
            }
            seen.insert(entity.id.clone());
        }
        entities
    }

    fn node_entities(&self) -> Vec<Entity> {
        vec![
            Entity::new("binary_sensor", vec!["connectivity".into()], "Connectivity")
                .with("state_topic", &self.status_topic)
                .with("value_template", "{{ 'ON' if value == 'online' else 'OFF' }}")
                .with("payload_on", "ON")
                .with("payload_off", "OFF")
                .with("device_class", "connectivity")
                .with("entity_category", "diagnostic")
                .always_available(),
            Entity::new("sensor", vec!["models_ready".into()], "Models ready")
                .with("state_topic", &self.node_topic)
                .with("value_template", "{{ value_json.models_ready }}")
                .with("json_attributes_topic", &self.node_topic)
                .with("state_class", "measurement"),
        ]
    }
}

fn model_entities(model: &Model) -> Vec<Entity> {
    let name = &model.name;
    let parts = |kind: &str| vec!["model".to_string(), name.clone(), kind.to_string()];
    vec![
        Entity::new("sensor", parts("state"), &format!("{name} state"))
            .with("state_topic", &model.status_topic)
            .with("value_template", "{{ value_json.state }}")
            .with("json_attributes_topic", &model.status_topic)
            .with("device_class", "enum")
            .with_value("options", json!(MODEL_STATES)),
        Entity::new("sensor", parts("rate"), &format!("{name} inferences/s"))
            .with("state_topic", &model.stats_topic)
            .with("value_template", "{{ value_json.inferences_per_sec | round(2) }}")
            .with("json_attributes_topic", &model.stats_topic)
            .with("unit_of_measurement", "inferences/s")
            .with("state_class", "measurement"),
    ]
}

fn camera_entities(camera: &Camera) -> Vec<Entity> {
    let name = &camera.name;
    let parts = |kind: &str| vec!["camera".to_string(), name.clone(), kind.to_string()];
    let mut entities = vec![
        Entity::new("binary_sensor", parts("online"), &format!("{name} online"))
            .with("state_topic", &camera.status_topic)
            .with("payload_on", "online")
            .with("payload_off", "offline")
            .with("device_class", "connectivity"),
        Entity::new("sensor", parts("result"), &format!("{name} last result"))
            .with("state_topic", &camera.result_topic)
            .with(
                "value_template",
                "{{ value_json.result[0].label if value_json.result is defined \
                 and value_json.result | length > 0 else 'none' }}",
            )
            .with("json_attributes_topic", &camera.result_topic),
        Entity::new("image", parts("snapshot"), &format!("{name} snapshot"))
            .with("image_topic", &camera.snapshot_topic)
            .with("content_type", "image/jpeg"),
    ];
    let labels: BTreeSet<&String> = camera.labels.iter().collect();
    for label in labels {
        let template = format!(
            "{{{{ value_json.result | default([]) | selectattr('label', 'eq', '{}') | list | count }}}}",
            jinja_string(label)
        );
        let mut parts = parts("count");
        parts.push(label.clone());
        entities.push(
            Entity::new("sensor", parts, &format!("{name} {label} count"))
                .with("state_topic", &camera.result_topic)
                .with("value_template", &template)
                .with("state_class", "measurement"),
        );
    }
    entities
}

/// `text` escaped for a single-quoted Jinja string literal.
fn jinja_string(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// One component before it becomes JSON.
struct Entity {
    platform: &'static str,
    /// The names its id is made of (kind, model or camera name, label).
    parts: Vec<String>,
    id: String,
    name: String,
    options: Map<String, Value>,
    available_with_node: bool,
}

impl Entity {
    fn new(platform: &'static str, parts: Vec<String>, name: &str) -> Entity {
        let id = parts.iter().map(|p| sanitize(p)).collect::<Vec<_>>().join("_");
        Entity {
            platform,
            parts,
            id,
            name: name.to_string(),
            options: Map::new(),
            available_with_node: true,
        }
    }

    fn with(self, key: &str, value: &str) -> Entity {
        self.with_value(key, json!(value))
    }

    fn with_value(mut self, key: &str, value: Value) -> Entity {
        self.options.insert(key.to_string(), value);
        self
    }

    /// No availability: the entity reports the node's own state.
    fn always_available(mut self) -> Entity {
        self.available_with_node = false;
        self
    }

    fn into_config(self, node: &str, config: &Node) -> Value {
        let mut out = Map::new();
        out.insert("p".into(), json!(self.platform));
        out.insert("unique_id".into(), json!(format!("onnxd_{node}_{}", self.id)));
        out.insert("name".into(), json!(self.name));
        out.extend(self.options);
        if self.available_with_node {
            out.insert(
                "availability".into(),
                json!([{
                    "topic": config.status_topic,
                    "payload_available": "online",
                    "payload_not_available": "offline",
                    "value_template": AVAILABILITY_TEMPLATE,
                }]),
            );
        }
        out.insert("qos".into(), json!(config.qos));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests;
