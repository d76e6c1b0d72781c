//! A camera's pipeline (SPEC §8): its source's frames, capped at `fps`, go into a queue of at
//! most two frames where the newest wins; an inference loop takes them through the model's
//! image pipeline (the same path as MQTT and HTTP images) and publishes each result on
//! `P/cameras/<c>/result` — through the MQTT outbox, so results survive a broker outage. A
//! source that dies or stalls (no frame for `stall_secs`) makes the camera `offline`; it is
//! reopened with capped exponential backoff and comes back `online`. Cameras are independent:
//! one failing never touches another, the models or the daemon; a SIGHUP config reload adds,
//! removes and restarts cameras whose settings changed.
//!
//! Annotated snapshots: the result's boxes, labels and scores are drawn on the frame
//! ([`crate::pipeline::annotate`], on tokio's blocking pool, never on the async workers) and
//! handed to [`Outputs::snapshot`] — the latest one per camera is what the status page shows.
//! A frame is annotated when its snapshot is published (`snapshot = true` or
//! [`Outputs::publish_snapshots`]: a frame with detections, and the camera's first frame so
//! that there is a picture from the start), else at most once per [`SNAPSHOT_EVERY`].
//!
//! Credentials in source URLs never leave [`super::redact`]: logs, status and metric labels
//! name the camera, and describe the source only redacted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::Registry;
use serde_json::{json, Map};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{open, redact, Frame, FrameSource, SourceOptions};
use crate::backoff::Backoff;
use crate::codec::{self, Encoding};
use crate::config::CameraConfig;
use crate::pipeline::annotate::annotate;
use crate::pipeline::postprocess::Detection;
use crate::serving::{Image, ImageRequest, Router};
use crate::telemetry::{self, MetricsSource};

/// Frames waiting for the model, at most; a new frame past it drops the oldest.
const QUEUE: usize = 2;
/// First reconnect delay of a dead source.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The causes of skipped frames (the `cause` label of `onnxd_camera_frames_skipped_total`).
const SKIP_CAUSES: [&str; 4] = ["fps", "queue_full", "corrupt", "inference_error"];
/// How often the latest annotated frame is refreshed when no snapshot is published.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

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

/// Where a camera's results, snapshots and status go (MQTT when it is on, and the status
/// page, wired by the daemon). Cameras know no transport.
pub trait Outputs: Send + Sync {
    /// A frame's result (the response JSON).
    fn result(&self, camera: &str, body: Vec<u8>);
    /// The latest annotated frame (JPEG); `publish` when it is also to be published
    /// (`snapshot = true` or [`Outputs::publish_snapshots`], see the module documentation).
    fn snapshot(&self, camera: &str, jpeg: Bytes, publish: bool);
    /// Whether every camera's snapshots are published, whatever its `snapshot` setting
    /// (Home Assistant's image entities read them).
    fn publish_snapshots(&self) -> bool {
        false
    }
    /// The camera's state: `online`/`offline` and its JSON detail.
    fn status(&self, camera: &str, online: bool, detail: Vec<u8>);
    /// The camera was removed: its retained state is cleared.
    fn removed(&self, camera: &str);
}

/// Outputs that drop everything (no MQTT): results are only counted.
pub struct NoOutputs;

impl Outputs for NoOutputs {
    fn result(&self, _: &str, _: Vec<u8>) {}
    fn snapshot(&self, _: &str, _: Bytes, _: bool) {}
    fn status(&self, _: &str, _: bool, _: Vec<u8>) {}
    fn removed(&self, _: &str) {}
}

/// Counters of the running cameras by name, rendered into `/metrics`.
#[derive(Clone, Default)]
pub struct CameraRegistry(Arc<RwLock<BTreeMap<String, Arc<CameraStats>>>>);

impl CameraRegistry {
    fn insert(&self, name: &str, stats: Arc<CameraStats>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), stats);
    }

    fn remove(&self, name: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The running cameras' counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, CameraSnapshot> {
        let cameras = self.0.read().unwrap_or_else(|e| e.into_inner());
        cameras
            .iter()
            .map(|(name, stats)| (name.clone(), stats.snapshot()))
            .collect()
    }
}

impl MetricsSource for CameraRegistry {
    fn render(&self, registry: &Registry) {
        let cameras = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !cameras.is_empty() {
            render(registry, &cameras);
        }
    }
}

/// One running camera: its settings and tasks.
struct Running {
    config: CameraConfig,
    tasks: [tokio::task::JoinHandle<()>; 2],
    stop: CancellationToken,
}

