//! The daemon in-process on a config of its own (repository in a temporary directory, HTTP on
//! 127.0.0.1:0, MQTT off), a blocking HTTP client for it, inference load from client threads,
//! and a snapshot of the repository to prove a refusal changed nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onnxd::config::Config;
use onnxd::daemon::Daemon;
use serde_json::Value;

use crate::common;

/// Settings of a test daemon.
pub struct Options {
    /// Bearer token, if any.
    pub token: Option<&'static str>,
    /// `repository.max_upload_bytes`.
    pub max_upload_bytes: u64,
    /// `repository.keep_versions`.
    pub keep_versions: usize,
    /// A trusted minisign public key: signatures required.
    pub trusted_key: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: None,
            max_upload_bytes: 64 << 20,
            keep_versions: 2,
            trusted_key: None,
        }
    }
}

/// A running daemon.
pub struct Server {
    /// Its HTTP address.
    pub address: SocketAddr,
    /// The repository.
    pub models: PathBuf,
    token: Option<&'static str>,
    runtime: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    _dir: tempfile::TempDir,
}

/// An HTTP answer.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `{"error"}` of a non-2xx answer.
    pub fn error(&self) -> String {
        assert!(
            self.status >= 400,
            "expected an error, got {}: {}",
            self.status,
            self.text()
        );
        self.json()["error"].as_str().expect("{\"error\"}").to_string()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The example digits model (file, sidecar, labels) as version 1 of `<models>/<name>`.
pub fn digits_repository(models: &Path, name: &str, model_file: &[u8]) {
    let dir = models.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("1/model.onnx"), model_file).unwrap();
    for file in ["model.toml", "labels.txt"] {
        std::fs::copy(common::models().join("digits").join(file), dir.join(file)).unwrap();
    }
}

impl Server {
    /// Starts a daemon on the repository `prepare` writes.
    pub fn start(options: Options, prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        prepare(&models);
        let mut repository = format!(
            "[repository]\npath = \"models\"\nsettle_ms = 50\nmax_upload_bytes = {}\nkeep_versions = {}\n",
            options.max_upload_bytes, options.keep_versions
        );
        if let Some(key) = &options.trusted_key {
            repository.push_str(&format!(
                "require_signatures = true\ntrusted_keys = [\"{key}\"]\n"
            ));
        }
        // Model files (10 KB and more) are bigger than any other body: uploads are bounded by
        // max_upload_bytes, not by max_body_bytes.
        let mut http = "[http]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 8192\n".to_string();
        if let Some(token) = options.token {
            std::fs::write(dir.path().join("token"), token).unwrap();
            http.push_str("token_file = \"token\"\n");
        }
        let config = format!(
            "node_id = \"t\"\nstate_dir = \"state\"\ndrain_secs = 5\n{repository}\
             [engine]\nort_library = {:?}\nintra_threads = 1\n{http}[grpc]\nlisten = \"\"\n[mqtt]\nurl = \"\"\n",
            common::ort_library()
        );
        std::fs::write(dir.path().join("onnxd.toml"), config).unwrap();
        let config = Config::load(&dir.path().join("onnxd.toml")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let daemon = runtime.block_on(Daemon::start(config)).unwrap();
        Server {
            address: daemon.http_address().unwrap(),
            models,
            token: options.token,
            runtime,
            daemon: Some(daemon),
            _dir: dir,
        }
    }

    /// A request with the token (when the server has one).
    pub fn send(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> Reply {
        self.send_with(method, path, body, self.token)
    }

    /// A request with the given token.
    pub fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Reply {
        let client = reqwest::Client::new();
        let mut request = client
            .request(method, format!("http://{}{path}", self.address))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            Reply {
                status: response.status().as_u16(),
                body: response.bytes().await.unwrap().to_vec(),
            }
        })
    }

