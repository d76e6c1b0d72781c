//! Per-model, per-version counters that the protocol layers and metrics read: successes,
//! failures by reason, request, queue and compute time, the last inference, reloads by result.
//! Lock-free on the success path once a version's counters exist (a read lock to find them);
//! only errors and the first request of a version take a mutex. Counters of a retired version
//! are kept, so Prometheus counters never go backwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds of the batch-size histogram (executions by batch size).
pub const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Upper bounds (seconds) of the queue-delay histogram (requests by time waiting).
pub const DELAY_BUCKETS: [f64; 10] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 250e-3,
];

/// Upper bounds (seconds) of the request-latency histogram (arrival to result), read for the
/// status page's p50/p99.
pub const LATENCY_BUCKETS: [f64; 16] = [
    250e-6, 500e-6, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 20e-3, 35e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
    5.0,
];

/// A histogram of fixed bounds counted with atomics.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Observations at or below each bound (not cumulative), then above the last.
    counts: [AtomicU64; N],
    above: AtomicU64,
    /// Sum in millionths of a unit.
    sum_micro: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            above: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Counts an observation.
    pub fn observe(&self, value: f64) {
        match self.bounds.iter().position(|&b| value <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micro
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket, the sum and the count.
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&bound, count)| {
                total += count.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect();
        total += self.above.load(Ordering::Relaxed);
        (
            buckets,
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
            total,
        )
    }
}

/// Counters of one model version.
#[derive(Debug)]
pub struct VersionStats {
    success: AtomicU64,
    inferences: AtomicU64,
    executions: AtomicU64,
    request_ns: AtomicU64,
    queue_ns: AtomicU64,
    compute_ns: AtomicU64,
    last_inference_ms: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Executions by batch size.
    pub batch_sizes: Histogram<9>,
    /// Requests by time waiting for a batch (seconds).
    pub queue_delay: Histogram<10>,
    /// Successful requests by time from arrival to result (seconds).
    pub latency: Histogram<16>,
    /// Executions and their engine time, by exact batch size.
    batches: Mutex<BTreeMap<usize, (u64, u64)>>,
}

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            success: AtomicU64::new(0),
            inferences: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            request_ns: AtomicU64::new(0),
            queue_ns: AtomicU64::new(0),
            compute_ns: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            failures: Mutex::default(),
            batch_sizes: Histogram::new(&BATCH_BUCKETS),
            queue_delay: Histogram::new(&DELAY_BUCKETS),
            latency: Histogram::new(&LATENCY_BUCKETS),
            batches: Mutex::default(),
        }
    }
}

/// What one successful request cost and which execution answered it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// Arrival to result.
    pub request: Duration,
    /// Waiting for an instance.
    pub queue: Duration,
    /// The execution's time in the engine.
    pub compute: Duration,
    /// The request's own batch size (rows).
    pub rows: usize,
    /// The execution's batch size.
    pub batch_size: usize,
    /// Whether it counts its execution (executions are counted once, by the first of their
    /// requests to succeed: [`crate::engine::batch::Execution::count_once`]).
    pub counts_execution: bool,
}

/// A copy of one version's counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VersionSnapshot {
    /// Successful requests.
    pub success: u64,
    /// Inferences of successful requests (a request of batch n counts n).
    pub inferences: u64,
    /// Model executions (a batch of several requests counts once).
    pub executions: u64,
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
    /// Executions and their engine nanoseconds, by batch size.
    pub batches: BTreeMap<usize, (u64, u64)>,
}

impl VersionStats {
    /// Records a successful request.
    pub fn success(&self, served: Served) {
        let add = |counter: &AtomicU64, d: Duration| {
            counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        };
        self.success.fetch_add(1, Ordering::Relaxed);
        self.inferences.fetch_add(served.rows as u64, Ordering::Relaxed);
        add(&self.request_ns, served.request);
        add(&self.queue_ns, served.queue);
        // Each request of a batch waited for the whole execution.
        add(&self.compute_ns, served.compute);
        self.queue_delay.observe(served.queue.as_secs_f64());
        self.latency.observe(served.request.as_secs_f64());
        if served.counts_execution {
            self.executions.fetch_add(1, Ordering::Relaxed);
            self.batch_sizes.observe(served.batch_size as f64);
            let mut batches = lock(&self.batches);
            let (count, ns) = batches.entry(served.batch_size).or_default();
            *count += 1;
            *ns += served.compute.as_nanos() as u64;
        }
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
            inferences: self.inferences.load(Ordering::Relaxed),
            executions: self.executions.load(Ordering::Relaxed),
            failures: lock(&self.failures).clone(),
            request_ns: self.request_ns.load(Ordering::Relaxed),
            queue_ns: self.queue_ns.load(Ordering::Relaxed),
            compute_ns: self.compute_ns.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            batches: lock(&self.batches).clone(),
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

    /// Every version's counters.
    pub fn all_versions(&self) -> Vec<(u64, Arc<VersionStats>)> {
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        versions.iter().map(|(v, s)| (*v, s.clone())).collect()
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
        let served = |request, queue, compute| Served {
            request,
            queue,
            compute,
            rows: 1,
            batch_size: 1,
            counts_execution: true,
        };
        stats.version(1).success(served(3 * ms, ms, 2 * ms));
        stats.version(2).success(served(ms, ms, ms));
        stats.version(2).success(Served {
            rows: 3,
            batch_size: 4,
            ..served(ms, ms, ms)
        });
        stats.failure(Some(2), "overloaded");
        stats.failure(None, "unknown_model");
        let s = stats.snapshot();
        assert_eq!(s.version(1).success, 1);
        assert_eq!(s.version(1).request_ns, 3_000_000);
        assert_eq!(s.version(2).success, 2);
        assert_eq!((s.version(2).inferences, s.version(2).executions), (4, 2));
        assert_eq!(s.version(2).failures["overloaded"], 1);
        assert_eq!(s.version(3).success, 0);
        assert_eq!(s.unversioned_failures["unknown_model"], 1);
    }
}
