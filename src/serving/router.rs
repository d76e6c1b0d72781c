//! [`Router`]: the one serving entry point. Model name (+ optional version) → the version that
//! runs a request, picked once per request; the request is decoded (or its image
//! pre-processed) against that version, run on it and post-processed. It waits, bounded,
//! while a model is `LOADING` (a first load, or a `replace` reload's gap) instead of failing,
//! keeps each model's counters, and hands a copy of each answered request to the model's
//! [`super::shadow::Shadow`] when one is attached.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stats::Served;
use super::{
    Image, ImageRequest, InferRequest, InferResponse, LoadedVersion, ModelHandle, PayloadRequest, ServeError,
};
use crate::codec::request::image_in_tensors;
use crate::engine::EngineError;
use crate::pipeline::preprocess::Transform;
use crate::tensor::Tensors;

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

    /// The longest execution running now on a serving version's inference threads: its
    /// model and how long it has run. (A shadow candidate's threads, which take what CPU
    /// serving leaves, are not counted.)
    pub fn longest_execution(&self) -> Option<(String, Duration)> {
        let mut longest: Option<(String, Duration)> = None;
        for handle in self.models() {
            for version in handle.versions().values() {
                let Some(running) = version.model.longest_execution() else {
                    continue;
                };
                if longest.as_ref().is_none_or(|(_, l)| running > *l) {
                    longest = Some((handle.name.clone(), running));
                }
            }
        }
        longest
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

    /// Runs a request that arrived as bytes (HTTP, MQTT): picks the version once, decodes the
    /// payload against that version's signature — or, for an image (a payload, or a single
    /// `BYTES` element holding one, for a model with `[input]`), pre-processes it with that
    /// version's pipeline — and runs it on that same version.
    pub async fn infer_payload(&self, request: PayloadRequest) -> Result<InferResponse, ServeError> {
        let PayloadRequest {
            model,
            version,
            payload,
            arrived,
            deadline,
        } = request;
        let timeout = payload.as_ref().ok().and_then(|p| p.timeout());
        let deadline = timeout.map(|t| arrived + t).into_iter().chain(deadline).min();
        let (handle, chosen) = self.choose(&model, version, deadline).await?;
        let payload = payload.map_err(|e| {
            handle.stats.failure(Some(chosen.version), "bad_input");
            ServeError::BadInput(e.to_string())
        })?;
        let id = payload.id().cloned();
        let image = match payload.image() {
            Some(image) => image,
            None => {
                let inputs = payload.decode(&chosen.model.info).map_err(|e| {
                    handle.stats.failure(Some(chosen.version), "bad_input");
                    ServeError::BadInput(e.to_string())
                })?;
                match chosen.image.as_ref().and(image_in_tensors(&inputs)) {
                    Some(image) => image,
                    None => {
                        let run = Run::new(&handle, &chosen, arrived, deadline, id);
                        return run.tensors(inputs, payload.outputs(), None).await;
                    }
                }
            }
        };
        let run = Run::new(&handle, &chosen, arrived, deadline, id);
        run.image(Image::Encoded(image)).await
    }

    /// Runs a request of tensors on the version it names (or the highest ready one).
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServeError> {
        let arrived = Instant::now();
        let (handle, chosen) = self
            .choose(&request.model, request.version, request.deadline)
            .await?;
        let run = Run::new(&handle, &chosen, arrived, request.deadline, request.id);
        run.tensors(request.inputs, request.outputs, None).await
    }

    /// Runs an image through the chosen version's `[input]` pre-processing, then the model;
    /// detections come back in the image's pixels.
    pub async fn infer_image(&self, request: ImageRequest) -> Result<InferResponse, ServeError> {
        let arrived = Instant::now();
        let (handle, chosen) = self
            .choose(&request.model, request.version, request.deadline)
            .await?;
        let run = Run::new(&handle, &chosen, arrived, request.deadline, request.id);
        run.image(request.image).await
    }

    /// The model's handle and the version a request runs on (see [`Router::pick`]).
    async fn choose(
        &self,
        model: &str,
        version: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<(Arc<ModelHandle>, Arc<LoadedVersion>), ServeError> {
        let handle = self.get(model)?;
        let chosen = self.pick(&handle, version, deadline).await?;
        Ok((handle, chosen))
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
            match handle.pick_or_loading(version) {
                Ok(v) => return Ok(v),
                Err((e, false)) => return Err(e),
                Err((e, true)) => {
                    let Some(_place) = Waiting::enter(&self.waiting) else {
                        return Err(ServeError::Overloaded(handle.name.clone()));
                    };
                    let waited = tokio::time::timeout_at(until.into(), changes.changed()).await;
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

/// A request's place among those waiting for a `LOADING` model, given back when it ends —
/// also when the request is dropped mid-wait (a client that cancels or disconnects).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// A place, or `None` when [`MAX_WAITING`] requests already wait.
    fn enter(count: &'a AtomicUsize) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        let place = Waiting(count); // refused or not, dropping it gives the place back
        (before < MAX_WAITING).then_some(place)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request on the version chosen for it: runs it there, counts the outcome on that
/// version.
struct Run<'a> {
    handle: &'a ModelHandle,
    version: &'a Arc<LoadedVersion>,
    arrived: Instant,
    deadline: Option<Instant>,
    id: Option<Value>,
}

impl<'a> Run<'a> {
    fn new(
        handle: &'a ModelHandle,
        version: &'a Arc<LoadedVersion>,
        arrived: Instant,
        deadline: Option<Instant>,
        id: Option<Value>,
    ) -> Run<'a> {
        Run {
            handle,
            version,
            arrived,
            deadline,
            id,
        }
    }

    /// Pre-processes the image on a blocking thread with this version's `[input]`, then runs
    /// it with detections mapped back to the image.
    async fn image(self, image: Image) -> Result<InferResponse, ServeError> {
        if self.version.image.is_none() {
            self.handle
                .stats
                .failure(Some(self.version.version), "unsupported");
            return Err(ServeError::NoImageInput(self.handle.name.clone()));
        }
        let version = self.version.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let pipeline = version.image.as_ref().expect("checked above");
            pipeline.prepare(&image).map(|p| (pipeline.input.clone(), p))
        })
        .await
        .map_err(|e| ServeError::BadImage(format!("pre-processing stopped: {e}")))?;
        let (input, prepared) = prepared.map_err(|e| {
            self.handle.stats.failure(Some(self.version.version), "bad_input");
            ServeError::BadImage(e.to_string())
        })?;
        let transform = prepared.transform;
        self.tensors(vec![(input, prepared.tensor)], None, Some(&transform))
            .await
    }

    /// Runs tensors; a deadline is checked before queueing and again by the inference thread
    /// when the request leaves the queue.
    async fn tensors(
        self,
        inputs: Tensors,
        outputs: Option<Vec<String>>,
        transform: Option<&Transform>,
    ) -> Result<InferResponse, ServeError> {
        let stats = self.handle.stats.version(self.version.version);
        let arrived = self.arrived;
        // A shadow gets a copy of what ran on the version it is compared against, once the
        // answer is complete (off the response path).
        let shadow = self.handle.shadow().filter(|s| s.takes(self.version.version));
        let copy = shadow.as_ref().map(|_| (inputs.clone(), outputs.clone()));
        let result = self.run(inputs, outputs, transform).await;
        if let (Some(shadow), Some((inputs, outputs)), Ok(response)) = (shadow, copy, &result) {
            shadow.offer(inputs, outputs, transform.copied(), response);
        }
        match &result {
            Ok(r) => stats.success(Served {
                request: arrived.elapsed(),
                queue: r.queue_time,
                compute: r.compute_time,
                rows: r.execution.rows,
                batch_size: r.execution.batch_size,
                counts_execution: r.execution.count_once(),
            }),
            Err(e) => stats.failure(e.reason()),
        }
        result
    }

    async fn run(
        self,
        inputs: Tensors,
        outputs: Option<Vec<String>>,
        transform: Option<&Transform>,
    ) -> Result<InferResponse, ServeError> {
        let version = self.version;
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ServeError::Expired);
        }
        // Post-processing reads the model's outputs in the model's order, whatever the request
        // asked for; the reply then carries the outputs asked for, in the order asked.
        let (computed, asked) = match (&version.post, outputs) {
            (Some(_), Some(asked)) => {
                let asked = version
                    .model
                    .info
                    .select_outputs(Some(&asked))
                    .map_err(EngineError::from)?;
                (None, Some(asked))
            }
            (_, outputs) => (outputs, None),
        };
        let reply = version.model.submit(inputs, computed.as_deref(), self.deadline)?;
        let result = reply.await.map_err(|_| ServeError::Unavailable {
            model: self.handle.name.clone(),
            reason: "its inference threads have stopped".into(),
        })?;
        let outputs = result.outputs?;
        let detections = version
            .post
            .as_ref()
            .map(|post| post.apply(&outputs, transform))
            .transpose()
            .map_err(|e| ServeError::Postprocess(e.to_string()))?;
        let outputs = match asked {
            Some(asked) => only(outputs, &asked),
            None => outputs,
        };
        Ok(InferResponse {
            model: self.handle.name.clone(),
            version: version.version,
            id: self.id,
            outputs,
            engine: version.model.engine,
            provider: version.model.provider.clone(),
            queue_time: result.queue_time,
            compute_time: result.compute_time,
            execution: result.execution,
            result: detections,
        })
    }
}

