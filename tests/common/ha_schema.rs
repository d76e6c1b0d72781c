//! Home Assistant's MQTT device-discovery schema, written from its MQTT integration docs
//! ("Device discovery payload", the `sensor.mqtt`, `binary_sensor.mqtt` and `image.mqtt`
//! pages: required and allowed keys with their abbreviations, platforms, device classes,
//! state classes, availability, templates that must parse) and its discovery schemas, as a
//! checker of a config payload. Shared by the unit tests of `src/homeassistant.rs` and the
//! integration test against a real broker (`tests/homeassistant`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// HA's id rule: `[a-zA-Z0-9_-]+` (component ids, unique ids, the node id level).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

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
pub fn validate(config: &Value, topics: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
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

/// Every topic the components of a device config read: state, attributes, image and
/// availability topics (abbreviated keys expanded; removal entries have none).
pub fn referenced_topics(config: &Value) -> BTreeSet<String> {
    let mut topics = BTreeSet::new();
    let Ok(root) = expand(config, ROOT_ABBREVIATIONS, "root") else {
        return topics;
    };
    let components = root.get("components").and_then(Value::as_object);
    for (id, component) in components.into_iter().flatten() {
        let Ok(component) = expand(component, ABBREVIATIONS, id) else {
            continue;
        };
        for key in ["state_topic", "json_attributes_topic", "image_topic", "url_topic"] {
            topics.extend(component.get(key).and_then(Value::as_str).map(str::to_string));
        }
        for entry in component
            .get("availability")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Ok(entry) = expand(entry, ABBREVIATIONS, id) {
                topics.extend(entry.get("topic").and_then(Value::as_str).map(str::to_string));
            }
        }
    }
    topics
}
