//! When to look at the repository again: inotify events (through `notify`), an optional
//! periodic rescan, and explicit requests (SIGHUP, the load API). Events are mapped to the
//! model directory they concern; a model is synced only after its files have been quiet for
//! `settle` — an in-place writer keeps producing events while it writes, so a half-written
//! file is not loaded while writes keep coming. The whole model directory is rescanned on
//! any event below it (a file created right after its new directory can otherwise be missed).
//! Reads (open, close without writing) are not events: the daemon's own scans cause them.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::Repository;

/// What the repository thread is asked to do.
#[derive(Debug)]
pub enum RepoEvent {
    /// Something changed below this model directory.
    Changed(String),
    /// Rescan every model now (SIGHUP, the repository API).
    RescanAll,
    /// Sync one model now, without settling (the load API); the report goes back.
    SyncNow(String, Sender<super::SyncReport>),
    /// Unload a model until it is loaded again through the API (the unload API).
    Unload(String, Sender<()>),
    /// Sync a model now, publishing a version model delivery already loaded from the files
    /// it just moved into place (see [`Repository::adopt`]); the report goes back.
    Adopt(
        String,
        Box<crate::serving::LoadedVersion>,
        Sender<super::SyncReport>,
    ),
    /// Stop the thread.
    Stop,
}

/// Starts an inotify watch of `root` that forwards changes as [`RepoEvent::Changed`].
pub fn watch(root: &Path, events: Sender<RepoEvent>) -> notify::Result<RecommendedWatcher> {
    let base = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let prefix = base.clone();
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) if !is_change(&event.kind) => {}
            Ok(event) => {
                for path in &event.paths {
                    match model_of(&prefix, path) {
                        Some(name) => {
                            let _ = events.send(RepoEvent::Changed(name));
                        }
                        None if path == &prefix => {
                            let _ = events.send(RepoEvent::RescanAll);
                        }
                        None => {}
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "repository watch error"),
        })?;
    watcher.watch(&base, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Whether an event can mean new content. Reads are not changes: the daemon's own scans open
/// and read the files, and treating that as a change would rescan forever.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true, // a writer finished
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The model directory name of a path below the repository root.
fn model_of(root: &Path, path: &Path) -> Option<String> {
    match path.strip_prefix(root).ok()?.components().next()? {
        Component::Normal(name) => name.to_str().map(str::to_string),
        _ => None,
    }
}

/// Timing of the repository thread.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Quiet time before a changed model is synced.
    pub settle: Duration,
    /// Periodic full rescan, if any.
    pub poll: Option<Duration>,
}

/// Runs the repository thread: settles events, syncs models, rescans on schedule, and frees
/// drained versions, until [`RepoEvent::Stop`] or every sender is gone.
pub fn run(mut repo: Repository, events: Receiver<RepoEvent>, timing: Timing) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut next_poll = timing.poll.map(|p| Instant::now() + p);
    let tick = (timing.settle / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut draining = false;
    loop {
        // Ticking only while something settles or drains: an idle daemon sleeps until an
        // event or the next poll.
        let wait = if draining || !pending.is_empty() {
            tick
        } else {
            next_poll.map_or(IDLE_WAIT, |at| at.saturating_duration_since(Instant::now()))
        };
        match events.recv_timeout(wait) {
            Ok(RepoEvent::Changed(name)) => {
                pending.insert(name, Instant::now());
            }
            Ok(RepoEvent::RescanAll) => {
                pending.clear();
                repo.sync_all();
            }
            Ok(RepoEvent::SyncNow(name, reply)) => {
                pending.remove(&name);
                let _ = reply.send(repo.load_requested(&name));
            }
            Ok(RepoEvent::Adopt(name, loaded, reply)) => {
                pending.remove(&name);
                let _ = reply.send(repo.adopt(&name, *loaded));
            }
            Ok(RepoEvent::Unload(name, reply)) => {
                pending.remove(&name);
                repo.unload_requested(&name);
                let _ = reply.send(());
            }
            Ok(RepoEvent::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let settled: Vec<String> = pending
            .iter()
            .filter(|(_, last)| now.duration_since(**last) >= timing.settle)
            .map(|(name, _)| name.clone())
            .collect();
        for name in settled {
            pending.remove(&name);
            repo.sync_model(&name);
        }
        if let (Some(poll), Some(at)) = (timing.poll, next_poll) {
            if now >= at {
                repo.sync_all();
                next_poll = Some(now + poll);
            }
        }
        draining = repo.reap();
    }
}

/// How long the idle repository thread waits for an event when nothing is scheduled.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// A running repository thread and its watch.
pub struct RepositoryThread {
    events: Sender<RepoEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
    _watcher: Option<RecommendedWatcher>,
}

impl RepositoryThread {
    /// Starts the thread for `repo` (already synced once), watching `root` when `watch` is set.
    pub fn start(
        repo: Repository,
        root: &Path,
        watch_files: bool,
        timing: Timing,
    ) -> notify::Result<RepositoryThread> {
        let (events, receiver) = crossbeam_channel::unbounded();
        let watcher = if watch_files {
            Some(watch(root, events.clone())?)
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name("repository".into())
            .spawn(move || run(repo, receiver, timing))
            .expect("spawn repository thread");
        Ok(RepositoryThread {
            events,
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// A sender for events (SIGHUP handler, load API).
    pub fn events(&self) -> Sender<RepoEvent> {
        self.events.clone()
    }
}

impl Drop for RepositoryThread {
    fn drop(&mut self) {
        let _ = self.events.send(RepoEvent::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events `watch` forwards within `window`.
    fn forwarded(receiver: &Receiver<RepoEvent>, window: Duration) -> Vec<RepoEvent> {
        let until = Instant::now() + window;
        let mut events = Vec::new();
        while let Ok(event) = receiver.recv_timeout(until.saturating_duration_since(Instant::now())) {
            events.push(event);
        }
        events
    }

    #[test]
    fn reading_the_repository_is_not_a_change_and_writing_is() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("digits");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("model.onnx"), b"v1").unwrap();
        let (sender, receiver) = crossbeam_channel::unbounded();
        let _watcher = watch(root.path(), sender).unwrap();
        // What a scan does: list the directory, read the file.
        for _ in 0..3 {
            let _ = std::fs::read_dir(&model).unwrap().count();
            let _ = std::fs::read(model.join("model.onnx")).unwrap();
        }
        let reads = forwarded(&receiver, Duration::from_millis(300));
        assert!(reads.is_empty(), "reads forwarded as changes: {reads:?}");
        std::fs::write(model.join("model.onnx"), b"v2").unwrap();
        let writes = forwarded(&receiver, Duration::from_millis(300));
        assert!(
            writes
                .iter()
                .any(|e| matches!(e, RepoEvent::Changed(name) if name == "digits")),
            "{writes:?}"
        );
    }
}
