//! `onnxd bench MODEL.onnx`: an in-process load generator. Client threads submit requests to
//! the model's inference threads for a duration or a count, with a progress bar, then report
//! throughput and latency percentiles (end to end, and the engine's own compute time).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::infer::{read_inputs, InferError};
use crate::engine::{select, EngineOptions};

/// How much load to generate.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// Concurrent client threads.
    pub concurrency: usize,
    /// Stop after this long (unless `count` is set).
    pub duration: Duration,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Unmeasured requests first.
    pub warmup: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Measured figures.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Engine used.
    pub engine: String,
    /// Provider used.
    pub provider: String,
    /// Client threads.
    pub concurrency: usize,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time of the measured part.
    pub seconds: f64,
    /// Requests per second.
    pub throughput: f64,
    /// End-to-end latency, microseconds.
    pub latency_us: Percentiles,
    /// Engine compute time, microseconds.
    pub compute_us: Percentiles,
}

/// Mean and percentiles of a sample, in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    fn of(mut sample: Vec<f64>) -> Percentiles {
        if sample.is_empty() {
            return Percentiles::default();
        }
        sample.sort_by(f64::total_cmp);
        let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            mean: sample.iter().sum::<f64>() / sample.len() as f64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        }
    }
}

/// Loads the model and runs the plan against it.
pub fn bench(
    model_path: &Path,
    input_args: &[String],
    options: &EngineOptions,
    plan: &BenchPlan,
) -> Result<BenchReport, InferError> {
    let model = Arc::new(select::load_path("bench", model_path, options)?);
    let inputs = if input_args.is_empty() {
        model.info.synthetic_inputs()?
    } else {
        let single = (model.info.inputs.len() == 1).then(|| model.info.inputs[0].name.as_str());
        read_inputs(input_args, single)?.tensors
    };
    for _ in 0..plan.warmup {
        model.infer_blocking(inputs.clone(), None)?.outputs?;
    }
    let progress = if plan.progress {
        let bar = match plan.count {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new(plan.duration.as_secs().max(1)),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (model, inputs, stop, issued) = (model.clone(), inputs.clone(), stop.clone(), issued.clone());
            let count = plan.count;
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut computes = Vec::new();
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if count.is_some_and(|c| n >= c) {
                        break;
                    }
                    let t0 = Instant::now();
                    match model.infer_blocking(inputs.clone(), None) {
                        Ok(r) if r.outputs.is_ok() => {
                            latencies.push(t0.elapsed().as_secs_f64() * 1e6);
                            computes.push(r.compute_time.as_secs_f64() * 1e6);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, computes, errors, Instant::now())
            })
        })
        .collect();
    while !clients.iter().all(|c| c.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = started.elapsed();
        match plan.count {
            Some(_) => progress.set_position(issued.load(Ordering::Relaxed)),
            None => {
                progress.set_position(elapsed.as_secs());
                if elapsed >= plan.duration {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    progress.finish_and_clear();
    let (mut latencies, mut computes, mut errors, mut finished) = (Vec::new(), Vec::new(), 0, started);
    for client in clients {
        let (l, c, e, end) = client.join().expect("bench client thread");
        latencies.extend(l);
        computes.extend(c);
        errors += e;
        finished = finished.max(end);
    }
    // Measured up to the last client's last reply, not to the progress loop's next tick.
    let seconds = (finished - started).as_secs_f64();
    let requests = latencies.len() as u64;
    Ok(BenchReport {
        engine: model.engine.to_string(),
        provider: model.provider.clone(),
        concurrency: plan.concurrency.max(1),
        requests,
        errors,
        seconds,
        throughput: requests as f64 / seconds,
        latency_us: Percentiles::of(latencies),
        compute_us: Percentiles::of(computes),
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "engine {} ({}), concurrency {}",
            self.engine, self.provider, self.concurrency
        )?;
        writeln!(
            f,
            "{} requests ({} errors) in {:.2} s: {:.1} req/s",
            self.requests, self.errors, self.seconds, self.throughput
        )?;
        for (what, p) in [("latency", &self.latency_us), ("compute", &self.compute_us)] {
            writeln!(
                f,
                "{what:8} mean {:.1} us  p50 {:.1}  p90 {:.1}  p99 {:.1}",
                p.mean, p.p50, p.p90, p.p99
            )?;
        }
        Ok(())
    }
}
