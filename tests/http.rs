//! The HTTP API over a real socket: the daemon started in-process (real repository thread,
//! the axum app on 127.0.0.1:0), and requests from an HTTP client — JSON, binary and raw inference,
//! metadata, config, statistics, the repository extension, compression, the token, and every
//! bad input named by the HTTP issue.

mod common;
#[path = "common/detector.rs"]
mod detector;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use onnxd::config::Config;
use onnxd::daemon::Daemon;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret";
const MAX_BODY: usize = 1 << 20;

struct Server {
    address: SocketAddr,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    _dir: tempfile::TempDir,
}

fn copy_model(root: &Path, name: &str, file: &Path) {
    std::fs::create_dir_all(root.join(name).join("1")).unwrap();
    std::fs::copy(file, root.join(name).join("1/model.onnx")).unwrap();
}

/// The daemon in-process on a config of its own: the models below on 127.0.0.1:0, MQTT off.
fn start(token: Option<&str>) -> Server {
    start_with(token, the_models)
}

fn the_models(models: &Path) {
    copy_model(models, "digits", &common::models().join("digits/model.onnx"));
    for dtype in ["FP32", "BYTES", "BOOL", "INT64", "FP16"] {
        copy_model(
            models,
            &dtype.to_lowercase(),
            &common::fixture(&format!("dtype_{dtype}.onnx")),
        );
    }
    copy_model(models, "broken", &common::fixture("truncated.onnx"));
}

/// [`start`] with the repository `prepare` writes.
fn start_with(token: Option<&str>, prepare: impl FnOnce(&Path)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    prepare(&models);
    let mut config = format!(
        "node_id = \"t\"\nstate_dir = \"state\"\ndrain_secs = 5\n[repository]\npath = \"models\"\nsettle_ms = 50\n\
         [engine]\nort_library = {:?}\nintra_threads = 1\n\
         [http]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {MAX_BODY}\n[grpc]\nlisten = \"\"\n[mqtt]\nurl = \"\"\n",
        common::ort_library()
    );
    if let Some(token) = token {
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        config = config.replace("[http]\n", "[http]\ntoken_file = \"token\"\n");
    }
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
        client: reqwest::Client::new(),
        runtime,
        daemon: Some(daemon),
        _dir: dir,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            self.runtime.block_on(daemon.shutdown());
        }
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `{"error"}` of a non-200 reply.
    fn error(&self) -> String {
        assert_ne!(self.status, 200, "expected an error");
        self.json()["error"]
            .as_str()
            .expect("every non-200 carries {\"error\"}")
            .to_string()
    }
}

impl Server {
    fn send(&self, method: reqwest::Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.address))
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            Reply {
                status,
                headers,
                body: response.bytes().await.unwrap().to_vec(),
            }
        })
    }

    fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, &[], Vec::new())
    }

    fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, &[], body.to_string().into_bytes())
    }

    /// Posts a binary-framed request: JSON header, then `binary`.
    fn post_binary(&self, path: &str, header: &Value, binary: &[u8]) -> Reply {
        let mut body = header.to_string().into_bytes();
        let length = body.len().to_string();
        body.extend_from_slice(binary);
        self.send(
            reqwest::Method::POST,
            path,
            &[("Inference-Header-Content-Length", &length)],
            body,
        )
    }
}

