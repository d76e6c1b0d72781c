//! Real parts for the MQTT tests: a `mosquitto` the test starts on a free port (persistence
//! in a directory the `mosquitto` user can write, so a restart keeps sessions), the `onnxd`
//! binary run as a daemon on a generated config, and an MQTT 5 test client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::common;
use crate::common::process::Onnxd;

pub use crate::common::free_port;

pub use super::common::wait_until;

/// The `[mqtt]` line that points the daemon at a broker on 127.0.0.1:`port`.
pub fn url_setting(port: u16) -> String {
    format!("url = \"mqtt://127.0.0.1:{port}\"")
}

/// A mosquitto process.
pub struct Broker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts mosquitto with persistence (`max_queued_messages 0` = unlimited), Nagle off on
    /// its sockets (`set_tcp_nodelay true`: else a small publish can wait ~40 ms for a
    /// delayed ACK) and `extra` config lines; `listener` replaces the plain listener line when
    /// given.
    ///
    /// `max_inflight_messages 0` lifts the receive maximum of 20 the broker would announce,
    /// unless `extra` sets `max_inflight_messages` itself: after a reconnect, the test
    /// client's `rumqttc` replays its whole pending list without flow control, and past the
    /// announced window packet ids collide and its own requests are dropped
    /// (`MqttState::outgoing_publish` keeps only the last collision). onnxd chooses its own
    /// packet ids and keeps within the window; the tests that run the broker's default
    /// (`max_inflight_messages 20`) check that, with a test client that does not reconnect.
    pub fn start(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let dir = dir.join("broker");
        std::fs::create_dir_all(&dir).unwrap();
        // mosquitto started as root drops to the `mosquitto` user: it must be able to write here.
        let _ = Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(dir.parent().unwrap())
            .status();
        let config = dir.join("mosquitto.conf");
        let inflight = match extra.contains("max_inflight_messages") {
            true => "",
            false => "max_inflight_messages 0\n",
        };
        let listener = if extra.contains("listener ") {
            String::new()
        } else {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n")
        };
        std::fs::write(
            &config,
            format!(
                "{listener}{}persistence true\npersistence_location {}/\nautosave_interval 1\n\
                 max_queued_messages 0\n{inflight}set_tcp_nodelay true\nlog_dest file {}/mosquitto.log\nlog_type all\n",
                extra.replace("{port}", &port.to_string()),
                dir.display(),
                dir.display()
            ),
        )
        .unwrap();
        let mut broker = Broker {
            port,
            config,
            child: None,
        };
        broker.restart();
        broker
    }

    /// Starts the (stopped) broker again on the same port and persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed by scripts/setup");
        self.child = Some(child);
        let port = self.port;
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM (mosquitto saves its persistence) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub use crate::common::process::signal;

/// An `onnxd run` process (see [`Onnxd`]).
pub type Daemon = Onnxd;

/// Copies the example digits model (bare as `digits`, with its sidecar and labels as
/// `digitsimg`) and the identity fixtures (FP32, INT64, BOOL, FP16, BYTES) into a repository.
pub fn repository(repo: &Path) {
    common::copy_example_model(&repo.join("digitsimg"));
    std::fs::create_dir_all(repo.join("digits/1")).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        repo.join("digits/1/model.onnx"),
    )
    .unwrap();
    for dtype in ["FP32", "INT64", "BOOL", "FP16", "BYTES"] {
        let dir = repo.join(dtype.to_lowercase()).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            common::fixture(&format!("dtype_{dtype}.onnx")),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
}

/// Writes `<dir>/<node>.toml` (repository `<dir>/models`, state `<dir>/state-<node>`) with
/// `mqtt` lines added to `[mqtt]` (tables such as `[[camera]]` may follow them), and starts the
/// daemon; waits for "onnxd ready".
pub fn start_daemon(dir: &Path, node: &str, http_port: Option<u16>, mqtt: &str) -> Daemon {
    start_daemon_with(dir, node, http_port, mqtt, &[])
}

