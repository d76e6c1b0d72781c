//! systemd notifications without systemd: the test binds its own `NOTIFY_SOCKET` datagram
//! socket, runs `onnxd run` with it (and `WATCHDOG_USEC`), and reads what the daemon says:
//! `READY=1` only once HTTP accepts connections, `WATCHDOG=1` at half the interval,
//! `RELOADING=1` + `MONOTONIC_USEC` then `READY=1` on SIGHUP, `STOPPING=1` on SIGTERM, exit 0.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kill(pid: u32, signal: &str) {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
}

/// Kills the daemon if the test fails half-way.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next notification datagram, within `timeout`.
fn next(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).expect("a notification in time");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn the_daemon_tells_systemd_ready_watchdog_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models/digits/1");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        repo.join("model.onnx"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        format!("node_id = \"svc\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[mqtt]\nurl = \"\"\n"),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut child = Daemon(
        Command::new(env!("CARGO_BIN_EXE_onnxd"))
            .args(["run", "-c"])
            .arg(&config)
            .env("ORT_DYLIB_PATH", common::ort_library())
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "400000")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;

    let ready = next(&socket, Duration::from_secs(60));
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=1/1 models ready, MQTT off"), "{ready}");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("HTTP accepts connections once READY=1 is sent");

    // Watchdog pings at half of 400 ms.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if next(&socket, Duration::from_secs(1)).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        (7..=13).contains(&pings),
        "{pings} watchdog pings in 2 s (expected ~10)"
    );

    kill(child.id(), "HUP");
    let reloading = loop {
        let message = next(&socket, Duration::from_secs(10));
        if !message.contains("WATCHDOG=1") {
            break message;
        }
    };
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let again = loop {
        let message = next(&socket, Duration::from_secs(10));
        if !message.contains("WATCHDOG=1") {
            break message;
        }
    };
    assert!(again.contains("READY=1"), "{again}");

    kill(child.id(), "TERM");
    let stopping = loop {
        let message = next(&socket, Duration::from_secs(10));
        if !message.contains("WATCHDOG=1") {
            break message;
        }
    };
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(child.wait().unwrap().success());
}
