//! Camera passwords stay off command lines: an RTSP camera that wants a password (GStreamer's
//! RTSP server, `tests/python/rtsp_server.py`, on 127.0.0.1) is read through ffmpeg, and while
//! ffmpeg streams, the command line of every process on the machine (`/proc/*/cmdline`,
//! readable by any user) is searched for the password. The camera must still deliver frames,
//! and a wrong password must be refused (so the frames prove the password reached ffmpeg).
//!
//! Needs ffmpeg and, for Debian's `/usr/bin/python3`, python3-gi and
//! gir1.2-gst-rtsp-server-1.0 (`scripts/setup-test`); missing, the test fails with `CI=true`
//! and otherwise says loudly that it skipped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use onnxd::camera::{open, SourceOptions};

const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Whether ffmpeg and GStreamer's RTSP server are there; with `CI=true` their absence fails.
fn tools() -> bool {
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let found = runs("ffmpeg", &["-version"])
        && runs(
            SYSTEM_PYTHON,
            &["-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        );
    if !found {
        let message = "ffmpeg or GStreamer's RTSP server for /usr/bin/python3 is missing: run \
                       ./scripts/setup-test as root (ffmpeg, python3-gi, gir1.2-gst-rtsp-server-1.0)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("SKIPPED: {message}");
    }
    found
}

/// The RTSP camera, killed when dropped.
struct Camera(Child);

impl Camera {
    fn start(port: u16, password: &str) -> Camera {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/rtsp_server.py");
        let mut child = Command::new(SYSTEM_PYTHON)
            .arg(script)
            .arg(port.to_string())
            .env("RTSP_PASSWORD", password)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the RTSP server did not start");
        Camera(child)
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every process's command line (arguments joined by spaces) with its parent's pid.
fn command_lines() -> Vec<(u32, u32, String)> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A process may have exited since the directory was listed.
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so count from its closing paren.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        lines.push((pid, parent, text));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_password_is_on_no_command_line_and_the_camera_works() {
    if !tools() {
        return;
    }
    let password = format!("pw-{:016x}", fastrand::u64(..));
    let port = onnxd_free_port();
    let _camera = Camera::start(port, &password);
    let options = SourceOptions {
        timeout: Duration::from_secs(10),
        ..SourceOptions::new(0.0, "")
    };
    let url = format!("rtsp://cam:{password}@127.0.0.1:{port}/live");
    let mut source = open(&url, &options).unwrap();
    assert!(!source.describe().contains(&password), "{}", source.describe());
    for _ in 0..3 {
        let frame = tokio::time::timeout(Duration::from_secs(30), source.next_frame())
            .await
            .expect("a frame within 30 s")
            .unwrap_or_else(|e| panic!("the camera gave no frame: {e}"));
        assert_eq!((frame.width, frame.height), (64, 48));
    }
    // ffmpeg is streaming now: look at every command line on the machine.
    let me = std::process::id();
    let lines = command_lines();
    let ffmpeg: Vec<&(u32, u32, String)> = lines
        .iter()
        .filter(|(_, parent, line)| *parent == me && line.starts_with("ffmpeg"))
        .collect();
    assert_eq!(ffmpeg.len(), 1, "expected the camera's ffmpeg among {lines:#?}");
    for (pid, _, line) in &lines {
        assert!(
            !line.contains(&password),
            "the camera password is on the command line of process {pid}: {line}"
        );
    }
    drop(source);

    let wrong = format!("rtsp://cam:not-{password}@127.0.0.1:{port}/live");
    let mut source = open(&wrong, &options).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(30), source.next_frame())
        .await
        .expect("an answer within 30 s");
    let Err(error) = refused else {
        panic!("a wrong password must be refused")
    };
    assert!(error.to_string().contains("401"), "{error}");
    assert!(!error.to_string().contains(&password), "{error}");
}

fn onnxd_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
