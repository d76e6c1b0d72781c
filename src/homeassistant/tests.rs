//! Checks of the discovery configs against Home Assistant's documented schema (written from
//! its MQTT integration docs and the platform pages; see the module documentation), and of
//! the value templates against sample payloads with a Jinja engine.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::value::Serde;
use serde_json::{json, Value};

use super::*;

/// Abbreviations HA documents for the keys a component of these platforms may carry
/// (short → long); the schema check expands them before looking at keys.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("avty", "availability"),
    ("avty_mode", "availability_mode"),
    ("avty_t", "availability_topic"),
    ("avty_tpl", "availability_template"),
    ("cont_type", "content_type"),
    ("def_ent_id", "default_entity_id"),
    ("dev_cla", "device_class"),
    ("e", "encoding"),
    ("en", "enabled_by_default"),
    ("ent_cat", "entity_category"),
    ("ent_pic", "entity_picture"),
    ("exp_aft", "expire_after"),
    ("frc_upd", "force_update"),
    ("ic", "icon"),
    ("img_e", "image_encoding"),
    ("img_t", "image_topic"),
    ("json_attr_t", "json_attributes_topic"),
    ("json_attr_tpl", "json_attributes_template"),
    ("lrst_val_tpl", "last_reset_value_template"),
    ("obj_id", "object_id"),
    ("off_dly", "off_delay"),
    ("ops", "options"),
    ("p", "platform"),
    ("pl_avail", "payload_available"),
    ("pl_not_avail", "payload_not_available"),
    ("pl_off", "payload_off"),
    ("pl_on", "payload_on"),
    ("stat_cla", "state_class"),
    ("stat_t", "state_topic"),
    ("sug_dsp_prc", "suggested_display_precision"),
    ("t", "topic"),
    ("uniq_id", "unique_id"),
    ("unit_of_meas", "unit_of_measurement"),
    ("url_t", "url_topic"),
    ("url_tpl", "url_template"),
    ("val_tpl", "value_template"),
];
/// Root-level abbreviations of a device config.
const ROOT_ABBREVIATIONS: &[(&str, &str)] = &[
    ("dev", "device"),
    ("o", "origin"),
    ("cmps", "components"),
    ("avty", "availability"),
    ("avty_mode", "availability_mode"),
    ("avty_t", "availability_topic"),
    ("avty_tpl", "availability_template"),
    ("pl_avail", "payload_available"),
    ("pl_not_avail", "payload_not_available"),
    ("stat_t", "state_topic"),
    ("cmd_t", "command_topic"),
    ("e", "encoding"),
];
const DEVICE_ABBREVIATIONS: &[(&str, &str)] = &[
    ("cns", "connections"),
    ("cu", "configuration_url"),
    ("ids", "identifiers"),
    ("mf", "manufacturer"),
    ("mdl", "model"),
    ("mdl_id", "model_id"),
    ("hw", "hw_version"),
    ("sw", "sw_version"),
    ("sa", "suggested_area"),
    ("sn", "serial_number"),
];
const ORIGIN_ABBREVIATIONS: &[(&str, &str)] = &[("sw", "sw_version"), ("url", "support_url")];

