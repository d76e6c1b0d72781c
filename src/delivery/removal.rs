//! Taking versions away: rollback on demand (`POST /v2/repository/models/{m}/rollback`, the
//! MQTT `rollback` command) and `DELETE …/versions/{v}`. A deploy in progress (download or
//! shadow) is cancelled — its candidate never served. Otherwise a rollback returns to the
//! highest version on disk below the one serving (the last `keep_versions` are kept for
//! this): the versions above it leave the repository in one rename each, and the ordinary
//! reload path brings the previous one back beside the current one before the swap — no
//! request fails. The rolled-back version is recorded as the model's last deploy, so a
//! retained fleet manifest for it is not applied again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::journal::Finished;
use super::{check_names, commit, io_error, lock, Delivery, DeliveryError};
use crate::repository::layout;
use crate::repository::watch::RepoEvent;

/// How long a cancelled deploy may take to let go of the model.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

impl Delivery {
    /// Returns to the previous version, or cancels the deploy in progress.
    pub async fn rollback(self: &Arc<Self>, model: &str) -> Result<Value, DeliveryError> {
        check_names(model, 1)?;
        if let Some(version) = self.cancel(model).await {
            return Ok(json!({ "model": model, "cancelled": version, "state": "rolled_back" }));
        }
        let on_disk = self.staging.versions_on_disk(model);
        let handle = self.router.handle(model);
        let current = handle
            .as_ref()
            .and_then(|h| h.state().version)
            .or(on_disk.first().copied())
            .ok_or_else(|| DeliveryError::NotFound(format!("model '{model}' has no version to roll back")))?;
        let previous = on_disk.iter().copied().find(|v| *v < current).ok_or_else(|| {
            DeliveryError::Conflict(format!(
                "'{model}' has no version below {current} on disk to return to (repository.keep_versions keeps the last ones)"
            ))
        })?;
        let sha256 = handle
            .as_ref()
            .and_then(|h| h.versions().get(&current).map(|v| v.model.info.sha256.clone()))
            .unwrap_or_default();
        let removed: Vec<u64> = on_disk.iter().copied().filter(|v| *v > previous).collect();
        for version in &removed {
            self.staging.discard(model, *version).map_err(io_error)?;
        }
        let report = commit::ask(self, |reply| RepoEvent::SyncNow(model.to_string(), reply)).await?;
        tracing::warn!(model, from = current, to = previous, "rolled back on request");
        self.metrics.rollback(model, "request");
        let status = json!({
            "model": model, "version": current, "state": "rolled_back", "reason": "rollback requested",
            "to": previous, "removed": removed, "serving": report.serving, "errors": report.errors,
            "at_ms": crate::clock::now_ms(),
        });
        self.report(model, status.clone());
        self.remember(model, current, sha256);
        Ok(status)
    }

    /// Deletes a version: cancels its deploy, or removes it from the staging area or the
    /// repository.
    pub async fn delete_version(self: &Arc<Self>, model: &str, version: u64) -> Result<Value, DeliveryError> {
        check_names(model, version)?;
        let deploying = lock(&self.active)
            .get(model)
            .is_some_and(|a| a.version == version);
        if deploying {
            self.cancel(model).await;
            return Ok(json!({ "model": model, "deleted": version, "was": "being deployed" }));
        }
        let installed = self.staging.installed(model, version);
        if !installed.join(layout::MODEL_FILE).is_file() {
            if self.staging.exists(model, version) {
                self.staging.remove(model, version);
                return Ok(json!({ "model": model, "deleted": version, "was": "uploaded, not committed" }));
            }
            return Err(DeliveryError::NotFound(format!(
                "'{model}' has no version {version} in the repository or being uploaded"
            )));
        }
        self.staging.discard(model, version).map_err(io_error)?;
        let report = commit::ask(self, |reply| RepoEvent::SyncNow(model.to_string(), reply)).await?;
        tracing::info!(model, version, "version deleted on request");
        Ok(json!({ "model": model, "deleted": version, "serving": report.serving }))
    }

    /// Cancels the model's deploy in progress and waits until it has let go; returns its
    /// version.
    async fn cancel(&self, model: &str) -> Option<u64> {
        let version = {
            let active = lock(&self.active);
            let job = active.get(model)?;
            job.cancel.cancel();
            job.version
        };
        let until = Instant::now() + CANCEL_WAIT;
        while lock(&self.active).contains_key(model) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Some(version)
    }

    /// Records a rolled-back version as the model's last deploy.
    fn remember(&self, model: &str, version: u64, sha256: String) {
        let last = Finished {
            version,
            sha256,
            state: "rolled_back".into(),
            at_ms: crate::clock::now_ms(),
        };
        if let Err(e) = self.journal.update(model, |record| record.last = Some(last)) {
            tracing::error!(model, error = %e, "cannot write the delivery journal");
        }
    }
}
