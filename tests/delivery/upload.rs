//! HTTP uploads against the daemon in-process: a version uploaded and committed under load
//! serves with no failed request; every refusal (missing token, over the limit, no length,
//! truncated, wrong SHA-256, bad or missing signature, existing version) is a clear error
//! that leaves the repository as it was, the old version serving; rollback on demand, delete,
//! `keep_versions`, and the metrics.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::common;
use crate::models;
use crate::server::{digits_repository, sha256, snapshot, Options, Server};

fn digits_file() -> Vec<u8> {
    std::fs::read(common::models().join("digits/model.onnx")).unwrap()
}

#[test]
fn upload_and_commit_under_load_serves_the_new_version_with_no_failed_request() {
    let server = Server::start(Options::default(), |m| {
        digits_repository(m, "digits", &digits_file())
    });
    let load = server.load("digits", 3);
    std::thread::sleep(Duration::from_millis(300));
    let labels = b"zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n";
    let reply = server.deliver("digits", 2, &models::rotated(), &[("labels.txt", labels)], "");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = reply.json();
    assert_eq!(status["state"], "promoted", "{status}");
    assert_eq!(status["rollout"], "immediate", "{status}");
    let until = Instant::now() + Duration::from_secs(10);
    while load.answers_from("2") < 50 {
        assert!(Instant::now() < until, "version 2 never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (versions, failures) = load.stop();
    assert!(
        failures.is_empty(),
        "failed requests during the upload: {failures:?}"
    );
    assert!(versions["1"] > 0 && versions["2"] >= 50, "{versions:?}");
    // The labels came with the version: the classes are named by them now.
    let answer = server
        .send(
            Method::POST,
            "/v2/models/digits/infer",
            crate::server::sample_request(),
        )
        .json();
    let label = answer["result"][0]["label"].as_str().unwrap();
    assert!(label.chars().all(|c| c.is_ascii_alphabetic()), "{answer}");
    assert!(server.models.join("digits/2/model.onnx").is_file());
    assert_eq!(
        std::fs::read(server.models.join("digits/labels.txt")).unwrap(),
        labels
    );
    let staging = server.models.join(".onnxd-staging");
    assert!(
        std::fs::read_dir(&staging).map_or(true, |mut d| d.next().is_none()),
        "staging left over"
    );
    let metrics = server.metrics();
    common::promtool_check(&metrics);
    assert!(
        metrics.contains("onnxd_delivery_uploads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("onnxd_delivery_promotions_total{model=\"digits\",rollout=\"immediate\"} 1"),
        "{metrics}"
    );
}

/// Sends a raw HTTP/1.1 request of `head` and `body`, optionally half-closing after the body;
/// returns the status line and the rest.
fn raw(server: &Server, head: &str, body: &[u8], half_close: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    if half_close {
        let _ = stream.shutdown(Shutdown::Write); // the server may have answered and closed
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[test]
fn every_refusal_is_clear_and_changes_nothing() {
    let options = Options {
        token: Some("s3cret"),
        max_upload_bytes: 64 << 10,
        ..Options::default()
    };
    let server = Server::start(options, |m| digits_repository(m, "digits", &digits_file()));
    let before = snapshot(&server.models);
    let unchanged = |what: &str| {
        assert_eq!(snapshot(&server.models), before, "{what} changed the repository");
        assert_eq!(server.served_version("digits"), "1", "{what}");
    };
    let v2 = models::rotated();
    let path = "/v2/repository/models/digits/versions/2";
    let no_token = server.send_with(Method::PUT, path, v2.clone(), None);
    assert_eq!(no_token.status, 401);
    assert!(no_token.error().contains("bearer token"), "{}", no_token.error());
    unchanged("a missing token");

    let big = server.send(Method::PUT, path, vec![0u8; 100_000]);
    assert_eq!(big.status, 413);
    assert!(
        big.error()
            .contains("over the limit of 65536 bytes (repository.max_upload_bytes)"),
        "{}",
        big.error()
    );
    unchanged("a body over the limit");

    let chunked = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (status, answer) = raw(&server, &chunked, b"4\r\nabcd\r\n0\r\n\r\n", false);
    assert_eq!(status, 411, "{answer}");
    assert!(answer.contains("Content-Length is required"), "{answer}");

    let truncated = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: {}\r\n\r\n",
        v2.len()
    );
    let (status, answer) = raw(&server, &truncated, &v2[..v2.len() / 2], true);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("broke off after"), "{answer}");
    let commit = server.post(&format!("{path}/commit?sha256={}", sha256(&v2)));
    assert_eq!(commit.status, 404, "{}", commit.text());
    assert!(commit.error().contains("PUT it first"), "{}", commit.error());
    unchanged("a truncated upload");

    assert_eq!(server.send(Method::PUT, path, v2.clone()).status, 201);
    let missing = server.post(&format!("{path}/commit"));
    assert_eq!(missing.status, 400);
    assert!(
        missing.error().contains("SHA-256 is required"),
        "{}",
        missing.error()
    );
    let wrong = server.post(&format!("{path}/commit?sha256={}", "0".repeat(64)));
    assert_eq!(wrong.status, 400);
    let error = wrong.error();
    assert!(
        error.contains(&format!("SHA-256 is {}, expected 000", sha256(&v2))),
        "{error}"
    );
    unchanged("a wrong SHA-256");

    let existing = server.send(Method::PUT, "/v2/repository/models/digits/versions/1", v2.clone());
    assert_eq!(existing.status, 409);
    assert!(
        existing.error().contains("version 1 exists"),
        "{}",
        existing.error()
    );
    let bad_name = server.send(Method::PUT, &format!("{path}/files/evil.sh"), b"x".to_vec());
    assert_eq!(bad_name.status, 400);
    assert!(
        bad_name.error().contains("cannot accompany a version"),
        "{}",
        bad_name.error()
    );
    let broken = server.deliver(
        "digits",
        3,
        &std::fs::read(common::fixture("truncated.onnx")).unwrap(),
        &[],
        "",
    );
    assert_eq!(broken.status, 422, "{}", broken.text());
    unchanged("a broken model file");
    let metrics = server.metrics();
    for result in ["too_large", "length_required", "truncated", "checksum", "model"] {
        assert!(
            metrics.contains(&format!("onnxd_delivery_uploads_total{{result=\"{result}\"}}")),
            "{result}: {metrics}"
        );
    }
}

fn minisign(args: &[&str], dir: &Path) {
    let status = std::process::Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("minisign (Debian package) is installed by scripts/setup");
    assert!(status.success(), "minisign {args:?}");
}

#[test]
fn signatures_are_required_when_configured() {
    let keys = tempfile::tempdir().unwrap();
    minisign(&["-G", "-W", "-p", "k.pub", "-s", "k.sec"], keys.path());
    let public = std::fs::read_to_string(keys.path().join("k.pub")).unwrap();
    let public = public.lines().nth(1).unwrap().to_string();
    let sign = |bytes: &[u8]| -> Vec<u8> {
        std::fs::write(keys.path().join("m.onnx"), bytes).unwrap();
        minisign(&["-S", "-s", "k.sec", "-m", "m.onnx"], keys.path());
        std::fs::read(keys.path().join("m.onnx.minisig")).unwrap()
    };
    let v1 = digits_file();
    let v1_signature = sign(&v1);
    let options = Options {
        trusted_key: Some(public),
        ..Options::default()
    };
    let server = Server::start(options, |m| {
        digits_repository(m, "digits", &v1);
        std::fs::write(m.join("digits/1/model.onnx.minisig"), &v1_signature).unwrap();
    });
    assert_eq!(server.served_version("digits"), "1");
    let before = snapshot(&server.models);
    let v2 = models::rotated();
    let unsigned = server.deliver("digits", 2, &v2, &[], "");
    assert_eq!(unsigned.status, 422);
    assert!(
        unsigned.error().contains("signatures are required"),
        "{}",
        unsigned.error()
    );
    let wrong = server.deliver("digits", 2, &v2, &[("model.onnx.minisig", &v1_signature)], "");
    assert_eq!(wrong.status, 422);
    assert!(wrong.error().contains("does not verify"), "{}", wrong.error());
    assert_eq!(snapshot(&server.models), before);
    assert_eq!(server.served_version("digits"), "1");
    let signed = server.deliver("digits", 2, &v2, &[("model.onnx.minisig", &sign(&v2))], "");
    assert_eq!(signed.status, 200, "{}", signed.text());
    assert_eq!(server.served_version("digits"), "2");
    let metrics = server.metrics();
    assert!(
        metrics.contains("onnxd_delivery_uploads_total{result=\"signature\"} 2"),
        "{metrics}"
    );
}

#[test]
fn rollback_delete_and_keep_versions() {
    let server = Server::start(Options::default(), |m| {
        digits_repository(m, "digits", &digits_file())
    });
    let load = server.load("digits", 2);
    assert_eq!(
        server.deliver("digits", 2, &models::rotated(), &[], "").status,
        200
    );
    assert_eq!(server.served_version("digits"), "2");
    let back = server.post("/v2/repository/models/digits/rollback");
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(back.json()["to"], 1, "{}", back.text());
    assert_eq!(server.served_version("digits"), "1");
    assert!(!server.models.join("digits/2").exists());
    let status = server.rollout("digits");
    assert_eq!(
        (status["state"].as_str(), status["version"].as_u64()),
        (Some("rolled_back"), Some(2))
    );
    let none = server.post("/v2/repository/models/digits/rollback");
    assert_eq!(none.status, 409);
    assert!(none.error().contains("no version below 1"), "{}", none.error());
    let (_, failures) = load.stop();
    assert!(failures.is_empty(), "{failures:?}");

    for version in [3, 4, 5] {
        let reply = server.deliver("digits", version, &digits_file(), &[], "");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(server.models.join("digits"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<u64>().is_ok())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ["4", "5"], "keep_versions = 2");
    let deleted = server.send(
        Method::DELETE,
        "/v2/repository/models/digits/versions/5",
        Vec::new(),
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(server.served_version("digits"), "4");
    let missing = server.send(
        Method::DELETE,
        "/v2/repository/models/digits/versions/9",
        Vec::new(),
    );
    assert_eq!(missing.status, 404);
    let metrics = server.metrics();
    assert!(
        metrics.contains("onnxd_delivery_rollbacks_total{cause=\"request\",model=\"digits\"} 1"),
        "{metrics}"
    );
}
