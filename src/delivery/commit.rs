//! From a complete staged model file to a version that serves (or a clear refusal), for
//! uploads and downloads alike: the SHA-256 must match; the staged directory is completed with
//! links to the model's other files; the candidate is loaded with every reload check (the
//! signature when signatures are required, the ONNX file, the engine, warm-up, golden sample)
//! from the staging area — before anything is renamed into the repository. Then `immediate`
//! installs it and hands the loaded version to the repository thread, which swaps it in;
//! `shadow` attaches it beside the current version ([`super::shadowing`]). A refusal deletes
//! the staged files: the repository is unchanged and the current version keeps serving.
//!
//! With `reload = "replace"`, or when memory is short for two versions, the candidate is not
//! loaded beside the current one: the checks that need no engine run on the staged files, and
//! the ordinary reload path loads it once installed (and takes it out again if it fails).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::journal::Job;
use super::rollout::{Policy, Rollout};
use super::{io_error, Delivery, DeliveryError, Slot};
use crate::config::ReloadMode;
use crate::repository::loader::{self, LoadError, LoadSettings, VersionSource};
use crate::repository::sidecar::Sidecar;
use crate::repository::watch::RepoEvent;
use crate::repository::{mem_available, memory_admits, SyncReport};
use crate::serving::LoadedVersion;

/// Verifies a staged version and rolls it out; every outcome is reported and counted.
pub(super) async fn roll_out(
    delivery: &Arc<Delivery>,
    slot: Slot,
    mut job: Job,
) -> Result<Value, DeliveryError> {
    let model = slot.model.clone();
    let outcome = match verify(delivery, &model, &job).await {
        Ok((policy, sidecar)) => {
            job.rollout = Some(policy.rollout);
            dispatch(delivery, slot, &job, policy, sidecar).await
        }
        Err(e) => Err(e),
    };
    match &outcome {
        Ok(_) => delivery.metrics.transfer(job.origin, "ok"),
        Err(e) => {
            tracing::warn!(model, version = job.version, error = %e, "deploy refused; what served keeps serving");
            delivery.staging.remove(&model, job.version);
            delivery.metrics.transfer(job.origin, e.reason());
            delivery.finished(&model, &job, "failed", Some(e.to_string()), Value::Null);
        }
    }
    outcome
}

/// The checks before any load: not installed yet, the SHA-256, the sidecar it will have.
async fn verify(delivery: &Delivery, model: &str, job: &Job) -> Result<(Policy, Sidecar), DeliveryError> {
    let staging = &delivery.staging;
    if staging.installed(model, job.version).exists() {
        return Err(DeliveryError::Conflict(format!(
            "'{model}' version {} exists in the repository; delete it first or use a new version number",
            job.version
        )));
    }
    let file = staging.model_file(model, job.version);
    let actual = tokio::task::spawn_blocking(move || super::staging::sha256_file(&file))
        .await
        .map_err(|e| DeliveryError::Io(e.to_string()))?
        .map_err(io_error)?;
    if !actual.eq_ignore_ascii_case(job.sha256.trim()) {
        return Err(DeliveryError::Checksum(format!(
            "the model file's SHA-256 is {actual}, expected {}: the file is damaged or not the one meant; send it again",
            job.sha256.trim()
        )));
    }
    staging.link_model_files(model, job.version).map_err(io_error)?;
    let sidecar =
        Sidecar::load(&staging.dir(model, job.version)).map_err(|e| DeliveryError::Model(e.to_string()))?;
    Ok((Policy::of(&sidecar, job.rollout), sidecar))
}

/// Shadow when asked and possible; otherwise immediate.
async fn dispatch(
    delivery: &Arc<Delivery>,
    slot: Slot,
    job: &Job,
    policy: Policy,
    sidecar: Sidecar,
) -> Result<Value, DeliveryError> {
    let model = slot.model.clone();
    if policy.rollout == Rollout::Shadow {
        if delivery.mode == ReloadMode::Replace {
            return Err(DeliveryError::Invalid(
                "rollout = \"shadow\" loads the new version beside the current one, but this daemon reloads with repository.reload = \"replace\" (memory for one version): deploy with rollout = \"immediate\"".into(),
            ));
        }
        let current = delivery
            .router
            .handle(&model)
            .and_then(|h| h.versions().keys().next_back().copied());
        if let Some(current) = current {
            return super::shadowing::start(delivery, slot, job.clone(), policy, sidecar, current).await;
        }
        tracing::info!(
            model,
            version = job.version,
            "no version serves: nothing to shadow, rolling out immediately"
        );
    }
    immediate(delivery, &model, job, sidecar).await
}

