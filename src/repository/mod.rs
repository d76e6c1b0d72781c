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
pub mod warmup;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ReloadMode;
use crate::serving::handle::Versions;
use crate::serving::{LoadedVersion, ModelHandle, Router};
use layout::Fingerprint;
use loader::{load_version, LoadError, LoadSettings, VersionSource};
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

/// One sync of one model: what it works on and what it has decided so far.
struct Pass<'a> {
    name: &'a str,
    dir: &'a Path,
    sidecar: &'a Sidecar,
    handle: &'a ModelHandle,
    record: ModelRecord,
    report: SyncReport,
    /// Wanted versions that serve (or will, once loaded).
    next: Versions,
    /// Versions serving but no longer wanted (kept until every wanted version is ready).
    outgoing: Versions,
    /// Fingerprints of what served before this pass (to restore after a failed replace).
    previous: BTreeMap<u64, Fingerprint>,
}

impl Pass<'_> {
    fn source<'b>(&'b self, version: u64, file: &'b Path) -> VersionSource<'b> {
        VersionSource {
            name: self.name,
            dir: self.dir,
            version,
            file,
            sidecar: self.sidecar,
        }
    }
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
    /// Reads `MemAvailable` (bytes) for the memory admission rule.
    memory: fn() -> Option<u64>,
    /// A version loaded and checked elsewhere (model delivery), taken by the next sync of its
    /// model instead of loading its file again.
    adopted: Option<(String, LoadedVersion)>,
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
            memory: mem_available,
            adopted: None,
        }
    }

    /// Replaces how available memory is read (default: `MemAvailable` of `/proc/meminfo`):
    /// for platforms without it, and for tests of the memory-short path.
    pub fn set_memory_probe(&mut self, probe: fn() -> Option<u64>) {
        self.memory = probe;
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

    /// Syncs a model whose new version was already loaded and checked from the files now in
    /// place (model delivery): the sync publishes `loaded` instead of loading it again, when
    /// the version is wanted and `loaded.file` is its model file. Otherwise it is dropped.
    pub fn adopt(&mut self, name: &str, loaded: LoadedVersion) -> SyncReport {
        self.held.remove(name);
        self.adopted = Some((name.to_string(), loaded));
        let report = self.sync_model(name);
        self.adopted = None;
        report
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
        let (present, wanted) = wanted_versions(&dir, &sidecar, &mut report);
        // Versions serving now but no longer wanted stay until every wanted version is ready.
        let (next, outgoing): (Versions, Versions) = handle
            .versions()
            .iter()
            .map(|(v, m)| (*v, m.clone()))
            .partition(|(v, _)| wanted.contains(v));
        // Fingerprints of what still serves are kept: a replace reload restores from them.
        record
            .loaded
            .retain(|v, _| wanted.contains(v) || outgoing.contains_key(v));
        let previous = record.loaded.clone();
        record.failed.retain(|v, _| wanted.contains(v));
        let changed: Vec<(u64, PathBuf, Fingerprint)> = wanted
            .iter()
            .map(|&v| (v, present[&v].clone(), Fingerprint::of(&dir, &present[&v])))
            .filter(|(v, _, fp)| record.loaded.get(v) != Some(fp) || !next.contains_key(v))
            .collect();
        let mut pass = Pass {
            name,
            dir: &dir,
            sidecar: &sidecar,
            handle: &handle,
            record,
            report,
            next,
            outgoing,
            previous,
        };
        for (version, file, fingerprint) in changed {
            self.load_changed(&mut pass, version, &file, fingerprint);
        }
        let Pass {
            record,
            report,
            mut next,
            outgoing,
            ..
        } = pass;
        if wanted.iter().any(|v| !next.contains_key(v)) {
            next.extend(outgoing);
        }
        self.records.insert(name.to_string(), record);
        self.finish(&handle, next, report)
    }

    /// Loads one changed version into `pass.next`, or records why it was refused. In replace
    /// mode (or when memory is short) the version is staged first — everything checked that
    /// needs no engine — and only then is what it replaces drained and freed; if the load
    /// still fails, the drained versions are loaded again from their files.
    fn load_changed(&mut self, pass: &mut Pass<'_>, version: u64, file: &Path, fingerprint: Fingerprint) {
        if let Some((failed_fp, why)) = pass.record.failed.get(&version) {
            if *failed_fp == fingerprint {
                pass.report.errors.push(why.clone());
                return;
            }
        }
        let source = VersionSource {
            name: pass.name,
            dir: pass.dir,
            version,
            file,
            sidecar: pass.sidecar,
        };
        let started = Instant::now();
        let adopted = self
            .adopted
            .take_if(|(name, v)| name == pass.name && v.version == version && v.file == file)
            .map(|(_, v)| v);
        let loaded = match adopted {
            Some(loaded) => Ok(loaded),
            None => unwound(version, || self.load_source(pass, &source)),
        };
        match loaded {
            Ok(loaded) => {
                tracing::info!(model = pass.name, version, engine = %loaded.model.engine, provider = %loaded.model.provider,
                    warmup = %loaded.warmup, ms = started.elapsed().as_millis() as u64, "version ready");
                pass.next.insert(version, Arc::new(loaded));
                pass.record.loaded.insert(version, fingerprint);
                pass.record.failed.remove(&version);
                pass.report.loaded.push(version);
                pass.handle.stats.reload("ok");
            }
            Err(e) => {
                if pass.next.is_empty() && pass.outgoing.is_empty() {
                    tracing::error!(model = pass.name, error = %e, "version refused; the model has no version serving");
                } else {
                    tracing::error!(model = pass.name, error = %e, "version refused; what served before keeps serving");
                }
                pass.record.failed.insert(version, (fingerprint, e.to_string()));
                pass.report.errors.push(e.to_string());
                pass.handle.stats.reload("failed");
            }
        }
    }

    /// Loads a version from its files: staged first; in replace mode what it replaces is
    /// drained after staging and restored if the load still fails.
    fn load_source(
        &mut self,
        pass: &mut Pass<'_>,
        source: &VersionSource<'_>,
    ) -> Result<LoadedVersion, loader::LoadError> {
        loader::stage(source, &self.settings).and_then(|staged| {
            let replace = self.mode == ReloadMode::Replace || !admits(staged.footprint(), (self.memory)());
            let drained = if replace {
                self.drain_for(pass, source.version)
            } else {
                Vec::new()
            };
            loader::load_staged(source, staged).inspect_err(|_| self.restore(pass, drained))
        })
    }

    /// Drains and frees what loading `version` replaces (the same version, and the versions
    /// no longer wanted); requests wait (bounded) while nothing serves. Returns the drained
    /// versions' numbers and files, for [`Self::restore`].
    fn drain_for(&mut self, pass: &mut Pass<'_>, version: u64) -> Vec<(u64, PathBuf)> {
        let mut drained: Vec<(u64, PathBuf)> = pass
            .outgoing
            .values()
            .chain(pass.next.get(&version))
            .map(|v| (v.version, v.file.clone()))
            .collect();
        drained.sort();
        pass.next.remove(&version);
        pass.outgoing.clear();
        // An empty set without error publishes LOADING: requests wait for the new one.
        let old = pass.handle.publish(pass.next.clone(), None);
        self.retire(pass.name, old, &pass.next);
        self.drain_retired(DRAIN_TIMEOUT);
        drained
    }

    /// After a failed load in replace mode: loads the drained versions again from their
    /// files, when those are unchanged, and reports each restore (or why it was impossible).
    fn restore(&mut self, pass: &mut Pass<'_>, drained: Vec<(u64, PathBuf)>) {
        for (version, file) in drained {
            let now = Fingerprint::of(pass.dir, &file);
            if pass.previous.get(&version) != Some(&now) {
                let why = format!("version {version} cannot be restored: its files changed");
                tracing::error!(model = pass.name, "{why}");
                pass.report.errors.push(why);
                continue;
            }
            match load_version(&pass.source(version, &file), &self.settings) {
                Ok(loaded) => {
                    tracing::warn!(
                        model = pass.name,
                        version,
                        "version restored after the failed load"
                    );
                    pass.report
                        .errors
                        .push(format!("version {version} restored after the failed load"));
                    pass.record.loaded.insert(version, now);
                    pass.next.insert(version, Arc::new(loaded));
                }
                Err(e) => {
                    tracing::error!(model = pass.name, error = %e, "version could not be restored");
                    pass.report
                        .errors
                        .push(format!("version {version} could not be restored: {e}"));
                }
            }
        }
    }

    /// Publishes the new set of versions and retires what it replaced.
    fn finish(&mut self, handle: &ModelHandle, next: Versions, mut report: SyncReport) -> SyncReport {
        report.serving = next.keys().copied().collect();
        let error = (!report.errors.is_empty()).then(|| report.errors.join("; "));
        let old = handle.publish(next.clone(), error);
        self.retire(&handle.name, old, &next);
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
            self.retire(name, old, &Versions::new());
        }
        self.reap();
    }

    /// Retires the versions of `old` that `next` no longer has; `old` itself is dropped here,
    /// so the retired list holds the only other references.
    fn retire(&mut self, model: &str, old: Arc<Versions>, next: &Versions) {
        for gone in old.values().filter(|o| !next.values().any(|n| Arc::ptr_eq(n, o))) {
            let why = if next.contains_key(&gone.version) {
                "replaced by a new load"
            } else {
                "no longer served (version policy, unload or replace reload)"
            };
            tracing::info!(
                model,
                version = gone.version,
                why,
                "version retired: freed after its last request"
            );
            self.retired.push(gone.clone());
        }
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

/// The versions present in a model directory, and those its version policy serves (none is
/// an error in the report).
fn wanted_versions(
    dir: &Path,
    sidecar: &Sidecar,
    report: &mut SyncReport,
) -> (BTreeMap<u64, PathBuf>, Vec<u64>) {
    let policy = sidecar.policy().expect("validated when loaded");
    let present = layout::versions(dir);
    let wanted = policy.select(&present.keys().copied().collect::<Vec<_>>());
    if wanted.is_empty() {
        report.errors.push(format!(
            "no version directory with {} in {}",
            layout::MODEL_FILE,
            dir.display()
        ));
    }
    (present, wanted)
}

/// A router serving one model outside a repository (the CLI): a model directory, with its
/// sidecar, labels and versions, or a lone `.onnx` file as version 1 with default settings.
/// The model goes through every check a reload makes. Returns the model's name.
pub fn serve_one(path: &Path, settings: &LoadSettings) -> Result<(String, Arc<Router>), String> {
    let router = Arc::new(Router::default());
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    if path.is_dir() {
        let root = path.parent().unwrap_or(Path::new("."));
        let mut repository = Repository::new(root, settings.clone(), ReloadMode::Beside, router.clone());
        let report = repository.sync_model(&name);
        if report.serving.is_empty() {
            return Err(match report.errors.is_empty() {
                true => format!("{}: no model directory here", path.display()),
                false => report.errors.join("; "),
            });
        }
        return Ok((name, router));
    }
    if !path.is_file() {
        return Err(format!(
            "{}: cannot read: no such file or model directory",
            path.display()
        ));
    }
    let sidecar = Sidecar::default();
    let source = VersionSource {
        name: &name,
        dir: path.parent().unwrap_or(Path::new(".")),
        version: 1,
        file: path,
        sidecar: &sidecar,
    };
    let loaded = load_version(&source, settings).map_err(|e| match e.step {
        "model" => e.message,
        step => format!("{step}: {}", e.message),
    })?;
    router
        .handle_or_insert(&name)
        .publish(BTreeMap::from([(1, Arc::new(loaded))]), None);
    Ok((name, router))
}

/// Whether `available` memory leaves room to load `file` beside what serves.
pub fn memory_admits(file: &Path, available: Option<u64>) -> bool {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    admits(size, available)
}

/// Runs one version's load, a panic turned into its refusal: a bug in one check must not take
/// the repository thread — and with it every later load — down.
fn unwound(
    version: u64,
    load: impl FnOnce() -> Result<LoadedVersion, LoadError>,
) -> Result<LoadedVersion, LoadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        tracing::error!(version, panic = message, "loading a version panicked");
        Err(LoadError {
            version,
            step: "model",
            message: format!("loading panicked (a bug in onnxd): {message}"),
        })
    })
}

/// The admission rule: a model needs about three times its declared size while it loads
/// (weights, the engine's copy, arena and optimiser scratch) — the declared size being the
/// larger of its file and its weights (external data included), plus the largest value known
/// before it runs ([`crate::model::declared`]); unknown memory admits.
fn admits(declared: u64, available: Option<u64>) -> bool {
    available.is_none_or(|available| declared.saturating_mul(3) < available)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available() -> Option<u64> {
    meminfo("MemAvailable:")
}

/// `MemTotal` of `/proc/meminfo`, in bytes: a version declaring more is refused outright.
pub(crate) fn mem_total() -> Option<u64> {
    meminfo("MemTotal:")
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_load_is_a_refusal_not_a_dead_thread() {
        let err = unwound(3, || panic!("boom")).err().unwrap();
        assert_eq!(
            err.to_string(),
            "version 3: model: loading panicked (a bug in onnxd): boom"
        );
    }

    #[test]
    fn admission_needs_three_times_the_file() {
        assert!(admits(100, Some(301)));
        assert!(!admits(100, Some(300)));
        assert!(admits(u64::MAX, None));
        assert!(mem_available().is_some_and(|m| m > 0));
        assert!(mem_total() >= mem_available());
    }
}
