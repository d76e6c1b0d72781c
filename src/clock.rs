//! Wall-clock time as onnxd stores it: milliseconds since the UNIX epoch (outbox TTLs, message
//! timestamps). Monotonic durations use `std::time::Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