const ROOT_KEYS: &[&str] = &[
    "device",
    "origin",
    "components",
    "availability",
    "availability_mode",
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "state_topic",
    "command_topic",
    "qos",
    "encoding",
];
const DEVICE_KEYS: &[&str] = &[
    "identifiers",
    "connections",
    "name",
    "manufacturer",
    "model",
    "model_id",
    "hw_version",
    "sw_version",
    "serial_number",
    "configuration_url",
    "suggested_area",
    "via_device",
];
const ORIGIN_KEYS: &[&str] = &["name", "sw_version", "support_url"];
/// Keys every MQTT entity platform takes (the common entity and availability schemas).
const ENTITY_KEYS: &[&str] = &[
    "platform",
    "unique_id",
    "name",
    "availability",
    "availability_mode",
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "object_id",
    "default_entity_id",
    "qos",
];
const SENSOR_KEYS: &[&str] = &[
    "state_topic",
    "value_template",
    "device_class",
    "unit_of_measurement",
    "state_class",
    "options",
    "expire_after",
    "force_update",
    "last_reset_value_template",
    "suggested_display_precision",
];
const BINARY_SENSOR_KEYS: &[&str] = &[
    "state_topic",
    "value_template",
    "device_class",
    "payload_on",
    "payload_off",
    "expire_after",
    "force_update",
    "off_delay",
];
const IMAGE_KEYS: &[&str] = &[
    "image_topic",
    "url_topic",
    "content_type",
    "image_encoding",
    "url_template",
];
const BINARY_SENSOR_CLASSES: &[&str] = &[
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];
const SENSOR_CLASSES: &[&str] = &[
    "apparent_power",
    "aqi",
    "atmospheric_pressure",
    "battery",
    "carbon_dioxide",
    "carbon_monoxide",
    "current",
    "data_rate",
    "data_size",
    "date",
    "distance",
    "duration",
    "energy",
    "enum",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "power",
    "power_factor",
    "precipitation",
    "pressure",
    "signal_strength",
    "sound_pressure",
    "speed",
    "temperature",
    "timestamp",
    "voltage",
    "volume",
    "water",
    "weight",
    "wind_speed",
];
const STATE_CLASSES: &[&str] = &["measurement", "measurement_angle", "total", "total_increasing"];
const ENTITY_CATEGORIES: &[&str] = &["config", "diagnostic"];

/// `object` with abbreviated keys expanded; a key given both ways is a schema error.
fn expand(object: &Value, table: &[(&str, &str)], at: &str) -> Result<BTreeMap<String, Value>, String> {
    let object = object
        .as_object()
        .ok_or_else(|| format!("{at}: expected a JSON object, got {object}"))?;
    let mut out = BTreeMap::new();
    for (key, value) in object {
        let long = table
            .iter()
            .find(|(s, _)| s == key)
            .map_or(key.as_str(), |(_, l)| l);
        if out.insert(long.to_string(), value.clone()).is_some() {
            return Err(format!("{at}: `{long}` given twice"));
        }
    }
    Ok(out)
}

fn check_keys(object: &BTreeMap<String, Value>, allowed: &[&[&str]], at: &str) -> Result<(), String> {
    for key in object.keys() {
        if !allowed.iter().any(|set| set.contains(&key.as_str())) {
            return Err(format!("{at}: unknown key `{key}`"));
        }
    }
    Ok(())
}

fn string<'a>(object: &'a BTreeMap<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, String> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(other) => Err(format!("{at}: `{key}` must be a non-empty string, got {other}")),
    }
}

fn one_of(object: &BTreeMap<String, Value>, key: &str, values: &[&str], at: &str) -> Result<(), String> {
    match string(object, key, at)? {
        Some(v) if !values.contains(&v) => Err(format!("{at}: `{key}` = {v:?} is not one of {values:?}")),
        _ => Ok(()),
    }
}

/// A template HA can parse: balanced `{{ }}` / `{% %}` and no empty expression.
fn check_template(template: &str, at: &str) -> Result<(), String> {
    let env = minijinja::Environment::new();
    env.template_from_str(template)
        .map(|_| ())
        .map_err(|e| format!("{at}: template {template:?} does not parse: {e}"))
}

/// A topic the daemon can publish and HA can subscribe to without wildcards: not empty, no
/// `+`, `#` or NUL, at most 65535 bytes (MQTT 5 §4.7).
fn check_topic(topic: &str, at: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 65_535 || topic.contains(['+', '#', '\0']) {
        return Err(format!("{at}: {topic:?} is not a valid MQTT topic name"));
    }
    Ok(())
}

