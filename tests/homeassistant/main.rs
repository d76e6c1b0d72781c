//! Home Assistant discovery and annotated snapshots end to end: a real mosquitto started by
//! the test, the real `onnxd` daemon, a real detector model (`common/detector.rs`) on a camera
//! reading a JPEG file. Discovery is retained and published before the first frame's result,
//! valid against HA's documented schema (`common/ha_schema.rs`), every topic it names really
//! gets messages, HA's birth message makes it re-sent, SIGHUP removing a camera removes its
//! entities, and so does a model removed from the repository; camera names with spaces and
//! `/` give valid ids. With discovery off nothing
//! appears under the prefix, and `snapshot = true` publishes frames with the boxes drawn.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/detector.rs"]
mod detector;
#[path = "../common/ha_schema.rs"]
mod ha_schema;
#[allow(dead_code)] // the MQTT tests use the rest
#[path = "../mqtt/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

use common::process::Onnxd;
use harness::{Broker, Client};

const WAIT: Duration = Duration::from_secs(40);
const CONFIG_TOPIC: &str = "homeassistant/device/ha1/config";

/// A repository with the detector and the example digits model, and the camera's frame.
fn setup(dir: &Path) -> (PathBuf, image::RgbImage) {
    let models = dir.join("models");
    detector::install(&models, "detector");
    common::copy_example_model(&models.join("digits"));
    let frame = dir.join("frame.jpg");
    let raw = detector::grey_frame(&frame, 320, 240);
    (frame, raw)
}

/// The daemon's config: MQTT on `port`, `extra` sections, one `[[camera]]` per name.
fn write_config(
    dir: &Path,
    node: &str,
    port: u16,
    extra: &str,
    cameras: &[&str],
    frame: &Path,
    snapshot: bool,
) -> PathBuf {
    let mut text = format!(
        "node_id = \"{node}\"\nstate_dir = \"state-{node}\"\n[engine]\nintra_threads = 1\n\
         [repository]\npath = \"models\"\n[http]\nlisten = \"\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n{extra}\n"
    );
    for name in cameras {
        text.push_str(&format!(
            "[[camera]]\nname = \"{name}\"\nsource = \"file://{}\"\nmodel = \"detector\"\nfps = 2\nsnapshot = {snapshot}\n",
            frame.display()
        ));
    }
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Every message the client got, in order, kept for look-ups.
struct Seen {
    messages: Vec<Publish>,
}

impl Seen {
    fn topic(message: &Publish) -> String {
        String::from_utf8_lossy(&message.topic).into_owned()
    }

    /// Receives until `done` holds for the messages so far, or panics with `what`.
    fn until(&mut self, client: &Client, what: &str, done: impl Fn(&[Publish]) -> bool) {
        let until = Instant::now() + WAIT;
        while !done(&self.messages) {
            let left = until.saturating_duration_since(Instant::now());
            match client.recv(left.min(Duration::from_millis(500))) {
                Some(message) => self.messages.push(message),
                None => assert!(
                    Instant::now() < until,
                    "timed out waiting for {what}; topics seen: {:?}",
                    self.topics()
                ),
            }
        }
    }

    fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.messages.iter().map(Seen::topic).collect();
        topics.dedup();
        topics
    }

    fn position(&self, matches: impl Fn(&str) -> bool) -> Option<usize> {
        self.messages.iter().position(|m| matches(&Seen::topic(m)))
    }

    fn last(&self, topic: &str) -> Option<&Publish> {
        self.messages.iter().rev().find(|m| m.topic == topic.as_bytes())
    }
}

fn json(message: &Publish) -> Value {
    serde_json::from_slice(&message.payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&message.payload)))
}

/// The config's component ids whose unique id names the camera's sanitized name.
fn camera_components(config: &Value, sanitized: &str) -> BTreeMap<String, Value> {
    config["cmps"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(id, _)| id.starts_with(&format!("camera_{sanitized}_")))
        .map(|(id, c)| (id.clone(), c.clone()))
        .collect()
}

