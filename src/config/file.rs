//! The config file's schema (SPEC §3) as serde reads it: every section and key with its
//! default, unknown keys refused. [`super::Config::load`] turns it into the validated
//! [`super::Config`]; sections that need no further checking are shared by both.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cpus::CpuList;
use crate::engine::{EngineChoice, EngineOptions, Provider};

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Node id used in MQTT topics and the client id (default: hostname).
    pub node_id: String,
    /// Outbox and engine caches.
    pub state_dir: PathBuf,
    /// Tracing filter.
    pub log: String,
    /// Seconds in-flight work may take to finish on SIGTERM.
    pub drain_secs: u64,
    /// `[repository]`.
    pub repository: RepositoryConfig,
    /// `[engine]`.
    pub engine: EngineConfig,
    /// `[http]`.
    pub http: FileHttp,
    /// `[grpc]`.
    pub grpc: FileGrpc,
    /// `[mqtt]`.
    pub mqtt: FileMqtt,
    /// `[[camera]]` entries.
    pub camera: Vec<CameraConfig>,
    /// `[homeassistant]`.
    pub homeassistant: HomeAssistantConfig,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            node_id: String::new(),
            state_dir: PathBuf::from("/var/lib/onnxd"),
            log: "info".into(),
            drain_secs: 30,
            repository: RepositoryConfig::default(),
            engine: EngineConfig::default(),
            http: FileHttp::default(),
            grpc: FileGrpc::default(),
            mqtt: FileMqtt::default(),
            camera: Vec::new(),
            homeassistant: HomeAssistantConfig::default(),
        }
    }
}

/// `[repository]`: the watched model directory.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// Repository directory.
    pub path: PathBuf,
    /// Watch with inotify.
    pub watch: bool,
    /// Quiet time before a changed file is loaded.
    pub settle_ms: u64,
    /// Periodic rescan (0 = off).
    pub poll_secs: u64,
    /// `beside` or `replace`.
    pub reload: ReloadMode,
    /// Refuse models without a valid minisign signature.
    pub require_signatures: bool,
    /// Trusted minisign public keys.
    pub trusted_keys: Vec<String>,
    /// Largest model file an upload or a deploy download may bring.
    pub max_upload_bytes: u64,
    /// Versions kept on disk (for rollback) after a delivery.
    pub keep_versions: usize,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            path: PathBuf::from("/var/lib/onnxd/models"),
            watch: true,
            settle_ms: 1000,
            poll_secs: 0,
            reload: ReloadMode::Beside,
            require_signatures: false,
            trusted_keys: Vec::new(),
            max_upload_bytes: 2 << 30,
            keep_versions: 2,
        }
    }
}

/// How a new version replaces the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadMode {
    /// Load next to the old version, then swap.
    Beside,
    /// Drain and unload the old version first (small-memory devices).
    Replace,
}

crate::choice_serde!(ReloadMode);

/// `[engine]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `auto`, `ort` or `tract`.
    pub default: EngineChoice,
    /// Path of `libonnxruntime.so`; empty searches.
    pub ort_library: PathBuf,
    /// Execution providers in order.
    pub providers: Vec<Provider>,
    /// Intra-op threads per instance (0 = cores / instances).
    pub intra_threads: usize,
    /// CPUs kept for inference ("" = anywhere); the daemon's other threads run on the rest.
    pub cpus: CpuList,
    /// ORT thread spinning.
    pub spinning: bool,
    /// CUDA device id.
    pub cuda_device: i32,
    /// TensorRT FP16.
    pub trt_fp16: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let defaults = EngineOptions::default();
        EngineConfig {
            default: defaults.choice,
            ort_library: PathBuf::new(),
            providers: defaults.providers,
            intra_threads: defaults.intra_threads,
            cpus: defaults.cpus,
            spinning: defaults.spinning,
            cuda_device: defaults.cuda_device,
            trt_fp16: defaults.trt_fp16,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHttp {
    /// Listen address; empty disables HTTP.
    pub listen: String,
    /// Bearer token file.
    pub token_file: PathBuf,
    /// TLS certificate (PEM).
    pub tls_cert: PathBuf,
    /// TLS key (PEM).
    pub tls_key: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: u64,
}

impl Default for FileHttp {
    fn default() -> Self {
        FileHttp {
            listen: "127.0.0.1:8000".into(),
            token_file: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            max_body_bytes: 64 << 20,
        }
    }
}

/// `[grpc]`: the KServe V2 / Triton gRPC endpoint (token, TLS and size limit are `[http]`'s).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileGrpc {
    /// Listen address; empty disables gRPC.
    pub listen: String,
}

impl Default for FileGrpc {
    fn default() -> Self {
        FileGrpc {
            listen: "127.0.0.1:8001".into(),
        }
    }
}

/// `[mqtt]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileMqtt {
    /// Broker URL (`mqtt://` or `mqtts://`); empty disables MQTT.
    pub url: String,
    /// Client id (default `onnxd-<node_id>`).
    pub client_id: String,
    /// User name.
    pub username: String,
    /// File holding the password.
    pub password_file: PathBuf,
    /// CA certificate to pin.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Shared-subscription group for pool requests.
    pub share_group: String,
    /// QoS of requests and results: 1 (at-least-once), the only one supported.
    pub qos: u8,
    /// Broker session expiry.
    pub session_expiry_secs: u32,
    /// Largest accepted request payload.
    pub max_payload_bytes: u64,
    /// Outbox byte budget.
    pub outbox_max_bytes: u64,
    /// Outbox time to live.
    pub outbox_ttl_secs: u64,
}

impl Default for FileMqtt {
    fn default() -> Self {
        FileMqtt {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: String::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            topic_prefix: "onnxd".into(),
            share_group: String::new(),
            qos: 1,
            session_expiry_secs: 86_400,
            max_payload_bytes: 16 << 20,
            outbox_max_bytes: 256 << 20,
            outbox_ttl_secs: 86_400,
        }
    }
}

/// One `[[camera]]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera name (topic segment).
    pub name: String,
    /// Source URL.
    pub source: String,
    /// Model to run on its frames.
    pub model: String,
    /// Frame-rate cap.
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// Seconds without a frame before reconnecting.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
    /// ffmpeg hardware acceleration.
    #[serde(default)]
    pub hwaccel: String,
    /// Publish a JPEG with results that have detections.
    #[serde(default)]
    pub snapshot: bool,
}

fn default_fps() -> f64 {
    5.0
}

fn default_stall_secs() -> u64 {
    20
}

/// `[homeassistant]`: Home Assistant MQTT discovery (device-based) of the node, its models and
/// its cameras. Validated as it is (the prefix and labels are checked at load).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs (needs `[mqtt] url`).
    pub enabled: bool,
    /// HA's discovery prefix (its birth message is `<prefix>/status`).
    pub discovery_prefix: String,
    /// Detection labels that get a count sensor per camera; empty = all of the model's.
    pub labels: Vec<String>,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
            labels: Vec::new(),
        }
    }
}
