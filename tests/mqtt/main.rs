//! MQTT end to end: a real mosquitto started by the test on a free port, the real `onnxd`
//! daemon, real models — request/response (MQTT 5 correlation, MQTT 3.1.1 `id` + `reply_to`,
//! binary framing), every bad input named by the MQTT issue, node and model status, broker
//! restarts, daemon crashes, the outbox, shared subscriptions, TLS, the SIGTERM drain, and
//! round trips one at a time that no delayed ACK holds back, `onnxd bench --mqtt` itself; the acknowledgement path
//! against a test broker that acknowledges out of order and redelivers; and the topics other
//! parts of the daemon listen to.

mod ack_broker;
mod acks;
mod bench;
mod cameras;
#[path = "../common/mod.rs"]
mod common;
mod drain;
mod harness;
mod listen;
mod round_trip;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

use harness::{json, start_daemon, Broker, Client};

const WAIT: Duration = Duration::from_secs(30);

fn with_reply(topic: &str, correlation: &[u8]) -> PublishProperties {
    PublishProperties {
        response_topic: Some(topic.into()),
        correlation_data: Some(Bytes::copy_from_slice(correlation)),
        ..Default::default()
    }
}

/// One binary-framed request: JSON header + the raw bytes of `x`, outputs asked binary.
fn binary_request(dtype: &str, raw: &[u8]) -> (Vec<u8>, PublishProperties) {
    let header = json!({
        "id": dtype,
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": dtype, "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut payload = header.clone().into_bytes();
    payload.extend_from_slice(raw);
    let mut properties = with_reply("client/binary", dtype.as_bytes());
    properties.user_properties = vec![("Inference-Header-Content-Length".into(), header.len().to_string())];
    (payload, properties)
}

fn raw_values(dtype: &str) -> Vec<u8> {
    match dtype {
        "FP32" => [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        "INT64" => [1i64, -2, 3, i64::MAX, 0, -9]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        "BOOL" => vec![1, 0, 1, 1, 0, 0],
        "FP16" => [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        "BYTES" => ["a", "", "ε", "four", "xyz", "0"]
            .iter()
            .flat_map(|s| {
                let mut element = (s.len() as u32).to_le_bytes().to_vec();
                element.extend_from_slice(s.as_bytes());
                element
            })
            .collect(),
        other => panic!("no values for {other}"),
    }
}

#[test]
fn requests_get_replies_and_every_bad_input_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let models = dir.path().join("models");
    // Includes the example model as shipped as `digitsimg` (its sidecar: 8x8 gray `[input]`,
    // `classify` `[output]`).
    harness::repository(&models);
    // An image model (the CNN fixture with `[input]`) and one whose `[input]` cannot fit its
    // input (digits takes one gray 8x8 channel, not RGB).
    for (name, file, sidecar) in [
        (
            "cnnimg",
            common::fixture("cnn.onnx"),
            "[input]\nwidth = 96\nheight = 96\nresize = \"letterbox\"\n",
        ),
        (
            "badimg",
            common::models().join("digits/model.onnx"),
            "[input]\nwidth = 8\nheight = 8\n",
        ),
    ] {
        std::fs::create_dir_all(models.join(name).join("1")).unwrap();
        std::fs::copy(file, models.join(name).join("1/model.onnx")).unwrap();
        std::fs::write(models.join(name).join("model.toml"), sidecar).unwrap();
    }
    // A retained message on a request topic is a stale request: the daemon must ignore it.
    let early = Client::connect(broker.port, "early", &[]);
    early.runtime.block_on(async {
        early
            .client
            .publish_with_properties(
                "onnxd/n1/models/digits/infer",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                true,
                b"{}".to_vec(),
                with_reply("client/retained", b"r"),
            )
            .await
            .unwrap()
    });
    let http_port = harness::free_port();
    let mut daemon = start_daemon(
        dir.path(),
        "n1",
        Some(http_port),
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\nmax_payload_bytes = 65536",
            broker.port
        ),
    );
    let client = Client::connect(broker.port, "tester", &["client/#", "onnxd/n1/#"]);
    // Status: `online` and each model's state, retained.
    let status = client.next_on("onnxd/n1/status", WAIT);
    assert_eq!(&status.payload[..], b"online");
    let model_status = json(&client.next_on("onnxd/n1/models/digits/status", WAIT));
    assert_eq!(model_status["state"], "READY", "{model_status}");
    assert_eq!(model_status["engine"], "onnxruntime", "{model_status}");

    // MQTT 5: response topic + correlation data.
    let digits = json!({"id": "d1", "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": vec![0.0; 64]}]});
    client.publish(
        "onnxd/n1/models/digits/infer",
        digits.to_string(),
        with_reply("client/r", b"corr-1"),
    );
    let reply = client.next_on("client/r", WAIT);
    let props = reply.properties.clone().unwrap_or_default();
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    let body = json(&reply);
    assert_eq!(body["id"], "d1", "{body}");
    assert_eq!(body["model_version"], "1", "{body}");
    assert_eq!(body["engine"], "onnxruntime");
    assert!(body["inference_us"].as_u64().is_some(), "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 10]), "{body}");
    // An explicit version.
    client.publish(
        "onnxd/n1/models/digits/versions/1/infer",
        digits.to_string(),
        with_reply("client/r", b"v"),
    );
    let body = json(&client.next_on("client/r", WAIT));
    assert_eq!(body["model_version"], "1", "{body}");

    // MQTT 3.1.1: `id` and `reply_to` in the JSON.
    let mut v3 = rumqttc::MqttOptions::new("tester-v3", "127.0.0.1", broker.port);
    v3.set_max_packet_size(1 << 20, 1 << 20);
    let (v3_client, mut v3_loop) = rumqttc::AsyncClient::new(v3, 10);
    let v3_reply = client.runtime.block_on(async {
        v3_client
            .subscribe("client/v3", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let request = json!({"id": "old-1", "reply_to": "client/v3",
            "inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]});
        let mut published = false;
        loop {
            match tokio::time::timeout(WAIT, v3_loop.poll())
                .await
                .expect("MQTT 3.1.1 reply")
            {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) if !published => {
                    published = true;
                    v3_client
                        .publish(
                            "onnxd/n1/models/int64/infer",
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            request.to_string(),
                        )
                        .await
                        .unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => break p,
                Ok(_) => {}
                Err(e) => panic!("MQTT 3.1.1 client: {e}"),
            }
        }
    });
    let body: Value = serde_json::from_slice(&v3_reply.payload).unwrap();
    assert_eq!(body["id"], "old-1", "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([1, 2, 3, 4, 5, 6]), "{body}");

    // Binary framing round trips: the output `y` (identity) comes back as the input's bytes.
    for dtype in ["FP32", "INT64", "BOOL", "FP16", "BYTES"] {
        let raw = raw_values(dtype);
        let (payload, properties) = binary_request(dtype, &raw);
        client.publish(
            &format!("onnxd/n1/models/{}/infer", dtype.to_lowercase()),
            payload,
            properties,
        );
        let reply = client.next_on("client/binary", WAIT);
        let props = reply.properties.clone().unwrap();
        assert_eq!(props.correlation_data.as_deref(), Some(dtype.as_bytes()));
        let length: usize = props
            .user_properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Inference-Header-Content-Length"))
            .unwrap_or_else(|| panic!("{dtype}: no header length in {props:?}"))
            .1
            .parse()
            .unwrap();
        let header: Value = serde_json::from_slice(&reply.payload[..length]).unwrap();
        assert_eq!(
            header["outputs"][0]["parameters"]["binary_data_size"],
            raw.len(),
            "{dtype}: {header}"
        );
        assert_eq!(&reply.payload[length..], &raw[..], "{dtype}");
    }

    // Images: pre-processed as `[input]` says, over MQTT and over HTTP alike.
    let png = {
        let picture = image::RgbImage::from_fn(160, 90, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]));
        let mut bytes = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    };
    client.publish(
        "onnxd/n1/models/cnnimg/infer",
        png.clone(),
        with_reply("client/img", b"img"),
    );
    let mqtt_image = json(&client.next_on("client/img", WAIT));
    assert_eq!(mqtt_image["model_name"], "cnnimg", "{mqtt_image}");
    let http_image: Value = client.runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http_port}/v2/models/cnnimg/infer"))
            .header("Inference-Header-Content-Length", "0")
            .body(png.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(
        mqtt_image["outputs"], http_image["outputs"],
        "the same image gives the same outputs"
    );
    // The same PNG as one BYTES element (binary framing) is run as an image too.
    let mut element = (png.len() as u32).to_le_bytes().to_vec();
    element.extend_from_slice(&png);
    let header = json!({"id": "as-bytes", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": element.len()}}]})
    .to_string();
    let mut framed = header.clone().into_bytes();
    framed.extend_from_slice(&element);
    let mut properties = with_reply("client/img", b"bytes");
    properties.user_properties = vec![("Inference-Header-Content-Length".into(), header.len().to_string())];
    client.publish("onnxd/n1/models/cnnimg/infer", framed, properties);
    let as_bytes = json(&client.next_on("client/img", WAIT));
    assert_eq!(as_bytes["id"], "as-bytes", "{as_bytes}");
    assert_eq!(as_bytes["outputs"], mqtt_image["outputs"], "{as_bytes}");
    client.publish(
        "onnxd/n1/models/cnnimg/infer",
        png[..png.len() / 2].to_vec(),
        with_reply("client/img", b"cut"),
    );
    let cut = json(&client.next_on("client/img", WAIT));
    assert!(
        cut["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot decode the PNG image"),
        "{cut}"
    );
    // The sample digit as an 8x8 gray PNG: classified as the tensor request is, with labels.
    let (sample, digit_png) = sample_digit();
    client.publish(
        "onnxd/n1/models/digitsimg/infer",
        digit_png,
        with_reply("client/img", b"digit"),
    );
    let from_image = json(&client.next_on("client/img", WAIT));
    client.publish(
        "onnxd/n1/models/digitsimg/infer",
        sample.to_string(),
        with_reply("client/img", b"tensor"),
    );
    let from_tensor = json(&client.next_on("client/img", WAIT));
    assert_eq!(from_tensor["result"][0]["label"], "2", "{from_tensor}");
    assert_eq!(
        from_image["result"][0]["label"], from_tensor["result"][0]["label"],
        "{from_image}"
    );
    assert_eq!(
        from_image["result"].as_array().map(Vec::len),
        Some(3),
        "top_k = 3: {from_image}"
    );
    let misfit = json(&client.next_on("onnxd/n1/models/badimg/status", WAIT));
    assert_eq!(misfit["state"], "UNAVAILABLE", "{misfit}");
    assert!(
        misfit["error"]
            .as_str()
            .unwrap_or_default()
            .contains("[input] produces"),
        "{misfit}"
    );

    // Every bad input gets an error naming the problem.
    let fp32 = |data: Value, shape: Value, dtype: &str| {
        json!({"id": "bad", "inputs": [{"name": "x", "shape": shape, "datatype": dtype, "data": data}]})
            .to_string()
    };
    let oversize = vec![b' '; 70_000];
    let (mut short, mut short_props) = binary_request("FP32", &raw_values("FP32"));
    short.truncate(short.len() - 30);
    short_props.user_properties = vec![("Inference-Header-Content-Length".into(), "100000".into())];
    let cases: Vec<(&str, Vec<u8>, PublishProperties, &str)> = vec![
        (
            "fp32",
            b"{not json".to_vec(),
            with_reply("client/e", b"1"),
            "JSON",
        ),
        (
            "nothere",
            fp32(json!([1]), json!([1]), "FP32").into(),
            with_reply("client/e", b"2"),
            "unknown model 'nothere'",
        ),
        (
            "fp32/versions/9",
            fp32(json!([1, 2, 3, 4, 5, 6]), json!([2, 3]), "FP32").into(),
            with_reply("client/e", b"3"),
            "no ready version 9",
        ),
        (
            "fp32",
            fp32(json!([1, 2, 3, 4, 5, 6]), json!([2, 3]), "INT32").into(),
            with_reply("client/e", b"4"),
            "INT32",
        ),
        (
            "fp32",
            fp32(json!([1, 2, 3, 4, 5, 6]), json!([3, 2, 1]), "FP32").into(),
            with_reply("client/e", b"5"),
            "shape",
        ),
        (
            "fp32",
            fp32(json!([1, 2, 3]), json!([2, 3]), "FP32").into(),
            with_reply("client/e", b"6"),
            "6",
        ),
        ("fp32", short, short_props, "100000"),
        ("fp32", oversize, with_reply("client/e", b"8"), "over the limit"),
        (
            "digits",
            b"\x89PNG\r\n\x1a\n0000".to_vec(),
            with_reply("client/e", b"9"),
            "not supported for this model",
        ),
        (
            "fp32",
            json!({"id": "late", "parameters": {"timeout": 1},
                "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]})
            .to_string()
            .into(),
            with_reply("client/e", b"10"),
            "expired",
        ),
    ];
    for (target, payload, mut properties, needle) in cases {
        properties.response_topic = Some("client/e".into());
        let topic = format!("onnxd/n1/models/{target}/infer");
        client.publish(&topic, payload, properties);
        let reply = json(&client.next_on("client/e", WAIT));
        let error = reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{topic}: no error in {reply}"));
        assert!(
            error.contains(needle),
            "{topic}: '{error}' does not name '{needle}'"
        );
    }
    // The daemon kept serving, and without a response topic the reply goes to P/models/<m>/result.
    client.publish(
        "onnxd/n1/models/digits/infer",
        digits.to_string(),
        PublishProperties::default(),
    );
    let body = json(&client.next_on("onnxd/n1/models/digits/result", WAIT));
    assert_eq!(body["id"], "d1", "{body}");
    // Metrics: requests by outcome, the ignored retained request, promtool-clean.
    let metrics = harness::metrics(&client.runtime, http_port);
    for needle in [
        "onnxd_mqtt_connected 1",
        "onnxd_mqtt_retained_ignored_total 1",
        "onnxd_mqtt_requests_total{outcome=\"too_large\"} 1",
        "onnxd_mqtt_requests_total{outcome=\"unsupported\"} 1",
        "onnxd_mqtt_requests_total{outcome=\"unknown_model\"} 2",
        "onnxd_mqtt_requests_total{outcome=\"expired\"} 1",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    common::promtool_check(&metrics);
    // A clean stop publishes `stopped` (retained) instead of the Last Will.
    assert!(daemon.terminate(), "daemon exit status:\n{}", daemon.log());
    let status = client.next_on("onnxd/n1/status", WAIT);
    assert_eq!(&status.payload[..], b"stopped", "{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("MQTT connected"), "{log}");
    drop(broker);
}

/// The example model's sample request, and the same digit as an 8x8 gray PNG.
fn sample_digit() -> (Value, Vec<u8>) {
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(common::models().join("digits/sample-request.json")).unwrap(),
    )
    .unwrap();
    let digit: Vec<u8> = sample["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v.as_f64().unwrap() * 255.0).round() as u8)
        .collect();
    let mut png = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(8, 8, digit)
        .unwrap()
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    (sample, png.into_inner())
}

/// A digits request whose response goes to `reply` with the request's number as its id.
fn numbered(client: &Client, node: &str, reply: &str, i: usize) {
    let request = json!({"id": i.to_string(), "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": vec![i as f32 % 16.0; 64]}]});
    let properties = PublishProperties {
        response_topic: Some(reply.into()),
        ..Default::default()
    };
    client.publish(
        &format!("onnxd/{node}/models/digits/infer"),
        request.to_string(),
        properties,
    );
}

/// Every id of `0..n` answered at least once; returns how many answers were duplicates.
fn all_answered(
    client: &Client,
    topic: &str,
    n: usize,
    timeout: Duration,
    mut seen: HashMap<usize, usize>,
) -> usize {
    harness::collect_ids(client, topic, n, timeout, &mut seen);
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} requests never answered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    seen.values().map(|c| c - 1).sum()
}

#[test]
fn broker_restarts_lose_no_request() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    harness::repository(&dir.path().join("models"));
    let _daemon = start_daemon(dir.path(), "n1", None, &harness::url_setting(broker.port));
    let client = Client::connect(broker.port, "load", &["client/load", "onnxd/n1/status"]);
    // `online` follows the daemon's SUBSCRIBE: requests sent before it would go nowhere.
    assert_eq!(&client.next_on("onnxd/n1/status", WAIT).payload[..], b"online");
    let restarts = std::thread::spawn(move || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1500));
            broker.stop();
            std::thread::sleep(Duration::from_millis(1000));
            broker.restart();
        }
        broker
    });
    for i in 0..N {
        numbered(&client, "n1", "client/load", i);
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let duplicates = all_answered(
        &client,
        "client/load",
        N,
        Duration::from_secs(240),
        HashMap::new(),
    );
    let _broker = restarts.join().unwrap();
    println!("{N} requests over 3 broker restarts: 0 lost, {duplicates} duplicate answers");
}

#[test]
fn daemon_crash_loses_no_request_and_the_will_says_offline() {
    daemon_crash("");
}

/// The same with the receive maximum of 20 mosquitto announces by default: onnxd answers a
/// backlog of thousands with at most 20 responses unacknowledged (a broker disconnects a
/// client that sends more), and its packet ids never collide.
#[test]
fn daemon_crash_with_the_brokers_default_receive_maximum() {
    daemon_crash("max_inflight_messages 20\n");
}

/// A backlog through mosquitto's default `max_inflight_messages 20` (a receive maximum of 20
/// for onnxd's replies, while the broker hands onnxd as many requests as onnxd's own receive
/// maximum allows): replies that find the send window full wait in memory for a PUBACK, and
/// none is written to the outbox while the broker is connected. (They went to the disk
/// outbox, fsync and all, and once one had, every later reply followed it there while the
/// load lasted: half the throughput, and a write to the SD card per reply.)
#[test]
fn a_full_send_window_keeps_replies_off_the_disk() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "max_inflight_messages 20\n");
    harness::repository(&dir.path().join("models"));
    let http_port = harness::free_port();
    let _daemon = start_daemon(
        dir.path(),
        "n1",
        Some(http_port),
        &harness::url_setting(broker.port),
    );
    let client = Client::connect(broker.port, "window", &["client/window", "onnxd/n1/status"]);
    assert_eq!(&client.next_on("onnxd/n1/status", WAIT).payload[..], b"online");
    for i in 0..N {
        numbered(&client, "n1", "client/window", i);
    }
    let duplicates = all_answered(
        &client,
        "client/window",
        N,
        Duration::from_secs(60),
        HashMap::new(),
    );
    assert_eq!(duplicates, 0);
    let metrics = harness::metrics(&client.runtime, http_port);
    assert_eq!(
        harness::sample(&metrics, "onnxd_mqtt_outbox_appended_total"),
        0,
        "replies written to the outbox while the broker was connected"
    );
}

