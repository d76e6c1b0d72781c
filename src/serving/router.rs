//! [`Router`]: model name (+ optional version) → the version that runs a request. It waits,
//! bounded, while a model is `LOADING` (a first load, or a `replace` reload's gap) instead of
//! failing, validates nothing itself (the model's signature check does), and keeps each
//! model's counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{InferRequest, InferResponse, LoadedVersion, ModelHandle, ServeError, State};
use crate::engine::EngineError;
use crate::pipeline::preprocess::Transform;

/// Longest wait for a `LOADING` model before the request fails as unavailable.
pub const LOADING_WAIT: Duration = Duration::from_secs(30);
/// Most requests that may wait on `LOADING` models at once; more are refused as overloaded.
pub const MAX_WAITING: usize = 1024;

/// All models by name.
#[derive(Default)]
pub struct Router {
    models: RwLock<BTreeMap<String, Arc<ModelHandle>>>,
    waiting: AtomicUsize,
}

impl Router {
    /// A model's handle.
    pub fn handle(&self, name: &str) -> Option<Arc<ModelHandle>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// A model's handle, or [`ServeError::UnknownModel`].
    pub fn get(&self, name: &str) -> Result<Arc<ModelHandle>, ServeError> {
        self.handle(name)
            .ok_or_else(|| ServeError::UnknownModel(name.to_string()))
    }

    /// The handle of `name`, created (`LOADING`) if the router has none.
    pub fn handle_or_insert(&self, name: &str) -> Arc<ModelHandle> {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        models
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ModelHandle::new(name)))
            .clone()
    }

    /// Removes a model; requests holding its versions finish on them.
    pub fn remove(&self, name: &str) -> Option<Arc<ModelHandle>> {
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Test hook (debug builds only): holds the router's lock until the process ends.
    #[cfg(debug_assertions)]
    pub fn stall_forever(&self) {
        let _held = self.models.write().unwrap_or_else(|e| e.into_inner());
        loop {
            std::thread::park();
        }
    }

    /// Every model, by name.
    pub fn models(&self) -> Vec<Arc<ModelHandle>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Runs a request on the model's chosen version, counting the outcome on that version
    /// (or on the model when no version could be chosen).
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServeError> {
        self.infer_from(request, None).await
    }

    /// [`Router::infer`] for inputs made from an image: `transform` maps model-input pixels
    /// back to it, for detections.
    pub(super) async fn infer_from(
        &self,
        request: InferRequest,
        transform: Option<&Transform>,
    ) -> Result<InferResponse, ServeError> {
        let arrived = Instant::now();
        let handle = self.get(&request.model)?;
        let version = self.pick(&handle, request.version, request.deadline).await?;
        let stats = handle.stats.version(version.version);
        let result = run_on(&handle.name, &version, request, transform).await;
        match &result {
            Ok(r) => stats.success(arrived.elapsed(), r.queue_time, r.compute_time),
            Err(e) => stats.failure(e.reason()),
        }
        result
    }

    /// The version a request for `version` (or the highest ready one) runs on, waiting
    /// (bounded by `deadline` or [`LOADING_WAIT`]) while the model is `LOADING`. A failure is
    /// counted on the model — not on the version asked for, so that requests for unknown
    /// versions cannot grow the counters without bound.
    pub async fn pick(
        &self,
        handle: &ModelHandle,
        version: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Arc<LoadedVersion>, ServeError> {
        let picked = self.wait_for_version(handle, version, deadline).await;
        if let Err(e) = &picked {
            handle.stats.failure(None, e.reason());
        }
        picked
    }

    async fn wait_for_version(
        &self,
        handle: &ModelHandle,
        version: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Arc<LoadedVersion>, ServeError> {
        let mut changes = handle.subscribe();
        let until = deadline.unwrap_or_else(|| Instant::now() + LOADING_WAIT);
        loop {
            match handle.pick(version) {
                Ok(v) => return Ok(v),
                Err(e) if handle.state().state != State::Loading => return Err(e),
                Err(e) => {
                    if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
                        self.waiting.fetch_sub(1, Ordering::Relaxed);
                        return Err(EngineError::Overloaded(handle.name.clone()).into());
                    }
                    let waited = tokio::time::timeout_at(until.into(), changes.changed()).await;
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    if waited.is_err() {
                        return Err(if deadline.is_some() {
                            ServeError::Expired
                        } else {
                            e
                        });
                    }
                }
            }
        }
    }
}

/// Runs a request on one version; a deadline is checked before queueing and again by the
/// inference thread when the request leaves the queue.
async fn run_on(
    model: &str,
    version: &LoadedVersion,
    request: InferRequest,
    transform: Option<&Transform>,
) -> Result<InferResponse, ServeError> {
    if request.deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(ServeError::Expired);
    }
    let reply = version
        .model
        .submit(request.inputs, request.outputs.as_deref(), request.deadline)?;
    let result = reply
        .await
        .map_err(|_| EngineError::Unavailable(model.to_string()))?;
    let outputs = result.outputs.map_err(|e| match e {
        EngineError::Expired => ServeError::Expired,
        e => ServeError::Engine(e),
    })?;
    let detections = version
        .post
        .as_ref()
        .map(|post| post.apply(&outputs, transform))
        .transpose()
        .map_err(|e| ServeError::Postprocess(e.to_string()))?;
    Ok(InferResponse {
        model: model.to_string(),
        version: version.version,
        id: request.id,
        outputs,
        engine: version.model.engine,
        provider: version.model.provider.clone(),
        queue_time: result.queue_time,
        compute_time: result.compute_time,
        result: detections,
    })
}
