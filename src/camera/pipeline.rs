//! A camera's pipeline (SPEC §8): its source's frames, capped at `fps`, go into a queue of at
//! most two frames where the newest wins; an inference loop takes them through the model's
//! image pipeline (the same path as MQTT and HTTP images) and publishes each result on
//! `P/cameras/<c>/result` — through the MQTT outbox, so results survive a broker outage. A
//! source that dies or stalls (no frame for `stall_secs`) makes the camera `offline`; it is
//! reopened with capped exponential backoff and comes back `online`. Cameras are independent:
//! one failing never touches another, the models or the daemon; a SIGHUP config reload adds,
//! removes and restarts cameras whose settings changed.
//!
//! Credentials in source URLs never leave [`super::redact`]: logs, status and metric labels
//! name the camera, and describe the source only redacted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{watch, Notify};

use super::{open, redact, Frame, FrameSource, SourceOptions};
use crate::config::CameraConfig;
use crate::mqtt::topics::Topics;
use crate::mqtt::Sink;
use crate::serving::image::{Image, ImageRequest};
use crate::serving::Router;
use crate::tensor::kserve::OutputTensor;

/// Frames waiting for the model, at most; a new frame past it drops the oldest.
const QUEUE: usize = 2;
/// First reconnect delay of a dead source.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Counters of one camera, for `/metrics`.
#[derive(Debug, Default)]
pub struct CameraStats {
    online: AtomicBool,
    received: AtomicU64,
    processed: AtomicU64,
    inference_ns: AtomicU64,
    reconnects: AtomicU64,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of a camera's counters.
#[derive(Clone, Debug, Default)]
pub struct CameraSnapshot {
    /// Whether the source delivers frames.
    pub online: bool,
    /// Frames received from the source.
    pub received: u64,
    /// Frames run through the model.
    pub processed: u64,
    /// Time in the model (pre-processing, inference, post-processing).
    pub inference_ns: u64,
    /// Times the source was reopened.
    pub reconnects: u64,
    /// Frames not processed, by cause (`fps`, `queue_full`, `corrupt`, `inference_error`).
    pub skipped: BTreeMap<&'static str, u64>,
}

impl CameraStats {
    fn skip(&self, cause: &'static str) {
        *self
            .skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cause)
            .or_default() += 1;
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> CameraSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CameraSnapshot {
            online: self.online.load(Ordering::Relaxed),
            received: load(&self.received),
            processed: load(&self.processed),
            inference_ns: load(&self.inference_ns),
            reconnects: load(&self.reconnects),
            skipped: self.skipped.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// The newest-wins frame queue between a camera's source and its inference loop.
#[derive(Default)]
struct FrameQueue {
    frames: Mutex<VecDeque<(u64, Frame)>>,
    ready: Notify,
}

impl FrameQueue {
    /// Adds a frame; returns whether an older one was dropped to make room.
    fn push(&self, sequence: u64, frame: Frame) -> bool {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = frames.len() >= QUEUE && frames.pop_front().is_some();
        frames.push_back((sequence, frame));
        drop(frames);
        self.ready.notify_one();
        dropped
    }

    async fn pop(&self) -> (u64, Frame) {
        loop {
            if let Some(frame) = self.frames.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
                return frame;
            }
            self.ready.notified().await;
        }
    }
}

/// Where a camera's results and status go: MQTT when it is on (results only counted otherwise).
#[derive(Clone)]
pub struct Outputs {
    /// The MQTT publisher.
    pub sink: Option<Sink>,
    /// Topic layout.
    pub topics: Topics,
}

/// Counters of the running cameras by name, shared with `/metrics`.
pub type CameraRegistry = Arc<RwLock<BTreeMap<String, Arc<CameraStats>>>>;

/// One running camera: its settings and tasks.
struct Running {
    config: CameraConfig,
    tasks: [tokio::task::JoinHandle<()>; 2],
    stop: watch::Sender<bool>,
}

/// The running cameras.
pub struct Cameras {
    /// Counters of the running cameras.
    pub registry: CameraRegistry,
    running: BTreeMap<String, Running>,
    router: Arc<Router>,
    outputs: Outputs,
}

impl Cameras {
    /// Starts every configured camera (inside the tokio runtime).
    pub fn start(configs: &[CameraConfig], router: Arc<Router>, outputs: Outputs) -> Cameras {
        let mut cameras = Cameras {
            registry: CameraRegistry::default(),
            running: BTreeMap::new(),
            router,
            outputs,
        };
        for config in configs {
            cameras.start_one(config);
        }
        cameras
    }

