//! The gRPC API's daemon-level behaviour with onnxd's own tonic client, the daemon started
//! in-process on 127.0.0.1:0: the drain on shutdown (RPCs and stream requests in flight are
//! answered, the stream then ends UNAVAILABLE, new connections are refused), the per-RPC
//! counters in /metrics, TLS with `[http]`'s certificate, and `onnxd bench --grpc`'s client
//! (unary and streaming) against the daemon, the thread gRPC's connections run on and the
//! HTTP/2 settings it offers. The protocol itself is tested with unmodified tritonclient in
//! tests/python/test_grpc.py.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use onnxd::commands::bench::{bench, BenchPlan, Target};
use onnxd::config::Config;
use onnxd::daemon::Daemon;
use onnxd::engine::EngineOptions;
use onnxd::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use onnxd::grpc::proto::model_infer_request::InferInputTensor;
use onnxd::grpc::proto::{ModelInferRequest, ServerLiveRequest};
use onnxd::repository::loader::LoadSettings;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

type Client = GrpcInferenceServiceClient<Channel>;

fn copy_model(root: &Path, name: &str, file: &Path) {
    std::fs::create_dir_all(root.join(name).join("1")).unwrap();
    std::fs::copy(file, root.join(name).join("1/model.onnx")).unwrap();
}

/// The daemon with `slow` (≈7 ms a request on one thread) and `fp32`; `extra` lines join
/// `[http]`.
fn start(runtime: &tokio::runtime::Runtime, dir: &Path, extra: &str) -> Daemon {
    let models = dir.join("models");
    copy_model(&models, "slow", &common::fixture("slow.onnx"));
    copy_model(&models, "fp32", &common::fixture("dtype_FP32.onnx"));
    let config = format!(
        "node_id = \"g\"\nstate_dir = \"state\"\ndrain_secs = 20\n[repository]\npath = \"models\"\n\
         [engine]\nort_library = {:?}\nintra_threads = 1\n[http]\nlisten = \"\"\n{extra}\
         [grpc]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"\"\n",
        common::ort_library()
    );
    std::fs::write(dir.join("onnxd.toml"), config).unwrap();
    let config = Config::load(&dir.join("onnxd.toml")).unwrap();
    runtime.block_on(Daemon::start(config)).unwrap()
}

/// [`start`] in a fresh directory on a fresh runtime: the directory (kept until the test
/// ends), the runtime, the daemon and its gRPC address.
fn started(extra: &str) -> (tempfile::TempDir, tokio::runtime::Runtime, Daemon, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let daemon = start(&runtime, dir.path(), extra);
    let address = daemon.grpc_address().unwrap();
    (dir, runtime, daemon, address)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(address: SocketAddr) -> Result<Client, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

fn slow_request(id: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "slow".into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 512],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0; 512 * 4].into()],
        ..Default::default()
    }
}