/// The running cameras.
pub struct Cameras {
    /// Counters of the running cameras.
    pub registry: CameraRegistry,
    running: BTreeMap<String, Running>,
    router: Arc<Router>,
    outputs: Arc<dyn Outputs>,
    shutdown: CancellationToken,
}

impl Cameras {
    /// Starts every configured camera (inside the tokio runtime); each stops when `shutdown`
    /// is cancelled, or alone when a reload removes it.
    pub fn start(
        configs: &[CameraConfig],
        router: Arc<Router>,
        outputs: Arc<dyn Outputs>,
        shutdown: &CancellationToken,
    ) -> Cameras {
        let mut cameras = Cameras {
            registry: CameraRegistry::default(),
            running: BTreeMap::new(),
            router,
            outputs,
            shutdown: shutdown.clone(),
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
                self.outputs.removed(&name);
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
        let stop = self.shutdown.child_token();
        let camera = Arc::new(Camera {
            config: config.clone(),
            stats: Arc::new(CameraStats::default()),
            announced_offline: AtomicBool::new(false),
            queue: FrameQueue::default(),
            outputs: self.outputs.clone(),
        });
        self.registry.insert(&config.name, camera.stats.clone());
        let tasks = [
            tokio::spawn(camera.clone().capture(stop.clone())),
            tokio::spawn(camera.infer(self.router.clone(), stop.clone())),
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
        running.stop.cancel();
        for task in running.tasks {
            let _ = task.await;
        }
        self.registry.remove(name);
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
    outputs: Arc<dyn Outputs>,
}

impl Camera {
    /// Reads frames until stopped, reopening a dead source with backoff.
    async fn capture(self: Arc<Self>, stop: CancellationToken) {
        let mut options = SourceOptions::new(self.config.fps, &self.config.hwaccel);
        options.timeout = Duration::from_secs(self.config.stall_secs.max(1));
        let interval = (self.config.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / self.config.fps));
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
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
                        if sleep_or_stop(MAX_BACKOFF, &stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let frame = tokio::select! {
                frame = current.next_frame() => frame,
                _ = stop.cancelled() => return,
            };
            match frame {
                Ok(frame) => {
                    backoff.reset();
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
                    let delay = backoff.next_delay();
                    if sleep_or_stop(delay, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Runs queued frames through the model until stopped.
    async fn infer(self: Arc<Self>, router: Arc<Router>, stop: CancellationToken) {
        let mut last_error: Option<String> = None;
        let mut snapshots = SnapshotPace::default();
        loop {
            let (sequence, frame) = tokio::select! {
                next = self.queue.pop() => next,
                _ = stop.cancelled() => return,
            };
            let started = Instant::now();
            let publishing = self.config.snapshot || self.outputs.publish_snapshots();
            // The pixels go to the model; keep a copy only when a snapshot may be drawn.
            let pixels = snapshots.may_draw(publishing).then(|| frame.rgb.clone());
            let (width, height) = (frame.width, frame.height);
            let request = ImageRequest {
                model: self.config.model.clone(),
                version: None,
                id: None,
                image: Image::Rgb {
                    width,
                    height,
                    pixels: frame.rgb,
                },
                deadline: None,
            };
            match router.infer_image(request).await {
                Ok(mut response) => {
                    last_error = None;
                    self.stats.processed.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .inference_ns
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let detections = response.result.clone().unwrap_or_default();
                    if response.result.is_some() {
                        // The post-processed result is what a camera reports, not raw tensors.
                        response.outputs.clear();
                    }
                    let mut extra = Map::new();
                    extra.insert("camera".into(), self.config.name.clone().into());
                    extra.insert("frame".into(), sequence.into());
                    extra.insert("width".into(), width.into());
                    extra.insert("height".into(), height.into());
                    let (body, _) = codec::encode(&response.reply(), &Encoding::json(), extra);
                    self.outputs.result(&self.config.name, body);
                    let publish = publishing && (!detections.is_empty() || !snapshots.published);
                    if let Some(rgb) = pixels.filter(|_| publish || snapshots.due()) {
                        self.snapshot((width, height, rgb), detections, publish).await;
                        snapshots.drawn(publish);
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

    /// Draws `detections` on the frame on the blocking pool and hands the JPEG over.
    async fn snapshot(
        &self,
        (width, height, rgb): (u32, u32, Vec<u8>),
        detections: Vec<Detection>,
        publish: bool,
    ) {
        let drawn = tokio::task::spawn_blocking(move || annotate(width, height, &rgb, &detections)).await;
        match drawn {
            Ok(Ok(jpeg)) => self
                .outputs
                .snapshot(&self.config.name, Bytes::from(jpeg), publish),
            Ok(Err(e)) => {
                tracing::debug!(camera = %self.config.name, error = %e, "frame not annotated")
            }
            Err(e) => tracing::warn!(camera = %self.config.name, error = %e, "annotating a frame failed"),
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
        let state = if online { "online" } else { "offline" };
        let detail = json!({
            "state": state,
            "source": redact(&self.config.source),
            "model": self.config.model,
            "error": error.map(redact),
            "reconnects": self.stats.reconnects.load(Ordering::Relaxed),
        });
        self.outputs
            .status(&self.config.name, online, detail.to_string().into_bytes());
    }
}

/// When a camera's next annotated snapshot is drawn (see the module documentation).
#[derive(Default)]
struct SnapshotPace {
    last: Option<Instant>,
    /// Whether one was published since the camera started.
    published: bool,
}

impl SnapshotPace {
    /// Whether the next frame may be drawn (so its pixels must be kept).
    fn may_draw(&self, publishing: bool) -> bool {
        publishing || self.due()
    }

    /// Whether the latest annotated frame is older than [`SNAPSHOT_EVERY`].
    fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY)
    }

    fn drawn(&mut self, published: bool) {
        self.last = Some(Instant::now());
        self.published |= published;
    }
}

/// Sleeps `delay`; true when the daemon is stopping.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.cancelled() => true,
    }
}

fn render(registry: &Registry, cameras: &BTreeMap<String, Arc<CameraStats>>) {
    let camera = ["camera"];
    let online = telemetry::gauge(
        registry,
        "onnxd_camera_online",
        "1 while the camera's source delivers frames.",
        &camera,
    );
    let received = telemetry::counter(
        registry,
        "onnxd_camera_frames_received_total",
        "Frames received from the source.",
        &camera,
    );
    let processed = telemetry::counter(
        registry,
        "onnxd_camera_frames_processed_total",
        "Frames run through the model.",
        &camera,
    );
    let skipped = telemetry::counter(
        registry,
        "onnxd_camera_frames_skipped_total",
        "Frames not processed, by cause (fps, queue_full, corrupt, inference_error).",
        &["camera", "cause"],
    );
    let reconnects = telemetry::counter(
        registry,
        "onnxd_camera_reconnects_total",
        "Times the source was reopened.",
        &camera,
    );
    let seconds = telemetry::seconds(
        registry,
        "onnxd_camera_inference_seconds_total",
        "Time in the model for camera frames (pre-processing, inference, post-processing).",
        &camera,
    );
    for (name, stats) in cameras {
        let s = stats.snapshot();
        let label = [name.as_str()];
        online.with_label_values(&label).set(i64::from(s.online));
        received.with_label_values(&label).inc_by(s.received);
        processed.with_label_values(&label).inc_by(s.processed);
        reconnects.with_label_values(&label).inc_by(s.reconnects);
        seconds
            .with_label_values(&label)
            .inc_by(s.inference_ns as f64 / 1e9);
        // Every cause from the start (at 0), so the series exist before the first drop.
        for cause in SKIP_CAUSES {
            skipped.with_label_values(&[name.as_str(), cause]).inc_by(0);
        }
        for (cause, count) in &s.skipped {
            skipped.with_label_values(&[name.as_str(), cause]).inc_by(*count);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn frame() -> Frame {
        Frame {
            width: 1,
            height: 1,
            rgb: vec![0; 3],
            jpeg: None,
            captured: Instant::now(),
        }
    }

    #[tokio::test]
    async fn the_newest_frames_win_and_each_drop_is_reported() {
        let queue = FrameQueue::default();
        let dropped: Vec<bool> = (1..=5).map(|sequence| queue.push(sequence, frame())).collect();
        assert_eq!(dropped, [false, false, true, true, true]);
        // The model gets the two newest, oldest first; the three before them were dropped.
        assert_eq!(queue.pop().await.0, 4);
        assert_eq!(queue.pop().await.0, 5);
        // A consumer waiting on an empty queue is woken by the next frame.
        let waiting = queue.pop();
        assert!(!queue.push(6, frame()));
        assert_eq!(waiting.await.0, 6);
    }
}
