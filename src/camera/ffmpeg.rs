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

use super::subprocess::{Framing, ProcessSource};
use super::SourceOptions;

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
    ProcessSource::new(
        "ffmpeg",
        args(input, options, playback),
        Framing::Ppm,
        shown,
        options,
    )
}

fn args(input: &str, options: &SourceOptions, playback: Playback) -> Vec<String> {
    let mut args: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "error"]
        .map(String::from)
        .into();
    if !options.hwaccel.is_empty() {
        args.extend(["-hwaccel".into(), options.hwaccel.clone()]);
    }
    if input.starts_with("rtsp://") || input.starts_with("rtsps://") {
        args.extend(["-rtsp_transport".into(), "tcp".into()]);
    }
    if playback == Playback::LoopRealTime {
        args.extend(["-re", "-stream_loop", "-1"].map(String::from));
    }
    args.extend(["-i".into(), input.into()]);
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
        let source = source("rtsp://u:p@cam/s", "rtsp://u:p@cam/s", &options, Playback::AsIs);
        assert_eq!(
            source.args().join(" "),
            "-hide_banner -nostdin -loglevel error -hwaccel cuda -rtsp_transport tcp -i rtsp://u:p@cam/s \
             -an -sn -dn -vf fps=2.5 -f image2pipe -c:v ppm -pix_fmt rgb24 pipe:1"
        );
        assert_eq!(source.describe(), "rtsp://***@cam/s");
    }

    #[test]
    fn looped_file_without_fps_or_hwaccel() {
        let options = SourceOptions::new(0.0, "");
        assert_eq!(
            args("/v/clip.mp4", &options, Playback::LoopRealTime).join(" "),
            "-hide_banner -nostdin -loglevel error -re -stream_loop -1 -i /v/clip.mp4 -an -sn -dn \
             -f image2pipe -c:v ppm -pix_fmt rgb24 pipe:1"
        );
    }
}
