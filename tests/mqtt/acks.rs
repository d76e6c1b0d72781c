//! The acknowledgement path against a broker that misbehaves on purpose ([`AckBroker`]):
//! PUBACKs held and released newest first with one for a packet id onnxd never used, and a
//! request redelivered (DUP) after onnxd answered it. A response must reach the broker for
//! every request onnxd acknowledged, and an answered request must not be answered again.
//!
//! Both fail on the former design, which matched the n-th `Outgoing::Publish` event of
//! `rumqttc` to the n-th queued message and let `rumqttc` choose packet ids: the reversed
//! PUBACKs made `rumqttc` wait on a packet-id collision, the unknown PUBACK dropped the
//! connection in that state, and the collision outlived the reconnect — no message went out
//! again; and the redelivered request was run and answered twice.
//!
//! The same broker checks that a request whose MQTT 5 message expiry ran out is answered
//! `expired` without running, and (being one onnxd stays connected to) that the watchdog stops
//! pinging once the MQTT session's loop hangs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::ack_broker::{AckBroker, Log, Script};
use super::common;
use super::harness::{self, start_daemon_with};

/// The bare digits model as `digits`.
fn digits(dir: &Path) {
    let version = dir.join("models/digits/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
}

/// Waits until `done` holds for the broker's log; panics with the log after `timeout`.
fn wait_for_log(broker: &AckBroker, what: &str, timeout: Duration, done: impl Fn(&Log) -> bool) {
    let until = Instant::now() + timeout;
    loop {
        {
            let log = broker.log.lock().unwrap();
            if done(&log) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; the broker saw {log:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Responses by request.
fn answers(log: &Log) -> BTreeMap<usize, usize> {
    let mut answers = BTreeMap::new();
    for response in &log.responses {
        *answers.entry(response.request).or_default() += 1;
    }
    answers
}

fn metric(port: u16, name: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    harness::sample(&harness::metrics(&runtime, port), name)
}

/// The broker playing `script`, and a daemon (node `n1`, HTTP on `http_port`, extra `env`)
/// serving the digits model through it.
struct Started {
    broker: AckBroker,
    daemon: harness::Daemon,
    http_port: u16,
    dir: tempfile::TempDir,
}

/// Waits until each of the `n` requests was answered and acknowledged.
fn wait_all_answered(broker: &AckBroker, n: usize) {
    wait_for_log(
        broker,
        "every request answered and acknowledged",
        Duration::from_secs(30),
        |log| answers(log).len() == n && log.request_acks.len() == n,
    );
}

fn start(script: Script, env: &[(&str, &str)]) -> Started {
    let dir = tempfile::tempdir().unwrap();
    digits(dir.path());
    let broker = AckBroker::start(script);
    let http_port = harness::free_port();
    let daemon = start_daemon_with(
        dir.path(),
        "n1",
        Some(http_port),
        &harness::url_setting(broker.port),
        env,
    );
    Started {
        broker,
        daemon,
        http_port,
        dir,
    }
}

#[test]
fn reversed_and_unknown_pubacks_lose_nothing_and_keep_the_connection() {
    const N: usize = 12;
    let script = Script {
        receive_maximum: 4,
        hold: true,
        ..Script::new(N)
    };
    let started = start(script, &[]);
    let (broker, http_port) = (&started.broker, started.http_port);
    wait_all_answered(broker, N);
    let log = broker.log.lock().unwrap();
    assert!(
        log.unknown_ack.is_some(),
        "the broker never sent its unknown PUBACK"
    );
    assert_eq!(
        log.connections, 1,
        "an unknown PUBACK cost the connection: {log:#?}"
    );
    assert!(
        log.max_unacknowledged <= 4,
        "more messages unacknowledged than the broker's receive maximum of 4: {log:#?}"
    );
    for response in &log.responses {
        assert_eq!(
            response.id,
            response.request.to_string(),
            "a response carries another request's id: {response:?}"
        );
        assert_eq!(response.error, None, "{response:?}");
    }
    assert_eq!(metric(http_port, "onnxd_mqtt_unexpected_pubacks_total"), 1);
}

#[test]
fn a_request_redelivered_after_its_answer_is_acknowledged_not_run_again() {
    let script = Script {
        one_at_a_time: true,
        lose_ack_of: Some(1),
        ..Script::new(3)
    };
    let started = start(script, &[]);
    let (broker, http_port) = (&started.broker, started.http_port);
    wait_for_log(
        broker,
        "the three requests acknowledged",
        Duration::from_secs(30),
        |log| log.request_acks.len() == 3,
    );
    // Time for a second answer to the redelivered request, were one coming.
    std::thread::sleep(Duration::from_secs(1));
    let log = broker.log.lock().unwrap();
    assert_eq!(log.connections, 2, "{log:#?}");
    assert_eq!(log.redelivered, vec![1], "{log:#?}");
    assert_eq!(
        answers(&log),
        BTreeMap::from([(0, 1), (1, 1), (2, 1)]),
        "each request answered once: {log:#?}"
    );
    assert_eq!(metric(http_port, "onnxd_mqtt_duplicates_suppressed_total"), 1);
    assert_eq!(metric(http_port, "onnxd_mqtt_duplicate_requests_total"), 1);
}

#[test]
fn a_request_whose_message_expiry_ran_out_is_answered_expired_and_not_run() {
    const N: usize = 6;
    let script = Script {
        expiring: true,
        ..Script::new(N)
    };
    let started = start(script, &[]);
    let (broker, http_port) = (&started.broker, started.http_port);
    wait_all_answered(broker, N);
    let log = broker.log.lock().unwrap();
    for response in &log.responses {
        let error = response.error.as_deref();
        if response.request % 2 == 1 {
            assert!(
                error.is_some_and(|e| e.contains("expired")),
                "no lifetime left, yet: {response:?}"
            );
        } else {
            assert_eq!(error, None, "60 s left: {response:?}");
        }
    }
    drop(log);
    assert_eq!(
        metric(http_port, "onnxd_mqtt_requests_total{outcome=\"expired\"}"),
        3
    );
    // Expired requests never reached the engine.
    assert_eq!(
        metric(
            http_port,
            "onnxd_inference_count_total{model=\"digits\",version=\"1\"}"
        ),
        3
    );
}

#[test]
fn watchdog_pings_stop_when_the_mqtt_session_hangs() {
    let socket_dir = tempfile::tempdir().unwrap();
    let notify = common::notify::NotifySocket::bind(socket_dir.path());
    let mut env = notify.env().to_vec();
    env.push(("ONNXD_TEST_STALL", "mqtt"));
    let Started {
        broker,
        daemon,
        dir: _dir,
        ..
    } = start(Script::new(0), &env);
    wait_for_log(&broker, "connected", Duration::from_secs(30), |log| {
        log.connections == 1
    });
    // A connected, idle session is not hung: pings come; once its loop hangs they stop.
    notify.assert_pings_stop(
        "the MQTT session",
        || daemon.signal("USR2"),
        Duration::from_secs(6),
    );
    let log = daemon.log();
    assert!(log.contains("the MQTT session made no turn for"), "{log}");
}
