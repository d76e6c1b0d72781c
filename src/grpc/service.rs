//! The RPCs of `GRPCInferenceService`: health, server and model metadata, readiness, model
//! configuration and statistics (the serving core's views, converted), inference through
//! [`Router::infer`](crate::serving::Router::infer) (one version picked once per request), and
//! the repository extension through the repository thread. Shared memory, trace and log
//! settings answer `UNIMPLEMENTED` with what to do instead. Every RPC but ServerLive and
//! ServerReady checks the bearer token first; every answer is counted by RPC and code.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, ConvertError};
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::repository_index_response::ModelIndex;
use super::proto::*;
use super::{status_of, stream, GrpcState};
use crate::repository::watch::RepoEvent;
use crate::serving::{views, LoadedVersion, ModelHandle, State};

/// Extensions onnxd implements over gRPC (`ServerMetadata`).
pub const EXTENSIONS: [&str; 4] = [
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
];

/// The service: the gRPC face of the serving core.
pub struct Inference {
    state: Arc<GrpcState>,
}

/// Runs one `ModelInferRequest` (unary or from a stream): converted to tensors, run on the
/// version the router picks, answered with raw output contents and the request's id.
pub async fn infer(
    state: &GrpcState,
    mut message: ModelInferRequest,
    deadline: Option<Instant>,
) -> Result<ModelInferResponse, Status> {
    let id = std::mem::take(&mut message.id);
    let model = message.model_name.clone();
    let request = convert::request(message, deadline).map_err(|e| bad_request(state, &model, e))?;
    let response = state.router.infer(request).await.map_err(status_of)?;
    Ok(convert::response(response, id))
}

/// A request that did not convert: `NOT_FOUND` for an unknown model (as the router would
/// say), else `INVALID_ARGUMENT`, counted on the model as a bad input.
fn bad_request(state: &GrpcState, model: &str, e: ConvertError) -> Status {
    match state.router.get(model) {
        Err(unknown) => status_of(unknown),
        Ok(handle) => {
            handle.stats.failure(None, "bad_input");
            Status::invalid_argument(e.0)
        }
    }
}

fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.0)
}

/// An RPC being answered: [`Unanswered::answer`] counts its answer by code; dropped before
/// that, it counts as `CANCELLED` — a handler dropped by tonic's own `grpc-timeout` timer
/// (which answers `CANCELLED`, "Timeout expired"), or because the client reset the stream.
struct Unanswered<'a>(&'static str, &'a super::GrpcMetrics);

impl Unanswered<'_> {
    /// Counts the answer and wraps it.
    fn answer<T>(self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.1.count(self.0, code);
        std::mem::forget(self);
        result.map(Response::new)
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.1.count(self.0, tonic::Code::Cancelled);
    }
}

impl Inference {
    /// The service over `state`.
    pub fn new(state: Arc<GrpcState>) -> Inference {
        Inference { state }
    }

    /// An answer to `rpc` about to be given (the quick RPCs); see [`Unanswered`].
    fn answer<T>(&self, rpc: &'static str, result: Result<T, Status>) -> Result<Response<T>, Status> {
        self.unanswered(rpc).answer(result)
    }

    /// `rpc`, not answered yet: counted when it answers, or as `CANCELLED` when dropped first.
    fn unanswered(&self, rpc: &'static str) -> Unanswered<'_> {
        Unanswered(rpc, &self.state.metrics)
    }

    /// The model and the version a request names (`""`: the highest ready one).
    fn resolve(&self, name: &str, version: &str) -> Result<(Arc<ModelHandle>, Arc<LoadedVersion>), Status> {
        let handle = self.state.router.get(name).map_err(status_of)?;
        let version = convert::version(version).map_err(invalid)?;
        let loaded = handle.pick(version).map_err(status_of)?;
        Ok((handle, loaded))
    }

    /// Sends an event carrying a reply channel to the repository thread and waits for the
    /// reply off the async workers.
    async fn ask<T: Send + 'static>(
        &self,
        event: impl FnOnce(crossbeam_channel::Sender<T>) -> RepoEvent,
    ) -> Result<T, Status> {
        let stopped = || Status::unavailable("the repository thread has stopped");
        let repository = self
            .state
            .repository
            .clone()
            .ok_or_else(|| Status::unavailable("this server has no repository thread"))?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        repository.send(event(reply)).map_err(|_| stopped())?;
        tokio::task::spawn_blocking(move || answer.recv())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(stopped)
    }

