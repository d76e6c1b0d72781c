//! The delivery side of MQTT: one thread that owns the durable [`Outbox`] and knows, for every
//! QoS 1 message onnxd publishes, whether the broker has acknowledged it.
//!
//! Handing a message to the connection only queues it; the broker's PUBACK is what makes it
//! safe. This thread gives every message its packet id before handing it over (see
//! [`super::packet_ids`]) and keeps it in `inflight` under that id until the PUBACK with the
//! same id comes — in whatever order the broker acknowledges. A PUBACK with an id not in
//! flight (never sent, already acknowledged, or given up on) is logged and counted, and
//! acknowledges nothing. When the connection drops, every message not acknowledged is this
//! thread's to re-deliver (from the outbox, with new ids); nothing is retransmitted behind
//! its back.
//!
//! Delivery rules (SPEC §6):
//! - A request is acknowledged to the broker only after its response was acknowledged by the
//!   broker, or written and synced to the outbox — and only on the connection it arrived on
//!   (after a reconnect the broker redelivers it instead).
//! - While disconnected, or while the outbox still holds older messages, responses are
//!   appended to the outbox (order is kept), synced once per batch (group commit), and
//!   replayed in order after reconnect.
//! - While connected, a response that finds the send window (at most the broker's receive
//!   maximum) full waits in memory, in order, for a PUBACK to free a place: its request is not
//!   acknowledged yet, so a crash loses nothing (the broker redelivers the request). Only past
//!   [`MAX_WAITING`] such responses does the outbox take them. (The broker may hand onnxd
//!   more requests than it takes replies unacknowledged: mosquitto with its default
//!   `max_inflight_messages 20` announces a receive maximum of 20, yet sends onnxd, which
//!   announces 256, more requests than that.)
//! - Once a request's response is safe, the request is remembered as answered, so a
//!   redelivery of it is acknowledged without running it again (see [`super::answered`]).
//! - Status messages (`online`, model states) are never outboxed: they are re-published on
//!   every connect. `stopped` is published on a clean exit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

use super::answered::Answered;
use super::outbox::{Entry, Outbox, Seq};
use super::packet_ids::PacketIds;
use super::session::Wire;
use super::stats::MqttStats;
use super::topics::Topics;
use crate::serving::Router;

/// Most messages awaiting PUBACK (lowered to the broker's receive maximum); past it responses
/// go to the outbox.
const WINDOW: usize = 256;
/// Most responses waiting in memory for a place in the send window; past it they go to the
/// outbox.
const MAX_WAITING: usize = 4096;
/// A message not acknowledged this long after it went out is written to the outbox.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(20);
/// How often model states are compared with what was last published.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// How long a clean exit waits for `stopped` to be acknowledged.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A QoS 1 request to acknowledge once its response is safe.
#[derive(Debug)]
pub struct RequestAck {
    /// The packet id the broker gave it.
    pub pkid: u16,
    /// The connection it arrived on (counted from 1 by the session task).
    pub epoch: u64,
    /// What identifies it besides its id (see [`super::answered`]).
    pub fingerprint: u64,
}

/// What the session task saw on the connection, in order.
#[derive(Debug)]
pub enum LinkEvent {
    /// A CONNACK: connection `epoch` starts; the broker takes at most `receive_maximum`
    /// unacknowledged messages.
    Connected {
        /// The connection, counted from 1.
        epoch: u64,
        /// The broker's receive maximum.
        receive_maximum: u16,
    },
    /// A PUBACK; `accepted` is false when the broker refused the message.
    Acked {
        /// Packet id.
        pkid: u16,
        /// Whether the broker accepted it.
        accepted: bool,
    },
    /// A message could not be written at all (over the broker's maximum packet size).
    Unsendable {
        /// Its packet id.
        pkid: u16,
        /// Its size in bytes.
        size: usize,
        /// The broker's limit.
        limit: Option<u32>,
    },
    /// Connection `epoch` ended: nothing sent on it will be acknowledged.
    Disconnected {
        /// The connection.
        epoch: u64,
    },
}

