//! A small MQTT 5 broker for one client (onnxd), written for the acknowledgement tests: it
//! speaks just enough of the protocol (CONNECT, SUBSCRIBE, PUBLISH/PUBACK at QoS 1, PING,
//! DISCONNECT; `rumqttc`'s codec frames the packets), keeps the client's session across
//! connections, sends the requests itself and misbehaves on purpose, as a real broker may:
//!
//! - `hold`: holds the PUBACKs of the responses until no new response came for 300 ms (a
//!   client within the receive maximum stops at it), then acknowledges them newest first,
//!   with a PUBACK for a packet id the client never used after the first one;
//! - `lose_ack_of`: drops the connection right after the client acknowledged that request
//!   (as if the PUBACK was lost with it), and on the next connection redelivers it with DUP;
//! - `expiring`: sends the odd-numbered requests with an MQTT 5 message expiry interval of 0
//!   (what a broker forwards when a message's lifetime ran out while it waited) and the even
//!   ones with 60 s left.
//!
//! Everything seen is recorded in a [`Log`] the test checks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PingResp, PubAck, Publish, PublishProperties,
    SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Where responses go (the requests' response topic).
pub const REPLY: &str = "client/acks";
/// How long the broker waits for more responses before releasing those it holds.
const HOLD_FOR: Duration = Duration::from_millis(300);
/// The pause between two released PUBACKs, so the client acts on each.
const BETWEEN_ACKS: Duration = Duration::from_millis(40);

/// How the broker behaves.
#[derive(Clone, Debug)]
pub struct Script {
    /// Announced in CONNACK.
    pub receive_maximum: u16,
    /// Requests sent to `onnxd/<node>/models/digits/infer`.
    pub requests: usize,
    /// The node the requests are for.
    pub node: String,
    /// Hold the responses' PUBACKs and release them newest first (with an unknown id).
    pub hold: bool,
    /// Send the next request only once the previous one was acknowledged.
    pub one_at_a_time: bool,
    /// Drop the connection once the client acknowledged this request (first time only).
    pub lose_ack_of: Option<usize>,
    /// Odd requests arrive with no lifetime left, even ones with 60 s.
    pub expiring: bool,
}

impl Script {
    /// `requests` requests to node `n1`, receive maximum 20, no misbehaviour.
    pub fn new(requests: usize) -> Script {
        Script {
            receive_maximum: 20,
            requests,
            node: "n1".into(),
            hold: false,
            one_at_a_time: false,
            lose_ack_of: None,
            expiring: false,
        }
    }
}

/// A response as the broker got it.
#[derive(Clone, Debug)]
pub struct Response {
    /// The request it answers (its correlation data).
    pub request: usize,
    /// The request id the response names.
    pub id: String,
    /// Its error, if it is one.
    pub error: Option<String>,
}

/// What the broker saw.
#[derive(Debug, Default)]
pub struct Log {
    /// CONNECTs.
    pub connections: usize,
    /// Responses in arrival order.
    pub responses: Vec<Response>,
    /// Requests the client acknowledged, in order.
    pub request_acks: Vec<usize>,
    /// Most responses unacknowledged by the broker at once.
    pub max_unacknowledged: usize,
    /// The packet id of the unknown PUBACK sent, if it was.
    pub unknown_ack: Option<u16>,
    /// Requests redelivered with DUP.
    pub redelivered: Vec<usize>,
}

/// The running broker.
pub struct AckBroker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What it saw.
    pub log: Arc<Mutex<Log>>,
    _runtime: tokio::runtime::Runtime,
}

impl AckBroker {
    /// Listens on a free port and serves one connection at a time.
    pub fn start(script: Script) -> AckBroker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let session = Session {
            script,
            log: log.clone(),
            unacknowledged: BTreeMap::new(),
            next_request: 0,
            lost: false,
        };
        runtime.spawn(session.accept(listener));
        AckBroker {
            port,
            log,
            _runtime: runtime,
        }
    }
}

