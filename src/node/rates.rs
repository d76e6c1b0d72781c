//! Rates over the last [`WINDOW`], sampled from cumulative counters: per model the
//! inferences per second and the p50/p99 request latency (estimated from the latency
//! histogram's buckets, interpolated linearly within a bucket as Prometheus'
//! `histogram_quantile` does), per camera the frames per second received and processed.
//! `None` where the window saw no request. What the status page and Home Assistant's rate
//! sensors show.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::camera::pipeline::CameraSnapshot;
use crate::serving::stats::LATENCY_BUCKETS;
use crate::serving::Router;

/// How often the rates are sampled (and over what time they are figured).
pub const WINDOW: Duration = Duration::from_secs(5);

/// A model's recent figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelRate {
    /// Inferences per second (a batch of n counts n).
    pub inferences_per_sec: f64,
    /// Median request latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile request latency, milliseconds.
    pub p99_ms: Option<f64>,
}

/// A camera's recent figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CameraRate {
    /// Frames received per second.
    pub fps_in: f64,
    /// Frames run through the model per second.
    pub fps_out: f64,
}

/// Cumulative counters of one model at a sample.
#[derive(Clone, Debug, Default)]
struct ModelCounters {
    inferences: u64,
    /// Non-cumulative counts per latency bucket, then the count above the last bound.
    latency: Vec<u64>,
}

#[derive(Default)]
struct Inner {
    at: Option<Instant>,
    models: BTreeMap<String, ModelCounters>,
    cameras: BTreeMap<String, (u64, u64)>,
    model_rates: BTreeMap<String, ModelRate>,
    camera_rates: BTreeMap<String, CameraRate>,
}

/// The latest rates of every model and camera.
#[derive(Default)]
pub struct Rates(Mutex<Inner>);

impl Rates {
    /// Takes a sample of the counters and figures the rates since the previous one.
    pub fn sample(&self, router: &Router, cameras: &BTreeMap<String, CameraSnapshot>) {
        let now = Instant::now();
        let models: BTreeMap<String, ModelCounters> = router
            .models()
            .iter()
            .map(|handle| (handle.name.clone(), model_counters(handle)))
            .collect();
        let frames: BTreeMap<String, (u64, u64)> = cameras
            .iter()
            .map(|(name, c)| (name.clone(), (c.received, c.processed)))
            .collect();
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let secs = inner.at.map(|at| now.duration_since(at).as_secs_f64());
        inner.model_rates = models
            .iter()
            .map(|(name, now)| {
                let before = inner.models.get(name).cloned().unwrap_or_default();
                (name.clone(), model_rate(&before, now, secs))
            })
            .collect();
        inner.camera_rates = frames
            .iter()
            .map(|(name, &(received, processed))| {
                let (r0, p0) = inner.cameras.get(name).copied().unwrap_or((received, processed));
                let per_sec = |d: u64| secs.filter(|s| *s > 0.0).map_or(0.0, |s| d as f64 / s);
                let rate = CameraRate {
                    fps_in: per_sec(received.saturating_sub(r0)),
                    fps_out: per_sec(processed.saturating_sub(p0)),
                };
                (name.clone(), rate)
            })
            .collect();
        inner.at = Some(now);
        inner.models = models;
        inner.cameras = frames;
    }

    /// A model's latest rates (zero and unknown before a sample saw it).
    pub fn model(&self, name: &str) -> ModelRate {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.model_rates.get(name).cloned().unwrap_or_default()
    }

    /// A camera's latest rates.
    pub fn camera(&self, name: &str) -> CameraRate {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.camera_rates.get(name).copied().unwrap_or_default()
    }
}

/// Inferences and latency buckets of every version of a model, added up.
fn model_counters(handle: &crate::serving::ModelHandle) -> ModelCounters {
    let mut counters = ModelCounters {
        inferences: 0,
        latency: vec![0; LATENCY_BUCKETS.len() + 1],
    };
    for (_, stats) in handle.stats.all_versions() {
        let (buckets, _, count) = stats.latency.read();
        let mut below = 0;
        for (slot, (_, cumulative)) in counters.latency.iter_mut().zip(&buckets) {
            *slot += cumulative - below;
            below = *cumulative;
        }
        counters.latency[LATENCY_BUCKETS.len()] += count - below;
    }
    let snapshot = handle.stats.snapshot();
    counters.inferences = snapshot.versions.values().map(|v| v.inferences).sum();
    counters
}

fn model_rate(before: &ModelCounters, now: &ModelCounters, secs: Option<f64>) -> ModelRate {
    let Some(secs) = secs.filter(|s| *s > 0.0) else {
        return ModelRate::default();
    };
    let window: Vec<u64> = now
        .latency
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.latency.get(i).copied().unwrap_or(0)))
        .collect();
    let ms = |q| quantile(q, &window).map(|s| (s * 1e6).round() / 1e3);
    ModelRate {
        inferences_per_sec: now.inferences.saturating_sub(before.inferences) as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

/// The `q` quantile (seconds) of observations counted per [`LATENCY_BUCKETS`] bucket (then
/// above the last bound); `None` without observations. Within a bucket the observations are
/// taken as spread evenly; above the last bound the answer is that bound.
pub fn quantile(q: f64, counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &n) in counts.iter().enumerate() {
        let Some(&upper) = LATENCY_BUCKETS.get(i) else {
            return Some(lower);
        };
        if n > 0 && (below + n) as f64 >= rank {
            let inside = (rank - below as f64) / n as f64;
            return Some(lower + (upper - lower) * inside.clamp(0.0, 1.0));
        }
        below += n;
        lower = upper;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_and_stop_at_the_last_bound() {
        let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
        assert_eq!(quantile(0.5, &counts), None);
        // 100 requests between 1 ms and 2 ms (the bucket (1 ms, 2 ms]).
        counts[3] = 100;
        let p50 = quantile(0.5, &counts).unwrap();
        assert!((p50 - 1.5e-3).abs() < 1e-9, "{p50}");
        let p99 = quantile(0.99, &counts).unwrap();
        assert!((p99 - 1.99e-3).abs() < 1e-9, "{p99}");
        // One slow request above every bound: p99 of 100 is still in the fast bucket, the
        // maximum is the last bound.
        counts[LATENCY_BUCKETS.len()] = 1;
        assert!(quantile(0.99, &counts).unwrap() < 2e-3);
        assert_eq!(quantile(1.0, &counts), Some(5.0));
    }

    #[test]
    fn rates_are_figured_over_the_window() {
        let before = ModelCounters {
            inferences: 10,
            latency: vec![0; LATENCY_BUCKETS.len() + 1],
        };
        let mut now = before.clone();
        now.inferences = 60;
        now.latency[0] = 50;
        let rate = model_rate(&before, &now, Some(5.0));
        assert_eq!(rate.inferences_per_sec, 10.0);
        assert_eq!(rate.p50_ms, Some(0.125));
        assert_eq!(model_rate(&before, &now, None), ModelRate::default());
    }
}