#[test]
fn shutdown_answers_what_was_taken_then_refuses_new_work() {
    let (_dir, runtime, daemon, address) = started("");
    runtime.block_on(async move {
        let mut client = connect(address).await.unwrap();
        // 20 requests on one stream: ≈140 ms of work for the one inference thread.
        let (sender, outbound) = tokio::sync::mpsc::channel(64);
        for i in 0..20 {
            sender.send(slow_request(&i.to_string())).await.unwrap();
        }
        let outbound = tokio_stream::wrappers::ReceiverStream::new(outbound);
        let mut replies = client.model_stream_infer(outbound).await.unwrap().into_inner();
        let first = replies.next().await.unwrap().unwrap();
        assert_eq!(first.error_message, "");
        // Five unary calls on another connection, queued behind the stream's requests.
        let mut unary = connect(address).await.unwrap();
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let mut c = unary.clone();
                tokio::spawn(async move { c.model_infer(slow_request(&format!("u{i}"))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let stopping = tokio::spawn(daemon.shutdown());
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Taken after the shutdown began: never read, never answered.
        sender.send(slow_request("late")).await.unwrap();
        assert!(
            connect(address).await.is_err(),
            "a new connection was accepted while draining"
        );
        let mut ids = vec![first.infer_response.unwrap().id];
        let end = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), replies.next()).await;
            match next.expect("the stream ended within 10 s of the shutdown") {
                Some(Ok(reply)) => {
                    assert_eq!(
                        reply.error_message, "",
                        "a request taken before the shutdown failed"
                    );
                    ids.push(reply.infer_response.unwrap().id);
                }
                Some(Err(status)) => break status,
                None => panic!("the stream ended without saying why"),
            }
        };
        ids.sort_by_key(|id| id.parse::<u32>().unwrap());
        assert_eq!(ids, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(end.code(), Code::Unavailable, "{end:?}");
        assert!(end.message().contains("shutting down"), "{end:?}");
        for call in calls {
            let reply = call.await.unwrap().expect("a unary call in flight was answered");
            assert!(reply.get_ref().id.starts_with('u'));
        }
        assert!(unary.server_live(ServerLiveRequest {}).await.is_err());
        tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .expect("the daemon stopped once the stream ended")
            .unwrap();
    });
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// gRPC's connections are driven by a thread of their own (a current-thread runtime), not by
/// the daemon's multi-thread runtime, where hyper's per-RPC task hand-offs cost 7–13 µs more.
#[test]
fn connections_run_on_a_thread_of_their_own() {
    let (_dir, runtime, daemon, address) = started("");
    runtime.block_on(async move {
        let mut client = connect(address).await.unwrap();
        client.server_live(ServerLiveRequest {}).await.unwrap();
        assert!(
            thread_names().iter().any(|name| name == "grpc"),
            "no thread named grpc: {:?}",
            thread_names()
        );
        daemon.shutdown().await;
    });
}

/// The gRPC thread outlives no runtime: a daemon whose runtime is dropped without a shutdown
/// (a test that fails, an embedder's error path) stops listening on gRPC too.
#[test]
fn a_dropped_runtime_closes_the_grpc_listener() {
    let (_dir, runtime, daemon, address) = started("");
    std::net::TcpStream::connect(address).expect("listening while the runtime runs");
    drop(runtime);
    common::wait_until(
        "the gRPC listener to close after the runtime was dropped",
        Duration::from_secs(5),
        || std::net::TcpStream::connect(address).is_err(),
    );
    drop(daemon);
}

/// What the server announces on a new HTTP/2 connection: its settings, as (identifier, value)
/// pairs, and the increment of its first connection-level WINDOW_UPDATE.
async fn server_preamble(address: SocketAddr) -> (Vec<(u16, u32)>, u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (mut settings, mut window) = (None, None);
    while settings.is_none() || window.is_none() {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await.unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        tcp.read_exact(&mut payload).await.unwrap();
        let on_the_connection = head[5..9] == [0, 0, 0, 0];
        match head[3] {
            4 if head[4] & 1 == 0 => {
                settings = Some(
                    payload
                        .chunks(6)
                        .map(|p| {
                            (
                                u16::from_be_bytes([p[0], p[1]]),
                                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                            )
                        })
                        .collect(),
                )
            }
            8 if on_the_connection => window = Some(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            _ => {}
        }
    }
    (settings.unwrap(), window.unwrap())
}

/// A request of the mid-size CNN's 110 KB neither waits for a window update nor goes out as
/// 16 KiB frames: the server offers 1 MiB frames and windows as wide as the message limit
/// (here `max_body_bytes = 2 MiB`), twice that for the connection.
#[test]
fn large_requests_need_no_window_update_and_few_frames() {
    let (_dir, runtime, daemon, address) = started("max_body_bytes = 2097152\n");
    runtime.block_on(async move {
        let (settings, connection_window) = server_preamble(address).await;
        assert_eq!(
            connection_window,
            (4 << 20) - 65_535,
            "the connection's window: 4 MiB"
        );
        assert!(
            settings.contains(&(0x5, 1 << 20)),
            "SETTINGS_MAX_FRAME_SIZE: {settings:?}"
        );
        assert!(
            settings.contains(&(0x4, 2 << 20)),
            "SETTINGS_INITIAL_WINDOW_SIZE: {settings:?}"
        );
        daemon.shutdown().await;
    });
}

#[test]
fn answers_are_counted_by_rpc_and_code() {
    let (_dir, runtime, daemon, address) = started("");
    runtime.block_on(async {
        let mut client = connect(address).await.unwrap();
        client.model_infer(slow_request("a")).await.unwrap();
        let mut unknown = slow_request("b");
        unknown.model_name = "nope".into();
        let status = client.model_infer(unknown).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        client.server_live(ServerLiveRequest {}).await.unwrap();
        // A deadline shorter than the inference: tonic's grpc-timeout timer, or the client's
        // reset, drops the handler before it answers; that answer is counted too (it was not).
        let mut late = tonic::Request::new(slow_request("c"));
        late.set_timeout(Duration::from_millis(3));
        client.model_infer(late).await.unwrap_err();
    });
    let cancelled = "onnxd_grpc_requests_total{code=\"CANCELLED\",rpc=\"ModelInfer\"} 1";
    common::wait_until("the cancelled answer counted", Duration::from_secs(5), || {
        daemon.metrics().render().contains(cancelled)
    });
    let text = daemon.metrics().render();
    for line in [
        "onnxd_grpc_requests_total{code=\"OK\",rpc=\"ModelInfer\"} 1",
        "onnxd_grpc_requests_total{code=\"NOT_FOUND\",rpc=\"ModelInfer\"} 1",
        "onnxd_grpc_requests_total{code=\"OK\",rpc=\"ServerLive\"} 1",
        cancelled,
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    common::promtool_check(&text);
    runtime.block_on(daemon.shutdown());
}

#[test]
fn tls_uses_the_http_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let runtime = runtime();
    let daemon = start(
        &runtime,
        dir.path(),
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    );
    let address = daemon.grpc_address().unwrap();
    let cert = std::fs::read(dir.path().join("cert.pem")).unwrap();
    runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(cert))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = GrpcInferenceServiceClient::new(channel);
        let reply = client.model_infer(slow_request("tls")).await.unwrap();
        assert_eq!(reply.get_ref().id, "tls");
        // Plain text to the TLS port gets nowhere.
        let mut plain = connect(address).await.map(Some).unwrap_or(None);
        if let Some(plain) = plain.as_mut() {
            assert!(plain.server_live(ServerLiveRequest {}).await.is_err());
        }
    });
    runtime.block_on(daemon.shutdown());
}