/// Splits a binary response into its JSON header and the bytes of each output.
fn split_binary(reply: &Reply) -> (Value, Vec<Vec<u8>>) {
    let length: usize = reply.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let header: Value = serde_json::from_slice(&reply.body[..length]).unwrap();
    let mut rest = &reply.body[length..];
    let mut parts = Vec::new();
    for output in header["outputs"].as_array().unwrap() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        parts.push(rest[..size].to_vec());
        rest = &rest[size..];
    }
    assert!(rest.is_empty());
    (header, parts)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn health_metadata_config_and_stats() {
    let s = start(None);
    assert_eq!(s.get("/v2/health/live").status, 200);
    assert_eq!(s.get("/v2/health/ready").status, 200);
    let meta = s.get("/v2").json();
    assert_eq!(meta["name"], "onnxd");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    let model = s.get("/v2/models/digits").json();
    assert_eq!(model["versions"], json!(["1"]));
    assert_eq!(model["platform"], "onnxruntime_onnx");
    assert_eq!(
        model["inputs"][0],
        json!({"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]})
    );
    assert_eq!(
        s.get("/v2/models/digits/versions/1").json()["versions"],
        json!(["1"])
    );
    assert_eq!(s.get("/v2/models/digits/ready").status, 200);
    assert_eq!(s.get("/v2/models/digits/versions/1/ready").status, 200);
    assert_eq!(s.get("/v2/models/digits/versions/2/ready").status, 400);
    // An UNAVAILABLE model: readiness, metadata and config agree (400, Triton's "not
    // ready"), and each says why; inference is 503.
    for path in [
        "/v2/models/broken/ready",
        "/v2/models/broken",
        "/v2/models/broken/config",
    ] {
        let reply = s.get(path);
        assert_eq!(reply.status, 400, "{path}");
        assert!(
            reply.error().contains("truncated or corrupt"),
            "{path}: {}",
            reply.error()
        );
    }
    let request =
        json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    assert_eq!(s.post_json("/v2/models/broken/infer", &request).status, 503);
    // No sidecar: a model whose first dimension is symbolic batches up to 4 (Triton's default),
    // and the configuration says so (it used to say 64 whatever the model did).
    let config = s.get("/v2/models/digits/config").json();
    assert_eq!(config["max_batch_size"], 4);
    assert_eq!(config["dynamic_batching"]["max_queue_delay_microseconds"], 0);
    assert_eq!(
        config["instance_group"],
        json!([{"count": 1, "kind": "KIND_CPU"}])
    );
    assert_eq!(
        config["input"][0],
        json!({"name": "image", "data_type": "TYPE_FP32", "dims": [1, 8, 8]})
    );
    assert_eq!(
        s.get("/v2/models/bytes/config").json()["input"][0]["data_type"],
        "TYPE_STRING"
    );
    let request = serde_json::from_slice::<Value>(
        &std::fs::read(common::models().join("digits/sample-request.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(s.post_json("/v2/models/digits/infer", &request).status, 200);
    let stats = s.get("/v2/models/digits/stats").json();
    assert_eq!(stats["model_stats"][0]["inference_stats"]["success"]["count"], 1);
    assert_eq!(
        s.get("/v2/models/stats").json()["model_stats"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn json_binary_and_raw_inference_agree() {
    let s = start(None);
    let request: Value =
        serde_json::from_slice(&std::fs::read(common::models().join("digits/sample-request.json")).unwrap())
            .unwrap();
    let reply = s.post_json("/v2/models/digits/infer", &request);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let json_reply = reply.json();
    assert_eq!(json_reply["model_name"], "digits");
    assert_eq!(json_reply["model_version"], "1");
    assert_eq!(json_reply["id"], request["id"]);
    let probabilities: Vec<f32> = json_reply["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();

    let pixels: Vec<f32> = request["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let header = json!({
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": 256}}],
        "parameters": {"binary_data_output": true}
    });
    let reply = s.post_binary("/v2/models/digits/infer", &header, &f32_bytes(&pixels));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.headers["content-type"], "application/octet-stream");
    let (header, parts) = split_binary(&reply);
    assert_eq!(header["outputs"][0]["shape"], json!([1, 10]));
    assert_eq!(parts[0], f32_bytes(&probabilities));

    let reply = s.send(
        reqwest::Method::POST,
        "/v2/models/digits/infer",
        &[("Inference-Header-Content-Length", "0")],
        f32_bytes(&pixels),
    );
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(split_binary(&reply).1[0], f32_bytes(&probabilities));

    // Requested outputs: one binary, one JSON.
    let header = json!({
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}],
        "outputs": [{"name": "z", "parameters": {"binary_data": true}}, {"name": "y"}]
    });
    let reply = s.post_json("/v2/models/int64/infer", &header);
    let length: usize = reply.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let out: Value = serde_json::from_slice(&reply.body[..length]).unwrap();
    assert_eq!(out["outputs"][0]["name"], "z");
    assert_eq!(out["outputs"][1]["data"], json!([1, 2, 3, 4, 5, 6]));
    let z: Vec<i64> = reply.body[length..]
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(z, vec![1, 4, 2, 5, 3, 6]);
}

#[test]
fn bytes_bool_and_fp16_travel_binary() {
    let s = start(None);
    let mut wire = Vec::new();
    for element in ["a", "", "ünï", "d", "e", "f"] {
        wire.extend_from_slice(&(element.len() as u32).to_le_bytes());
        wire.extend_from_slice(element.as_bytes());
    }
    let header = json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "BYTES", "parameters": {"binary_data_size": wire.len()}}],
                        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]});
    let reply = s.post_binary("/v2/models/bytes/infer", &header, &wire);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(split_binary(&reply).1[0], wire);
    let header = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}],
                        "parameters": {"binary_data_output": true}});
    assert_eq!(
        split_binary(&s.post_binary("/v2/models/bool/infer", &header, &[1, 0, 1])).1[0],
        vec![1, 0, 1]
    );
    let halves: Vec<u8> = [1.5f32, -2.0, 0.25]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let header = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "parameters": {"binary_data_size": 6}}],
                        "parameters": {"binary_data_output": true}});
    assert_eq!(
        split_binary(&s.post_binary("/v2/models/fp16/infer", &header, &halves)).1[0],
        halves
    );
}

