//! Shadow inference: a candidate version loaded beside the one serving receives a copy of
//! live requests, off the response path. The [`super::Router`] offers each request that ran on
//! the version the shadow is compared against (a configurable fraction of them) **after** the
//! client's answer is complete; a spawned task runs the same input tensors on the candidate,
//! post-processes them with the candidate's `[output]`, and compares: max |Δ| and relative
//! error over the output tensors, top-1 agreement of classify/detect results (the first
//! result's label), or — for raw outputs — agreement when the relative error is within the
//! tolerance. Engine time of both sides is kept for the p99 comparison, per row of the
//! execution each ran in: copies that queue up behind each other on the candidate are batched
//! together, and charging each the whole batch's time would compare the candidate on bigger
//! batches than the serving version ran. Two clocks are kept: wall time (what a client waits)
//! and the inference thread's CPU time (wall time less the time the OS ran something else on
//! its core). The comparison that decides is on CPU time: the candidate runs at other moments
//! than the request it copies, so on a box whose cores are shared (a build, a camera decoder,
//! other models) preemption lands on one side and not the other; measured on a 2-core box with
//! one busy process, an identical copy's wall-clock p99 was 1.4–8.5× the serving version's. The client never waits for, or sees, the candidate;
//! a full candidate queue drops the copy (counted).
//!
//! This module measures; whoever attached the shadow (model delivery) decides what the
//! figures mean.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{InferResponse, LoadedVersion};
use crate::engine::EngineError;
use crate::pipeline::postprocess::Detection;
use crate::pipeline::preprocess::Transform;
use crate::tensor::Tensors;

/// Latency samples kept per side (a ring: a long shadow keeps the most recent ones).
const MAX_SAMPLES: usize = 100_000;

/// How a shadow samples and what counts as agreement for raw outputs.
#[derive(Clone, Copy, Debug)]
pub struct ShadowSettings {
    /// Fraction of eligible requests copied (1.0 = all).
    pub fraction: f64,
    /// Raw outputs agree when max |Δ| / max |current| is at most this.
    pub rtol: f64,
}

/// Comparison counters that outlive any one shadow (metrics: they never go backwards).
#[derive(Debug, Default)]
pub struct ComparisonCounters {
    /// Copies whose outputs agreed.
    pub agree: AtomicU64,
    /// Copies whose outputs disagreed.
    pub disagree: AtomicU64,
    /// Copies the candidate failed.
    pub error: AtomicU64,
    /// Copies dropped because the candidate's queue was full.
    pub dropped: AtomicU64,
}

/// A candidate version receiving copies of a model's requests.
pub struct Shadow {
    /// The candidate.
    pub version: Arc<LoadedVersion>,
    /// The serving version it is compared against; requests on other versions are not copied.
    pub against: u64,
    settings: ShadowSettings,
    started: Instant,
    tally: Mutex<Tally>,
    counters: Arc<ComparisonCounters>,
}

#[derive(Default)]
struct Tally {
    compared: u64,
    agreed: u64,
    errors: u64,
    dropped: u64,
    max_abs_diff: f64,
    max_rel_error: f64,
    current: Samples,
    candidate: Samples,
    last_error: Option<String>,
}

/// What a shadow has measured so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShadowFigures {
    /// Requests compared (candidate answered).
    pub compared: u64,
    /// Of those, how many agreed.
    pub agreed: u64,
    /// `agreed / compared` (0 when nothing was compared).
    pub agreement: f64,
    /// Copies the candidate failed.
    pub errors: u64,
    /// `errors / (compared + errors)`.
    pub error_rate: f64,
    /// Copies dropped (candidate queue full); not errors.
    pub dropped: u64,
    /// Largest |Δ| between the outputs of any request.
    pub max_abs_diff: f64,
    /// Largest relative error (max |Δ| / max |current|) of any request.
    pub max_rel_error: f64,
    /// p99 engine wall time of the candidate (per row of its execution's batch), µs.
    pub p99_us: f64,
    /// p99 engine wall time of the current version on the same requests (per row), µs.
    pub current_p99_us: f64,
    /// `p99_us / current_p99_us` (0 when unknown).
    pub p99_ratio: f64,
    /// p99 on-CPU engine time of the candidate (per row), µs.
    pub cpu_p99_us: f64,
    /// p99 on-CPU engine time of the current version on the same requests (per row), µs.
    pub current_cpu_p99_us: f64,
    /// `cpu_p99_us / current_cpu_p99_us` (0 when unknown): what `max_p99_ratio` bounds.
    pub cpu_p99_ratio: f64,
    /// Seconds since the shadow started.
    pub elapsed_secs: f64,
    /// The candidate's last error, if any.
    pub last_error: Option<String>,
}

