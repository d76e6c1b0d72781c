//! `onnxd bench MODEL [--http HOST:PORT | --grpc HOST:PORT]`: a load generator. Client threads
//! send requests — to the model loaded in this process through the serving core (as every
//! transport reaches it), over HTTP (Triton's binary tensor extension) or over gRPC
//! ([`super::bench_grpc`]) to a running server — for a duration or a
//! count, with progress on stderr, then report throughput, latency percentiles (end to end,
//! and the engine's own compute time) and the client's CPU time per request.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::infer::{read_inputs, InferError, Served};
use crate::repository::loader::LoadSettings;
use crate::serving::InferRequest;
use crate::tensor::Tensors;

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
    /// Model instances (inference threads) serving them, when the model is in this process.
    pub instances: Option<usize>,
    /// In-process: the model's `max_batch_size` (0: no batching).
    pub max_batch_size: Option<usize>,
    /// In-process: mean rows per model execution during the run.
    pub mean_batch: Option<f64>,
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
    /// CPU time of this (client) process per request, microseconds.
    pub client_cpu_us_per_request: f64,
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
    pub(crate) fn of(mut sample: Vec<f64>) -> Percentiles {
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

/// Progress on stderr: a bar on a terminal, else a plain line every second (so a log or a
/// CI job shows it too); nothing when the plan asks for none.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    count: Option<u64>,
    next_line: Duration,
}

impl Progress {
    fn new(plan: &BenchPlan) -> Progress {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (plan.progress && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(plan.count.unwrap_or(plan.duration.as_secs().max(1)));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                    .expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            lines: plan.progress && !terminal,
            count: plan.count,
            next_line: Duration::from_secs(1),
        }
    }

