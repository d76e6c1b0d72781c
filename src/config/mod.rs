//! The configuration (SPEC §3): found, read with `ONNXD_<SECTION>__<KEY>` environment
//! overrides layered on top ([`environment`]), deserialised into the file's schema with unknown
//! keys refused ([`file`]), then validated **once** into a typed [`Config`]: addresses parsed,
//! the broker URL split, secret and certificate files read and checked, relative paths
//! resolved against the config file's folder. Runtime code never sees a string it must parse
//! again, and `onnxd check` and SIGHUP refuse a config whose files are missing or unreadable,
//! naming the key (or the environment variable that set it).

mod environment;
pub mod file;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cpus::CpuList;
use crate::engine::EngineOptions;
pub use file::{CameraConfig, EngineConfig, HomeAssistantConfig, ReloadMode, RepositoryConfig};
use file::{FileConfig, FileGrpc, FileHttp, FileMqtt};

/// Where the config file is looked for when `-c` is not given (after `$ONNXD_CONFIG`).
pub const SEARCH_PATHS: [&str; 2] = ["/etc/onnxd/onnxd.toml", "config/onnxd.toml"];

/// A config that could not be found, parsed or validated; says which file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No config file was found.
    #[error("no config file found (tried {0}); pass -c FILE or set ONNXD_CONFIG")]
    NotFound(String),
    /// The file could not be parsed into the schema.
    #[error("{file}: {message}")]
    Parse {
        /// Config file.
        file: PathBuf,
        /// What was wrong (names the key).
        message: String,
    },
    /// An `ONNXD_*` environment override could not be used.
    #[error("environment variable {var}: {message}")]
    Environment {
        /// The variable (`ONNXD_ENGINE__DEFAULT`).
        var: String,
        /// What was wrong (names the key it overrides).
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

/// A secret read from a file (token, password): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A certificate chain and its key, PEM, read and checked at load.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Certificate chain (PEM).
    pub cert: Vec<u8>,
    /// Private key (PEM).
    pub key: Secret,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// Node id used in MQTT topics and the client id.
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
    /// `[grpc]`.
    pub grpc: GrpcConfig,
    /// `[mqtt]`; `None` when `url` is empty.
    pub mqtt: Option<MqttConfig>,
    /// `[[camera]]` entries.
    pub camera: Vec<CameraConfig>,
    /// `[homeassistant]`.
    pub homeassistant: HomeAssistantConfig,
    /// Problems worth a warning that did not stop the load (`ONNXD_*` variables naming no key).
    pub warnings: Vec<String>,
}

/// `[http]`, validated.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Listen address; `None` disables HTTP.
    pub listen: Option<SocketAddr>,
    /// Bearer token every route but health requires.
    pub token: Option<Secret>,
    /// HTTPS certificate and key.
    pub tls: Option<Identity>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

/// `[grpc]`, validated. The token, TLS identity and message size limit are `[http]`'s.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// Listen address; `None` disables gRPC.
    pub listen: Option<SocketAddr>,
}

/// The broker of `mqtt.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

/// `[mqtt]`, validated.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// The broker.
    pub broker: Broker,
    /// Client id (default `onnxd-<node_id>`).
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, Secret)>,
    /// CA certificates to pin (PEM); `None` trusts the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key.
    pub identity: Option<Identity>,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Shared-subscription group for pool requests.
    pub share_group: String,
    /// Broker session expiry.
    pub session_expiry_secs: u32,
    /// Largest accepted request payload.
    pub max_payload_bytes: u64,
    /// Outbox byte budget.
    pub outbox_max_bytes: u64,
    /// Outbox time to live.
    pub outbox_ttl_secs: u64,
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

    /// Reads, overrides from the environment, and validates a config file. An `ONNXD_*`
    /// variable that names no key is not applied; it is listed in [`Config::warnings`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Parse {
                file: path.to_path_buf(),
                message: "no such file".into(),
            });
        }
        let (overrides, warnings) = environment::overrides(std::env::vars());
        let raw = match parse(path, &overrides) {
            Ok(raw) => raw,
            Err(e) => return Err(blame_override(path, &overrides).unwrap_or(e)),
        };
        let checker = Checker {
            file: path.to_path_buf(),
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            overrides,
        };
        let mut config = checker.validate(raw)?;
        config.warnings = warnings;
        Ok(config)
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
            gpus: Vec::new(),
            cpus: self.engine.cpus.clone(),
        }
    }
}

