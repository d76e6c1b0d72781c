//! Model delivery (SPEC §6 deploy, §7 upload): new versions reach the repository through the
//! channels a fleet already has, and take traffic on evidence.
//!
//! - HTTP upload: `PUT …/versions/{v}` streams the model file into the staging area
//!   ([`upload`], [`staging`]), `PUT …/versions/{v}/files/{name}` adds `model.toml`,
//!   `labels.txt` or `model.onnx.minisig`, `POST …/versions/{v}/commit?sha256=…` verifies and
//!   rolls the version out ([`commit`]).
//! - MQTT deploy: a manifest `{version, url, sha256, size, signature, rollout}` on
//!   `P/models/<m>/deploy` or `F/models/<m>/deploy`; the file is downloaded, resumable with
//!   `Range` ([`download`]).
//! - Rollout ([`rollout`], [`shadowing`]): `immediate`, or `shadow` — loaded beside the
//!   current version, compared on copies of live requests, then promoted or rolled back.
//! - Rollback on demand and version deletion ([`removal`]); `keep_versions` on disk.
//!
//! Nothing enters the repository before it is whole and verified (size, SHA-256, signature,
//! the reload checks); installing is a rename, and the repository thread publishes the
//! version it was handed ([`crate::repository::Repository::adopt`]) — no request fails. One
//! deploy per model at a time. What a crash interrupts is in the [`journal`]: downloads
//! resume, shadows are reported failed. Every step is reported as the model's rollout status
//! (retained on `P/models/<m>/rollout`, and in `/v2/models/<m>/stats`) and counted
//! ([`metrics`]).

pub mod commit;
pub mod download;
pub mod journal;
pub mod metrics;
pub mod removal;
pub mod rollout;
pub mod shadowing;
pub mod staging;
pub mod upload;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ReloadMode};
use crate::repository::layout;
use crate::repository::loader::LoadSettings;
use crate::repository::watch::RepoEvent;
use crate::serving::Router;
use journal::{Journal, Origin, Phase};
use metrics::DeliveryMetrics;
use staging::Staging;
use upload::PartFile;

/// Why a delivery step was refused; [`DeliveryError::reason`] is the metrics label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// A malformed request (name, version, manifest).
    #[error("{0}")]
    Invalid(String),
    /// The upload has no `Content-Length`.
    #[error("{0}")]
    LengthRequired(String),
    /// Over `max_upload_bytes`, or more bytes than announced.
    #[error("{0}")]
    TooLarge(String),
    /// Fewer bytes than announced.
    #[error("{0}")]
    Truncated(String),
    /// The SHA-256 is missing or does not match.
    #[error("{0}")]
    Checksum(String),
    /// The signature is missing or does not verify.
    #[error("{0}")]
    Signature(String),
    /// The model failed the reload checks (ONNX, engine, warm-up, golden sample, sidecar).
    #[error("{0}")]
    Model(String),
    /// Nothing staged or installed by that name.
    #[error("{0}")]
    NotFound(String),
    /// The version exists, or another deploy of the model is in progress.
    #[error("{0}")]
    Conflict(String),
    /// The download failed.
    #[error("{0}")]
    Download(String),
    /// A file could not be written or moved.
    #[error("{0}")]
    Io(String),
    /// The repository thread is gone (the daemon is stopping).
    #[error("{0}")]
    Unavailable(String),
}

impl DeliveryError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DeliveryError::Invalid(_) => "invalid",
            DeliveryError::LengthRequired(_) => "length_required",
            DeliveryError::TooLarge(_) => "too_large",
            DeliveryError::Truncated(_) => "truncated",
            DeliveryError::Checksum(_) => "checksum",
            DeliveryError::Signature(_) => "signature",
            DeliveryError::Model(_) => "model",
            DeliveryError::NotFound(_) => "not_found",
            DeliveryError::Conflict(_) => "conflict",
            DeliveryError::Download(_) => "download",
            DeliveryError::Io(_) => "io",
            DeliveryError::Unavailable(_) => "unavailable",
        }
    }
}

