//! `onnxd bench --mqtt HOST:PORT`: an MQTT 5 load generator for a daemon behind a broker (onnxd
//! or any other that speaks SPEC §6's request/response). One connection (onnxd's own
//! packet-level [`crate::mqtt::wire`] link, Nagle off) driven by one task on a current-thread
//! runtime publishes the same request at QoS 1 with a response topic and a counter as
//! correlation data, keeping `window` requests in flight; replies come from its subscription to
//! that response topic and are matched by correlation data. What it writes in answer to a batch
//! of packets read (PUBACKs, the next requests) goes out in one write, so the load generator
//! takes little of the CPU the daemon and the broker share with it. Reports
//! throughput, latency percentiles and the client's CPU time per request; a progress line goes
//! to stderr once per second.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PingReq, PubAck, Publish, PublishProperties, Subscribe,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bench::{process_cpu, Percentiles};
use super::infer::{read_inputs, InferError, Served};
use crate::mqtt::packet_ids::{PacketIds, SUBSCRIBE_ID};
use crate::mqtt::wire::{self, Link, Settings};
use crate::repository::loader::LoadSettings;
use crate::tensor::kserve::tensor_to_json;
use crate::tensor::Tensors;

/// Largest reply accepted (and request sent), bytes.
const MAX_PACKET: u32 = 64 << 20;
/// How long the SUBACK may take (connecting has the link's own 10 s).
const SUBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep alive announced to the broker.
const KEEP_ALIVE_SECS: u16 = 30;

/// A failed MQTT bench: what went wrong, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum MqttBenchError {
    /// The broker address is not `HOST:PORT`.
    #[error("--mqtt expects the broker as HOST:PORT, got '{0}'")]
    Address(String),
    /// The client's runtime could not be built.
    #[error("cannot start the MQTT client runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The broker could not be reached, refused the client, or dropped it.
    #[error("MQTT broker {broker}: {message}")]
    Broker {
        /// `HOST:PORT`.
        broker: String,
        /// What happened.
        message: String,
    },
    /// A warm-up request failed or got no reply.
    #[error("warm-up request on {topic}: {message}")]
    Warmup {
        /// Request topic.
        topic: String,
        /// The daemon's error, or the missing reply.
        message: String,
    },
}

/// Where the requests go.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `<prefix>/<node>/models/<model>/infer`.
    pub request_topic: String,
    /// Where this client wants its replies (unique to the run).
    pub response_topic: String,
}

impl MqttTarget {
    /// The target for `model` on `node` (default: this host's name, as the daemon's own
    /// default) under `prefix`, through the broker at `broker` (`HOST:PORT`).
    pub fn new(
        broker: &str,
        prefix: &str,
        node: Option<&str>,
        model: &str,
    ) -> Result<MqttTarget, MqttBenchError> {
        let (host, port) = broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| MqttBenchError::Address(broker.to_string()))?;
        let node = node.map_or_else(
            || hostname::get().map_or_else(|_| "localhost".into(), |h| h.to_string_lossy().into_owned()),
            str::to_string,
        );
        let run = format!("{}-{}", std::process::id(), fastrand::u32(..));
        Ok(MqttTarget {
            host: host.to_string(),
            port,
            request_topic: format!("{prefix}/{node}/models/{model}/infer"),
            response_topic: format!("onnxd-bench/{run}/replies"),
        })
    }
}

/// How much load to generate.
#[derive(Clone, Debug)]
pub struct MqttPlan {
    /// Requests in flight (1 = one at a time).
    pub window: usize,
    /// Stop sending after this long (unless `count` is set).
    pub duration: Duration,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Unmeasured requests first, one at a time.
    pub warmup: u64,
    /// Print a progress line on stderr once per second.
    pub progress: bool,
    /// A request without a reply after this long counts as lost.
    pub timeout: Duration,
}

/// Measured figures.
#[derive(Debug, Serialize)]
pub struct MqttReport {
    /// Broker `host:port`.
    pub broker: String,
    /// Request topic.
    pub topic: String,
    /// Requests in flight.
    pub window: usize,
    /// Requests answered without an error.
    pub requests: u64,
    /// Replies that carried an `error`.
    pub errors: u64,
    /// Requests without a reply within the timeout.
    pub lost: u64,
    /// From the first request to the last reply.
    pub seconds: f64,
    /// Answered requests per second.
    pub throughput: f64,
    /// Round-trip latency of the answered requests, microseconds.
    pub latency_us: Percentiles,
    /// CPU time of this (client) process per request, microseconds.
    pub client_cpu_us_per_request: f64,
}