#[test]
fn discovery_is_retained_before_the_first_result_follows_ha_restarts_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let (frame, _) = setup(dir.path());
    let client = Client::connect(broker.port, "watcher", &["homeassistant/#", "onnxd/ha1/#"]);
    let cameras = ["front door", "yard/gate"];
    let ha = "[homeassistant]\nenabled = true\n";
    let config_file = write_config(dir.path(), "ha1", broker.port, ha, &cameras, &frame, false);
    let mut daemon = Onnxd::start(&config_file, &[]);
    let mut seen = Seen { messages: Vec::new() };
    let is_result = |t: &str| t.starts_with("onnxd/ha1/cameras/") && t.ends_with("/result");
    seen.until(&client, "a camera result", |m| {
        m.iter().any(|m| is_result(&Seen::topic(m)))
    });
    // Discovery first: before any frame's result.
    let config_at = seen
        .position(|t| t == CONFIG_TOPIC)
        .expect("discovery config published");
    assert!(
        config_at < seen.position(is_result).unwrap(),
        "discovery after a result: {:?}",
        seen.topics()
    );
    let config = json(&seen.messages[config_at]);
    let topics = ha_schema::referenced_topics(&config);
    let unique_ids = ha_schema::validate(&config, &topics).unwrap_or_else(|e| panic!("{e}\n{config:#}"));
    // 2 node entities, 2 per model, per camera online/result/snapshot + person and car counts.
    assert_eq!(unique_ids.len(), 2 + 2 * 2 + 2 * 5, "{unique_ids:?}");
    for camera in cameras {
        let sanitized = onnxd::homeassistant::sanitize(camera);
        assert!(
            ha_schema::is_valid_id(&sanitized) && sanitized != camera,
            "{sanitized}"
        );
        assert_eq!(
            camera_components(&config, &sanitized).len(),
            5,
            "{camera}: {config:#}"
        );
    }
    assert_eq!(config["o"]["name"], "onnxd");
    assert!(
        topics.contains("onnxd/ha1/cameras/yard/gate/snapshot"),
        "{topics:?}"
    );
    // Every topic the entities read really gets a message.
    seen.until(&client, "a message on every referenced topic", |m| {
        topics.iter().all(|t| m.iter().any(|m| m.topic == t.as_bytes()))
    });
    check_states(&seen);
    check_retained(broker.port);
    birth_resends(&client, &mut seen);
    // SIGHUP without the yard camera: its components are removed, its status cleared.
    let config_file = write_config(dir.path(), "ha1", broker.port, ha, &cameras[..1], &frame, false);
    daemon.signal("HUP");
    let yard = onnxd::homeassistant::sanitize("yard/gate");
    let from = seen.messages.len();
    seen.until(&client, "the config removing the yard camera", |m| {
        m[from..].iter().any(|m| {
            m.topic == CONFIG_TOPIC.as_bytes()
                && camera_components(&json(m), &yard)
                    .values()
                    .all(|c| c.as_object().unwrap().len() == 1)
        })
    });
    let removing = json(seen.last(CONFIG_TOPIC).unwrap());
    ha_schema::validate(&removing, &ha_schema::referenced_topics(&removing)).unwrap();
    let gone = camera_components(&removing, &yard);
    assert_eq!(gone.len(), 5);
    assert!(gone.values().all(|c| c["p"].is_string()), "{gone:?}");
    let front = camera_components(&removing, &onnxd::homeassistant::sanitize("front door"));
    assert!(front.values().all(|c| c["unique_id"].is_string()), "{front:?}");
    seen.until(&client, "the yard camera's status cleared", |m| {
        m[from..]
            .iter()
            .any(|m| m.topic == b"onnxd/ha1/cameras/yard/gate/status".as_slice() && m.payload.is_empty())
    });
    // A model removed from the repository: its entities go too.
    let from = seen.messages.len();
    std::fs::remove_dir_all(dir.path().join("models/digits")).unwrap();
    seen.until(&client, "the config removing the digits model", |m| {
        m[from..]
            .iter()
            .any(|m| m.topic == CONFIG_TOPIC.as_bytes() && model_removed(&json(m), "digits"))
    });
    let removing = json(seen.last(CONFIG_TOPIC).unwrap());
    ha_schema::validate(&removing, &ha_schema::referenced_topics(&removing)).unwrap();
    assert!(
        removing["cmps"]["model_detector_state"]["unique_id"].is_string(),
        "{removing:#}"
    );
    assert!(config_file.exists());
    assert!(daemon.terminate(), "clean exit");
}

/// Whether the config removes the model's two entities (each holds only its platform).
fn model_removed(config: &Value, model: &str) -> bool {
    ["state", "rate"].iter().all(|kind| {
        let component = &config["cmps"][format!("model_{model}_{kind}")];
        component
            .as_object()
            .is_some_and(|c| c.len() == 1 && c["p"].is_string())
    })
}

/// The state topics hold what the entities expect.
fn check_states(seen: &Seen) {
    let text = |t: &str| String::from_utf8_lossy(&seen.last(t).unwrap().payload).into_owned();
    assert_eq!(text("onnxd/ha1/status"), "online");
    let node = json(seen.last("onnxd/ha1/node").unwrap());
    assert_eq!(
        (node["models_ready"].as_u64(), node["models_total"].as_u64()),
        (Some(2), Some(2)),
        "{node}"
    );
    let model = json(seen.last("onnxd/ha1/models/detector/status").unwrap());
    assert_eq!(model["state"], "READY");
    let stats = json(seen.last("onnxd/ha1/models/detector/stats").unwrap());
    assert!(stats["inferences_per_sec"].is_number(), "{stats}");
    assert_eq!(text("onnxd/ha1/cameras/front door/status"), "online");
    let result = json(seen.last("onnxd/ha1/cameras/yard/gate/result").unwrap());
    assert_eq!(result["result"][0]["label"], "person", "{result}");
    let snapshot = &seen
        .last("onnxd/ha1/cameras/front door/snapshot")
        .unwrap()
        .payload;
    let picture = image::load_from_memory(snapshot).expect("the snapshot is a JPEG");
    assert_eq!((picture.width(), picture.height()), (320, 240));
}

