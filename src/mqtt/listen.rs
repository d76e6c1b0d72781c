//! Topics that other parts of the daemon listen to, such as Home Assistant's birth message:
//! not requests, so never answered. Each is subscribed (QoS 1) on every connect — in the
//! connection's first SUBSCRIBE, beside the request filters — and at once when added while
//! connected (a command to the session, see [`super::subscriptions`]); each message on it is
//! acknowledged by the session and handed over on the listener's channel, retained ones
//! included. Topics are matched exactly (no wildcards).

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::session::{WeakWire, Wire};

/// The listened-to topics; the connection state is kept under the same lock, so a topic
/// added while a connection comes up is subscribed on it exactly once: either with the
/// connection's first SUBSCRIBE or by a command made for that connection.
#[derive(Debug)]
pub struct Listeners {
    inner: Mutex<Inner>,
    wire: WeakWire,
}

#[derive(Debug, Default)]
struct Inner {
    /// The connection (epoch) that is up, if one is.
    connected: Option<u64>,
    topics: Vec<(String, UnboundedSender<Bytes>)>,
}

impl Listeners {
    /// Listeners whose late subscriptions go through `wire` (held weakly: the session still
    /// ends when the publisher's handle is gone).
    pub fn new(wire: &Wire) -> Listeners {
        Listeners {
            inner: Mutex::default(),
            wire: wire.downgrade(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens to `topic`; subscribes now when connected.
    pub fn add(&self, topic: &str) -> UnboundedReceiver<Bytes> {
        let (sender, receiver) = unbounded_channel();
        let mut inner = self.lock();
        inner.topics.push((topic.to_string(), sender));
        if let Some(epoch) = inner.connected {
            self.wire.subscribe(epoch, topic.to_string());
        }
        receiver
    }

    /// Connection `epoch` is up (CONNACK): the topics to subscribe on it (listeners that went
    /// away are forgotten). Topics added from now on are subscribed by commands for `epoch`.
    pub fn connected(&self, epoch: u64) -> Vec<String> {
        let mut inner = self.lock();
        inner.connected = Some(epoch);
        inner.topics.retain(|(_, sender)| !sender.is_closed());
        inner.topics.iter().map(|(topic, _)| topic.clone()).collect()
    }

    /// The connection is gone.
    pub fn disconnected(&self) {
        self.lock().connected = None;
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

#[cfg(test)]
mod tests {
    use super::super::session::Outbound;
    use super::*;

    #[test]
    fn topics_are_subscribed_on_connect_or_at_once_while_connected() {
        let (wire, mut commands) = Wire::channel();
        let listeners = Listeners::new(&wire);
        let _before = listeners.add("ha/status");
        assert!(
            commands.try_recv().is_err(),
            "not connected: waits for the connect"
        );
        assert_eq!(listeners.connected(1), ["ha/status"]);
        let _during = listeners.add("other/topic");
        match commands.try_recv() {
            Ok(Outbound::Subscribe { epoch: 1, topic }) => assert_eq!(topic, "other/topic"),
            other => panic!("expected a SUBSCRIBE command for connection 1, got {other:?}"),
        }
        listeners.disconnected();
        let _after = listeners.add("third");
        assert!(
            commands.try_recv().is_err(),
            "disconnected: waits for the next connect"
        );
        assert_eq!(listeners.connected(2), ["ha/status", "other/topic", "third"]);
    }

    #[test]
    fn messages_go_to_the_listeners_of_their_exact_topic_and_gone_ones_are_forgotten() {
        let (wire, _commands) = Wire::channel();
        let listeners = Listeners::new(&wire);
        let mut first = listeners.add("ha/status");
        let mut second = listeners.add("ha/status");
        let gone = listeners.add("gone");
        drop(gone);
        assert!(listeners.deliver(b"ha/status", &Bytes::from_static(b"online")));
        assert_eq!(first.try_recv().unwrap(), "online");
        assert_eq!(second.try_recv().unwrap(), "online");
        assert!(!listeners.deliver(b"ha/status/x", &Bytes::from_static(b"x")));
        assert!(!listeners.deliver(b"ha/+", &Bytes::from_static(b"x")));
        assert!(first.try_recv().is_err());
        assert_eq!(listeners.connected(1), ["ha/status", "ha/status"]);
    }

    #[test]
    fn a_late_topic_does_not_keep_the_session_s_command_channel_open() {
        let (wire, mut commands) = Wire::channel();
        let listeners = Listeners::new(&wire);
        listeners.connected(1);
        drop(wire);
        let _late = listeners.add("ha/status");
        assert!(commands.try_recv().is_err());
        assert!(commands.is_closed());
    }
}