/// The request body: a single `.json` request file as it is (after checking it parses), else
/// the KServe V2 JSON of the `-i` inputs, else of the model's synthetic inputs.
pub fn payload(
    model_path: &Path,
    input_args: &[String],
    settings: &LoadSettings,
) -> Result<Vec<u8>, InferError> {
    if let [file] = input_args {
        if file.ends_with(".json") && !file.contains('=') {
            read_inputs(input_args, None)?;
            return std::fs::read(file).map_err(|e| InferError::Input {
                file: file.clone(),
                message: format!("cannot read: {e}"),
            });
        }
    }
    let served = Served::load(model_path, settings)?;
    let inputs = if input_args.is_empty() {
        served.unit_inputs()?
    } else {
        read_inputs(input_args, served.single_input().as_deref())?.tensors
    };
    Ok(json_request(&inputs))
}

/// A KServe V2 JSON request carrying `inputs`.
pub fn json_request(inputs: &Tensors) -> Vec<u8> {
    let inputs: Vec<Value> = inputs
        .iter()
        .map(|(name, t)| {
            json!({"name": name, "shape": t.shape(), "datatype": t.dtype().kserve_name(), "data": tensor_to_json(t)})
        })
        .collect();
    serde_json::to_vec(&json!({ "inputs": inputs })).expect("request serialises")
}

/// Connects, warms up, runs the plan and reports.
pub fn run(target: &MqttTarget, payload: Vec<u8>, plan: &MqttPlan) -> Result<MqttReport, MqttBenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut session = Session::connect(target, payload.into()).await?;
        session.warm_up(plan).await?;
        let cpu_before = process_cpu();
        let measured = session.measure(plan).await?;
        let cpu = process_cpu().saturating_sub(cpu_before);
        session.disconnect().await;
        let requests = measured.latencies.len() as u64;
        Ok(MqttReport {
            broker: format!("{}:{}", target.host, target.port),
            topic: target.request_topic.clone(),
            window: plan.window.max(1),
            requests,
            errors: measured.errors,
            lost: measured.lost,
            seconds: measured.seconds,
            throughput: requests as f64 / measured.seconds.max(1e-9),
            latency_us: Percentiles::of(measured.latencies),
            client_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
        })
    })
}

/// A failure of the connection to `target`'s broker.
fn broker_error(target: &MqttTarget, message: impl std::fmt::Display) -> MqttBenchError {
    MqttBenchError::Broker {
        broker: format!("{}:{}", target.host, target.port),
        message: message.to_string(),
    }
}

/// A reply: its correlation data, the error it carries if any, when it arrived.
struct Reply {
    correlation: u64,
    error: Option<String>,
    at: Instant,
}

/// The one field of a reply the bench looks at; the rest is skipped unparsed.
#[derive(Deserialize)]
struct ReplyBody {
    #[serde(default)]
    error: Option<Value>,
}

/// The error a reply carries, if any. Only the leading JSON object is read (a binary reply's
/// header is one; its raw tensors follow); a payload that does not start with one is an error.
fn reply_error(payload: &[u8]) -> Option<String> {
    match serde_json::Deserializer::from_slice(payload)
        .into_iter::<ReplyBody>()
        .next()
    {
        Some(Ok(ReplyBody { error: None })) => None,
        Some(Ok(ReplyBody { error: Some(e) })) => {
            Some(e.as_str().map_or_else(|| e.to_string(), str::to_string))
        }
        Some(Err(e)) => Some(format!("reply is not KServe V2 JSON: {e}")),
        None => Some("empty reply".into()),
    }
}

/// Figures of the measured part.
struct Measured {
    latencies: Vec<f64>,
    errors: u64,
    lost: u64,
    seconds: f64,
}

