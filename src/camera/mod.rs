//! Cameras (SPEC §8): a camera's `source` string becomes a [`FrameSource`] that yields RGB8
//! [`Frame`]s; [`pipeline`] paces them into the model (newest-wins queue, stall watchdog,
//! reconnect backoff) and publishes the results.
//!
//! `source` forms, as [`open`] reads them:
//!
//! | form | how | frames |
//! |---|---|---|
//! | `http://…`, `https://…` | `http.rs`: one GET; `multipart/*` content type (MJPEG) → parsed as a stream, otherwise a snapshot, polled again at `fps` | decoded JPEG (any `image` format), original bytes in [`Frame::jpeg`] |
//! | `gst:<pipeline>` | `gst.rs`: `gst-launch-1.0 -q <pipeline> ! videoconvert ! videoscale ! video/x-raw,format=RGB,… ! fdsink fd=1` | raw RGB, size from the pipeline's last `width=`/`height=` |
//! | `file:///dir/pattern` with `*`/`?`, or a single image (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.webp`) | `file.rs`: matching files sorted by name, at `fps`, **looped** | decoded image |
//! | `file:///path/video.mp4` (any other extension) | `file.rs` → ffmpeg with `-re -stream_loop -1`: real time, **looped** | raw RGB |
//! | `v4l2:///dev/video0?width=&height=&format=` | [`v4l2`]: parameters checked, then refused: capture is not built in | — |
//! | anything else (`rtsp://…`, `rtmp://…`, a plain path, …) | `ffmpeg.rs`: `ffmpeg [-hwaccel H] -i <source> … -f image2pipe -c:v ppm pipe:1` (`-rtsp_transport tcp` for RTSP), played once | raw RGB, size from each PPM header |
//!
//! Errors: [`SourceError::is_fatal`] tells a dead source (connection refused or closed,
//! process exited, no data for [`SourceOptions::timeout`], end of a played-once file) from one
//! bad frame (a corrupt JPEG in an MJPEG stream or a file list: the source goes on, the
//! caller counts and skips it). After a fatal error the caller backs off and calls
//! [`FrameSource::next_frame`] again (the source reconnects or restarts its process) or
//! [`open`]s it anew; the two are equivalent.
//!
//! Decoding (JPEG and the other image formats) runs on tokio's blocking pool, not on the
//! async worker threads.
//!
//! Credentials never leave this module in clear: every description and error message passes
//! through [`redact`] (URL user info and secret-looking parameters become `***`). They do
//! appear on the ffmpeg/gst-launch command line, i.e. in `ps` output of the same machine.

mod ffmpeg;
mod file;
mod gst;
mod http;
mod multipart;
pub mod pipeline;
mod redact;
mod subprocess;
pub mod v4l2;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use redact::redact;

/// Largest encoded frame, HTTP body or multipart part accepted (bytes); anything larger is
/// taken for a broken stream rather than buffered.
pub const MAX_ENCODED_BYTES: usize = 32 << 20;

/// Largest width or height accepted from a source's own header (PPM from ffmpeg).
pub const MAX_DIMENSION: u32 = 16384;

/// Default of [`SourceOptions::timeout`], the default `stall_secs` of SPEC §3.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// One decoded camera frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB8 pixels, row-major without padding: `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// The JPEG the source delivered, when it delivered one (HTTP, JPEG files), for snapshots.
    pub jpeg: Option<Bytes>,
    /// When the frame's data arrived (before decoding).
    pub captured: Instant,
}

/// How a source is read, from the camera's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceOptions {
    /// Frames per second: the polling rate of HTTP snapshots and image files, and ffmpeg's
    /// output rate (`-vf fps=`). `0` = as fast as the caller asks (snapshots, files) or as
    /// the stream delivers (ffmpeg). Not applied to MJPEG streams and `gst:` pipelines, which
    /// deliver at the camera's (or the pipeline's) rate.
    pub fps: f64,
    /// ffmpeg's `-hwaccel` (e.g. `cuda`, `vaapi`); empty = software decoding.
    pub hwaccel: String,
    /// Longest wait for data: the HTTP connection, response and each chunk of a stream, each
    /// frame of a subprocess (plus one frame interval at `fps`). Waiting longer is
    /// [`SourceError::Stalled`].
    pub timeout: Duration,
}

