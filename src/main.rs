//! The `onnxd` binary: parses the command line and dispatches to [`onnxd::commands`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use onnxd::commands::{bench, bench_mqtt, check, infer, inspect, run};
use onnxd::config::Config;
use onnxd::engine::{EngineChoice, EngineOptions, Provider};
use onnxd::repository::loader::{BatchOverrides, LoadSettings};

/// Serve ONNX models on edge machines (ONNX Runtime + tract).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Engine selection shared by the one-shot commands.
#[derive(clap::Args)]
struct EngineArgs {
    /// Engine: auto (ONNX Runtime, else tract), ort or tract [default: auto, or the model
    /// directory's sidecar].
    #[arg(long, value_enum)]
    engine: Option<EngineChoice>,
    /// Path of libonnxruntime.so (default: search, see `onnxd inspect`).
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Intra-op threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// ONNX Runtime execution providers to try, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Provider::Tensorrt, Provider::Cuda, Provider::Cpu])]
    providers: Vec<Provider>,
}

impl EngineArgs {
    fn options(&self, instances: usize) -> EngineOptions {
        EngineOptions {
            choice: self.engine.unwrap_or_default(),
            ort_library: self.ort_library.clone(),
            intra_threads: self.threads,
            providers: self.providers.clone(),
            instances,
            ..EngineOptions::default()
        }
    }

