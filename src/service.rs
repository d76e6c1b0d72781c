//! systemd integration (SPEC §9) through `sd-notify`: `READY=1` once the listeners are bound
//! and the initial repository scan is done, `STATUS=` lines (models ready, MQTT state),
//! `RELOADING=1` with `MONOTONIC_USEC` on SIGHUP (systemd ≥ 253 wants both) followed by
//! `READY=1`, `STOPPING=1` on SIGTERM, and `WATCHDOG=1` at half of `WATCHDOG_USEC` — sent by a
//! task on the serving runtime, and only while the serving core answers, so a stalled runtime
//! or a deadlocked router stops the pings and systemd restarts the daemon.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! Test hook, debug builds only: SIGUSR2 deadlocks the router on purpose
//! ([`stall_on`]) so a test can see the pings stop.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::mqtt::stats::MqttStats;
use crate::serving::{Router, State};

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

    /// Pings the watchdog at half its interval while the serving core answers, refreshing
    /// the status line on the way; runs until the runtime stops.
    pub async fn keep_alive(self, interval: Duration, router: Arc<Router>, mqtt: Option<Arc<MqttStats>>) {
        let mut tick = tokio::time::interval(interval / 2);
        let mut last_status = String::new();
        loop {
            tick.tick().await;
            // Reading the router takes its lock: a deadlocked serving core stops the pings.
            let status = status_line(&router, mqtt.as_deref());
            if status != last_status {
                self.status(&status);
                last_status = status;
            }
            self.send(&[NotifyState::Watchdog]);
        }
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

/// Test hook (debug builds only): on SIGUSR2 (`usr2`, registered before READY) a thread takes
/// the router's lock for good, as a deadlocked serving core would; requests and watchdog pings
/// stop.
#[cfg(debug_assertions)]
pub async fn stall_on(mut usr2: tokio::signal::unix::Signal, router: Arc<Router>) {
    if usr2.recv().await.is_some() {
        tracing::warn!("SIGUSR2 (test hook): stalling the serving core");
        std::thread::spawn(move || router.stall_forever());
    }
}