impl SourceOptions {
    /// Options with `fps` and `hwaccel` and the default timeout ([`DEFAULT_TIMEOUT`]).
    pub fn new(fps: f64, hwaccel: &str) -> SourceOptions {
        SourceOptions {
            fps,
            hwaccel: hwaccel.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The time between frames at `fps`, if it is set.
    fn interval(&self) -> Option<Duration> {
        (self.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / self.fps))
    }

    /// How long to wait for a frame that the source produces at `fps`.
    fn frame_wait(&self) -> Duration {
        self.timeout + self.interval().unwrap_or_default()
    }
}

/// Why a source gave no frame. Every message is redacted (see [`redact`]); `what` is the
/// source's [`FrameSource::describe`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The `source` string or the options cannot work (bad form, bad parameter, a backend
    /// not built in). Reopening does not help.
    #[error("camera source {what}: {reason}")]
    Invalid {
        /// The source, redacted.
        what: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The source cannot be reached, refused, ended or died (connection refused or closed,
    /// HTTP error status, process exited).
    #[error("camera source {what}: {reason}")]
    Failed {
        /// The source, redacted.
        what: String,
        /// What happened.
        reason: String,
    },
    /// No data for longer than [`SourceOptions::timeout`].
    #[error("camera source {what}: no data for {:.1} s", .waited.as_secs_f64())]
    Stalled {
        /// The source, redacted.
        what: String,
        /// How long it waited.
        waited: Duration,
    },
    /// One frame could not be decoded; the source goes on with the next one.
    #[error("camera source {what}: corrupt frame skipped: {reason}")]
    Corrupt {
        /// The source, redacted.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
}

impl SourceError {
    /// Whether the source is dead (reconnect with backoff); `false` for a single corrupt
    /// frame, after which the same source delivers the next frame.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SourceError::Corrupt { .. })
    }

    fn invalid(what: &str, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Invalid {
            what: redact(what),
            reason: redact(&reason.to_string()),
        }
    }

    fn failed(what: &str, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Failed {
            what: redact(what),
            reason: redact(&reason.to_string()),
        }
    }

    fn stalled(what: &str, waited: Duration) -> SourceError {
        SourceError::Stalled {
            what: redact(what),
            waited,
        }
    }

    fn corrupt(what: &str, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Corrupt {
            what: redact(what),
            reason: redact(&reason.to_string()),
        }
    }
}

/// What [`FrameSource::next_frame`] returns.
pub type FrameFuture<'a> = Pin<Box<dyn Future<Output = Result<Frame, SourceError>> + Send + 'a>>;

/// A camera: frames on demand. Connecting is lazy (the first call connects or starts the
/// process), so [`open`] only checks the `source` string.
///
/// A `next_frame` future may be dropped before it finishes (e.g. by the caller's own
/// timeout): a connection or process caught mid-frame is closed with it, and the next call
/// reconnects.
pub trait FrameSource: Send {
    /// The next frame. `Err(e)` with `e.is_fatal()`: the source died or stalled (a later
    /// call reconnects); otherwise one frame was bad and the source goes on.
    fn next_frame(&mut self) -> FrameFuture<'_>;

    /// The source for logs and status, credentials redacted.
    fn describe(&self) -> String;
}

/// Opens the source named by a camera's `source` string (forms: see the module
/// documentation). Checks the string and options only; nothing is connected or started
/// before the first [`FrameSource::next_frame`].
pub fn open(source: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    let source = source.trim();
    if !(options.fps.is_finite() && options.fps >= 0.0) {
        return Err(SourceError::invalid(
            source,
            format!("fps must be a number >= 0, not {}", options.fps),
        ));
    }
    if options.timeout.is_zero() {
        return Err(SourceError::invalid(source, "the timeout must be above 0"));
    }
    if source.is_empty() {
        return Err(SourceError::invalid(source, "the source is empty"));
    }
    if source.starts_with("v4l2://") {
        return Err(v4l2::unavailable(source));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Box::new(http::HttpSource::new(source, options)?));
    }
    if let Some(pipeline) = source.strip_prefix("gst:") {
        return Ok(Box::new(gst::source(pipeline, options)?));
    }
    if let Some(path) = source.strip_prefix("file://") {
        return file::open(path, options);
    }
    Ok(Box::new(ffmpeg::source(
        source,
        source,
        options,
        ffmpeg::Playback::AsIs,
    )))
}

/// Decodes an encoded image (JPEG, PNG, BMP, WebP: what `image` is built with) off the async
/// threads; a bad image is [`SourceError::Corrupt`].
async fn decode(what: &str, bytes: Bytes, captured: Instant) -> Result<Frame, SourceError> {
    match tokio::task::spawn_blocking(move || decode_now(bytes, captured)).await {
        Ok(result) => result.map_err(|reason| SourceError::corrupt(what, reason)),
        Err(join) => Err(SourceError::corrupt(what, format!("decoder failed: {join}"))),
    }
}

/// [`decode`] on the calling thread, with the one image decoder of onnxd
/// ([`crate::pipeline::decode`]: truncated JPEGs refused, Motion-JPEG without Huffman tables
/// decoded with the standard ones).
fn decode_now(bytes: Bytes, captured: Instant) -> Result<Frame, String> {
    let image = crate::pipeline::decode::decode(&bytes).map_err(|e| e.to_string())?;
    Ok(Frame {
        width: image.width,
        height: image.height,
        rgb: image.rgb,
        jpeg: image.jpeg.then_some(bytes),
        captured,
    })
}

/// An error and its causes, `: `-separated (reqwest and io errors keep the useful part in
/// their sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Spaces calls `1/fps` apart (no catching up after a late call); without `fps` it never
/// waits.
struct Pacer {
    interval: Option<Duration>,
    due: Option<tokio::time::Instant>,
}

impl Pacer {
    fn new(options: &SourceOptions) -> Pacer {
        Pacer {
            interval: options.interval(),
            due: None,
        }
    }