/// A connected client with its requests in flight. One task owns the connection: the packets
/// it writes in answer to what it read (PUBACKs of replies, the requests that replace them)
/// are buffered and go out in one write per batch read.
struct Session {
    link: Link,
    target: MqttTarget,
    payload: Bytes,
    /// Correlation data of the next request.
    next: u64,
    /// Requests without a reply yet, by correlation, with when they were sent.
    sent: HashMap<u64, Instant>,
    /// Packet ids of requests the broker has not acknowledged yet.
    ids: PacketIds,
    /// How many of those the broker takes at most (its MQTT 5 receive maximum).
    receive_maximum: usize,
    /// When something was last written (a PINGREQ goes out after half the keep alive).
    last_write: Instant,
}

impl Session {
    async fn connect(target: &MqttTarget, payload: Bytes) -> Result<Session, MqttBenchError> {
        let client_id = format!("onnxd-bench-{}-{}", std::process::id(), fastrand::u32(..));
        let settings = Settings::plain(
            target.host.clone(),
            target.port,
            client_id,
            KEEP_ALIVE_SECS,
            MAX_PACKET,
        );
        let (link, ack) = wire::connect(&settings)
            .await
            .map_err(|e| broker_error(target, e))?;
        let receive_maximum = ack.properties.and_then(|p| p.receive_max).unwrap_or(u16::MAX);
        let mut session = Session {
            link,
            target: target.clone(),
            payload,
            next: 0,
            sent: HashMap::new(),
            ids: PacketIds::default(),
            receive_maximum: usize::from(receive_maximum.max(1)),
            last_write: Instant::now(),
        };
        session.subscribe().await?;
        Ok(session)
    }

    fn broker_error(&self, message: impl std::fmt::Display) -> MqttBenchError {
        broker_error(&self.target, message)
    }