    /// `GET`.
    pub fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, Vec::new())
    }

    /// `POST` with an empty body.
    pub fn post(&self, path: &str) -> Reply {
        self.send(reqwest::Method::POST, path, Vec::new())
    }

    /// Uploads `file` as `model` version `version` (with `extras`) and commits it.
    pub fn deliver(
        &self,
        model: &str,
        version: u64,
        file: &[u8],
        extras: &[(&str, &[u8])],
        query: &str,
    ) -> Reply {
        let base = format!("/v2/repository/models/{model}/versions/{version}");
        let put = self.send(reqwest::Method::PUT, &base, file.to_vec());
        assert_eq!(put.status, 201, "{}", put.text());
        for (name, bytes) in extras {
            let put = self.send(
                reqwest::Method::PUT,
                &format!("{base}/files/{name}"),
                bytes.to_vec(),
            );
            assert_eq!(put.status, 201, "{}", put.text());
        }
        self.post(&format!("{base}/commit?sha256={}{query}", sha256(file)))
    }

    /// The model's rollout status (`rollout` of its statistics).
    pub fn rollout(&self, model: &str) -> Value {
        self.get(&format!("/v2/models/{model}/stats")).json()["rollout"].clone()
    }

    /// Waits until the model's rollout status is one of `states`; returns it.
    pub fn wait_rollout(&self, model: &str, version: u64, states: &[&str], timeout: Duration) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let status = self.rollout(model);
            let state = status["state"].as_str().unwrap_or_default();
            if status["version"] == version && states.contains(&state) {
                return status;
            }
            assert!(
                Instant::now() < until,
                "no rollout state {states:?} for version {version}: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The version that answers an inference request for `model`.
    pub fn served_version(&self, model: &str) -> String {
        let reply = self.send(
            reqwest::Method::POST,
            &format!("/v2/models/{model}/infer"),
            sample_request(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["model_version"].as_str().unwrap().to_string()
    }

    /// The daemon's metrics text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").text()
    }

    /// Starts `threads` clients sending inference requests to `model` until stopped.
    pub fn load(&self, model: &str, threads: usize) -> Load {
        Load::start(self.address, model, self.token, threads)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            self.runtime.block_on(daemon.shutdown());
        }
    }
}

/// The example model's sample request.
pub fn sample_request() -> Vec<u8> {
    std::fs::read(common::models().join("digits/sample-request.json")).unwrap()
}

/// A request with an 8×8 image of random pixels.
pub fn random_request() -> Vec<u8> {
    let data: Vec<f32> = (0..64).map(|_| fastrand::f32()).collect();
    serde_json::json!({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}]})
        .to_string()
        .into_bytes()
}

/// The SHA-256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file below the repository but the staging area, with its SHA-256.
pub fn snapshot(models: &Path) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![models.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_name() == ".onnxd-staging" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(models).unwrap().to_path_buf(), sha256(&bytes));
            }
        }
    }
    files
}

/// Inference load from client threads: answers by version, failures with their text.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Answers by `model_version`.
    pub versions: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Failed requests.
    pub failures: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(address: SocketAddr, model: &str, token: Option<&'static str>, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let versions: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let url = format!("http://{address}/v2/models/{model}/infer");
        let threads = (0..threads)
            .map(|_| {
                let (stop, versions, failures, url) =
                    (stop.clone(), versions.clone(), failures.clone(), url.clone());
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let mut request = client.post(&url).body(random_request());
                        if let Some(token) = token {
                            request = request.bearer_auth(token);
                        }
                        match request.send() {
                            Ok(r) if r.status() == 200 => {
                                let body: Value = r.json().unwrap();
                                let version = body["model_version"].as_str().unwrap_or("?").to_string();
                                *versions.lock().unwrap().entry(version).or_default() += 1;
                            }
                            Ok(r) => failures.lock().unwrap().push(format!(
                                "{}: {}",
                                r.status(),
                                r.text().unwrap_or_default()
                            )),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            versions,
            failures,
        }
    }

    /// Answers so far from `version`.
    pub fn answers_from(&self, version: &str) -> u64 {
        self.versions.lock().unwrap().get(version).copied().unwrap_or(0)
    }

    /// Stops the clients; returns answers by version and the failures.
    pub fn stop(self) -> (BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let versions = self.versions.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (versions, failures)
    }
}