impl Shadow {
    /// A shadow of `version` compared against serving version `against`.
    pub fn new(
        version: Arc<LoadedVersion>,
        against: u64,
        settings: ShadowSettings,
        counters: Arc<ComparisonCounters>,
    ) -> Shadow {
        Shadow {
            version,
            against,
            settings,
            started: Instant::now(),
            tally: Mutex::default(),
            counters,
        }
    }

    /// Whether this request (which ran on `version`) gets a copy.
    pub(super) fn takes(&self, version: u64) -> bool {
        version == self.against && (self.settings.fraction >= 1.0 || fastrand::f64() < self.settings.fraction)
    }

    /// Copies answered so far (compared or failed): what `shadow_requests` counts.
    pub fn answered(&self) -> u64 {
        let tally = self.lock();
        tally.compared + tally.errors
    }

    /// How long it has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The figures so far.
    pub fn figures(&self) -> ShadowFigures {
        let tally = self.lock();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (p99_us, current_p99_us) = (p99(&tally.candidate.wall), p99(&tally.current.wall));
        let (cpu_p99_us, current_cpu_p99_us) = (p99(&tally.candidate.cpu), p99(&tally.current.cpu));
        ShadowFigures {
            compared: tally.compared,
            agreed: tally.agreed,
            agreement: ratio(tally.agreed, tally.compared),
            errors: tally.errors,
            error_rate: ratio(tally.errors, tally.compared + tally.errors),
            dropped: tally.dropped,
            max_abs_diff: tally.max_abs_diff,
            max_rel_error: tally.max_rel_error,
            p99_us,
            current_p99_us,
            p99_ratio: quotient(p99_us, current_p99_us),
            cpu_p99_us,
            current_cpu_p99_us,
            cpu_p99_ratio: quotient(cpu_p99_us, current_cpu_p99_us),
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            last_error: tally.last_error.clone(),
        }
    }

    /// Runs a copy of a request that was answered by `current` on the candidate, in a task of
    /// its own; returns at once.
    pub(super) fn offer(
        self: Arc<Self>,
        inputs: Tensors,
        outputs: Option<Vec<String>>,
        transform: Option<Transform>,
        current: &InferResponse,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let primary = Primary {
            outputs: current.outputs.clone(),
            result: current.result.clone(),
            time: EngineTime::per_row(current.compute_time, &current.execution),
        };
        runtime.spawn(async move { self.run(inputs, outputs, transform, primary).await });
    }

    async fn run(
        &self,
        inputs: Tensors,
        outputs: Option<Vec<String>>,
        transform: Option<Transform>,
        primary: Primary,
    ) {
        let reply = match self.version.model.submit(inputs, outputs.as_deref(), None) {
            Ok(reply) => reply,
            Err(EngineError::Overloaded(_)) => return self.dropped(),
            Err(e) => return self.failed(e.to_string()),
        };
        let result = match reply.await {
            Ok(result) => result,
            Err(_) => return self.failed("the candidate's inference threads stopped".into()),
        };
        let candidate = match result.outputs {
            Ok(outputs) => outputs,
            Err(EngineError::Overloaded(_)) => return self.dropped(),
            Err(e) => return self.failed(e.to_string()),
        };
        let detections = match &self.version.post {
            Some(post) => match post.apply(&candidate, transform.as_ref()) {
                Ok(d) => Some(d),
                Err(e) => return self.failed(format!("post-processing: {e}")),
            },
            None => None,
        };
        let (abs, rel) = difference(&primary.outputs, &candidate);
        let agreed = match (&primary.result, &detections) {
            (Some(current), Some(candidate)) => top1(current) == top1(candidate),
            _ => rel <= self.settings.rtol,
        };
        let time = EngineTime::per_row(result.compute_time, &result.execution);
        self.compared(agreed, abs, rel, primary.time, time);
    }

