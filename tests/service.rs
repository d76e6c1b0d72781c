//! systemd notifications without systemd: the test binds its own `NOTIFY_SOCKET` datagram
//! socket, runs `onnxd run` with it (and `WATCHDOG_USEC`), and reads what the daemon says:
//! `READY=1` only once HTTP accepts connections, `WATCHDOG=1` at half the interval,
//! `RELOADING=1` + `MONOTONIC_USEC` then `READY=1` on SIGHUP (also when the new config is
//! refused), no more pings once the serving core is stalled (SIGUSR2, a debug-build test hook),
//! `STOPPING=1` on SIGTERM, exit 0.

mod common;

use common::process::Onnxd;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The next notification datagram, within `timeout`.
fn next(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).expect("a notification in time");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

/// The next notification that is not a watchdog ping.
fn next_other_than_watchdog(socket: &UnixDatagram) -> String {
    loop {
        let message = next(socket, Duration::from_secs(10));
        if !message.contains("WATCHDOG=1") {
            return message;
        }
    }
}

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
    socket: UnixDatagram,
    port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> Started {
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
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let daemon = Onnxd::spawn(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = next(&socket, Duration::from_secs(60));
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=1/1 models ready, MQTT off"), "{ready}");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("HTTP accepts connections once READY=1 is sent");
    Started {
        daemon,
        socket,
        port,
        config,
        _dir: dir,
    }
}

/// Watchdog pings counted in `window`.
fn pings(socket: &UnixDatagram, window: Duration) -> usize {
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < window {
        if next(socket, Duration::from_secs(1)).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    pings
}

#[test]
fn the_daemon_tells_systemd_ready_watchdog_reloading_and_stopping() {
    let Started {
        mut daemon,
        socket,
        port,
        config,
        _dir,
    } = start();

    // Watchdog pings at half of 400 ms.
    let pings = pings(&socket, Duration::from_secs(2));
    assert!(
        (7..=13).contains(&pings),
        "{pings} watchdog pings in 2 s (expected ~10)"
    );

    daemon.signal("HUP");
    let reloading = next_other_than_watchdog(&socket);
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let again = next_other_than_watchdog(&socket);
    assert!(again.contains("READY=1"), "{again}");

    // A config that does not parse is refused; the daemon reloads the repository, stays READY
    // and keeps serving.
    std::fs::write(&config, "node_id = [broken").unwrap();
    daemon.signal("HUP");
    assert!(next_other_than_watchdog(&socket).contains("RELOADING=1"));
    assert!(next_other_than_watchdog(&socket).contains("READY=1"));
    let response = get_ready(port);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    daemon.signal("TERM");
    let stopping = next_other_than_watchdog(&socket);
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(daemon.wait_success(), "{}", daemon.log());
}

#[test]
fn watchdog_pings_stop_when_the_serving_core_stalls() {
    let started = start();
    let socket = &started.socket;
    assert!(
        pings(socket, Duration::from_secs(1)) >= 3,
        "pings before the stall"
    );
    // Test hook: SIGUSR2 deadlocks the serving core; the pings stop.
    started.daemon.signal("USR2");
    std::thread::sleep(Duration::from_millis(300)); // a ping may already be on its way
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buffer) {
        let message = String::from_utf8_lossy(&buffer[..n]);
        assert!(
            !message.contains("WATCHDOG=1"),
            "a watchdog ping from a stalled daemon: {message}"
        );
    }
}
