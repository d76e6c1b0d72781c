//! The `onnxd` binary end to end: `inspect`, `infer` on every fixture through every engine
//! that can run it (outputs compared with onnxruntime-Python's), the clean error of every bad
//! input, config errors and the daemon's start/stop.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::process::Onnxd;
use onnxd::conformance::compare;
use onnxd::tensor::kserve::InferResponseBody;
use serde_json::{json, Value};

fn onnxd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnxd"))
        .args(args)
        .env("ORT_DYLIB_PATH", common::ort_library())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run onnxd")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `infer` and returns the response, failing with onnxd's stderr.
fn infer_ok(model: &Path, inputs: &[&str], engine: &str) -> InferResponseBody {
    let mut args = vec!["infer", model.to_str().unwrap(), "--engine", engine];
    for i in inputs {
        args.extend(["-i", i]);
    }
    let out = onnxd(&args);
    assert!(
        out.status.success(),
        "infer {} --engine {engine} failed: {}",
        model.display(),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("V2 response JSON")
}

/// Runs `infer`, expects failure, and returns stderr.
fn infer_err(model: &Path, inputs: &[&str], engine: &str) -> String {
    let mut args = vec!["infer", model.to_str().unwrap(), "--engine", engine];
    for i in inputs {
        args.extend(["-i", i]);
    }
    let out = onnxd(&args);
    assert!(
        !out.status.success(),
        "infer {} --engine {engine} should fail",
        model.display()
    );
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "not a clean error: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    err
}

fn assert_matches_reference(name: &str, engine: &str) {
    let model = common::fixture(&format!("{name}.onnx"));
    let request = common::fixture(&format!("{name}.request.json"));
    let expected: InferResponseBody = serde_json::from_value({
        let mut v: Value = serde_json::from_slice(
            &std::fs::read(common::fixture(&format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        v["model_name"] = json!(name);
        v
    })
    .unwrap();
    let got = infer_ok(&model, &[request.to_str().unwrap()], engine);
    assert_eq!(got.outputs.len(), expected.outputs.len(), "{name} on {engine}");
    for (g, e) in got.outputs.iter().zip(&expected.outputs) {
        assert_eq!(g.name, e.name);
        let (g, e) = (g.to_tensor().unwrap(), e.to_tensor().unwrap());
        compare(&g, &e).unwrap_or_else(|why| panic!("{name} on {engine}, output differs: {why}"));
    }
}

/// `model` fails in engine `failing` with an error containing each of `expected`, and `auto`
/// serves it with the other engine, `serving`.
fn assert_fallback(model: &Path, request: &Path, failing: &str, expected: &[&str], serving: &str) {
    let err = infer_err(model, &[request.to_str().unwrap()], failing);
    assert!(expected.iter().all(|e| err.contains(e)), "{failing}: {err}");
    let auto = infer_ok(model, &[request.to_str().unwrap()], "auto");
    assert_eq!(auto.parameters.unwrap()["engine"], serving);
}

const DTYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
    "BYTES",
];

#[test]
fn every_dtype_matches_onnxruntime_python_in_both_engines() {
    for dtype in DTYPES {
        for engine in ["ort", "tract"] {
            assert_matches_reference(&format!("dtype_{dtype}"), engine);
        }
    }
}

#[test]
fn numeric_fixtures_match_onnxruntime_python_in_both_engines() {
    for name in ["dynamic_batch", "scalar_ops", "cnn"] {
        for engine in ["ort", "tract", "auto"] {
            assert_matches_reference(name, engine);
        }
    }
}

#[test]
fn bf16_runs_in_onnxruntime_and_fails_cleanly_in_tract() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("bf16.json");
    let values = [1.5, -0.25, 3.0, 0.0, 1024.0, -2.0];
    std::fs::write(
        &request,
        json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "BF16", "data": values}]}).to_string(),
    )
    .unwrap();
    let model = common::fixture("dtype_BF16.onnx");
    let got = infer_ok(&model, &[request.to_str().unwrap()], "ort");
    assert_eq!(got.outputs[0].data, Some(json!(values)));
    assert_eq!(got.outputs[1].shape, vec![3, 2]);
    assert_eq!(
        got.outputs[1].data,
        Some(json!([1.5, 0.0, -0.25, 1024.0, 3.0, -2.0]))
    );
    assert_fallback(&model, &request, "tract", &["tract has no BF16"], "onnxruntime");
}

