//! Sources that are a child process writing frames to its stdout (ffmpeg, gst-launch). The
//! process starts on the first frame and again on the first frame after it died. What must
//! not be on its command line (a camera URL with a password: any user can read
//! `/proc/<pid>/cmdline`) can be handed to it on its stdin instead. Its stderr
//! is logged at debug level (redacted) and its last lines explain an exit. Waiting longer
//! than [`SourceOptions::frame_wait`] for a frame is a stall; the process is then killed.
//! Dropping the source kills the process (`kill_on_drop`); tokio reaps it in the background,
//! so no zombie stays behind.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::{redact, Frame, FrameFuture, FrameSource, SourceError, SourceOptions, MAX_DIMENSION};

/// How many stderr lines an exit message quotes.
const STDERR_TAIL: usize = 5;

/// How long an exited process may take to report its status and close stderr.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How frames are laid out on the process's stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Binary PPM images (`P6`, maxval 255) back to back, each with its own size.
    Ppm,
    /// Raw RGB frames of a fixed size, each row padded to a multiple of 4 bytes (GStreamer's
    /// default stride).
    RawRgb {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// A program whose stdout is a sequence of frames.
pub(crate) struct ProcessSource {
    program: &'static str,
    args: Vec<String>,
    /// Written to the process's stdin, which is then closed (else stdin is /dev/null).
    stdin: Option<String>,
    framing: Framing,
    /// For logs and errors, redacted.
    shown: String,
    frame_wait: Duration,
    running: Option<Running>,
}

struct Running {
    /// Killed when dropped.
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The last lines of stderr, once it closes.
    stderr: JoinHandle<String>,
}

/// Why no frame was read.
enum ReadError {
    /// Output ended (the process exited or closed stdout), possibly mid-frame.
    Ended,
    /// Output that is not in the expected framing.
    Garbled(String),
}

impl ProcessSource {
    /// A source running `program args…`, described as `shown` (redacted here).
    pub(crate) fn new(
        program: &'static str,
        args: Vec<String>,
        framing: Framing,
        shown: &str,
        options: &SourceOptions,
    ) -> ProcessSource {
        ProcessSource {
            program,
            args,
            stdin: None,
            framing,
            shown: redact(shown),
            frame_wait: options.frame_wait(),
            running: None,
        }
    }

    /// The same source, handing `input` to the process on its stdin.
    pub(crate) fn with_stdin(self, input: Option<String>) -> ProcessSource {
        ProcessSource { stdin: input, ..self }
    }

    /// The program's arguments.
    #[cfg(test)]
    pub(crate) fn args(&self) -> &[String] {
        &self.args
    }

    /// What the process gets on its stdin.
    #[cfg(test)]
    pub(crate) fn stdin(&self) -> Option<&str> {
        self.stdin.as_deref()
    }

    fn start(&self) -> Result<Running, SourceError> {
        let stdin = match self.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        };
        let mut child = Command::new(self.program)
            .args(&self.args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SourceError::failed(&self.shown, format!("cannot start {}: {e}", self.program)))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(SourceError::failed(&self.shown, "child process without pipes"));
        };
        if let (Some(mut pipe), Some(input)) = (child.stdin.take(), self.stdin.clone()) {
            // Small (well under a pipe's buffer); closed once written. A process that exits
            // first makes the write fail, which its exit status then explains.
            tokio::spawn(async move {
                let _ = pipe.write_all(input.as_bytes()).await;
            });
        }
        let shown = self.shown.clone();
        let stderr = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tail = VecDeque::with_capacity(STDERR_TAIL);
            while let Ok(Some(line)) = lines.next_line().await {
                let line = redact(&line);
                tracing::debug!(source = %shown, "{line}");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail).join(" | ")
        });
        Ok(Running {
            child,
            stdout: BufReader::with_capacity(1 << 20, stdout),
            stderr,
        })
    }

    async fn frame(&mut self) -> Result<Frame, SourceError> {
        let mut running = match self.running.take() {
            Some(running) => running,
            None => self.start()?,
        };
        let read = tokio::time::timeout(self.frame_wait, read_frame(&mut running.stdout, self.framing)).await;
        match read {
            Ok(Ok(frame)) => {
                self.running = Some(running);
                Ok(frame)
            }
            Ok(Err(ReadError::Ended)) => Err(self.exited(running).await),
            Ok(Err(ReadError::Garbled(reason))) => Err(SourceError::failed(&self.shown, reason)),
            Err(_) => Err(SourceError::stalled(&self.shown, self.frame_wait)),
        }
    }

    /// The error for a process whose output ended: its exit status and last stderr lines.
    async fn exited(&self, mut running: Running) -> SourceError {
        let status = match tokio::time::timeout(EXIT_GRACE, running.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("status unknown: {e}"),
            Err(_) => "closed its output but did not exit".into(),
        };
        let stderr = match tokio::time::timeout(EXIT_GRACE, &mut running.stderr).await {
            Ok(Ok(tail)) if !tail.is_empty() => format!(": {tail}"),
            _ => String::new(),
        };
        SourceError::failed(&self.shown, format!("{} ended ({status}){stderr}", self.program))
    }
}