/// Validates a device discovery config as HA's docs describe it; returns the topics the
/// components read and the unique ids.
fn validate(config: &Value, topics: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    let root = expand(config, ROOT_ABBREVIATIONS, "root")?;
    check_keys(&root, &[ROOT_KEYS], "root")?;
    let device = expand(
        root.get("device").ok_or("root: `dev` is required")?,
        DEVICE_ABBREVIATIONS,
        "dev",
    )?;
    check_keys(&device, &[DEVICE_KEYS], "dev")?;
    let ids = device
        .get("identifiers")
        .and_then(Value::as_array)
        .ok_or("dev: `ids` must be a list")?;
    if ids.is_empty() || ids.iter().any(|i| i.as_str().is_none_or(str::is_empty)) {
        return Err("dev: `ids` needs at least one non-empty string".into());
    }
    string(&device, "sw_version", "dev")?;
    if let Some(url) = string(&device, "configuration_url", "dev")? {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!("dev: `cu` {url:?} is not an http(s) URL"));
        }
    }
    let origin = expand(
        root.get("origin").ok_or("root: `o` is required")?,
        ORIGIN_ABBREVIATIONS,
        "o",
    )?;
    check_keys(&origin, &[ORIGIN_KEYS], "o")?;
    string(&origin, "name", "o")?.ok_or("o: `name` is required")?;
    let url = string(&origin, "support_url", "o")?.unwrap_or("https://");
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Err(format!("o: `url` {url:?} is not an http(s) URL"));
    }
    if let Some(qos) = root.get("qos") {
        if !matches!(qos.as_u64(), Some(0..=2)) {
            return Err(format!("root: qos {qos} is not 0, 1 or 2"));
        }
    }
    let components = root
        .get("components")
        .and_then(Value::as_object)
        .ok_or("root: `cmps` must be an object")?;
    let mut unique_ids = BTreeSet::new();
    for (id, component) in components {
        if !is_valid_id(id) {
            return Err(format!("component id {id:?} is not [a-zA-Z0-9_-]+"));
        }
        let at = format!("cmps.{id}");
        let component = expand(component, ABBREVIATIONS, &at)?;
        if component.len() == 1 && component.contains_key("platform") {
            continue; // a removal entry
        }
        let unique_id = validate_component(&component, topics, &at)?;
        if !unique_ids.insert(unique_id.clone()) {
            return Err(format!("{at}: unique_id {unique_id:?} used twice"));
        }
    }
    Ok(unique_ids)
}

fn validate_component(
    c: &BTreeMap<String, Value>,
    topics: &BTreeSet<String>,
    at: &str,
) -> Result<String, String> {
    let platform = string(c, "platform", at)?.ok_or_else(|| format!("{at}: `p` is required"))?;
    let unique_id = string(c, "unique_id", at)?.ok_or_else(|| format!("{at}: `unique_id` is required"))?;
    if !is_valid_id(unique_id) {
        return Err(format!("{at}: unique_id {unique_id:?} is not [a-zA-Z0-9_-]+"));
    }
    string(c, "name", at)?;
    one_of(c, "entity_category", ENTITY_CATEGORIES, at)?;
    validate_platform(c, platform, at)?;
    for key in ["state_topic", "json_attributes_topic", "image_topic", "url_topic"] {
        if let Some(topic) = string(c, key, at)? {
            check_topic(topic, &format!("{at}.{key}"))?;
            if !topics.contains(topic) {
                return Err(format!(
                    "{at}: `{key}` {topic:?} is not a topic the daemon publishes"
                ));
            }
        }
    }
    for key in [
        "value_template",
        "json_attributes_template",
        "availability_template",
    ] {
        if let Some(template) = string(c, key, at)? {
            check_template(template, &format!("{at}.{key}"))?;
        }
    }
    validate_availability(c, topics, at)?;
    Ok(unique_id.to_string())
}

