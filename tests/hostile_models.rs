//! Hostile model files (`tests/fixtures/make_hostile_models.py`: bit flips, truncations, huge
//! declared dimensions, tensors declaring more than they hold, external data pointing out of
//! the model's folder, deep nesting, terabyte allocations from tiny shapes, opset 99) dropped,
//! one at a time, as version 2 of a model whose version 1 serves, in a live `onnxd run`:
//! the daemon never crashes or hangs, every refusal names its cause, version 1 answers
//! correctly after each, and the daemon's peak memory stays bounded.
//!
//! Every case runs (about 20 s in all). With `ONNXDTEST_HOSTILE_REPORT=FILE` each case's
//! outcome is written to FILE as JSON lines (`scripts/hostile` turns them into the table of
//! RELIABILITY.md).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::Onnxd;
use serde_json::{json, Value};

/// Longest a load may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(60);
/// Peak memory (VmHWM) the daemon may reach over the whole run.
const MAX_RSS_KB: u64 = 2 * 1024 * 1024;

struct Case {
    name: String,
    class: String,
    expect: String,
    cause: Vec<String>,
}

fn cases(out: &Path) -> Vec<Case> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_hostile_models.py");
    let made = std::process::Command::new(common::python())
        .arg(&script)
        .arg(common::fixtures())
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg(out)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{} failed (it needs the onnx package of the test venv):\n{}",
        script.display(),
        String::from_utf8_lossy(&made.stderr)
    );
    let manifest: Vec<Value> =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let all: Vec<Case> = manifest
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            class: c["class"].as_str().unwrap().into(),
            expect: c["expect"].as_str().unwrap().into(),
            cause: c["cause"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_lowercase())
                .collect(),
        })
        .collect();
    assert!(
        all.len() >= 100,
        "the generator made only {} hostile models",
        all.len()
    );
    all
}

/// `VmRSS` and `VmHWM` of a process, in KiB, and whether it is still running.
fn process_status(pid: u32) -> (u64, u64, bool) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let running = text
        .lines()
        .find(|l| l.starts_with("State:"))
        .is_some_and(|l| !l.contains('Z') && !l.contains('X'));
    (field("VmRSS:"), field("VmHWM:"), running)
}

/// Puts `case` in place as version 2 (the old version 2 moved aside first, the new one
/// renamed in whole: the watcher never sees a half-copied version).
fn install(model: &Path, case: &Path) {
    let version = model.join("2");
    if version.exists() {
        let old = model.join(".old");
        std::fs::rename(&version, &old).unwrap();
        std::fs::remove_dir_all(&old).unwrap();
    }
    let staging = model.join("2.tmp");
    copy_dir(case, &staging);
    std::fs::rename(&staging, &version).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

struct Live {
    daemon: Onnxd,
    client: reqwest::blocking::Client,
    base: String,
    model: PathBuf,
    request: Value,
    expected: Vec<f64>,
    _dir: tempfile::TempDir,
}

impl Live {
    fn start() -> Live {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("models/h");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::copy(common::fixture("dynamic_batch.onnx"), model.join("1/model.onnx")).unwrap();
        std::fs::write(model.join("model.toml"), "versions = [1, 2]\n").unwrap();
        let port = common::free_port();
        let config = dir.path().join("onnxd.toml");
        std::fs::write(
            &config,
            format!("node_id = \"hostile\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[mqtt]\nurl = \"\"\n"),
        )
        .unwrap();
        let read = |name: &str| -> Value {
            serde_json::from_slice(&std::fs::read(common::fixture(name)).unwrap()).unwrap()
        };
        let expected = read("dynamic_batch.expected.json")["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        Live {
            daemon: Onnxd::start(&config, &[]),
            client: reqwest::blocking::Client::builder()
                .timeout(HANG)
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            model,
            request: read("dynamic_batch.request.json"),
            expected,
            _dir: dir,
        }
    }

    /// Version 1 answers with the right numbers.
    fn check_serving(&self, after: &str) {
        let url = format!("{}/v2/models/h/versions/1/infer", self.base);
        let response = self.client.post(&url).json(&self.request).send();
        let response = response
            .unwrap_or_else(|e| panic!("after {after}: version 1 unreachable: {e}\n{}", self.daemon.log()));
        assert_eq!(response.status(), 200, "after {after}: version 1 stopped serving");
        let body: Value = response.json().unwrap();
        let got: Vec<f64> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), self.expected.len(), "after {after}");
        for (g, e) in got.iter().zip(&self.expected) {
            assert!(
                (g - e).abs() <= 1e-4 + 1e-4 * e.abs(),
                "after {after}: {got:?} != {:?}",
                self.expected
            );
        }
    }

    /// Drops one case in as version 2 and asks for a load; returns (HTTP status, message, time).
    fn drop_in(&self, case: &Path) -> (u16, String, Duration) {
        install(&self.model, case);
        let started = Instant::now();
        let url = format!("{}/v2/repository/models/h/load", self.base);
        let response = self.client.post(&url).json(&json!({})).send();
        let response = response.unwrap_or_else(|e| {
            panic!(
                "{}: load did not answer: {e}\n{}",
                case.display(),
                self.daemon.log()
            )
        });
        let status = response.status().as_u16();
        let message = response.text().unwrap_or_default();
        (status, message, started.elapsed())
    }
}

