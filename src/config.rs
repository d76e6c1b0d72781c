//! The configuration file (SPEC §3): found, layered with `ONNXD_<SECTION>__<KEY>` environment
//! overrides by the `config` crate, deserialised with unknown keys refused, then validated, so
//! runtime code only ever sees a [`Config`] that makes sense. Relative paths are resolved
//! against the directory of the config file, so a config works from any working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{EngineChoice, EngineOptions, Provider};

/// Where the config file is looked for when `-c` is not given (after `$ONNXD_CONFIG`).
pub const SEARCH_PATHS: [&str; 2] = ["/etc/onnxd/onnxd.toml", "config/onnxd.toml"];

/// A config that could not be found, parsed or validated; says which file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No config file was found.
    #[error("no config file found (tried {0}); pass -c FILE or set ONNXD_CONFIG")]
    NotFound(String),
    /// The file or an override could not be parsed into the schema.
    #[error("{file}: {message}")]
    Parse {
        /// Config file.
        file: PathBuf,
        /// What was wrong (names the key).
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// Config file.
        file: PathBuf,
        /// Offending key.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
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
    pub http: HttpConfig,
    /// `[mqtt]`.
    pub mqtt: MqttConfig,
    /// `[[camera]]` entries.
    pub camera: Vec<CameraConfig>,
    /// The file this config was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: String::new(),
            state_dir: PathBuf::from("/var/lib/onnxd"),
            log: "info".into(),
            drain_secs: 30,
            repository: RepositoryConfig::default(),
            engine: EngineConfig::default(),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            camera: Vec::new(),
            file: PathBuf::new(),
        }
    }
}

/// `[repository]`: the watched model directory.
#[derive(Clone, Debug, Deserialize)]
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
        }
    }
}

/// How a new version replaces the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadMode {
    /// Load next to the old version, then swap.
    Beside,
    /// Drain and unload the old version first (small-memory devices).
    Replace,
}

/// `[engine]`.
#[derive(Clone, Debug, Deserialize)]
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
            spinning: defaults.spinning,
            cuda_device: defaults.cuda_device,
            trt_fp16: defaults.trt_fp16,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
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

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8000".into(),
            token_file: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            max_body_bytes: 64 << 20,
        }
    }
}

/// `[mqtt]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
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

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
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