    fn model_metadata_of(&self, request: &ModelMetadataRequest) -> Result<ModelMetadataResponse, Status> {
        let (handle, loaded) = self.resolve(&request.name, &request.version)?;
        let versions = match request.version.as_str() {
            "" => handle.versions().keys().map(u64::to_string).collect(),
            v => vec![v.to_string()],
        };
        Ok(convert::metadata(views::metadata(&handle, &loaded, versions)))
    }

    fn statistics_of(&self, request: &ModelStatisticsRequest) -> Result<ModelStatisticsResponse, Status> {
        let handles = match request.name.as_str() {
            "" => self.state.router.models(),
            name => vec![self.state.router.get(name).map_err(status_of)?],
        };
        let version = convert::version(&request.version).map_err(invalid)?;
        let model_stats = handles
            .iter()
            .flat_map(|h| views::statistics(h, version))
            .map(convert::statistics)
            .collect();
        Ok(ModelStatisticsResponse { model_stats })
    }

    fn index_of(&self, request: &RepositoryIndexRequest) -> RepositoryIndexResponse {
        let models = self
            .state
            .router
            .models()
            .iter()
            .map(|h| (h.name.clone(), h.state()))
            .filter(|(_, s)| !request.ready || s.state == State::Ready)
            .map(|(name, s)| ModelIndex {
                name,
                version: s.version.map(|v| v.to_string()).unwrap_or_default(),
                state: match s.state {
                    State::Loading => "LOADING",
                    State::Ready => "READY",
                    State::Unavailable => "UNAVAILABLE",
                }
                .into(),
                reason: s.error.clone().unwrap_or_default(),
            })
            .collect();
        RepositoryIndexResponse { models }
    }

    /// A validated reload through the repository thread, answered with its outcome (as the
    /// HTTP repository extension).
    async fn load(&self, request: RepositoryModelLoadRequest) -> Result<RepositoryModelLoadResponse, Status> {
        if let Some(key) = request.parameters.keys().next() {
            return Err(Status::unimplemented(format!(
                "load parameter '{key}' is not supported: onnxd loads models from the files in its repository"
            )));
        }
        let model = request.model_name;
        let report = self.ask(|reply| RepoEvent::SyncNow(model.clone(), reply)).await?;
        if report.serving.is_empty() {
            let why = match report.errors.is_empty() {
                true => "no such model directory".to_string(),
                false => report.errors.join("; "),
            };
            return Err(Status::invalid_argument(format!(
                "failed to load '{model}': {why}"
            )));
        }
        if !report.errors.is_empty() {
            return Err(Status::invalid_argument(format!(
                "'{model}' keeps serving version(s) {:?}; the new files were refused: {}",
                report.serving,
                report.errors.join("; ")
            )));
        }
        Ok(RepositoryModelLoadResponse {})
    }

    async fn unload(
        &self,
        request: RepositoryModelUnloadRequest,
    ) -> Result<RepositoryModelUnloadResponse, Status> {
        let model = request.model_name;
        self.state.router.get(&model).map_err(status_of)?;
        self.ask(|reply| RepoEvent::Unload(model.clone(), reply)).await?;
        Ok(RepositoryModelUnloadResponse {})
    }

    /// An RPC onnxd does not implement: `UNIMPLEMENTED` (after the token check), saying what
    /// to do instead.
    fn unsupported<T, R>(
        &self,
        rpc: &'static str,
        request: &Request<R>,
        what: &str,
    ) -> Result<Response<T>, Status> {
        let refused = self
            .state
            .authorize(request.metadata())
            .and_then(|()| Err(Status::unimplemented(format!("onnxd does not implement {what}"))));
        self.answer(rpc, refused)
    }
}