fn node(models: &[&str], cameras: &[(&str, &[&str])]) -> Node {
    let p = "onnxd/edge-1";
    Node {
        discovery_prefix: "homeassistant".into(),
        node_id: "edge-1".into(),
        version: "0.1.0".into(),
        status_topic: format!("{p}/status"),
        node_topic: format!("{p}/node"),
        configuration_url: Some("http://192.0.2.10:8000/".into()),
        qos: 1,
        models: models
            .iter()
            .map(|m| Model {
                name: m.to_string(),
                status_topic: format!("{p}/models/{m}/status"),
                stats_topic: format!("{p}/models/{m}/stats"),
            })
            .collect(),
        cameras: cameras
            .iter()
            .map(|(c, labels)| Camera {
                name: c.to_string(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                status_topic: format!("{p}/cameras/{c}/status"),
                result_topic: format!("{p}/cameras/{c}/result"),
                snapshot_topic: format!("{p}/cameras/{c}/snapshot"),
            })
            .collect(),
    }
}

fn topics_of(node: &Node) -> BTreeSet<String> {
    let mut topics = BTreeSet::from([node.status_topic.clone(), node.node_topic.clone()]);
    for m in &node.models {
        topics.extend([m.status_topic.clone(), m.stats_topic.clone()]);
    }
    for c in &node.cameras {
        topics.extend([
            c.status_topic.clone(),
            c.result_topic.clone(),
            c.snapshot_topic.clone(),
        ]);
    }
    topics
}

fn parsed(node: &Node) -> Value {
    serde_json::from_slice(&node.payload()).expect("the payload is JSON")
}

fn topic_is_valid(node: &Node) -> bool {
    let topic = node.topic();
    let parts: Vec<&str> = topic.split('/').collect();
    matches!(parts.as_slice(), [prefix, "device", id, "config"] if *prefix == node.discovery_prefix && is_valid_id(id))
}

#[test]
fn a_full_node_gives_a_valid_device_config() {
    let node = node(
        &["digits", "detector"],
        &[("door", &["person", "car"]), ("yard", &[])],
    );
    let config = parsed(&node);
    let unique_ids = validate(&config, &topics_of(&node)).unwrap();
    // 2 node + 2 × 2 model + (3 + 2) + 3 camera entities.
    assert_eq!(unique_ids.len(), 2 + 4 + 5 + 3);
    assert!(topic_is_valid(&node));
    assert_eq!(node.topic(), "homeassistant/device/edge-1/config");
    let cmps = config["cmps"].as_object().unwrap();
    for id in [
        "connectivity",
        "models_ready",
        "model_digits_state",
        "model_detector_rate",
        "camera_door_online",
        "camera_door_result",
        "camera_door_count_person",
        "camera_door_snapshot",
        "camera_yard_snapshot",
    ] {
        assert!(cmps.contains_key(id), "{id} in {:?}", cmps.keys());
    }
    assert_eq!(
        cmps["camera_door_snapshot"]["image_topic"],
        "onnxd/edge-1/cameras/door/snapshot"
    );
    assert_eq!(cmps["camera_door_snapshot"]["content_type"], "image/jpeg");
    assert_eq!(
        cmps["model_digits_state"]["unique_id"],
        "onnxd_edge-1_model_digits_state"
    );
    assert_eq!(config["o"]["name"], "onnxd");
    assert_eq!(config["o"]["url"], SUPPORT_URL);
    assert_eq!(config["dev"]["ids"][0], "onnxd_edge-1");
    // Every entity but the connectivity sensor follows the node's availability.
    for (id, component) in cmps {
        let has = component.get("availability").is_some();
        assert_eq!(has, id != "connectivity", "{id}");
    }
}

#[test]
fn the_schema_check_catches_what_ha_would_reject() {
    let node = node(&["m"], &[("c", &["x"])]);
    let topics = topics_of(&node);
    let good = parsed(&node);
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut config = good.clone();
        edit(&mut config);
        validate(&config, &topics).unwrap_err()
    };
    assert!(broken(&|c| drop(c.as_object_mut().unwrap().remove("o"))).contains("`o` is required"));
    assert!(broken(&|c| c["dev"]["ids"] = json!([])).contains("ids"));
    assert!(broken(&|c| drop(
        c["cmps"]["model_m_state"]
            .as_object_mut()
            .unwrap()
            .remove("unique_id")
    ))
    .contains("unique_id"));
    assert!(broken(&|c| drop(
        c["cmps"]["camera_c_online"]
            .as_object_mut()
            .unwrap()
            .remove("state_topic")
    ))
    .contains("state_topic"));
    assert!(
        broken(&|c| c["cmps"]["camera_c_result"]["state_topic"] = json!("elsewhere")).contains("publishes")
    );
    assert!(broken(&|c| c["cmps"]["camera_c_result"]["stat_t"] = json!("x")).contains("twice"));
    assert!(broken(&|c| c["cmps"]["camera_c_result"]["sate_topic"] = json!("x")).contains("unknown key"));
    assert!(broken(&|c| c["cmps"]["camera_c_snapshot"]["url_topic"] = json!("x")).contains("exactly one"));
    assert!(broken(&|c| c["cmps"]["model_m_state"]["unit_of_measurement"] = json!("x")).contains("enum"));
    assert!(
        broken(&|c| c["cmps"]["camera_c_online"]["device_class"] = json!("camera")).contains("not one of")
    );
    assert!(
        broken(&|c| c["cmps"]["models_ready"]["value_template"] = json!("{{ value_json.x "))
            .contains("parse")
    );
    assert!(broken(&|c| c["cmps"]["bad id"] = json!({"p": "sensor"})).contains("bad id"));
    assert!(
        broken(&|c| c["cmps"]["models_ready"]["unique_id"] = json!("onnxd_edge-1_connectivity"))
            .contains("twice")
    );
    // A camera whose name holds an MQTT wildcard gives topics HA cannot subscribe to.
    let wild = node_with_cameras(&[("a+b#c", &[])]);
    let err = validate(&parsed(&wild), &topics_of(&wild)).unwrap_err();
    assert!(err.contains("not a valid MQTT topic"), "{err}");
    assert!(wild.components().keys().all(|id| is_valid_id(id)));
}