    /// Loading settings: `--engine`, when given, wins over a model directory's sidecar.
    fn settings(&self, instances: usize) -> LoadSettings {
        LoadSettings {
            engine: self.options(instances),
            require_signatures: false,
            trusted_keys: Vec::new(),
            force_engine: self.engine,
            batching: Default::default(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (default: $ONNXD_CONFIG, /etc/onnxd/onnxd.toml, ./config/onnxd.toml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and load every model of the repository; exit 0 only if all are good.
    Check {
        /// Config file (default: $ONNXD_CONFIG, /etc/onnxd/onnxd.toml, ./config/onnxd.toml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show a model's inputs, outputs, opsets and metadata, and which engines can run it.
    Inspect {
        /// ONNX file.
        model: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run one inference and print the KServe V2 response (with `result` for models with
    /// `[output]`).
    Infer {
        /// ONNX file, or a model directory (its model.toml, labels and versions apply).
        model: PathBuf,
        /// A V2 request JSON file, an image (model directories with [input]), NAME=FILE.npy,
        /// or FILE.npy (single-input models).
        #[arg(short, long = "input", required = true)]
        inputs: Vec<String>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Generate load against an in-process model and report throughput and latency.
    Bench(Box<BenchArgs>),
}

/// `onnxd bench`'s arguments.
#[derive(clap::Args)]
struct BenchArgs {
    /// ONNX file.
    model: PathBuf,
    /// Inputs as for `infer` (default: synthetic inputs, symbolic dims = 1).
    #[arg(short, long = "input")]
    inputs: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Model instances (inference threads).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests instead.
    #[arg(long)]
    count: Option<u64>,
    /// Unmeasured requests first.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Send the requests over HTTP to a running server at HOST:PORT instead (the local
    /// file still provides the inputs' signature).
    #[arg(long)]
    http: Option<String>,
    /// Send the requests over gRPC (KServe V2 / Triton ModelInfer, raw contents) to a running
    /// server at HOST:PORT instead.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "http")]
    grpc: Option<String>,
    /// gRPC: one ModelStreamInfer stream per client instead of unary calls.
    #[arg(long, requires = "grpc")]
    streaming: bool,
    /// Model name on the HTTP/gRPC server or MQTT daemon (default: the file's stem).
    #[arg(long, visible_alias = "model")]
    model_name: Option<String>,
    /// In-process: batch up to this many rows (0 = no batching) [default: the model
    /// directory's sidecar, else 4 for a model that batches].
    #[arg(long)]
    max_batch_size: Option<u64>,
    /// In-process: longest wait for a fuller batch, microseconds [default: the sidecar's, or 0].
    #[arg(long)]
    max_queue_delay_us: Option<u64>,
    /// In-process: CPUs of the engine's threads, as `[engine] cpus` ("0", "2-3"); the
    /// clients run on the other CPUs, as a daemon's transports do.
    #[arg(long, value_name = "LIST", conflicts_with_all = ["http", "grpc", "mqtt"])]
    cpus: Option<onnxd::cpus::CpuList>,
    #[command(flatten)]
    mqtt: MqttBenchArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `onnxd bench --mqtt`: requests over MQTT 5 through a broker to a running daemon.
#[derive(clap::Args)]
struct MqttBenchArgs {
    /// Send the requests over MQTT 5 (QoS 1, response topic + correlation data) through the
    /// broker at HOST:PORT to a running daemon instead; a single `-i` FILE.json is sent as it is.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["http", "grpc"])]
    mqtt: Option<String>,
    /// MQTT: the daemon's node id (default: this host's name, as the daemon's own default).
    #[arg(long, requires = "mqtt")]
    node: Option<String>,
    /// MQTT: the daemon's topic prefix.
    #[arg(long, default_value = "onnxd")]
    topic_prefix: String,
    /// MQTT: requests in flight (default: --concurrency).
    #[arg(long, requires = "mqtt")]
    window: Option<usize>,
}

/// `onnxd bench --mqtt`: builds the payload and the target, runs, prints.
fn bench_over_mqtt(
    model: &std::path::Path,
    inputs: &[String],
    name: &str,
    args: &MqttBenchArgs,
    plan: &bench::BenchPlan,
    engine: &EngineArgs,
    json: bool,
) -> anyhow::Result<()> {
    let broker = args.mqtt.as_deref().expect("called with --mqtt");
    let payload = bench_mqtt::payload(model, inputs, &engine.settings(1))?;
    let target = bench_mqtt::MqttTarget::new(broker, &args.topic_prefix, args.node.as_deref(), name)?;
    let plan = bench_mqtt::MqttPlan {
        window: args.window.unwrap_or(plan.concurrency),
        duration: plan.duration,
        count: plan.count,
        warmup: plan.warmup,
        progress: true,
        timeout: Duration::from_secs(10),
    };
    let report = bench_mqtt::run(&target, payload, &plan)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`onnxd inspect … | head`): nothing more to say, not an error.
        Err(e) if e.is::<ClosedPipe>() => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A file's name without its extension (`model.onnx` → `model`).
fn stem(path: &std::path::Path) -> String {
    path.file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Standard output was closed by its reader.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
struct ClosedPipe;

/// Writes a command's output; a closed pipe ends the command quietly instead of panicking.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedPipe.into()),
        other => Ok(other?),
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&Config::locate(config.as_deref())?)?;
            onnxd::telemetry::init(&config.log);
            config.warnings.iter().for_each(|w| tracing::warn!("{w}"));
            run::run(config)
        }
        Command::Check { config } => {
            let config = Config::load(&Config::locate(config.as_deref())?)?;
            onnxd::telemetry::init("error");
            for warning in &config.warnings {
                let _ = writeln!(std::io::stderr(), "warning: {warning}");
            }
            let reports = check::check(&config);
            print(&check::table(&config, &reports))?;
            anyhow::ensure!(check::all_good(&reports), "some models failed their checks");
            Ok(())
        }
        Command::Inspect { model, json, engine } => {
            onnxd::telemetry::init("warn");
            let report = inspect::inspect(&model, &engine.options(1))?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
            } else {
                print(&report.to_string())?;
            }
            Ok(())
        }
        Command::Infer {
            model,
            inputs,
            engine,
        } => {
            onnxd::telemetry::init("warn");
            let response = infer::infer(&model, &inputs, &engine.settings(1))?;
            print(&format!("{}\n", serde_json::to_string_pretty(&response)?))?;
            Ok(())
        }
        Command::Bench(args) => bench_command(*args),
    }
}

/// `onnxd bench`: in-process, over HTTP, or over MQTT.
fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    onnxd::telemetry::init("warn");
    let plan = bench::BenchPlan {
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.duration),
        count: args.count,
        warmup: args.warmup,
        progress: true,
    };
    let name = args.model_name.clone().unwrap_or_else(|| stem(&args.model));
    if args.mqtt.mqtt.is_some() {
        return bench_over_mqtt(
            &args.model,
            &args.inputs,
            &name,
            &args.mqtt,
            &plan,
            &args.engine,
            args.json,
        );
    }
    let target = match (args.http, args.grpc) {
        (Some(address), _) => bench::Target::Http { address, model: name },
        (None, Some(address)) => bench::Target::Grpc {
            address,
            model: name,
            streaming: args.streaming,
        },
        (None, None) => bench::Target::InProcess,
    };
    let mut settings = args.engine.settings(args.instances);
    if let Some(cpus) = args.cpus {
        onnxd::cpus::reserve(&cpus).map_err(|why| anyhow::anyhow!("--cpus: {why}"))?;
        settings.engine.cpus = cpus;
    }
    settings.batching = BatchOverrides {
        max_batch_size: args.max_batch_size,
        max_queue_delay_us: args.max_queue_delay_us,
    };
    let report = bench::bench(&args.model, &args.inputs, &settings, &plan, &target)?;
    match args.json {
        true => print(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
        false => print(&report.to_string()),
    }
}
