//! The daemon as a library (the mini-redis shape): [`Daemon::start`] wires the serving core,
//! the repository, model delivery, HTTP, gRPC, MQTT and the cameras from a validated
//! [`Config`]; [`Daemon::reload`] is SIGHUP; [`Daemon::shutdown`] is SIGTERM's drain. `onnxd run` is a signal loop around it,
//! and tests start it in-process.
//!
//! One shutdown signal ([`CancellationToken`]) reaches every part that takes work: the HTTP
//! and gRPC listeners close (gRPC streams stop reading requests), MQTT stops taking requests (later ones stay with the broker), cameras stop.
//! Then what is in flight finishes (at most `drain_secs`), MQTT publishes `stopped` and
//! disconnects, and the repository thread ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::camera::pipeline::Cameras;
use crate::config::{Config, ConfigError};
use crate::delivery::{Announcer, Delivery};
use crate::grpc::{self, GrpcMetrics, GrpcState};
use crate::http::{self, HttpState};
use crate::mqtt::topics::Topics;
use crate::mqtt::{Mqtt, Sink};
use crate::node::NodeReport;
use crate::repository::loader::LoadSettings;
use crate::repository::watch::{RepoEvent, RepositoryThread, Timing};
use crate::repository::Repository;
use crate::service::{status_line, Service, Watched};
use crate::serving::metrics::ModelMetrics;
use crate::serving::Router;
use crate::telemetry::Metrics;

/// Why the daemon could not start; names the setting or resource.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `state_dir` cannot be created.
    #[error("state_dir {0}: {1}")]
    StateDir(String, std::io::Error),
    /// The HTTP address cannot be bound (in use, no permission).
    #[error("http.listen: cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The HTTPS certificate or key is refused by rustls.
    #[error("http.tls_cert / http.tls_key: {0}")]
    Tls(std::io::Error),
    /// The gRPC address cannot be bound (in use, no permission).
    #[error("grpc.listen: cannot listen on {0}: {1}")]
    GrpcListen(SocketAddr, std::io::Error),
    /// The gRPC server cannot start (its TLS settings).
    #[error(transparent)]
    Grpc(#[from] grpc::StartError),
    /// The repository watch cannot be set up.
    #[error("repository.path: cannot watch: {0}")]
    Watch(#[from] notify::Error),
    /// MQTT cannot start (outbox, TLS settings).
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::StartError),
    /// The repository scan stopped unexpectedly.
    #[error("repository scan: {0}")]
    Scan(String),
}

/// A running daemon.
pub struct Daemon {
    config: Config,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    repository: RepositoryThread,
    http: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    grpc: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    mqtt: Option<Mqtt>,
    cameras: Cameras,
    node: NodeReport,
    service: Service,
}

