//! The KServe V2 / Triton gRPC API (`inference.GRPCInferenceService`, SPEC §7) on tonic: the
//! wire contract generated at build time from `proto/` ([`proto`]), the RPCs ([`service`],
//! with ModelStreamInfer in [`stream`]) and the protobuf ↔ serving-core conversions
//! ([`convert`]). Like HTTP it is a transport over the serving core's [`Router`] and its
//! [`views`](crate::serving::views); it imports nothing from the other transports.
//!
//! [`serve`] runs it on a bound listener, on a thread of its own: Nagle off, TLS (rustls,
//! ring) with `[http]`'s certificate, requests up to `[http] max_body_bytes` once
//! decompressed (gzip and deflate accepted; a larger request is `RESOURCE_EXHAUSTED`, as gRPC
//! C++ answers, not tonic's `OUT_OF_RANGE`; replies are not limited), the bearer token
//! of `[http] token_file` in the `authorization` metadata of every RPC but ServerLive and
//! ServerReady. On the daemon's shutdown token the listener closes, in-flight RPCs finish,
//! and open streams answer the requests they took, then end with `UNAVAILABLE`.
//! `onnxd_grpc_requests_total{rpc, code}` counts every answer ([`GrpcMetrics`]).

pub mod convert;
pub mod proto;
pub mod service;
pub mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::config::{Identity, Secret};
use crate::repository::watch::RepoEvent;
use crate::serving::{Router, ServeError};
use crate::telemetry::{self, MetricsSource};

/// What every RPC shares.
pub struct GrpcState {
    /// The serving core.
    pub router: Arc<Router>,
    /// The repository thread (load/unload), when the daemon runs one.
    pub repository: Option<Sender<RepoEvent>>,
    /// Set once the daemon is ready (repository scanned, listeners bound).
    pub ready: Arc<AtomicBool>,
    /// Bearer token every RPC but ServerLive and ServerReady needs.
    pub token: Option<Secret>,
    /// Largest message either way (`[http] max_body_bytes`).
    pub max_message_bytes: usize,
    /// The daemon's shutdown: streams stop taking requests.
    pub shutdown: CancellationToken,
    /// Answers by RPC and status code.
    pub metrics: Arc<GrpcMetrics>,
}

/// Why the gRPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's address cannot be read.
    #[error("grpc.listen: {0}")]
    Listener(#[from] std::io::Error),
    /// rustls refused the `[http]` certificate or key.
    #[error("http.tls_cert / http.tls_key (gRPC): {0}")]
    Tls(#[from] tonic::transport::Error),
    /// The gRPC thread or its runtime could not start.
    #[error("gRPC thread: {0}")]
    Thread(std::io::Error),
}

impl GrpcState {
    /// `UNAUTHENTICATED` unless the metadata carries `authorization: Bearer <token>` (when a
    /// token is configured).
    pub fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(token.expose()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token: send the metadata 'authorization: Bearer <token>' ([http] token_file)",
            ))
        }
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A stream's inbound error as the client should see it: an oversize message is
    /// `RESOURCE_EXHAUSTED` with the limit named.
    pub fn inbound_error(&self, status: Status) -> Status {
        if status.code() == Code::OutOfRange {
            oversize(&status, self.max_message_bytes)
        } else {
            status
        }
    }
}

/// The gRPC status of a serving error, as Triton maps its error kinds.
pub fn status_of(e: ServeError) -> Status {
    let code = match &e {
        ServeError::UnknownModel(_) | ServeError::UnknownVersion { .. } => Code::NotFound,
        ServeError::Unavailable { .. } => Code::Unavailable,
        ServeError::BadInput(_) | ServeError::NoImageInput(_) | ServeError::BadImage(_) => {
            Code::InvalidArgument
        }
        ServeError::Expired => Code::DeadlineExceeded,
        ServeError::Overloaded(_) => Code::ResourceExhausted,
        ServeError::Engine { .. } | ServeError::Postprocess(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// tonic's "decoded message length too large" (`OUT_OF_RANGE`) as gRPC C++ says it:
/// `RESOURCE_EXHAUSTED`, with the setting that sets the limit.
fn oversize(status: &Status, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "message larger than the limit of {limit} bytes ([http] max_body_bytes): {}",
        status.message()
    ))
}

/// The caller's deadline from the `grpc-timeout` metadata (`<digits><unit>`, unit one of
/// `H M S m u n`), if any.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// The RPCs of the service, in its order (the `rpc` label).
pub const RPCS: [&str; 20] = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
];

/// gRPC's status code names, by number (the `code` label).
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Answers by RPC and status code: lock-free counters, rendered at scrape time. Each request
/// of a ModelStreamInfer stream counts once, as does a stream refused or ended with an error.
pub struct GrpcMetrics {
    counts: Vec<[AtomicU64; CODES.len()]>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            counts: RPCS.iter().map(|_| Default::default()).collect(),
        }
    }
}

