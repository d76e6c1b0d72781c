//! [`Router`]: model name (+ optional version) → the version that runs a request. It waits,
//! bounded, while a model is `LOADING` (a first load, or a `replace` reload's gap) instead of
//! failing, validates nothing itself (the model's signature check does), and keeps each
//! model's counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{InferRequest, InferResponse, ModelHandle, ServeError, State};
use crate::engine::EngineError;

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

    /// Every model, by name.
    pub fn models(&self) -> Vec<Arc<ModelHandle>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Runs a request on the model's chosen version.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServeError> {
        let handle = self.get(&request.model)?;
        let result = self.infer_on(&handle, request).await;
        if let Err(e) = &result {
            handle.stats.failure(e.reason());
        }
        result
    }

    async fn infer_on(
        &self,
        handle: &ModelHandle,
        request: InferRequest,
    ) -> Result<InferResponse, ServeError> {
        let version = self
            .wait_for_version(handle, request.version, request.deadline)
            .await?;
        if request.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ServeError::Expired);
        }
        let reply = version.model.submit(request.inputs, request.outputs.as_deref())?;
        let result = reply
            .await
            .map_err(|_| EngineError::Unavailable(handle.name.clone()))?;
        let outputs = result.outputs?;
        handle.stats.success(result.queue_time, result.compute_time);
        Ok(InferResponse {
            model: handle.name.clone(),
            version: version.version,
            id: request.id,
            outputs,
            engine: version.model.engine,
            provider: version.model.provider.clone(),
            queue_time: result.queue_time,
            compute_time: result.compute_time,
        })
    }

    async fn wait_for_version(
        &self,
        handle: &ModelHandle,
        version: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Arc<super::LoadedVersion>, ServeError> {
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