#[test]
fn camera_and_model_names_with_spaces_slashes_and_unicode_give_valid_unique_ids() {
    // Names that still make valid MQTT topics (`+` and `#` cannot: see the schema test).
    let names = [
        "front door",
        "front/door",
        "front_door",
        "garage.1",
        "café",
        "门口",
        "",
        "a:b*c",
    ];
    let cameras: Vec<(&str, &[&str])> = names.iter().map(|n| (*n, &["per son", "per/son"][..])).collect();
    let node = node(&names, &cameras);
    let config = parsed(&node);
    let unique_ids = validate(&config, &topics_of(&node)).unwrap();
    assert_eq!(unique_ids.len(), 2 + names.len() * 2 + names.len() * 5);
    assert_eq!(config["cmps"].as_object().unwrap().len(), unique_ids.len());
    // Stable: the same inputs give the same ids, and a name's id does not depend on the others.
    assert_eq!(parsed(&node), config);
    let alone = node_with_camera("front door");
    assert!(alone
        .components()
        .keys()
        .all(|id| node.components().contains_key(id)));
    // Composite collisions get told apart too.
    let tricky = node_with_cameras(&[("a_count_b", &["c"]), ("a", &["b_count_c"])]);
    let config = parsed(&tricky);
    let ids = validate(&config, &topics_of(&tricky)).unwrap();
    assert_eq!(ids.len(), 2 + 2 * 4);
}

fn node_with_camera(name: &str) -> Node {
    node_with_cameras(&[(name, &["per son", "per/son"])])
}

fn node_with_cameras(cameras: &[(&str, &[&str])]) -> Node {
    node(&[], cameras)
}

#[test]
fn sanitize_keeps_valid_names_and_makes_the_rest_valid_and_distinct() {
    assert_eq!(sanitize("door-1_A"), "door-1_A");
    let mapped: Vec<String> = ["front door", "front/door", "front.door", "", "é", "_"]
        .map(sanitize)
        .into();
    for id in &mapped {
        assert!(is_valid_id(id), "{id:?}");
    }
    assert!(mapped[0].starts_with("front_door_") && mapped[0].len() == "front_door_".len() + 8);
    let distinct: BTreeSet<&String> = mapped.iter().collect();
    assert_eq!(distinct.len(), mapped.len());
    assert_ne!(sanitize("front door"), sanitize("front_door"));
    assert_eq!(sanitize("front door"), sanitize("front door"));
    let node = Node {
        node_id: "edge 1/α".into(),
        ..node(&[], &[])
    };
    assert!(topic_is_valid(&node), "{}", node.topic());
}

