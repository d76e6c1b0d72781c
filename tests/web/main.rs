//! The status page against the real daemon: its routes behind the bearer token (401 without
//! it, the login form on `/`, the `onnxd_token` cookie accepted on reads only), the camera's
//! annotated snapshot, the page itself in headless Debian `chromium` (`scripts/check-web`:
//! models and their states, the camera with a loaded snapshot, no console error) before and
//! after a bad model is dropped into the repository, and the Grafana dashboard's metric names
//! against the live `/metrics` (`scripts/check-dashboard`).
//!
//! `ONNXDTEST_SCREENSHOT=FILE` keeps the page's screenshot (docs/status-page.png is one).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/detector.rs"]
mod detector;
#[allow(dead_code)] // the MQTT tests use the rest
#[path = "../mqtt/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde_json::Value;

use common::process::Onnxd;
use harness::Broker;

/// ASCII (a header value), with characters the cookie must percent-encode.
const TOKEN: &str = "s3cret tok/+%=";
const CAMERA: &str = "front door";

struct Node {
    base: String,
    http: Client,
}

impl Node {
    fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    fn authed(&self, path: &str) -> Response {
        self.get(path).bearer_auth(TOKEN).send().unwrap()
    }

    fn status(&self) -> Value {
        let response = self.authed("/status.json");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().unwrap()
    }

    /// Polls `/status.json` until `done` holds for it.
    fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(40);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}: {status:#}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn start(dir: &Path, broker: &Broker) -> (Onnxd, Node) {
    let models = dir.join("models");
    detector::install(&models, "detector");
    common::copy_example_model(&models.join("digits"));
    let frame = dir.join("frame.jpg");
    detector::grey_frame(&frame, 320, 240);
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let port = common::free_port();
    let config = dir.join("onnxd.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"web1\"\nstate_dir = \"state\"\n[engine]\nintra_threads = 1\n\
             [repository]\npath = \"models\"\nsettle_ms = 200\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             token_file = \"token\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n\
             [[camera]]\nname = \"{CAMERA}\"\nsource = \"file://{}\"\nmodel = \"detector\"\nfps = 2\n",
            broker.port,
            frame.display()
        ),
    )
    .unwrap();
    let daemon = Onnxd::start(&config, &[]);
    let node = Node {
        base: format!("http://127.0.0.1:{port}"),
        http: Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
    };
    (daemon, node)
}

/// Runs a check script of `scripts/` with `args`; its output, after asserting it passed.
fn script(name: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name);
    let output = Command::new(&path).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{name} failed (chromium comes from scripts/setup-test):\n{text}"
    );
    text
}

#[test]
fn the_status_page_shows_models_and_cameras_behind_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let (mut daemon, node) = start(dir.path(), &broker);
    let status = node.wait_status("the camera's first snapshot and MQTT", |s| {
        s["cameras"][0]["snapshot"].is_string() && s["mqtt"]["connected"] == true
    });
    let snapshot = status["cameras"][0]["snapshot"].as_str().unwrap().to_string();
    assert_eq!(snapshot, "/cameras/front%20door/snapshot.jpg");
    check_tokens(&node, &snapshot);
    let jpeg = node.authed(&snapshot).bytes().unwrap();
    let picture = image::load_from_memory(&jpeg).expect("a JPEG");
    assert_eq!((picture.width(), picture.height()), (320, 240));
    let missing = node.authed("/cameras/nowhere/snapshot.jpg");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let models = common::strings(&status["models"], "name");
    assert_eq!(models.len(), 2, "{models:?}");
    let token_file = dir.path().join("token");
    let token_file = token_file.to_str().unwrap();
    let page = script("check-web", &[&node.base, "--token-file", token_file]);
    assert!(
        page.contains(&format!("camera {CAMERA} snapshot loaded")),
        "{page}"
    );
    // A bad model dropped in: UNAVAILABLE with its error, on the page too.
    std::fs::create_dir_all(dir.path().join("models/broken/1")).unwrap();
    std::fs::write(dir.path().join("models/broken/1/model.onnx"), b"not an onnx file").unwrap();
    node.wait_status("the broken model UNAVAILABLE", |s| {
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "broken" && m["state"] == "UNAVAILABLE")
    });
    let shot = dir.path().join("status-page.png");
    let page = script(
        "check-web",
        &[
            &node.base,
            "--token-file",
            token_file,
            "--screenshot",
            shot.to_str().unwrap(),
        ],
    );
    assert!(page.contains("ok   model broken shown as UNAVAILABLE"), "{page}");
    assert!(page.contains("ok   model broken error shown"), "{page}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    if let Some(keep) = std::env::var_os("ONNXDTEST_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    let metrics = format!("{}/metrics", node.base);
    let dashboard = script("check-dashboard", &["--token-file", token_file, &metrics]);
    assert!(dashboard.contains(" 0 missing"), "{dashboard}");
    assert!(daemon.terminate());
}

/// Without the token: 401 on the page (its login form), the JSON and the snapshot; the
/// assets are public; the cookie works for reads, not for writes.
fn check_tokens(node: &Node, snapshot: &str) {
    for path in ["/", "/status.json", snapshot, "/metrics"] {
        let response = node.get(path).send().unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let response = node.get(path).bearer_auth("wrong").send().unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
        assert_eq!(
            node.authed(path).status(),
            StatusCode::OK,
            "{path} with the token"
        );
    }
    let login = node.get("/").send().unwrap().text().unwrap();
    assert!(login.contains("onnxd_token="), "the login form: {login}");
    let page = node.authed("/");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let page = page.text().unwrap();
    let script = page
        .split('"')
        .find(|s| s.starts_with("/assets/app.js"))
        .expect("the page links its script");
    assert_eq!(
        node.get(script).send().unwrap().status(),
        StatusCode::OK,
        "assets need no token"
    );
    let encoded = percent_encoding::utf8_percent_encode(TOKEN, percent_encoding::NON_ALPHANUMERIC);
    let cookie = format!("onnxd_token={encoded}");
    let with_cookie = node.get("/status.json").header("cookie", &cookie).send().unwrap();
    assert_eq!(with_cookie.status(), StatusCode::OK);
    let write = node
        .http
        .post(format!("{}/v2/repository/index", node.base))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(
        write.status(),
        StatusCode::UNAUTHORIZED,
        "the cookie is for reads only"
    );
}
