//! `gst:<pipeline>` sources, for cameras that GStreamer reaches best (Jetson CSI cameras via
//! `nvarguscamerasrc`, libcamera, hardware decoders). onnxd runs
//!
//! ```text
//! gst-launch-1.0 -q <pipeline> ! videoconvert ! videoscale ! video/x-raw,format=RGB,width=W,height=H ! fdsink fd=1
//! ```
//!
//! and reads raw RGB frames from its stdout (`-q` keeps gst-launch's own messages off it).
//! `W x H` is the frame size: the last `width=` and `height=` in the pipeline text, so the
//! pipeline must end in (or contain) caps with both, e.g.
//! `gst:nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv`.
//! The pipeline must not end in a sink. `fps` is not applied: put `videorate` and a
//! `framerate=` in the pipeline to convert fewer frames.

use super::subprocess::{Framing, ProcessSource};
use super::{SourceError, SourceOptions, MAX_DIMENSION};

/// A source running `pipeline` in gst-launch.
pub(crate) fn source(pipeline: &str, options: &SourceOptions) -> Result<ProcessSource, SourceError> {
    let shown = format!("gst:{pipeline}");
    let pipeline = pipeline.trim();
    let (Some(width), Some(height)) = (last_value(pipeline, "width"), last_value(pipeline, "height")) else {
        return Err(SourceError::invalid(
            &shown,
            "the pipeline needs caps with the frame size, e.g. `... ! video/x-raw,width=1280,height=720`",
        ));
    };
    if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
        return Err(SourceError::invalid(
            &shown,
            format!("frame size {width}x{height} is outside 1..={MAX_DIMENSION}"),
        ));
    }
    let full = format!(
        "{pipeline} ! videoconvert ! videoscale ! video/x-raw,format=RGB,width={width},height={height} ! fdsink fd=1"
    );
    // gst-launch escapes spaces inside an argument, so the description goes word by word;
    // it joins them with spaces again, giving the parser the text as written.
    let args = std::iter::once("-q")
        .chain(full.split_whitespace())
        .map(String::from)
        .collect();
    Ok(ProcessSource::new(
        "gst-launch-1.0",
        args,
        Framing::RawRgb { width, height },
        &shown,
        options,
    ))
}

/// The last `name=<u32>` (or `name=(int)<u32>`) in a pipeline description.
fn last_value(pipeline: &str, name: &str) -> Option<u32> {
    pipeline
        .split(|c: char| c.is_whitespace() || c == ',' || c == '!')
        .filter_map(|field| field.strip_prefix(name)?.strip_prefix('='))
        .filter_map(|value| value.trim_start_matches("(int)").parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::FrameSource;

    #[test]
    fn appends_the_rgb_sink_with_the_last_size() {
        let pipeline =
            "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=(int)1920,height=(int)1080 ! nvvidconv ! video/x-raw,width=640,height=360";
        let source = source(pipeline, &SourceOptions::new(5.0, "")).unwrap();
        assert_eq!(source.args()[..2], ["-q", "nvarguscamerasrc"]);
        assert_eq!(
            source.args()[1..].join(" "),
            format!(
                "{pipeline} ! videoconvert ! videoscale ! video/x-raw,format=RGB,width=640,height=360 ! fdsink fd=1"
            )
        );
        assert_eq!(source.describe(), format!("gst:{pipeline}"));
    }

    #[test]
    fn needs_a_size() {
        let options = SourceOptions::new(5.0, "");
        let error = source("v4l2src device=/dev/video0", &options).err().unwrap();
        assert!(error.to_string().contains("caps with the frame size"), "{error}");
        assert!(source("videotestsrc ! video/x-raw,width=0,height=10", &options).is_err());
        // `sensor-width=` is not the frame width.
        assert!(source("src sensor-width=8 ! video/x-raw,height=8", &options).is_err());
    }
}
