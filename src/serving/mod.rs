//! The serving core: one entry point for every source. HTTP and MQTT hand in a
//! [`PayloadRequest`] (bytes in a KServe wire form), gRPC and the CLI an [`InferRequest`]
//! (tensors), cameras and image files an [`ImageRequest`]; the [`Router`] picks the model's
//! version **once**, decodes or pre-processes against that version, runs the request on it and
//! post-processes — so a request can never be decoded for one version and run on another
//! (the hot-reload guarantee lives here). Versions are swapped atomically under readers
//! (`ArcSwap`); a request keeps the version it started on until it completes.

pub mod handle;
pub mod image;
pub mod metrics;
pub mod router;
pub mod shadow;
pub mod stats;
pub mod views;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::codec::{CodecError, Payload, Reply};
use crate::engine::batch::Execution;
use crate::engine::EngineError;
use crate::model::EngineKind;
use crate::pipeline::postprocess::Detection;
use crate::tensor::Tensors;
pub use handle::{LoadedVersion, ModelHandle, ModelState, State};
pub use image::{Image, ImageRequest};
pub use router::Router;
pub use stats::ModelStats;

/// Requests a model instance's queue holds (a full queue answers `overloaded`).
pub const QUEUE_PER_INSTANCE: usize = crate::engine::select::QUEUE_PER_INSTANCE;

/// A request of typed tensors (gRPC, the CLI, tests).
#[derive(Debug, Default)]
pub struct InferRequest {
    /// Model name.
    pub model: String,
    /// Version; the highest ready version when `None`.
    pub version: Option<u64>,
    /// Caller's id, echoed.
    pub id: Option<Value>,
    /// Named input tensors.
    pub inputs: Tensors,
    /// Requested outputs (all when `None`).
    pub outputs: Option<Vec<String>>,
    /// Past this instant the request is not run.
    pub deadline: Option<Instant>,
}

/// A request as bytes in one of the KServe wire forms (HTTP and MQTT bodies), decoded against
/// the version that runs it.
#[derive(Debug)]
pub struct PayloadRequest {
    /// Model name.
    pub model: String,
    /// Version; the highest ready version when `None`.
    pub version: Option<u64>,
    /// The payload, classified and parsed — or why it could not be, reported (and counted on
    /// the version) only once the model and version are known to exist.
    pub payload: Result<Payload, CodecError>,
    /// When it arrived (the KServe `timeout` counts from here).
    pub arrived: Instant,
    /// The transport's own deadline (an MQTT message expiry), if any.
    pub deadline: Option<Instant>,
}

/// The answer to a request.
#[derive(Debug)]
pub struct InferResponse {
    /// Model name.
    pub model: String,
    /// Version that ran it.
    pub version: u64,
    /// Echo of the request id.
    pub id: Option<Value>,
    /// Output tensors, in the order asked for.
    pub outputs: Tensors,
    /// Engine that ran it.
    pub engine: EngineKind,
    /// Provider that ran it.
    pub provider: String,
    /// Time waiting for an inference thread.
    pub queue_time: Duration,
    /// Time in the engine (the whole batch's).
    pub compute_time: Duration,
    /// The execution that answered it (its batch size).
    pub execution: Execution,
    /// The `[output]` post-processing of the outputs (classes or detections), when the model
    /// has it.
    pub result: Option<Vec<Detection>>,
}

impl InferResponse {
    /// What the codec encodes of it.
    pub fn reply(&self) -> Reply<'_> {
        Reply {
            model: &self.model,
            version: self.version,
            id: self.id.as_ref(),
            engine: match self.engine {
                EngineKind::Ort => "onnxruntime",
                EngineKind::Tract => "tract",
            },
            provider: &self.provider,
            inference_us: self.compute_time.as_micros() as u64,
            result: self.result.as_deref(),
            outputs: &self.outputs,
        }
    }
}

/// Why a request was not answered with outputs. Transports map these to their status codes;
/// [`ServeError::reason`] is the metrics label.
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
    /// The request does not decode or does not fit the model's signature.
    #[error("{0}")]
    BadInput(String),
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
    /// The model's queue is full.
    #[error("model '{0}' is overloaded: its request queue is full")]
    Overloaded(String),
    /// The engine failed the request.
    #[error("{message}")]
    Engine {
        /// Metrics label (`engine`, `load`, ...).
        reason: &'static str,
        /// The engine's error.
        message: String,
    },
}

impl From<EngineError> for ServeError {
    fn from(e: EngineError) -> ServeError {
        match e {
            EngineError::BadInput(message) => ServeError::BadInput(message),
            EngineError::Overloaded(model) => ServeError::Overloaded(model),
            EngineError::Expired => ServeError::Expired,
            EngineError::Unavailable(model) => ServeError::Unavailable {
                model,
                reason: "its inference threads have stopped".into(),
            },
            other => ServeError::Engine {
                reason: other.reason(),
                message: other.to_string(),
            },
        }
    }
}

impl ServeError {
    /// A short, stable reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ServeError::UnknownModel(_) | ServeError::UnknownVersion { .. } => "unknown_model",
            ServeError::Unavailable { .. } => "unavailable",
            ServeError::Expired => "expired",
            ServeError::NoImageInput(_) => "unsupported",
            ServeError::BadImage(_) | ServeError::BadInput(_) => "bad_input",
            ServeError::Postprocess(_) => "postprocess",
            ServeError::Overloaded(_) => "overloaded",
            ServeError::Engine { reason, .. } => reason,
        }
    }
}
