//! MQTT deploys against `onnxd run` processes and a real mosquitto: a manifest on
//! `P/models/<m>/deploy` downloads the model file from a local HTTP server — resumed with
//! `Range` after the server drops the connection half-way — and the version serves; a bad
//! SHA-256 is refused; a fleet manifest on `F/models/<m>/deploy` reaches two daemons; the
//! MQTT rollback command; `kill -9` during a download (resumed after the restart) and during
//! a shadow (reported failed after the restart), leaving no half-written version.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fileserver::{Behaviour, FileServer};
use crate::harness::{self, Broker, Client, Daemon};
use crate::models;
use crate::server::{digits_repository, sha256, snapshot};

const WAIT: Duration = Duration::from_secs(60);

fn manifest(server: &FileServer, file: &[u8], version: u64, rollout: &str) -> Vec<u8> {
    json!({
        "version": version,
        "url": server.url("/digits-v2.onnx"),
        "sha256": sha256(file),
        "size": file.len(),
        "rollout": rollout,
    })
    .to_string()
    .into_bytes()
}

/// A daemon `node` in `dir` (its own repository: digits version 1) on the broker.
fn daemon(dir: &Path, node: &str, broker: &Broker, sidecar_extra: &str) -> (Daemon, u16) {
    let models = dir.join("models");
    digits_repository(
        &models,
        "digits",
        &std::fs::read(crate::common::models().join("digits/model.onnx")).unwrap(),
    );
    if !sidecar_extra.is_empty() {
        let toml = std::fs::read_to_string(models.join("digits/model.toml")).unwrap();
        let (head, tables) = toml.split_once("\n[").unwrap();
        std::fs::write(
            models.join("digits/model.toml"),
            format!("{head}\n{sidecar_extra}\n[{tables}"),
        )
        .unwrap();
    }
    let port = harness::free_port();
    let daemon = harness::start_daemon(dir, node, Some(port), &harness::url_setting(broker.port));
    // Ready is not subscribed: a deploy published before the daemon's SUBSCRIBE is lost (a
    // test waited 60 s for its status once).
    harness::wait_until("the daemon's MQTT subscriptions", WAIT, || {
        daemon.log().contains("MQTT subscribed")
    });
    (daemon, port)
}

/// Waits for a rollout status of `version` in one of `states` on `topic`.
fn wait_rollout(client: &Client, topic: &str, version: u64, states: &[&str]) -> Value {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let message = client.next_on(topic, left);
        let status = harness::json(&message);
        if status["version"] == version && states.contains(&status["state"].as_str().unwrap_or_default()) {
            return status;
        }
    }
}

fn served_version(port: u16) -> String {
    let body = std::fs::read(crate::common::models().join("digits/sample-request.json")).unwrap();
    let reply = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/v2/models/digits/infer"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(reply.status(), 200);
    let answer: Value = reply.json().unwrap();
    answer["model_version"].as_str().unwrap().to_string()
}

#[test]
fn a_deploy_resumes_a_dropped_download_and_a_bad_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let v2 = models::rotated();
    let files = FileServer::start(vec![("/digits-v2.onnx", v2.clone())]);
    let (_daemon, port) = daemon(dir.path(), "n1", &broker, "");
    let topic = "onnxd/n1/models/digits/rollout";
    let client = Client::connect(broker.port, "deployer", &[topic]);
    let before = snapshot(&dir.path().join("models"));

    let mut bad: Value = serde_json::from_slice(&manifest(&files, &v2, 2, "immediate")).unwrap();
    bad["sha256"] = json!("0".repeat(64));
    client.publish(
        "onnxd/n1/models/digits/deploy",
        bad.to_string(),
        Default::default(),
    );
    let status = wait_rollout(&client, topic, 2, &["failed"]);
    assert!(
        status["reason"].as_str().unwrap().contains("expected 0000"),
        "{status}"
    );
    assert_eq!(snapshot(&dir.path().join("models")), before);
    assert_eq!(served_version(port), "1");

    files.set(Behaviour::DropAfter(v2.len() / 2));
    let before_requests = files.seen().len();
    client.publish(
        "onnxd/n1/models/digits/deploy",
        manifest(&files, &v2, 2, "immediate"),
        Default::default(),
    );
    let status = wait_rollout(&client, topic, 2, &["promoted", "failed"]);
    assert_eq!(status["state"], "promoted", "{status}");
    assert_eq!(served_version(port), "2");
    let seen = &files.seen()[before_requests..];
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.path == "/digits-v2.onnx"), "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={}-", v2.len() / 2).as_str()),
        "{seen:?}"
    );

    client.publish("onnxd/n1/models/digits/rollback", "{}", Default::default());
    let status = wait_rollout(&client, topic, 2, &["rolled_back"]);
    assert_eq!(status["to"], 1, "{status}");
    assert_eq!(served_version(port), "1");
    let metrics = harness::metrics(&client.runtime, port);
    assert_eq!(
        harness::sample(&metrics, "onnxd_delivery_downloads_total{result=\"ok\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(
        harness::sample(&metrics, "onnxd_delivery_downloads_total{result=\"checksum\"}"),
        1
    );
}