const SHARED_MEMORY: &str =
    "shared memory: send tensors in the request (raw_input_contents) and read raw_output_contents";
const TRACE: &str = "trace settings: use the daemon's log filter ('log' in onnxd.toml, or RUST_LOG)";
const LOG: &str = "log settings over gRPC: set 'log' in onnxd.toml (or RUST_LOG) and reload";

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.answer("ServerLive", Ok(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.state.is_ready();
        self.answer("ServerReady", Ok(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let result = self.state.authorize(request.metadata()).and_then(|()| {
            let request = request.get_ref();
            convert::version(&request.version).map_err(invalid)?;
            // Unknown model or version, or nothing ready: not ready (tritonclient raises on
            // any error code).
            let ready = self.resolve(&request.name, &request.version).is_ok();
            Ok(ModelReadyResponse { ready })
        });
        self.answer("ModelReady", result)
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let result = self
            .state
            .authorize(request.metadata())
            .map(|()| ServerMetadataResponse {
                name: "onnxd".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
            });
        self.answer("ServerMetadata", result)
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let result = self
            .state
            .authorize(request.metadata())
            .and_then(|()| self.model_metadata_of(request.get_ref()));
        self.answer("ModelMetadata", result)
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let unanswered = self.unanswered("ModelInfer");
        let result = match self.state.authorize(request.metadata()) {
            Err(e) => Err(e),
            Ok(()) => {
                let deadline = super::deadline(request.metadata());
                infer(&self.state, request.into_inner(), deadline).await
            }
        };
        unanswered.answer(result)
    }

    type ModelStreamInferStream = stream::Replies;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        if let Err(refused) = self.state.authorize(request.metadata()) {
            return self.answer("ModelStreamInfer", Err(refused));
        }
        Ok(Response::new(stream::start(
            self.state.clone(),
            request.into_inner(),
        )))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let result = self.state.authorize(request.metadata()).and_then(|()| {
            let (handle, loaded) = self.resolve(&request.get_ref().name, &request.get_ref().version)?;
            let config = convert::config(views::config(&handle, &loaded));
            Ok(ModelConfigResponse { config: Some(config) })
        });
        self.answer("ModelConfig", result)
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let result = self
            .state
            .authorize(request.metadata())
            .and_then(|()| self.statistics_of(request.get_ref()));
        self.answer("ModelStatistics", result)
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let result = self
            .state
            .authorize(request.metadata())
            .map(|()| self.index_of(request.get_ref()));
        self.answer("RepositoryIndex", result)
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let result = match self.state.authorize(request.metadata()) {
            Err(e) => Err(e),
            Ok(()) => self.load(request.into_inner()).await,
        };
        self.answer("RepositoryModelLoad", result)
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let result = match self.state.authorize(request.metadata()) {
            Err(e) => Err(e),
            Ok(()) => self.unload(request.into_inner()).await,
        };
        self.answer("RepositoryModelUnload", result)
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        self.unsupported("SystemSharedMemoryStatus", &request, SHARED_MEMORY)
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        self.unsupported("SystemSharedMemoryRegister", &request, SHARED_MEMORY)
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        self.unsupported("SystemSharedMemoryUnregister", &request, SHARED_MEMORY)
    }

    async fn cuda_shared_memory_status(
        &self,
        request: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        self.unsupported("CudaSharedMemoryStatus", &request, SHARED_MEMORY)
    }

    async fn cuda_shared_memory_register(
        &self,
        request: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        self.unsupported("CudaSharedMemoryRegister", &request, SHARED_MEMORY)
    }

    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        self.unsupported("CudaSharedMemoryUnregister", &request, SHARED_MEMORY)
    }

    async fn trace_setting(
        &self,
        request: Request<TraceSettingRequest>,
    ) -> Result<Response<TraceSettingResponse>, Status> {
        self.unsupported("TraceSetting", &request, TRACE)
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        self.unsupported("LogSettings", &request, LOG)
    }
}