/// The file with `overrides` (`ONNXD_*` variable → value) on top, deserialised.
fn parse(path: &Path, overrides: &BTreeMap<String, String>) -> Result<FileConfig, ConfigError> {
    let parse = |e: config::ConfigError| ConfigError::Parse {
        file: path.to_path_buf(),
        message: e.to_string(),
    };
    let environment = config::Environment::with_prefix("ONNXD")
        .prefix_separator("_")
        .separator("__")
        .list_separator(",")
        .with_list_parse_key("engine.providers")
        .with_list_parse_key("repository.trusted_keys")
        .with_list_parse_key("homeassistant.labels")
        .try_parsing(true)
        .source(Some(
            overrides.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ));
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(parse)?
        .try_deserialize()
        .map_err(parse)
}

/// When the file alone parses but not with the overrides: the first override that breaks it.
fn blame_override(path: &Path, overrides: &BTreeMap<String, String>) -> Option<ConfigError> {
    parse(path, &BTreeMap::new()).ok()?;
    overrides.iter().find_map(|(var, value)| {
        let single = BTreeMap::from([(var.clone(), value.clone())]);
        match parse(path, &single) {
            Ok(_) => None,
            Err(ConfigError::Parse { message, .. }) => Some(ConfigError::Environment {
                var: var.clone(),
                message: format!("{value:?}: {message}"),
            }),
            Err(other) => Some(other),
        }
    })
}

/// Turns the file's values into a [`Config`]; every error names the key, or the environment
/// variable that set it.
struct Checker {
    file: PathBuf,
    base: PathBuf,
    overrides: BTreeMap<String, String>,
}

/// Letters, digits, `_`, `.`, `-`: safe in MQTT topics and ids.
fn topic_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Why `s` cannot be part of a topic onnxd publishes and others subscribe to: empty, or an
/// MQTT wildcard (`+`, `#`) or NUL in it (MQTT 5 §4.7). Spaces and `/` are fine.
fn topic_problem(s: &str) -> Option<&'static str> {
    if s.trim().is_empty() {
        Some("must not be empty")
    } else if s.contains(['+', '#']) {
        Some("must not contain the MQTT wildcards '+' or '#' (no topic could carry it)")
    } else if s.contains('\0') {
        Some("must not contain NUL")
    } else {
        None
    }
}