#[test]
fn empty_model_and_camera_lists_still_give_a_valid_device_config() {
    let node = Node {
        configuration_url: None,
        ..node(&[], &[])
    };
    let config = parsed(&node);
    let ids = validate(&config, &topics_of(&node)).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(config["dev"].get("cu").is_none());
}

#[test]
fn removed_components_hold_only_their_platform() {
    let before = node(&["a", "b"], &[("door", &["person"])]);
    let after = node(&["a"], &[]);
    let config: Value = serde_json::from_slice(&after.payload_removing(&before.components())).unwrap();
    validate(&config, &topics_of(&after)).unwrap();
    let cmps = config["cmps"].as_object().unwrap();
    assert_eq!(cmps["model_b_state"], json!({"p": "sensor"}));
    assert_eq!(cmps["model_b_rate"], json!({"p": "sensor"}));
    assert_eq!(cmps["camera_door_online"], json!({"p": "binary_sensor"}));
    assert_eq!(cmps["camera_door_snapshot"], json!({"p": "image"}));
    assert_eq!(cmps["camera_door_count_person"], json!({"p": "sensor"}));
    assert!(
        cmps["model_a_state"]["unique_id"].is_string(),
        "kept components stay whole"
    );
    assert_eq!(cmps.len(), before.components().len());
    // Nothing removed: the same as the plain payload.
    assert_eq!(after.payload_removing(&after.components()), after.payload());
    assert!(CLEAR_PAYLOAD.is_empty());
}

#[test]
fn the_birth_message_is_recognised() {
    assert_eq!(birth_topic("homeassistant"), "homeassistant/status");
    assert!(is_birth("homeassistant", "homeassistant/status", b"online"));
    assert!(is_birth("ha", "ha/status", b"online\n"));
    assert!(!is_birth("homeassistant", "homeassistant/status", b"offline"));
    assert!(!is_birth("homeassistant", "other/status", b"online"));
    for _ in 0..100 {
        assert!(rediscovery_delay() < REDISCOVERY_DELAY_MAX);
    }
}

