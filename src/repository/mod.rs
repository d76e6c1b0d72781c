//! The model repository: what is on disk ([`layout`], [`sidecar`]), how a version becomes
//! ready ([`loader`]), when to look again ([`watch`]), and — here — how a model's served
//! versions are brought in line with its directory without failing a request.
//!
//! [`Repository::sync_model`] implements SPEC §4 "the guarantee": each wanted version whose
//! files changed is loaded **beside** the serving ones and checked; only then is the new set
//! of versions published to the model's [`ModelHandle`] in one atomic swap. A failed version
//! leaves what served before in place, is recorded with its files' [`Fingerprint`] and is
//! retried only when those files change. Replaced versions are retired and freed once their
//! last in-flight request has finished. With `reload = "replace"`, or when `MemAvailable` is
//! below the new version's expected footprint, the old version is drained and freed first
//! while requests wait (bounded) for the new one.

pub mod layout;
pub mod loader;
pub mod sidecar;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ReloadMode;
use crate::serving::handle::Versions;
use crate::serving::{LoadedVersion, ModelHandle, Router};
use layout::Fingerprint;
use loader::{load_version, LoadSettings, VersionSource};
use sidecar::Sidecar;

/// How long a `replace` reload waits for in-flight requests of the old version.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the repository knows of one model between syncs.
#[derive(Default)]
struct ModelRecord {
    /// Fingerprints of the versions serving.
    loaded: BTreeMap<u64, Fingerprint>,
    /// Versions that failed, with the fingerprint they failed with and why.
    failed: BTreeMap<u64, (Fingerprint, String)>,
}

/// The outcome of syncing one model, for `onnxd check` and logs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncReport {
    /// Model name.
    pub model: String,
    /// Versions serving after the sync.
    pub serving: Vec<u64>,
    /// Versions loaded by this sync.
    pub loaded: Vec<u64>,
    /// Errors of this sync (per version, or the sidecar's).
    pub errors: Vec<String>,
}

/// The repository manager: owns the reload logic; the router serves what it publishes.
pub struct Repository {
    root: PathBuf,
    settings: LoadSettings,
    mode: ReloadMode,
    router: Arc<Router>,
    records: HashMap<String, ModelRecord>,
    retired: Vec<Arc<LoadedVersion>>,
    /// Models unloaded through the API: left alone until loaded through the API again.
    held: HashSet<String>,
}

impl Repository {
    /// A manager for `root` publishing into `router`.
    pub fn new(root: &Path, settings: LoadSettings, mode: ReloadMode, router: Arc<Router>) -> Repository {
        Repository {
            root: root.to_path_buf(),
            settings,
            mode,
            router,
            records: HashMap::new(),
            retired: Vec::new(),
            held: HashSet::new(),
        }
    }