impl Daemon {
    /// Starts everything `config` asks for and reports ready (`READY=1`) once the listeners
    /// are bound and the repository is scanned. Must run inside a multi-threaded runtime.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| StartError::StateDir(config.state_dir.display().to_string(), e))?;
        // Bind first: a port in use is a start-up error, not a late surprise.
        let listener = bind(config.http.listen, StartError::Listen).await?;
        let grpc_listener = bind(config.grpc.listen, StartError::GrpcListen).await?;
        let router = Arc::new(Router::default());
        let metrics = Arc::new(Metrics::default());
        metrics.add(Arc::new(ModelMetrics(router.clone())));
        let repository = start_repository(&config, router.clone()).await?;
        let shutdown = CancellationToken::new();
        let delivery = Delivery::new(&config, router.clone(), repository.events());
        metrics.add(delivery.metrics.clone());
        delivery.resume();
        let mqtt = Mqtt::start(&config, router.clone(), shutdown.clone(), Some(delivery.clone()))?;
        if let Some(mqtt) = &mqtt {
            metrics.add(mqtt.stats.clone());
        }
        if let (Some(settings), Some(mqtt)) = (&config.mqtt, &mqtt) {
            delivery.announce_to(Arc::new(MqttRollout {
                sink: mqtt.sink(),
                topics: Topics::new(&settings.topic_prefix, &config.node_id, &settings.share_group),
            }));
        }
        // Home Assistant discovery goes out before the cameras' first results.
        let mut node = NodeReport::start(&config, mqtt.as_ref(), &router);
        let cameras = Cameras::start(
            &config.camera,
            router.clone(),
            node.camera_outputs(&config, mqtt.as_ref()),
            &shutdown,
        );
        metrics.add(Arc::new(cameras.registry.clone()));
        node.run(router.clone(), cameras.registry.clone(), shutdown.clone());
        let web = node.status_source(router.clone(), cameras.registry.clone(), mqtt.as_ref());
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(HttpState {
            router: router.clone(),
            repository: Some(repository.events()),
            ready: ready.clone(),
            token: config.http.token.clone(),
            metrics: metrics.clone(),
            web: Some(web),
            delivery: Some(delivery.clone()),
        });
        let grpc = match grpc_listener {
            Some(listener) => Some(serve_grpc(&config, listener, &state, shutdown.clone())?),
            None => None,
        };
        let http = match listener {
            Some(listener) => Some(serve_http(&config, listener, state, shutdown.clone()).await?),
            None => None,
        };
        let daemon = Daemon {
            config,
            router,
            metrics,
            ready,
            shutdown,
            repository,
            http,
            grpc,
            mqtt,
            cameras,
            node,
            service: Service,
        };
        daemon.announce_ready();
        Ok(daemon)
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(address, _)| *address)
    }

    /// The bound gRPC address (useful with port 0).
    pub fn grpc_address(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|(address, _)| *address)
    }

    /// The serving core.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// SIGHUP: re-reads the config file (cameras added, removed or restarted; a config that
    /// does not load is refused and the running one stays) and rescans the repository.
    pub async fn reload(&mut self) -> Result<(), ConfigError> {
        self.service.reloading();
        let reloaded = Config::load(&self.config.file);
        match &reloaded {
            Ok(config) => {
                tracing::info!(file = %config.file.display(), "SIGHUP: config re-read, cameras updated, rescanning the repository");
                self.cameras.reconcile(&config.camera).await;
                self.config.camera = config.camera.clone();
                self.node.reload(config);
                self.config.homeassistant = config.homeassistant.clone();
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: config refused, the running one stays; rescanning the repository")
            }
        }
        let _ = self.repository.events().send(RepoEvent::RescanAll);
        self.service.ready(&self.status());
        reloaded.map(|_| ())
    }

    /// SIGTERM (SPEC §9): not ready, no new work, in-flight work finishes (at most
    /// `drain_secs`), `stopped` published, everything stopped.
    pub async fn shutdown(self) {
        let wait = Duration::from_secs(self.config.drain_secs);
        tracing::info!(
            drain_secs = self.config.drain_secs,
            "stopping: no new work, draining requests in flight"
        );
        self.service.stopping();
        self.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        let http = async {
            let Some((_, server)) = self.http else { return };
            if tokio::time::timeout(wait, server).await.is_err() {
                tracing::warn!("HTTP requests still running after drain_secs: abandoned");
            }
        };
        let grpc = async {
            let Some((_, server)) = self.grpc else { return };
            if tokio::time::timeout(wait, server).await.is_err() {
                tracing::warn!("gRPC requests or streams still running after drain_secs: abandoned");
            }
        };
        let mqtt_requests = async {
            let Some(mqtt) = &self.mqtt else { return };
            let left = mqtt.drain(wait).await;
            if left > 0 {
                tracing::warn!(
                    left,
                    "MQTT requests still running after drain_secs: left to the broker"
                );
            }
        };
        tokio::join!(self.cameras.stop(), http, grpc, mqtt_requests);
        if let Some(mqtt) = self.mqtt {
            mqtt.stop(Duration::from_secs(5)).await;
        }
        let repository = self.repository;
        let _ = tokio::task::spawn_blocking(move || drop(repository)).await;
        tracing::info!("stopped");
    }

    fn status(&self) -> String {
        status_line(&self.router, self.mqtt.as_ref().map(|m| m.stats.as_ref()))
    }

    fn announce_ready(&self) {
        self.ready.store(true, Ordering::Release);
        let models = self.router.models();
        let serving = models.iter().filter(|m| !m.versions().is_empty()).count();
        tracing::info!(models = models.len(), ready = serving, node_id = %self.config.node_id, "onnxd ready");
        self.service.ready(&self.status());
        if let Some(interval) = Service::watchdog() {
            let watched = Watched {
                router: self.router.clone(),
                mqtt: self.mqtt.as_ref().map(|m| m.stats.clone()),
                http: self
                    .http_address()
                    .map(|address| (address, self.config.http.tls.is_some())),
            };
            tokio::spawn(self.service.clone().keep_alive(interval, watched));
        }
    }
}

