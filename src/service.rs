//! systemd integration (SPEC §9) through `sd-notify`: `READY=1` once the listeners are bound
//! and the initial repository scan is done, `STATUS=` lines (models ready, MQTT state),
//! `RELOADING=1` with `MONOTONIC_USEC` on SIGHUP (systemd ≥ 253 wants both) followed by
//! `READY=1`, `STOPPING=1` on SIGTERM, and `WATCHDOG=1` at half of `WATCHDOG_USEC` — sent by a
//! task on the serving runtime, and only while every part of the daemon makes progress
//! ([`Watched`]), so that systemd restarts a daemon with a stalled runtime, a deadlocked
//! router, an inference thread stuck in one execution, a hung MQTT session or publisher, or an
//! HTTP listener that stopped answering. A part is hung once it has made no progress for the
//! watchdog interval (at least [`MIN_HUNG_AFTER`]); an execution that legitimately takes
//! longer than `WatchdogSec=` needs a longer one.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! Test hook, debug builds only: SIGUSR2 stalls one part on purpose ([`stall_on`]: the one
//! named by `ONNXD_TEST_STALL`, the router by default) so a test can see the pings stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::heartbeat::Heartbeat;
use crate::mqtt::stats::MqttStats;
use crate::serving::{Router, State};

/// The least time without progress that counts as hung (so that a loaded machine's pauses
/// are not taken for a hang when `WatchdogSec=` is short).
pub const MIN_HUNG_AFTER: Duration = Duration::from_secs(2);

/// The parts of the daemon whose progress the watchdog checks before each ping.
pub struct Watched {
    /// The serving core: its lock is taken (for the status line) and its versions'
    /// inference threads are checked.
    pub router: Arc<Router>,
    /// The MQTT side's heartbeats.
    pub mqtt: Option<Arc<MqttStats>>,
    /// The daemon's own HTTP listener and whether it speaks TLS: probed with a request.
    pub http: Option<(SocketAddr, bool)>,
}

impl Watched {
    /// The part that has made no progress for `after`, if one has not.
    fn stalled(&self, after: Duration, http: Option<&Heartbeat>) -> Option<String> {
        if let Some((model, running)) = self.router.longest_execution() {
            if running > after {
                return Some(format!(
                    "an inference thread of '{model}' has run one execution for {running:?}"
                ));
            }
        }
        if let Some(stalled) = self.mqtt.as_ref().and_then(|m| m.stalled(after)) {
            return Some(stalled);
        }
        let silent = http.map(Heartbeat::silent_for).unwrap_or_default();
        (silent > after).then(|| format!("the HTTP listener has not answered for {silent:?}"))
    }
}

/// Tells systemd what the daemon is doing.
#[derive(Clone, Debug, Default)]
pub struct Service;

impl Service {
    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Serving: listeners bound, repository scanned.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A new status line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// A SIGHUP reload begins; call [`Service::ready`] when it is done.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING"),
        }
    }

    /// Shutting down.
    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining requests"),
        ]);
    }

    /// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }

    /// Pings the watchdog at half its interval while every watched part makes progress,
    /// refreshing the status line on the way; runs until the runtime stops.
    pub async fn keep_alive(self, interval: Duration, watched: Watched) {
        let hung_after = interval.max(MIN_HUNG_AFTER);
        let http = watched
            .http
            .map(|(address, tls)| probe_http(address, tls, interval / 2, hung_after));
        let mut tick = tokio::time::interval(interval / 2);
        let mut last_status = String::new();
        let mut hung = false;
        loop {
            tick.tick().await;
            // Reading the router takes its lock: a deadlocked serving core stops the pings.
            let status = status_line(&watched.router, watched.mqtt.as_deref());
            if status != last_status {
                self.status(&status);
                last_status = status;
            }
            match watched.stalled(hung_after, http.as_deref()) {
                Some(part) => {
                    if !std::mem::replace(&mut hung, true) {
                        tracing::error!(part, "no watchdog ping: a part of the daemon makes no progress");
                    }
                }
                None => {
                    hung = false;
                    self.send(&[NotifyState::Watchdog]);
                }
            }
        }
    }
}

/// A task that sends `GET /v2/health/live` to the daemon's own listener every `every` and
/// beats when an answer comes within `timeout`: plain HTTP must answer 200; a TLS listener
/// (which may want a client certificate) must answer the plain-text request at all — with an
/// alert, or by closing the connection.
fn probe_http(address: SocketAddr, tls: bool, every: Duration, timeout: Duration) -> Arc<Heartbeat> {
    let heartbeat = Arc::new(Heartbeat::default());
    let beat = heartbeat.clone();
    let address = match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], address.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, address.port())),
        _ => address,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Ok(true) = tokio::time::timeout(timeout, answers(address, tls)).await {
                beat.beat();
            }
        }
    });
    heartbeat
}

async fn answers(address: SocketAddr, tls: bool) -> bool {
    const REQUEST: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nHost: onnxd\r\nConnection: close\r\n\r\n";
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let _ = stream.set_nodelay(true);
    if stream.write_all(REQUEST).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    match stream.read(&mut head).await {
        Ok(n) if !tls => head[..n].starts_with(b"HTTP/1.1 200"),
        answered => tls && answered.is_ok(),
    }
}

/// `STATUS=` text: models ready of all, and the MQTT connection.
pub fn status_line(router: &Router, mqtt: Option<&MqttStats>) -> String {
    let models = router.models();
    let ready = models.iter().filter(|m| m.state().state == State::Ready).count();
    let mqtt = match mqtt {
        None => "off",
        Some(stats) if stats.snapshot().connected => "connected",
        Some(_) => "disconnected",
    };
    format!("{ready}/{} models ready, MQTT {mqtt}", models.len())
}

/// Test hook (debug builds only): on SIGUSR2 (`usr2`, registered before READY) the part named
/// by `ONNXD_TEST_STALL` hangs: `inference` (every inference thread, in its next execution),
/// `mqtt` (the session's loop), `http` (`/v2/health/live` never answers); by default a thread
/// takes the router's lock for good, as a deadlocked serving core would. Watchdog pings stop.
#[cfg(debug_assertions)]
pub async fn stall_on(mut usr2: tokio::signal::unix::Signal, router: Arc<Router>) {
    use std::sync::atomic::Ordering;
    if usr2.recv().await.is_none() {
        return;
    }
    let part = std::env::var("ONNXD_TEST_STALL").unwrap_or_default();
    tracing::warn!(part, "SIGUSR2 (test hook): stalling a part of the daemon");
    match part.as_str() {
        "inference" => crate::engine::pool::STALL.store(true, Ordering::Relaxed),
        "mqtt" => crate::mqtt::session::STALL.store(true, Ordering::Relaxed),
        "http" => crate::http::STALL.store(true, Ordering::Relaxed),
        _ => {
            std::thread::spawn(move || router.stall_forever());
        }
    }
}