    /// Makes the running cameras those of `configs` (a SIGHUP config reload): removed and
    /// changed cameras stop (a removed camera's retained status is cleared), new and changed
    /// ones start, unchanged ones keep running untouched.
    pub async fn reconcile(&mut self, configs: &[CameraConfig]) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| !configs.iter().any(|c| &c.name == *name && *c == running.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.stop_one(&name).await;
            if !configs.iter().any(|c| c.name == name) {
                tracing::info!(camera = %name, "camera removed");
                if let Some(sink) = &self.outputs.sink {
                    let topic = self.outputs.topics.camera_status(&name);
                    sink.retain(format!("{topic}/detail"), Vec::new());
                    sink.retain(topic, Vec::new());
                }
            }
        }
        for config in configs {
            if !self.running.contains_key(&config.name) {
                tracing::info!(camera = %config.name, source = %redact(&config.source), "camera started");
                self.start_one(config);
            }
        }
    }

    fn start_one(&mut self, config: &CameraConfig) {
        let (stop, stopped) = watch::channel(false);
        let camera = Arc::new(Camera {
            config: config.clone(),
            stats: Arc::new(CameraStats::default()),
            announced_offline: AtomicBool::new(false),
            queue: FrameQueue::default(),
            outputs: self.outputs.clone(),
        });
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(config.name.clone(), camera.stats.clone());
        let tasks = [
            tokio::spawn(camera.clone().capture(stopped.clone())),
            tokio::spawn(camera.infer(self.router.clone(), stopped)),
        ];
        self.running.insert(
            config.name.clone(),
            Running {
                config: config.clone(),
                tasks,
                stop,
            },
        );
    }

