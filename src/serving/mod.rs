//! The serving core: every source (MQTT, HTTP, cameras, the CLI) turns its input into an
//! [`InferRequest`] and gets an [`InferResponse`] back, through the [`Router`], which finds
//! the model's [`ModelHandle`] and the version to use. Versions are swapped atomically under
//! readers (`ArcSwap`); a request keeps the version it started on until it completes.

pub mod handle;
pub mod image;
pub mod router;
pub mod stats;

use std::time::{Duration, Instant};

use crate::engine::{EngineError, EngineKind, Tensors};
use crate::pipeline::postprocess::Detection;
pub use handle::{LoadedVersion, ModelHandle, ModelState, State};
pub use router::Router;
pub use stats::ModelStats;

/// A request from any source.
#[derive(Debug, Default)]
pub struct InferRequest {
    /// Model name.
    pub model: String,
    /// Version; the highest ready version when `None`.
    pub version: Option<u64>,
    /// Caller's id, echoed.
    pub id: Option<String>,
    /// Named input tensors.
    pub inputs: Tensors,
    /// Requested outputs (all when `None`).
    pub outputs: Option<Vec<String>>,
    /// Past this instant the request is not run.
    pub deadline: Option<Instant>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug)]
pub struct InferResponse {
    /// Model name.
    pub model: String,
    /// Version that ran it.
    pub version: u64,
    /// Echo of the request id.
    pub id: Option<String>,
    /// Output tensors, in the order asked for.
    pub outputs: Tensors,
    /// Engine that ran it.
    pub engine: EngineKind,
    /// Provider that ran it.
    pub provider: String,
    /// Time waiting for an inference thread.
    pub queue_time: Duration,
    /// Time in the engine.
    pub compute_time: Duration,
    /// The `[output]` post-processing of the outputs (classes or detections), when the model
    /// has it.
    pub result: Option<Vec<Detection>>,
}

/// Why a request was not answered with outputs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// No such model in the repository.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// The model has no such ready version.
    #[error("model '{model}' has no ready version {version} (ready: {ready:?})")]
    UnknownVersion {
        /// Model.
        model: String,
        /// Version asked for.
        version: u64,
        /// Versions that are ready.
        ready: Vec<u64>,
    },
    /// The model has no ready version (failed to load, or still loading past the wait).
    #[error("model '{model}' is unavailable: {reason}")]
    Unavailable {
        /// Model.
        model: String,
        /// Its state's error.
        reason: String,
    },
    /// An image was sent to a model without `[input]` pre-processing.
    #[error(
        "model '{0}' has no [input] image pre-processing: image payloads are not supported for this model"
    )]
    NoImageInput(String),
    /// The image could not be decoded or pre-processed.
    #[error("{0}")]
    BadImage(String),
    /// The outputs do not fit the model's `[output]` post-processing.
    #[error("post-processing failed: {0}")]
    Postprocess(String),
    /// The deadline passed before the request ran.
    #[error("request expired before it ran")]
    Expired,
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ServeError {
    /// A short, stable reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ServeError::UnknownModel(_) | ServeError::UnknownVersion { .. } => "unknown_model",
            ServeError::Unavailable { .. } => "unavailable",
            ServeError::Expired => "expired",
            ServeError::NoImageInput(_) => "unsupported",
            ServeError::BadImage(_) => "bad_input",
            ServeError::Postprocess(_) => "postprocess",
            ServeError::Engine(e) => e.reason(),
        }
    }
}
