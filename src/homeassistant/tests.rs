//! Checks of the discovery configs against Home Assistant's documented schema (written from
//! its MQTT integration docs and the platform pages, in `tests/common/ha_schema.rs`), and of
//! the value templates against sample payloads with a Jinja engine.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::value::Serde;
use serde_json::{json, Value};

use super::*;

#[path = "../../tests/common/ha_schema.rs"]
mod schema;
use schema::validate;

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