/// Scans the repository once (every model READY or UNAVAILABLE) and starts its thread.
async fn start_repository(config: &Config, router: Arc<Router>) -> Result<RepositoryThread, StartError> {
    let settings = LoadSettings::from_config(config);
    let repo = config.repository.clone();
    let mut repository = Repository::new(&repo.path, settings, repo.reload, router);
    let repository = tokio::task::spawn_blocking(move || {
        repository.sync_all();
        repository
    })
    .await
    .map_err(|e| StartError::Scan(e.to_string()))?;
    let timing = Timing {
        settle: Duration::from_millis(repo.settle_ms),
        poll: (repo.poll_secs > 0).then(|| Duration::from_secs(repo.poll_secs)),
    };
    Ok(RepositoryThread::start(
        repository, &repo.path, repo.watch, timing,
    )?)
}

/// A listener on `address` (`None`: that endpoint is off); a failure is `error`'s.
async fn bind(
    address: Option<SocketAddr>,
    error: fn(SocketAddr, std::io::Error) -> StartError,
) -> Result<Option<tokio::net::TcpListener>, StartError> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address).await;
    listener.map(Some).map_err(|e| error(address, e))
}

/// Starts gRPC on its bound listener, with `[http]`'s token, TLS identity and size limit and
/// the HTTP state's router, repository and readiness; its counters join the metrics.
fn serve_grpc(
    config: &Config,
    listener: tokio::net::TcpListener,
    http: &HttpState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let address = listener
        .local_addr()
        .map_err(|e| StartError::GrpcListen(config.grpc.listen.expect("bound"), e))?;
    let metrics = Arc::new(GrpcMetrics::default());
    http.metrics.add(metrics.clone());
    let state = Arc::new(GrpcState {
        router: http.router.clone(),
        repository: http.repository.clone(),
        ready: http.ready.clone(),
        token: config.http.token.clone(),
        max_message_bytes: config.http.max_body_bytes,
        shutdown,
        metrics,
    });
    let server = grpc::serve(listener, state, config.http.tls.as_ref())?;
    Ok((address, server))
}

/// Model delivery's rollout statuses, retained on `P/models/<m>/rollout` (SPEC §6).
struct MqttRollout {
    sink: Sink,
    topics: Topics,
}

impl Announcer for MqttRollout {
    fn rollout(&self, model: &str, status: &serde_json::Value) {
        self.sink
            .retain(self.topics.rollout(model), status.to_string().into_bytes());
    }
}

async fn serve_http(
    config: &Config,
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let address = listener
        .local_addr()
        .map_err(|e| StartError::Listen(config.http.listen.expect("bound"), e))?;
    let tls = match &config.http.tls {
        None => None,
        Some(identity) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem(
                identity.cert.clone(),
                identity.key.expose().as_bytes().to_vec(),
            )
            .await
            .map_err(StartError::Tls)?,
        ),
    };
    let app = http::app(state, config.http.max_body_bytes);
    let server = http::serve(listener, app, tls, shutdown).map_err(|e| StartError::Listen(address, e))?;
    Ok((address, server))
}
