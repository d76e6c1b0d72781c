//! Per-model counters that the protocol layers and metrics read: successes, failures by
//! reason, queue and compute time, the last inference, and reloads by result. Lock-free on
//! the request path except for the failure map, which only errors touch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counters of one model (all versions).
#[derive(Debug, Default)]
pub struct ModelStats {
    success: AtomicU64,
    queue_ns: AtomicU64,
    compute_ns: AtomicU64,
    last_inference_ms: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StatsSnapshot {
    /// Successful inferences.
    pub success: u64,
    /// Failed requests by reason.
    pub failures: BTreeMap<&'static str, u64>,
    /// Total queue time of successful inferences.
    pub queue_ns: u64,
    /// Total compute time of successful inferences.
    pub compute_ns: u64,
    /// Milliseconds since the epoch of the last inference (0 = never).
    pub last_inference_ms: u64,
    /// Reloads by result (`ok`, `failed`, `unloaded`).
    pub reloads: BTreeMap<&'static str, u64>,
}

impl ModelStats {
    /// Records a successful inference.
    pub fn success(&self, queue: Duration, compute: Duration) {
        self.success.fetch_add(1, Ordering::Relaxed);
        self.queue_ns
            .fetch_add(queue.as_nanos() as u64, Ordering::Relaxed);
        self.compute_ns
            .fetch_add(compute.as_nanos() as u64, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records a failed request.
    pub fn failure(&self, reason: &'static str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Records a reload outcome.
    pub fn reload(&self, result: &'static str) {
        *self
            .reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(result)
            .or_default() += 1;
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            success: self.success.load(Ordering::Relaxed),
            failures: self.failures.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            queue_ns: self.queue_ns.load(Ordering::Relaxed),
            compute_ns: self.compute_ns.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            reloads: self.reloads.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}