    fn update(&mut self, elapsed: Duration, issued: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(if self.count.is_some() {
                issued
            } else {
                elapsed.as_secs()
            });
        }
        if self.lines && elapsed >= self.next_line {
            self.next_line += Duration::from_secs(1);
            let rate = issued as f64 / elapsed.as_secs_f64();
            let _ = writeln!(
                std::io::stderr(),
                "bench: {:.0} s, {issued} requests, {rate:.1} req/s",
                elapsed.as_secs_f64()
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Where the load goes.
pub enum Target {
    /// The model loaded in this process.
    InProcess,
    /// A running onnxd (or Triton) at `host:port`, serving the model as `model`; requests use
    /// Triton's binary tensor extension.
    Http {
        /// `host:port`.
        address: String,
        /// Model name on the server.
        model: String,
    },
    /// A running onnxd (or Triton) gRPC endpoint at `host:port`: unary `ModelInfer`, or one
    /// `ModelStreamInfer` stream per client with `streaming`.
    Grpc {
        /// `host:port`.
        address: String,
        /// Model name on the server.
        model: String,
        /// One stream per client instead of unary calls.
        streaming: bool,
    },
}

/// One client's way of sending a request; returns the server's compute time.
type Call = Box<dyn FnMut(&Tensors) -> Result<Duration, String> + Send>;

fn grpc_call(address: &str, model: &str, streaming: bool) -> Call {
    let mut client = super::bench_grpc::GrpcClient::new(address, model, streaming);
    Box::new(move |inputs: &Tensors| client.call(inputs))
}

fn http_call(address: &str, model: &str) -> Call {
    let mut client = super::bench_http::HttpClient::new(address, model);
    Box::new(move |inputs: &Tensors| client.call(inputs))
}

/// CPU time (user + system) of this process so far.
pub(crate) fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // After the command name: state is not numeric, so utime and stime are fields 11 and 12 here.
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// Loads the model and runs the plan against the target.
pub fn bench(
    model_path: &Path,
    input_args: &[String],
    settings: &LoadSettings,
    plan: &BenchPlan,
    target: &Target,
) -> Result<BenchReport, InferError> {
    let served = Arc::new(Served::load(model_path, settings)?);
    let inputs = if input_args.is_empty() {
        served.unit_inputs()?
    } else {
        read_inputs(input_args, served.single_input().as_deref())?.tensors
    };
    let new_call = || -> Call {
        match target {
            Target::InProcess => in_process_call(served.clone()),
            Target::Http { address, model } => http_call(address, model),
            Target::Grpc {
                address,
                model,
                streaming,
            } => grpc_call(address, model, *streaming),
        }
    };
    let mut warmup = new_call();
    for _ in 0..plan.warmup {
        warmup(&inputs).map_err(|e| InferError::Input {
            file: "warm-up".into(),
            message: e,
        })?;
    }
    let (engine, provider) = match target {
        Target::InProcess => {
            let state = served.router.get(&served.name).map(|h| h.state())?;
            (
                state.engine.clone().unwrap_or_default(),
                state.provider.clone().unwrap_or_default(),
            )
        }
        Target::Http { address, model } => (format!("http://{address}"), model.clone()),
        Target::Grpc {
            address,
            model,
            streaming,
        } => {
            let how = if *streaming { "grpc+stream" } else { "grpc" };
            (format!("{how}://{address}"), model.clone())
        }
    };
    let executions = || executions(&served);
    let before = executions();
    let cpu_before = process_cpu();
    let measured = match target {
        Target::InProcess => drive_in_process(plan, &served, &inputs),
        Target::Http { .. } | Target::Grpc { .. } => drive(plan, new_call, &inputs),
    };
    let cpu = process_cpu().saturating_sub(cpu_before);
    let in_process = matches!(target, Target::InProcess);
    let (inferences, runs) = (executions().0 - before.0, executions().1 - before.1);
    let requests = measured.latencies.len() as u64;
    Ok(BenchReport {
        engine,
        provider,
        client_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
        concurrency: plan.concurrency.max(1),
        instances: in_process.then_some(settings.engine.instances.max(1)),
        max_batch_size: in_process.then(|| served.policy().map_or(0, |p| p.max_batch_size)),
        mean_batch: (in_process && runs > 0).then(|| inferences as f64 / runs as f64),
        requests,
        errors: measured.errors,
        seconds: measured.seconds,
        throughput: requests as f64 / measured.seconds,
        latency_us: Percentiles::of(measured.latencies),
        compute_us: Percentiles::of(measured.computes),
    })
}

/// `(inferences, executions)` of the model's serving version so far.
fn executions(served: &Served) -> (u64, u64) {
    let Ok(handle) = served.router.get(&served.name) else {
        return (0, 0);
    };
    let stats = handle.stats.snapshot();
    stats
        .versions
        .values()
        .fold((0, 0), |(i, e), v| (i + v.inferences, e + v.executions))
}

/// One in-process request: the model's inputs, through the serving core (as every transport).
fn in_process_request(served: &Served, inputs: &Tensors) -> InferRequest {
    InferRequest {
        model: served.name.clone(),
        inputs: inputs.clone(),
        ..Default::default()
    }
}

/// The warm-up's client of the model in this process.
fn in_process_call(served: Arc<Served>) -> Call {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    Box::new(move |inputs: &Tensors| {
        let response = runtime
            .block_on(served.router.infer(in_process_request(&served, inputs)))
            .map_err(|e| e.to_string())?;
        Ok(response.compute_time)
    })
}

/// What the clients measured.
#[derive(Default)]
struct Measured {
    latencies: Vec<f64>,
    computes: Vec<f64>,
    errors: u64,
    seconds: f64,
}

impl Measured {
    fn record(&mut self, started: Instant, outcome: Result<Duration, String>) {
        match outcome {
            Ok(compute) => {
                self.latencies.push(started.elapsed().as_secs_f64() * 1e6);
                self.computes.push(compute.as_secs_f64() * 1e6);
            }
            Err(_) => self.errors += 1,
        }
    }

    /// All clients' figures, measured up to the last client's last reply (not to the progress
    /// loop's next tick).
    fn merge(started: Instant, clients: impl IntoIterator<Item = (Measured, Instant)>) -> Measured {
        let mut all = Measured::default();
        let mut finished = started;
        for (measured, end) in clients {
            all.latencies.extend(measured.latencies);
            all.computes.extend(measured.computes);
            all.errors += measured.errors;
            finished = finished.max(end);
        }
        all.seconds = (finished - started).as_secs_f64();
        all
    }
}

/// What the clients share: when to stop and how many requests were issued.
#[derive(Clone)]
struct Pacing {
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
    count: Option<u64>,
}

impl Pacing {
    fn new(plan: &BenchPlan) -> Pacing {
        Pacing {
            stop: Arc::new(AtomicBool::new(false)),
            issued: Arc::new(AtomicU64::new(0)),
            count: plan.count,
        }
    }

    /// Whether a client may send one more request.
    fn next(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.count.is_none_or(|c| n < c)
    }

    /// Shows progress until every client is done; stops them when the duration is over.
    fn watch(&self, plan: &BenchPlan, started: Instant, done: impl Fn() -> bool) {
        let mut progress = Progress::new(plan);
        while !done() {
            std::thread::sleep(Duration::from_millis(50));
            let elapsed = started.elapsed();
            progress.update(elapsed, self.issued.load(Ordering::Relaxed));
            if plan.count.is_none() && elapsed >= plan.duration {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
        progress.finish();
    }
}

/// Runs `plan.concurrency` client threads, each with its own [`Call`], until the duration or
/// count is reached, with progress on stderr.
fn drive(plan: &BenchPlan, new_call: impl Fn() -> Call, inputs: &Tensors) -> Measured {
    let pacing = Pacing::new(plan);
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (mut call, inputs, pacing) = (new_call(), inputs.clone(), pacing.clone());
            std::thread::spawn(move || {
                let mut measured = Measured::default();
                while pacing.next() {
                    let t0 = Instant::now();
                    measured.record(t0, call(&inputs));
                }
                (measured, Instant::now())
            })
        })
        .collect();
    pacing.watch(plan, started, || clients.iter().all(|c| c.is_finished()));
    Measured::merge(
        started,
        clients
            .into_iter()
            .map(|c| c.join().expect("bench client thread")),
    )
}

/// In-process clients: `plan.concurrency` tasks on one multi-threaded runtime calling the
/// serving core, as the transports' connection tasks do (not one thread per client: a reply
/// would then cost a thread wake-up that no transport pays).
fn drive_in_process(plan: &BenchPlan, served: &Arc<Served>, inputs: &Tensors) -> Measured {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let pacing = Pacing::new(plan);
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (served, inputs, pacing) = (served.clone(), inputs.clone(), pacing.clone());
            runtime.spawn(async move {
                let mut measured = Measured::default();
                while pacing.next() {
                    let t0 = Instant::now();
                    let outcome = served.router.infer(in_process_request(&served, &inputs)).await;
                    measured.record(t0, outcome.map(|r| r.compute_time).map_err(|e| e.to_string()));
                }
                (measured, Instant::now())
            })
        })
        .collect();
    pacing.watch(plan, started, || clients.iter().all(|c| c.is_finished()));
    let joined = runtime.block_on(async {
        let mut joined = Vec::with_capacity(clients.len());
        for client in clients {
            joined.push(client.await.expect("bench client task"));
        }
        joined
    });
    Measured::merge(started, joined)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "engine {} ({}), concurrency {}",
            self.engine, self.provider, self.concurrency
        )?;
        if let Some(n) = self.instances {
            write!(f, ", {n} instance(s)")?;
        }
        match (self.max_batch_size, self.mean_batch) {
            (Some(0), _) => writeln!(f, ", no batching")?,
            (Some(max), Some(mean)) => writeln!(f, ", batches of up to {max} (mean {mean:.2})")?,
            _ => writeln!(f)?,
        }
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
        writeln!(
            f,
            "client CPU {:.1} us per request",
            self.client_cpu_us_per_request
        )?;
        Ok(())
    }
}
