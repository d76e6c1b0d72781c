//! Per-model, per-version counters that the protocol layers and metrics read: successes,
//! failures by reason, request, queue and compute time, the last inference, reloads by result.
//! Lock-free on the success path once a version's counters exist (a read lock to find them);
//! only errors and the first request of a version take a mutex. Counters of a retired version
//! are kept, so Prometheus counters never go backwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counters of one model version.
#[derive(Debug, Default)]
pub struct VersionStats {
    success: AtomicU64,
    request_ns: AtomicU64,
    queue_ns: AtomicU64,
    compute_ns: AtomicU64,
    last_inference_ms: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of one version's counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VersionSnapshot {
    /// Successful inferences.
    pub success: u64,
    /// Failed requests by reason.
    pub failures: BTreeMap<&'static str, u64>,
    /// Total time of successful requests, from arrival at the router to the result.
    pub request_ns: u64,
    /// Total queue time of successful inferences.
    pub queue_ns: u64,
    /// Total compute time of successful inferences.
    pub compute_ns: u64,
    /// Milliseconds since the epoch of the last inference (0 = never).
    pub last_inference_ms: u64,
}

impl VersionStats {
    /// Records a successful inference.
    pub fn success(&self, request: Duration, queue: Duration, compute: Duration) {
        let add = |counter: &AtomicU64, d: Duration| {
            counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        };
        self.success.fetch_add(1, Ordering::Relaxed);
        add(&self.request_ns, request);
        add(&self.queue_ns, queue);
        add(&self.compute_ns, compute);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records a failed request.
    pub fn failure(&self, reason: &'static str) {
        count(&self.failures, reason);
    }

    fn snapshot(&self) -> VersionSnapshot {
        VersionSnapshot {
            success: self.success.load(Ordering::Relaxed),
            failures: lock(&self.failures).clone(),
            request_ns: self.request_ns.load(Ordering::Relaxed),
            queue_ns: self.queue_ns.load(Ordering::Relaxed),
            compute_ns: self.compute_ns.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one model: per version, plus failures that happened before a version was
/// chosen (no such version, model unavailable, malformed request) and reloads.
#[derive(Debug, Default)]
pub struct ModelStats {
    versions: RwLock<BTreeMap<u64, Arc<VersionStats>>>,
    unversioned_failures: Mutex<BTreeMap<&'static str, u64>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of a model's counters at one moment.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StatsSnapshot {
    /// Counters of every version that has served or failed a request.
    pub versions: BTreeMap<u64, VersionSnapshot>,
    /// Failed requests no version was chosen for, by reason.
    pub unversioned_failures: BTreeMap<&'static str, u64>,
    /// Reloads by result (`ok`, `failed`, `unloaded`).
    pub reloads: BTreeMap<&'static str, u64>,
}

impl StatsSnapshot {
    /// One version's counters (zero if it has none yet).
    pub fn version(&self, version: u64) -> VersionSnapshot {
        self.versions.get(&version).cloned().unwrap_or_default()
    }
}

impl ModelStats {
    /// The counters of a version, created on first use.
    pub fn version(&self, version: u64) -> Arc<VersionStats> {
        if let Some(stats) = self
            .versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&version)
        {
            return stats.clone();
        }
        self.versions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(version)
            .or_default()
            .clone()
    }

    /// Records a failed request: on its version when one is known.
    pub fn failure(&self, version: Option<u64>, reason: &'static str) {
        match version {
            Some(v) => self.version(v).failure(reason),
            None => count(&self.unversioned_failures, reason),
        }
    }

    /// Records a reload outcome.
    pub fn reload(&self, result: &'static str) {
        count(&self.reloads, result);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            versions: self
                .versions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(v, stats)| (*v, stats.snapshot()))
                .collect(),
            unversioned_failures: lock(&self.unversioned_failures).clone(),
            reloads: lock(&self.reloads).clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn count(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *lock(map).entry(key).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_kept_per_version_and_before_a_version_is_known() {
        let stats = ModelStats::default();
        let ms = Duration::from_millis(1);
        stats.version(1).success(3 * ms, ms, 2 * ms);
        stats.version(2).success(ms, ms, ms);
        stats.version(2).success(ms, ms, ms);
        stats.failure(Some(2), "overloaded");
        stats.failure(None, "unknown_model");
        let s = stats.snapshot();
        assert_eq!(s.version(1).success, 1);
        assert_eq!(s.version(1).request_ns, 3_000_000);
        assert_eq!(s.version(2).success, 2);
        assert_eq!(s.version(2).failures["overloaded"], 1);
        assert_eq!(s.version(3).success, 0);
        assert_eq!(s.unversioned_failures["unknown_model"], 1);
    }
}
