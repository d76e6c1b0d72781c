//! Engines: the narrow boundary between onnxd and the libraries that run models.
//!
//! An engine turns a [`crate::model::ModelFile`] into [`EngineSession`]s — one per model instance, each to
//! be owned by a single inference thread ([`pool`]). [`ort`] is ONNX Runtime (TensorRT, CUDA
//! and CPU providers), [`tract`] the pure-Rust CPU engine; [`select`] picks one (`auto` with
//! fallback in both directions) and always says which engine and provider it chose and why.
//! Nothing here knows about protocols; nothing outside this folder touches an engine library.
//! Built without the `ort` feature, [`ort`] is a stand-in that says so for every model (tract only).

pub mod batch;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(not(feature = "ort"))]
#[path = "ort_absent.rs"]
pub mod ort;
pub mod pool;
pub mod select;
pub mod tract;

use std::path::PathBuf;

use crate::cpus::CpuList;
use crate::model::ModelError;
pub use crate::model::{EngineKind, ModelFile, ModelInfo};
use crate::tensor::{Tensor, Tensors};

/// Why a load or an inference failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The file is not a usable ONNX model.
    #[error("{path}: {reason}")]
    InvalidModel {
        /// Model file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model has inputs or outputs that are not KServe tensors.
    #[error("model not supported by onnxd: {0}")]
    NotExpressible(String),
    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime unavailable: {0}")]
    Library(String),
    /// An engine could not load the model.
    #[error("{engine} cannot load the model: {reason}")]
    Load {
        /// Engine that failed.
        engine: EngineKind,
        /// Its error.
        reason: String,
    },
    /// Neither engine could load the model (`auto`); each one's reason.
    #[error("no engine can load the model: {0}")]
    NoEngine(String),
    /// The request does not fit the model's signature.
    #[error("{0}")]
    BadInput(String),
    /// The engine failed while running.
    #[error("{engine} inference failed: {reason}")]
    Run {
        /// Engine that failed.
        engine: EngineKind,
        /// Its error.
        reason: String,
    },
    /// The model's queue is full.
    #[error("model '{0}' is overloaded: its request queue is full")]
    Overloaded(String),
    /// The model's instances have stopped (unloaded or crashed).
    #[error("model '{0}' is not serving")]
    Unavailable(String),
    /// The request's deadline passed while it waited in the queue; it was not run.
    #[error("request expired while queued")]
    Expired,
    /// A batch ran but its outputs could not be split back into its requests.
    #[error("batched inference failed: {0}")]
    Batch(String),
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> EngineError {
        match e {
            ModelError::InvalidModel { path, reason } => EngineError::InvalidModel { path, reason },
            ModelError::NotExpressible(what) => EngineError::NotExpressible(what),
            ModelError::BadInput(what) => EngineError::BadInput(what),
        }
    }
}

impl EngineError {
    /// A short, stable reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::InvalidModel { .. } => "invalid_model",
            EngineError::NotExpressible(_) => "unsupported_model",
            EngineError::Library(_) => "library",
            EngineError::Load { .. } | EngineError::NoEngine(_) => "load",
            EngineError::BadInput(_) => "bad_input",
            EngineError::Run { .. } | EngineError::Batch(_) => "engine",
            EngineError::Overloaded(_) => "overloaded",
            EngineError::Unavailable(_) => "unavailable",
            EngineError::Expired => "expired",
        }
    }
}

/// Which engine to use: a fixed one, or `auto` (ONNX Runtime first, tract as fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// ONNX Runtime when available and the model loads there, else tract (and vice versa).
    #[default]
    Auto,
    /// ONNX Runtime only.
    Ort,
    /// tract only.
    Tract,
}

crate::choice_serde!(EngineChoice);

/// ONNX Runtime execution providers, in the order a config lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Provider {
    /// NVIDIA TensorRT (engine cache per model hash).
    Tensorrt,
    /// NVIDIA CUDA.
    Cuda,
    /// CPU (always available as the last resort).
    Cpu,
}

crate::choice_serde!(Provider);

impl Provider {
    /// ONNX Runtime's name for the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }
}

