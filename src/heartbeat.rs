//! Signs of progress of the daemon's long-running parts, which the systemd watchdog
//! ([`crate::service`]) reads: a part that loops (the MQTT session, its publisher thread, the
//! HTTP self-probe) [`Heartbeat::beat`]s on every turn; one that works in bounded steps (an
//! inference thread) says when its current step began ([`Busy`]). Both are a single atomic
//! store on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Microseconds since the first call in this process (monotonic), at least 1.
fn now_us() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// When a looping part last made a turn.
#[derive(Debug)]
pub struct Heartbeat(AtomicU64);

impl Default for Heartbeat {
    /// A heartbeat that beat now.
    fn default() -> Heartbeat {
        Heartbeat(AtomicU64::new(now_us()))
    }
}

impl Heartbeat {
    /// The part made a turn.
    pub fn beat(&self) {
        self.0.store(now_us(), Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn silent_for(&self) -> Duration {
        Duration::from_micros(now_us().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// When a part's current step began (none: idle, waiting for work).
#[derive(Debug, Default)]
pub struct Busy(AtomicU64);

impl Busy {
    /// A step begins.
    pub fn start(&self) {
        self.0.store(now_us(), Ordering::Relaxed);
    }

    /// The step ended; the part waits for work.
    pub fn stop(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// How long the current step has run, if one runs.
    pub fn running_for(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_micros(now_us().saturating_sub(since))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_and_steps_are_timed() {
        let heartbeat = Heartbeat::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(heartbeat.silent_for() >= Duration::from_millis(30));
        heartbeat.beat();
        assert!(heartbeat.silent_for() < Duration::from_millis(30));

        let busy = Busy::default();
        assert_eq!(busy.running_for(), None);
        busy.start();
        std::thread::sleep(Duration::from_millis(20));
        assert!(busy.running_for().unwrap() >= Duration::from_millis(20));
        busy.stop();
        assert_eq!(busy.running_for(), None);
    }
}