#[test]
fn compressed_bodies_in_and_out() {
    let s = start(None);
    let request = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(request.to_string().as_bytes()).unwrap();
    let reply = s.send(
        reqwest::Method::POST,
        "/v2/models/fp32/infer",
        &[("Content-Encoding", "gzip")],
        gz.finish().unwrap(),
    );
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(request.to_string().as_bytes()).unwrap();
    let reply = s.send(
        reqwest::Method::POST,
        "/v2/models/fp32/infer",
        &[("Content-Encoding", "deflate"), ("Accept-Encoding", "gzip")],
        zlib.finish().unwrap(),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&reply.body[..]), &mut text).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["outputs"][0]["data"],
        json!([1.0, 2.0, 3.0])
    );
}

/// A model with `[output]` post-processing reads all its outputs, in its order, whatever
/// outputs the request asks for; the reply carries those asked for (found by review: the SSD
/// post-processing ran on the requested subset and failed).
#[test]
fn post_processing_reads_every_output_whatever_the_request_asks_for() {
    let s = start_with(None, |models| detector::install(models, "detector"));
    let image =
        json!({"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![0.5; 3 * 32 * 32]});
    let asked =
        json!({"inputs": [image], "outputs": [{"name": "num_detections"}, {"name": "detection_scores"}]});
    let reply = s.post_json("/v2/models/detector/infer", &asked);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(
        common::strings(&body["outputs"], "name"),
        ["num_detections", "detection_scores"]
    );
    let labels = common::strings(&body["result"], "label");
    assert_eq!(labels, detector::BOXES.map(|(label, _, _)| label), "{body}");
    // Names are still checked.
    let twice = json!({"inputs": [asked["inputs"][0]], "outputs": [{"name": "num_detections"}, {"name": "num_detections"}]});
    let reply = s.post_json("/v2/models/detector/infer", &twice);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), "output 'num_detections' is requested twice");
}

