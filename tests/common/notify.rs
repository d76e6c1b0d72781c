//! systemd's side of `sd_notify` for tests: a datagram socket a daemon is started with as its
//! `NOTIFY_SOCKET`, and what it reads from it.

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The watchdog interval tests start daemons with (`WATCHDOG_USEC`): pings every 200 ms.
pub const WATCHDOG_USEC: &str = "400000";

/// A bound `NOTIFY_SOCKET`.
pub struct NotifySocket {
    /// The socket.
    pub socket: UnixDatagram,
    /// Its path, for `NOTIFY_SOCKET`.
    pub path: PathBuf,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` for the daemon's environment.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("NOTIFY_SOCKET", self.path.to_str().unwrap()),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
        ]
    }

    /// The next notification datagram, within `timeout`.
    pub fn next(&self, timeout: Duration) -> String {
        self.try_next(timeout).expect("a notification in time")
    }

    fn try_next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }

    /// The next notification that is not a watchdog ping.
    pub fn next_other_than_watchdog(&self) -> String {
        loop {
            let message = self.next(Duration::from_secs(10));
            if !message.contains("WATCHDOG=1") {
                return message;
            }
        }
    }

    /// Watchdog pings counted in `window`.
    pub fn pings(&self, window: Duration) -> usize {
        let started = Instant::now();
        let mut pings = 0;
        while let Some(left) = window.checked_sub(started.elapsed()) {
            match self.try_next(left.max(Duration::from_millis(1))) {
                Some(message) if message.contains("WATCHDOG=1") => pings += 1,
                Some(_) => {}
                None => break,
            }
        }
        pings
    }

    /// Asserts that pings come while the daemon is healthy, then that they stop within
    /// `stops_within` of `stall` (which hangs one part) and stay stopped.
    pub fn assert_pings_stop(&self, what: &str, stall: impl FnOnce(), stops_within: Duration) {
        assert!(
            self.pings(Duration::from_secs(1)) >= 3,
            "pings before {what} stalled"
        );
        stall();
        let deadline = Instant::now() + stops_within;
        // Pings until the part counts as hung; then none for 1.5 s.
        loop {
            assert!(
                Instant::now() < deadline,
                "watchdog pings went on {stops_within:?} after {what} stalled"
            );
            if self.pings(Duration::from_millis(1500)) == 0 {
                return;
            }
        }
    }
}