impl GrpcMetrics {
    /// Counts one answer of `rpc` (a name of [`RPCS`]).
    pub fn count(&self, rpc: &str, code: Code) {
        let (Some(row), Some(cell)) = (
            RPCS.iter().position(|r| *r == rpc),
            usize::try_from(code as i32).ok().filter(|c| *c < CODES.len()),
        ) else {
            return;
        };
        self.counts[row][cell].fetch_add(1, Ordering::Relaxed);
    }

    /// How many answers of `rpc` had `code`.
    pub fn get(&self, rpc: &str, code: Code) -> u64 {
        RPCS.iter()
            .position(|r| *r == rpc)
            .map_or(0, |row| self.counts[row][code as usize].load(Ordering::Relaxed))
    }
}

impl MetricsSource for GrpcMetrics {
    fn render(&self, registry: &prometheus::Registry) {
        let requests = telemetry::counter(
            registry,
            "onnxd_grpc_requests_total",
            "gRPC answers by RPC and status code (each request of a ModelStreamInfer stream counts once).",
            &["rpc", "code"],
        );
        for (rpc, row) in RPCS.iter().zip(&self.counts) {
            for (code, cell) in CODES.iter().zip(row) {
                let n = cell.load(Ordering::Relaxed);
                if n > 0 {
                    requests.with_label_values(&[rpc, code]).inc_by(n);
                }
            }
        }
    }
}

/// Serves the gRPC API on `listener` — over TLS when `tls` is given — until the state's
/// shutdown token is cancelled; then the listener closes, RPCs in flight finish and streams
/// end once they answered what they took. The returned task ends when the last connection
/// has closed; dropped (with the daemon's runtime), it closes the listener and lets the
/// connections finish. Must be called inside the runtime.
///
/// The connections run on a thread of their own (`grpc`), a current-thread tokio runtime.
/// hyper's HTTP/2 server answers each RPC from a task of its own that hands frames to the
/// connection's task and back several times per message; on the daemon's multi-thread
/// runtime those hand-offs exhaust tokio's LIFO slot and wake the other worker, which takes
/// the task to its core: the server held a tiny unary RPC 45 µs instead of 37, a streamed
/// request 46 instead of 33, on the 2-vCPU box, measured at the socket (BENCHMARKS.md,
/// issue 16). On one thread they stay local. The thread does I/O and protobuf work only
/// (inference runs on the engine's threads): 25–30 µs of CPU per tiny request, ~65 µs per
/// 110 KB input.
pub fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<GrpcState>,
    tls: Option<&Identity>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    use tonic::transport::server::TcpIncoming;

    let address: SocketAddr = listener.local_addr()?;
    let router = router(&state, tls)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let listener = {
        let _on_the_thread = runtime.enter();
        tokio::net::TcpListener::from_std(listener.into_std()?)?
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let scheme = if tls.is_some() { "gRPC (TLS)" } else { "gRPC" };
    tracing::info!(%address, "{scheme} listening");
    // The daemon's shutdown, or the end of the task returned (the daemon's runtime dropped).
    let stop = state.shutdown.child_token();
    let stopping = stop.clone().cancelled_owned();
    let (stopped, joined) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("grpc".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopping).await {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            });
            let _ = stopped.send(());
        })
        .map_err(StartError::Thread)?;
    let stop_with_this_task = stop.drop_guard();
    Ok(tokio::spawn(async move {
        let _ = joined.await; // an error: the thread ended by panicking, the server is gone too
        drop(stop_with_this_task);
    }))
}