    /// Subscribes to the response topic and waits for the SUBACK.
    async fn subscribe(&mut self) -> Result<(), MqttBenchError> {
        let filter = Filter::new(self.target.response_topic.clone(), QoS::AtLeastOnce);
        let mut subscribe = Subscribe::new(filter, None);
        subscribe.pkid = SUBSCRIBE_ID;
        self.link
            .send(Packet::Subscribe(subscribe))
            .map_err(|e| self.broker_error(e))?;
        self.flush().await?;
        let deadline = Instant::now() + SUBACK_TIMEOUT;
        loop {
            let packet = tokio::time::timeout_at(deadline.into(), self.link.read())
                .await
                .map_err(|_| self.broker_error(format!("no SUBACK within {} s", SUBACK_TIMEOUT.as_secs())))?
                .map_err(|e| self.broker_error(e))?;
            if let Packet::SubAck(ack) = packet {
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => Ok(()),
                    code => Err(self.broker_error(format!("subscription refused: {code:?}"))),
                };
            }
        }
    }

    /// Whether the broker takes another request now (its receive maximum).
    fn may_publish(&self) -> bool {
        self.ids.outstanding() < self.receive_maximum
    }

    /// Buffers one request (QoS 1, response topic, correlation data = a counter); sent by the
    /// next [`Session::flush`].
    fn send(&mut self) -> Result<(), MqttBenchError> {
        let correlation = self.next;
        self.next += 1;
        let properties = PublishProperties {
            response_topic: Some(self.target.response_topic.clone()),
            correlation_data: Some(Bytes::copy_from_slice(&correlation.to_be_bytes())),
            ..PublishProperties::default()
        };
        let mut publish = Publish::new(
            self.target.request_topic.clone(),
            QoS::AtLeastOnce,
            self.payload.clone(),
            Some(properties),
        );
        publish.pkid = self
            .ids
            .allocate()
            .ok_or_else(|| self.broker_error("no free packet id"))?;
        self.link
            .send(Packet::Publish(publish))
            .map_err(|e| self.broker_error(e))?;
        self.sent.insert(correlation, Instant::now());
        Ok(())
    }

    /// Writes what was buffered.
    async fn flush(&mut self) -> Result<(), MqttBenchError> {
        self.link.flush().await.map_err(|e| self.broker_error(e))?;
        self.last_write = Instant::now();
        Ok(())
    }

    /// Waits until `deadline` for packets; handles the first and every other one already
    /// read, and returns the replies among them (none at the deadline).
    async fn receive(&mut self, deadline: Instant) -> Result<Vec<Reply>, MqttBenchError> {
        let packets = match tokio::time::timeout_at(deadline.into(), self.link.read_ready()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(packets) => packets.map_err(|e| self.broker_error(e))?,
        };
        let mut replies = Vec::new();
        for packet in packets {
            replies.extend(self.handle(packet)?);
        }
        Ok(replies)
    }

    /// One packet from the broker: a reply is acknowledged (in the write buffer) and returned;
    /// a PUBACK frees its request's packet id.
    fn handle(&mut self, packet: Packet) -> Result<Option<Reply>, MqttBenchError> {
        match packet {
            Packet::Publish(publish) => {
                let at = Instant::now();
                if publish.qos != QoS::AtMostOnce {
                    self.link
                        .send(Packet::PubAck(PubAck::new(publish.pkid, None)))
                        .map_err(|e| self.broker_error(e))?;
                }
                let correlation = publish
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_data.as_deref())
                    .and_then(|c| Some(u64::from_be_bytes(c.try_into().ok()?)));
                Ok(correlation.map(|correlation| Reply {
                    correlation,
                    error: reply_error(&publish.payload),
                    at,
                }))
            }
            Packet::PubAck(ack) => {
                self.ids.release(ack.pkid);
                Ok(None)
            }
            Packet::Disconnect(d) => Err(self.broker_error(format!("disconnected: {:?}", d.reason_code))),
            _ => Ok(None),
        }
    }

    /// Pings when nothing was written for half the keep alive.
    fn keep_alive(&mut self) -> Result<(), MqttBenchError> {
        if self.last_write.elapsed() >= Duration::from_secs(KEEP_ALIVE_SECS.into()) / 2 {
            self.link
                .send(Packet::PingReq(PingReq))
                .map_err(|e| self.broker_error(e))?;
        }
        Ok(())
    }

    /// Sends the warm-up requests one at a time; any error or missing reply fails the bench.
    async fn warm_up(&mut self, plan: &MqttPlan) -> Result<(), MqttBenchError> {
        let topic = self.target.request_topic.clone();
        let warmup_error = |message: String| MqttBenchError::Warmup {
            topic: topic.clone(),
            message,
        };
        for _ in 0..plan.warmup {
            self.send()?;
            self.flush().await?;
            let deadline = Instant::now() + plan.timeout;
            let reply = loop {
                if Instant::now() >= deadline {
                    return Err(warmup_error(format!(
                        "no reply within {} s: is a daemon subscribed to this topic (node id, model name, prefix)?",
                        plan.timeout.as_secs_f64()
                    )));
                }
                let replies = self.receive(deadline).await?;
                self.flush().await?;
                if let Some(reply) = replies
                    .into_iter()
                    .find(|r| self.sent.contains_key(&r.correlation))
                {
                    break reply;
                }
            };
            self.sent.remove(&reply.correlation);
            if let Some(e) = reply.error {
                return Err(warmup_error(e));
            }
        }
        self.sent.clear();
        Ok(())
    }

    /// Keeps `window` requests in flight until the duration or count is reached, then waits
    /// for the last replies (or their timeout).
    async fn measure(&mut self, plan: &MqttPlan) -> Result<Measured, MqttBenchError> {
        let started = Instant::now();
        let deadline = started + plan.duration;
        let window = plan.window.max(1);
        let mut measured = Measured {
            latencies: Vec::new(),
            errors: 0,
            lost: 0,
            seconds: 0.0,
        };
        let mut issued = 0u64;
        let may_issue = |issued: u64| plan.count.map_or(Instant::now() < deadline, |c| issued < c);
        let mut progress = Progress::new(started);
        let mut last_reply = started;
        loop {
            while self.sent.len() < window && self.may_publish() && may_issue(issued) {
                self.send()?;
                issued += 1;
            }
            if self.sent.is_empty() && !may_issue(issued) {
                break;
            }
            self.flush().await?;
            for reply in self.receive(progress.next).await? {
                // A reply to a warm-up request or a duplicate (QoS 1) is not counted.
                let Some(sent) = self.sent.remove(&reply.correlation) else {
                    continue;
                };
                last_reply = reply.at;
                match reply.error {
                    None => measured.latencies.push((reply.at - sent).as_secs_f64() * 1e6),
                    Some(_) => measured.errors += 1,
                }
            }
            if Instant::now() >= progress.next {
                let expired = self.expire(plan.timeout);
                measured.lost += expired;
                // Requests timed out and the broker holds every packet id it may: it stopped
                // acknowledging, and no request can be sent any more.
                if expired > 0 && self.sent.is_empty() && !self.may_publish() {
                    return Err(self.broker_error(format!(
                        "the broker left {} requests unacknowledged for {} s",
                        self.ids.outstanding(),
                        plan.timeout.as_secs_f64()
                    )));
                }
                self.keep_alive()?;
                progress.tick(&measured, plan.progress);
            }
        }
        measured.seconds = (last_reply - started).as_secs_f64();
        Ok(measured)
    }

    /// Forgets requests in flight for longer than `timeout`; returns how many.
    fn expire(&mut self, timeout: Duration) -> u64 {
        let before = self.sent.len();
        self.sent.retain(|_, sent| sent.elapsed() < timeout);
        (before - self.sent.len()) as u64
    }

    /// Says goodbye (DISCONNECT), best effort.
    async fn disconnect(&mut self) {
        let goodbye = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
        if self.link.send(Packet::Disconnect(goodbye)).is_ok() {
            let _ = self.link.flush().await;
        }
    }
}

