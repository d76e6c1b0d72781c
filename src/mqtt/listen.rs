//! Topics that other parts of the daemon listen to, such as Home Assistant's birth message:
//! not requests, so never answered. Each is subscribed (QoS 1) on every connect — and at once
//! when added while connected — and each message on it is acknowledged and handed over on
//! the listener's channel, retained ones included. Topics are matched exactly (no wildcards).

use std::sync::Mutex;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The listened-to topics; the connection state is kept under the same lock, so a topic
/// added while a connection comes up is subscribed on it exactly when it must be.
#[derive(Debug, Default)]
pub struct Listeners {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connected: bool,
    topics: Vec<(String, UnboundedSender<Bytes>)>,
}

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens to `topic`; subscribes now when connected.
    pub fn add(&self, topic: &str, client: &AsyncClient) -> UnboundedReceiver<Bytes> {
        let (sender, receiver) = unbounded_channel();
        let mut inner = self.lock();
        inner.topics.push((topic.to_string(), sender));
        if inner.connected {
            subscribe(client, topic);
        }
        receiver
    }

    /// A connection is up (CONNACK): subscribes every topic.
    pub fn connected(&self, client: &AsyncClient) {
        let mut inner = self.lock();
        inner.connected = true;
        inner.topics.retain(|(_, sender)| !sender.is_closed());
        for (topic, _) in &inner.topics {
            subscribe(client, topic);
        }
    }

    /// The connection is gone.
    pub fn disconnected(&self) {
        self.lock().connected = false;
    }

    /// Hands a message to the listeners of its topic; false when nobody listens to it.
    pub fn deliver(&self, topic: &[u8], payload: &Bytes) -> bool {
        let inner = self.lock();
        let mut taken = false;
        for (listened, sender) in &inner.topics {
            if listened.as_bytes() == topic {
                let _ = sender.send(payload.clone());
                taken = true;
            }
        }
        taken
    }
}

fn subscribe(client: &AsyncClient, topic: &str) {
    if let Err(e) = client.try_subscribe(topic, QoS::AtLeastOnce) {
        tracing::error!(error = %e, %topic, "cannot queue an MQTT subscription");
    }
}
