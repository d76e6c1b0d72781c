//! V4L2 cameras (USB/UVC webcams): the parts of capture that need no device. [`parse`] reads
//! `v4l2:///dev/video0?width=1280&height=720&format=mjpeg`, [`negotiate`] chooses a pixel
//! format and size from what the device offers, [`yuyv_to_rgb`] and [`mjpeg_to_frame`] turn
//! captured buffers into frames.
//!
//! Capture itself is **not built in**: the `v4l` crate generates its kernel bindings with
//! bindgen at build time, which needs libclang (missing on the build machines and a burden for
//! cross builds). [`open`](super::open) therefore checks a `v4l2://` source and refuses it
//! with the equivalent `gst:v4l2src …` source, which GStreamer captures instead.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;

use super::{decode_now, Frame, SourceError, MAX_DIMENSION};

/// The size chosen when the source names none: the largest offered within it (else the
/// smallest offered).
pub const DEFAULT_MAX_SIZE: (u32, u32) = (1280, 720);

/// The pixel formats onnxd converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Motion-JPEG (`MJPG`): one JPEG per frame, decoded with `image`.
    Mjpeg,
    /// Packed 4:2:2 `Y0 U Y1 V` (`YUYV`), converted by [`yuyv_to_rgb`].
    Yuyv,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
        }
    }

    fn from_fourcc(fourcc: [u8; 4]) -> Option<PixelFormat> {
        [PixelFormat::Mjpeg, PixelFormat::Yuyv]
            .into_iter()
            .find(|format| format.fourcc() == fourcc)
    }
}

/// A `v4l2://` source: device and wishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4l2Request {
    /// The device node, e.g. `/dev/video0`.
    pub device: PathBuf,
    /// `width=` and `height=` (both or neither).
    pub size: Option<(u32, u32)>,
    /// `format=mjpeg` or `format=yuyv`.
    pub format: Option<PixelFormat>,
}

