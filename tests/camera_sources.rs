//! Camera frame sources against real local sources: HTTP servers on 127.0.0.1 written here
//! (MJPEG stream with a corrupt part, snapshots), ffmpeg reading a clip it made itself,
//! gst-launch running `videotestsrc`, image files in a temporary directory. Sources that die
//! (server killed, process exited, stream stalled) must turn into errors promptly, and no
//! error or description may show a password.
//!
//! ffmpeg and gst-launch-1.0 come from `scripts/setup` (Debian packages). A test whose tool is
//! missing fails when `CI=true` and otherwise says loudly that it skipped.

use std::future::Future;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onnxd::camera::{open, redact, Frame, FrameSource, SourceError, SourceOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest any single `next_frame` may take in these tests before the test fails as hung.
const HUNG: Duration = Duration::from_secs(30);

/// Whether `tool` runs (asked for its `version_flag`); with `CI=true` a missing tool fails
/// the test.
fn tool(tool: &str, version_flag: &str) -> bool {
    let found = Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let message = format!(
            "{tool} is not installed: run ./scripts/setup as root (it installs ffmpeg and GStreamer)"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("SKIPPED: {message}");
    }
    found
}

fn options(fps: f64, timeout: Duration) -> SourceOptions {
    SourceOptions {
        timeout,
        ..SourceOptions::new(fps, "")
    }
}

async fn next(source: &mut Box<dyn FrameSource>) -> Result<Frame, SourceError> {
    tokio::time::timeout(HUNG, source.next_frame())
        .await
        .unwrap_or_else(|_| panic!("{} hung", source.describe()))
}

fn size(frame: &Frame) -> (u32, u32) {
    assert_eq!(frame.rgb.len(), (frame.width * frame.height * 3) as usize);
    (frame.width, frame.height)
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A JPEG cut in the middle, as a glitching camera or network delivers it.
fn corrupt_jpeg() -> Vec<u8> {
    let mut bytes = jpeg(64, 48);
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// An HTTP server on 127.0.0.1: each connection's request head (lower-cased) and its number
/// go to `respond`, which owns the socket. Aborting the handle kills the server and every
/// connection it holds.
async fn serve<F, R>(respond: F) -> (String, JoinHandle<()>)
where
    F: Fn(TcpStream, String, usize) -> R + Send + Sync + 'static,
    R: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        for number in 0.. {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            connections.spawn(respond(socket, head, number));
        }
    });
    (format!("http://{address}"), server)
}

