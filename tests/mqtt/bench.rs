//! `onnxd bench --mqtt` against the real daemon through a real mosquitto: it keeps a window of
//! 16 in flight although the broker takes only 4 unacknowledged publishes at a time (its
//! receive maximum, `max_inflight_messages 4`, announced in CONNACK), so it must wait for the
//! broker's PUBACKs and reuse their packet ids; it counts every reply; a warm-up that gets an
//! error reply fails with the daemon's message. (mosquitto does not police the receive maximum
//! for QoS 1, so this test does not see a client that ignores it; other brokers disconnect it.)

use std::process::{Command, Output};

use serde_json::Value;

use super::common;
use super::harness::{start_daemon, Broker};

fn bench(port: u16, model: &str, count: &str) -> Output {
    let example = common::models().join("digits");
    Command::new(env!("CARGO_BIN_EXE_onnxd"))
        .arg("bench")
        .arg(example.join("model.onnx"))
        .args([
            "--mqtt",
            &format!("127.0.0.1:{port}"),
            "--node",
            "benched",
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
    let mqtt = format!("url = \"mqtt://127.0.0.1:{}\"", broker.port);
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