/// [`start_daemon`] with more environment variables.
pub fn start_daemon_with(
    dir: &Path,
    node: &str,
    http_port: Option<u16>,
    mqtt: &str,
    env: &[(&str, &str)],
) -> Daemon {
    let config = dir.join(format!("{node}.toml"));
    let listen = http_port.map_or(String::new(), |p| format!("127.0.0.1:{p}"));
    std::fs::write(
        &config,
        format!(
            "node_id = \"{node}\"\nstate_dir = \"state-{node}\"\n[engine]\nintra_threads = 1\n\
             [repository]\npath = \"models\"\n[http]\nlisten = \"{listen}\"\n[grpc]\nlisten = \"\"\n[mqtt]\n{mqtt}\n"
        ),
    )
    .unwrap();
    Onnxd::start(&config, env)
}

/// An MQTT 5 test client with a persistent session; every message it receives lands in
/// `messages`. It reconnects by itself (250 ms pause) when the broker goes away.
pub struct Client {
    /// The client.
    pub client: AsyncClient,
    /// Received messages.
    pub messages: Receiver<Publish>,
    /// The runtime its event loop runs on.
    pub runtime: tokio::runtime::Runtime,
    skipped: std::cell::RefCell<Vec<Publish>>,
}

impl Client {
    /// Connects as `id` to the broker on `port` and subscribes to `filters` (QoS 1).
    pub fn connect(port: u16, id: &str, filters: &[&str]) -> Client {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_max_packet_size(Some(64 << 20))
            .set_keep_alive(Duration::from_secs(10));
        Client::with_options(options, filters)
    }

    /// Connects with `options`, subscribes to `filters` (QoS 1).
    pub fn with_options(options: MqttOptions, filters: &[&str]) -> Client {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (client, mut eventloop) = AsyncClient::new(options, 100_000);
        let (sender, messages) = channel();
        let (connected_tx, connected) = channel();
        let resubscribe = client.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        runtime.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in &filters {
                            resubscribe
                                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                                .unwrap();
                        }
                        if filters.is_empty() {
                            let _ = connected_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = connected_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = sender.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        });
        connected
            .recv_timeout(Duration::from_secs(10))
            .expect("test client connected");
        Client {
            client,
            messages,
            runtime,
            skipped: Default::default(),
        }
    }

    /// Publishes at QoS 1 (queued; the client retries after reconnects).
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, properties: PublishProperties) {
        let client = self.client.clone();
        let (topic, payload) = (topic.to_string(), payload.into());
        self.runtime
            .block_on(client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties))
            .unwrap();
    }

    /// The next message (kept ones first), within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Publish> {
        let kept = self.skipped.borrow_mut().pop();
        kept.or_else(|| self.messages.recv_timeout(timeout).ok())
    }

    /// The next message on `topic`; messages on other topics are kept for later calls.
    pub fn next_on(&self, topic: &str, timeout: Duration) -> Publish {
        let mut skipped = self.skipped.borrow_mut();
        if let Some(i) = skipped.iter().position(|m| m.topic == topic.as_bytes()) {
            return skipped.remove(i);
        }
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no message on {topic}"));
            if message.topic == topic.as_bytes() {
                return message;
            }
            skipped.push(message);
        }
    }
}

/// A JSON request's response: the payload parsed.
pub fn json(message: &Publish) -> serde_json::Value {
    serde_json::from_slice(&message.payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&message.payload)))
}

/// Counts answers on `topic` by request id into `seen` until every id in `0..n` has one, or
/// the timeout; messages on other topics are dropped.
pub fn collect_ids(
    client: &Client,
    topic: &str,
    n: usize,
    timeout: Duration,
    seen: &mut HashMap<usize, usize>,
) {
    let until = Instant::now() + timeout;
    while seen.len() < n {
        let Some(message) = client.recv(until.saturating_duration_since(Instant::now())) else {
            break;
        };
        if message.topic == topic.as_bytes() {
            count_answer(&message, seen);
        }
    }
}

/// Counts one answer by its request id.
pub fn count_answer(message: &Publish, seen: &mut HashMap<usize, usize>) {
    let body = json(message);
    assert!(body.get("error").is_none(), "error response: {body}");
    let id: usize = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("numeric id");
    *seen.entry(id).or_default() += 1;
}

/// The daemon's `/metrics` text, read over HTTP on `port`.
pub fn metrics(runtime: &tokio::runtime::Runtime, port: u16) -> String {
    runtime.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

/// The value of one sample (`name` with its labels, as written) in a metrics text; 0 when
/// the sample is absent.
pub fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