#[test]
fn every_bad_input_gets_a_json_error() {
    let s = start(Some(TOKEN));
    let auth = [("Authorization", "Bearer s3cret")];
    let post = |path: &str, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut all = auth.to_vec();
        all.extend_from_slice(headers);
        s.send(reqwest::Method::POST, path, &all, body)
    };
    let framed = |header: &Value, binary: &[u8], declared: Option<usize>| {
        let mut body = header.to_string().into_bytes();
        let length = declared.unwrap_or(body.len()).to_string();
        body.extend_from_slice(binary);
        post(
            "/v2/models/fp32/infer",
            &[("Inference-Header-Content-Length", &length)],
            body,
        )
    };
    let binary_input = |size: usize| json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        ("no token", s.get("/v2/models/fp32"), 401, "bearer token"),
        (
            "wrong token",
            s.send(
                reqwest::Method::GET,
                "/v2/models/fp32",
                &[("Authorization", "Bearer nope")],
                Vec::new(),
            ),
            401,
            "bearer token",
        ),
        (
            "missing binary section",
            framed(&binary_input(12), &[], None),
            400,
            "binary_data_size is 12 but only 0 bytes",
        ),
        (
            "short binary section",
            framed(&binary_input(12), &[0; 8], None),
            400,
            "only 8 bytes",
        ),
        (
            "header length > body",
            framed(&binary_input(12), &[0; 12], Some(100_000)),
            400,
            "Inference-Header-Content-Length is 100000",
        ),
        (
            "bad header length",
            post(
                "/v2/models/fp32/infer",
                &[("Inference-Header-Content-Length", "x")],
                b"{}".to_vec(),
            ),
            400,
            "not a number",
        ),
        (
            "binary size ≠ shape",
            framed(&binary_input(8), &[0; 8], None),
            400,
            "raw buffer has 8 bytes but shape [1, 3] of FP32 needs 12 bytes",
        ),
        (
            "unknown datatype",
            post(
                "/v2/models/fp32/infer",
                &[],
                json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FLOAT32", "data": [1, 2, 3]}]})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "unknown datatype 'FLOAT32'",
        ),
        (
            "shape/data mismatch",
            post(
                "/v2/models/fp32/infer",
                &[],
                json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "data has 3 elements but shape [2, 3]",
        ),
        (
            "wrong shape for the model",
            post(
                "/v2/models/fp32/infer",
                &[],
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
                    .to_string()
                    .into_bytes(),
            ),
            400,
            "input 'x' has shape [1, 2] but the model expects [N, 3]",
        ),
        (
            "malformed JSON",
            post("/v2/models/fp32/infer", &[], b"{\"inputs\": [".to_vec()),
            400,
            "malformed inference request JSON",
        ),
        (
            "unknown model",
            post("/v2/models/nope/infer", &[], b"{}".to_vec()),
            404,
            "unknown model 'nope'",
        ),
        (
            "unknown version",
            post("/v2/models/fp32/versions/9/infer", &[], b"{}".to_vec()),
            404,
            "no ready version 9",
        ),
        (
            "body over limit",
            post("/v2/models/fp32/infer", &[], vec![b' '; MAX_BODY + 1]),
            413,
            "cannot read the request body",
        ),
        (
            "invalid gzip",
            post(
                "/v2/models/fp32/infer",
                &[("Content-Encoding", "gzip")],
                b"definitely not gzip".to_vec(),
            ),
            400,
            "cannot read the request body",
        ),
        ("unknown route", s.get("/v3/things"), 404, "no such endpoint"),
    ];
    for (what, reply, status, message) in cases {
        assert_eq!(
            reply.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let error = reply.error();
        assert!(error.contains(message), "{what}: {error}");
    }
    // Health needs no token; everything else works with it.
    assert_eq!(s.get("/v2/health/ready").status, 200);
    let ok = post(
        "/v2/models/fp32/infer",
        &[],
        json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(ok.status, 200);
    let failures = s
        .send(reqwest::Method::GET, "/v2/models/fp32/stats", &auth, Vec::new())
        .json();
    assert!(
        failures["model_stats"][0]["inference_stats"]["fail"]["count"]
            .as_u64()
            .unwrap()
            >= 3
    );
}

#[test]
fn repository_index_load_and_unload() {
    let s = start(None);
    let reply = s.send(reqwest::Method::POST, "/v2/repository/index", &[], Vec::new());
    assert_eq!(reply.status, 200);
    let index = reply.json();
    let names = common::strings(&index, "name");
    assert!(names.contains(&"digits"), "{names:?}");
    assert_eq!(index[0]["state"], "READY");
    let unload = s.post_json(
        "/v2/repository/models/digits/unload",
        &json!({"parameters": {"unload_dependents": false}}),
    );
    assert_eq!(unload.status, 200, "{}", String::from_utf8_lossy(&unload.body));
    assert_eq!(s.get("/v2/models/digits/ready").status, 400);
    assert_eq!(s.get("/v2/models/digits").error(), "unknown model 'digits'");
    let load = s.post_json("/v2/repository/models/digits/load", &json!({}));
    assert_eq!(load.status, 200, "{}", String::from_utf8_lossy(&load.body));
    assert_eq!(s.get("/v2/models/digits/ready").status, 200);
    let missing = s.post_json("/v2/repository/models/nothere/load", &json!({}));
    assert_eq!(missing.status, 400);
    assert!(missing.error().contains("failed to load 'nothere'"));
}

#[test]
fn metrics_follow_prometheus_conventions() {
    let s = start(None);
    let request = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(s.post_json("/v2/models/fp32/infer", &request).status, 200);
    assert_eq!(
        s.post_json("/v2/models/fp32/infer", &json!({"inputs": []}))
            .status,
        400
    );
    let expiring = json!({"parameters": {"timeout": 1},
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let expired = s.post_json("/v2/models/fp32/infer", &expiring);
    assert_eq!(expired.status, 503);
    assert!(expired.error().contains("expired"), "{}", expired.error());
    assert_eq!(
        s.post_json("/v2/models/fp32/versions/7/infer", &request).status,
        404
    );
    let reply = s.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(reply.body).unwrap();
    for needle in [
        "onnxd_inference_request_success_total{model=\"fp32\",version=\"1\"} 1",
        "onnxd_inference_request_failure_total{model=\"fp32\",reason=\"bad_input\",version=\"1\"} 1",
        "onnxd_inference_request_failure_total{model=\"fp32\",reason=\"expired\",version=\"1\"} 1",
        "onnxd_inference_request_failure_total{model=\"fp32\",reason=\"unknown_model\",version=\"\"} 1",
        "onnxd_inference_duration_seconds_total{model=\"fp32\",phase=\"request\",version=\"1\"}",
        "onnxd_model_load_duration_seconds{model=\"fp32\",version=\"1\"}",
        "onnxd_inference_pending_requests{model=\"fp32\",version=\"1\"} 0",
        "onnxd_model_state{model=\"fp32\",state=\"READY\"} 1",
        "onnxd_model_info{engine=\"onnxruntime\",model=\"fp32\",provider=\"CPUExecutionProvider\",version=\"1\"} 1",
        "onnxd_model_reloads_total{model=\"fp32\",result=\"ok\"} 1",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    common::promtool_check(&text);
    // Every metric family has help text and a type.
    for name in text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
    {
        // A histogram's samples are its family name with _bucket, _sum or _count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# HELP {family} "))
                || text.contains(&format!("# HELP {} ", family.trim_end_matches("_total"))),
            "{name} has no help"
        );
    }
}

/// A raw body (`Inference-Header-Content-Length: 0`) is decoded against a version's signature:
/// it must run on that same version. Versions alternate between `x [N, 4]` and `x [N, 6]` while
/// raw requests of 240,000 floats flow (large, so decoding takes long enough for swaps to land
/// in it); each version decodes them to another shape. A request
/// decoded for one version and run on another would fail on its shape — or answer with a row
/// count that does not match the version that answered.
#[test]
fn raw_requests_run_on_the_version_they_were_decoded_for_while_signatures_swap() {
    let cols = |version: u64| if version % 2 == 1 { 4 } else { 6 };
    let offset = |version: u64| version as f32 * 1000.0;
    let s = start_with(None, |models| {
        std::fs::create_dir_all(models.join("sum/1")).unwrap();
        std::fs::write(models.join("sum/1/model.onnx"), common::sum_model(4, offset(1))).unwrap();
    });
    const FLOATS: usize = 240_000;
    let body = f32_bytes(&vec![1.0; FLOATS]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (address, body, stop) = (s.address, body.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let (mut ok, mut failures) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = client
                        .post(format!("http://{address}/v2/models/sum/infer"))
                        .header("Inference-Header-Content-Length", "0")
                        .body(body.clone())
                        .send()
                        .unwrap();
                    let status = reply.status().as_u16();
                    let length: Option<usize> = reply
                        .headers()
                        .get("inference-header-content-length")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    let bytes = reply.bytes().unwrap();
                    match (status, length) {
                        (200, Some(length)) => {
                            let header: Value = serde_json::from_slice(&bytes[..length]).unwrap();
                            let version: u64 = header["model_version"].as_str().unwrap().parse().unwrap();
                            let values: Vec<f32> = bytes[length..]
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                                .collect();
                            let want =
                                vec![cols(version) as f32 + offset(version); FLOATS / cols(version) as usize];
                            if values == want {
                                ok += 1;
                            } else {
                                failures.push(format!("version {version} answered {} values", values.len()));
                            }
                        }
                        _ => failures.push(String::from_utf8_lossy(&bytes).into_owned()),
                    }
                }
                (ok, failures)
            })
        })
        .collect();
    for version in 2..=60u64 {
        let dir = s._dir.path().join(format!("models/sum/{version}.tmp"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("model.onnx"),
            common::sum_model(cols(version), offset(version)),
        )
        .unwrap();
        std::fs::rename(&dir, s._dir.path().join(format!("models/sum/{version}"))).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.get("/v2/models/sum").json()["versions"] != json!([version.to_string()]) {
            assert!(
                std::time::Instant::now() < until,
                "version {version} never served"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for client in clients {
        let (n, f) = client.join().unwrap();
        ok += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(3)]
    );
    assert!(ok > 100, "only {ok} requests ran during the swaps");
}
