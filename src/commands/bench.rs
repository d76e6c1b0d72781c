//! `onnxd bench MODEL.onnx [--http HOST:PORT]`: a load generator. Client threads send
//! requests — to the model loaded in this process, or over HTTP (Triton's binary tensor
//! extension) to a running server — for a duration or a count, with a progress bar, then report
//! throughput, latency percentiles (end to end, and the engine's own compute time) and the
//! client's CPU time per request.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::infer::{read_inputs, InferError};
use crate::engine::{select, EngineOptions, Tensors};

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
}

/// One client's way of sending a request; returns the server's compute time.
type Call = Box<dyn FnMut(&Tensors) -> Result<Duration, String> + Send>;

/// The binary-framed request body for `inputs`, and its JSON header length.
fn binary_request(inputs: &Tensors) -> (Vec<u8>, usize) {
    let wires: Vec<Vec<u8>> = inputs.iter().map(|(_, t)| t.to_wire()).collect();
    let header = serde_json::json!({
        "inputs": inputs.iter().zip(&wires).map(|((name, t), wire)| serde_json::json!({
            "name": name,
            "shape": t.shape(),
            "datatype": t.dtype().kserve_name(),
            "parameters": { "binary_data_size": wire.len() },
        })).collect::<Vec<_>>(),
        "parameters": { "binary_data_output": true },
    });
    let mut body = serde_json::to_vec(&header).expect("header serialises");
    let length = body.len();
    for wire in wires {
        body.extend_from_slice(&wire);
    }
    (body, length)
}

fn http_call(address: &str, model: &str) -> Call {
    let url = format!("http://{address}/v2/models/{model}/infer");
    let client = reqwest::Client::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    Box::new(move |inputs: &Tensors| {
        let (body, length) = binary_request(inputs);
        runtime.block_on(async {
            let response = client
                .post(&url)
                .header("Inference-Header-Content-Length", length)
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = response.status().is_success();
            let header_length: Option<usize> = response
                .headers()
                .get("inference-header-content-length")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            let json: serde_json::Value =
                serde_json::from_slice(&bytes[..header_length.unwrap_or(bytes.len()).min(bytes.len())])
                    .map_err(|e| e.to_string())?;
            if !ok {
                return Err(json["error"].as_str().unwrap_or("HTTP error").to_string());
            }
            Ok(Duration::from_micros(
                json["parameters"]["inference_us"].as_u64().unwrap_or(0),
            ))
        })
    })
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
    options: &EngineOptions,
    plan: &BenchPlan,
    target: &Target,
) -> Result<BenchReport, InferError> {
    let model = Arc::new(select::load_path("bench", model_path, options)?);
    let inputs = if input_args.is_empty() {
        model.info.synthetic_inputs()?
    } else {
        let single = (model.info.inputs.len() == 1).then(|| model.info.inputs[0].name.as_str());
        read_inputs(input_args, single)?.tensors
    };
    let new_call = || -> Call {
        match target {
            Target::InProcess => {
                let model = model.clone();
                Box::new(move |inputs: &Tensors| {
                    let result = model
                        .infer_blocking(inputs.clone(), None)
                        .map_err(|e| e.to_string())?;
                    result.outputs.map_err(|e| e.to_string())?;
                    Ok(result.compute_time)
                })
            }
            Target::Http { address, model } => http_call(address, model),
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
        Target::InProcess => (model.engine.to_string(), model.provider.clone()),
        Target::Http { address, model } => (format!("http://{address}"), model.clone()),
    };
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
    let cpu_before = process_cpu();
    let clients: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (mut call, inputs, stop, issued) = (new_call(), inputs.clone(), stop.clone(), issued.clone());
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
                    match call(&inputs) {
                        Ok(compute) => {
                            latencies.push(t0.elapsed().as_secs_f64() * 1e6);
                            computes.push(compute.as_secs_f64() * 1e6);
                        }
                        Err(_) => errors += 1,
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
    let cpu = process_cpu().saturating_sub(cpu_before);
    Ok(BenchReport {
        engine,
        provider,
        client_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
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
        writeln!(
            f,
            "client CPU {:.1} us per request",
            self.client_cpu_us_per_request
        )?;
        Ok(())
    }
}