/// Engine settings (from `[engine]`, the model's sidecar and `state_dir`).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Which engine.
    pub choice: EngineChoice,
    /// Explicit path of `libonnxruntime.so`; `None` searches (SPEC §5).
    pub ort_library: Option<PathBuf>,
    /// Providers to try, in order.
    pub providers: Vec<Provider>,
    /// Intra-op threads per instance; 0 = cores / instances.
    pub intra_threads: usize,
    /// ORT thread spinning (off keeps an idle daemon at ~0 CPU).
    pub spinning: bool,
    /// CUDA / TensorRT device.
    pub cuda_device: i32,
    /// TensorRT FP16 mode.
    pub trt_fp16: bool,
    /// Where engine caches live (`<state_dir>/cache/trt/<sha256>/`).
    pub state_dir: PathBuf,
    /// Parallel sessions of the model (per GPU when `gpus` is set).
    pub instances: usize,
    /// GPUs to place instances on (`instances` on each); empty: `cuda_device` or the CPU.
    pub gpus: Vec<i32>,
    /// CPUs the inference threads and their intra-op threads run on (empty: anywhere).
    pub cpus: CpuList,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            choice: EngineChoice::Auto,
            ort_library: None,
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            intra_threads: 0,
            spinning: false,
            cuda_device: 0,
            trt_fp16: true,
            state_dir: std::env::temp_dir().join("onnxd"),
            instances: 1,
            gpus: Vec::new(),
            cpus: CpuList::default(),
        }
    }
}

impl EngineOptions {
    /// Intra-op threads per instance: the configured number, or an even share of the cores
    /// (those of `cpus` when set) so that instances × threads ≤ cores.
    pub fn threads_per_instance(&self) -> usize {
        if self.intra_threads > 0 {
            return self.intra_threads;
        }
        let cores = match self.cpus.cpus().len() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            listed => listed,
        };
        (cores / self.total_instances()).max(1)
    }

    /// Every instance: `instances` per listed GPU, else `instances`.
    pub fn total_instances(&self) -> usize {
        self.instances.max(1) * self.gpus.len().max(1)
    }

    /// The device of instance `i`: the GPUs in turn, else `cuda_device`.
    pub fn device_of(&self, i: usize) -> i32 {
        match self.gpus.len() {
            0 => self.cuda_device,
            n => self.gpus[i / self.instances.max(1) % n],
        }
    }
}

/// One loaded instance of a model in one engine. `run` takes `&mut self`: an instance is used
/// by one thread at a time (ONNX Runtime sessions require it).
pub trait EngineSession: Send {
    /// Runs inputs already validated and ordered by [`ModelInfo::order_inputs`]; returns the
    /// named outputs, in the order asked for.
    fn run(&mut self, inputs: &Tensors, outputs: &[String]) -> Result<Tensors, EngineError>;
}

/// How a provider registration went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProviderAttempt {
    /// Provider tried.
    pub provider: Provider,
    /// `None` when it registered, else why not.
    pub error: Option<String>,
}

/// A model loaded in an engine: its sessions and the facts about how it was loaded.
pub struct LoadedSessions {
    /// Engine in use.
    pub engine: EngineKind,
    /// Provider in use (`CPUExecutionProvider`, `tract-cpu`).
    pub provider: String,
    /// Provider registrations tried, in order (ORT only).
    pub attempts: Vec<ProviderAttempt>,
    /// One session per instance.
    pub sessions: Vec<Box<dyn EngineSession>>,
    /// The GPU of each session, when placed on GPUs.
    pub gpus: Vec<i32>,
}

/// Picks the requested outputs, in the order asked for, from an engine's results: `take`
/// finds a raw output by name, `convert` turns it into a tensor.
pub(crate) fn pick_outputs<V>(
    engine: EngineKind,
    requested: &[String],
    mut take: impl FnMut(&str) -> Option<V>,
    convert: impl Fn(&V) -> Result<Tensor, String>,
) -> Result<Tensors, EngineError> {
    let run_error = |reason: String| EngineError::Run { engine, reason };
    requested
        .iter()
        .map(|name| {
            let value = take(name).ok_or_else(|| run_error(format!("output '{name}' missing")))?;
            Ok((name.clone(), convert(&value).map_err(run_error)?))
        })
        .collect()
}

/// Runs `f`, turning a panic inside an engine library into an error.
pub(crate) fn catch_panic<T>(
    engine: EngineKind,
    what: &str,
    f: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let reason = format!("{what} panicked: {message}");
        Err(match what {
            "run" => EngineError::Run { engine, reason },
            _ => EngineError::Load { engine, reason },
        })
    })
}