    async fn stop_one(&mut self, name: &str) {
        let Some(running) = self.running.remove(name) else {
            return;
        };
        let _ = running.stop.send(true);
        for task in running.tasks {
            let _ = task.await;
        }
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Stops every camera (sources closed, subprocesses killed).
    pub async fn stop(mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.stop_one(&name).await;
        }
    }
}

struct Camera {
    config: CameraConfig,
    stats: Arc<CameraStats>,
    /// Whether `offline` was announced since the last frame (announce each outage once).
    announced_offline: AtomicBool,
    queue: FrameQueue,
    outputs: Outputs,
}

impl Camera {
    /// Reads frames until stopped, reopening a dead source with backoff.
    async fn capture(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut options = SourceOptions::new(self.config.fps, &self.config.hwaccel);
        options.timeout = Duration::from_secs(self.config.stall_secs.max(1));
        let interval = (self.config.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / self.config.fps));
        let mut backoff = MIN_BACKOFF;
        let mut sequence = 0u64;
        let mut last_accepted: Option<Instant> = None;
        let mut source: Option<Box<dyn FrameSource>> = None;
        loop {
            let current = match source.as_mut() {
                Some(source) => source,
                None => match open(&self.config.source, &options) {
                    Ok(opened) => source.insert(opened),
                    Err(e) => {
                        // A source string that cannot work: say so once, then keep retrying slowly.
                        self.offline(&e.to_string());
                        if sleep_or_stop(MAX_BACKOFF, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let frame = tokio::select! {
                frame = current.next_frame() => frame,
                _ = stop.wait_for(|s| *s) => return,
            };
            match frame {
                Ok(frame) => {
                    backoff = MIN_BACKOFF;
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if !self.stats.online.swap(true, Ordering::Relaxed) {
                        self.announced_offline.store(false, Ordering::Relaxed);
                        self.status(true, None);
                    }
                    if let (Some(interval), Some(last)) = (interval, last_accepted) {
                        // Tolerate a little jitter: a source paced at `fps` must not lose frames.
                        if frame.captured.duration_since(last) < interval.mul_f64(0.9) {
                            self.stats.skip("fps");
                            continue;
                        }
                    }
                    last_accepted = Some(frame.captured);
                    sequence += 1;
                    if self.queue.push(sequence, frame) {
                        self.stats.skip("queue_full");
                    }
                }
                Err(e) if !e.is_fatal() => self.stats.skip("corrupt"),
                Err(e) => {
                    self.offline(&e.to_string());
                    source = None;
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                    if sleep_or_stop(delay, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Runs queued frames through the model until stopped.
    async fn infer(self: Arc<Self>, router: Arc<Router>, mut stop: watch::Receiver<bool>) {
        let mut last_error: Option<String> = None;
        loop {
            let (sequence, frame) = tokio::select! {
                next = self.queue.pop() => next,
                _ = stop.wait_for(|s| *s) => return,
            };
            let started = Instant::now();
            let jpeg = frame.jpeg.clone();
            let request = ImageRequest {
                model: self.config.model.clone(),
                version: None,
                id: None,
                image: Image::Rgb {
                    width: frame.width,
                    height: frame.height,
                    pixels: frame.rgb,
                },
                deadline: None,
            };
            match router.infer_image(request).await {
                Ok(answer) => {
                    last_error = None;
                    self.stats.processed.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .inference_ns
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let response = &answer.response;
                    let mut body = json!({
                        "camera": self.config.name,
                        "frame": sequence,
                        "model_name": response.model,
                        "model_version": response.version.to_string(),
                        "engine": response.engine.to_string(),
                        "inference_us": response.compute_time.as_micros() as u64,
                        "width": frame.width,
                        "height": frame.height,
                    });
                    let detections = response.result.as_ref().is_some_and(|r| !r.is_empty());
                    match &response.result {
                        Some(result) => body["result"] = json!(result),
                        None => {
                            let outputs: Vec<OutputTensor> = response
                                .outputs
                                .iter()
                                .map(|(name, tensor)| OutputTensor::from_tensor(name, tensor))
                                .collect();
                            body["outputs"] = json!(outputs);
                        }
                    }
                    if let Some(sink) = &self.outputs.sink {
                        sink.publish(
                            self.outputs.topics.camera_result(&self.config.name),
                            body.to_string().into_bytes(),
                            "application/json",
                        );
                        if self.config.snapshot && detections {
                            if let Some(jpeg) = jpeg {
                                sink.publish(
                                    self.outputs.topics.camera_snapshot(&self.config.name),
                                    jpeg.to_vec(),
                                    "image/jpeg",
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    self.stats.skip("inference_error");
                    // Say each new problem once, not once per frame.
                    let error = e.to_string();
                    if last_error.as_ref() != Some(&error) {
                        tracing::warn!(camera = %self.config.name, model = %self.config.model, %error, "camera frames not processed");
                        last_error = Some(error);
                    }
                }
            }
        }
    }

    fn offline(&self, reason: &str) {
        self.stats.online.store(false, Ordering::Relaxed);
        if !self.announced_offline.swap(true, Ordering::Relaxed) {
            tracing::warn!(camera = %self.config.name, source = %redact(&self.config.source), error = %reason, "camera offline");
            self.status(false, Some(reason));
        }
    }

    fn status(&self, online: bool, error: Option<&str>) {
        if online {
            tracing::info!(camera = %self.config.name, source = %redact(&self.config.source), "camera online");
        }
        let Some(sink) = &self.outputs.sink else { return };
        let topic = self.outputs.topics.camera_status(&self.config.name);
        let state = if online { "online" } else { "offline" };
        let detail = json!({
            "state": state,
            "source": redact(&self.config.source),
            "model": self.config.model,
            "error": error.map(redact),
            "reconnects": self.stats.reconnects.load(Ordering::Relaxed),
        });
        sink.retain(format!("{topic}/detail"), detail.to_string().into_bytes());
        sink.retain(topic, state.as_bytes().to_vec());
    }
}

/// Sleeps `delay`; true when the daemon is stopping.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}
