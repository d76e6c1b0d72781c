//! MQTT deploys: the manifest `{version, url, sha256, size, signature, rollout}` (on
//! `P/models/<m>/deploy` or the fleet's `F/models/<m>/deploy`) is checked and journalled —
//! then the message may be acknowledged — and the model file is downloaded into the staging
//! area by a task of its own: an `http(s)://` GET through `reqwest` (rustls), resumed with
//! `Range: bytes=<have>-` after a dropped connection or a restart, never more than `size`
//! bytes (itself within `max_upload_bytes`), retried with the daemon's backoff while attempts
//! make progress, progress reported in the rollout status. The finished file goes through
//! the same verification and rollout as an upload ([`super::commit`]).
//!
//! A manifest that repeats the deploy in progress is ignored; so is a retained or redelivered
//! one that repeats the last finished deploy (a broker reconnect must not redeploy it). A
//! version already installed with the same SHA-256 is reported as deployed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::journal::{Job, Origin, Phase};
use super::rollout::Rollout;
use super::upload::PartFile;
use super::{check_names, Delivery, DeliveryError, Slot};
use crate::backoff::Backoff;

/// Attempts in a row without a new byte before a download fails.
const MAX_STALLED_ATTEMPTS: u32 = 5;
/// How often download progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A deploy manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Version number to install.
    pub version: u64,
    /// `http(s)://` location of the model file.
    pub url: String,
    /// SHA-256 of the model file (hex).
    pub sha256: String,
    /// Size of the model file in bytes.
    pub size: u64,
    /// The model file's minisign signature (the `.minisig` text).
    #[serde(default)]
    pub signature: Option<String>,
    /// `immediate` or `shadow` (default: the model's sidecar, else immediate).
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(payload: &[u8]) -> Result<Manifest, DeliveryError> {
        let manifest: Manifest = serde_json::from_slice(payload).map_err(|e| {
            DeliveryError::Invalid(format!(
                "not a deploy manifest ({e}); expected {{\"version\", \"url\", \"sha256\", \"size\", \"signature\", \"rollout\"}}"
            ))
        })?;
        let url = reqwest::Url::parse(&manifest.url)
            .map_err(|e| DeliveryError::Invalid(format!("url: '{}' is not a URL: {e}", manifest.url)))?;
        if !["http", "https"].contains(&url.scheme()) {
            return Err(DeliveryError::Invalid(format!(
                "url: expected an http:// or https:// location, got '{}'",
                manifest.url
            )));
        }
        if manifest.sha256.len() != 64 || !manifest.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(DeliveryError::Invalid(format!(
                "sha256: expected 64 hex digits, got '{}'",
                manifest.sha256
            )));
        }
        Ok(manifest)
    }
}

/// The HTTP client of downloads.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

impl Delivery {
    /// Takes a deploy manifest for `model` (MQTT); returns once it is journalled (or refused,
    /// which is reported as the model's rollout status). `redelivered`: a retained message or
    /// a broker redelivery.
    pub async fn deploy(
        self: &Arc<Self>,
        model: &str,
        payload: &[u8],
        redelivered: bool,
    ) -> Result<(), DeliveryError> {
        let manifest = Manifest::parse(payload).and_then(|m| check_names(model, m.version).map(|()| m));
        let manifest = match manifest {
            Ok(manifest) => manifest,
            Err(e) => {
                self.metrics.transfer(Origin::Mqtt, e.reason());
                if check_names(model, 1).is_ok() {
                    let status = json!({"model": model, "state": "failed", "reason": e.to_string(), "at_ms": crate::clock::now_ms()});
                    self.report(model, status);
                }
                return Err(e);
            }
        };
        let job = Job {
            version: manifest.version,
            sha256: manifest.sha256.to_ascii_lowercase(),
            size: Some(manifest.size),
            url: Some(manifest.url.clone()),
            signature: manifest.signature.clone(),
            rollout: manifest.rollout,
            origin: Origin::Mqtt,
            phase: Phase::Download,
            started_ms: crate::clock::now_ms(),
        };
        if self.repeats(model, &job, redelivered) {
            return Ok(());
        }
        match self.accept(model, &job) {
            Ok(slot) => {
                spawn(self.clone(), slot, job);
                Ok(())
            }
            Err(e) => {
                // Refused before it started: reported, but not the model's last deploy.
                self.metrics.transfer(Origin::Mqtt, e.reason());
                let mut status = super::status(model, &job, "failed");
                status["reason"] = json!(e.to_string());
                self.report(model, status);
                Err(e)
            }
        }
    }

    /// Whether a manifest repeats the deploy in progress, or (retained, redelivered) the last
    /// finished one, or names the version installed with the same file.
    fn repeats(&self, model: &str, job: &Job, redelivered: bool) -> bool {
        let same = |version: u64, sha256: &str| version == job.version && sha256 == job.sha256;
        if super::lock(&self.active)
            .get(model)
            .is_some_and(|a| same(a.version, &a.sha256))
        {
            tracing::debug!(model, version = job.version, "deploy already in progress");
            return true;
        }
        let last = self.journal.read(model).last;
        if redelivered && last.is_some_and(|l| same(l.version, &l.sha256)) {
            tracing::debug!(
                model,
                version = job.version,
                "deploy already finished: manifest ignored"
            );
            return true;
        }
        let installed = self
            .staging
            .installed(model, job.version)
            .join(crate::repository::layout::MODEL_FILE);
        if super::staging::sha256_file(&installed).is_ok_and(|sha| sha == job.sha256) {
            tracing::info!(
                model,
                version = job.version,
                "version already installed with this file"
            );
            return true;
        }
        false
    }