/// Loads (or, short of memory, stages) the candidate, installs it and has it swapped in.
async fn immediate(
    delivery: &Arc<Delivery>,
    model: &str,
    job: &Job,
    sidecar: Sidecar,
) -> Result<Value, DeliveryError> {
    let file = delivery.staging.model_file(model, job.version);
    let beside = delivery.mode == ReloadMode::Beside && memory_admits(&file, mem_available());
    let loaded = if beside {
        Some(load(delivery, model, job.version, sidecar).await?)
    } else {
        check_staged(delivery, model, job.version, sidecar).await?;
        None
    };
    let report = install(delivery, model, job.version, loaded).await?;
    delivery.metrics.promotion(model, Rollout::Immediate);
    prune(delivery, model);
    let extra = json!({ "serving": report.serving });
    delivery.finished(model, job, "promoted", None, extra);
    Ok(super::status(model, job, "promoted"))
}

/// Loads the staged version with every reload check, beside what serves.
pub(super) async fn load(
    delivery: &Delivery,
    model: &str,
    version: u64,
    sidecar: Sidecar,
) -> Result<LoadedVersion, DeliveryError> {
    on_staged(delivery, model, version, sidecar, loader::load_version).await
}

/// The checks of the staged version that need no engine (signature, ONNX file, sidecar).
async fn check_staged(
    delivery: &Delivery,
    model: &str,
    version: u64,
    sidecar: Sidecar,
) -> Result<(), DeliveryError> {
    on_staged(delivery, model, version, sidecar, |source, settings| {
        loader::stage(source, settings).map(drop)
    })
    .await
}

/// Runs `step` on the staged version's files off the async workers (it reads and parses the
/// model); a refusal says which check failed.
async fn on_staged<T: Send + 'static>(
    delivery: &Delivery,
    model: &str,
    version: u64,
    sidecar: Sidecar,
    step: impl FnOnce(&VersionSource<'_>, &LoadSettings) -> Result<T, LoadError> + Send + 'static,
) -> Result<T, DeliveryError> {
    let dir = delivery.staging.dir(model, version);
    let file = delivery.staging.model_file(model, version);
    let settings = delivery.settings.clone();
    let name = model.to_string();
    tokio::task::spawn_blocking(move || {
        let source = VersionSource {
            name: &name,
            dir: &dir,
            version,
            file: &file,
            sidecar: &sidecar,
        };
        step(&source, &settings)
    })
    .await
    .map_err(|e| DeliveryError::Io(e.to_string()))?
    .map_err(refusal)
}

fn refusal(e: LoadError) -> DeliveryError {
    match e.step {
        "signature" => DeliveryError::Signature(e.to_string()),
        _ => DeliveryError::Model(e.to_string()),
    }
}

/// Renames the staged version into the repository and has the repository thread publish it
/// (the version already loaded, or loaded there from its files). A version that does not end
/// up serving is taken out again.
pub(super) async fn install(
    delivery: &Delivery,
    model: &str,
    version: u64,
    loaded: Option<LoadedVersion>,
) -> Result<SyncReport, DeliveryError> {
    let file = delivery.staging.install(model, version).map_err(io_error)?;
    let name = model.to_string();
    let report = match loaded {
        Some(mut loaded) => {
            loaded.file = file;
            loaded.loaded_at = SystemTime::now();
            ask(delivery, |reply| RepoEvent::Adopt(name, Box::new(loaded), reply)).await?
        }
        None => ask(delivery, |reply| RepoEvent::SyncNow(name, reply)).await?,
    };
    if report.serving.contains(&version) {
        return Ok(report);
    }
    let why = match report.errors.is_empty() {
        true => "the model's version policy (versions in model.toml) does not serve it".to_string(),
        false => report.errors.join("; "),
    };
    if let Err(e) = delivery.staging.discard(model, version) {
        tracing::error!(model, version, error = %e, "cannot take a refused version out of the repository");
    }
    ask(delivery, |reply| RepoEvent::SyncNow(model.to_string(), reply)).await?;
    Err(DeliveryError::Model(format!(
        "version {version} was installed but does not serve ({why}); it was taken out again"
    )))
}

/// Sends an event carrying a reply channel to the repository thread and waits for the reply
/// off the async workers.
pub(super) async fn ask<T: Send + 'static>(
    delivery: &Delivery,
    event: impl FnOnce(crossbeam_channel::Sender<T>) -> RepoEvent,
) -> Result<T, DeliveryError> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    let stopped = || DeliveryError::Unavailable("the repository thread has stopped".into());
    delivery.repository.send(event(reply)).map_err(|_| stopped())?;
    tokio::task::spawn_blocking(move || answer.recv())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(stopped)
}

/// Deletes the versions on disk beyond `keep_versions` (highest kept), never one that serves.
pub(super) fn prune(delivery: &Delivery, model: &str) {
    let serving: Vec<u64> = delivery
        .router
        .handle(model)
        .map(|h| h.versions().keys().copied().collect())
        .unwrap_or_default();
    let on_disk = delivery.staging.versions_on_disk(model);
    for version in on_disk.into_iter().skip(delivery.keep_versions) {
        if serving.contains(&version) {
            continue;
        }
        match delivery.staging.discard(model, version) {
            Ok(()) => tracing::info!(
                model,
                version,
                keep_versions = delivery.keep_versions,
                "old version deleted"
            ),
            Err(e) => tracing::warn!(model, version, error = %e, "cannot delete an old version"),
        }
    }
}