impl Checker {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let var = environment::var_of(key);
        let message = message.into();
        if self.overrides.contains_key(&var) {
            return ConfigError::Environment {
                var,
                message: format!("{key}: {message}"),
            };
        }
        ConfigError::Invalid {
            file: self.file.clone(),
            key: key.into(),
            message,
        }
    }

    /// `path` relative to the config file's folder (empty stays empty).
    fn resolve(&self, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() || path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// The contents of the file `key` names (`None` when the key is empty).
    fn read(&self, key: &str, path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let path = self.resolve(path);
        std::fs::read(&path)
            .map(Some)
            .map_err(|e| self.invalid(key, format!("cannot read {}: {e}", path.display())))
    }

    /// A secret file's first line, which must not be empty.
    fn secret(&self, key: &str, path: &Path) -> Result<Option<Secret>, ConfigError> {
        let Some(bytes) = self.read(key, path)? else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes).map_err(|_| self.invalid(key, "the file is not UTF-8 text"))?;
        let secret = text.trim_end_matches(['\r', '\n']).to_string();
        if secret.trim().is_empty() {
            return Err(self.invalid(key, format!("{} is empty", self.resolve(path).display())));
        }
        Ok(Some(Secret(secret)))
    }

    /// A PEM file holding at least one certificate.
    fn certificates(&self, key: &str, path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(pem) = self.read(key, path)? else {
            return Ok(None);
        };
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
        match certs {
            Ok(certs) if !certs.is_empty() => Ok(Some(pem)),
            Ok(_) => Err(self.invalid(key, "expected a PEM file with a certificate; found none")),
            Err(e) => Err(self.invalid(key, format!("not a PEM certificate file: {e}"))),
        }
    }

    /// A certificate chain and its key, both set or neither.
    fn identity(&self, keys: [&str; 2], cert: &Path, key: &Path) -> Result<Option<Identity>, ConfigError> {
        if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
            return Err(self.invalid(
                keys[0],
                format!("{} and {} must be set together", keys[0], keys[1]),
            ));
        }
        let Some(cert) = self.certificates(keys[0], cert)? else {
            return Ok(None);
        };
        let pem = self.read(keys[1], key)?.unwrap_or_default();
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| self.invalid(keys[1], format!("not a PEM private key file: {e}")))?;
        let key = String::from_utf8(pem).map_err(|_| self.invalid(keys[1], "the file is not UTF-8 text"))?;
        Ok(Some(Identity {
            cert,
            key: Secret(key),
        }))
    }

    fn validate(&self, raw: FileConfig) -> Result<Config, ConfigError> {
        let node_id = match raw.node_id.as_str() {
            "" => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "onnxd".into()),
            id => id.to_string(),
        };
        if !topic_safe(&node_id) {
            return Err(self.invalid("node_id", "expected letters, digits, '_', '.' or '-'"));
        }
        if tracing_subscriber::EnvFilter::try_new(&raw.log).is_err() {
            return Err(self.invalid(
                "log",
                "expected a tracing filter such as \"info\" or \"onnxd=debug,ort=warn\"",
            ));
        }
        let mut repository = raw.repository;
        repository.path = self.resolve(&repository.path);
        if repository.require_signatures && repository.trusted_keys.is_empty() {
            return Err(self.invalid(
                "repository.trusted_keys",
                "require_signatures = true needs at least one trusted key",
            ));
        }
        if repository.keep_versions == 0 {
            return Err(self.invalid(
                "repository.keep_versions",
                "expected at least 1 (the version serving)",
            ));
        }
        let mut engine = raw.engine;
        engine.ort_library = self.resolve(&engine.ort_library);
        if engine.providers.is_empty() {
            return Err(self.invalid(
                "engine.providers",
                "expected at least one of \"tensorrt\", \"cuda\", \"cpu\"",
            ));
        }
        self.engine_cpus(&engine.cpus)?;
        let mqtt = self.mqtt(&raw.mqtt, &node_id)?;
        Ok(Config {
            file: self.file.clone(),
            http: self.http(&raw.http)?,
            grpc: self.grpc(&raw.grpc)?,
            homeassistant: self.homeassistant(raw.homeassistant, mqtt.is_some())?,
            mqtt,
            camera: self.cameras(raw.camera)?,
            node_id,
            state_dir: self.resolve(&raw.state_dir),
            log: raw.log,
            drain_secs: raw.drain_secs,
            repository,
            engine,
            warnings: Vec::new(),
        })
    }

    /// `[engine] cpus`: CPUs this process may run on (a systemd `CPUAffinity=` or `taskset`
    /// narrows them; on SIGHUP, those it had before the engine's were kept for it).
    fn engine_cpus(&self, cpus: &CpuList) -> Result<(), ConfigError> {
        cpus.check_allowed()
            .map_err(|why| self.invalid("engine.cpus", why))
    }

    /// A `listen` value: an address, or `None` for "" (the endpoint disabled).
    fn listen(
        &self,
        key: &str,
        value: &str,
        example: &str,
        what: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        match value {
            "" => Ok(None),
            address => address.parse::<SocketAddr>().map(Some).map_err(|_| {
                self.invalid(
                    key,
                    format!("expected an address like \"{example}\" or \"\" to disable {what}"),
                )
            }),
        }
    }

    fn http(&self, raw: &FileHttp) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            listen: self.listen("http.listen", &raw.listen, "127.0.0.1:8000", "HTTP")?,
            token: self.secret("http.token_file", &raw.token_file)?,
            tls: self.identity(["http.tls_cert", "http.tls_key"], &raw.tls_cert, &raw.tls_key)?,
            max_body_bytes: usize::try_from(raw.max_body_bytes).unwrap_or(usize::MAX),
        })
    }

    fn grpc(&self, raw: &FileGrpc) -> Result<GrpcConfig, ConfigError> {
        Ok(GrpcConfig {
            listen: self.listen("grpc.listen", &raw.listen, "127.0.0.1:8001", "gRPC")?,
        })
    }

    fn mqtt(&self, raw: &FileMqtt, node_id: &str) -> Result<Option<MqttConfig>, ConfigError> {
        if raw.url.is_empty() {
            return Ok(None);
        }
        let broker = broker(&raw.url).ok_or_else(|| {
            self.invalid(
                "mqtt.url",
                "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], or \"\" to disable MQTT",
            )
        })?;
        if raw.qos != 1 {
            // Requests and results are taken and sent at QoS 1 with PUBACK tracking: that is
            // what the at-least-once guarantee and the outbox are built on.
            return Err(self.invalid(
                "mqtt.qos",
                "expected 1 (at-least-once; QoS 0 and 2 are not supported)",
            ));
        }
        if !topic_safe(&raw.topic_prefix.replace('/', "_")) {
            return Err(self.invalid("mqtt.topic_prefix", "expected a topic without wildcards"));
        }
        let credentials = match raw.username.as_str() {
            "" => None,
            user => {
                let password = self.secret("mqtt.password_file", &raw.password_file)?;
                Some((user.to_string(), password.unwrap_or(Secret(String::new()))))
            }
        };
        Ok(Some(MqttConfig {
            broker,
            client_id: match raw.client_id.as_str() {
                "" => format!("onnxd-{node_id}"),
                id => id.to_string(),
            },
            credentials,
            ca: self.certificates("mqtt.ca_file", &raw.ca_file)?,
            identity: self.identity(
                ["mqtt.client_cert", "mqtt.client_key"],
                &raw.client_cert,
                &raw.client_key,
            )?,
            topic_prefix: raw.topic_prefix.clone(),
            share_group: raw.share_group.clone(),
            session_expiry_secs: raw.session_expiry_secs,
            max_payload_bytes: raw.max_payload_bytes,
            outbox_max_bytes: raw.outbox_max_bytes,
            outbox_ttl_secs: raw.outbox_ttl_secs,
        }))
    }

    fn cameras(&self, cameras: Vec<CameraConfig>) -> Result<Vec<CameraConfig>, ConfigError> {
        for (i, cam) in cameras.iter().enumerate() {
            if let Some(problem) = topic_problem(&cam.name) {
                return Err(self.invalid(
                    &format!("camera[{i}].name"),
                    format!("{:?} {problem}: it is a segment of MQTT topics", cam.name),
                ));
            }
            if cameras[..i].iter().any(|c| c.name == cam.name) {
                return Err(self.invalid(&format!("camera[{i}].name"), "camera names must be unique"));
            }
            if !(cam.fps > 0.0 && cam.fps.is_finite()) {
                return Err(self.invalid(&format!("camera[{i}].fps"), "expected a positive number"));
            }
        }
        Ok(cameras)
    }
}

