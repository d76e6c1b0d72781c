//! [`ModelHandle`]: one model's loaded versions and state. Versions live in an `ArcSwap`, so
//! a request takes an `Arc` of the version it runs on without blocking, a reload swaps the
//! whole set atomically, and a replaced version is freed when its last request finishes.
//! The state (`LOADING`, `READY`, `UNAVAILABLE` with the error, engine, provider, sha256,
//! loaded_at) is what status topics, health and metrics report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use tokio::sync::watch;

use super::shadow::Shadow;
use super::{ModelStats, ServeError};
use crate::engine::pool::LoadedModel;

/// One version loaded and serving.
pub struct LoadedVersion {
    /// Version number.
    pub version: u64,
    /// The model in its engine, with its inference threads.
    pub model: LoadedModel,
    /// File it was loaded from.
    pub file: PathBuf,
    /// When it was swapped in.
    pub loaded_at: SystemTime,
    /// How long loading, warming up and validating it took.
    pub load_time: Duration,
    /// Class labels (`labels.txt`).
    pub labels: Option<Vec<String>>,
    /// Image pre-processing, when the sidecar has `[input]`.
    pub image: Option<super::image::ImagePipeline>,
    /// Output post-processing, when the sidecar has `[output]` with a kind other than `none`.
    pub post: Option<crate::pipeline::postprocess::Postprocessor>,
    /// How its warm-up went (`ok on …`, or `skipped: …` with the reason).
    pub warmup: String,
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("version", &self.version)
            .field("file", &self.file)
            .field("engine", &self.model.engine)
            .finish_non_exhaustive()
    }
}

/// Lifecycle state of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Being loaded; nothing ready yet.
    Loading,
    /// At least one version serves.
    Ready,
    /// Nothing serves; `error` says why.
    Unavailable,
}

/// What a model's status reports.
#[derive(Clone, Debug, Serialize)]
pub struct ModelState {
    /// Lifecycle state.
    pub state: State,
    /// Highest ready version.
    pub version: Option<u64>,
    /// Engine of that version.
    pub engine: Option<String>,
    /// Provider of that version.
    pub provider: Option<String>,
    /// SHA-256 of its file.
    pub sha256: Option<String>,
    /// When it was loaded (seconds since the epoch).
    pub loaded_at: Option<u64>,
    /// The last load error (kept while an older version serves on).
    pub error: Option<String>,
    /// How that version's warm-up went (`skipped: …` when it served without one).
    pub warmup: Option<String>,
}

impl ModelState {
    /// The state of a model being loaded for the first time.
    pub fn loading() -> ModelState {
        ModelState {
            state: State::Loading,
            version: None,
            engine: None,
            provider: None,
            sha256: None,
            loaded_at: None,
            error: None,
            warmup: None,
        }
    }
}

/// Ready versions by number.
pub type Versions = BTreeMap<u64, Arc<LoadedVersion>>;

/// A model's ready versions and the state that describes them, swapped as one: a request
/// that finds no version reads the state of the same set (`LOADING`: it may wait).
struct Published {
    versions: Arc<Versions>,
    state: Arc<ModelState>,
}

impl Published {
    /// `version`, or the highest ready one, of the model `name`.
    fn pick(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedVersion>, ServeError> {
        let versions = &self.versions;
        let found = match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        };
        match (found, version) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(v)) if !versions.is_empty() => Err(ServeError::UnknownVersion {
                model: name.to_string(),
                version: v,
                ready: versions.keys().copied().collect(),
            }),
            (None, _) => Err(ServeError::Unavailable {
                model: name.to_string(),
                reason: self
                    .state
                    .error
                    .clone()
                    .unwrap_or_else(|| "no version is ready".into()),
            }),
        }
    }
}