#[test]
fn op_tract_lacks_runs_in_onnxruntime_and_auto_picks_it() {
    assert_matches_reference("unique", "ort");
    let model = common::fixture("unique.onnx");
    let request = common::fixture("unique.request.json");
    assert_fallback(
        &model,
        &request,
        "tract",
        &["tract cannot load the model", "Unique"],
        "onnxruntime",
    );
}

#[test]
fn model_onnxruntime_refuses_runs_in_tract_and_auto_falls_back() {
    assert_matches_reference("future_opset", "tract");
    let model = common::fixture("future_opset.onnx");
    let request = common::fixture("future_opset.request.json");
    assert_fallback(
        &model,
        &request,
        "ort",
        &["onnxruntime cannot load the model", "opset"],
        "tract",
    );
    assert_matches_reference("future_opset", "auto");
}

#[test]
fn zipmap_outputs_are_refused_as_not_expressible() {
    let model = common::fixture("zipmap.onnx");
    let request = common::fixture("dynamic_batch.request.json");
    for engine in ["ort", "tract", "auto"] {
        let err = infer_err(&model, &[request.to_str().unwrap()], engine);
        assert!(
            err.contains("model not supported by onnxd: output 'y' is a sequence, map or optional value"),
            "{err}"
        );
    }
}

