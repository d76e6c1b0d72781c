//! A shadow rollout from start to verdict: the candidate, loaded from the staging area with
//! every reload check, is attached to the model as its [`Shadow`], its inference threads at
//! the lowest CPU priority (copies run on what serving leaves idle); the deploy is journalled
//! (a crash during the shadow is reported on the next start); a task watches the figures —
//! reporting them every second — until the policy says it has seen enough, a rollback request
//! cancels it, or the model goes away. Then the shadow is detached and the verdict applied:
//! **promoted** (installed and handed to the repository thread as it is, without loading it
//! again, on new inference threads at the daemon's priority) or **rolled back** (the staged files deleted). Either way the decision is reported
//! with its figures and thresholds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::journal::{Job, Phase};
use super::rollout::{self, Policy, Rollout};
use super::{commit, Delivery, DeliveryError, Slot};
use crate::engine::pool::Priority;
use crate::repository::sidecar::Sidecar;
use crate::serving::shadow::{Shadow, ShadowFigures};
use crate::serving::LoadedVersion;

/// How often the watcher looks at the figures.
const TICK: Duration = Duration::from_millis(50);
/// How often the figures are reported while shadowing.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a promotion waits for the copies still running on the candidate.
const SETTLE: Duration = Duration::from_secs(5);

/// Loads the candidate and attaches it beside serving version `against`; the verdict comes
/// later (reported). Returns the `shadowing` status.
pub(super) async fn start(
    delivery: &Arc<Delivery>,
    slot: Slot,
    mut job: Job,
    policy: Policy,
    sidecar: Sidecar,
    against: u64,
) -> Result<Value, DeliveryError> {
    let model = slot.model.clone();
    let loaded = commit::load(delivery, &model, job.version, sidecar).await?;
    // The candidate runs on what serving leaves idle: copies must not slow the clients.
    let loaded = on_threads_of(loaded, Priority::Background)
        .await
        .map_err(|e| DeliveryError::Io(e.to_string()))?;
    let handle = delivery
        .router
        .handle(&model)
        .ok_or_else(|| DeliveryError::NotFound(format!("model '{model}' went away")))?;
    job.phase = Phase::Shadow;
    delivery
        .journal
        .update(&model, |record| record.active = Some(job.clone()))
        .map_err(super::io_error)?;
    let counters = delivery.metrics.comparisons(&model);
    let shadow = Arc::new(Shadow::new(
        Arc::new(loaded),
        against,
        policy.shadow_settings(),
        counters,
    ));
    handle.set_shadow(Some(shadow.clone()));
    tracing::info!(
        model,
        version = job.version,
        against,
        "shadowing: the new version receives copies of requests"
    );
    let status = shadowing_status(&model, &job, &policy, &shadow);
    delivery.report(&model, status.clone());
    tokio::spawn(watch(delivery.clone(), slot, job, policy, shadow));
    Ok(status)
}

fn shadowing_status(model: &str, job: &Job, policy: &Policy, shadow: &Shadow) -> Value {
    let mut status = super::status(model, job, "shadowing");
    status["against"] = json!(shadow.against);
    status["figures"] = json!(shadow.figures());
    status["thresholds"] = policy.thresholds();
    status
}

/// Waits for the verdict and applies it.
async fn watch(delivery: Arc<Delivery>, slot: Slot, job: Job, policy: Policy, shadow: Arc<Shadow>) {
    let model = slot.model.clone();
    let mut reported = Instant::now();
    let interrupted = loop {
        if policy.done(shadow.answered(), shadow.elapsed()) {
            break None;
        }
        if slot.cancel.is_cancelled() {
            break Some("rollback requested".to_string());
        }
        let attached = delivery.router.handle(&model).and_then(|h| h.shadow());
        if !attached.is_some_and(|s| Arc::ptr_eq(&s, &shadow)) {
            break Some("the model was unloaded or removed during the shadow".to_string());
        }
        if reported.elapsed() >= REPORT_EVERY {
            delivery.report(&model, shadowing_status(&model, &job, &policy, &shadow));
            reported = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = slot.cancel.cancelled() => {}
        }
    };
    if let Some(handle) = delivery.router.handle(&model) {
        if handle.shadow().is_some_and(|s| Arc::ptr_eq(&s, &shadow)) {
            handle.set_shadow(None);
        }
    }
    let figures = shadow.figures();
    let verdict = match interrupted {
        Some(why) => Err(vec![why]),
        None => rollout::verdict(&policy, &figures),
    };
    let decision = Decision {
        job,
        policy,
        figures,
        against: shadow.against,
    };
    match verdict {
        Ok(()) => promote(&delivery, &model, decision, shadow).await,
        Err(reasons) => roll_back(&delivery, &model, decision, reasons),
    }
    drop(slot);
}

/// What a decision is reported with.
struct Decision {
    job: Job,
    policy: Policy,
    figures: ShadowFigures,
    against: u64,
}

impl Decision {
    fn extra(&self) -> Value {
        json!({
            "against": self.against,
            "figures": self.figures,
            "thresholds": self.policy.thresholds(),
        })
    }
}

/// Installs the candidate and has it swapped in as loaded (loaded again from its files when
/// copies still hold it after [`SETTLE`]).
async fn promote(delivery: &Delivery, model: &str, decision: Decision, shadow: Arc<Shadow>) {
    let until = Instant::now() + SETTLE;
    while Arc::strong_count(&shadow) > 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let loaded = match Arc::try_unwrap(shadow)
        .ok()
        .and_then(|s| Arc::try_unwrap(s.version).ok())
    {
        // New inference threads at the daemon's priority (else it is loaded again).
        Some(loaded) => on_threads_of(loaded, Priority::Serving).await.ok(),
        None => None,
    };
    let version = decision.job.version;
    match commit::install(delivery, model, version, loaded).await {
        Ok(report) => {
            tracing::info!(model, version, figures = ?decision.figures, "shadow promoted");
            delivery.metrics.promotion(model, Rollout::Shadow);
            commit::prune(delivery, model);
            let mut extra = decision.extra();
            extra["serving"] = json!(report.serving);
            delivery.finished(model, &decision.job, "promoted", None, extra);
        }
        Err(e) => {
            tracing::error!(model, version, error = %e, "promotion failed; what served keeps serving");
            delivery.staging.remove(model, version);
            let extra = decision.extra();
            delivery.finished(model, &decision.job, "failed", Some(e.to_string()), extra);
        }
    }
}

/// The version on new inference threads of `priority`, restarted off the async workers
/// (restarting joins the old threads).
async fn on_threads_of(
    mut loaded: LoadedVersion,
    priority: Priority,
) -> Result<LoadedVersion, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        loaded.model = loaded.model.with_priority(priority);
        loaded
    })
    .await
}

/// Deletes the staged candidate; the current version serves on.
fn roll_back(delivery: &Delivery, model: &str, decision: Decision, reasons: Vec<String>) {
    let version = decision.job.version;
    tracing::warn!(model, version, reasons = ?reasons, "shadow rolled back; the current version keeps serving");
    delivery.staging.remove(model, version);
    delivery.metrics.rollback(model, "shadow");
    let extra = decision.extra();
    delivery.finished(
        model,
        &decision.job,
        "rolled_back",
        Some(reasons.join("; ")),
        extra,
    );
}