/// `outputs` cut down to the (distinct, known) names `asked`, in that order.
fn only(mut outputs: Tensors, asked: &[String]) -> Tensors {
    asked
        .iter()
        .filter_map(|name| {
            let at = outputs.iter().position(|(n, _)| n == name)?;
            Some(outputs.swap_remove(at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::SystemTime;

    use super::*;
    use crate::engine::{select, EngineChoice, EngineOptions};

    fn digits(version: u64) -> Arc<LoadedVersion> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/model.onnx");
        let options = EngineOptions {
            choice: EngineChoice::Tract,
            intra_threads: 1,
            ..EngineOptions::default()
        };
        Arc::new(LoadedVersion {
            version,
            model: select::load_path("digits", &file, &options).unwrap(),
            file,
            loaded_at: SystemTime::now(),
            load_time: Duration::ZERO,
            labels: None,
            image: None,
            post: None,
            warmup: String::new(),
        })
    }

    #[tokio::test]
    async fn a_request_dropped_while_waiting_for_a_load_gives_its_place_back() {
        let router = Router::default();
        let handle = router.handle_or_insert("m"); // LOADING, no version
        for _ in 0..3 {
            let wait = router.pick(&handle, None, None);
            let dropped = tokio::time::timeout(Duration::from_millis(5), wait).await;
            assert!(dropped.is_err(), "the model is still loading");
        }
        assert_eq!(router.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_model_that_becomes_ready_fails_no_request_in_the_switch() {
        let router = Arc::new(Router::default());
        let handle = router.handle_or_insert("m");
        let version = digits(1);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (router, handle, stop) = (router.clone(), handle.clone(), stop.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    let mut failures = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let deadline = Some(Instant::now() + Duration::from_secs(5));
                        if runtime.block_on(router.pick(&handle, None, deadline)).is_err() {
                            failures += 1;
                        }
                    }
                    failures
                })
            })
            .collect();
        for _ in 0..20_000 {
            handle.publish(BTreeMap::new(), None); // a replace reload's gap
            handle.publish(BTreeMap::from([(1, version.clone())]), None);
        }
        stop.store(true, Ordering::Relaxed);
        let failures: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(failures, 0, "requests failed as the model became ready");
    }
}