impl Config {
    /// Finds the config file: `explicit`, `$ONNXD_CONFIG`, then [`SEARCH_PATHS`].
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(path) = explicit {
            return Ok(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os("ONNXD_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        SEARCH_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| ConfigError::NotFound(SEARCH_PATHS.join(", ")))
    }

    /// Reads, overrides from the environment, and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            file: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(parse("no such file".into()));
        }
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("ONNXD")
                    .prefix_separator("_")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("engine.providers")
                    .with_list_parse_key("repository.trusted_keys")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| parse(e.to_string()))?;
        let mut config: Config = raw.try_deserialize().map_err(|e| parse(e.to_string()))?;
        config.file = path.to_path_buf();
        config.resolve_paths();
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self) {
        let base = self.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &mut PathBuf| {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.state_dir);
        resolve(&mut self.repository.path);
        resolve(&mut self.engine.ort_library);
        resolve(&mut self.http.token_file);
        resolve(&mut self.http.tls_cert);
        resolve(&mut self.http.tls_key);
        resolve(&mut self.mqtt.password_file);
        resolve(&mut self.mqtt.ca_file);
        resolve(&mut self.mqtt.client_cert);
        resolve(&mut self.mqtt.client_key);
        if self.node_id.is_empty() {
            self.node_id = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "onnxd".into());
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                file: self.file.clone(),
                key: key.into(),
                message: message.into(),
            })
        };
        let topic_safe =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !topic_safe(&self.node_id) {
            return invalid("node_id", "expected letters, digits, '_', '.' or '-'");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return invalid(
                "log",
                "expected a tracing filter such as \"info\" or \"onnxd=debug,ort=warn\"",
            );
        }
        if self.engine.providers.is_empty() {
            return invalid(
                "engine.providers",
                "expected at least one of \"tensorrt\", \"cuda\", \"cpu\"",
            );
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "http.listen",
                "expected an address like \"127.0.0.1:8000\" or \"\" to disable HTTP",
            );
        }
        if self.http.tls_cert.as_os_str().is_empty() != self.http.tls_key.as_os_str().is_empty() {
            return invalid("http.tls_cert", "tls_cert and tls_key must be set together");
        }
        if !self.mqtt.url.is_empty()
            && !["mqtt://", "mqtts://"]
                .iter()
                .any(|s| self.mqtt.url.starts_with(s))
        {
            return invalid(
                "mqtt.url",
                "expected mqtt://HOST:PORT or mqtts://HOST:PORT, or \"\" to disable MQTT",
            );
        }
        if self.mqtt.qos != 1 {
            // Requests and results are taken and sent at QoS 1 with PUBACK tracking: that is
            // what the at-least-once guarantee and the outbox are built on.
            return invalid(
                "mqtt.qos",
                "expected 1 (at-least-once; QoS 0 and 2 are not supported)",
            );
        }
        if !topic_safe(&self.mqtt.topic_prefix.replace('/', "_")) {
            return invalid("mqtt.topic_prefix", "expected a topic without wildcards");
        }
        for (i, cam) in self.camera.iter().enumerate() {
            if !topic_safe(&cam.name) {
                return invalid(
                    &format!("camera[{i}].name"),
                    "expected letters, digits, '_', '.' or '-'",
                );
            }
            if self.camera[..i].iter().any(|c| c.name == cam.name) {
                return invalid(&format!("camera[{i}].name"), "camera names must be unique");
            }
            if !(cam.fps > 0.0 && cam.fps.is_finite()) {
                return invalid(&format!("camera[{i}].fps"), "expected a positive number");
            }
        }
        if self.repository.require_signatures && self.repository.trusted_keys.is_empty() {
            return invalid(
                "repository.trusted_keys",
                "require_signatures = true needs at least one trusted key",
            );
        }
        Ok(())
    }

    /// Engine settings for models of this daemon.
    pub fn engine_options(&self) -> EngineOptions {
        let library = &self.engine.ort_library;
        EngineOptions {
            choice: self.engine.default,
            ort_library: (!library.as_os_str().is_empty()).then(|| library.clone()),
            providers: self.engine.providers.clone(),
            intra_threads: self.engine.intra_threads,
            spinning: self.engine.spinning,
            cuda_device: self.engine.cuda_device,
            trt_fp16: self.engine.trt_fp16,
            state_dir: self.state_dir.clone(),
            instances: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("onnxd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "node_id = \"n1\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n",
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.repository.path, dir.path().join("models"));
        assert_eq!(config.state_dir, dir.path().join("state"));
        assert_eq!(config.http.listen, "127.0.0.1:8000");
    }

    #[test]
    fn the_shipped_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = Config::load(&root.join("config/onnxd.toml")).unwrap();
        assert_eq!(example.repository.path, root.join("config/../models"));
        // The service's /etc/onnxd/onnxd.toml: absolute paths the unit's sandbox allows.
        let service = Config::load(&root.join("systemd/onnxd.toml")).unwrap();
        assert_eq!(service.state_dir, Path::new("/var/lib/onnxd"));
        assert_eq!(service.repository.path, Path::new("/var/lib/onnxd/models"));
        assert!(service.mqtt.url.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[engine]\nprovidres = [\"cpu\"]\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("providres"), "{err}");
        let path = write(dir.path(), "[engine]\ndefault = \"gpu\"\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("gpu"), "{err}");
        let path = write(dir.path(), "node_id = \"a/b\"\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("node_id"), "{err}");
        let path = write(dir.path(), "[http]\nlisten = \"nowhere\"\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("http.listen"), "{err}");
    }
}