/// Where rollout statuses are published (the daemon wires MQTT here).
pub trait Announcer: Send + Sync {
    /// Publishes a model's rollout status (retained).
    fn rollout(&self, model: &str, status: &Value);
}

/// The deploy a model has in progress.
struct Active {
    /// Tells this deploy's [`Slot`] from a later one of the same model.
    id: u64,
    version: u64,
    sha256: String,
    cancel: CancellationToken,
}

/// Model delivery of one daemon.
pub struct Delivery {
    staging: Staging,
    journal: Journal,
    settings: LoadSettings,
    mode: ReloadMode,
    max_upload_bytes: u64,
    keep_versions: usize,
    router: Arc<Router>,
    repository: crossbeam_channel::Sender<RepoEvent>,
    active: Mutex<HashMap<String, Active>>,
    announcer: RwLock<Option<Arc<dyn Announcer>>>,
    statuses: Mutex<BTreeMap<String, Value>>,
    next_slot: AtomicU64,
    client: reqwest::Client,
    /// Counters for `/metrics`.
    pub metrics: Arc<DeliveryMetrics>,
}

/// The right to run the one deploy of a model; released when the deploy's outcome is
/// reported ([`Delivery::finished`]) or when dropped, whichever comes first.
pub struct Slot {
    delivery: Arc<Delivery>,
    id: u64,
    model: String,
    /// Cancelled by a rollback or delete request.
    pub cancel: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = lock(&self.delivery.active);
        if active.get(&self.model).is_some_and(|a| a.id == self.id) {
            active.remove(&self.model);
        }
    }
}

