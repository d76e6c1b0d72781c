//! Topics other parts of the daemon listen to (`Mqtt::listen`, as Home Assistant discovery
//! does with HA's birth message), in-process against a real mosquitto: a topic listened to
//! before the connection is up (subscribed with the connection's first SUBSCRIBE) and two
//! added while connected (one SUBSCRIBE waits for the other's SUBACK) all get their retained
//! and live messages; each message is acknowledged (the broker's log shows a PUBACK for it)
//! and none is taken for a request; after a broker restart that lost the session, every topic
//! is subscribed again.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use onnxd::config::Config;
use onnxd::mqtt::Mqtt;
use onnxd::serving::Router;

use super::harness::{wait_until, Broker, Client};

const WAIT: Duration = Duration::from_secs(20);
const CLIENT_ID: &str = "onnxd-listen1";
const STATUS: &str = "onnxd/listen1/status";

/// Publishes with `mosquitto_pub` at QoS 1 (`-r`: retained).
fn publish(port: u16, topic: &str, message: &str, retain: bool) {
    let mut command = Command::new("mosquitto_pub");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"]);
    command.args(["-t", topic, "-m", message]);
    if retain {
        command.arg("-r");
    }
    let status = command
        .status()
        .expect("mosquitto_pub is installed by scripts/setup-test");
    assert!(status.success(), "mosquitto_pub {topic}");
}

/// The next message on a listener's channel, within [`WAIT`].
fn next(runtime: &tokio::runtime::Runtime, listener: &mut UnboundedReceiver<Bytes>, what: &str) -> String {
    let message = runtime.block_on(tokio::time::timeout(WAIT, listener.recv()));
    let message = message
        .unwrap_or_else(|_| panic!("no message for {what}"))
        .expect("listener open");
    String::from_utf8_lossy(&message).into_owned()
}

/// Waits for the daemon's `online` on its status topic (published after its SUBSCRIBE).
fn online(watcher: &Client) {
    let until = Instant::now() + WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if watcher.next_on(STATUS, left).payload == "online" {
            return;
        }
    }
}

/// Every PUBLISH mosquitto sent to onnxd on `topic` got its PUBACK (from the broker's log).
fn all_acknowledged(broker_dir: &Path, topic: &str) -> bool {
    let log = std::fs::read_to_string(broker_dir.join("mosquitto.log")).unwrap_or_default();
    let sent = format!("Sending PUBLISH to {CLIENT_ID} (");
    let mids: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(&sent) && line.contains(&format!("'{topic}'")))
        .filter_map(|line| line.split(", m").nth(1)?.split(',').next())
        .collect();
    !mids.is_empty()
        && mids
            .iter()
            .all(|mid| log.contains(&format!("Received PUBACK from {CLIENT_ID} (Mid: {mid},")))
}

fn config(dir: &Path, port: u16) -> Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let path = dir.join("listen1.toml");
    std::fs::write(
        &path,
        format!(
            "node_id = \"listen1\"\nstate_dir = \"{}/state\"\n[repository]\npath = \"{}/models\"\n\
             [http]\nlisten = \"\"\n[grpc]\nlisten = \"\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    Config::load(&path).expect("valid config")
}

#[test]
fn listened_topics_are_subscribed_on_every_connect_and_when_added_and_never_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "");
    for topic in ["test/early", "test/late", "test/later"] {
        publish(broker.port, topic, &format!("retained {topic}"), true);
    }
    broker.stop();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let config = config(dir.path(), broker.port);
    let mqtt = Mqtt::start(
        &config,
        Arc::new(Router::default()),
        CancellationToken::new(),
        None,
    )
    .expect("MQTT starts")
    .expect("MQTT configured");
    // The broker is down: this one goes out with the connection's first SUBSCRIBE.
    let mut early = mqtt.listen("test/early");
    assert_eq!(mqtt.stats.snapshot().connections, 0);
    broker.restart();
    let watcher = Client::connect(broker.port, "watcher", &[STATUS]);
    online(&watcher);
    assert_eq!(
        next(&runtime, &mut early, "early (retained)"),
        "retained test/early"
    );
    // Connected: subscribed at once, the second after the first one's SUBACK.
    let mut late = mqtt.listen("test/late");
    let mut later = mqtt.listen("test/later");
    assert_eq!(next(&runtime, &mut late, "late (retained)"), "retained test/late");
    assert_eq!(
        next(&runtime, &mut later, "later (retained)"),
        "retained test/later"
    );
    publish(broker.port, "test/early", "live", false);
    assert_eq!(next(&runtime, &mut early, "early (live)"), "live");

    // A restart that loses the broker's session: every topic is subscribed again.
    broker.stop();
    std::fs::remove_file(dir.path().join("broker/mosquitto.db")).expect("mosquitto saved its session");
    broker.restart();
    wait_until("onnxd to reconnect", WAIT, || {
        mqtt.stats.snapshot().connections == 2
    });
    online(&watcher);
    for topic in ["test/early", "test/late", "test/later"] {
        publish(broker.port, topic, "after the restart", false);
    }
    assert_eq!(next(&runtime, &mut early, "early (restart)"), "after the restart");
    assert_eq!(next(&runtime, &mut late, "late (restart)"), "after the restart");
    assert_eq!(next(&runtime, &mut later, "later (restart)"), "after the restart");

    let broker_dir = dir.path().join("broker");
    for topic in ["test/early", "test/late", "test/later"] {
        wait_until(&format!("PUBACKs for {topic}"), WAIT, || {
            all_acknowledged(&broker_dir, topic)
        });
    }
    let stats = mqtt.stats.snapshot();
    assert!(
        stats.requests.is_empty(),
        "taken for requests: {:?}",
        stats.requests
    );
    assert_eq!(stats.retained_ignored, 0, "retained messages ignored as requests");
    runtime.block_on(mqtt.stop(Duration::from_secs(5)));
}
