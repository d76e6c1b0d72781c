//! The task that keeps the broker connection: connects (backoff with jitter between
//! attempts), subscribes on every CONNACK (a broker without the session has no
//! subscriptions) to the request filters and the [`super::listen`]ed topics, writes what the
//! publisher thread hands it — publishes that already carry their packet id, request
//! acknowledgements, DISCONNECT — and the subscriptions of topics listened to later, pings
//! within the keep alive, and reports what it reads: requests to their own tasks, messages on
//! listened topics to their listeners (acknowledged, never answered), PUBACKs and connection
//! events to the publisher, in order.
//!
//! Every command carries the connection (epoch) it was made for; one made for a connection
//! that has ended is dropped, never written on the next one: a PUBACK for a request would
//! acknowledge whatever the broker sent with that id since, and a publish was already given
//! up on by the publisher (its id may be in use again). A PUBACK is reported as it comes; the
//! publisher matches it by id and counts the ones it does not know. A request the broker
//! redelivers (DUP) after its response was already safe is acknowledged without running it
//! again (see [`super::answered`]).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Disconnect, DisconnectReasonCode, Packet, PingReq, PubAck, PubAckReason, Publish, SubAck,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};

use super::answered::{self, Answered};
use super::listen::Listeners;
use super::publisher::{Command, Delivery, LinkEvent, RequestAck};
use super::requests::{Handler, Request};
use super::subscriptions::Subscriptions;
use super::topics::Topics;
use super::wire::{self, Link, Settings, WireError};
use crate::backoff::Backoff;

/// First reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Commands written per flush at most.
const BATCH: usize = 256;
/// How often an idle connection's loop still makes a turn (its heartbeat for the watchdog).
const BEAT: Duration = Duration::from_millis(250);

/// Test hook (debug builds only): once set, the connection's loop hangs at its next beat, as
/// one stuck in a write to a broker that stopped reading would.
#[cfg(debug_assertions)]
pub static STALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the connection is asked to write.
#[derive(Debug)]
pub enum Outbound {
    /// A QoS 1 message with its packet id, for connection `epoch`.
    Publish {
        /// The connection it was made for.
        epoch: u64,
        /// The message (boxed: it is large beside the other commands).
        publish: Box<Publish>,
    },
    /// Acknowledge the request with this packet id, received on connection `epoch`.
    Ack {
        /// The connection the request arrived on.
        epoch: u64,
        /// Its packet id.
        pkid: u16,
    },
    /// Subscribe a listened-to topic (added while connection `epoch` was up).
    Subscribe {
        /// The connection it was made for.
        epoch: u64,
        /// The topic.
        topic: String,
    },
    /// Clean exit: DISCONNECT (the broker drops the Last Will), then the task ends.
    Disconnect,
}

/// The handle that queues [`Outbound`] commands to the session task.
#[derive(Clone, Debug)]
pub struct Wire {
    commands: mpsc::UnboundedSender<Outbound>,
}

impl Wire {
    /// A handle and the receiving end for [`Session`].
    pub fn channel() -> (Wire, mpsc::UnboundedReceiver<Outbound>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        (Wire { commands }, receiver)
    }

    /// Queues a message for connection `epoch`.
    pub fn publish(&self, epoch: u64, publish: Publish) {
        let _ = self.commands.send(Outbound::Publish {
            epoch,
            publish: Box::new(publish),
        });
    }

    /// Queues the acknowledgement of a request received on connection `epoch`.
    pub fn ack(&self, epoch: u64, pkid: u16) {
        let _ = self.commands.send(Outbound::Ack { epoch, pkid });
    }

    /// Queues DISCONNECT.
    pub fn disconnect(&self) {
        let _ = self.commands.send(Outbound::Disconnect);
    }

    /// A handle that does not keep the session's command channel open.
    pub fn downgrade(&self) -> WeakWire {
        WeakWire {
            commands: self.commands.downgrade(),
        }
    }
}

/// A [`Wire`] for [`super::listen`]: the session still ends (its commands closed) when the
/// publisher's handle is gone.
#[derive(Clone, Debug)]
pub struct WeakWire {
    commands: mpsc::WeakUnboundedSender<Outbound>,
}