/// Checks one case's outcome: "loaded" or "refused", or what is wrong with it.
fn judge(case: &Case, status: u16, message: &str) -> Result<&'static str, String> {
    let refused = status == 400;
    if !refused && status != 200 {
        return Err(format!("{}: load answered {status}: {message}", case.name));
    }
    let lower = message.to_lowercase();
    if refused && !lower.contains("version 2") {
        return Err(format!(
            "{}: the refusal does not name the version: {message}",
            case.name
        ));
    }
    if refused && !case.cause.is_empty() && !case.cause.iter().any(|w| lower.contains(w.as_str())) {
        return Err(format!(
            "{}: the refusal does not name its cause (one of {:?}): {message}",
            case.name, case.cause
        ));
    }
    match (case.expect.as_str(), refused) {
        ("refused", false) => Err(format!("{}: expected a refusal, it loaded", case.name)),
        ("loaded", true) => Err(format!("{}: expected it to load: {message}", case.name)),
        (_, true) => Ok("refused"),
        (_, false) => Ok("loaded"),
    }
}

#[test]
fn hostile_models_never_take_the_serving_version_down() {
    let generated = tempfile::tempdir().unwrap();
    let cases = cases(generated.path());
    let live = Live::start();
    live.check_serving("start");
    let pid = live.daemon.pid();
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for case in &cases {
        let (status, message, took) = live.drop_in(&generated.path().join(&case.name));
        let (rss, hwm, running) = process_status(pid);
        assert!(running, "{}: the daemon died\n{}", case.name, live.daemon.log());
        assert!(took < HANG, "{}: the load took {took:?}", case.name);
        let outcome = judge(case, status, &message).unwrap_or_else(|problem| {
            problems.push(problem);
            "unexpected"
        });
        eprintln!(
            "{:<44} {outcome:<10} {:>6} ms  {message}",
            case.name,
            took.as_millis()
        );
        live.check_serving(&case.name);
        report.push(
            json!({"name": case.name, "class": case.class, "expect": case.expect, "outcome": outcome,
            "ms": took.as_millis() as u64, "rss_kb": rss, "hwm_kb": hwm, "message": message}),
        );
    }
    let (_, hwm, running) = process_status(pid);
    assert!(running, "the daemon died\n{}", live.daemon.log());
    if let Some(path) = std::env::var_os("ONNXDTEST_HOSTILE_REPORT") {
        let lines: Vec<String> = report.iter().map(Value::to_string).collect();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(hwm < MAX_RSS_KB, "the daemon's peak memory reached {hwm} KiB");
    let classes: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(classes.len(), 8, "every class ran: {classes:?}");
}