fn mjpeg_part(body: &[u8], sized: bool) -> Vec<u8> {
    let length = if sized {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    [
        format!("--frame\r\nContent-Type: image/jpeg\r\n{length}\r\n").as_bytes(),
        body,
        b"\r\n",
    ]
    .concat()
}

const MJPEG_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn mjpeg_stream_skips_a_corrupt_part_and_fails_fast_when_the_server_dies() {
    let (base, server) = serve(|mut socket, _, _| async move {
        let mut stream = MJPEG_HEAD.to_vec();
        stream.extend(mjpeg_part(&jpeg(64, 48), true));
        stream.extend(mjpeg_part(&corrupt_jpeg(), true));
        stream.extend(mjpeg_part(&jpeg(32, 24), false)); // ends at the next boundary
        stream.extend(mjpeg_part(&jpeg(16, 8), true));
        stream.extend_from_slice(b"--frame\r\nContent-Length: 5000\r\n\r\npartial");
        socket.write_all(&stream).await.unwrap();
        std::future::pending::<()>().await; // holds the connection until the server is killed
    })
    .await;
    let mut source = open(&format!("{base}/video"), &options(0.0, Duration::from_secs(10))).unwrap();

    let first = next(&mut source).await.unwrap();
    assert_eq!(size(&first), (64, 48));
    assert!(first.jpeg.is_some());
    let corrupt = next(&mut source).await.unwrap_err();
    assert!(!corrupt.is_fatal(), "{corrupt}");
    assert!(corrupt.to_string().contains("corrupt frame skipped"), "{corrupt}");
    assert_eq!(size(&next(&mut source).await.unwrap()), (32, 24));
    assert_eq!(size(&next(&mut source).await.unwrap()), (16, 8));

    // Killed mid-part: the error comes at once, long before the 10 s timeout.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (next(&mut source).await, started.elapsed(), source)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    let (result, waited, mut source) = waiting.await.unwrap();
    let error = result.unwrap_err();
    assert!(
        error.is_fatal() && waited < Duration::from_secs(3),
        "{error} after {waited:?}"
    );
    assert!(error.to_string().contains("closed"), "{error}");
    // Reconnecting to the dead server fails promptly too.
    let error = next(&mut source).await.unwrap_err();
    assert!(matches!(error, SourceError::Failed { .. }), "{error}");
}

#[tokio::test]
async fn mjpeg_stream_that_stalls_is_an_error_after_the_timeout_and_reconnects() {
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let (base, _server) = serve(move |mut socket, _, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let stream = [MJPEG_HEAD, &mjpeg_part(&jpeg(24, 16), true)].concat();
            socket.write_all(&stream).await.unwrap();
            std::future::pending::<()>().await; // silent, connection open
        }
    })
    .await;
    let timeout = Duration::from_millis(400);
    let mut source = open(&format!("{base}/video"), &options(0.0, timeout)).unwrap();
    assert_eq!(size(&next(&mut source).await.unwrap()), (24, 16));
    let started = Instant::now();
    let error = next(&mut source).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, SourceError::Stalled { .. }), "{error}");
    assert!(waited >= timeout && waited < timeout * 5, "{waited:?}");
    assert_eq!(size(&next(&mut source).await.unwrap()), (24, 16));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // A wait cut short by the caller drops the connection; the next call reconnects.
    let cut = tokio::time::timeout(Duration::from_millis(50), source.next_frame()).await;
    assert!(cut.is_err());
    assert_eq!(size(&next(&mut source).await.unwrap()), (24, 16));
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn snapshots_are_polled_at_fps_with_basic_auth() {
    let (base, _server) = serve(|mut socket, head, number| async move {
        assert!(head.contains("authorization: basic dxnlcjpzzwnyzxq="), "{head}"); // user:secret
        let response = if number == 4 {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        } else {
            let body = jpeg(40 + number as u32, 30);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            [head.as_bytes(), &body].concat()
        };
        socket.write_all(&response).await.unwrap();
    })
    .await;
    let url = base.replace("http://", "http://user:secret@") + "/snapshot.jpg";
    let mut source = open(&url, &options(20.0, Duration::from_secs(10))).unwrap();
    assert!(!source.describe().contains("secret"), "{}", source.describe());

    let started = Instant::now();
    for number in 0..4 {
        let frame = next(&mut source).await.unwrap();
        assert_eq!(size(&frame), (40 + number, 30));
        assert!(frame.jpeg.is_some());
    }
    // Four polls at 20 fps: three intervals of 50 ms at least.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let error = next(&mut source).await.unwrap_err();
    assert!(error.is_fatal() && error.to_string().contains("503"), "{error}");
    assert!(!error.to_string().contains("secret"), "{error}");
    assert_eq!(size(&next(&mut source).await.unwrap()), (45, 30));
}

/// A 2 s, 10 fps, 320x240 clip made by ffmpeg's test source.
fn clip(dir: &Path) -> String {
    let path = dir.join("clip.mkv");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
        ])
        .args(["-t", "2", "-c:v", "mpeg4", "-y"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path.to_str().unwrap().to_string()
}

/// Frames until the first error.
async fn drain(source: &mut Box<dyn FrameSource>) -> (Vec<Frame>, SourceError) {
    let mut frames = Vec::new();
    loop {
        match next(source).await {
            Ok(frame) => frames.push(frame),
            Err(error) => return (frames, error),
        }
    }
}

#[tokio::test]
async fn ffmpeg_plays_a_path_once_then_reports_its_exit() {
    if !tool("ffmpeg", "-version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());

    let mut source = open(&path, &options(0.0, Duration::from_secs(10))).unwrap();
    let (frames, error) = drain(&mut source).await;
    assert_eq!(frames.len(), 20);
    assert!(frames
        .iter()
        .all(|frame| size(frame) == (320, 240) && frame.jpeg.is_none()));
    assert!(
        error.is_fatal() && error.to_string().contains("ffmpeg ended (exit status: 0)"),
        "{error}"
    );

    // fps = 5 halves the clip's 10 fps in ffmpeg.
    let mut source = open(&path, &options(5.0, Duration::from_secs(10))).unwrap();
    let (frames, _) = drain(&mut source).await;
    assert!((9..=11).contains(&frames.len()), "{} frames", frames.len());
}

/// The pid of a running ffmpeg whose command line contains `marker`.
fn ffmpeg_with(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.starts_with("ffmpeg\0") && cmdline.contains(marker)).then_some(pid)
    })
}