/// The service behind its layers: TLS when `tls` is given, requests up to the state's limit.
fn router(state: &Arc<GrpcState>, tls: Option<&Identity>) -> Result<Layered, StartError> {
    use proto::grpc_inference_service_server::GrpcInferenceServiceServer;
    use tonic::codec::CompressionEncoding;
    use tonic::transport::{Server, ServerTlsConfig};

    let limit = state.max_message_bytes;
    // The limit is on what clients send; replies are not limited (as over HTTP, and as Triton,
    // whose send limit is INT32_MAX): a reply past it would fail only after the inference ran.
    let service = GrpcInferenceServiceServer::new(service::Inference::new(state.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
        // Requests compressed as Triton accepts them (tritonclient's `compression_algorithm`);
        // the limit holds for the decompressed message. Replies go uncompressed.
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate);
    let (stream_window, connection_window) = windows(limit);
    let mut server = Server::builder()
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .max_frame_size(MAX_FRAME);
    if let Some(identity) = tls {
        let identity = tonic::transport::Identity::from_pem(&identity.cert, identity.key.expose());
        server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    Ok(server.layer(OversizeLayer(state.clone())).add_service(service))
}

/// The largest HTTP/2 frame the server takes (its SETTINGS_MAX_FRAME_SIZE; HTTP/2's default is
/// 16 KiB). Clients split a message into frames of at most this size, and h2 writes each frame
/// on its own: at 16 KiB the CNN's 110 KB request reached the server as 6–7 packets and woke
/// it for each (HTTP/1 sends it in 2 segments); at 1 MiB, with [`windows`] wide enough for
/// it, in 2. A large frame delays only the other streams of the connection that sent it.
const MAX_FRAME: u32 = 1 << 20;

/// The HTTP/2 flow-control windows the server grants (stream, connection): the message limit,
/// between HTTP/2's default of 65,535 bytes and 8 MiB, and twice that for the connection. With
/// the default windows (64 KiB for the stream and for the connection) a larger request waits
/// on the way for the server's WINDOW_UPDATEs, round trips HTTP/1 does not make. tonic reads a
/// message whole before decoding it, so these windows buffer nothing it would not hold anyway;
/// ModelStreamInfer's pause at 32 requests in flight still holds a client back, at 8 MiB a
/// stream.
fn windows(limit: usize) -> (u32, u32) {
    let stream = limit.clamp(65_535, 8 << 20) as u32;
    (stream, 2 * stream)
}

/// tonic's router with the [`Oversize`] layer.
type Layered =
    tonic::transport::server::Router<tower::layer::util::Stack<OversizeLayer, tower::layer::util::Identity>>;

/// Puts [`Oversize`] over a service.
#[derive(Clone)]
struct OversizeLayer(Arc<GrpcState>);

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize {
            inner,
            state: self.0.clone(),
        }
    }
}

/// A layer over the service that turns tonic's `OUT_OF_RANGE` for an oversize unary request
/// (answered before any handler runs, in the response headers) into `RESOURCE_EXHAUSTED`, and
/// counts it.
#[derive(Clone)]
struct Oversize<S> {
    inner: S,
    state: Arc<GrpcState>,
}

type Reply = tonic::codegen::http::Response<tonic::body::Body>;

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Oversize<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>, Response = Reply>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let rpc = RPCS.iter().find(|r| **r == method).copied().unwrap_or_default();
        let state = self.state.clone();
        let reply = self.inner.call(request);
        Box::pin(async move {
            let mut reply = reply.await?;
            let status = Status::from_header_map(reply.headers());
            if let Some(status) = status.filter(|s| s.code() == Code::OutOfRange) {
                let mapped = oversize(&status, state.max_message_bytes);
                if mapped.add_header(reply.headers_mut()).is_ok() {
                    state.metrics.count(rpc, Code::ResourceExhausted);
                }
            }
            Ok(reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_metadata_is_a_deadline() {
        let mut metadata = MetadataMap::new();
        assert_eq!(deadline(&metadata), None);
        let before = Instant::now();
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        let d = deadline(&metadata).unwrap();
        assert!(d >= before + Duration::from_millis(250) && d < before + Duration::from_secs(1));
        for bad in ["", "m", "12x", "-1S"] {
            metadata.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(deadline(&metadata), None, "{bad}");
        }
    }

    #[test]
    fn serving_errors_map_to_tritons_codes() {
        let cases = [
            (ServeError::UnknownModel("m".into()), Code::NotFound),
            (ServeError::BadInput("b".into()), Code::InvalidArgument),
            (ServeError::Expired, Code::DeadlineExceeded),
            (ServeError::Overloaded("m".into()), Code::ResourceExhausted),
            (
                ServeError::Unavailable {
                    model: "m".into(),
                    reason: "r".into(),
                },
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = status_of(error);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
        let limit = oversize(&Status::out_of_range("found 9 bytes"), 8);
        assert_eq!(limit.code(), Code::ResourceExhausted);
        assert!(limit
            .message()
            .contains("limit of 8 bytes ([http] max_body_bytes)"));
    }

    #[test]
    fn counters_render_by_rpc_and_code() {
        let metrics = GrpcMetrics::default();
        metrics.count("ModelInfer", Code::Ok);
        metrics.count("ModelInfer", Code::Ok);
        metrics.count("ModelStreamInfer", Code::InvalidArgument);
        metrics.count("NoSuchRpc", Code::Ok);
        assert_eq!(metrics.get("ModelInfer", Code::Ok), 2);
        let registry = prometheus::Registry::new();
        metrics.render(&registry);
        let families = registry.gather();
        let mut samples: Vec<String> = families[0]
            .get_metric()
            .iter()
            .map(|m| {
                let labels: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
                format!("{labels:?}={}", m.get_counter().get_value())
            })
            .collect();
        samples.sort();
        assert_eq!(
            samples,
            [
                "[\"INVALID_ARGUMENT\", \"ModelStreamInfer\"]=1",
                "[\"OK\", \"ModelInfer\"]=2"
            ]
        );
    }
}