/// 3000 requests, the daemon killed while most are unanswered, then restarted: every one is
/// answered. `broker_config`: extra mosquitto lines.
fn daemon_crash(broker_config: &str) {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), broker_config);
    harness::repository(&dir.path().join("models"));
    let mut daemon = start_daemon(dir.path(), "n1", None, &harness::url_setting(broker.port));
    let client = Client::connect(broker.port, "crash", &["client/crash", "onnxd/n1/status"]);
    assert_eq!(&client.next_on("onnxd/n1/status", WAIT).payload[..], b"online");
    for i in 0..N {
        numbered(&client, "n1", "client/crash", i);
    }
    // Kill it while most requests are still unanswered.
    let mut seen = HashMap::new();
    harness::count_answer(&client.next_on("client/crash", WAIT), &mut seen);
    daemon.kill();
    let mut will = None;
    while let Some(message) = client.recv(Duration::from_millis(500)) {
        match &message.topic[..] {
            b"client/crash" => harness::count_answer(&message, &mut seen),
            _ => will = Some(message.payload),
        }
    }
    let in_flight = N - seen.len();
    assert!(
        in_flight >= 500,
        "only {in_flight} requests in flight at the kill"
    );
    let will = will.unwrap_or_else(|| client.next_on("onnxd/n1/status", WAIT).payload);
    assert_eq!(&will[..], b"offline", "no Last Will");
    daemon.restart();
    let duplicates = all_answered(&client, "client/crash", N, Duration::from_secs(120), seen);
    println!(
        "kill -9 with {in_flight} requests unanswered: all answered after restart ({duplicates} duplicates)"
    );
}

