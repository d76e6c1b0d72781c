//! `onnxd bench --mqtt` against the real daemon through a real mosquitto: it keeps a window of
//! 16 in flight although the broker takes only 4 unacknowledged publishes at a time (its
//! receive maximum, `max_inflight_messages 4`, announced in CONNACK), so it must wait for the
//! broker's PUBACKs and reuse their packet ids; it counts every reply; a warm-up that gets an
//! error reply fails with the daemon's message. (mosquitto does not police the receive maximum
//! for QoS 1, so this test does not see a client that ignores it; other brokers disconnect it.)
//! And the baseline of `scripts/bench-mqtt`, the Python reference daemon
//! (`bench/mqtt_reference.py`), answers the same load without an error.

use std::process::{Child, Command, Output};
use std::time::Duration;

use serde_json::Value;

use super::common;
use super::harness::{self, start_daemon, Broker, Client};

fn bench(port: u16, model: &str, count: &str) -> Output {
    bench_node(port, "benched", model, count)
}

fn bench_node(port: u16, node: &str, model: &str, count: &str) -> Output {
    let example = common::models().join("digits");
    Command::new(env!("CARGO_BIN_EXE_onnxd"))
        .arg("bench")
        .arg(example.join("model.onnx"))
        .args([
            "--mqtt",
            &format!("127.0.0.1:{port}"),
            "--node",
            node,
            "--model",
            model,
        ])
        .arg("-i")
        .arg(example.join("sample-request.json"))
        .args(["--window", "16", "--count", count, "--warmup", "5", "--json"])
        .output()
        .unwrap()
}

#[test]
fn bench_keeps_its_window_within_the_receive_maximum_and_counts_every_reply() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "max_inflight_messages 4");
    common::copy_example_model(&dir.path().join("models/digits"));
    let mqtt = harness::url_setting(broker.port);
    let daemon = start_daemon(dir.path(), "benched", None, &mqtt);
    let out = bench(broker.port, "digits", "400");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", daemon.log());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = ["requests", "errors", "lost", "window"].map(|k| report[k].as_u64());
    assert_eq!(counts, [Some(400), Some(0), Some(0), Some(16)], "{report}");
    assert!(report["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{report}");

    let wrong = bench(broker.port, "nosuch", "10");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "{stderr}");
    assert!(
        stderr.contains("warm-up request on onnxd/benched/models/nosuch/infer") && stderr.contains("nosuch"),
        "{stderr}"
    );
}

/// Kills the child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_python_reference_daemon_answers_the_bench() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/mqtt_reference.py");
    let model = common::models().join("digits/model.onnx");
    let status = Client::connect(broker.port, "reference-status", &["onnxd/reference/status"]);
    let _reference = Killed(
        Command::new(common::python())
            .arg(script)
            .arg(format!("127.0.0.1:{}", broker.port))
            .arg(model)
            .args(["digits", "reference"])
            .spawn()
            .unwrap(),
    );
    let online = status.next_on("onnxd/reference/status", Duration::from_secs(60));
    assert_eq!(&online.payload[..], b"online");
    let out = bench_node(broker.port, "reference", "digits", "200");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = ["requests", "errors", "lost"].map(|k| report[k].as_u64());
    assert_eq!(counts, [Some(200), Some(0), Some(0)], "{report}");
}