/// The client's session: survives its connections.
struct Session {
    script: Script,
    log: Arc<Mutex<Log>>,
    /// Requests sent and not acknowledged, by packet id.
    unacknowledged: BTreeMap<u16, usize>,
    next_request: usize,
    lost: bool,
}

/// One connection.
struct Connection {
    stream: TcpStream,
    incoming: BytesMut,
    /// Packet ids of the responses whose PUBACK is held, oldest first.
    held: Vec<u16>,
    /// When held PUBACKs are released at the latest.
    release_at: Option<Instant>,
    /// When the requests are sent (a moment after SUBSCRIBE, so status messages pass first).
    send_at: Option<Instant>,
    /// The session was resumed: outstanding requests go again, with DUP.
    redeliver: bool,
}

impl Session {
    async fn accept(mut self, listener: TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            let mut connection = Connection {
                stream,
                incoming: BytesMut::new(),
                held: Vec::new(),
                release_at: None,
                send_at: None,
                redeliver: false,
            };
            // An error or a deliberate drop ends the connection; the session stays.
            let _ = self.serve(&mut connection).await;
        }
    }

    async fn serve(&mut self, c: &mut Connection) -> Result<(), String> {
        let Packet::Connect(..) = c.read().await? else {
            return Err("expected CONNECT".into());
        };
        let session_present = {
            let mut log = self.log.lock().unwrap();
            log.connections += 1;
            log.connections > 1
        };
        c.redeliver = session_present;
        let properties = ConnAckProperties {
            session_expiry_interval: None,
            receive_max: Some(self.script.receive_maximum),
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        c.write(Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
            properties: Some(properties),
        }))
        .await?;
        loop {
            let wake = [c.release_at, c.send_at].into_iter().flatten().min();
            let packet = tokio::select! {
                packet = c.read() => packet?,
                _ = sleep_until(wake) => {
                    if c.send_at.is_some_and(|t| t <= Instant::now()) {
                        c.send_at = None;
                        self.send_requests(c).await?;
                    }
                    if c.release_at.is_some_and(|t| t <= Instant::now()) {
                        self.release(c).await?;
                    }
                    continue;
                }
            };
            if !self.handle(c, packet).await? {
                return Ok(());
            }
        }
    }

    /// One packet from the client; false when the connection is to end.
    async fn handle(&mut self, c: &mut Connection, packet: Packet) -> Result<bool, String> {
        match packet {
            Packet::Subscribe(subscribe) => {
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce))
                    .collect();
                let suback = SubAck {
                    pkid: subscribe.pkid,
                    return_codes: codes,
                    properties: None,
                };
                c.write(Packet::SubAck(suback)).await?;
                c.send_at = Some(Instant::now() + HOLD_FOR);
            }
            Packet::Publish(publish) => self.response(c, publish).await?,
            Packet::PubAck(ack) => {
                let Some(request) = self.unacknowledged.remove(&ack.pkid) else {
                    return Err(format!("PUBACK for request id {} never sent", ack.pkid));
                };
                if self.script.lose_ack_of == Some(request) && !self.lost {
                    self.lost = true;
                    self.unacknowledged.insert(ack.pkid, request);
                    return Ok(false);
                }
                self.log.lock().unwrap().request_acks.push(request);
                if self.script.one_at_a_time {
                    self.send_requests(c).await?;
                }
            }
            Packet::PingReq(_) => c.write(Packet::PingResp(PingResp)).await?,
            Packet::Disconnect(_) => return Ok(false),
            other => return Err(format!("unexpected packet {other:?}")),
        }
        Ok(true)
    }

    /// A PUBLISH from the client: a response (held or acknowledged) or a status message.
    async fn response(&mut self, c: &mut Connection, publish: Publish) -> Result<(), String> {
        if publish.topic != REPLY.as_bytes() {
            return c.write(Packet::PubAck(PubAck::new(publish.pkid, None))).await;
        }
        let request = publish
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.as_ref())
            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
            .ok_or("a response without the request's correlation data")?;
        let body: serde_json::Value = serde_json::from_slice(&publish.payload).map_err(|e| e.to_string())?;
        let response = Response {
            request,
            id: body["id"].as_str().unwrap_or_default().to_string(),
            error: body["error"].as_str().map(String::from),
        };
        self.log.lock().unwrap().responses.push(response);
        if !self.script.hold {
            return c.write(Packet::PubAck(PubAck::new(publish.pkid, None))).await;
        }
        c.held.push(publish.pkid);
        {
            let mut log = self.log.lock().unwrap();
            log.max_unacknowledged = log.max_unacknowledged.max(c.held.len());
        }
        // Released only once the client stops sending: a client that keeps within the receive
        // maximum stops at it, one that does not shows in `max_unacknowledged`.
        c.release_at = Some(Instant::now() + HOLD_FOR);
        Ok(())
    }

    /// Acknowledges the held responses newest first; after the first, once per session, a
    /// PUBACK for an id the client never used.
    async fn release(&mut self, c: &mut Connection) -> Result<(), String> {
        c.release_at = None;
        let mut first = true;
        while let Some(pkid) = c.held.pop() {
            c.write(Packet::PubAck(PubAck::new(pkid, None))).await?;
            tokio::time::sleep(BETWEEN_ACKS).await;
            if std::mem::take(&mut first) && self.log.lock().unwrap().unknown_ack.is_none() {
                let unknown = 60_000;
                self.log.lock().unwrap().unknown_ack = Some(unknown);
                c.write(Packet::PubAck(PubAck::new(unknown, None))).await?;
                tokio::time::sleep(BETWEEN_ACKS).await;
            }
        }
        Ok(())
    }

    /// Redelivers the unacknowledged requests (DUP), then sends new ones: all of them, or the
    /// next one when one at a time and none is outstanding.
    async fn send_requests(&mut self, c: &mut Connection) -> Result<(), String> {
        if std::mem::take(&mut c.redeliver) {
            let outstanding: Vec<(u16, usize)> = self.unacknowledged.iter().map(|(k, v)| (*k, *v)).collect();
            for (pkid, request) in outstanding {
                self.log.lock().unwrap().redelivered.push(request);
                c.write(Packet::Publish(self.request(request, pkid, true)))
                    .await?;
            }
        }
        while self.next_request < self.script.requests {
            if self.script.one_at_a_time && !self.unacknowledged.is_empty() {
                break;
            }
            let request = self.next_request;
            self.next_request += 1;
            let pkid = u16::try_from(request + 1).unwrap();
            self.unacknowledged.insert(pkid, request);
            c.write(Packet::Publish(self.request(request, pkid, false)))
                .await?;
        }
        Ok(())
    }

    fn request(&self, request: usize, pkid: u16, dup: bool) -> Publish {
        let body = serde_json::json!({
            "id": request.to_string(),
            "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                        "data": vec![(request % 16) as f32; 64]}],
        });
        let properties = PublishProperties {
            response_topic: Some(REPLY.into()),
            correlation_data: Some(Bytes::from(request.to_string())),
            message_expiry_interval: self
                .script
                .expiring
                .then_some(if request % 2 == 1 { 0 } else { 60 }),
            ..Default::default()
        };
        let topic = format!("onnxd/{}/models/digits/infer", self.script.node);
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, body.to_string(), Some(properties));
        publish.pkid = pkid;
        publish.dup = dup;
        publish
    }
}

impl Connection {
    async fn read(&mut self) -> Result<Packet, String> {
        loop {
            match Packet::read(&mut self.incoming, None) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
            let read = self.stream.read_buf(&mut self.incoming).await;
            if read.map_err(|e| e.to_string())? == 0 {
                return Err("client closed the connection".into());
            }
        }
    }

    async fn write(&mut self, packet: Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).map_err(|e| e.to_string())?;
        self.stream.write_all(&out).await.map_err(|e| e.to_string())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