/// A client that subscribes later gets the discovery config and the states as retained.
fn check_retained(port: u16) {
    let late = Client::connect(
        port,
        "late",
        &[
            "homeassistant/#",
            "onnxd/ha1/node",
            "onnxd/ha1/cameras/front door/snapshot",
        ],
    );
    let mut retained = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(10);
    while retained.len() < 3 && Instant::now() < until {
        if let Some(m) = late.recv(Duration::from_millis(500)) {
            retained.insert(Seen::topic(&m), m.retain);
        }
    }
    for topic in [
        CONFIG_TOPIC,
        "onnxd/ha1/node",
        "onnxd/ha1/cameras/front door/snapshot",
    ] {
        assert_eq!(retained.get(topic), Some(&true), "{topic} retained: {retained:?}");
    }
}

/// HA's birth message (`online` on `homeassistant/status`) makes discovery come again.
fn birth_resends(client: &Client, seen: &mut Seen) {
    let from = seen.messages.len();
    let sent = Instant::now();
    client.publish("homeassistant/status", "online", PublishProperties::default());
    seen.until(client, "discovery re-sent after HA's birth message", |m| {
        m[from..].iter().any(|m| m.topic == CONFIG_TOPIC.as_bytes())
    });
    let config = json(seen.last(CONFIG_TOPIC).unwrap());
    ha_schema::validate(&config, &ha_schema::referenced_topics(&config)).unwrap();
    assert!(sent.elapsed() < onnxd::homeassistant::REDISCOVERY_DELAY_MAX + Duration::from_secs(3));
}

#[test]
fn without_discovery_nothing_goes_under_the_prefix_and_snapshots_show_the_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let (frame, raw) = setup(dir.path());
    let client = Client::connect(broker.port, "watcher", &["homeassistant/#", "onnxd/ha2/#"]);
    let config = write_config(dir.path(), "ha2", broker.port, "", &["cam"], &frame, true);
    let mut daemon = Onnxd::start(&config, &[]);
    let mut seen = Seen { messages: Vec::new() };
    let snapshot = "onnxd/ha2/cameras/cam/snapshot";
    seen.until(&client, "a result and a snapshot", |m| {
        let has = |t: &str| m.iter().any(|m| m.topic == t.as_bytes());
        has("onnxd/ha2/cameras/cam/result") && has(snapshot)
    });
    let result = json(seen.last("onnxd/ha2/cameras/cam/result").unwrap());
    let boxes: Vec<[f64; 4]> = result["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["box"].clone()).unwrap())
        .collect();
    assert_eq!(boxes.len(), detector::BOXES.len(), "{result}");
    let drawn = image::load_from_memory(&seen.last(snapshot).unwrap().payload)
        .expect("the snapshot is a JPEG")
        .to_rgb8();
    assert_eq!(drawn.dimensions(), raw.dimensions());
    for bbox in boxes {
        check_border(&raw, &drawn, bbox);
    }
    std::thread::sleep(Duration::from_secs(3));
    while let Some(m) = client.recv(Duration::from_millis(200)) {
        seen.messages.push(m);
    }
    let under_prefix: Vec<String> = seen
        .topics()
        .into_iter()
        .filter(|t| t.starts_with("homeassistant/"))
        .collect();
    assert!(under_prefix.is_empty(), "{under_prefix:?}");
    assert!(
        seen.last("onnxd/ha2/node").is_none(),
        "no HA state topics without discovery"
    );
    assert!(daemon.terminate());
}

/// The pixels along the box's border differ from the raw frame's (the box is drawn); its
/// centre does not (only the border is).
fn check_border(raw: &image::RgbImage, drawn: &image::RgbImage, bbox: [f64; 4]) {
    let differs = |x: u32, y: u32| {
        let (a, b) = (raw.get_pixel(x, y).0, drawn.get_pixel(x, y).0);
        (0..3).map(|i| a[i].abs_diff(b[i])).max().unwrap()
    };
    let [x1, y1, x2, y2] = bbox.map(|v| v.round() as u32);
    let mut border = Vec::new();
    for x in (x1 + 1)..x2 {
        border.extend([(x, y1 + 1), (x, y2 - 1)]);
    }
    for y in (y1 + 1)..y2 {
        border.extend([(x1 + 1, y), (x2 - 1, y)]);
    }
    let changed = border.iter().filter(|(x, y)| differs(*x, *y) > 30).count();
    assert!(
        changed * 10 >= border.len() * 9,
        "box {bbox:?}: {changed} of {} border pixels differ from the raw frame",
        border.len()
    );
    let centre = differs((x1 + x2) / 2, (y1 + y2) / 2);
    assert!(centre < 20, "box {bbox:?}: its centre changed by {centre}");
}
