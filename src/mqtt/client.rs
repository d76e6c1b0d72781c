//! The broker connection: MQTT 5 options from `[mqtt]` (TLS with a pinned CA and client
//! certificate through rustls/ring, user name and password, persistent session with expiry,
//! Last Will `offline` on `P/status`, manual acknowledgements, a packet limit above
//! `max_payload_bytes`, Nagle off), and the task that polls `rumqttc`'s event loop.
//!
//! The poll task never awaits the client (rumqtt#263: that can deadlock); it subscribes on
//! every CONNACK (a broker without the session has no subscriptions), hands requests to their
//! own tasks, reports connection events to the publisher thread in order, and on a dropped
//! connection empties the event loop's own retransmission list — the publisher re-delivers
//! what was not acknowledged (see `publisher.rs`) — then reconnects after a capped exponential
//! backoff with jitter (`rumqttc` itself would retry in a tight loop).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request as ClientRequest};
use rumqttc::{NetworkOptions, Outgoing, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::listen::Listeners;
use super::publisher::{Command, Delivery, LinkEvent, RequestAck};
use super::requests::{Handler, Request};
use super::topics::Topics;
use crate::backoff::Backoff;
use crate::config::MqttConfig;

/// First reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Requests the broker may send before onnxd acknowledges any (MQTT 5 receive maximum).
const RECEIVE_MAXIMUM: u16 = 256;
/// Room above `max_payload_bytes` for the rest of a packet, so an oversize payload still
/// reaches onnxd and gets an error reply instead of being dropped by the broker.
const PACKET_HEADROOM: u64 = 64 << 10;
/// Capacity of the client's request queue.
pub const CLIENT_QUEUE: usize = 1024;

/// A configuration problem of `[mqtt]` the config check could not see (the TLS settings
/// rustls refuses).
#[derive(Debug, thiserror::Error)]
#[error("mqtt.{key}: {message}")]
pub struct ConfigError {
    key: &'static str,
    message: String,
}

fn config_error(key: &'static str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key,
        message: message.to_string(),
    }
}

/// Client options for a validated `[mqtt]` (its files were read when the config loaded).
pub fn options(config: &MqttConfig, topics: &Topics) -> Result<MqttOptions, ConfigError> {
    let mut options = MqttOptions::new(&config.client_id, &config.broker.host, config.broker.port);
    // Nagle off: with it on, a small response waited ~40 ms for the broker's delayed ACK of
    // the previous segment (rumqttc leaves TCP_NODELAY off by default).
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_connection_timeout(5)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(config.session_expiry_secs))
        .set_manual_acks(true)
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_max_packet_size(Some(
            u32::try_from(config.max_payload_bytes + PACKET_HEADROOM).unwrap_or(u32::MAX),
        ))
        .set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user.clone(), password.expose().to_string());
    }
    if config.broker.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
            tls_config(config)?,
        ))));
    }
    Ok(options)
}

fn tls_config(config: &MqttConfig) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| config_error("ca_file", e))?;
                roots.add(cert).map_err(|e| config_error("ca_file", e))?;
            }
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("url", e))?
            .with_root_certificates(roots);
    let Some(identity) = &config.identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = CertificateDer::pem_slice_iter(&identity.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("client_cert", e))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key.expose().as_bytes())
        .map_err(|e| config_error("client_key", e))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_error("client_cert", e))
}

/// What the poll task needs.
pub struct EventLoopTask {
    /// The `rumqttc` event loop.
    pub eventloop: EventLoop,
    /// Its client (subscribe and acknowledge without awaiting).
    pub client: AsyncClient,
    /// Topic layout.
    pub topics: Topics,
    /// The publisher thread.
    pub publisher: Sender<Command>,
    /// Runs requests.
    pub handler: Arc<Handler>,
    /// Topics other parts of the daemon listen to.
    pub listeners: Arc<Listeners>,
    /// Becomes `true` when the daemon stops.
    pub stop: watch::Receiver<bool>,
}

impl EventLoopTask {
    /// Polls until stopped: after a clean DISCONNECT, or at the first connection error or
    /// failed attempt once `stop` is set.
    pub async fn run(mut self) {
        let mut epoch = 0u64;
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut connected = false;
        loop {
            let event = if connected {
                self.eventloop.poll().await
            } else {
                tokio::select! {
                    event = self.eventloop.poll() => event,
                    _ = self.stop.wait_for(|stop| *stop) => return,
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    epoch += 1;
                    connected = true;
                    backoff.reset();
                    self.handler.stats.connected();
                    tracing::info!(session_present = ack.session_present, "MQTT connected");
                    let filters = self
                        .topics
                        .request_filters()
                        .into_iter()
                        .map(|f| Filter::new(f, QoS::AtLeastOnce));
                    if let Err(e) = self.client.try_subscribe_many(filters) {
                        tracing::error!(error = %e, "cannot queue the MQTT subscriptions");
                    }
                    self.listeners.connected(&self.client);
                    self.link(LinkEvent::Connected);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(event) => self.event(event, epoch),
                Err(e) => {
                    connected = false;
                    self.listeners.disconnected();
                    self.handler.stats.connection_error();
                    self.forget_retransmissions(epoch);
                    if *self.stop.borrow() {
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.wait_for(|stop| *stop) => return,
                    }
                }
            }
        }
    }

    fn link(&self, event: LinkEvent) {
        let _ = self.publisher.send(Command::Link(event));
    }

    fn event(&self, event: Event, epoch: u64) {
        match event {
            Event::Incoming(Packet::Publish(publish)) => {
                if self.listeners.deliver(&publish.topic, &publish.payload) {
                    let _ = self.client.try_ack(&publish);
                } else {
                    self.request(publish, epoch);
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => self.link(LinkEvent::Sent(pkid)),
            Event::Incoming(Packet::PubAck(ack)) => self.link(LinkEvent::Acked {
                pkid: ack.pkid,
                accepted: matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ),
            }),
            _ => {}
        }
    }

    fn request(&self, mut publish: rumqttc::v5::mqttbytes::v5::Publish, epoch: u64) {
        if publish.retain {
            // A retained message on a request topic is a stale request, not a new one.
            self.handler.stats.retained_ignored();
            let _ = self.client.try_ack(&publish);
            return;
        }
        let Some(taken) = self.handler.take() else {
            // Stopping: left unacknowledged, the broker hands it to the next session.
            tracing::debug!(topic = ?publish.topic, "MQTT request left for redelivery: stopping");
            return;
        };
        if publish.dup {
            self.handler.stats.duplicate();
        }
        let request = Request::from_publish(&publish);
        publish.payload = bytes::Bytes::new();
        let ack = (publish.qos != QoS::AtMostOnce).then_some(RequestAck { publish, epoch });
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            let entry = taken.handler().reply(request).await;
            let _ = publisher.send(Command::Deliver(Box::new(Delivery { entry, ack })));
        });
    }

    /// After a dropped connection: reports what the event loop had already done (its buffered
    /// events), then empties its retransmission list; the publisher re-delivers those messages.
    fn forget_retransmissions(&mut self, epoch: u64) {
        let buffered: Vec<Event> = self.eventloop.state.events.drain(..).collect();
        for event in buffered {
            // Requests read but not yet handed out are redelivered by the broker.
            if !matches!(event, Event::Incoming(Packet::Publish(_))) {
                self.event(event, epoch);
            }
        }
        let unprocessed = self
            .eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, ClientRequest::Publish(p) if p.pkid == 0 && p.qos != QoS::AtMostOnce))
            .count();
        self.eventloop.pending.clear();
        self.link(LinkEvent::Disconnected { unprocessed });
    }
}