/// A response or event to deliver, and the request to acknowledge once it is safe.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub entry: Entry,
    /// The request it answers.
    pub ack: Option<RequestAck>,
}

/// Input of the publisher thread.
#[derive(Debug)]
pub enum Command {
    /// Deliver a message.
    Deliver(Box<Delivery>),
    /// A connection event.
    Link(LinkEvent),
    /// A retained state message (camera status): published now when connected and again
    /// after every reconnect; never outboxed (only the latest state matters).
    Retain {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// Publish `stopped`, disconnect, sync the outbox and exit.
    Stop,
}

/// What a queued message is, so its fate can be decided when its PUBACK comes or does not.
enum Origin {
    /// A fresh response; kept so it can go to the outbox if it is not acknowledged.
    Live(Box<Delivery>),
    /// A message replayed from the outbox.
    Replay(Seq),
    /// A status message (re-published on every connect anyway).
    Status,
}

struct Token {
    origin: Origin,
    sent: Instant,
}

/// What the publisher thread works with.
pub struct Parts {
    /// The connection's command queue.
    pub wire: Wire,
    /// The durable outbox.
    pub outbox: Outbox,
    /// The serving core (model states).
    pub router: Arc<Router>,
    /// Topic layout.
    pub topics: Topics,
    /// Counters.
    pub stats: Arc<MqttStats>,
    /// Requests answered in this session.
    pub answered: Arc<Answered>,
}

/// Starts the publisher thread.
pub fn spawn(parts: Parts) -> (Sender<Command>, JoinHandle<()>) {
    let (commands, inbox) = crossbeam_channel::unbounded();
    let Parts {
        wire,
        outbox,
        router,
        topics,
        stats,
        answered,
    } = parts;
    let publisher = Publisher {
        wire,
        outbox,
        router,
        topics,
        stats,
        answered,
        epoch: 0,
        connected: false,
        window: WINDOW,
        ids: PacketIds::default(),
        inflight: HashMap::new(),
        waiting: VecDeque::new(),
        synced_acks: Vec::new(),
        published_states: BTreeMap::new(),
        retained: BTreeMap::new(),
        outbox_dirty: false,
    };
    let thread = std::thread::Builder::new()
        .name("mqtt-publisher".into())
        .spawn(move || publisher.run(inbox))
        .expect("spawn the MQTT publisher thread");
    (commands, thread)
}

struct Publisher {
    wire: Wire,
    outbox: Outbox,
    router: Arc<Router>,
    topics: Topics,
    stats: Arc<MqttStats>,
    answered: Arc<Answered>,
    /// The current connection (valid while `connected`).
    epoch: u64,
    connected: bool,
    /// Messages that may await PUBACK at once on this connection.
    window: usize,
    /// Packet ids in use on this connection.
    ids: PacketIds,
    /// Handed to the connection, awaiting PUBACK, by packet id.
    inflight: HashMap<u16, Token>,
    /// Responses waiting for a place in the send window (connected, outbox empty), oldest
    /// first.
    waiting: VecDeque<Box<Delivery>>,
    /// Requests to acknowledge once the outbox is synced.
    synced_acks: Vec<RequestAck>,
    /// Model state JSON last published, by model.
    published_states: BTreeMap<String, String>,
    /// Other retained states, by topic, re-published on every connect.
    retained: BTreeMap<String, Vec<u8>>,
    outbox_dirty: bool,
}

impl Publisher {
    fn run(mut self, inbox: Receiver<Command>) {
        let mut last_status = Instant::now() - STATUS_EVERY;
        loop {
            self.stats.publisher_beat.beat();
            match inbox.recv_timeout(STATUS_EVERY / 2) {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(command) => {
                    if self.handle(command).is_break() {
                        break;
                    }
                    // Group commit: take whatever else is ready before syncing once.
                    for command in inbox.try_iter().take(1024) {
                        if self.handle(command).is_break() {
                            return self.stop(&inbox);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = Instant::now();
                self.publish_model_states();
                self.expire_inflight();
            }
            self.send_waiting();
            self.replay();
            self.sync();
        }
        self.stop(&inbox);
    }

    fn handle(&mut self, command: Command) -> std::ops::ControlFlow<()> {
        match command {
            Command::Stop => return std::ops::ControlFlow::Break(()),
            Command::Deliver(delivery) => self.deliver(delivery),
            Command::Link(event) => self.link(event),
            Command::Retain { topic, payload } => {
                if self.connected {
                    self.queue_entry(&status_entry(topic.clone(), payload.clone()), Origin::Status);
                }
                // An empty payload clears a retained message: nothing to re-publish after it.
                if payload.is_empty() {
                    self.retained.remove(&topic);
                } else {
                    self.retained.insert(topic, payload);
                }
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    fn deliver(&mut self, delivery: Box<Delivery>) {
        let live = self.connected && self.outbox.is_empty();
        if live && self.waiting.is_empty() && self.window_left() > 0 {
            let publish = publish_of(&delivery.entry);
            self.send(publish, Origin::Live(delivery));
        } else if live && self.waiting.len() < MAX_WAITING {
            self.waiting.push_back(delivery);
        } else {
            self.keep(*delivery);
        }
    }

    /// Sends the responses waiting for the window while it has room — unless the outbox took
    /// a message meanwhile (a PUBACK overdue): then they follow it there, in order.
    fn send_waiting(&mut self) {
        if !self.outbox.is_empty() {
            self.keep_waiting();
            return;
        }
        while self.window_left() > 0 {
            let Some(delivery) = self.waiting.pop_front() else {
                return;
            };
            let publish = publish_of(&delivery.entry);
            self.send(publish, Origin::Live(delivery));
        }
    }

    /// Moves the waiting responses to the outbox, oldest first.
    fn keep_waiting(&mut self) {
        while let Some(delivery) = self.waiting.pop_front() {
            self.keep(*delivery);
        }
    }

    fn window_left(&self) -> usize {
        self.window.saturating_sub(self.ids.outstanding())
    }

    /// Hands a message (QoS 1) with a new packet id to the connection and remembers it until
    /// its PUBACK; false when it cannot go now (not connected, no id left) — a live response
    /// then goes to the outbox.
    fn queue_entry(&mut self, entry: &Entry, origin: Origin) -> bool {
        self.send(publish_of(entry), origin)
    }

    fn send(&mut self, mut publish: Publish, origin: Origin) -> bool {
        let Some(pkid) = self.connected.then(|| self.ids.allocate()).flatten() else {
            if let Origin::Live(delivery) = origin {
                self.keep(*delivery);
            }
            return false;
        };
        publish.pkid = pkid;
        self.wire.publish(self.epoch, publish);
        self.inflight.insert(
            pkid,
            Token {
                origin,
                sent: Instant::now(),
            },
        );
        true
    }

    /// Appends to the outbox; the request is acknowledged once the outbox is synced.
    fn keep(&mut self, Delivery { entry, ack }: Delivery) {
        match self.outbox.append(&entry) {
            Ok(_) => {
                self.outbox_dirty = true;
                self.synced_acks.extend(ack);
            }
            Err(e) => {
                // The request stays unacknowledged: the broker redelivers it, so the response
                // is produced again rather than lost.
                self.stats.outbox_error(&e);
                tracing::error!(error = %e, topic = %entry.topic, "cannot write to the MQTT outbox");
            }
        }
    }

    fn link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected {
                epoch,
                receive_maximum,
            } => self.connected(epoch, receive_maximum),
            LinkEvent::Acked { pkid, accepted } => {
                let known = self.ids.release(pkid);
                match self.inflight.remove(&pkid) {
                    Some(token) if known => {
                        if !accepted {
                            self.stats.publish_refused();
                        }
                        self.delivered(token.origin);
                    }
                    _ => {
                        self.stats.unexpected_puback();
                        tracing::warn!(
                            pkid,
                            "PUBACK for a packet id onnxd has not got in flight: ignored"
                        );
                    }
                }
            }
            LinkEvent::Unsendable { pkid, size, limit } => {
                self.ids.release(pkid);
                if let Some(token) = self.inflight.remove(&pkid) {
                    // It can never be delivered: dropped like a message the broker refuses.
                    self.stats.publish_refused();
                    tracing::error!(
                        size,
                        limit,
                        "MQTT message over the broker's maximum packet size: dropped"
                    );
                    self.delivered(token.origin);
                }
            }
            LinkEvent::Disconnected { epoch } if epoch == self.epoch => self.disconnected(),
            LinkEvent::Disconnected { .. } => {}
        }
    }

    /// A new connection: status re-published, outbox replayed from its start.
    fn connected(&mut self, epoch: u64, receive_maximum: u16) {
        self.epoch = epoch;
        self.connected = true;
        self.window = WINDOW.min(usize::from(receive_maximum.max(1)));
        self.ids.reset();
        self.outbox.rewind();
        self.published_states.clear();
        let online = status_entry(self.topics.status(), b"online".to_vec());
        self.queue_entry(&online, Origin::Status);
        self.publish_model_states();
        let retained: Vec<Entry> = self
            .retained
            .iter()
            .map(|(topic, payload)| status_entry(topic.clone(), payload.clone()))
            .collect();
        for entry in retained {
            self.queue_entry(&entry, Origin::Status);
        }
    }

    /// The connection ended: what was not acknowledged is given up on. Requests answered by
    /// those messages are not acknowledged (the connection is gone; the broker redelivers
    /// them); the responses wait in the outbox.
    fn disconnected(&mut self) {
        self.connected = false;
        self.ids.reset();
        self.keep_unacknowledged();
        self.outbox.rewind();
    }

    /// Gives up on every message in flight and every response waiting for the window: live
    /// responses go to the outbox (their requests not acknowledged: the broker redelivers
    /// those); outbox records are sent again later.
    fn keep_unacknowledged(&mut self) {
        let pending: Vec<Token> = self.inflight.drain().map(|(_, token)| token).collect();
        let live = pending.into_iter().filter_map(|token| match token.origin {
            Origin::Live(delivery) => Some(delivery),
            _ => None,
        });
        let waiting = std::mem::take(&mut self.waiting);
        for delivery in live.chain(waiting) {
            self.keep(Delivery {
                ack: None,
                ..*delivery
            });
        }
    }

    fn delivered(&mut self, origin: Origin) {
        match origin {
            Origin::Live(delivery) => {
                self.stats.published();
                if let Some(ack) = delivery.ack {
                    self.ack_request(ack);
                }
            }
            Origin::Replay(seq) => {
                self.stats.published();
                self.outbox.ack(seq);
                self.outbox_dirty = true;
            }
            Origin::Status => {}
        }
    }

    /// The request's response is safe: remember it as answered and acknowledge it on the
    /// connection it came on (after a reconnect the broker redelivers it instead, and the
    /// redelivery is acknowledged without running it again).
    fn ack_request(&self, ack: RequestAck) {
        self.answered.record(ack.pkid, ack.fingerprint);
        if self.connected && ack.epoch == self.epoch {
            self.wire.ack(ack.epoch, ack.pkid);
        }
    }

    /// Sends outbox records, oldest first, while connected and the window allows.
    fn replay(&mut self) {
        while self.connected && self.window_left() > 0 && !self.outbox.is_empty() {
            let batch = match self.outbox.pending(self.window_left()) {
                Ok(batch) => batch,
                Err(e) => {
                    self.stats.outbox_error(&e);
                    tracing::error!(error = %e, "cannot read the MQTT outbox");
                    return;
                }
            };
            if batch.is_empty() {
                return;
            }
            for (seq, entry) in batch {
                if !self.queue_entry(&entry, Origin::Replay(seq)) {
                    // No packet id left: hand the rest out again later.
                    self.outbox.rewind();
                    return;
                }
            }
        }
    }

    fn sync(&mut self) {
        if self.outbox_dirty {
            self.outbox_dirty = false;
            if let Err(e) = self.outbox.sync() {
                self.stats.outbox_error(&e);
                tracing::error!(error = %e, "cannot sync the MQTT outbox");
                // Not durable: do not acknowledge the requests; the broker redelivers them.
                self.synced_acks.clear();
            }
        }
        for ack in std::mem::take(&mut self.synced_acks) {
            self.ack_request(ack);
        }
        self.stats
            .set_outbox(self.outbox.len(), self.outbox.bytes(), self.outbox.stats());
    }

    /// Messages on the wire without a PUBACK for too long are treated as undelivered.
    fn expire_inflight(&mut self) {
        let late: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, token)| token.sent.elapsed() > PUBACK_TIMEOUT)
            .map(|(pkid, _)| *pkid)
            .collect();
        for pkid in late {
            let Some(token) = self.inflight.remove(&pkid) else {
                continue;
            };
            // The broker may still acknowledge it: the id is not reused on this connection.
            self.ids.quarantine(pkid);
            self.stats.publish_timeout();
            match token.origin {
                Origin::Live(delivery) => self.keep(*delivery),
                Origin::Replay(_) => self.outbox.rewind(),
                Origin::Status => {}
            }
        }
    }

    /// Publishes each model's state (retained) when it changed; a removed model's retained
    /// state is cleared.
    fn publish_model_states(&mut self) {
        if !self.connected {
            return;
        }
        let mut current = BTreeMap::new();
        for handle in self.router.models() {
            let state = serde_json::to_string(handle.state().as_ref()).unwrap_or_default();
            current.insert(handle.name.clone(), state);
        }
        let removed: Vec<String> = self
            .published_states
            .keys()
            .filter(|m| !current.contains_key(*m))
            .cloned()
            .collect();
        for model in removed {
            let clear = status_entry(self.topics.model_status(&model), Vec::new());
            if self.queue_entry(&clear, Origin::Status) {
                self.published_states.remove(&model);
            }
        }
        for (model, state) in current {
            if self.published_states.get(&model) == Some(&state) {
                continue;
            }
            let mut entry = status_entry(self.topics.model_status(&model), state.clone().into_bytes());
            entry.content_type = Some("application/json".into());
            if self.queue_entry(&entry, Origin::Status) {
                self.published_states.insert(model, state);
            }
        }
    }

    /// Clean exit: `stopped` (retained) acknowledged or given up on after [`STOP_WAIT`],
    /// responses still in flight saved to the outbox, then DISCONNECT.
    fn stop(mut self, inbox: &Receiver<Command>) {
        if self.connected {
            let stopped = status_entry(self.topics.status(), b"stopped".to_vec());
            self.queue_entry(&stopped, Origin::Status);
            let until = Instant::now() + STOP_WAIT;
            while !self.inflight.is_empty() {
                let Some(left) = until.checked_duration_since(Instant::now()) else {
                    break;
                };
                match inbox.recv_timeout(left) {
                    Ok(Command::Link(event)) => self.link(event),
                    Ok(Command::Deliver(delivery)) => self.keep(*delivery),
                    Ok(Command::Stop | Command::Retain { .. }) => {}
                    Err(_) => break,
                }
            }
        }
        self.keep_unacknowledged();
        self.synced_acks.clear();
        self.sync();
        self.wire.disconnect();
    }
}

fn status_entry(topic: String, payload: Vec<u8>) -> Entry {
    Entry {
        created_ms: crate::clock::now_ms(),
        topic,
        payload,
        retain: true,
        content_type: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

/// The QoS 1 PUBLISH of an entry (packet id set when it is sent).
fn publish_of(entry: &Entry) -> Publish {
    let properties = PublishProperties {
        content_type: entry.content_type.clone(),
        correlation_data: entry.correlation_data.clone().map(Into::into),
        user_properties: entry.user_properties.clone(),
        ..Default::default()
    };
    let mut publish = Publish::new(
        entry.topic.clone(),
        QoS::AtLeastOnce,
        entry.payload.clone(),
        Some(properties),
    );
    publish.retain = entry.retain;
    publish
}