/// A model as the router sees it.
pub struct ModelHandle {
    /// Model name.
    pub name: String,
    /// Request counters.
    pub stats: ModelStats,
    published: ArcSwap<Published>,
    changed: watch::Sender<u64>,
    /// A candidate version receiving copies of requests (model delivery's shadow rollout).
    shadow: ArcSwapOption<Shadow>,
    /// The last rollout status (model delivery), reported with the statistics.
    rollout: ArcSwapOption<serde_json::Value>,
}

impl ModelHandle {
    /// A model with nothing loaded yet (`LOADING`).
    pub fn new(name: &str) -> ModelHandle {
        ModelHandle {
            name: name.to_string(),
            stats: ModelStats::default(),
            published: ArcSwap::from_pointee(Published {
                versions: Arc::new(Versions::new()),
                state: Arc::new(ModelState::loading()),
            }),
            changed: watch::channel(0).0,
            shadow: ArcSwapOption::empty(),
            rollout: ArcSwapOption::empty(),
        }
    }

    /// The version to run: `version`, or the highest ready one.
    pub fn pick(&self, version: Option<u64>) -> Result<Arc<LoadedVersion>, ServeError> {
        self.published.load().pick(&self.name, version)
    }

    /// As [`ModelHandle::pick`]; a failure says whether the model was `LOADING` in the same
    /// snapshot as the versions looked at.
    pub fn pick_or_loading(&self, version: Option<u64>) -> Result<Arc<LoadedVersion>, (ServeError, bool)> {
        let published = self.published.load();
        let loading = published.state.state == State::Loading;
        published.pick(&self.name, version).map_err(|e| (e, loading))
    }

    /// Ready versions.
    pub fn versions(&self) -> Arc<Versions> {
        self.published.load().versions.clone()
    }

    /// Current state.
    pub fn state(&self) -> Arc<ModelState> {
        self.published.load().state.clone()
    }

    /// Swaps in a new set of ready versions and the matching state; `error` is the last load
    /// failure, if any. Returns the set it replaced.
    pub fn publish(&self, versions: Versions, error: Option<String>) -> Arc<Versions> {
        let newest = versions.values().next_back();
        let state = ModelState {
            state: match (newest, &error) {
                (Some(_), _) => State::Ready,
                (None, Some(_)) => State::Unavailable,
                (None, None) => State::Loading,
            },
            version: newest.map(|v| v.version),
            engine: newest.map(|v| v.model.engine.to_string()),
            provider: newest.map(|v| v.model.provider.clone()),
            sha256: newest.map(|v| v.model.info.sha256.clone()),
            loaded_at: newest
                .and_then(|v| v.loaded_at.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            error,
            warmup: newest.map(|v| v.warmup.clone()),
        };
        let old = self.published.swap(Arc::new(Published {
            versions: Arc::new(versions),
            state: Arc::new(state),
        }));
        self.changed.send_modify(|n| *n += 1);
        old.versions.clone()
    }

    /// The shadow attached to this model, if any.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.load_full()
    }

    /// Attaches (or, with `None`, detaches) a shadow; returns the one it replaced. While a
    /// shadow is attached, both versions it compares measure their executions' CPU time.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        let measure = |shadow: &Shadow, on: bool| {
            shadow.version.model.measure_cpu(on);
            if let Some(current) = self.versions().get(&shadow.against) {
                current.model.measure_cpu(on);
            }
        };
        if let Some(new) = &shadow {
            measure(new, true);
        }
        let old = self.shadow.swap(shadow);
        if let Some(old) = &old {
            measure(old, false);
        }
        // Turning the old shadow's versions off may have turned the new one's off too.
        if let Some(new) = self.shadow() {
            measure(&new, true);
        }
        old
    }

    /// The last rollout status of this model.
    pub fn rollout(&self) -> Option<Arc<serde_json::Value>> {
        self.rollout.load_full()
    }

    /// Records the rollout status (what model delivery last reported for this model).
    pub fn set_rollout(&self, status: serde_json::Value) {
        self.rollout.store(Some(Arc::new(status)));
    }

    /// Notified on every change of versions or state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
