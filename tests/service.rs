//! systemd notifications without systemd: the test binds its own `NOTIFY_SOCKET` datagram
//! socket, runs `onnxd run` with it (and `WATCHDOG_USEC`), and reads what the daemon says:
//! `READY=1` only once HTTP accepts connections, `WATCHDOG=1` at half the interval,
//! `RELOADING=1` + `MONOTONIC_USEC` then `READY=1` on SIGHUP (also when the new config is
//! refused), `STOPPING=1` on SIGTERM, exit 0 — and no more pings once a part of the daemon
//! hangs (SIGUSR2 with `ONNXD_TEST_STALL`, a debug-build test hook): the serving core's lock,
//! an inference thread in an execution, the HTTP listener. (The MQTT session: tests/mqtt.)

mod common;

use common::notify::NotifySocket;
use common::process::Onnxd;

use std::time::Duration;

/// The status line and headers of `GET /v2/health/ready`.
fn get_ready(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A daemon started with its own `NOTIFY_SOCKET` and `WATCHDOG_USEC=400000` on the digits
/// model, after its `READY=1`.
struct Started {
    daemon: Onnxd,
    notify: NotifySocket,
    port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// [`Started`], with `ONNXD_TEST_STALL=stall` (the part SIGUSR2 hangs).
fn start(stall: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models/digits/1");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        repo.join("model.onnx"),
    )
    .unwrap();
    let port = common::free_port();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        format!("node_id = \"svc\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[grpc]\nlisten = \"\"\n[mqtt]\nurl = \"\"\n"),
    )
    .unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut env = notify.env().to_vec();
    env.push(("ONNXD_TEST_STALL", stall));
    let daemon = Onnxd::spawn(&config, &env);
    let ready = notify.next(Duration::from_secs(60));
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=1/1 models ready, MQTT off"), "{ready}");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("HTTP accepts connections once READY=1 is sent");
    Started {
        daemon,
        notify,
        port,
        config,
        _dir: dir,
    }
}

#[test]
fn the_daemon_tells_systemd_ready_watchdog_reloading_and_stopping() {
    let Started {
        mut daemon,
        notify,
        port,
        config,
        _dir,
    } = start("");

    // Watchdog pings at half of 400 ms.
    let pings = notify.pings(Duration::from_secs(2));
    assert!(
        (7..=13).contains(&pings),
        "{pings} watchdog pings in 2 s (expected ~10)"
    );

    daemon.signal("HUP");
    let reloading = notify.next_other_than_watchdog();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let again = notify.next_other_than_watchdog();
    assert!(again.contains("READY=1"), "{again}");

    // A config that does not parse is refused; the daemon reloads the repository, stays READY
    // and keeps serving.
    std::fs::write(&config, "node_id = [broken").unwrap();
    daemon.signal("HUP");
    assert!(notify.next_other_than_watchdog().contains("RELOADING=1"));
    assert!(notify.next_other_than_watchdog().contains("READY=1"));
    let response = get_ready(port);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    daemon.signal("TERM");
    let stopping = notify.next_other_than_watchdog();
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(daemon.wait_success(), "{}", daemon.log());
}

#[test]
fn watchdog_pings_stop_when_the_serving_core_stalls() {
    let started = start("router");
    // The router's lock is taken before each ping: they stop at once.
    started.notify.assert_pings_stop(
        "the serving core",
        || started.daemon.signal("USR2"),
        Duration::from_secs(1),
    );
}

#[test]
fn watchdog_pings_stop_when_an_inference_thread_hangs_in_an_execution() {
    let started = start("inference");
    let port = started.port;
    // Idle inference threads are not hung: pings come. Once the hook is set, the next
    // request's execution never ends (its client is left waiting on a thread of its own).
    started.notify.assert_pings_stop(
        "an inference thread",
        || {
            started.daemon.signal("USR2");
            std::thread::sleep(Duration::from_millis(300));
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let body = format!(
                    r#"{{"inputs": [{{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": {:?}}}]}}"#,
                    vec![0.5f32; 64]
                );
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let request = format!(
                    "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).unwrap();
                let _ = stream.read(&mut [0u8; 64]);
            });
        },
        // Hung once it has run for 2 s (the least the daemon counts as hung).
        Duration::from_secs(6),
    );
    let log = started.daemon.log();
    assert!(
        log.contains("an inference thread of 'digits' has run one execution for"),
        "{log}"
    );
}

#[test]
fn watchdog_pings_stop_when_the_http_listener_stops_answering() {
    let started = start("http");
    started.notify.assert_pings_stop(
        "the HTTP listener",
        || started.daemon.signal("USR2"),
        Duration::from_secs(6),
    );
    let log = started.daemon.log();
    assert!(log.contains("the HTTP listener has not answered for"), "{log}");
}