#[test]
fn outbox_keeps_answers_through_a_broker_outage_a_daemon_kill_and_a_torn_tail() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    let models = dir.path().join("models");
    harness::repository(&models);
    std::fs::create_dir_all(models.join("cnn/1")).unwrap();
    std::fs::copy(common::fixture("cnn.onnx"), models.join("cnn/1/model.onnx")).unwrap();
    let http_port = harness::free_port();
    let mut daemon = start_daemon(
        dir.path(),
        "n1",
        Some(http_port),
        &harness::url_setting(broker.port),
    );
    let client = Client::connect(broker.port, "outbox", &["client/ob", "onnxd/n1/status"]);
    // `online` follows the daemon's SUBSCRIBE: requests sent before it would go nowhere.
    assert_eq!(&client.next_on("onnxd/n1/status", WAIT).payload[..], b"online");
    let pixels = vec![0u8; 3 * 96 * 96 * 4];
    for i in 0..N {
        let header =
            json!({"id": i.to_string(), "inputs": [{"name": "x", "shape": [1, 3, 96, 96], "datatype": "FP32",
            "parameters": {"binary_data_size": pixels.len()}}]})
            .to_string();
        let mut payload = header.clone().into_bytes();
        payload.extend_from_slice(&pixels);
        let properties = PublishProperties {
            response_topic: Some("client/ob".into()),
            user_properties: vec![("Inference-Header-Content-Length".into(), header.len().to_string())],
            ..Default::default()
        };
        client.publish("onnxd/n1/models/cnn/infer", payload, properties);
    }
    // The broker goes away while the daemon still works on the requests it holds: their
    // answers go to the outbox.
    let mut seen = HashMap::new();
    harness::count_answer(&client.next_on("client/ob", Duration::from_secs(60)), &mut seen);
    broker.stop();
    let metrics = || harness::metrics(&client.runtime, http_port);
    let outboxed = |text: &str| harness::sample(text, "onnxd_mqtt_outbox_records");
    harness::wait_until("answers in the outbox", Duration::from_secs(30), || {
        outboxed(&metrics()) > 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let kept = outboxed(&metrics());
    // Killed with the outbox holding answers; the last record loses its end (a torn write).
    daemon.kill();
    let segments: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("state-n1/outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    let last = segments.iter().max().expect("an outbox segment");
    let length = std::fs::metadata(last).unwrap().len();
    assert!(length > 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    assert!(
        kept >= 2,
        "only {kept} answers in the outbox at the kill: nothing to replay"
    );
    // The broker redelivers every request whose answer waits in the outbox (their PUBACKs
    // could not be sent), so all would be answered even without a replay. Version 2 replaces
    // version 1 before the restart: an answer from version 1 now comes from the outbox.
    std::fs::create_dir_all(models.join("cnn/2")).unwrap();
    std::fs::copy(common::fixture("cnn.onnx"), models.join("cnn/2/model.onnx")).unwrap();
    broker.restart();
    daemon.restart();
    let mut versions = BTreeMap::new();
    let duplicates = answered_by_version(&client, "client/ob", N, seen, &mut versions);
    let log = daemon.log();
    assert!(log.contains("outbox: cut a torn or corrupt tail"), "{log}");
    assert!(log.contains("MQTT outbox holds undelivered messages"), "{log}");
    // The restarted daemon replayed its outbox and the broker acknowledged every record.
    harness::wait_until("the outbox to drain", Duration::from_secs(30), || {
        metrics().contains("onnxd_mqtt_outbox_records 0")
    });
    // Replayed answers still on their way.
    while let Some(message) = client.recv(Duration::from_secs(1)) {
        if message.topic == "client/ob".as_bytes() {
            let version = harness::json(&message)["model_version"].to_string();
            *versions.entry(version).or_default() += 1;
        }
    }
    let replayed = versions.get("\"1\"").map_or(0, |&c| c as u64);
    // All kept answers but the torn one come back from the outbox.
    assert!(
        replayed + 1 >= kept,
        "{kept} answers were in the outbox at the kill, {replayed} arrived after the restart \
         (answers by model version after the restart: {versions:?})"
    );
    println!("{kept} answers kept in the outbox over a broker outage and a kill -9, {replayed} replayed; all {N} answered ({duplicates} duplicates)");
}

/// Like [`all_answered`], with the answers counted by the model version that computed them.
fn answered_by_version(
    client: &Client,
    topic: &str,
    n: usize,
    mut seen: HashMap<usize, usize>,
    versions: &mut BTreeMap<String, usize>,
) -> usize {
    let until = Instant::now() + Duration::from_secs(120);
    while seen.len() < n {
        let Some(message) = client.recv(until.saturating_duration_since(Instant::now())) else {
            break;
        };
        if message.topic == topic.as_bytes() {
            harness::count_answer(&message, &mut seen);
            let version = harness::json(&message)["model_version"].to_string();
            *versions.entry(version).or_default() += 1;
        }
    }
    all_answered(client, topic, n, Duration::ZERO, seen)
}

#[test]
fn a_share_group_splits_pool_requests_between_daemons() {
    const N: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    harness::repository(&dir.path().join("models"));
    let mqtt = format!(
        "url = \"mqtt://127.0.0.1:{}\"\nshare_group = \"pool\"",
        broker.port
    );
    let _a = start_daemon(dir.path(), "a", None, &mqtt);
    let _b = start_daemon(dir.path(), "b", None, &mqtt);
    let client = Client::connect(broker.port, "pool-client", &["client/pool"]);
    for i in 0..N {
        let request = json!({"id": i.to_string(), "inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]});
        let properties = PublishProperties {
            response_topic: Some("client/pool".into()),
            ..Default::default()
        };
        client.publish("onnxd/models/int64/infer", request.to_string(), properties);
    }
    let mut seen = HashMap::new();
    let mut by_node: HashMap<String, usize> = HashMap::new();
    let until = std::time::Instant::now() + WAIT;
    while seen.len() < N {
        let message = client
            .recv(until.saturating_duration_since(std::time::Instant::now()))
            .expect("all pool answers");
        harness::count_answer(&message, &mut seen);
        let node = json(&message)["node"].as_str().unwrap_or_default().to_string();
        *by_node.entry(node).or_default() += 1;
    }
    // Nothing more arrives: each request was answered exactly once.
    assert!(
        client.recv(Duration::from_secs(1)).is_none(),
        "a request was answered twice"
    );
    assert!(seen.values().all(|c| *c == 1));
    assert!(
        by_node.get("a").is_some_and(|c| *c > 0) && by_node.get("b").is_some_and(|c| *c > 0),
        "{by_node:?}"
    );
    println!("{N} pool requests split {by_node:?}");
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=onnxd test CA",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=onnxd-node")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", subject],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn tls_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("broker");
    std::fs::create_dir_all(&tls).unwrap();
    certificates(&tls);
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(tls.join("passwd"))
        .args(["node", "s3cret"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("wrong-password"), "guess\n").unwrap();
    let plain = harness::free_port();
    let t = tls.display();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "per_listener_settings true\nlistener {{port}} 127.0.0.1\ncafile {t}/ca.pem\ncertfile {t}/server.pem\n\
             keyfile {t}/server.key\nrequire_certificate true\npassword_file {t}/passwd\nallow_anonymous false\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n"
        ),
    );
    harness::repository(&dir.path().join("models"));
    let mqtt = |password: &str| {
        format!(
            "url = \"mqtts://127.0.0.1:{}\"\nusername = \"node\"\npassword_file = \"{password}\"\nca_file = \"broker/ca.pem\"\n\
             client_cert = \"broker/client.pem\"\nclient_key = \"broker/client.key\"",
            broker.port
        )
    };
    let daemon = start_daemon(dir.path(), "secure", None, &mqtt("password"));
    let client = Client::connect(plain, "tls-watcher", &["client/tls", "onnxd/secure/status"]);
    assert_eq!(
        &client.next_on("onnxd/secure/status", WAIT).payload[..],
        b"online",
        "{}",
        daemon.log()
    );
    let request = json!({"id": "t", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "BOOL", "data": [true, false, true, false, true, false]}]});
    client.publish(
        "onnxd/secure/models/bool/infer",
        request.to_string(),
        with_reply("client/tls", b"tls"),
    );
    assert_eq!(
        json(&client.next_on("client/tls", WAIT))["outputs"][0]["data"],
        json!([true, false, true, false, true, false])
    );
    // A wrong password is refused by the broker: the daemon keeps running and retrying.
    let refused = start_daemon(dir.path(), "refused", None, &mqtt("wrong-password"));
    harness::wait_until("a refused connection in the log", WAIT, || {
        refused.log().contains("MQTT connection failed")
    });
    assert!(!refused.log().contains("MQTT connected"), "{}", refused.log());
}

#[test]
fn the_daemon_serves_http_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    harness::repository(&dir.path().join("models"));
    let http_port = harness::free_port();
    let nothing = harness::free_port();
    let daemon = start_daemon(
        dir.path(),
        "alone",
        Some(http_port),
        &harness::url_setting(nothing),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let request =
        json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]});
    let reply: Value = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http_port}/v2/models/int64/infer"))
            .json(&request)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(reply["outputs"][0]["data"], json!([1, 2, 3, 4, 5, 6]), "{reply}");
    std::thread::sleep(Duration::from_secs(2));
    let metrics = harness::metrics(&runtime, http_port);
    assert!(metrics.contains("onnxd_mqtt_connected 0"), "{metrics}");
    let errors = harness::sample(&metrics, "onnxd_mqtt_connection_errors_total");
    // Backoff: a few attempts in two seconds (0.25 s doubling), not a tight loop.
    assert!((2..=8).contains(&errors), "{errors} connection attempts in 2 s");
    assert!(daemon.log().contains("retry_in_ms"), "{}", daemon.log());
}

