//! The HTTP API (SPEC §7): KServe V2 / Triton-compatible routes on axum. [`v2`] holds health,
//! metadata, config, statistics and inference; [`repository`] the repository extension;
//! [`delivery`] model uploads, version deletion and rollback; `/metrics` serves the daemon's
//! [`Metrics`]. The wire forms are the codec's; requests go to the
//! serving core's [`Router`] and never touch an engine.
//!
//! Every non-200 answer is `{"error": "..."}` with Triton's status mapping. Request bodies may
//! be gzip/deflate (decoded) and are bounded by `max_body_bytes`; responses are compressed
//! when the client accepts it. With a token file, every route but health (and the status
//! page's assets) needs `Authorization: Bearer <token>`; a `GET` may carry it instead as the
//! status page's `onnxd_token` cookie ([`crate::web`]), and a `GET /` without it gets the
//! page's login form.
//!
//! The status page ([`crate::web`]: `/`, `/status.json`, `/cameras/{c}/snapshot.jpg`,
//! `/assets/…`) is served when the daemon gives [`HttpState::web`].

pub mod delivery;
pub mod repository;
pub mod v2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use crossbeam_channel::Sender;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::repository::watch::RepoEvent;
use crate::serving::{Router, ServeError};
use crate::telemetry::Metrics;

/// What every handler shares.
pub struct HttpState {
    /// The serving core.
    pub router: Arc<Router>,
    /// The repository thread (load/unload/index), when the daemon runs one.
    pub repository: Option<Sender<RepoEvent>>,
    /// Set once the initial repository scan has finished (SPEC §9).
    pub ready: Arc<AtomicBool>,
    /// Bearer token required on every route but health.
    pub token: Option<Secret>,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// What the status page shows; `None` serves no page.
    pub web: Option<Arc<dyn crate::web::StatusSource>>,
    /// Model delivery (uploads, rollback), when the daemon runs it.
    pub delivery: Option<Arc<crate::delivery::Delivery>>,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// A 404 with a message.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        let status = match &e {
            ServeError::UnknownModel(_) | ServeError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            ServeError::Unavailable { .. } | ServeError::Expired | ServeError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::BadInput(_) | ServeError::NoImageInput(_) | ServeError::BadImage(_) => {
                StatusCode::BAD_REQUEST
            }
            ServeError::Engine { .. } | ServeError::Postprocess(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

/// Test hook (debug builds only): once set, `/v2/health/live` never answers, as a hung
/// listener would not (the watchdog's probe; see `service::stall_on`).
#[cfg(debug_assertions)]
pub static STALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn live() -> StatusCode {
    #[cfg(debug_assertions)]
    if STALL.load(std::sync::atomic::Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    StatusCode::OK
}

/// The axum application.
pub fn app(state: Arc<HttpState>, max_body_bytes: usize) -> axum::Router {
    let protected = axum::Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/models/stats", get(v2::all_stats))
        .route("/v2/models/{model}", get(v2::model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(v2::model_metadata))
        .route("/v2/models/{model}/ready", get(v2::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(v2::model_ready),
        )
        .route("/v2/models/{model}/config", get(v2::model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(v2::model_config),
        )
        .route("/v2/models/{model}/stats", get(v2::model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(v2::model_stats),
        )
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(v2::infer))
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route("/v2/repository/models/{model}/unload", post(repository::unload))
        .route(
            "/v2/repository/models/{model}/versions/{version}",
            put(delivery::put_version).delete(delivery::delete_version),
        )
        .route(
            "/v2/repository/models/{model}/versions/{version}/files/{name}",
            put(delivery::put_file),
        )
        .route(
            "/v2/repository/models/{model}/versions/{version}/commit",
            post(delivery::commit),
        )
        .route("/v2/repository/models/{model}/rollback", post(delivery::rollback))
        .route("/metrics", get(metrics));
    let (protected, public) = match &state.web {
        Some(source) => (
            protected.merge(crate::web::routes(source.clone())),
            crate::web::public_routes(),
        ),
        None => (protected, axum::Router::new()),
    };
    let protected = protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    axum::Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(v2::server_ready))
        .merge(public)
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(CompressionLayer::new())
        .layer(RequestDecompressionLayer::new())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves `app` on `listener` — HTTPS when `tls` is given — until `shutdown` is cancelled;
/// then the listener closes (new connections are refused) and requests in flight are
/// answered. The returned task ends when the last connection has closed. Must be called
/// inside the runtime. Every connection has Nagle off: small replies must not wait for
/// delayed ACKs.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let address = listener.local_addr()?;
    let Some(tls) = tls else {
        tracing::info!(%address, "HTTP listening");
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        return Ok(tokio::spawn(async move {
            let stopping = shutdown.cancelled_owned();
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopping).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }));
    };
    let handle = axum_server::Handle::new();
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    let server = axum_server::from_tcp(listener.into_std()?)?
        .acceptor(acceptor)
        .handle(handle.clone());
    tracing::info!(%address, "HTTPS listening");
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.graceful_shutdown(None);
    });
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "HTTPS server stopped");
        }
    }))
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

async fn require_token(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let reads =
            request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD;
        let cookie = reads && cookie_token(request.headers()).as_deref() == Some(token.expose());
        if given != Some(token.expose()) && !cookie {
            if reads && request.uri().path() == "/" && state.web.is_some() {
                return crate::web::login_page();
            }
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong bearer token".into(),
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// The status page's `onnxd_token` cookie, percent-decoded.
fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("onnxd_token="))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

impl HttpState {
    /// Whether the daemon is ready (initial scan done).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
