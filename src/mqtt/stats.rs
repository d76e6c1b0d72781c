//! MQTT counters read by `/metrics`: connection state and attempts, requests by outcome,
//! duplicates (redelivered, suppressed), unexpected PUBACKs, ignored retained messages,
//! publishes, and the outbox (depth, drops by cause, write errors, disk full); and the
//! heartbeats of the session task and the publisher thread, which the watchdog reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::Registry;

use super::outbox::{OutboxError, OutboxStats};
use crate::heartbeat::Heartbeat;
use crate::telemetry::{self, MetricsSource};

/// Counters of the MQTT side of the daemon.
#[derive(Debug, Default)]
pub struct MqttStats {
    connected: AtomicBool,
    connections: AtomicU64,
    connection_errors: AtomicU64,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    duplicates: AtomicU64,
    duplicates_suppressed: AtomicU64,
    unexpected_pubacks: AtomicU64,
    retained_ignored: AtomicU64,
    published: AtomicU64,
    publish_refused: AtomicU64,
    publish_timeouts: AtomicU64,
    outbox_disk_full: AtomicU64,
    outbox_errors: AtomicU64,
    outbox: Mutex<(u64, u64, OutboxStats)>,
    /// The session task's turns (while connected).
    pub session_beat: Heartbeat,
    /// The publisher thread's turns.
    pub publisher_beat: Heartbeat,
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
    /// Redelivered requests already answered in this session: acknowledged, not run again.
    pub duplicates_suppressed: u64,
    /// PUBACKs with a packet id onnxd had not got in flight (ignored).
    pub unexpected_pubacks: u64,
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
    /// The part of the MQTT side that has made no turn for `after`, if one has not: the
    /// publisher thread, or the session task while it is connected (a reconnecting session
    /// waits in bounded steps).
    pub fn stalled(&self, after: Duration) -> Option<String> {
        let silent = self.publisher_beat.silent_for();
        if silent > after {
            return Some(format!("the MQTT publisher thread made no turn for {silent:?}"));
        }
        let silent = self.session_beat.silent_for();
        if self.connected.load(Ordering::Relaxed) && silent > after {
            return Some(format!("the MQTT session made no turn for {silent:?}"));
        }
        None
    }

    /// A CONNACK arrived.
    pub fn connected(&self) {
        self.session_beat.beat();
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

    /// A redelivered request was already answered: acknowledged without running it.
    pub fn duplicate_suppressed(&self) {
        self.duplicates_suppressed.fetch_add(1, Ordering::Relaxed);
    }

    /// A PUBACK came for a packet id not in flight.
    pub fn unexpected_puback(&self) {
        self.unexpected_pubacks.fetch_add(1, Ordering::Relaxed);
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
            duplicates_suppressed: load(&self.duplicates_suppressed),
            unexpected_pubacks: load(&self.unexpected_pubacks),
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

impl MetricsSource for MqttStats {
    fn render(&self, registry: &Registry) {
        render(registry, &self.snapshot());
    }
}

/// A family without labels: one sample.
fn plain_counter(registry: &Registry, name: &str, help: &str, value: u64) {
    telemetry::counter(registry, name, help, &[])
        .with_label_values(&[] as &[&str])
        .inc_by(value);
}

/// A gauge without labels: one sample.
fn plain_gauge(registry: &Registry, name: &str, help: &str, value: u64) {
    telemetry::gauge(registry, name, help, &[])
        .with_label_values(&[] as &[&str])
        .set(value as i64);
}

fn render(registry: &Registry, m: &MqttSnapshot) {
    render_connection(registry, m);
    render_outbox(registry, m);
}

/// The connection, requests and publishes.
fn render_connection(registry: &Registry, m: &MqttSnapshot) {
    plain_gauge(
        registry,
        "onnxd_mqtt_connected",
        "1 while the broker connection is up.",
        u64::from(m.connected),
    );
    plain_counter(
        registry,
        "onnxd_mqtt_connections_total",
        "Successful broker connections (CONNACK).",
        m.connections,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_connection_errors_total",
        "Failed connection attempts and dropped connections.",
        m.connection_errors,
    );
    let requests = telemetry::counter(
        registry,
        "onnxd_mqtt_requests_total",
        "MQTT requests by outcome (ok or the error reason).",
        &["outcome"],
    );
    // `ok` exists from the start (at 0), so the family does before the first request.
    requests.with_label_values(&["ok"]).inc_by(0);
    for (outcome, count) in &m.requests {
        requests.with_label_values(&[outcome]).inc_by(*count);
    }
    plain_counter(
        registry,
        "onnxd_mqtt_duplicate_requests_total",
        "Requests the broker redelivered (DUP flag).",
        m.duplicates,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_duplicates_suppressed_total",
        "Redelivered requests already answered in this session: acknowledged, not run again.",
        m.duplicates_suppressed,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_unexpected_pubacks_total",
        "PUBACKs for a packet id onnxd had not got in flight (ignored: they acknowledge nothing).",
        m.unexpected_pubacks,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_retained_ignored_total",
        "Retained messages on request topics, ignored.",
        m.retained_ignored,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_published_total",
        "Messages acknowledged by the broker.",
        m.published,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_publish_refused_total",
        "Messages the broker refused in its PUBACK.",
        m.publish_refused,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_publish_timeouts_total",
        "Messages not acknowledged in time (moved to the outbox).",
        m.publish_timeouts,
    );
}

/// The outbox: depth, appends, drops by cause, errors, torn bytes.
fn render_outbox(registry: &Registry, m: &MqttSnapshot) {
    plain_gauge(
        registry,
        "onnxd_mqtt_outbox_records",
        "Undelivered messages in the outbox.",
        m.outbox_records,
    );
    plain_gauge(
        registry,
        "onnxd_mqtt_outbox_bytes",
        "Bytes of undelivered messages in the outbox.",
        m.outbox_bytes,
    );
    plain_counter(
        registry,
        "onnxd_mqtt_outbox_appended_total",
        "Messages written to the outbox.",
        m.outbox.appended,
    );
    let dropped = telemetry::counter(
        registry,
        "onnxd_mqtt_outbox_dropped_total",
        "Outbox messages dropped, by cause (ttl, full, corrupt) - the only way a result is lost.",
        &["cause"],
    );
    for (cause, count) in [
        ("ttl", m.outbox.dropped_ttl),
        ("full", m.outbox.dropped_full),
        ("corrupt", m.outbox.dropped_corrupt),
    ] {
        dropped.with_label_values(&[cause]).inc_by(count);
    }
    let errors = telemetry::counter(
        registry,
        "onnxd_mqtt_outbox_errors_total",
        "Outbox operations that failed, by kind (disk_full, io).",
        &["kind"],
    );
    errors
        .with_label_values(&["disk_full"])
        .inc_by(m.outbox_disk_full);
    errors.with_label_values(&["io"]).inc_by(m.outbox_errors);
    plain_counter(
        registry,
        "onnxd_mqtt_outbox_torn_bytes_total",
        "Bytes of torn outbox tail cut off at start.",
        m.outbox.torn_bytes_cut,
    );
}