    /// Waits until one interval after the previous call returned (the first call returns at
    /// once).
    async fn tick(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        if let Some(due) = self.due {
            tokio::time::sleep_until(due).await;
        }
        self.due = Some(tokio::time::Instant::now() + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageFormat;
    use std::io::Cursor;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_jpeg_and_keeps_its_bytes() {
        let bytes = Bytes::from(jpeg(40, 24));
        let frame = decode_now(bytes.clone(), Instant::now()).unwrap();
        assert_eq!(
            (frame.width, frame.height, frame.rgb.len()),
            (40, 24, 40 * 24 * 3)
        );
        assert_eq!(frame.jpeg, Some(bytes));
    }

    #[test]
    fn png_has_no_jpeg_bytes() {
        let mut png = Cursor::new(Vec::new());
        image::RgbImage::new(3, 2)
            .write_to(&mut png, ImageFormat::Png)
            .unwrap();
        let frame = decode_now(png.into_inner().into(), Instant::now()).unwrap();
        assert_eq!((frame.width, frame.height, frame.jpeg), (3, 2, None));
    }

    #[test]
    fn corrupt_and_truncated_images_are_errors() {
        let full = jpeg(16, 16);
        let truncated = decode_now(Bytes::copy_from_slice(&full[..full.len() / 2]), Instant::now());
        assert!(truncated.unwrap_err().contains("truncated"));
        let mut garbage = full.clone();
        garbage[200..full.len() - 2].fill(0x55);
        assert!(decode_now(garbage.into(), Instant::now()).is_err());
        assert!(decode_now(Bytes::from_static(b"hello"), Instant::now())
            .unwrap_err()
            .contains("not an image"));
    }

    #[test]
    fn open_checks_options_and_forms() {
        let bad_fps = SourceOptions::new(f64::NAN, "");
        assert!(matches!(
            open("rtsp://h/x", &bad_fps),
            Err(SourceError::Invalid { .. })
        ));
        let options = SourceOptions::new(5.0, "");
        assert!(open("  ", &options).is_err());
        for source in [
            "rtsp://h/x",
            "http://h/x",
            "gst:videotestsrc ! video/x-raw,width=8,height=8",
            "/tmp/a.mp4",
        ] {
            let opened = open(source, &options).unwrap();
            assert!(!opened.describe().is_empty(), "{source}");
        }
        let error = open("v4l2:///dev/video0?width=640&height=480", &options)
            .err()
            .unwrap();
        assert!(error.to_string().contains("not built in"), "{error}");
    }

    #[test]
    fn errors_are_redacted_and_classified() {
        let error = SourceError::failed("rtsp://u:pw@h/x", "rtsp://u:pw@h/x: refused");
        assert_eq!(
            error.to_string(),
            "camera source rtsp://***@h/x: rtsp://***@h/x: refused"
        );
        assert!(error.is_fatal());
        assert!(!SourceError::corrupt("x", "bad").is_fatal());
        assert!(SourceError::stalled("x", Duration::from_millis(1500))
            .to_string()
            .ends_with("no data for 1.5 s"));
    }

    #[tokio::test]
    async fn pacer_spaces_calls_by_the_interval() {
        let mut pacer = Pacer::new(&SourceOptions::new(50.0, ""));
        let start = Instant::now();
        for _ in 0..3 {
            pacer.tick().await;
        }
        let paced = start.elapsed();
        assert!(paced >= Duration::from_millis(40), "{paced:?}");
        let mut unpaced = Pacer::new(&SourceOptions::new(0.0, ""));
        let start = Instant::now();
        for _ in 0..3 {
            unpaced.tick().await;
        }
        assert!(start.elapsed() < Duration::from_millis(20));
    }
}
