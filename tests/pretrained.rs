//! Real pretrained models, dropped into a repository exactly as their PyPI wheels ship them
//! (no sidecar): an Ultralytics YOLOv8n detector exported with dynamic H/W, PaddleOCR's text
//! detection, recognition and angle classification, Silero's voice-activity models (If → Pad →
//! STFT on the audio, a scalar sample-rate input, dimensions with neither a value nor a name)
//! and Magika's file-type classifier. The daemon must load every one of them and answer a
//! realistic request over HTTP as onnxruntime-Python does; tract serves the ones it can run and
//! refuses the others by name while the rest keep serving.

mod common;

use std::path::Path;
use std::time::Duration;

use onnxd::config::Config;
use onnxd::daemon::Daemon;
use onnxd::tensor::approx_eq;
use onnxd::tensor::kserve::InferResponseBody;
use serde_json::Value;

struct Case {
    case: String,
    model: String,
}

/// The repository and reference requests tests/fixtures/pretrained.py builds.
fn fixtures() -> (tempfile::TempDir, Vec<Case>) {
    let (dir, manifest) = common::python_fixtures(
        "pretrained.py",
        "the pretrained-model wheels (scripts/setup-test)",
    );
    let cases = manifest
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            case: c["case"].as_str().unwrap().to_string(),
            model: c["model"].as_str().unwrap().to_string(),
        })
        .collect();
    (dir, cases)
}

struct Server {
    runtime: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    base: String,
    client: reqwest::Client,
}

impl Server {
    fn start(dir: &Path, engine: &str) -> Server {
        let config = format!(
            "node_id = \"t\"\nstate_dir = \"state-{engine}\"\n[repository]\npath = \"repo\"\nwatch = false\n\
             [engine]\ndefault = \"{engine}\"\nort_library = {:?}\nintra_threads = 1\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[grpc]\nlisten = \"\"\n[mqtt]\nurl = \"\"\n",
            common::ort_library()
        );
        let file = dir.join(format!("onnxd-{engine}.toml"));
        std::fs::write(&file, config).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let daemon = runtime
            .block_on(Daemon::start(Config::load(&file).unwrap()))
            .unwrap();
        let base = format!("http://{}", daemon.http_address().unwrap());
        Server {
            runtime,
            daemon: Some(daemon),
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    fn request(&self, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let request = match body {
            Some(body) => self.client.post(url).body(body),
            None => self.client.get(url),
        };
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        })
    }

    /// The model's entry in the repository index (state, and the reason when not READY).
    fn model_state(&self, model: &str) -> Value {
        let (status, index) = self.request("/v2/repository/index", Some(b"{}".to_vec()));
        assert_eq!(status, 200, "{index}");
        let entry = index.as_array().unwrap().iter().find(|m| m["name"] == model);
        entry.cloned().unwrap_or(Value::Null)
    }

    /// Sends the case's request; compares the outputs with onnxruntime-Python's.
    fn answers_like_the_reference(&self, dir: &Path, case: &Case) -> Result<(), String> {
        let request = std::fs::read(dir.join(format!("{}.request.json", case.case))).unwrap();
        let (status, reply) = self.request(&format!("/v2/models/{}/infer", case.model), Some(request));
        if status != 200 {
            return Err(format!("HTTP {status}: {reply}"));
        }
        let got: InferResponseBody = serde_json::from_value(reply).map_err(|e| e.to_string())?;
        let mut expected: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{}.expected.json", case.case))).unwrap())
                .unwrap();
        expected["model_name"] = case.model.clone().into();
        let expected: InferResponseBody = serde_json::from_value(expected).unwrap();
        assert_eq!(got.outputs.len(), expected.outputs.len(), "{}", case.case);
        for want in &expected.outputs {
            let have = got
                .outputs
                .iter()
                .find(|o| o.name == want.name)
                .ok_or_else(|| format!("output {} missing", want.name))?;
            approx_eq(&have.to_tensor().unwrap(), &want.to_tensor().unwrap(), 1e-3, 1e-4)
                .map_err(|e| format!("output {}: {e}", want.name))?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            self.runtime.block_on(daemon.shutdown());
        }
    }
}

#[test]
fn pretrained_models_from_pypi_wheels_serve_as_shipped() {
    let (dir, cases) = fixtures();
    let server = Server::start(dir.path(), "auto");
    for case in &cases {
        let state = server.model_state(&case.model);
        assert_eq!(state["state"], "READY", "{}: {state}", case.model);
        server
            .answers_like_the_reference(dir.path(), case)
            .unwrap_or_else(|e| panic!("{} ({}): {e}", case.case, case.model));
    }
}

#[test]
fn tract_serves_the_pretrained_models_it_can_run_and_names_why_not_the_others() {
    // What tract 0.21 runs of these (found by this test; a change either way is news).
    const TRACT_RUNS: &[&str] = &[];
    let (dir, cases) = fixtures();
    let server = Server::start(dir.path(), "tract");
    for case in &cases {
        let state = server.model_state(&case.model);
        let outcome = server.answers_like_the_reference(dir.path(), case);
        eprintln!("{} in tract: {outcome:?} {state}", case.case);
        if TRACT_RUNS.contains(&case.model.as_str()) {
            assert_eq!(state["state"], "READY", "{}: {state}", case.model);
            outcome.unwrap_or_else(|e| panic!("{} in tract: {e}", case.case));
        } else {
            // Refused at load, by name, with tract's reason; the request says so too.
            assert_eq!(state["state"], "UNAVAILABLE", "{}: {state}", case.model);
            let reason = state["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("tract cannot load the model"),
                "{}: {reason}",
                case.model
            );
            let error = outcome.expect_err("refused models cannot answer");
            assert!(error.contains("HTTP 503"), "{}: {error}", case.case);
        }
    }
}