impl FrameSource for ProcessSource {
    fn next_frame(&mut self) -> FrameFuture<'_> {
        Box::pin(self.frame())
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

async fn read_frame(stdout: &mut (impl AsyncRead + Unpin), framing: Framing) -> Result<Frame, ReadError> {
    let (width, height, stride) = match framing {
        Framing::Ppm => {
            let (width, height) = read_ppm_header(stdout).await?;
            (width, height, width as usize * 3)
        }
        Framing::RawRgb { width, height } => (width, height, (width as usize * 3).next_multiple_of(4)),
    };
    let mut data = vec![0; stride * height as usize];
    stdout.read_exact(&mut data).await.map_err(|_| ReadError::Ended)?;
    let captured = Instant::now();
    let row = width as usize * 3;
    if stride != row {
        for y in 1..height as usize {
            data.copy_within(y * stride..y * stride + row, y * row);
        }
        data.truncate(row * height as usize);
    }
    Ok(Frame {
        width,
        height,
        rgb: data,
        jpeg: None,
        captured,
    })
}

/// Reads `P6 <width> <height> 255` and the single whitespace byte after it (ffmpeg's PPM
/// encoder writes no comments).
async fn read_ppm_header(stdout: &mut (impl AsyncRead + Unpin)) -> Result<(u32, u32), ReadError> {
    let mut fields = [0u32; 3];
    let magic = read_field(stdout).await?;
    if magic != "P6" {
        return Err(ReadError::Garbled(format!(
            "expected a PPM (P6) image, read {magic:?}"
        )));
    }
    for field in &mut fields {
        let text = read_field(stdout).await?;
        *field = text
            .parse()
            .map_err(|_| ReadError::Garbled(format!("bad PPM header field {text:?}")))?;
    }
    let [width, height, maxval] = fields;
    if maxval != 255 || !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
        return Err(ReadError::Garbled(format!(
            "unsupported PPM image {width}x{height}, maxval {maxval} (expected at most {MAX_DIMENSION} pixels a side, maxval 255)"
        )));
    }
    Ok((width, height))
}

/// One whitespace-separated header field, consuming the whitespace byte that ends it.
async fn read_field(stdout: &mut (impl AsyncRead + Unpin)) -> Result<String, ReadError> {
    let mut field = String::new();
    loop {
        let byte = stdout.read_u8().await.map_err(|_| ReadError::Ended)?;
        if byte.is_ascii_whitespace() {
            if field.is_empty() {
                continue;
            }
            return Ok(field);
        }
        if field.len() >= 8 {
            return Err(ReadError::Garbled("PPM header field too long".into()));
        }
        field.push(char::from(byte));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(data: &[u8], framing: Framing) -> Result<Frame, ReadError> {
        read_frame(&mut &data[..], framing).await
    }

    #[tokio::test]
    async fn reads_ppm_frames_back_to_back() {
        let mut data = b"P6\n2 1\n255\n".to_vec();
        data.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        data.extend_from_slice(b"P6 1 1 255\n\x07\x08\x09");
        let mut reader = &data[..];
        let first = read_frame(&mut reader, Framing::Ppm).await.ok().unwrap();
        assert_eq!(
            (first.width, first.height, first.rgb),
            (2, 1, vec![1, 2, 3, 4, 5, 6])
        );
        let second = read_frame(&mut reader, Framing::Ppm).await.ok().unwrap();
        assert_eq!(second.rgb, [7, 8, 9]);
        assert!(matches!(
            read_frame(&mut reader, Framing::Ppm).await,
            Err(ReadError::Ended)
        ));
    }

    #[tokio::test]
    async fn refuses_other_ppm_and_stops_at_a_cut_frame() {
        for header in [
            &b"P5 1 1 255\n"[..],
            b"P6 1 1 65535\n",
            b"P6 0 1 255\n",
            b"P6 x 1 255\n",
        ] {
            assert!(matches!(
                read(header, Framing::Ppm).await,
                Err(ReadError::Garbled(_))
            ));
        }
        assert!(matches!(
            read(b"P6 2 2 255\n\x01\x02", Framing::Ppm).await,
            Err(ReadError::Ended)
        ));
    }

    #[tokio::test]
    async fn drops_the_row_padding_of_raw_frames() {
        // 3 pixels = 9 bytes a row, padded to 12.
        let mut data = Vec::new();
        for row in 0..2u8 {
            data.extend((0..9).map(|i| row * 10 + i));
            data.extend_from_slice(&[0xEE; 3]);
        }
        let frame = read(&data, Framing::RawRgb { width: 3, height: 2 })
            .await
            .ok()
            .unwrap();
        let want: Vec<u8> = (0..9).chain(10..19).collect();
        assert_eq!((frame.width, frame.height, frame.rgb), (3, 2, want));
    }
}