/// `onnxd bench --grpc` against the daemon, unary and streaming: every request answered, with
/// the server's compute time (`slow` takes milliseconds); a model the server does not have
/// fails the warm-up with the server's reason.
#[test]
fn bench_grpc_measures_unary_and_streaming_calls() {
    let (_dir, runtime, daemon, grpc) = started("");
    let address = grpc.to_string();
    let settings = LoadSettings {
        engine: EngineOptions {
            ort_library: Some(common::ort_library()),
            intra_threads: 1,
            ..EngineOptions::default()
        },
        require_signatures: false,
        trusted_keys: Vec::new(),
        force_engine: None,
        batching: Default::default(),
    };
    let plan = BenchPlan {
        concurrency: 2,
        duration: Duration::from_secs(60),
        count: Some(20),
        warmup: 2,
        progress: false,
    };
    let model = common::fixture("slow.onnx");
    for (streaming, name) in [(false, "grpc://"), (true, "grpc+stream://")] {
        let target = Target::Grpc {
            address: address.clone(),
            model: "slow".into(),
            streaming,
        };
        let report = bench(&model, &[], &settings, &plan, &target).unwrap();
        assert_eq!((report.requests, report.errors), (20, 0), "{report:?}");
        assert!(report.engine.starts_with(name), "{report:?}");
        assert!(
            report.compute_us.p50 >= 500.0,
            "no server compute time: {report:?}"
        );
        assert!(report.latency_us.p50 >= report.compute_us.p50, "{report:?}");
        let unknown = Target::Grpc {
            address: address.clone(),
            model: "nope".into(),
            streaming,
        };
        let error = bench(&model, &[], &settings, &plan, &unknown).unwrap_err();
        assert!(error.to_string().contains("unknown model 'nope'"), "{error}");
    }
    runtime.block_on(daemon.shutdown());
}