impl WeakWire {
    /// Queues the acknowledgement of a message received on connection `epoch` (nothing once
    /// the session is gone; a stale epoch's is dropped, and the broker redelivers).
    pub fn ack(&self, epoch: u64, pkid: u16) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Outbound::Ack { epoch, pkid });
        }
    }

    /// Queues the subscription of `topic` on connection `epoch` (nothing once the session is
    /// gone).
    pub fn subscribe(&self, epoch: u64, topic: String) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Outbound::Subscribe { epoch, topic });
        }
    }
}

/// What the session task needs.
pub struct Session {
    /// Where and how to connect.
    pub settings: Settings,
    /// Topic layout.
    pub topics: Topics,
    /// The publisher thread.
    pub publisher: Sender<Command>,
    /// Runs requests.
    pub handler: Arc<Handler>,
    /// Requests answered in this session.
    pub answered: Arc<Answered>,
    /// Topics other parts of the daemon listen to.
    pub listeners: Arc<Listeners>,
    /// The connection's SUBSCRIBEs (start with `Subscriptions::default()`).
    pub subscriptions: Subscriptions,
    /// Commands from [`Wire`].
    pub commands: mpsc::UnboundedReceiver<Outbound>,
    /// Becomes `true` when the daemon stops.
    pub stop: watch::Receiver<bool>,
    /// Model delivery, which takes deploy and rollback commands.
    pub deploys: Option<Arc<crate::delivery::Delivery>>,
    /// Acknowledges delivery commands once delivery has taken them (from their own tasks).
    pub acks: WeakWire,
}

/// How a connection ended.
enum End {
    /// DISCONNECT sent: the task ends.
    Clean,
    /// The connection failed.
    Failed(SessionError),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the broker disconnected: {reason:?} {message}")]
    BrokerDisconnect {
        reason: DisconnectReasonCode,
        message: String,
    },
    #[error("no PINGRESP within the keep alive of {0:?}")]
    NoPingResponse(Duration),
}

impl Session {
    /// Connects and serves until stopped: after a clean DISCONNECT, or once `stop` is set.
    pub async fn run(mut self) {
        let mut epoch = 0u64;
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            let mut stop = self.stop.clone();
            let attempt = tokio::select! {
                attempt = wire::connect(&self.settings) => attempt,
                _ = stopped(&mut stop) => return,
            };
            let error = match attempt {
                Ok((link, ack)) => {
                    epoch += 1;
                    backoff.reset();
                    let end = self.serve(link, ack, epoch).await;
                    self.listeners.disconnected();
                    self.link(LinkEvent::Disconnected { epoch });
                    match end {
                        End::Clean => return,
                        End::Failed(e) => e,
                    }
                }
                Err(e) => SessionError::Wire(e),
            };
            self.handler.stats.connection_error();
            if *self.stop.borrow() {
                return;
            }
            let delay = backoff.next_delay();
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    fn link(&self, event: LinkEvent) {
        let _ = self.publisher.send(Command::Link(event));
    }

    /// One connection: subscribe, report it, then read, write and ping until it ends.
    async fn serve(&mut self, mut link: Link, ack: ConnAck, epoch: u64) -> End {
        let properties = ack.properties.as_ref();
        let keep_alive = properties
            .and_then(|p| p.server_keep_alive)
            .map_or(self.settings.keep_alive(), wire::keep_alive_of);
        let receive_maximum = properties.and_then(|p| p.receive_max).unwrap_or(u16::MAX);
        self.handler.stats.connected();
        tracing::info!(session_present = ack.session_present, "MQTT connected");
        if !ack.session_present {
            self.answered.forget_all();
        }
        self.subscriptions.reset();
        let mut filters = self.topics.request_filters();
        if self.deploys.is_some() {
            filters.extend(self.topics.command_filters());
        }
        filters.extend(self.listeners.connected(epoch));
        if let Some(subscribe) = self.subscriptions.subscribe(filters) {
            if let Err(e) = link.send(Packet::Subscribe(subscribe)) {
                return End::Failed(e.into());
            }
        }
        self.link(LinkEvent::Connected {
            epoch,
            receive_maximum,
        });
        match self.exchange(&mut link, epoch, keep_alive).await {
            Ok(()) => End::Clean,
            Err(e) => End::Failed(e),
        }
    }

    async fn exchange(
        &mut self,
        link: &mut Link,
        epoch: u64,
        keep_alive: Duration,
    ) -> Result<(), SessionError> {
        link.flush().await?;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut beat = tokio::time::interval(BEAT);
        let mut awaiting_pong = false;
        let mut stop = self.stop.clone();
        loop {
            self.handler.stats.session_beat.beat();
            tokio::select! {
                packet = link.read() => {
                    match packet? {
                        Packet::PingResp(_) => awaiting_pong = false,
                        packet => self.incoming(link, packet, epoch)?,
                    }
                    // Acknowledgements written in answer (ignored or repeated requests).
                    link.flush().await?;
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ok(()) };
                    if self.outgoing(link, command, epoch) {
                        link.flush().await?;
                        return Ok(());
                    }
                    let mut batch = 1;
                    while batch < BATCH {
                        let Ok(command) = self.commands.try_recv() else { break };
                        batch += 1;
                        if self.outgoing(link, command, epoch) {
                            link.flush().await?;
                            return Ok(());
                        }
                    }
                    link.flush().await?;
                }
                _ = beat.tick() => {
                    #[cfg(debug_assertions)]
                    if STALL.load(std::sync::atomic::Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Err(SessionError::NoPingResponse(keep_alive));
                    }
                    link.send(Packet::PingReq(PingReq))?;
                    link.flush().await?;
                    awaiting_pong = true;
                }
                _ = stopped(&mut stop) => break,
            }
        }
        // Stopping while connected (the publisher did not get to DISCONNECT).
        link.send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))?;
        link.flush().await?;
        Ok(())
    }
}

