//! SIGTERM drain (SPEC §9): with 50 requests in flight — 25 over HTTP, 25 over MQTT — the
//! daemon stops taking work (new HTTP connections refused, a new MQTT request left to the
//! broker), answers all 50, publishes `stopped` after them and exits 0; the request it left
//! to the broker is answered by the next run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

use super::common;
use super::harness::{self, json, start_daemon, Broker, Client};

const WAIT: Duration = Duration::from_secs(30);
const EACH: usize = 25;

/// A request for the slow fixture (tens of ms per inference) with a numeric id.
fn slow_request(i: usize) -> Value {
    json!({"id": i.to_string(), "inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": vec![(i % 7) as f32 / 7.0; 512]}]})
}

#[test]
fn sigterm_answers_the_requests_in_flight_then_says_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let version = dir.path().join("models/slow/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(common::fixture("slow.onnx"), version.join("model.onnx")).unwrap();
    let http_port = harness::free_port();
    let mqtt = harness::url_setting(broker.port);
    let mut daemon = start_daemon(dir.path(), "d1", Some(http_port), &mqtt);
    let client = Client::connect(broker.port, "drainer", &["client/drain", "onnxd/d1/status"]);
    assert_eq!(&client.next_on("onnxd/d1/status", WAIT).payload[..], b"online");

    // 25 over HTTP, 25 over MQTT, all at once; one inference thread works through them.
    let http: Vec<_> = (0..EACH)
        .map(|i| {
            let url = format!("http://127.0.0.1:{http_port}/v2/models/slow/infer");
            client.runtime.spawn(async move {
                let response = reqwest::Client::new()
                    .post(url)
                    .json(&slow_request(i))
                    .send()
                    .await?;
                let status = response.status();
                let body: Value = response.json().await?;
                anyhow::Ok((status, body))
            })
        })
        .collect();
    let reply = PublishProperties {
        response_topic: Some("client/drain".into()),
        ..Default::default()
    };
    for i in EACH..2 * EACH {
        client.publish(
            "onnxd/d1/models/slow/infer",
            slow_request(i).to_string(),
            reply.clone(),
        );
    }
    // All 50 are in the daemon (answered or queued; one runs) before SIGTERM.
    let labels = "{model=\"slow\",version=\"1\"}";
    let mut answered_before = 0;
    harness::wait_until("50 requests taken", WAIT, || {
        let metrics = harness::metrics(&client.runtime, http_port);
        answered_before = harness::sample(
            &metrics,
            &format!("onnxd_inference_request_success_total{labels}"),
        );
        let queued = harness::sample(&metrics, &format!("onnxd_inference_pending_requests{labels}"));
        answered_before + queued >= 2 * EACH as u64 - 1
    });
    assert!(
        answered_before < 10,
        "too fast to test a drain: {answered_before} of 50 done"
    );
    let terminated = Instant::now();
    daemon.signal("TERM");

    // Intake stops at once: a new connection is refused, a new MQTT request is not taken.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err(),
        "HTTP still accepts connections while draining"
    );
    client.publish(
        "onnxd/d1/models/slow/infer",
        slow_request(2 * EACH).to_string(),
        reply.clone(),
    );

    // Every request in flight is answered.
    for task in http {
        let (status, body) = client.runtime.block_on(task).unwrap().expect("an HTTP answer");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outputs"][0]["shape"], json!([1, 1]), "{body}");
    }
    let mut seen = HashMap::new();
    let stopped_at = loop {
        let message = client.recv(WAIT).expect("MQTT replies, then `stopped`");
        if message.topic == "onnxd/d1/status" {
            assert_eq!(&message.payload[..], b"stopped", "{}", daemon.log());
            break seen.len();
        }
        harness::count_answer(&message, &mut seen);
    };
    assert_eq!(
        stopped_at,
        EACH,
        "`stopped` after every MQTT reply: {seen:?}\n{}",
        daemon.log()
    );
    assert!(
        (EACH..2 * EACH).all(|i| seen.contains_key(&i)),
        "MQTT replies: {seen:?}"
    );
    assert!(!seen.contains_key(&(2 * EACH)), "a request taken after SIGTERM");
    assert!(daemon.wait_success(), "exit status:\n{}", daemon.log());
    let drained = terminated.elapsed();

    // The next run answers the request the stopping daemon left to the broker.
    daemon.restart();
    let late = json(&client.next_on("client/drain", WAIT));
    assert_eq!(
        late["id"],
        (2 * EACH).to_string(),
        "the request left to the broker: {late}"
    );
    eprintln!("drained 50 requests ({answered_before} done at SIGTERM) in {drained:?}");
}