#[test]
fn camera_results_wait_in_the_outbox_through_a_30_s_broker_outage_and_arrive_in_order() {
    const FPS: f64 = 50.0;
    const OUTAGE: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    harness::repository(&dir.path().join("models"));
    let (_, digit_png) = sample_digit();
    let image = dir.path().join("digit.png");
    std::fs::write(&image, digit_png).unwrap();
    let http_port = harness::free_port();
    let daemon = start_daemon(
        dir.path(),
        "n1",
        Some(http_port),
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\n[[camera]]\nname = \"door\"\nsource = \"file://{}\"\nmodel = \"digitsimg\"\nfps = {FPS}\n",
            broker.port,
            image.display()
        ),
    );
    let client = Client::connect(broker.port, "camera-watcher", &["onnxd/n1/cameras/door/#"]);
    let frame = |message: &rumqttc::v5::mqttbytes::v5::Publish| {
        json(message)["frame"].as_u64().expect("frame number")
    };
    let mut seen = Vec::new();
    let first = loop {
        let Some(message) = client.recv(WAIT) else {
            panic!("no camera result (seen {seen:?}):\n{}", daemon.log());
        };
        if message.topic.ends_with(b"/result") {
            break json(&message);
        }
        seen.push(format!(
            "{}={}",
            String::from_utf8_lossy(&message.topic),
            String::from_utf8_lossy(&message.payload)
        ));
    };
    assert!(
        seen.contains(&"onnxd/n1/cameras/door/status=online".to_string()),
        "{seen:?}"
    );
    assert_eq!(first["result"][0]["label"], "2", "{first}");
    broker.stop();
    let mut before = first["frame"].as_u64().unwrap();
    while let Some(message) = client.recv(Duration::from_millis(200)) {
        if message.topic.ends_with(b"/result") {
            before = before.max(frame(&message));
        }
    }
    std::thread::sleep(OUTAGE);
    broker.restart();
    // Everything produced during the outage arrives, oldest first, then live results follow.
    let metrics = harness::metrics(&client.runtime, http_port);
    let produced = harness::sample(&metrics, "onnxd_camera_frames_processed_total{camera=\"door\"}");
    assert!(
        produced >= before + 1000,
        "only {} results produced during the outage",
        produced - before
    );
    let mut arrived: Vec<u64> = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while arrived.last().is_none_or(|last| *last < produced) {
        assert!(
            std::time::Instant::now() < until,
            "results stopped at frame {:?} of {produced}",
            arrived.last()
        );
        let Some(message) = client.recv(Duration::from_secs(5)) else {
            continue;
        };
        if message.topic.ends_with(b"/result") {
            arrived.push(frame(&message));
        }
    }
    let mut next = before + 1;
    for frame in arrived.iter().filter(|f| **f > before) {
        // Duplicates of the frames in flight at the outage are allowed; gaps and reordering not.
        assert!(*frame <= next, "frame {frame} arrived before frame {next}");
        next = next.max(frame + 1);
    }
    assert!(next > produced, "frames up to {produced} expected");
    assert!(metrics.contains("onnxd_mqtt_outbox_appended_total"), "{metrics}");
    println!(
        "{} camera results produced during a {OUTAGE:?} broker outage all arrived in order",
        produced - before
    );
}
