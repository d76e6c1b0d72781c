//! `onnxd run`: the daemon. Loads the repository (every model READY or UNAVAILABLE with its
//! error), then keeps it in sync — inotify with settle time, optional polling, SIGHUP rescan —
//! until SIGINT or SIGTERM. The protocol layers (HTTP, MQTT, cameras) attach to the router.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::repository::loader::LoadSettings;
use crate::repository::watch::{RepoEvent, RepositoryThread, Timing};
use crate::repository::Repository;
use crate::serving::Router;

/// The repository manager configured from `config`, publishing into a new router.
pub fn repository(config: &Config) -> Repository {
    let settings = LoadSettings {
        engine: config.engine_options(),
        require_signatures: config.repository.require_signatures,
        trusted_keys: config.repository.trusted_keys.clone(),
    };
    Repository::new(
        &config.repository.path,
        settings,
        config.repository.reload,
        Arc::new(Router::default()),
    )
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)?;
    let mut repo = repository(&config);
    let router = repo.router().clone();
    let reports = repo.sync_all();
    let ready = reports.iter().filter(|r| !r.serving.is_empty()).count();
    tracing::info!(models = reports.len(), ready, node_id = %config.node_id, "onnxd ready");
    let timing = Timing {
        settle: Duration::from_millis(config.repository.settle_ms),
        poll: (config.repository.poll_secs > 0).then(|| Duration::from_secs(config.repository.poll_secs)),
    };
    let thread = RepositoryThread::start(repo, &config.repository.path, config.repository.watch, timing)?;
    let events = thread.events();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: rescanning the repository");
                    let _ = events.send(RepoEvent::RescanAll);
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    drop(thread);
    drop(router);
    Ok(())
}