    fn compared(&self, agreed: bool, abs: f64, rel: f64, current: EngineTime, candidate: EngineTime) {
        let counter = if agreed {
            &self.counters.agree
        } else {
            &self.counters.disagree
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut tally = self.lock();
        tally.compared += 1;
        tally.agreed += u64::from(agreed);
        tally.max_abs_diff = tally.max_abs_diff.max(abs);
        tally.max_rel_error = tally.max_rel_error.max(rel);
        let at = (tally.compared - 1) as usize % MAX_SAMPLES;
        tally.current.record(at, current);
        tally.candidate.record(at, candidate);
    }

    fn failed(&self, message: String) {
        self.counters.error.fetch_add(1, Ordering::Relaxed);
        let mut tally = self.lock();
        tally.errors += 1;
        tally.last_error = Some(message);
    }

    fn dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.lock().dropped += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the current version answered.
struct Primary {
    outputs: Tensors,
    result: Option<Vec<Detection>>,
    time: EngineTime,
}

/// An execution's engine time per row of its batch, by both clocks.
#[derive(Clone, Copy)]
struct EngineTime {
    wall: Duration,
    cpu: Duration,
}

impl EngineTime {
    fn per_row(wall: Duration, execution: &crate::engine::batch::Execution) -> EngineTime {
        let rows = u32::try_from(execution.batch_size.max(1)).unwrap_or(u32::MAX);
        EngineTime {
            wall: wall / rows,
            cpu: execution.cpu_time / rows,
        }
    }
}

/// One side's engine times, µs (rings of [`MAX_SAMPLES`]).
#[derive(Default)]
struct Samples {
    wall: Vec<u32>,
    cpu: Vec<u32>,
}

impl Samples {
    fn record(&mut self, at: usize, time: EngineTime) {
        record(&mut self.wall, at, time.wall);
        record(&mut self.cpu, at, time.cpu);
    }
}

fn record(samples: &mut Vec<u32>, at: usize, value: Duration) {
    let micros = u32::try_from(value.as_micros()).unwrap_or(u32::MAX);
    match samples.get_mut(at) {
        Some(slot) => *slot = micros,
        None => samples.push(micros),
    }
}

/// `a / b`, 0 when `b` is unknown (0).
fn quotient(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The nearest-rank 99th percentile.
fn p99(samples: &[u32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The label of the first (highest-ranked) result.
fn top1(results: &[Detection]) -> Option<&str> {
    results.first().map(|d| d.label.as_str())
}

/// Max |Δ| over the outputs both sides have, and that over max |current|. Outputs of another
/// shape, or missing on one side, are an infinite difference.
fn difference(current: &Tensors, candidate: &Tensors) -> (f64, f64) {
    let mut max_diff = 0.0f64;
    let mut max_current = 0.0f64;
    for (name, tensor) in current {
        let Some((_, other)) = candidate.iter().find(|(n, _)| n == name) else {
            return (f64::INFINITY, f64::INFINITY);
        };
        if tensor.shape() != other.shape() {
            return (f64::INFINITY, f64::INFINITY);
        }
        let (Some(a), Some(b)) = (tensor.to_f64_vec(), other.to_f64_vec()) else {
            // BYTES: equal or not.
            if tensor != other {
                return (f64::INFINITY, f64::INFINITY);
            }
            continue;
        };
        for (x, y) in a.iter().zip(&b) {
            let d = (x - y).abs();
            max_diff = if d.is_nan() {
                f64::INFINITY
            } else {
                max_diff.max(d)
            };
            max_current = max_current.max(x.abs());
        }
    }
    let rel = if max_diff == 0.0 {
        0.0
    } else {
        max_diff / max_current.max(f64::MIN_POSITIVE)
    };
    (max_diff, rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn tensor(values: &[f32]) -> Tensors {
        vec![(
            "y".into(),
            Tensor::from_values(vec![values.len()], values).unwrap(),
        )]
    }

    #[test]
    fn differences_are_absolute_and_relative_to_the_current_output() {
        assert_eq!(difference(&tensor(&[1.0, 2.0]), &tensor(&[1.0, 2.0])), (0.0, 0.0));
        let (abs, rel) = difference(&tensor(&[1.0, -4.0]), &tensor(&[1.5, -4.0]));
        assert!(
            (abs - 0.5).abs() < 1e-9 && (rel - 0.125).abs() < 1e-9,
            "{abs} {rel}"
        );
        assert_eq!(difference(&tensor(&[1.0]), &tensor(&[1.0, 2.0])).0, f64::INFINITY);
    }

    #[test]
    fn engine_time_is_shared_by_the_rows_of_a_batch() {
        let us = Duration::from_micros;
        let execution = |batch_size| crate::engine::batch::Execution {
            batch_size,
            cpu_time: us(400),
            ..Default::default()
        };
        let four = EngineTime::per_row(us(800), &execution(4));
        assert_eq!((four.wall, four.cpu), (us(200), us(100)));
        let none = EngineTime::per_row(us(800), &execution(0));
        assert_eq!((none.wall, none.cpu), (us(800), us(400)));
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let samples: Vec<u32> = (1..=200).collect();
        assert_eq!(p99(&samples), 198.0);
        assert_eq!(p99(&[5]), 5.0);
        assert_eq!(p99(&[]), 0.0);
    }
}
