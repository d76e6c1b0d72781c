//! MQTT counters read by `/metrics`: connection state and attempts, requests by outcome,
//! duplicates and ignored retained messages, publishes, and the outbox (depth, drops by cause,
//! write errors, disk full).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::outbox::{OutboxError, OutboxStats};

/// Counters of the MQTT side of the daemon.
#[derive(Debug, Default)]
pub struct MqttStats {
    connected: AtomicBool,
    connections: AtomicU64,
    connection_errors: AtomicU64,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    duplicates: AtomicU64,
    retained_ignored: AtomicU64,
    published: AtomicU64,
    publish_refused: AtomicU64,
    publish_timeouts: AtomicU64,
    outbox_disk_full: AtomicU64,
    outbox_errors: AtomicU64,
    outbox: Mutex<(u64, u64, OutboxStats)>,
}

/// A copy of the counters.
#[derive(Clone, Debug, Default)]
pub struct MqttSnapshot {
    /// Whether the broker connection is up.
    pub connected: bool,
    /// Successful connections (CONNACKs).
    pub connections: u64,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: u64,
    /// Requests by outcome (`ok` or the error reason).
    pub requests: BTreeMap<&'static str, u64>,
    /// Requests the broker redelivered (DUP flag).
    pub duplicates: u64,
    /// Retained messages on request topics, ignored.
    pub retained_ignored: u64,
    /// Messages acknowledged by the broker.
    pub published: u64,
    /// Messages the broker refused in its PUBACK.
    pub publish_refused: u64,
    /// Messages not acknowledged in time (moved to the outbox).
    pub publish_timeouts: u64,
    /// Outbox writes that failed because the disk was full.
    pub outbox_disk_full: u64,
    /// Other outbox I/O errors.
    pub outbox_errors: u64,
    /// Undelivered outbox records.
    pub outbox_records: u64,
    /// Bytes of undelivered outbox records.
    pub outbox_bytes: u64,
    /// The outbox's own counters.
    pub outbox: OutboxStats,
}

impl MqttStats {
    /// A CONNACK arrived.
    pub fn connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection attempt failed or the connection dropped.
    pub fn connection_error(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.connection_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended with `outcome` (`ok` or an error reason).
    pub fn request(&self, outcome: &'static str) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    /// The broker redelivered a request.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// A retained message on a request topic was ignored.
    pub fn retained_ignored(&self) {
        self.retained_ignored.fetch_add(1, Ordering::Relaxed);
    }

    /// The broker acknowledged a message.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// The broker refused a message.
    pub fn publish_refused(&self) {
        self.publish_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was not acknowledged in time.
    pub fn publish_timeout(&self) {
        self.publish_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// An outbox operation failed.
    pub fn outbox_error(&self, error: &OutboxError) {
        let counter = if error.is_disk_full() {
            &self.outbox_disk_full
        } else {
            &self.outbox_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The outbox's depth and counters.
    pub fn set_outbox(&self, records: u64, bytes: u64, stats: OutboxStats) {
        *self.outbox.lock().unwrap_or_else(|e| e.into_inner()) = (records, bytes, stats);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MqttSnapshot {
        let (outbox_records, outbox_bytes, outbox) = *self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MqttSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            connections: load(&self.connections),
            connection_errors: load(&self.connection_errors),
            requests: self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            duplicates: load(&self.duplicates),
            retained_ignored: load(&self.retained_ignored),
            published: load(&self.published),
            publish_refused: load(&self.publish_refused),
            publish_timeouts: load(&self.publish_timeouts),
            outbox_disk_full: load(&self.outbox_disk_full),
            outbox_errors: load(&self.outbox_errors),
            outbox_records,
            outbox_bytes,
            outbox,
        }
    }
}
