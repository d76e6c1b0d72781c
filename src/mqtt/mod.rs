//! MQTT (SPEC §6): requests in on `P/models/<m>/infer` (and the fleet's pool topic through a
//! shared subscription), responses out with at-least-once delivery, node and model status,
//! model delivery's deploy and rollback commands ([`deploy`]).
//!
//! - [`topics`]: the topic layout.
//! - [`client`]: connection settings (TLS, credentials, session, Last Will).
//! - [`wire`]: one connection at the packet level (`rumqttc`'s MQTT 5 codec).
//! - [`session`]: the task that keeps the connection, reconnecting with backoff, writes
//!   what the publisher hands it and keeps the connection's [`subscriptions`].
//! - [`requests`]: one request in, one reply out (JSON, binary framing, errors).
//! - [`publisher`]: the thread that delivers replies and status with packet ids of its own
//!   ([`packet_ids`]), matches PUBACKs by id, acknowledges requests once their response is
//!   safe, remembers them as [`answered`], and owns the [`outbox`].
//! - [`outbox`]: the durable, checksummed queue of what the broker could not take yet.
//! - [`stats`]: counters for `/metrics`.
//! - [`listen`]: topics other parts of the daemon listen to (Home Assistant's birth message),
//!   subscribed through the session's [`subscriptions`].
//!
//! The daemon runs without a broker: the connection keeps retrying with backoff, results wait
//! in the outbox, HTTP and cameras are unaffected.

pub mod answered;
pub mod client;
pub mod deploy;
pub mod listen;
pub mod outbox;
pub mod packet_ids;
pub mod publisher;
pub mod requests;
pub mod session;
pub mod stats;
pub mod subscriptions;
pub mod topics;
pub mod wire;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serving::Router;
use answered::Answered;
use listen::Listeners;
use outbox::{Outbox, OutboxLimits};
use publisher::Command;
use requests::Handler;
use session::{Session, Wire};
use stats::MqttStats;
use subscriptions::Subscriptions;
use topics::Topics;

/// Why MQTT could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[mqtt]` is wrong (unreadable file, bad URL).
    #[error(transparent)]
    Config(#[from] client::ConfigError),
    /// The outbox in `state_dir` cannot be opened.
    #[error("MQTT outbox: {0}")]
    Outbox(#[from] outbox::OutboxError),
}

/// The running MQTT side of the daemon.
pub struct Mqtt {
    /// Counters for `/metrics`.
    pub stats: Arc<MqttStats>,
    publisher: Sender<Command>,
    publisher_thread: JoinHandle<()>,
    handler: Arc<Handler>,
    event_loop: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    listeners: Arc<Listeners>,
}

impl Mqtt {
    /// Connects (in the background) as configured; `None` when `mqtt.url` is empty. With
    /// `deploys`, model delivery's commands are subscribed to and handed to it. Must be
    /// called inside the tokio runtime.
    pub fn start(
        config: &Config,
        router: Arc<Router>,
        shutdown: CancellationToken,
        deploys: Option<Arc<crate::delivery::Delivery>>,
    ) -> Result<Option<Mqtt>, StartError> {
        let Some(mqtt) = &config.mqtt else {
            return Ok(None);
        };
        let topics = Topics::new(&mqtt.topic_prefix, &config.node_id, &mqtt.share_group);
        let settings = client::settings(mqtt, &topics)?;
        let outbox = Outbox::open(
            &config.state_dir.join("outbox"),
            OutboxLimits {
                max_bytes: mqtt.outbox_max_bytes,
                ttl: Duration::from_secs(mqtt.outbox_ttl_secs),
                ..OutboxLimits::default()
            },
        )?;
        if !outbox.is_empty() {
            tracing::info!(
                records = outbox.len(),
                bytes = outbox.bytes(),
                "MQTT outbox holds undelivered messages"
            );
        }
        let stats = Arc::new(MqttStats::default());
        let answered = Arc::new(Answered::default());
        let (wire, commands) = Wire::channel();
        let listeners = Arc::new(Listeners::new(&wire));
        let acks = wire.downgrade();
        let (publisher, publisher_thread) = publisher::spawn(publisher::Parts {
            wire,
            outbox,
            router: router.clone(),
            topics: topics.clone(),
            stats: stats.clone(),
            answered: answered.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let handler = Arc::new(Handler::new(
            router,
            topics.clone(),
            config.node_id.clone(),
            usize::try_from(mqtt.max_payload_bytes).unwrap_or(usize::MAX),
            stats.clone(),
            shutdown,
        ));
        let task = Session {
            settings,
            listeners: listeners.clone(),
            subscriptions: Subscriptions::default(),
            topics: topics.clone(),
            publisher: publisher.clone(),
            handler: handler.clone(),
            answered,
            commands,
            stop: stopped,
            deploys,
            acks,
        };
        tracing::info!(host = %mqtt.broker.host, port = mqtt.broker.port, tls = mqtt.broker.tls, client_id = %mqtt.client_id, "MQTT starting");
        Ok(Some(Mqtt {
            stats,
            publisher,
            publisher_thread,
            handler,
            event_loop: tokio::spawn(task.run()),
            stop,
            listeners,
        }))
    }

    /// Where other parts of the daemon (cameras) publish.
    pub fn sink(&self) -> Sink {
        Sink {
            commands: self.publisher.clone(),
        }
    }

    /// Messages on `topic` (exactly; subscribed on every connect, and at once when connected),
    /// e.g. Home Assistant's birth message.
    pub fn listen(&self, topic: &str) -> tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes> {
        self.listeners.add(topic)
    }

    /// Once the shutdown signal stopped intake (later requests are left to the broker for the
    /// next session), waits at most `wait` for those in flight to be handed to the publisher;
    /// returns how many did not finish.
    pub async fn drain(&self, wait: Duration) -> usize {
        self.handler.drain(wait).await
    }

    /// Clean exit: `stopped` published (retained), undelivered responses kept in the outbox,
    /// DISCONNECT (so the broker does not publish the Last Will). Waits at most `wait`.
    pub async fn stop(self, wait: Duration) {
        let _ = self.publisher.send(Command::Stop);
        let thread = self.publisher_thread;
        let _ = tokio::time::timeout(wait, tokio::task::spawn_blocking(move || thread.join())).await;
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(wait, self.event_loop).await;
    }
}

/// A handle for publishing through the MQTT publisher.
#[derive(Clone, Debug)]
pub struct Sink {
    commands: Sender<Command>,
}

impl Sink {
    /// Publishes a result with at-least-once delivery (through the outbox while the broker is
    /// away).
    pub fn publish(&self, topic: String, payload: Vec<u8>, content_type: &str) {
        let entry = outbox::Entry {
            created_ms: crate::clock::now_ms(),
            topic,
            payload,
            retain: false,
            content_type: Some(content_type.into()),
            correlation_data: None,
            user_properties: Vec::new(),
        };
        let delivery = publisher::Delivery { entry, ack: None };
        let _ = self.commands.send(Command::Deliver(Box::new(delivery)));
    }

    /// Sets a retained state (published now and after every reconnect); an empty payload
    /// clears it.
    pub fn retain(&self, topic: String, payload: Vec<u8>) {
        let _ = self.commands.send(Command::Retain { topic, payload });
    }
}