    /// The router this repository publishes to.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Syncs every model directory and unloads models whose directory is gone.
    pub fn sync_all(&mut self) -> Vec<SyncReport> {
        let names = layout::model_names(&self.root).unwrap_or_else(|e| {
            tracing::error!(path = %self.root.display(), error = %e, "model repository is not readable");
            Vec::new()
        });
        let gone: Vec<String> = self
            .router
            .models()
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| !names.contains(n))
            .collect();
        for name in gone {
            self.sync_model(&name);
        }
        names.iter().map(|name| self.sync_model(name)).collect()
    }

    /// Loads (or reloads) a model on request, also one unloaded through the API before.
    pub fn load_requested(&mut self, name: &str) -> SyncReport {
        self.held.remove(name);
        self.sync_model(name)
    }

    /// Unloads a model on request; file changes leave it alone until [`Self::load_requested`].
    pub fn unload_requested(&mut self, name: &str) {
        self.unload(name);
        self.held.insert(name.to_string());
    }

    /// Brings one model's served versions in line with its directory.
    pub fn sync_model(&mut self, name: &str) -> SyncReport {
        let dir = self.root.join(name);
        let mut report = SyncReport {
            model: name.to_string(),
            serving: Vec::new(),
            loaded: Vec::new(),
            errors: Vec::new(),
        };
        if self.held.contains(name) {
            report
                .errors
                .push("unloaded through the API; load it to serve it again".into());
            return report;
        }
        if !dir.is_dir() || !layout::is_model_name(name) {
            self.unload(name);
            return report;
        }
        let handle = self.router.handle_or_insert(name);
        let mut record = self.records.remove(name).unwrap_or_default();
        let sidecar = match Sidecar::load(&dir) {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(e.to_string());
                self.records.insert(name.to_string(), record);
                return self.finish(&handle, (*handle.versions()).clone(), report);
            }
        };
        let policy = sidecar.policy().expect("validated when loaded");
        let present = layout::versions(&dir);
        let wanted = policy.select(&present.keys().copied().collect::<Vec<_>>());
        if wanted.is_empty() {
            report.errors.push(format!(
                "no version directory with {} in {}",
                layout::MODEL_FILE,
                dir.display()
            ));
        }
        // Versions serving now but no longer wanted stay until every wanted version is ready.
        let (mut next, mut outgoing): (Versions, Versions) = handle
            .versions()
            .iter()
            .map(|(v, m)| (*v, m.clone()))
            .partition(|(v, _)| wanted.contains(v));
        record.loaded.retain(|v, _| wanted.contains(v));
        record.failed.retain(|v, _| wanted.contains(v));
        let changed: Vec<(u64, PathBuf, Fingerprint)> = wanted
            .iter()
            .map(|&v| (v, present[&v].clone(), Fingerprint::of(&dir, &present[&v])))
            .filter(|(v, _, fp)| record.loaded.get(v) != Some(fp) || !next.contains_key(v))
            .collect();
        for (version, file, fingerprint) in changed {
            if let Some((failed_fp, why)) = record.failed.get(&version) {
                if *failed_fp == fingerprint {
                    report.errors.push(why.clone());
                    continue;
                }
            }
            if self.mode == ReloadMode::Replace || !memory_admits(&file) {
                // Drain and free what this version replaces before loading it (`next` already
                // lacks the versions no longer wanted); requests wait while nothing serves.
                next.remove(&version);
                outgoing.clear();
                // An empty set without error publishes LOADING: requests wait for the new one.
                let old = handle.publish(next.clone(), None);
                self.retire(old, &next);
                self.drain_retired(DRAIN_TIMEOUT);
            }
            let source = VersionSource {
                name,
                dir: &dir,
                version,
                file: &file,
                sidecar: &sidecar,
            };
            let started = Instant::now();
            match load_version(&source, &self.settings) {
                Ok(loaded) => {
                    tracing::info!(model = name, version, engine = %loaded.model.engine, provider = %loaded.model.provider,
                        ms = started.elapsed().as_millis() as u64, "version ready");
                    next.insert(version, Arc::new(loaded));
                    record.loaded.insert(version, fingerprint);
                    record.failed.remove(&version);
                    report.loaded.push(version);
                    handle.stats.reload("ok");
                }
                Err(e) => {
                    tracing::error!(model = name, error = %e, "version refused; what served before keeps serving");
                    record.failed.insert(version, (fingerprint, e.to_string()));
                    report.errors.push(e.to_string());
                    handle.stats.reload("failed");
                }
            }
        }
        if wanted.iter().any(|v| !next.contains_key(v)) {
            next.extend(outgoing);
        }
        self.records.insert(name.to_string(), record);
        self.finish(&handle, next, report)
    }

    /// Publishes the new set of versions and retires what it replaced.
    fn finish(&mut self, handle: &ModelHandle, next: Versions, mut report: SyncReport) -> SyncReport {
        report.serving = next.keys().copied().collect();
        let error = (!report.errors.is_empty()).then(|| report.errors.join("; "));
        let old = handle.publish(next.clone(), error);
        self.retire(old, &next);
        self.reap();
        report
    }

    /// Removes a model whose directory is gone; its versions drain.
    fn unload(&mut self, name: &str) {
        self.records.remove(name);
        if let Some(handle) = self.router.remove(name) {
            tracing::info!(
                model = name,
                "model directory removed: unloading after in-flight requests"
            );
            handle.stats.reload("unloaded");
            let old = handle.publish(BTreeMap::new(), Some("unloaded".into()));
            self.retire(old, &Versions::new());
        }
        self.reap();
    }

    /// Retires the versions of `old` that `next` no longer has; `old` itself is dropped here,
    /// so the retired list holds the only other references.
    fn retire(&mut self, old: Arc<Versions>, next: &Versions) {
        let gone = old.values().filter(|o| !next.values().any(|n| Arc::ptr_eq(n, o)));
        self.retired.extend(gone.cloned());
    }

    /// Frees retired versions whose last request has finished; returns whether some are
    /// still draining.
    pub fn reap(&mut self) -> bool {
        self.retired.retain(|v| Arc::strong_count(v) > 1);
        !self.retired.is_empty()
    }

    fn drain_retired(&mut self, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.reap() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.retired.clear();
    }
}

/// Whether `MemAvailable` leaves room to load `file` beside what serves.
fn memory_admits(file: &Path) -> bool {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    admits(size, mem_available())
}

/// The admission rule: a model needs about three times its file size while it loads
/// (weights, the engine's copy, arena and optimiser scratch); unknown memory admits.
fn admits(file_size: u64, available: Option<u64>) -> bool {
    available.is_none_or(|available| file_size.saturating_mul(3) < available)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_needs_three_times_the_file() {
        assert!(admits(100, Some(301)));
        assert!(!admits(100, Some(300)));
        assert!(admits(u64::MAX, None));
        assert!(mem_available().is_some_and(|m| m > 0));
    }
}