impl Session {
    /// A packet from the broker; an error ends the connection.
    fn incoming(&mut self, link: &mut Link, packet: Packet, epoch: u64) -> Result<(), SessionError> {
        match packet {
            Packet::Publish(publish) => self.received(link, publish, epoch)?,
            Packet::PubAck(ack) => self.link(LinkEvent::Acked {
                pkid: ack.pkid,
                accepted: matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ),
            }),
            Packet::SubAck(ack) => self.subscribed(link, &ack)?,
            Packet::Disconnect(disconnect) => {
                return Err(SessionError::BrokerDisconnect {
                    reason: disconnect.reason_code,
                    message: disconnect
                        .properties
                        .and_then(|p| p.reason_string)
                        .unwrap_or_default(),
                })
            }
            other => {
                tracing::warn!(
                    packet = wire::packet_name(&other),
                    "unexpected MQTT packet from the broker, ignored"
                )
            }
        }
        Ok(())
    }

    /// A SUBACK: refusals reported, and the subscriptions that waited for it sent.
    fn subscribed(&mut self, link: &mut Link, ack: &SubAck) -> Result<(), SessionError> {
        let Some(answered) = self.subscriptions.acknowledged(ack) else {
            tracing::warn!(pkid = ack.pkid, "MQTT SUBACK for no SUBSCRIBE in flight, ignored");
            return Ok(());
        };
        let requests = self.topics.request_filters();
        for (filter, reason) in answered.refused {
            if requests.contains(&filter) {
                tracing::error!(%filter, ?reason, "the broker refused the MQTT subscription: no requests arrive on it");
            } else {
                tracing::error!(%filter, ?reason, "the broker refused the MQTT subscription: its listener gets no messages");
            }
        }
        match answered.next {
            Some(next) => link.send(Packet::Subscribe(next))?,
            // From here on, commands and requests sent to this node reach it.
            None => tracing::info!("MQTT subscribed"),
        }
        Ok(())
    }

    /// A message from the broker: a model delivery command, or handed to the listeners of its
    /// topic (and acknowledged), otherwise a request.
    fn received(&self, link: &mut Link, publish: Publish, epoch: u64) -> Result<(), SessionError> {
        if publish.qos == QoS::ExactlyOnce {
            // onnxd subscribes at QoS 1; a broker must not send more.
            tracing::warn!(topic = ?publish.topic, "QoS 2 MQTT message ignored (subscribed at QoS 1)");
            return Ok(());
        }
        if super::deploy::handle(self.deploys.as_ref(), &self.topics, &self.acks, &publish, epoch) {
            return Ok(());
        }
        if self.listeners.deliver(&publish.topic, &publish.payload) {
            if publish.qos == QoS::AtLeastOnce {
                link.send(Packet::PubAck(PubAck::new(publish.pkid, None)))?;
            }
            return Ok(());
        }
        self.request(link, publish, epoch)
    }

    /// A request: ignored when retained, acknowledged at once when it is a redelivery of one
    /// already answered, otherwise run on its own task.
    fn request(&self, link: &mut Link, mut publish: Publish, epoch: u64) -> Result<(), SessionError> {
        let acknowledge = publish.qos == QoS::AtLeastOnce;
        if publish.retain {
            // A retained message on a request topic is a stale request, not a new one.
            self.handler.stats.retained_ignored();
            if acknowledge {
                link.send(Packet::PubAck(PubAck::new(publish.pkid, None)))?;
            }
            return Ok(());
        }
        let fingerprint = answered::fingerprint(&publish);
        if publish.dup {
            self.handler.stats.duplicate();
        }
        if acknowledge
            && self
                .answered
                .already_answered(publish.pkid, publish.dup, fingerprint)
        {
            self.handler.stats.duplicate_suppressed();
            tracing::debug!(
                pkid = publish.pkid,
                "MQTT request redelivered after its answer: acknowledged, not run again"
            );
            link.send(Packet::PubAck(PubAck::new(publish.pkid, None)))?;
            return Ok(());
        }
        let Some(taken) = self.handler.take() else {
            // Stopping: left unacknowledged, the broker hands it to the next session.
            tracing::debug!(topic = ?publish.topic, "MQTT request left for redelivery: stopping");
            return Ok(());
        };
        let request = Request::from_publish(&publish);
        publish.payload = bytes::Bytes::new();
        let ack = acknowledge.then_some(RequestAck {
            pkid: publish.pkid,
            epoch,
            fingerprint,
        });
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            let entry = taken.handler().reply(request).await;
            let _ = publisher.send(Command::Deliver(Box::new(Delivery { entry, ack })));
        });
        Ok(())
    }

    /// Writes a command into the link's buffer; true for DISCONNECT (the task then ends).
    fn outgoing(&mut self, link: &mut Link, command: Outbound, epoch: u64) -> bool {
        match command {
            Outbound::Disconnect => {
                let disconnect = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
                let _ = link.send(Packet::Disconnect(disconnect));
                return true;
            }
            // Made for a connection that has ended: see the module comment.
            Outbound::Publish { epoch: made_for, .. }
            | Outbound::Ack { epoch: made_for, .. }
            | Outbound::Subscribe { epoch: made_for, .. }
                if made_for != epoch => {}
            Outbound::Subscribe { topic, .. } => self.subscribe_late(link, topic),
            Outbound::Ack { pkid, .. } => {
                if let Err(e) = link.send(Packet::PubAck(PubAck::new(pkid, None))) {
                    tracing::error!(error = %e, "cannot write an MQTT acknowledgement");
                }
            }
            Outbound::Publish { publish, .. } => {
                let pkid = publish.pkid;
                let size = publish.size();
                if let Err(e) = link.send(Packet::Publish(*publish)) {
                    tracing::error!(error = %e, size, "cannot send an MQTT message: refused");
                    self.link(LinkEvent::Unsendable {
                        pkid,
                        size,
                        limit: link.max_outgoing(),
                    });
                }
            }
        }
        false
    }
}

impl Session {
    /// Subscribes a topic listened to since the connection came up (after the SUBSCRIBE in
    /// flight, if there is one).
    fn subscribe_late(&mut self, link: &mut Link, topic: String) {
        let Some(subscribe) = self.subscriptions.subscribe([topic]) else {
            return;
        };
        if let Err(e) = link.send(Packet::Subscribe(subscribe)) {
            tracing::error!(error = %e, "cannot write an MQTT SUBSCRIBE: subscribed on the next connection");
            self.subscriptions.unsent();
        }
    }
}

/// Waits until `stop` is set (its guard is not held across awaits: the task stays `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
