//! Sources decoded by an `ffmpeg` subprocess: RTSP and every other URL or path ffmpeg opens,
//! and `file://` video files. ffmpeg writes PPM images to its stdout
//! (`-f image2pipe -c:v ppm -pix_fmt rgb24`): raw RGB whose header carries each frame's size,
//! so nothing is probed beforehand and a camera that changes resolution keeps working.
//!
//! Arguments, in order: `-hide_banner -nostdin -loglevel error`, `-hwaccel <hwaccel>` when set
//! (decoded frames come back to system memory for the RGB conversion),
//! `-rtsp_transport tcp` for `rtsp://`/`rtsps://` (no UDP packet loss), `-re -stream_loop -1`
//! for [`Playback::LoopRealTime`], `-i <source>`, `-an -sn -dn`, `-vf fps=<fps>` when `fps` is
//! set (frames dropped in ffmpeg, before conversion), then the PPM output.
//!
//! A source with credentials (user info in the URL, a `password=`-like parameter: whatever
//! [`redact`] masks) is kept off the command line, which every user of the machine can read
//! in `/proc/<pid>/cmdline`: ffmpeg reads it from its stdin as a one-entry concat script
//! (`-f concat -safe 0 -protocol_whitelist … -i pipe:0`, the script naming the URL and its
//! `option rtsp_transport tcp`). ffmpeg 5.1 (Debian 12) has no other way to take an input
//! from elsewhere than argv; the concat demuxer passes the stream through unchanged.

use super::subprocess::{Framing, ProcessSource};
use super::{redact, SourceOptions};

/// Protocols a concat script may open: the network inputs ffmpeg reads cameras from and what
/// they run on (names ffmpeg lacks are ignored).
const WHITELIST: &str =
    "pipe,file,rtsp,rtsps,rtp,srtp,tcp,udp,tls,http,https,httpproxy,crypto,rtmp,rtmps,rtmpt,rtmpts,rtmpe,srt,hls";

/// How an input is played.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Playback {
    /// As ffmpeg reads it: live streams at their pace, files as fast as frames are taken, once.
    AsIs,
    /// A file played at its own frame rate and looped, like a camera.
    LoopRealTime,
}

/// A source reading `input` (URL or path) through ffmpeg, described as `shown` (redacted
/// by the source).
pub(crate) fn source(input: &str, shown: &str, options: &SourceOptions, playback: Playback) -> ProcessSource {
    let secret = redact(input) != input;
    ProcessSource::new(
        "ffmpeg",
        args(input, options, playback, secret),
        Framing::Ppm,
        shown,
        options,
    )
    .with_stdin(secret.then(|| concat_script(input)))
}

/// A concat script naming `input` alone: single-quoted, a quote inside written `'\''`, a
/// line break percent-encoded (it would end the directive).
fn concat_script(input: &str) -> String {
    let quoted = input
        .replace('\'', r"'\''")
        .replace('\n', "%0A")
        .replace('\r', "%0D");
    let mut script = format!("ffconcat version 1.0\nfile '{quoted}'\n");
    if is_rtsp(input) {
        script.push_str("option rtsp_transport tcp\n");
    }
    script
}

fn is_rtsp(input: &str) -> bool {
    input.starts_with("rtsp://") || input.starts_with("rtsps://")
}

/// The arguments; with `secret` the input is the concat script on stdin.
fn args(input: &str, options: &SourceOptions, playback: Playback, secret: bool) -> Vec<String> {
    let mut args: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "error"]
        .map(String::from)
        .into();
    if !options.hwaccel.is_empty() {
        args.extend(["-hwaccel".into(), options.hwaccel.clone()]);
    }
    if is_rtsp(input) && !secret {
        args.extend(["-rtsp_transport".into(), "tcp".into()]);
    }
    if playback == Playback::LoopRealTime {
        args.extend(["-re", "-stream_loop", "-1"].map(String::from));
    }
    if secret {
        args.extend(
            [
                "-f",
                "concat",
                "-safe",
                "0",
                "-protocol_whitelist",
                WHITELIST,
                "-i",
                "pipe:0",
            ]
            .map(String::from),
        );
    } else {
        args.extend(["-i".into(), input.into()]);
    }
    args.extend(["-an", "-sn", "-dn"].map(String::from));
    if options.fps > 0.0 {
        args.extend(["-vf".into(), format!("fps={}", options.fps)]);
    }
    args.extend(["-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1"].map(String::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::FrameSource;

    #[test]
    fn rtsp_with_hwaccel_and_fps() {
        let options = SourceOptions::new(2.5, "cuda");
        let source = source("rtsp://cam/s", "rtsp://cam/s", &options, Playback::AsIs);
        assert_eq!(
            source.args().join(" "),
            "-hide_banner -nostdin -loglevel error -hwaccel cuda -rtsp_transport tcp -i rtsp://cam/s \
             -an -sn -dn -vf fps=2.5 -f image2pipe -c:v ppm -pix_fmt rgb24 pipe:1"
        );
        assert_eq!(source.stdin(), None);
    }

    #[test]
    fn credentials_go_on_stdin_not_on_the_command_line() {
        let options = SourceOptions::new(0.0, "");
        let url = "rtsp://u:it's@cam/s";
        let source = source(url, url, &options, Playback::AsIs);
        assert_eq!(
            source.args().join(" "),
            format!(
                "-hide_banner -nostdin -loglevel error -f concat -safe 0 -protocol_whitelist {WHITELIST} \
                 -i pipe:0 -an -sn -dn -f image2pipe -c:v ppm -pix_fmt rgb24 pipe:1"
            )
        );
        assert_eq!(
            source.stdin(),
            Some("ffconcat version 1.0\nfile 'rtsp://u:it'\\''s@cam/s'\noption rtsp_transport tcp\n")
        );
        assert_eq!(source.describe(), "rtsp://***@cam/s");
        // A secret parameter counts too; no rtsp option for other protocols.
        let url = "srt://cam:9000?passphrase=x&pwd=y";
        let srt = super::source(url, url, &options, Playback::AsIs);
        assert!(!srt.args().join(" ").contains("pwd=y"));
        assert_eq!(
            srt.stdin(),
            Some(format!("ffconcat version 1.0\nfile '{url}'\n").as_str())
        );
    }

    #[test]
    fn looped_file_without_fps_or_hwaccel() {
        let options = SourceOptions::new(0.0, "");
        assert_eq!(
            args("/v/clip.mp4", &options, Playback::LoopRealTime, false).join(" "),
            "-hide_banner -nostdin -loglevel error -re -stream_loop -1 -i /v/clip.mp4 -an -sn -dn \
             -f image2pipe -c:v ppm -pix_fmt rgb24 pipe:1"
        );
    }
}