impl Delivery {
    /// Delivery for the daemon of `config`, installing through the repository thread
    /// `repository` and attaching shadows to `router`'s models.
    pub fn new(
        config: &Config,
        router: Arc<Router>,
        repository: crossbeam_channel::Sender<RepoEvent>,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            staging: Staging::new(&config.repository.path),
            journal: Journal::new(&config.state_dir.join("delivery")),
            settings: LoadSettings::from_config(config),
            mode: config.repository.reload,
            max_upload_bytes: config.repository.max_upload_bytes,
            keep_versions: config.repository.keep_versions,
            router,
            repository,
            active: Mutex::default(),
            announcer: RwLock::default(),
            statuses: Mutex::default(),
            next_slot: AtomicU64::new(1),
            client: download::client(),
            metrics: Arc::default(),
        })
    }

    /// After a start: resumes the downloads a crash interrupted, reports interrupted shadows
    /// as failed, and clears what else the staging area holds. Must run inside the runtime.
    pub fn resume(self: &Arc<Self>) {
        let mut kept = Vec::new();
        for model in self.journal.models() {
            let Some(job) = self.journal.read(&model).active else {
                continue;
            };
            let resumable = job.phase == Phase::Download && job.origin == Origin::Mqtt;
            if resumable {
                if let Ok(slot) = self.reserve(&model, job.version, &job.sha256) {
                    tracing::info!(
                        model,
                        version = job.version,
                        "resuming the download a restart interrupted"
                    );
                    kept.push((model.clone(), job.version));
                    download::spawn(self.clone(), slot, job);
                    continue;
                }
            }
            let why = match job.phase {
                Phase::Shadow => "interrupted by a daemon restart during the shadow; the staged version was removed (deploy again)",
                Phase::Download => "interrupted by a daemon restart; deploy again",
            };
            self.staging.remove(&model, job.version);
            self.finished(&model, &job, "failed", Some(why.into()), Value::Null);
            self.metrics.transfer(job.origin, "interrupted");
        }
        self.staging.clean(&kept);
    }

    /// Publishes rollout statuses through `announcer` from now on (and the latest of each
    /// model at once).
    pub fn announce_to(&self, announcer: Arc<dyn Announcer>) {
        for (model, status) in lock(&self.statuses).iter() {
            announcer.rollout(model, status);
        }
        *self.announcer.write().unwrap_or_else(|e| e.into_inner()) = Some(announcer);
    }

    /// The largest model file accepted.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// Starts an upload of a version's model file of `length` bytes (`PUT …/versions/{v}`).
    pub async fn put_version(
        &self,
        model: &str,
        version: u64,
        length: Option<u64>,
    ) -> Result<PartFile, DeliveryError> {
        let result = self.open_upload(model, version, length).await;
        if let Err(e) = &result {
            self.metrics.transfer(Origin::Http, e.reason());
        }
        result
    }

    async fn open_upload(
        &self,
        model: &str,
        version: u64,
        length: Option<u64>,
    ) -> Result<PartFile, DeliveryError> {
        check_names(model, version)?;
        let length = length.ok_or_else(|| {
            DeliveryError::LengthRequired("Content-Length is required: the model file's size in bytes".into())
        })?;
        self.check_size(length)?;
        self.check_new(model, version)?;
        self.staging.prepare(model, version).map_err(io_error)?;
        PartFile::create(
            &self.staging.part_file(model, version),
            &self.staging.model_file(model, version),
            length,
        )
        .await
    }

    /// Counts an upload that broke off (truncated, too large).
    pub fn upload_failed(&self, error: &DeliveryError) {
        self.metrics.transfer(Origin::Http, error.reason());
    }

    /// Stores a file accompanying an uploaded version (`PUT …/versions/{v}/files/{name}`).
    pub fn put_file(&self, model: &str, version: u64, name: &str, bytes: &[u8]) -> Result<(), DeliveryError> {
        check_names(model, version)?;
        if !staging::EXTRA_FILES.contains(&name) {
            return Err(DeliveryError::Invalid(format!(
                "'{name}' cannot accompany a version: expected one of {:?}",
                staging::EXTRA_FILES
            )));
        }
        self.check_new(model, version)?;
        self.staging
            .write_extra(model, version, name, bytes)
            .map_err(io_error)
    }

    /// Verifies an uploaded version and rolls it out (`POST …/versions/{v}/commit`).
    pub async fn commit(
        self: &Arc<Self>,
        model: &str,
        version: u64,
        sha256: Option<String>,
        rollout: Option<rollout::Rollout>,
    ) -> Result<Value, DeliveryError> {
        let slot = self
            .reserve_commit(model, version, sha256.as_deref())
            .inspect_err(|e| self.metrics.transfer(Origin::Http, e.reason()))?;
        let job = journal::Job {
            version,
            sha256: sha256.unwrap_or_default(),
            size: None,
            url: None,
            signature: None,
            rollout,
            origin: Origin::Http,
            phase: Phase::Shadow,
            started_ms: crate::clock::now_ms(),
        };
        commit::roll_out(self, slot, job).await
    }

    /// The checks of a commit before verification, and the model's deploy slot.
    fn reserve_commit(
        self: &Arc<Self>,
        model: &str,
        version: u64,
        sha256: Option<&str>,
    ) -> Result<Slot, DeliveryError> {
        check_names(model, version)?;
        let sha256 = sha256.filter(|s| !s.is_empty()).ok_or_else(|| {
            DeliveryError::Checksum(
                "the model file's SHA-256 is required: ?sha256=<64 hex digits> or the X-Sha256 header".into(),
            )
        })?;
        if !self.staging.model_file(model, version).is_file() {
            return Err(DeliveryError::NotFound(format!(
                "no uploaded model file for '{model}' version {version}: PUT it first"
            )));
        }
        self.reserve(model, version, sha256)
    }

    /// Reserves the model's one deploy slot.
    fn reserve(self: &Arc<Self>, model: &str, version: u64, sha256: &str) -> Result<Slot, DeliveryError> {
        let mut active = lock(&self.active);
        if let Some(other) = active.get(model) {
            return Err(DeliveryError::Conflict(format!(
                "a deploy of '{model}' version {} is in progress; wait for its outcome or roll it back",
                other.version
            )));
        }
        let cancel = CancellationToken::new();
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        active.insert(
            model.to_string(),
            Active {
                id,
                version,
                sha256: sha256.to_string(),
                cancel: cancel.clone(),
            },
        );
        Ok(Slot {
            delivery: self.clone(),
            id,
            model: model.to_string(),
            cancel,
        })
    }

    fn check_size(&self, length: u64) -> Result<(), DeliveryError> {
        if length > self.max_upload_bytes {
            return Err(DeliveryError::TooLarge(format!(
                "the model file of {length} bytes is over the limit of {} bytes (repository.max_upload_bytes)",
                self.max_upload_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a version that is installed or being deployed.
    fn check_new(&self, model: &str, version: u64) -> Result<(), DeliveryError> {
        if self.staging.installed(model, version).exists() {
            return Err(DeliveryError::Conflict(format!(
                "'{model}' version {version} exists in the repository; delete it first or use a new version number"
            )));
        }
        if lock(&self.active)
            .get(model)
            .is_some_and(|a| a.version == version)
        {
            return Err(DeliveryError::Conflict(format!(
                "'{model}' version {version} is being deployed"
            )));
        }
        Ok(())
    }

    /// Records a model's rollout status: on its handle (statistics), and published.
    fn report(&self, model: &str, status: Value) {
        if let Some(handle) = self.router.handle(model) {
            handle.set_rollout(status.clone());
        }
        if let Some(announcer) = self.announcer.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            announcer.rollout(model, &status);
        }
        lock(&self.statuses).insert(model.to_string(), status);
    }

    /// Reports a deploy's end and records it as the model's last finished deploy. The model's
    /// deploy slot is released first: whoever sees the outcome may deploy again at once.
    fn finished(&self, model: &str, job: &journal::Job, state: &str, reason: Option<String>, extra: Value) {
        {
            let mut active = lock(&self.active);
            if active.get(model).is_some_and(|a| a.version == job.version) {
                active.remove(model);
            }
        }
        let mut status = status(model, job, state);
        status["reason"] = reason.map_or(Value::Null, Value::String);
        if let (Value::Object(status), Value::Object(extra)) = (&mut status, extra) {
            status.extend(extra);
        }
        self.report(model, status);
        let last = journal::Finished {
            version: job.version,
            sha256: job.sha256.clone(),
            state: state.to_string(),
            at_ms: crate::clock::now_ms(),
        };
        let written = self.journal.update(model, |record| {
            if record.active.as_ref().is_some_and(|a| a.version == job.version) {
                record.active = None;
            }
            record.last = Some(last);
        });
        if let Err(e) = written {
            tracing::error!(model, error = %e, "cannot write the delivery journal");
        }
    }
}

/// The status document of a deploy in `state`.
fn status(model: &str, job: &journal::Job, state: &str) -> Value {
    serde_json::json!({
        "model": model,
        "version": job.version,
        "state": state,
        "rollout": job.rollout.map(rollout::Rollout::name),
        "origin": job.origin,
        "sha256": job.sha256,
        "at_ms": crate::clock::now_ms(),
    })
}

/// Refuses a model name the repository would ignore, and version 0.
fn check_names(model: &str, version: u64) -> Result<(), DeliveryError> {
    if !layout::is_model_name(model) {
        return Err(DeliveryError::Invalid(format!(
            "'{model}' is not a model name: expected [A-Za-z0-9_.-]+, not starting with '.'"
        )));
    }
    if version == 0 {
        return Err(DeliveryError::Invalid(
            "version 0 is not a version: expected 1 or more".into(),
        ));
    }
    Ok(())
}

fn io_error(e: std::io::Error) -> DeliveryError {
    DeliveryError::Io(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