#[tokio::test]
async fn file_video_loops_in_real_time_and_its_process_is_reaped_on_drop() {
    if !tool("ffmpeg", "-version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());
    let mut source = open(&format!("file://{path}"), &options(0.0, Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    for _ in 0..23 {
        assert_eq!(size(&next(&mut source).await.unwrap()), (320, 240));
    }
    // 23 frames of a 20-frame clip at 10 fps: looped, and at least 2.2 s of real time.
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );

    let pid = ffmpeg_with(&path).expect("ffmpeg is running");
    drop(source);
    let gone = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "ffmpeg {pid} not killed and reaped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rtsp_failure_does_not_leak_the_password() {
    if !tool("ffmpeg", "-version") {
        return;
    }
    let source_url = "rtsp://user:secret@127.0.0.1:1/x";
    let mut source = open(source_url, &options(5.0, Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let error = next(&mut source).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = format!("{error} {error:?} {}", source.describe());
    assert!(!text.contains("secret"), "{text}");
    assert!(
        text.contains("rtsp://***@127.0.0.1:1/x") && text.contains("Connection refused"),
        "{text}"
    );
    assert_eq!(redact(source_url), "rtsp://***@127.0.0.1:1/x");
}

#[tokio::test]
async fn gst_pipeline_frames_with_padded_rows_then_exit() {
    if !tool("gst-launch-1.0", "--version") {
        return;
    }
    // 162 pixels = 486 bytes a row, which GStreamer pads to 488.
    let pipeline = "gst:videotestsrc num-buffers=20 ! video/x-raw,width=162,height=120";
    let mut source = open(pipeline, &options(0.0, Duration::from_secs(10))).unwrap();
    let (frames, error) = drain(&mut source).await;
    assert_eq!(frames.len(), 20);
    for frame in &frames {
        assert_eq!(size(frame), (162, 120));
        // Colour bars are vertical: every row of the top half equals the first one
        // (a stride mistake would shear them).
        let row = 162 * 3;
        for y in 1..60 {
            assert_eq!(frame.rgb[y * row..(y + 1) * row], frame.rgb[..row], "row {y}");
        }
    }
    assert!(
        error.is_fatal() && error.to_string().contains("gst-launch-1.0 ended"),
        "{error}"
    );

    let broken = "gst:nosuchsrc ! video/x-raw,width=8,height=8";
    let error = next(&mut open(broken, &options(0.0, Duration::from_secs(10))).unwrap())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nosuchsrc"), "{error}");
}

#[tokio::test]
async fn image_files_play_in_name_order_and_loop() {
    let dir = tempfile::tempdir().unwrap();
    let write_png = |name: &str, width, height| {
        image::RgbImage::new(width, height)
            .save(dir.path().join(name))
            .unwrap();
    };
    write_png("frame_1.png", 32, 16);
    std::fs::write(dir.path().join("frame_2.jpg"), jpeg(48, 24)).unwrap();
    std::fs::write(dir.path().join("frame_3.png"), b"not a png").unwrap();
    write_png("other.png", 8, 8);
    let source = format!("file://{}/frame_*", dir.path().display());
    let mut source = open(&source, &options(0.0, Duration::from_secs(10))).unwrap();

    let first = next(&mut source).await.unwrap();
    assert_eq!((size(&first), first.jpeg.is_none()), ((32, 16), true));
    let second = next(&mut source).await.unwrap();
    assert_eq!((size(&second), second.jpeg.is_some()), ((48, 24), true));
    let error = next(&mut source).await.unwrap_err();
    assert!(!error.is_fatal(), "{error}");
    assert_eq!(size(&next(&mut source).await.unwrap()), (32, 16));

    let empty = format!("file://{}/nothing_*.jpg", dir.path().display());
    let error = next(&mut open(&empty, &options(0.0, Duration::from_secs(1))).unwrap())
        .await
        .unwrap_err();
    assert!(
        error.is_fatal() && error.to_string().contains("no file matches"),
        "{error}"
    );
}