/// Renders `template` the way HA does for a message: `value` is the payload, `value_json`
/// the payload parsed as JSON.
fn render(template: &str, payload: &str) -> String {
    let env = minijinja::Environment::new();
    let mut context = BTreeMap::new();
    context.insert("value", minijinja::Value::from(payload));
    if let Ok(json) = serde_json::from_str::<Value>(payload) {
        context.insert("value_json", minijinja::Value::from(Serde(json)));
    }
    env.render_str(template, context)
        .unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[test]
fn value_templates_give_the_intended_states() {
    let node = node(&["m"], &[("c", &["person", "it's \\ {{odd}}"])]);
    let config = parsed(&node);
    let c = &config["cmps"];
    let tpl = |id: &str, key: &str| c[id][key].as_str().unwrap().to_string();
    let availability = c["camera_c_online"]["availability"][0]["value_template"]
        .as_str()
        .unwrap();
    assert_eq!(render(availability, "online"), "online");
    assert_eq!(render(availability, "offline"), "offline");
    assert_eq!(render(availability, "stopped"), "offline");
    let connectivity = tpl("connectivity", "value_template");
    assert_eq!(render(&connectivity, "online"), "ON");
    assert_eq!(render(&connectivity, "stopped"), "OFF");
    let node_json = r#"{"version":"0.1.0","uptime_secs":5,"models_ready":2,"models_total":3}"#;
    assert_eq!(render(&tpl("models_ready", "value_template"), node_json), "2");
    let status = r#"{"state":"READY","version":3,"engine":"ort","provider":"CPU","sha256":"ab","loaded_at":1,"error":null}"#;
    assert_eq!(render(&tpl("model_m_state", "value_template"), status), "READY");
    assert_eq!(
        render(
            &tpl("model_m_rate", "value_template"),
            r#"{"inferences_per_sec": 12.3456, "p50_ms": 1.0}"#
        ),
        "12.35"
    );
    let result = r#"{"camera":"c","frame":7,"model_name":"det","result":[
        {"label":"person","score":0.9,"box":[1,2,3,4]},{"label":"car","score":0.8},
        {"label":"person","score":0.7},{"label":"it's \\ {{odd}}","score":0.6}]}"#;
    assert_eq!(
        render(&tpl("camera_c_result", "value_template"), result),
        "person"
    );
    assert_eq!(
        render(
            &tpl("camera_c_result", "value_template"),
            r#"{"camera":"c","result":[]}"#
        ),
        "none"
    );
    assert_eq!(
        render(
            &tpl("camera_c_result", "value_template"),
            r#"{"camera":"c","outputs":[]}"#
        ),
        "none"
    );
    assert_eq!(
        render(&tpl("camera_c_count_person", "value_template"), result),
        "2"
    );
    assert_eq!(
        render(
            &tpl("camera_c_count_person", "value_template"),
            r#"{"outputs":[]}"#
        ),
        "0"
    );
    let odd = c
        .as_object()
        .unwrap()
        .iter()
        .find(|(id, _)| id.starts_with("camera_c_count_it"))
        .map(|(_, v)| v["value_template"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(render(&odd, result), "1");
}

/// The keys and values one platform requires or allows.
fn validate_platform(c: &BTreeMap<String, Value>, platform: &str, at: &str) -> Result<(), String> {
    match platform {
        "sensor" => {
            check_keys(c, &[ENTITY_KEYS, SENSOR_KEYS], at)?;
            string(c, "state_topic", at)?.ok_or_else(|| format!("{at}: sensor needs `state_topic`"))?;
            one_of(c, "device_class", SENSOR_CLASSES, at)?;
            one_of(c, "state_class", STATE_CLASSES, at)?;
            if c.get("device_class") == Some(&json!("enum")) {
                let options = c.get("options").and_then(Value::as_array);
                if options.is_none_or(|o| o.is_empty() || o.iter().any(|v| !v.is_string())) {
                    return Err(format!("{at}: an enum sensor needs `options`, a list of strings"));
                }
                if c.contains_key("unit_of_measurement") || c.contains_key("state_class") {
                    return Err(format!("{at}: an enum sensor takes no unit or state class"));
                }
            } else if c.contains_key("options") {
                return Err(format!("{at}: `options` only goes with device_class enum"));
            }
        }
        "binary_sensor" => {
            check_keys(c, &[ENTITY_KEYS, BINARY_SENSOR_KEYS], at)?;
            string(c, "state_topic", at)?
                .ok_or_else(|| format!("{at}: binary_sensor needs `state_topic`"))?;
            one_of(c, "device_class", BINARY_SENSOR_CLASSES, at)?;
        }
        "image" => {
            check_keys(c, &[ENTITY_KEYS, IMAGE_KEYS], at)?;
            match (c.contains_key("image_topic"), c.contains_key("url_topic")) {
                (true, false) => {}
                (false, true) if !c.contains_key("content_type") => {}
                _ => return Err(format!("{at}: image needs exactly one of image_topic, url_topic")),
            }
        }
        other => {
            return Err(format!(
                "{at}: platform {other:?} is not one this module should emit"
            ))
        }
    }
    Ok(())
}

/// `availability`: a list of topics the daemon publishes, with valid templates.
fn validate_availability(
    c: &BTreeMap<String, Value>,
    topics: &BTreeSet<String>,
    at: &str,
) -> Result<(), String> {
    if let Some(availability) = c.get("availability") {
        let list = availability
            .as_array()
            .ok_or_else(|| format!("{at}: `availability` must be a list"))?;
        for entry in list {
            let entry = expand(entry, ABBREVIATIONS, &format!("{at}.availability"))?;
            let allowed: &[&str] = &[
                "topic",
                "payload_available",
                "payload_not_available",
                "value_template",
            ];
            check_keys(&entry, &[allowed], &format!("{at}.availability"))?;
            let topic =
                string(&entry, "topic", at)?.ok_or_else(|| format!("{at}: availability needs `topic`"))?;
            check_topic(topic, &format!("{at}.availability"))?;
            if !topics.contains(topic) {
                return Err(format!("{at}: availability topic {topic:?} is not published"));
            }
            if let Some(template) = string(&entry, "value_template", at)? {
                check_template(template, &format!("{at}.availability"))?;
            }
        }
    }
    Ok(())
}