#[test]
fn a_fleet_deploy_reaches_two_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let v2 = models::rotated();
    let files = FileServer::start(vec![("/digits-v2.onnx", v2.clone())]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (_first, first_port) = daemon(&a, "n1", &broker, "");
    let (_second, second_port) = daemon(&b, "n2", &broker, "");
    let topics = ["onnxd/n1/models/digits/rollout", "onnxd/n2/models/digits/rollout"];
    let client = Client::connect(broker.port, "fleet", &topics);
    client.publish(
        "onnxd/models/digits/deploy",
        manifest(&files, &v2, 2, "immediate"),
        Default::default(),
    );
    for topic in topics {
        let status = wait_rollout(&client, topic, 2, &["promoted", "failed"]);
        assert_eq!(status["state"], "promoted", "{topic}: {status}");
    }
    assert_eq!(
        (served_version(first_port), served_version(second_port)),
        ("2".into(), "2".into())
    );
    assert!(a.join("models/digits/2/model.onnx").is_file() && b.join("models/digits/2/model.onnx").is_file());
}

#[test]
fn kill_9_during_a_download_leaves_no_version_and_the_download_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let v2 = models::rotated();
    let files = FileServer::start(vec![("/digits-v2.onnx", v2.clone())]);
    files.set(Behaviour::StallAfter(v2.len() / 2));
    let (mut daemon, port) = daemon(dir.path(), "n1", &broker, "");
    let topic = "onnxd/n1/models/digits/rollout";
    let client = Client::connect(broker.port, "deployer", &[topic]);
    client.publish(
        "onnxd/n1/models/digits/deploy",
        manifest(&files, &v2, 2, "immediate"),
        Default::default(),
    );
    wait_rollout(&client, topic, 2, &["downloading"]);
    harness::wait_until("half the file sent", WAIT, || files.sent() >= v2.len() / 2);
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill();
    let models = dir.path().join("models");
    assert!(
        !models.join("digits/2").exists(),
        "a version appeared before its download finished"
    );
    let part = models.join(".onnxd-staging/digits.2/2/model.onnx.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), (v2.len() / 2) as u64);
    files.set(Behaviour::Full);
    daemon.restart();
    let status = wait_rollout(&client, topic, 2, &["promoted", "failed"]);
    assert_eq!(status["state"], "promoted", "{status}");
    assert_eq!(served_version(port), "2");
    let resumed = files.seen().last().cloned().unwrap();
    assert_eq!(
        resumed.range.as_deref(),
        Some(format!("bytes={}-", v2.len() / 2).as_str())
    );
    assert!(daemon
        .log()
        .contains("resuming the download a restart interrupted"));
}

#[test]
fn kill_9_during_a_shadow_leaves_no_version_and_is_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let v2 = std::fs::read(crate::common::models().join("digits/model.onnx")).unwrap();
    let files = FileServer::start(vec![("/digits-v2.onnx", v2.clone())]);
    let (mut daemon, port) = daemon(
        dir.path(),
        "n1",
        &broker,
        "shadow_requests = 1000000\nshadow_secs = 3600",
    );
    let topic = "onnxd/n1/models/digits/rollout";
    let client = Client::connect(broker.port, "deployer", &[topic]);
    client.publish(
        "onnxd/n1/models/digits/deploy",
        manifest(&files, &v2, 2, "shadow"),
        Default::default(),
    );
    let status = wait_rollout(&client, topic, 2, &["shadowing", "failed"]);
    assert_eq!(status["state"], "shadowing", "{status}");
    daemon.kill();
    let models = dir.path().join("models");
    assert!(!models.join("digits/2").exists());
    daemon.restart();
    let status = wait_rollout(&client, topic, 2, &["failed"]);
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted by a daemon restart"),
        "{status}"
    );
    assert_eq!(served_version(port), "1");
    assert!(!models.join("digits/2").exists());
    let staging = models.join(".onnxd-staging");
    assert!(
        std::fs::read_dir(&staging).map_or(true, |mut d| d.next().is_none()),
        "staging left over"
    );
}
