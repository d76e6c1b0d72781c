//! `onnxd run`: the daemon. Loads the repository (every model READY or UNAVAILABLE with its
//! error), then keeps it in sync — inotify with settle time, optional polling, SIGHUP rescan —
//! until SIGINT or SIGTERM (SIGHUP also re-reads the config file for `[[camera]]` changes),
//! serving the HTTP API on `http.listen` (HTTPS with rustls when
//! `tls_cert`/`tls_key` are set) and MQTT (when `mqtt.url` is set; a missing broker is
//! retried in the background) and the cameras of `[[camera]]`, all on the same router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::camera::pipeline::{Cameras, Outputs};
use crate::config::Config;
use crate::http::{self, HttpState};
use crate::mqtt::topics::Topics;
use crate::mqtt::Mqtt;
use crate::repository::loader::LoadSettings;
use crate::repository::watch::{RepoEvent, RepositoryThread, Timing};
use crate::repository::Repository;
use crate::service::{status_line, Service};
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
    let token = read_token(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Bind first: a port in use is a start-up error, not a late surprise.
    let listener = match config.http.listen.as_str() {
        "" => None,
        address => Some(
            runtime
                .block_on(tokio::net::TcpListener::bind(address))
                .with_context(|| format!("http.listen: cannot listen on {address}"))?,
        ),
    };
    let mut repo = repository(&config);
    let router = repo.router().clone();
    let ready = Arc::new(AtomicBool::new(false));
    let reports = repo.sync_all();
    let timing = Timing {
        settle: Duration::from_millis(config.repository.settle_ms),
        poll: (config.repository.poll_secs > 0).then(|| Duration::from_secs(config.repository.poll_secs)),
    };
    let thread = RepositoryThread::start(repo, &config.repository.path, config.repository.watch, timing)?;
    let events = thread.events();
    let (mqtt, cameras) = {
        let _context = runtime.enter();
        let mqtt = Mqtt::start(&config, router.clone())?;
        let outputs = Outputs {
            sink: mqtt.as_ref().map(Mqtt::sink),
            topics: Topics::new(
                &config.mqtt.topic_prefix,
                &config.node_id,
                &config.mqtt.share_group,
            ),
        };
        (mqtt, Cameras::start(&config.camera, router.clone(), outputs))
    };
    let (stop_intake, intake) = tokio::sync::watch::channel(false);
    let http_server = match listener {
        None => None,
        Some(listener) => {
            let state = Arc::new(HttpState {
                router: router.clone(),
                repository: Some(events.clone()),
                ready: ready.clone(),
                token,
                mqtt: mqtt.as_ref().map(|m| m.stats.clone()),
                cameras: cameras.registry.clone(),
            });
            let app = http::app(
                state,
                usize::try_from(config.http.max_body_bytes).unwrap_or(usize::MAX),
            );
            let (cert, key) = (&config.http.tls_cert, &config.http.tls_key);
            let tls = if cert.as_os_str().is_empty() {
                None
            } else {
                let tls = runtime
                    .block_on(axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key))
                    .with_context(|| {
                        format!(
                            "http.tls_cert {} / http.tls_key {}",
                            cert.display(),
                            key.display()
                        )
                    })?;
                Some(tls)
            };
            let _context = runtime.enter();
            Some(http::serve(listener, app, tls, intake)?)
        }
    };
    // Signal handlers before READY: a SIGHUP right after READY must reload, not kill.
    let (mut term, mut interrupt, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _context = runtime.enter();
        #[cfg(debug_assertions)]
        runtime.spawn(crate::service::stall_on(
            signal(SignalKind::user_defined2())?,
            router.clone(),
        ));
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        )
    };
    ready.store(true, Ordering::Release);
    let serving = reports.iter().filter(|r| !r.serving.is_empty()).count();
    tracing::info!(models = reports.len(), ready = serving, node_id = %config.node_id, "onnxd ready");
    let service = Service;
    let mqtt_stats = mqtt.as_ref().map(|m| m.stats.clone());
    service.ready(&status_line(&router, mqtt_stats.as_deref()));
    if let Some(interval) = Service::watchdog() {
        runtime.spawn(
            service
                .clone()
                .keep_alive(interval, router.clone(), mqtt_stats.clone()),
        );
    }
    let cameras = runtime.block_on(async {
        let mut cameras = cameras;
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    service.reloading();
                    match Config::load(&config.file) {
                        Ok(reloaded) => {
                            tracing::info!(file = %config.file.display(), "SIGHUP: config re-read, cameras updated, rescanning the repository");
                            cameras.reconcile(&reloaded.camera).await;
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: config refused, the running one stays; rescanning the repository"),
                    }
                    let _ = events.send(RepoEvent::RescanAll);
                    service.ready(&status_line(&router, mqtt_stats.as_deref()));
                }
            }
        }
        anyhow::Ok(cameras)
    })?;
    // SIGTERM (SPEC §9): not ready, no new work, in-flight work finishes (≤ drain_secs),
    // `stopped`, exit 0.
    let drain_for = Duration::from_secs(config.drain_secs);
    tracing::info!(
        drain_secs = config.drain_secs,
        "stopping: no new work, draining requests in flight"
    );
    service.stopping();
    ready.store(false, Ordering::Release);
    let _ = stop_intake.send(true);
    runtime.block_on(drain(drain_for, http_server, mqtt.as_ref(), cameras));
    if let Some(mqtt) = mqtt {
        runtime.block_on(mqtt.stop(Duration::from_secs(5)));
    }
    drop(thread);
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(router);
    tracing::info!("stopped");
    Ok(())
}

/// Waits at most `wait` for the requests in flight, once intake has stopped: the HTTP server's
/// open connections and the MQTT requests taken; stops the cameras meanwhile.
async fn drain(
    wait: Duration,
    http_server: Option<tokio::task::JoinHandle<()>>,
    mqtt: Option<&Mqtt>,
    cameras: Cameras,
) {
    let http = async {
        let Some(server) = http_server else { return };
        if tokio::time::timeout(wait, server).await.is_err() {
            tracing::warn!("HTTP requests still running after drain_secs: abandoned");
        }
    };
    let mqtt_requests = async {
        let Some(mqtt) = mqtt else { return };
        let left = mqtt.drain(wait).await;
        if left > 0 {
            tracing::warn!(
                left,
                "MQTT requests still running after drain_secs: left to the broker"
            );
        }
    };
    tokio::join!(cameras.stop(), http, mqtt_requests);
}

/// The bearer token of `http.token_file`, if one is configured.
fn read_token(config: &Config) -> anyhow::Result<Option<String>> {
    let file = &config.http.token_file;
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let token =
        std::fs::read_to_string(file).with_context(|| format!("http.token_file {}", file.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(!token.is_empty(), "http.token_file {} is empty", file.display());
    Ok(Some(token))
}