/// One format and discrete frame size a device offers (`VIDIOC_ENUM_FMT` ×
/// `VIDIOC_ENUM_FRAMESIZES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The pixel format's four-character code (`b"MJPG"`, `b"YUYV"`, `b"NV12"`, …).
    pub fourcc: [u8; 4],
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The format and size to set on the device (`VIDIOC_S_FMT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Reads `v4l2://<device>?width=W&height=H&format=mjpeg|yuyv` (all parameters optional).
pub fn parse(source: &str) -> Result<V4l2Request, SourceError> {
    let invalid = |reason: String| SourceError::invalid(source, reason);
    let rest = source
        .strip_prefix("v4l2://")
        .ok_or_else(|| invalid("expected v4l2:///dev/videoN".into()))?;
    let (device, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !device.starts_with('/') {
        return Err(invalid("needs a device path: v4l2:///dev/video0".into()));
    }
    let (mut width, mut height, mut format) = (None, None, None);
    for parameter in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let dimension = || {
            value
                .parse()
                .ok()
                .filter(|v| (1..=MAX_DIMENSION).contains(v))
                .ok_or_else(|| invalid(format!("{name}={value:?}: expected 1..={MAX_DIMENSION}")))
        };
        match name {
            "width" => width = Some(dimension()?),
            "height" => height = Some(dimension()?),
            "format" => {
                format = Some(match value.to_ascii_lowercase().as_str() {
                    "mjpeg" | "mjpg" => PixelFormat::Mjpeg,
                    "yuyv" => PixelFormat::Yuyv,
                    _ => return Err(invalid(format!("format={value:?}: expected mjpeg or yuyv"))),
                })
            }
            _ => {
                return Err(invalid(format!(
                    "unknown parameter {name:?} (expected width, height, format)"
                )))
            }
        }
    }
    let size = match (width, height) {
        (Some(width), Some(height)) => Some((width, height)),
        (None, None) => None,
        _ => return Err(invalid("width and height go together".into())),
    };
    Ok(V4l2Request {
        device: PathBuf::from(device),
        size,
        format,
    })
}

/// Chooses what to capture from what the device offers. Only MJPEG and YUYV are usable
/// (only the requested one if `format=` is given). The size: the requested one if offered,
/// else the smallest offered that covers it, else the largest; without a request, the
/// largest within [`DEFAULT_MAX_SIZE`], else the smallest. At that size MJPEG is preferred
/// to YUYV (a fraction of the USB bandwidth, so full frame rates at large sizes).
pub fn negotiate(request: &V4l2Request, offers: &[Offer]) -> Result<Choice, SourceError> {
    let usable: Vec<Choice> = offers
        .iter()
        .filter_map(|offer| {
            let format = PixelFormat::from_fourcc(offer.fourcc)?;
            request
                .format
                .is_none_or(|wanted| wanted == format)
                .then_some(Choice {
                    format,
                    width: offer.width,
                    height: offer.height,
                })
        })
        .collect();
    let area = |c: &&Choice| u64::from(c.width) * u64::from(c.height);
    let within = |(width, height): (u32, u32)| move |c: &&Choice| c.width <= width && c.height <= height;
    let covers = |(width, height): (u32, u32)| move |c: &&Choice| c.width >= width && c.height >= height;
    let size = match request.size {
        Some(wanted) => usable
            .iter()
            .find(|c| (c.width, c.height) == wanted)
            .or_else(|| usable.iter().filter(covers(wanted)).min_by_key(area))
            .or_else(|| usable.iter().max_by_key(area)),
        None => usable
            .iter()
            .filter(within(DEFAULT_MAX_SIZE))
            .max_by_key(area)
            .or_else(|| usable.iter().min_by_key(area)),
    };
    let Some(&Choice { width, height, .. }) = size else {
        let offered: Vec<String> = offers
            .iter()
            .map(|o| String::from_utf8_lossy(&o.fourcc).into_owned())
            .collect();
        return Err(SourceError::invalid(
            &request.device.display().to_string(),
            format!(
                "the device offers [{}]; onnxd reads {}",
                offered.join(", "),
                request
                    .format
                    .map_or("MJPG or YUYV".into(), |f| String::from_utf8_lossy(&f.fourcc())
                        .into_owned())
            ),
        ));
    };
    let format = if usable.contains(&Choice {
        format: PixelFormat::Mjpeg,
        width,
        height,
    }) {
        PixelFormat::Mjpeg
    } else {
        PixelFormat::Yuyv
    };
    Ok(Choice {
        format,
        width,
        height,
    })
}

/// Converts a YUYV frame (`Y0 U Y1 V` per pixel pair, rows `stride` bytes apart) to RGB8,
/// BT.601 limited range ("studio swing": Y 16–235, U/V 16–240), in the usual 8-bit fixed
/// point:
///
/// ```text
/// C = Y - 16, D = U - 128, E = V - 128
/// R = clamp((298 C + 409 E + 128) >> 8)             ≈ 1.164 C + 1.596 E
/// G = clamp((298 C - 100 D - 208 E + 128) >> 8)     ≈ 1.164 C - 0.392 D - 0.813 E
/// B = clamp((298 C + 516 D + 128) >> 8)             ≈ 1.164 C + 2.017 D
/// ```
///
/// within one level of the exact BT.601 formula. An odd last pixel uses its pair's `Y0`.
pub fn yuyv_to_rgb(yuyv: &[u8], width: u32, height: u32, stride: usize) -> Result<Vec<u8>, SourceError> {
    let (width, height) = (width as usize, height as usize);
    let row_bytes = width.div_ceil(2) * 4;
    let needed = if height == 0 {
        0
    } else {
        stride * (height - 1) + row_bytes
    };
    if stride < row_bytes || yuyv.len() < needed {
        return Err(SourceError::corrupt(
            "YUYV frame",
            format!(
                "{width}x{height} with stride {stride} needs {needed} bytes, got {}",
                yuyv.len()
            ),
        ));
    }
    let mut rgb = vec![0; width * height * 3];
    for (row, out) in rgb.chunks_exact_mut(width * 3).enumerate() {
        let input = &yuyv[row * stride..row * stride + row_bytes];
        for (pair, out) in input.chunks_exact(4).zip(out.chunks_mut(6)) {
            let [y0, u, y1, v] = [pair[0], pair[1], pair[2], pair[3]];
            out[..3].copy_from_slice(&ycbcr_to_rgb(y0, u, v));
            if out.len() == 6 {
                out[3..].copy_from_slice(&ycbcr_to_rgb(y1, u, v));
            }
        }
    }
    Ok(rgb)
}

/// One BT.601 limited-range pixel (see [`yuyv_to_rgb`]).
fn ycbcr_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

/// Decodes one MJPEG buffer (Huffman tables may be omitted, as UVC cameras do); a bad
/// buffer is [`SourceError::Corrupt`].
pub fn mjpeg_to_frame(jpeg: Bytes, captured: Instant) -> Result<Frame, SourceError> {
    decode_now(jpeg, captured).map_err(|reason| SourceError::corrupt("MJPEG frame", reason))
}

/// The error for a `v4l2://` source: its own mistake if it has one, else that capture is not
/// built in, with the `gst:` source that does the same.
pub(crate) fn unavailable(source: &str) -> SourceError {
    let request = match parse(source) {
        Ok(request) => request,
        Err(error) => return error,
    };
    let device = request.device.display();
    let (width, height) = request.size.unwrap_or(DEFAULT_MAX_SIZE);
    let caps = format!("width={width},height={height}");
    let instead = match request.format {
        Some(PixelFormat::Mjpeg) => {
            format!("gst:v4l2src device={device} ! image/jpeg,{caps} ! jpegdec ! video/x-raw,{caps}")
        }
        _ => format!("gst:v4l2src device={device} ! video/x-raw,{caps}"),
    };
    SourceError::invalid(
        source,
        format!(
            "V4L2 capture is not built into this onnxd (the v4l crate needs libclang at build time); \
             use `{instead}` instead"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(fourcc: &[u8; 4], width: u32, height: u32) -> Offer {
        Offer {
            fourcc: *fourcc,
            width,
            height,
        }
    }

    fn request(query: &str) -> V4l2Request {
        parse(&format!("v4l2:///dev/video0{query}")).unwrap()
    }

    fn choice(format: PixelFormat, width: u32, height: u32) -> Choice {
        Choice {
            format,
            width,
            height,
        }
    }

    #[test]
    fn parses_parameters() {
        assert_eq!(
            request("?width=1280&height=720&format=MJPEG"),
            V4l2Request {
                device: "/dev/video0".into(),
                size: Some((1280, 720)),
                format: Some(PixelFormat::Mjpeg),
            }
        );
        assert_eq!(request("").size, None);
        for bad in [
            "v4l2://video0",
            "v4l2:///dev/video0?width=640",
            "v4l2:///dev/video0?width=0&height=480",
            "v4l2:///dev/video0?format=h264",
            "v4l2:///dev/video0?fps=30",
        ] {
            assert!(matches!(parse(bad), Err(SourceError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn negotiates_format_and_size() {
        let webcam = [
            offer(b"YUYV", 640, 480),
            offer(b"YUYV", 1280, 720),
            offer(b"YUYV", 1920, 1080),
            offer(b"MJPG", 640, 480),
            offer(b"MJPG", 1280, 720),
            offer(b"MJPG", 1920, 1080),
            offer(b"H264", 3840, 2160),
        ];
        let cases = [
            ("", choice(PixelFormat::Mjpeg, 1280, 720)),
            ("?width=1920&height=1080", choice(PixelFormat::Mjpeg, 1920, 1080)),
            (
                "?width=1920&height=1080&format=yuyv",
                choice(PixelFormat::Yuyv, 1920, 1080),
            ),
            // Not offered: the smallest size that covers it.
            ("?width=800&height=600", choice(PixelFormat::Mjpeg, 1280, 720)),
            // Larger than everything: the largest.
            ("?width=3840&height=2160", choice(PixelFormat::Mjpeg, 1920, 1080)),
        ];
        for (query, want) in cases {
            assert_eq!(negotiate(&request(query), &webcam).unwrap(), want, "{query}");
        }
        // YUYV only where MJPEG lacks the size; the default size falls back to the smallest.
        let odd = [
            offer(b"YUYV", 320, 240),
            offer(b"MJPG", 1600, 1200),
            offer(b"YUYV", 1600, 1200),
        ];
        assert_eq!(
            negotiate(&request("?width=320&height=240"), &odd).unwrap(),
            choice(PixelFormat::Yuyv, 320, 240)
        );
        assert_eq!(
            negotiate(&request(""), &odd).unwrap(),
            choice(PixelFormat::Yuyv, 320, 240)
        );
        let error = negotiate(&request("?format=mjpeg"), &[offer(b"NV12", 640, 480)]).unwrap_err();
        assert!(
            error.to_string().contains("offers [NV12]; onnxd reads MJPG"),
            "{error}"
        );
    }

    /// The exact BT.601 limited-range conversion.
    fn reference(y: u8, u: u8, v: u8) -> [f64; 3] {
        let (c, d, e) = (f64::from(y) - 16.0, f64::from(u) - 128.0, f64::from(v) - 128.0);
        let (kr, kb) = (0.299, 0.114);
        let kg = 1.0 - kr - kb;
        let (sy, sc) = (255.0 / 219.0, 255.0 / 224.0);
        let r = sy * c + sc * 2.0 * (1.0 - kr) * e;
        let b = sy * c + sc * 2.0 * (1.0 - kb) * d;
        let g = sy * c - sc * 2.0 * (kb * (1.0 - kb) * d + kr * (1.0 - kr) * e) / kg;
        [r, g, b].map(|x| x.round().clamp(0.0, 255.0))
    }

    #[test]
    fn yuyv_is_bt601_limited_range_within_one_level() {
        let named = [
            ([16, 128, 16, 128], [0, 0, 0, 0, 0, 0]),
            ([235, 128, 235, 128], [255, 255, 255, 255, 255, 255]),
            ([126, 128, 16, 128], [128, 128, 128, 0, 0, 0]),
            // 100 % red, green and blue of the BT.601 colour bars.
            ([81, 90, 81, 240], [255, 0, 0, 255, 0, 0]),
            ([145, 54, 145, 34], [0, 255, 0, 0, 255, 0]),
            ([41, 240, 41, 110], [0, 0, 255, 0, 0, 255]),
        ];
        for (yuyv, want) in named {
            let got = yuyv_to_rgb(&yuyv, 2, 1, 4).unwrap();
            let off = got
                .iter()
                .zip(want)
                .map(|(&g, w)| (i32::from(g) - w).abs())
                .max()
                .unwrap();
            assert!(off <= 1, "{yuyv:?}: {got:?} vs {want:?}");
        }
        for y in (0..=255).step_by(3) {
            for u in (0..=255).step_by(5) {
                for v in (0..=255).step_by(5) {
                    let got = ycbcr_to_rgb(y, u, v);
                    let want = reference(y, u, v);
                    for (g, w) in got.iter().zip(want) {
                        assert!(
                            (f64::from(*g) - w).abs() <= 1.0,
                            "Y {y} U {u} V {v}: {got:?} vs {want:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn yuyv_rows_strides_and_odd_widths() {
        // 3 pixels a row (two pairs, 8 bytes) with 4 bytes of padding, 2 rows.
        let mut frame = vec![0u8; 12 * 2];
        frame[..8].copy_from_slice(&[235, 128, 16, 128, 126, 128, 99, 128]);
        frame[12..20].copy_from_slice(&[16, 128, 235, 128, 235, 128, 99, 128]);
        let rgb = yuyv_to_rgb(&frame, 3, 2, 12).unwrap();
        let gray: Vec<u8> = rgb.chunks(3).map(|p| p[0]).collect();
        assert_eq!(gray, [255, 0, 128, 0, 255, 255]);
        assert!(yuyv_to_rgb(&frame[..19], 3, 2, 12).is_err());
        assert!(yuyv_to_rgb(&frame, 3, 2, 6).is_err());
    }

    #[test]
    fn mjpeg_frames_decode_with_image() {
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(64, 48)
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        let frame = mjpeg_to_frame(jpeg.into_inner().into(), Instant::now()).unwrap();
        assert_eq!(
            (frame.width, frame.height, frame.rgb.len()),
            (64, 48, 64 * 48 * 3)
        );
        assert!(
            !mjpeg_to_frame(Bytes::from_static(b"\xff\xd8\xff"), Instant::now())
                .unwrap_err()
                .is_fatal()
        );
    }

    #[test]
    fn v4l2_sources_are_refused_with_the_gst_equivalent() {
        let error = unavailable("v4l2:///dev/video2?width=640&height=480&format=mjpeg").to_string();
        assert!(error.contains("not built into this onnxd"), "{error}");
        assert!(
            error.contains(
                "gst:v4l2src device=/dev/video2 ! image/jpeg,width=640,height=480 ! jpegdec ! video/x-raw,width=640,height=480"
            ),
            "{error}"
        );
        assert!(unavailable("v4l2:///dev/video0?width=1")
            .to_string()
            .contains("width and height"));
    }
}