/// The once-a-second progress line.
struct Progress {
    started: Instant,
    next: Instant,
    shown: u64,
}

impl Progress {
    fn new(started: Instant) -> Progress {
        Progress {
            started,
            next: started + Duration::from_secs(1),
            shown: 0,
        }
    }

    /// A second passed: prints the line (when asked to) and sets the next.
    fn tick(&mut self, measured: &Measured, print: bool) {
        let done = measured.latencies.len() as u64;
        if print {
            eprintln!(
                "mqtt bench: {:>4.0} s  {done} replies  {} req/s  {} errors  {} lost",
                self.started.elapsed().as_secs_f64(),
                done - self.shown,
                measured.errors,
                measured.lost
            );
        }
        self.shown = done;
        self.next += Duration::from_secs(1);
    }
}

impl std::fmt::Display for MqttReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "mqtt://{} {}, window {}", self.broker, self.topic, self.window)?;
        writeln!(
            f,
            "{} requests ({} errors, {} lost) in {:.2} s: {:.1} req/s",
            self.requests, self.errors, self.lost, self.seconds, self.throughput
        )?;
        let p = &self.latency_us;
        writeln!(
            f,
            "latency  mean {:.1} us  p50 {:.1}  p90 {:.1}  p99 {:.1}",
            p.mean, p.p50, p.p90, p.p99
        )?;
        writeln!(
            f,
            "client CPU {:.1} us per request",
            self.client_cpu_us_per_request
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn targets_parse_the_broker_and_build_the_topics() {
        let t = MqttTarget::new("127.0.0.1:1884", "onnxd", Some("n1"), "digits").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 1884));
        assert_eq!(t.request_topic, "onnxd/n1/models/digits/infer");
        assert!(t.response_topic.starts_with("onnxd-bench/"));
        assert_eq!(
            MqttTarget::new("[::1]:9", "p", Some("n"), "m").unwrap().host,
            "::1"
        );
        for bad in ["127.0.0.1", ":1883", "host:x", "host:70000"] {
            let err = MqttTarget::new(bad, "onnxd", Some("n"), "m").unwrap_err();
            assert!(err.to_string().contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn replies_with_an_error_or_not_json_are_errors() {
        assert_eq!(reply_error(br#"{"model_name": "m", "outputs": []}"#), None);
        assert_eq!(
            reply_error(br#"{"id": "1", "error": "model 'x' not found"}"#).as_deref(),
            Some("model 'x' not found")
        );
        // A binary reply: the JSON header, then raw bytes.
        assert_eq!(reply_error(b"{\"outputs\": []}\x00\x01\xff"), None);
        assert!(reply_error(b"\xff\x00").is_some());
        assert!(reply_error(b"").is_some());
    }

    #[test]
    fn requests_are_kserve_json() {
        let t = Tensor::from_values(vec![2], &[1.5f32, -2.0]).unwrap();
        let body: Value = serde_json::from_slice(&json_request(&vec![("x".into(), t)])).unwrap();
        assert_eq!(
            body,
            json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}]})
        );
    }
}