    /// Checks what can be checked before downloading, takes the model's deploy slot and
    /// journals the deploy.
    fn accept(self: &Arc<Self>, model: &str, job: &Job) -> Result<Slot, DeliveryError> {
        self.check_size(job.size.unwrap_or(0))?;
        self.check_new(model, job.version)?;
        let slot = self.reserve(model, job.version, &job.sha256)?;
        self.journal
            .update(model, |record| record.active = Some(job.clone()))
            .map_err(super::io_error)?;
        tracing::info!(
            model,
            version = job.version,
            url = job.url.as_deref().unwrap_or(""),
            "deploy accepted: downloading"
        );
        self.report(model, super::status(model, job, "downloading"));
        Ok(slot)
    }
}

/// Runs a journalled download (new or resumed), then the rollout.
pub(super) fn spawn(delivery: Arc<Delivery>, slot: Slot, job: Job) {
    tokio::spawn(async move {
        let model = slot.model.clone();
        let fetched = tokio::select! {
            fetched = fetch_job(&delivery, &model, &job) => fetched,
            _ = slot.cancel.cancelled() => Err(DeliveryError::Download("cancelled by a rollback or delete request".into())),
        };
        match fetched {
            Ok(()) => {
                let _ = super::commit::roll_out(&delivery, slot, job).await;
            }
            Err(e) => {
                tracing::warn!(model, version = job.version, error = %e, "download failed");
                delivery.staging.remove(&model, job.version);
                delivery.metrics.transfer(Origin::Mqtt, e.reason());
                delivery.finished(&model, &job, "failed", Some(e.to_string()), Value::Null);
            }
        }
    });
}

/// Downloads the job's model file (and writes its signature) into the staging area.
async fn fetch_job(delivery: &Delivery, model: &str, job: &Job) -> Result<(), DeliveryError> {
    let staging = &delivery.staging;
    let (url, size) = (job.url.clone().unwrap_or_default(), job.size.unwrap_or(0));
    staging.prepare(model, job.version).map_err(super::io_error)?;
    if let Some(signature) = &job.signature {
        staging
            .write_extra(model, job.version, "model.onnx.minisig", signature.as_bytes())
            .map_err(super::io_error)?;
    }
    let done = staging.model_file(model, job.version);
    if done.is_file() {
        return Ok(()); // downloaded before a restart; the commit verifies it
    }
    let mut part = PartFile::resume(&staging.part_file(model, job.version), &done, size).await?;
    let mut reported = Instant::now();
    let mut progress = |bytes: u64| {
        if reported.elapsed() >= PROGRESS_EVERY {
            let mut status = super::status(model, job, "downloading");
            status["progress"] = json!({ "bytes": bytes, "size": size });
            delivery.report(model, status);
            reported = Instant::now();
        }
    };
    fetch(&delivery.client, &url, &mut part, &mut progress).await?;
    part.finish().await?;
    Ok(())
}

/// Why one attempt stopped.
enum Stop {
    /// Worth another attempt (connection, server error, a short body).
    Retry(String),
    /// Not (client error, too many bytes, a full disk).
    Fail(DeliveryError),
}

/// Downloads `url` into `part` until it holds the expected size.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    part: &mut PartFile,
    progress: &mut impl FnMut(u64),
) -> Result<(), DeliveryError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut stalled = 0;
    loop {
        let before = part.written();
        match attempt(client, url, part, progress).await {
            Ok(()) => return Ok(()),
            Err(Stop::Fail(e)) => return Err(e),
            Err(Stop::Retry(why)) => {
                if part.written() > before {
                    stalled = 0;
                    backoff.reset();
                } else {
                    stalled += 1;
                }
                if stalled >= MAX_STALLED_ATTEMPTS {
                    return Err(DeliveryError::Download(format!(
                        "{url}: {why} ({stalled} attempts in a row brought nothing)"
                    )));
                }
                let delay = backoff.next_delay();
                tracing::warn!(url, have = part.written(), error = %why, retry_in_ms = delay.as_millis() as u64, "download interrupted; resuming");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One GET, from where the part file ends.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    part: &mut PartFile,
    progress: &mut impl FnMut(u64),
) -> Result<(), Stop> {
    let offset = part.written();
    let mut request = client.get(url);
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let mut response = request.send().await.map_err(|e| Stop::Retry(chain(&e)))?;
    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT if range_start(&response) == Some(offset) => {}
        StatusCode::PARTIAL_CONTENT => {
            return Err(Stop::Retry(
                restart(part, "the server answered another range").await?,
            ))
        }
        StatusCode::OK if offset > 0 => {
            // The server ignored the range: start over.
            part.truncate().await.map_err(Stop::Fail)?;
        }
        StatusCode::OK => {}
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            return Err(Stop::Retry(format!("HTTP {s}")))
        }
        s => {
            return Err(Stop::Fail(DeliveryError::Download(format!(
                "{url}: HTTP {s}; expected 200 or 206 with the model file"
            ))))
        }
    }
    while let Some(chunk) = response.chunk().await.map_err(|e| Stop::Retry(chain(&e)))? {
        part.write(&chunk).await.map_err(Stop::Fail)?;
        progress(part.written());
    }
    if part.written() < part.expected() {
        return Err(Stop::Retry(format!(
            "the connection ended after {} bytes",
            part.written()
        )));
    }
    Ok(())
}

async fn restart(part: &mut PartFile, why: &str) -> Result<String, Stop> {
    part.truncate().await.map_err(Stop::Fail)?;
    Ok(format!("{why}; starting over"))
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<size>`.
fn range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// An error with its causes (reqwest keeps the useful part in the sources).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