impl Checker {
    /// `[homeassistant]`: a prefix that is a valid topic (no wildcards, no empty first or last
    /// level), labels not empty; enabled only with MQTT.
    fn homeassistant(
        &self,
        raw: HomeAssistantConfig,
        mqtt: bool,
    ) -> Result<HomeAssistantConfig, ConfigError> {
        let prefix = &raw.discovery_prefix;
        if let Some(problem) = topic_problem(prefix) {
            return Err(self.invalid("homeassistant.discovery_prefix", format!("{prefix:?} {problem}")));
        }
        if prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(self.invalid(
                "homeassistant.discovery_prefix",
                format!(
                    "{prefix:?}: expected a topic without a leading or trailing '/', like \"homeassistant\""
                ),
            ));
        }
        if let Some(i) = raw.labels.iter().position(|l| l.trim().is_empty()) {
            return Err(self.invalid(
                &format!("homeassistant.labels[{i}]"),
                "expected a label, got an empty string",
            ));
        }
        if raw.enabled && !mqtt {
            return Err(self.invalid(
                "homeassistant.enabled",
                "discovery is published over MQTT: set [mqtt] url, or enabled = false",
            ));
        }
        Ok(raw)
    }
}

/// The broker of an `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` URL (ports 1883 / 8883).
fn broker(url: &str) -> Option<Broker> {
    let (tls, rest) = match url.split_once("://")? {
        ("mqtts", rest) => (true, rest),
        ("mqtt", rest) => (false, rest),
        _ => return None,
    };
    let authority = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        (host, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None if tls => 8883,
        None => 1883,
    };
    (!host.is_empty() && !host.contains('/')).then(|| Broker {
        host: host.to_string(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests;