#[test]
fn broken_model_files_get_clear_errors_in_every_engine() {
    let request = common::fixture("dynamic_batch.request.json");
    let cases = [
        ("empty.onnx", "the file is empty"),
        ("truncated.onnx", "truncated or corrupt"),
        ("corrupt.onnx", "truncated or corrupt"),
        ("not_onnx.onnx", "not an ONNX model"),
    ];
    for (file, expected) in cases {
        let model = common::fixture(file);
        for engine in ["ort", "tract", "auto"] {
            let err = infer_err(&model, &[request.to_str().unwrap()], engine);
            assert!(
                err.contains(file) && err.contains(expected),
                "{file} on {engine}: {err}"
            );
        }
    }
    let err = infer_err(
        Path::new("/nonexistent/model.onnx"),
        &[request.to_str().unwrap()],
        "auto",
    );
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn missing_ort_library_is_named_and_auto_falls_back_to_tract() {
    let model = common::fixture("dynamic_batch.onnx");
    let request = common::fixture("dynamic_batch.request.json");
    let out = onnxd(&[
        "infer",
        model.to_str().unwrap(),
        "-i",
        request.to_str().unwrap(),
        "--engine",
        "ort",
        "--ort-library",
        "/nonexistent/libonnxruntime.so",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("engine.ort_library /nonexistent/libonnxruntime.so does not exist"),
        "{}",
        stderr(&out)
    );
    let out = onnxd(&[
        "infer",
        model.to_str().unwrap(),
        "-i",
        request.to_str().unwrap(),
        "--ort-library",
        "/nonexistent/libonnxruntime.so",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let response: InferResponseBody = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response.parameters.unwrap()["engine"], "tract");
}

/// The default build speaks ONNX Runtime's C API 31: an older library (1.17.3, as JetPack
/// ships) is refused with both versions named, and `auto` serves the model with tract.
#[cfg(feature = "ort-api-31")]
#[test]
fn an_older_ort_library_is_refused_with_its_version_and_auto_falls_back_to_tract() {
    let model = common::fixture("dynamic_batch.onnx");
    let request = common::fixture("dynamic_batch.request.json");
    let old = common::ort_library_1_17();
    let run = |engine: &str| {
        onnxd(&[
            "infer",
            model.to_str().unwrap(),
            "-i",
            request.to_str().unwrap(),
            "--engine",
            engine,
            "--ort-library",
            old.to_str().unwrap(),
        ])
    };
    let refused = run("ort");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("expected version >= '1.31.x', but got '1.17.3'"),
        "{}",
        stderr(&refused)
    );
    let served = run("auto");
    assert!(served.status.success(), "{}", stderr(&served));
    let response: InferResponseBody = serde_json::from_slice(&served.stdout).unwrap();
    assert_eq!(response.parameters.unwrap()["engine"], "tract");
}

#[test]
fn bad_inputs_get_errors_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("dynamic_batch.onnx");
    let x = |shape: Value, datatype: &str, data: Value| json!({"name": "x", "shape": shape, "datatype": datatype, "data": data});
    let cases = [
        (
            "unknown_name",
            json!({"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
            "unknown input 'nope'; the model's inputs are: x (FP32 [batch, 4])",
        ),
        (
            "missing",
            json!({"inputs": []}),
            "missing input 'x' (FP32 [batch, 4])",
        ),
        (
            "dtype",
            json!({"inputs": [x(json!([1, 4]), "INT64", json!([1, 2, 3, 4]))]}),
            "input 'x' is INT64 but the model expects FP32",
        ),
        (
            "shape",
            json!({"inputs": [x(json!([1, 5]), "FP32", json!([1, 2, 3, 4, 5]))]}),
            "input 'x' has shape [1, 5] but the model expects [batch, 4]",
        ),
        (
            "length",
            json!({"inputs": [x(json!([2, 4]), "FP32", json!([1, 2, 3]))]}),
            "data has 3 elements but shape [2, 4] of FP32 needs 8 elements",
        ),
        (
            "element",
            json!({"inputs": [x(json!([1, 4]), "FP32", json!([1, "two", 3, 4]))]}),
            "element 1: \"two\" is not a number",
        ),
        (
            "datatype",
            json!({"inputs": [x(json!([1, 4]), "FLOAT", json!([1, 2, 3, 4]))]}),
            "unknown datatype 'FLOAT'",
        ),
        (
            "unknown_output",
            json!({"inputs": [x(json!([1, 4]), "FP32", json!([1, 2, 3, 4]))], "outputs": [{"name": "zz"}]}),
            "unknown output 'zz'",
        ),
    ];
    for (name, body, expected) in cases {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, body.to_string()).unwrap();
        for engine in ["ort", "tract"] {
            let err = infer_err(&model, &[path.to_str().unwrap()], engine);
            assert!(err.contains(expected), "{name} on {engine}: {err}");
        }
    }
    let bytes_model = common::fixture("dtype_BYTES.onnx");
    let path = dir.path().join("bytes.json");
    std::fs::write(
        &path,
        json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", 7, "c"]}]})
            .to_string(),
    )
    .unwrap();
    let err = infer_err(&bytes_model, &[path.to_str().unwrap()], "auto");
    assert!(err.contains("element 1: 7 is not a string"), "{err}");
    let path = dir.path().join("malformed.json");
    std::fs::write(&path, "{\"inputs\": [").unwrap();
    let err = infer_err(&model, &[path.to_str().unwrap()], "auto");
    assert!(err.contains("not a KServe V2 request"), "{err}");
}

#[test]
fn npy_inputs_run_and_match_json_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("dynamic_batch.onnx");
    let request = common::fixture("dynamic_batch.request.json");
    let body: onnxd::tensor::kserve::InferRequestBody =
        serde_json::from_slice(&std::fs::read(&request).unwrap()).unwrap();
    let tensor = body.inputs[0].to_tensor().unwrap();
    let npy = dir.path().join("x.npy");
    std::fs::write(&npy, onnxd::tensor::npy::write_npy(&tensor).unwrap()).unwrap();
    let from_json = infer_ok(&model, &[request.to_str().unwrap()], "ort");
    let named = format!("x={}", npy.display());
    for input in [npy.to_str().unwrap(), named.as_str()] {
        let from_npy = infer_ok(&model, &[input], "ort");
        assert_eq!(from_npy.outputs[0].data, from_json.outputs[0].data);
    }
    let err = infer_err(&model, &[&format!("x={}", request.display())[..]], "auto");
    assert!(err.contains("NAME=FILE applies to .npy files"), "{err}");
    let text = dir.path().join("x.txt");
    std::fs::write(&text, "1 2 3 4").unwrap();
    let err = infer_err(&model, &[text.to_str().unwrap()], "auto");
    assert!(
        err.contains("expected a KServe V2 request (.json) or NAME=FILE.npy"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, "not numpy").unwrap();
    let err = infer_err(&model, &[garbage.to_str().unwrap()], "auto");
    assert!(err.contains("not a .npy file"), "{err}");
}

#[test]
fn a_closed_output_pipe_ends_every_command_quietly() {
    let model = common::models().join("digits/model.onnx");
    let request = common::models().join("digits/sample-request.json");
    let (model, request) = (model.to_str().unwrap(), request.to_str().unwrap());
    for args in [
        vec!["inspect", model],
        vec!["inspect", model, "--json"],
        vec!["infer", model, "-i", request],
        vec!["bench", model, "--count", "20", "--json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_onnxd"))
            .args(&args)
            .env("ORT_DYLIB_PATH", common::ort_library())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before onnxd writes (`| head -0`)
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn inspect_reports_signature_metadata_and_engines() {
    let model = common::models().join("digits/model.onnx");
    let out = onnxd(&["inspect", model.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["inputs"][0],
        json!({"name": "image", "datatype": "FP32", "shape": ["batch", "1", "8", "8"]})
    );
    assert_eq!(report["outputs"][0]["name"], "probabilities");
    assert_eq!(report["opsets"], json!([["ai.onnx", 17]]));
    assert_eq!(report["producer"], "onnxd-train-digits");
    assert_eq!(report["batchable"], true);
    assert!(report["metadata"].to_string().contains("heldout_accuracy"));
    assert_eq!(
        report["engines"][0],
        json!({"engine": "ort", "loads": true, "provider": "CPUExecutionProvider", "error": null})
    );
    assert_eq!(report["engines"][1]["loads"], true);
    assert!(report["onnxruntime"]["library"]
        .as_str()
        .unwrap()
        .ends_with("libonnxruntime.so.1.31.1"));
    let text = onnxd(&["inspect", common::fixture("unique.onnx").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("onnxruntime  yes  (CPUExecutionProvider)"),
        "{text}"
    );
    assert!(text.contains("tract        no"), "{text}");
}

#[test]
fn example_model_classifies_its_sample() {
    let model = common::models().join("digits/model.onnx");
    let sample = common::models().join("digits/sample-request.json");
    for engine in ["ort", "tract"] {
        let response = infer_ok(&model, &[sample.to_str().unwrap()], engine);
        let probs = response.outputs[0].to_tensor().unwrap().to_f64_vec().unwrap();
        let best = (0..10).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap();
        assert_eq!(
            response.id.as_ref().and_then(|id| id.as_str()),
            Some(format!("digit-{best}").as_str()),
            "{engine}: {probs:?}"
        );
    }
}

#[test]
fn config_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[engine]\ndefault = \"gpu\"\n").unwrap();
    let out = onnxd(&["run", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.toml") && err.contains("gpu"), "{err}");
    std::fs::write(
        &path,
        "[engine]\ndefault = \"tract\"\n[http]\nlisten = \"127.0.0.1:8000\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onnxd"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env("ONNXD_HTTP__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("environment variable ONNXD_HTTP__LISTEN") && err.contains("http.listen"),
        "{err}"
    );
    assert!(!err.contains("bad.toml"), "the file is not to blame: {err}");
}

#[test]
fn check_refuses_a_config_whose_password_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        "node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\npassword_file = \"gone.pw\"\n",
    )
    .unwrap();
    let out = onnxd(&["check", "-c", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("mqtt.password_file") && err.contains("gone.pw"),
        "{err}"
    );
    std::fs::write(dir.path().join("gone.pw"), "secret\n").unwrap();
    let out = onnxd(&["check", "-c", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn environment_overrides_are_named_and_stray_variables_only_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("onnxd.toml");
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(
        &config,
        "node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n",
    )
    .unwrap();
    let check = |vars: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_onnxd"));
        command.args(["check", "-c", config.to_str().unwrap()]);
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    // An enum key lists its allowed values, and the variable is named, not the file.
    let out = check(&[("ONNXD_ENGINE__DEFAULT", "onnxruntime")]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("environment variable ONNXD_ENGINE__DEFAULT")
            && err.contains("expected one of \"auto\", \"ort\", \"tract\", got \"onnxruntime\""),
        "{err}"
    );
    // The same in the file names the file and the allowed values.
    std::fs::write(dir.path().join("bad.toml"), "[repository]\nreload = \"swap\"\n").unwrap();
    let out = onnxd(&["check", "-c", dir.path().join("bad.toml").to_str().unwrap()]);
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml") && err.contains("expected one of \"beside\", \"replace\""),
        "{err}"
    );
    // A variable that merely starts with ONNXD_ is a warning, not a failure.
    let out = check(&[
        ("ONNXD_BIN", "/usr/bin/onnxd"),
        ("ONNXD_ENGINE__DEFAULT", "tract"),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("ONNXD_BIN names no config key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn daemon_loads_the_repository_rescans_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    common::copy_example_model(&repo.join("digits"));
    let config = dir.path().join("onnxd.toml");
    // No inotify watch: only SIGHUP makes the daemon look again.
    std::fs::write(
        &config,
        "node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\nwatch = false\n[grpc]\nlisten = \"\"\n",
    )
    .unwrap();
    let daemon = Onnxd::spawn(&config, &[("RUST_LOG", "info")]);
    let wait_for = |needle: &str| daemon.wait_for(needle, std::time::Duration::from_secs(20));
    let seen = wait_for("onnxd ready");
    assert!(
        seen.contains("engine selected") && seen.contains("CPUExecutionProvider"),
        "{seen}"
    );
    assert!(seen.contains("models=1 ready=1"), "{seen}");
    std::fs::create_dir_all(repo.join("second/1")).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        repo.join("second/1/model.onnx"),
    )
    .unwrap();
    daemon.signal("HUP");
    let seen = wait_for("version ready");
    assert!(seen.contains("model=\"second\""), "{seen}");
    let mut daemon = daemon;
    assert!(daemon.terminate(), "exit status not 0:\n{}", daemon.log());
}

#[test]
fn check_reports_good_and_broken_models_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    std::fs::create_dir_all(repo.join("good/1")).unwrap();
    std::fs::create_dir_all(repo.join("broken/1")).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        repo.join("good/1/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        common::fixture("truncated.onnx"),
        repo.join("broken/1/model.onnx"),
    )
    .unwrap();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        "node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n",
    )
    .unwrap();
    let out = onnxd(&["check", "-c", config.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{table}");
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {table}"))
            .to_string()
    };
    assert!(line("good").contains("OK"), "{table}");
    assert!(
        line("broken").contains("FAILED") && line("broken").contains("truncated or corrupt"),
        "{table}"
    );
    std::fs::remove_dir_all(repo.join("broken")).unwrap();
    let out = onnxd(&["check", "-c", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Polls a readiness URL with curl (TLS unverified) for up to 10 s; returns the last status.
fn wait_until_ready(url: &str) -> String {
    let mut code = String::new();
    for _ in 0..100 {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .unwrap();
        code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    code
}

#[test]
fn bench_drives_a_running_daemon_over_http() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models/digits/1")).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        dir.path().join("models/digits/1/model.onnx"),
    )
    .unwrap();
    let port = common::free_port();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(&config, format!("node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[grpc]\nlisten = \"\"\n")).unwrap();
    let mut daemon = Onnxd::spawn(&config, &[]);
    assert_eq!(
        wait_until_ready(&format!("http://127.0.0.1:{port}/v2/health/ready")),
        "200"
    );
    let model = common::models().join("digits/model.onnx");
    let address = format!("127.0.0.1:{port}");
    let out = onnxd(&[
        "bench",
        model.to_str().unwrap(),
        "--http",
        &address,
        "--model-name",
        "digits",
        "--count",
        "50",
        "--concurrency",
        "2",
        "--json",
    ]);
    let wrong = onnxd(&[
        "bench",
        model.to_str().unwrap(),
        "--http",
        &address,
        "--model-name",
        "nope",
        "--count",
        "5",
        "--json",
    ]);
    assert!(daemon.terminate(), "{}", daemon.log());
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["requests"].as_u64(), report["errors"].as_u64()),
        (Some(50), Some(0)),
        "{report}"
    );
    assert_eq!(report["engine"], format!("http://{address}"));
    assert!(
        report["compute_us"]["p50"].as_f64().unwrap() > 0.0,
        "server compute time comes back: {report}"
    );
    // The warm-up surfaces the server's error instead of counting silent failures.
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("unknown model 'nope'"),
        "{}",
        stderr(&wrong)
    );
}

#[test]
fn https_serves_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let port = common::free_port();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        format!("node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n[grpc]\nlisten = \"\"\n"),
    )
    .unwrap();
    let mut daemon = Onnxd::spawn(&config, &[]);
    let url = format!("https://127.0.0.1:{port}/v2/health/ready");
    let code = wait_until_ready(&url);
    // Plain HTTP on the TLS port is refused.
    let plain = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url.replace("https", "http"),
        ])
        .output()
        .unwrap();
    assert!(daemon.terminate(), "{}", daemon.log());
    assert_eq!(code, "200");
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    // A certificate that cannot be read is a start-up error naming the keys.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("cert.pem", "missing.pem");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onnxd"))
        .args(["run", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("http.tls_cert") && stderr(&out).contains("missing.pem"),
        "{}",
        stderr(&out)
    );
}

/// Issue 12: a version the version policy stops serving is logged as retired, with why.
#[test]
fn a_version_the_policy_retires_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let version = |v: u32| {
        let path = dir.path().join(format!("models/digits/{v}"));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::copy(
            common::models().join("digits/model.onnx"),
            path.join("model.onnx"),
        )
        .unwrap();
    };
    version(1);
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        "node_id = \"t\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[http]\nlisten = \"\"\n",
    )
    .unwrap();
    let daemon = Onnxd::start(&config, &[]);
    version(2);
    let seen = daemon.wait_for("version retired", std::time::Duration::from_secs(60));
    let line = seen.lines().find(|l| l.contains("version retired")).unwrap();
    assert!(
        line.contains("version=1") && line.contains("no longer served"),
        "{line}"
    );
}
