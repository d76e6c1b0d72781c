//! Cameras end to end: every kind of real local source (HTTP MJPEG stream and snapshots
//! served by the test, a video file through ffmpeg, a file glob, a GStreamer `videotestsrc`)
//! produces results on MQTT for the example model; a source faster than the model drops
//! frames by cause with at most two queued; a source that dies goes `offline`, comes back
//! `online`, and the other cameras never stop; credentials in a source URL appear nowhere.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{self, json, start_daemon, Broker, Client};

/// A JPEG of `size`×`size` pixels; `corrupt` cuts it in half.
fn jpeg(size: u32, shade: u8, corrupt: bool) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 5) as u8])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    let mut bytes = bytes.into_inner();
    if corrupt {
        bytes.truncate(bytes.len() / 2);
    }
    bytes
}

/// An HTTP server on 127.0.0.1 answering every request with an MJPEG stream (a frame every
/// `interval`, the third one corrupt) or, for `snapshot`, one JPEG. Stopping it closes every
/// connection; it can be started again on the same port.
struct CameraServer {
    port: u16,
    running: Arc<AtomicBool>,
    /// While set, streams stay open but send nothing (a stalled camera).
    paused: Arc<AtomicBool>,
}

impl CameraServer {
    fn start(port: u16, interval: Duration, snapshot: bool) -> CameraServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let running = Arc::new(AtomicBool::new(true));
        let paused = Arc::new(AtomicBool::new(false));
        let alive = running.clone();
        let quiet = paused.clone();
        std::thread::spawn(move || {
            while alive.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (alive, quiet) = (alive.clone(), quiet.clone());
                        std::thread::spawn(move || serve(stream, interval, snapshot, &alive, &quiet));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CameraServer {
            port,
            running,
            paused,
        }
    }

    fn stop(&self) {
        self.running.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for CameraServer {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, interval: Duration, snapshot: bool, alive: &AtomicBool, paused: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    let mut request = [0u8; 4096];
    let _ = stream.read(&mut request);
    if snapshot {
        let frame = jpeg(32, 200, false);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            frame.len()
        );
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(&frame));
        return;
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut n = 0u32;
    while alive.load(Ordering::Relaxed) {
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let frame = jpeg(32, (n % 250) as u8, n == 2);
        let part = format!(
            "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            frame.len()
        );
        if stream
            .write_all(part.as_bytes())
            .and_then(|_| stream.write_all(&frame))
            .and_then(|_| stream.write_all(b"\r\n"))
            .is_err()
        {
            return;
        }
        n += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
}

#[test]
fn every_source_kind_gives_results_and_a_dead_source_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    let models = dir.path().join("models");
    harness::repository(&models);
    std::fs::create_dir_all(models.join("cnnimg/1")).unwrap();
    std::fs::copy(
        crate::common::fixture("cnn.onnx"),
        models.join("cnnimg/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        models.join("cnnimg/model.toml"),
        "[input]\nwidth = 96\nheight = 96\n",
    )
    .unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for (i, shade) in [30u8, 220].into_iter().enumerate() {
        std::fs::write(frames.join(format!("f{i}.jpg")), jpeg(16, shade, false)).unwrap();
    }
    let clip = dir.path().join("clip.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10",
            "-t",
            "2",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&clip)
        .status()
        .expect("ffmpeg is installed by scripts/setup");
    assert!(made.success());
    let mjpeg = CameraServer::start(0, Duration::from_millis(50), false);
    let snapshot = CameraServer::start(0, Duration::ZERO, true);
    let flood = CameraServer::start(0, Duration::ZERO, false);
    let stalling = CameraServer::start(0, Duration::from_millis(50), false);
    let cameras = [
        (
            "stall",
            format!("http://127.0.0.1:{}/stream", stalling.port),
            "digitsimg",
            5,
        ),
        (
            "once",
            "gst:videotestsrc num-buffers=3 ! video/x-raw,width=32,height=24,framerate=10/1".to_string(),
            "digitsimg",
            5,
        ),
        (
            "files",
            format!("file://{}/*.jpg", frames.display()),
            "digitsimg",
            10,
        ),
        ("video", format!("file://{}", clip.display()), "digitsimg", 5),
        (
            "gst",
            "gst:videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=10/1".to_string(),
            "digitsimg",
            5,
        ),
        (
            "mjpeg",
            format!("http://127.0.0.1:{}/stream", mjpeg.port),
            "digitsimg",
            5,
        ),
        (
            "snap",
            format!("http://viewer:hunter2@127.0.0.1:{}/snap.jpg", snapshot.port),
            "digitsimg",
            5,
        ),
        (
            "flood",
            format!("http://127.0.0.1:{}/stream", flood.port),
            "cnnimg",
            1000,
        ),
    ];
    let mut config = harness::url_setting(broker.port) + "\n";
    for (name, source, model, fps) in &cameras {
        config.push_str(&format!("[[camera]]\nname = \"{name}\"\nsource = \"{source}\"\nmodel = \"{model}\"\nfps = {fps}\nstall_secs = 2\n"));
    }
    let http_port = harness::free_port();
    let daemon = start_daemon(dir.path(), "cams", Some(http_port), &config);
    let client = Client::connect(broker.port, "camera-client", &["onnxd/cams/cameras/#"]);

    // Every camera delivers results for its model.
    let mut results: HashMap<String, usize> = HashMap::new();
    let mut statuses: Vec<String> = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while cameras
        .iter()
        .any(|(name, ..)| results.get(*name).copied().unwrap_or(0) < 2)
    {
        assert!(
            Instant::now() < until,
            "results so far {results:?}:\n{}",
            daemon.log()
        );
        let Some(message) = client.recv(Duration::from_secs(1)) else {
            continue;
        };
        let topic = String::from_utf8_lossy(&message.topic).into_owned();
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        if let Some(camera) = topic
            .strip_prefix("onnxd/cams/cameras/")
            .and_then(|t| t.strip_suffix("/result"))
        {
            let body = json(&message);
            assert_eq!(body["camera"], camera, "{body}");
            *results.entry(camera.to_string()).or_default() += 1;
        } else {
            statuses.push(format!("{topic}={payload}"));
        }
    }

    // The MJPEG server dies: that camera goes offline, the others keep going; it comes back.
    mjpeg.stop();
    let wait_status = |camera: &str, wanted: &str, statuses: &mut Vec<String>| {
        let until = Instant::now() + Duration::from_secs(30);
        let mut others = 0;
        let status = format!("onnxd/cams/cameras/{camera}/status");
        loop {
            assert!(Instant::now() < until, "no {camera} {wanted}; seen {statuses:?}");
            let Some(message) = client.recv(Duration::from_secs(1)) else {
                continue;
            };
            let topic = String::from_utf8_lossy(&message.topic).into_owned();
            let payload = String::from_utf8_lossy(&message.payload).into_owned();
            if topic.ends_with("/files/result") {
                others += 1;
            }
            statuses.push(format!("{topic}={payload}"));
            if topic == status && payload == wanted {
                return others;
            }
        }
    };
    wait_status("mjpeg", "offline", &mut statuses);
    let restarted = CameraServer::start(mjpeg.port, Duration::from_millis(50), false);
    let files_meanwhile = wait_status("mjpeg", "online", &mut statuses);
    assert!(
        files_meanwhile > 0,
        "the file camera stopped while the MJPEG one was down"
    );

    // A stream that stays open but sends nothing for `stall_secs` (2 s): offline, then back.
    stalling.paused.store(true, Ordering::Relaxed);
    wait_status("stall", "offline", &mut statuses);
    stalling.paused.store(false, Ordering::Relaxed);
    wait_status("stall", "online", &mut statuses);
    // A pipeline that ends after three frames (the process exits) is restarted, again and again.
    wait_status("once", "offline", &mut statuses);
    wait_status("once", "online", &mut statuses);

    let text = harness::metrics(&client.runtime, http_port);
    // The flood source is faster than the CNN: frames are dropped, never more than two wait.
    let flood_received = harness::sample(&text, "onnxd_camera_frames_received_total{camera=\"flood\"}");
    let flood_processed = harness::sample(&text, "onnxd_camera_frames_processed_total{camera=\"flood\"}");
    let flood_dropped = harness::sample(
        &text,
        "onnxd_camera_frames_skipped_total{camera=\"flood\",cause=\"queue_full\"}",
    );
    let flood_skipped: u64 = ["fps", "queue_full", "corrupt", "inference_error"]
        .iter()
        .map(|cause| {
            harness::sample(
                &text,
                &format!("onnxd_camera_frames_skipped_total{{camera=\"flood\",cause=\"{cause}\"}}"),
            )
        })
        .sum();
    assert!(
        flood_dropped > 0,
        "no queue_full drops: received {flood_received}, processed {flood_processed}"
    );
    // Two queued and one in the model at most (the counters are read while frames flow).
    let waiting = flood_received.saturating_sub(flood_processed + flood_skipped);
    assert!(waiting <= 3, "{waiting} frames waiting: received {flood_received}, processed {flood_processed}, skipped {flood_skipped}");
    assert!(
        harness::sample(
            &text,
            "onnxd_camera_frames_skipped_total{camera=\"mjpeg\",cause=\"corrupt\"}"
        ) >= 1,
        "{text}"
    );
    assert!(
        harness::sample(&text, "onnxd_camera_reconnects_total{camera=\"mjpeg\"}") >= 1,
        "{text}"
    );
    crate::common::promtool_check(&text);
    // The snapshot camera's password is nowhere: not in logs, metrics or status messages.
    for (what, text) in [
        ("log", daemon.log()),
        ("metrics", text),
        ("status", statuses.join("\n")),
    ] {
        assert!(
            !text.contains("hunter2"),
            "the camera password leaked into the {what}"
        );
    }
    assert!(
        statuses
            .iter()
            .any(|s| s.contains("viewer:***@") || s.contains("***@")),
        "{statuses:?}"
    );
    drop(restarted);
    println!("camera results: {results:?}; flood received {flood_received}, processed {flood_processed}, dropped {flood_dropped}");
}

#[test]
fn sighup_adds_and_removes_cameras_and_a_bad_config_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    harness::repository(&dir.path().join("models"));
    let frame = dir.path().join("frame.jpg");
    std::fs::write(&frame, jpeg(16, 90, false)).unwrap();
    let camera = |name: &str| {
        format!(
            "[[camera]]\nname = \"{name}\"\nsource = \"file://{}\"\nmodel = \"digitsimg\"\nfps = 10\n",
            frame.display()
        )
    };
    let mqtt = harness::url_setting(broker.port) + "\n";
    let daemon = start_daemon(dir.path(), "hup", None, &format!("{mqtt}{}", camera("a")));
    let client = Client::connect(broker.port, "hup-client", &["onnxd/hup/cameras/+/result"]);
    let next_camera = |client: &Client| {
        let message = client.recv(Duration::from_secs(20)).expect("a camera result");
        json(&message)["camera"].as_str().unwrap().to_string()
    };
    assert_eq!(next_camera(&client), "a");
    // A config that does not parse is refused: camera `a` keeps running.
    let good = std::fs::read_to_string(daemon.config()).unwrap();
    std::fs::write(daemon.config(), format!("{good}\n[[camera]]\nname = ")).unwrap();
    daemon.signal("HUP");
    harness::wait_until("the refusal in the log", Duration::from_secs(10), || {
        daemon.log().contains("SIGHUP: config refused")
    });
    while client.recv(Duration::ZERO).is_some() {}
    assert_eq!(next_camera(&client), "a");
    // `a` replaced by `b`.
    std::fs::write(daemon.config(), good.replace(&camera("a"), &camera("b"))).unwrap();
    daemon.signal("HUP");
    harness::wait_until("camera b", Duration::from_secs(10), || {
        daemon.log().contains("camera started camera=b")
    });
    std::thread::sleep(Duration::from_millis(300));
    while client.recv(Duration::ZERO).is_some() {}
    for _ in 0..5 {
        assert_eq!(
            next_camera(&client),
            "b",
            "camera a still publishing after its removal"
        );
    }
    assert!(
        daemon.log().contains("camera removed camera=a"),
        "{}",
        daemon.log()
    );
}

/// One image decoder for every source: the same JPEG — as encoders write it, and as a
/// Motion-JPEG camera sends it, without Huffman tables — gives the same `result` from a camera
/// (`file://` source), over HTTP, over MQTT and from `onnxd infer` on the model directory.
#[test]
fn the_same_jpeg_gives_the_same_result_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    harness::repository(&models);
    let broker = Broker::start(dir.path(), "");
    let original = jpeg(40, 200, false);
    let stripped = onnxd::pipeline::decode::strip_huffman_tables(&original);
    assert_ne!(original, stripped);
    for (name, bytes) in [("plain.jpg", &original), ("mjpeg.jpg", &stripped)] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let mut config = harness::url_setting(broker.port) + "\n";
    for name in ["plain", "mjpeg"] {
        let source = dir.path().join(format!("{name}.jpg"));
        config.push_str(&format!(
            "[[camera]]\nname = \"{name}\"\nsource = \"file://{}\"\nmodel = \"digitsimg\"\nfps = 5\n",
            source.display()
        ));
    }
    let http_port = harness::free_port();
    let daemon = start_daemon(dir.path(), "same", Some(http_port), &config);
    let client = Client::connect(
        broker.port,
        "same-client",
        &["onnxd/same/cameras/+/result", "same/reply"],
    );
    let mut results = Vec::new();
    for (name, bytes) in [("plain", &original), ("mjpeg", &stripped)] {
        let camera = json(&client.next_on(
            &format!("onnxd/same/cameras/{name}/result"),
            Duration::from_secs(30),
        ));
        let http = client.runtime.block_on(async {
            let url = format!("http://127.0.0.1:{http_port}/v2/models/digitsimg/infer");
            let reply = reqwest::Client::new()
                .post(url)
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            reply.json::<serde_json::Value>().await.unwrap()
        });
        client.publish(
            "onnxd/same/models/digitsimg/infer",
            bytes.clone(),
            rumqttc::v5::mqttbytes::v5::PublishProperties {
                response_topic: Some("same/reply".into()),
                ..Default::default()
            },
        );
        let mqtt = json(&client.next_on("same/reply", Duration::from_secs(30)));
        let file = dir.path().join(format!("{name}.jpg"));
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_onnxd"))
            .args([
                "infer",
                models.join("digitsimg").to_str().unwrap(),
                "-i",
                file.to_str().unwrap(),
            ])
            .env("ORT_DYLIB_PATH", crate::common::ort_library())
            .output()
            .unwrap();
        assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
        let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
        for (source, reply) in [
            ("camera", &camera),
            ("http", &http),
            ("mqtt", &mqtt),
            ("cli", &cli),
        ] {
            assert!(
                reply["result"].is_array(),
                "{name} via {source}: {reply}\n{}",
                daemon.log()
            );
            results.push((format!("{name} via {source}"), reply["result"].clone()));
        }
    }
    let (first, expected) = &results[0];
    for (which, result) in &results {
        assert_eq!(result, expected, "{which} differs from {first}");
    }
}
