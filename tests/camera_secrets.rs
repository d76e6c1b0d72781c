//! Camera passwords stay off command lines: an RTSP camera that wants a password (GStreamer's
//! RTSP server, `tests/python/rtsp_server.py`, on 127.0.0.1) is read through ffmpeg, and while
//! ffmpeg streams, the command line of every process on the machine (`/proc/*/cmdline`,
//! readable by any user) is searched for the password. The camera must still deliver frames,
//! and a wrong password must be refused (so the frames prove the password reached ffmpeg).
//!
//! `gst:` pipelines are the exception: gst-launch takes the pipeline (and any password in it)
//! only as arguments. The systemd unit's `ProtectProc=invisible` hides the service's processes
//! from every other user; the second test reads every command line as another user (nobody)
//! under a private `/proc` mounted the way that setting mounts it (`hidepid=invisible`) while a
//! `gst:` camera with a password streams — and, to show the check can fail, without it.
//!
//! Needs ffmpeg, gst-launch-1.0 and, for Debian's `/usr/bin/python3`, python3-gi and
//! gir1.2-gst-rtsp-server-1.0 (`scripts/setup-test`), and root for the private `/proc`;
//! missing, the tests fail with `CI=true` and otherwise say loudly that they skipped.

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
        && runs("gst-launch-1.0", &["--version"])
        && runs(
            SYSTEM_PYTHON,
            &["-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        );
    if !found {
        let message = "ffmpeg, gst-launch-1.0 or GStreamer's RTSP server for /usr/bin/python3 is \
                       missing: run ./scripts/setup-test as root (ffmpeg, gstreamer1.0-tools, \
                       python3-gi, gir1.2-gst-rtsp-server-1.0)";
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

/// Source options with a 10 s timeout.
fn options() -> SourceOptions {
    SourceOptions {
        timeout: Duration::from_secs(10),
        ..SourceOptions::new(0.0, "")
    }
}

/// Three 64×48 frames from the test camera, each within 30 s.
async fn three_frames(source: &mut Box<dyn onnxd::camera::FrameSource>) {
    for _ in 0..3 {
        let frame = tokio::time::timeout(Duration::from_secs(30), source.next_frame())
            .await
            .expect("a frame within 30 s")
            .unwrap_or_else(|e| panic!("the camera gave no frame: {e}"));
        assert_eq!((frame.width, frame.height), (64, 48));
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
    let url = format!("rtsp://cam:{password}@127.0.0.1:{port}/live");
    let mut source = open(&url, &options()).unwrap();
    assert!(!source.describe().contains(&password), "{}", source.describe());
    three_frames(&mut source).await;
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
    let mut source = open(&wrong, &options()).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(30), source.next_frame())
        .await
        .expect("an answer within 30 s");
    let Err(error) = refused else {
        panic!("a wrong password must be refused")
    };
    assert!(error.to_string().contains("401"), "{error}");
    assert!(!error.to_string().contains(&password), "{error}");
}

/// Every command line on the machine as user nobody sees them, under a private `/proc`
/// mounted with `options` (`hidepid=invisible` is what `ProtectProc=invisible` mounts).
fn command_lines_seen_by_nobody(options: &str) -> String {
    let list = r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2>/dev/null; echo; done"#;
    let script = format!(
        "mount -t proc -o {options} proc /proc && exec setpriv --reuid=65534 --regid=65534 \
         --clear-groups -- sh -c \"$0\""
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script, list])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether this test runs as root (needed for a private `/proc`); with `CI=true` it must.
fn root() -> bool {
    let uid = Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    if !root {
        let message = "a private /proc needs root: run the test suite as root";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("SKIPPED: {message}");
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gst_pipelines_password_is_hidden_from_other_users_as_the_unit_hides_it() {
    if !tools() || !root() {
        return;
    }
    let password = format!("pw-{:016x}", fastrand::u64(..));
    let port = onnxd_free_port();
    let _camera = Camera::start(port, &password);
    let pipeline = format!(
        "gst:rtspsrc location=rtsp://127.0.0.1:{port}/live user-id=cam user-pw={password} \
         latency=0 ! rtpjpegdepay ! jpegdec ! videoconvert ! video/x-raw,width=64,height=48"
    );
    let mut source = open(&pipeline, &options()).unwrap();
    three_frames(&mut source).await;
    // gst-launch has the password among its arguments (there is no other way to give it)…
    let me = std::process::id();
    let gst = command_lines()
        .into_iter()
        .find(|(_, parent, line)| *parent == me && line.starts_with("gst-launch"))
        .expect("the camera's gst-launch");
    assert!(gst.2.contains(&password), "{gst:?}");
    // …which any other user reads through a plain /proc (so the check below can fail)…
    let plain = command_lines_seen_by_nobody("defaults");
    assert!(plain.contains(&password), "visible without hidepid: {plain}");
    // …and none reads under the unit's ProtectProc=invisible.
    let hidden = command_lines_seen_by_nobody("hidepid=invisible");
    assert!(
        !hidden.contains(&password) && !hidden.contains("gst-launch"),
        "another user reads the camera's command line under hidepid=invisible: {hidden}"
    );
}

fn onnxd_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
