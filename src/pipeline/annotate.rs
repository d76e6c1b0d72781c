//! Annotated snapshots: a camera frame (RGB8) with its [`Detection`]s drawn on it, JPEG-encoded —
//! what `P/cameras/<c>/snapshot`, Home Assistant's `image` entity and the status page show.
//!
//! Each box is a 3 px (2 px when the frame's short side is under 480 px) border in a colour
//! chosen by its label (stable across runs and processes), drawn inward from the box's edges
//! and clamped to the frame; a box wholly outside the frame, empty or with a non-finite corner
//! is not drawn. Above each box sits a tag, `label 87%` in the bundled font on a filled
//! rectangle of the box's colour; when there is no room above the box (it touches the top of
//! the frame) the tag goes just inside it, and it is shifted left to stay in the frame.
//! Detections without a box (classifiers) are listed as tags in the top-left corner, at most
//! [`MAX_CORNER_TAGS`]. Tags are drawn after every box, so no box hides a label. Characters the
//! font lacks are drawn as `?`; labels longer than [`MAX_LABEL_CHARS`] are cut with `…`.
//!
//! Text uses `ab_glyph` (rasterising glyph outlines with anti-aliasing) and a subset of DejaVu
//! Sans Bold compiled in (`font/`, ~20 KB, Latin-1; licence in `font/LICENSE.md`). The boxes and
//! tags are plain filled rectangles on an [`image::RgbImage`], so no drawing crate is needed.
//! Encoding is `image`'s JPEG encoder at [`JPEG_QUALITY`]. All of it is CPU work of a few to a
//! few tens of milliseconds per frame: callers on the async runtime run it in
//! `spawn_blocking` or on their inference thread.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, PxScaleFont, ScaleFont};
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

use crate::pipeline::postprocess::Detection;

/// JPEG quality of annotated snapshots (1–100).
pub const JPEG_QUALITY: u8 = 80;
/// Detections without a box listed in the top-left corner, at most.
pub const MAX_CORNER_TAGS: usize = 5;
/// Characters of a label drawn, at most (longer labels end in `…`).
pub const MAX_LABEL_CHARS: usize = 40;
/// The largest side a baseline JPEG can have.
const MAX_JPEG_SIDE: u32 = 65_535;

/// DejaVu Sans Bold, subset to Latin-1 and a few punctuation marks (see `font/LICENSE.md`).
const FONT: &[u8] = include_bytes!("font/DejaVuSans-Bold-subset.ttf");

/// Box and tag colours; a label's colour is `PALETTE[hash(label) % len]`. Each is saturated
/// enough to stand out from grey and from skin, sky and foliage tones.
const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 140, 190],
    [0, 128, 128],
    [170, 110, 40],
];

/// Why a frame could not be annotated; each message says what was wrong and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    /// The pixel buffer does not match the dimensions.
    #[error("a {width}x{height} RGB8 frame needs {expected} bytes, got {got}")]
    FrameSize {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// `width * height * 3`.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A side is zero or larger than JPEG allows.
    #[error("a {width}x{height} frame cannot be a JPEG: each side must be 1 to {MAX_JPEG_SIDE} pixels")]
    Dimensions {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
    },
    /// The JPEG encoder failed.
    #[error("JPEG encoding of the annotated frame failed: {0}")]
    Encode(String),
}

/// Draws `detections` on a copy of the `width` × `height` RGB8 frame `rgb` (row-major, no
/// padding) and returns it as a JPEG.
pub fn annotate(
    width: u32,
    height: u32,
    rgb: &[u8],
    detections: &[Detection],
) -> Result<Vec<u8>, AnnotateError> {
    let mut image = frame(width, height, rgb)?;
    draw(&mut image, detections);
    encode_jpeg(&image)
}

/// Draws `detections` on `image` in place (see the module documentation).
pub fn draw(image: &mut RgbImage, detections: &[Detection]) {
    if image.width() == 0 || image.height() == 0 {
        return;
    }
    let style = Style::for_frame(image.width(), image.height());
    let mut tags = Vec::new();
    let mut corner = 0;
    for detection in detections {
        let color = label_color(&detection.label);
        let anchor = match detection.bbox {
            Some(bbox) => match clamp_box(bbox, image.width(), image.height()) {
                Some(rect) => {
                    draw_border(image, rect, style.thickness, color);
                    Anchor::Box(rect)
                }
                None => continue,
            },
            None if corner < MAX_CORNER_TAGS => {
                corner += 1;
                Anchor::Corner(corner - 1)
            }
            None => continue,
        };
        tags.push((anchor, tag_text(detection), color));
    }
    for (anchor, text, color) in &tags {
        draw_tag(image, &style, *anchor, text, *color);
    }
}

/// Encodes an RGB8 image as a JPEG at [`JPEG_QUALITY`].
pub fn encode_jpeg(image: &RgbImage) -> Result<Vec<u8>, AnnotateError> {
    let mut out = Vec::with_capacity(image.as_raw().len() / 10);
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(image)
        .map_err(|e| AnnotateError::Encode(e.to_string()))?;
    Ok(out)
}

/// A copy of the frame as an image, after checking its size.
fn frame(width: u32, height: u32, rgb: &[u8]) -> Result<RgbImage, AnnotateError> {
    if width == 0 || height == 0 || width > MAX_JPEG_SIDE || height > MAX_JPEG_SIDE {
        return Err(AnnotateError::Dimensions { width, height });
    }
    let expected = width as usize * height as usize * 3;
    if rgb.len() != expected {
        return Err(AnnotateError::FrameSize {
            width,
            height,
            expected,
            got: rgb.len(),
        });
    }
    Ok(RgbImage::from_raw(width, height, rgb.to_vec()).expect("length checked above"))
}

/// Line thickness and text size for a frame.
struct Style {
    thickness: u32,
    scale: PxScale,
    padding: u32,
}

impl Style {
    fn for_frame(width: u32, height: u32) -> Style {
        let short = width.min(height);
        let text_px = (short as f32 / 32.0).clamp(11.0, 28.0);
        Style {
            thickness: if short >= 480 { 3 } else { 2 },
            scale: PxScale::from(text_px),
            padding: (text_px / 5.0).round().max(2.0) as u32,
        }
    }
}

/// A box in whole pixels, inclusive corners, inside the frame.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

/// Where a tag goes: over a box, or the n-th line of the top-left corner.
#[derive(Clone, Copy)]
enum Anchor {
    Box(Rect),
    Corner(usize),
}

/// The part of `[x1, y1, x2, y2]` (any corner order) inside the frame; `None` when nothing of
/// it is, or a corner is not finite.
fn clamp_box(bbox: [f32; 4], width: u32, height: u32) -> Option<Rect> {
    if bbox.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (left, right) = (bbox[0].min(bbox[2]), bbox[0].max(bbox[2]));
    let (top, bottom) = (bbox[1].min(bbox[3]), bbox[1].max(bbox[3]));
    let (max_x, max_y) = ((width - 1) as f32, (height - 1) as f32);
    if right < 0.0 || bottom < 0.0 || left > max_x || top > max_y {
        return None;
    }
    Some(Rect {
        x0: left.max(0.0).round() as u32,
        y0: top.max(0.0).round() as u32,
        x1: right.min(max_x).round() as u32,
        y1: bottom.min(max_y).round() as u32,
    })
}

/// Fills `[x0, x1) × [y0, y1)`, clipped to the image.
fn fill(image: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, color: [u8; 3]) {
    let (x1, y1) = (x1.min(image.width()), y1.min(image.height()));
    for y in y0..y1 {
        for x in x0..x1 {
            image.put_pixel(x, y, image::Rgb(color));
        }
    }
}

/// A `thickness` px border along the inside of `rect`.
fn draw_border(image: &mut RgbImage, rect: Rect, thickness: u32, color: [u8; 3]) {
    let Rect { x0, y0, x1, y1 } = rect;
    let t = thickness;
    fill(image, x0, y0, x1 + 1, (y0 + t).min(y1 + 1), color);
    fill(
        image,
        x0,
        (y1 + 1).saturating_sub(t).max(y0),
        x1 + 1,
        y1 + 1,
        color,
    );
    fill(image, x0, y0, (x0 + t).min(x1 + 1), y1 + 1, color);
    fill(
        image,
        (x1 + 1).saturating_sub(t).max(x0),
        y0,
        x1 + 1,
        y1 + 1,
        color,
    );
}

/// `label 87%`, the label cut to [`MAX_LABEL_CHARS`].
fn tag_text(detection: &Detection) -> String {
    let mut label: String = detection.label.chars().take(MAX_LABEL_CHARS).collect();
    if detection.label.chars().nth(MAX_LABEL_CHARS).is_some() {
        label.push('…');
    }
    let percent = (detection.score.clamp(0.0, 1.0) * 100.0).round();
    format!("{label} {percent:.0}%")
}

/// The label's palette colour (FNV-1a of its bytes: the same in every run and process).
fn label_color(label: &str) -> [u8; 3] {
    let hash = label.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    PALETTE[hash as usize % PALETTE.len()]
}

/// Black or white, whichever reads better on `background`.
fn text_color(background: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = background.map(f32::from);
    if 0.299 * r + 0.587 * g + 0.114 * b > 150.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

fn font() -> &'static FontRef<'static> {
    static PARSED: OnceLock<FontRef<'static>> = OnceLock::new();
    PARSED.get_or_init(|| FontRef::try_from_slice(FONT).expect("the bundled font parses"))
}

/// The glyph for `c`, or `?` when the font has none.
fn glyph_for(font: &PxScaleFont<&FontRef<'static>>, c: char) -> GlyphId {
    match font.glyph_id(c) {
        GlyphId(0) => font.glyph_id('?'),
        id => id,
    }
}

fn text_width(font: &PxScaleFont<&FontRef<'static>>, text: &str) -> f32 {
    let mut width = 0.0;
    let mut previous = None;
    for c in text.chars() {
        let id = glyph_for(font, c);
        if let Some(p) = previous {
            width += font.kern(p, id);
        }
        width += font.h_advance(id);
        previous = Some(id);
    }
    width
}

/// A filled tag with `text`, placed for `anchor`.
fn draw_tag(image: &mut RgbImage, style: &Style, anchor: Anchor, text: &str, color: [u8; 3]) {
    let font = font().as_scaled(style.scale);
    let pad = style.padding;
    let line = (font.ascent() - font.descent()).ceil() as u32;
    let tag_w = text_width(&font, text).ceil() as u32 + 2 * pad;
    let tag_h = line + 2 * pad;
    let (x, y) = match anchor {
        Anchor::Box(rect) if rect.y0 >= tag_h => (rect.x0, rect.y0 - tag_h),
        Anchor::Box(rect) => (rect.x0, rect.y0),
        Anchor::Corner(n) => (0, n as u32 * tag_h),
    };
    let x = x.min(image.width().saturating_sub(tag_w));
    let y = y.min(image.height().saturating_sub(tag_h));
    fill(image, x, y, x + tag_w, y + tag_h, color);
    draw_text(
        image,
        &font,
        (x + pad) as f32,
        (y + pad) as f32,
        text,
        text_color(color),
    );
}

/// Draws `text` with its top-left at (`left`, `top`), anti-aliased, clipped to the image.
fn draw_text(
    image: &mut RgbImage,
    font: &PxScaleFont<&FontRef<'static>>,
    left: f32,
    top: f32,
    text: &str,
    color: [u8; 3],
) {
    let baseline = top + font.ascent();
    let mut caret = left;
    let mut previous = None;
    for c in text.chars() {
        let id = glyph_for(font, c);
        if let Some(p) = previous {
            caret += font.kern(p, id);
        }
        let glyph = id.with_scale_and_position(font.scale(), point(caret, baseline));
        caret += font.h_advance(id);
        previous = Some(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // a space
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let x = bounds.min.x as i64 + i64::from(gx);
            let y = bounds.min.y as i64 + i64::from(gy);
            if x < 0 || y < 0 || x >= i64::from(image.width()) || y >= i64::from(image.height()) {
                return;
            }
            let pixel = image.get_pixel_mut(x as u32, y as u32);
            let alpha = coverage.clamp(0.0, 1.0);
            for (channel, ink) in pixel.0.iter_mut().zip(color) {
                *channel = (f32::from(*channel) * (1.0 - alpha) + f32::from(ink) * alpha).round() as u8;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const W: u32 = 640;
    const H: u32 = 480;

    /// A smooth grey gradient: JPEG keeps it close, so drawn pixels stand out.
    fn raw_frame(width: u32, height: u32) -> Vec<u8> {
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                let v = 100 + ((x + y) * 40 / (width + height)) as u8;
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        rgb
    }

    fn detection(label: &str, score: f32, bbox: Option<[f32; 4]>) -> Detection {
        Detection {
            label: label.to_string(),
            score,
            bbox,
        }
    }

    fn decode(jpeg: &[u8]) -> RgbImage {
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG magic");
        image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
            .expect("the annotated JPEG decodes")
            .to_rgb8()
    }

    /// Largest channel difference between the decoded and the raw frame at (x, y).
    fn diff(decoded: &RgbImage, raw: &[u8], x: u32, y: u32) -> u8 {
        let i = ((y * decoded.width() + x) * 3) as usize;
        (0..3)
            .map(|c| decoded.get_pixel(x, y).0[c].abs_diff(raw[i + c]))
            .max()
            .unwrap()
    }

    /// The middle of each side of a drawn border, one pixel inside the box's edge.
    fn border_points(rect: Rect) -> [(u32, u32); 4] {
        let (mx, my) = ((rect.x0 + rect.x1) / 2, (rect.y0 + rect.y1) / 2);
        [
            (mx, rect.y1 - 1), // bottom (the top may be under a tag: checked too, below)
            (rect.x0 + 1, my),
            (rect.x1 - 1, my),
            (mx, rect.y0 + 1),
        ]
    }

    #[test]
    fn the_bundled_font_parses_and_has_latin_1() {
        let font = font().as_scaled(PxScale::from(20.0));
        for c in ['a', 'Z', '0', '%', 'é', 'ß', '…', '?'] {
            assert_ne!(font.glyph_id(c), GlyphId(0), "glyph for {c:?}");
        }
        assert_eq!(font.glyph_id('日'), GlyphId(0));
    }

    #[test]
    fn every_box_border_differs_from_the_raw_frame() {
        let raw = raw_frame(W, H);
        let boxes = [
            [40.0, 60.0, 200.0, 220.0],
            [300.0, 10.0, 420.0, 100.0],
            [450.0, 250.0, 620.0, 460.0],
            [100.0, 300.0, 260.0, 420.0],
        ];
        let labels = ["person", "car", "dog", "bicycle"];
        let detections: Vec<Detection> = boxes
            .iter()
            .zip(labels)
            .map(|(b, l)| detection(l, 0.9, Some(*b)))
            .collect();
        let decoded = decode(&annotate(W, H, &raw, &detections).unwrap());
        assert_eq!((decoded.width(), decoded.height()), (W, H));
        for (bbox, label) in boxes.iter().zip(labels) {
            let rect = clamp_box(*bbox, W, H).unwrap();
            for (x, y) in border_points(rect) {
                let d = diff(&decoded, &raw, x, y);
                assert!(d > 40, "{label}: border pixel ({x}, {y}) differs by only {d}");
            }
            // Well inside the box (away from border and tag) the frame is untouched.
            let (cx, cy) = ((rect.x0 + rect.x1) / 2, (rect.y0 + rect.y1) / 2 + 10);
            assert!(
                diff(&decoded, &raw, cx, cy) < 12,
                "{label}: inside of the box changed"
            );
        }
        // Nowhere near any box or tag, only JPEG noise.
        assert!(diff(&decoded, &raw, 600, 20) < 12);
        assert!(diff(&decoded, &raw, 20, 470) < 12);
    }

    #[test]
    fn the_tag_sits_above_the_box_or_inside_it_at_the_top_edge() {
        let raw = raw_frame(W, H);
        // Room above: the tag is above the box's top edge.
        let decoded = decode(
            &annotate(
                W,
                H,
                &raw,
                &[detection("cat", 0.5, Some([200.0, 200.0, 400.0, 400.0]))],
            )
            .unwrap(),
        );
        assert!(diff(&decoded, &raw, 205, 190) > 40, "tag above the box");
        // Box at the top edge: the tag is inside the box, below its top.
        let decoded = decode(
            &annotate(
                W,
                H,
                &raw,
                &[detection("cat", 0.5, Some([200.0, 0.0, 400.0, 200.0]))],
            )
            .unwrap(),
        );
        assert!(diff(&decoded, &raw, 205, 8) > 40, "tag inside the box");
        // Box at the right edge: the tag is shifted left to stay in the frame.
        let long = "a-rather-long-label-for-a-box";
        let decoded = decode(
            &annotate(
                W,
                H,
                &raw,
                &[detection(long, 0.5, Some([630.0, 200.0, 639.0, 300.0]))],
            )
            .unwrap(),
        );
        assert!(diff(&decoded, &raw, 560, 190) > 40, "tag shifted into the frame");
    }

    #[test]
    fn boxes_partly_or_wholly_outside_the_frame_do_not_panic() {
        let raw = raw_frame(W, H);
        let detections = [
            detection("left-top", 0.8, Some([-50.0, -20.0, 100.0, 60.0])),
            detection("right-bottom", 0.8, Some([600.0, 400.0, 900.0, 700.0])),
            detection("outside", 0.8, Some([2000.0, 2000.0, 2100.0, 2100.0])),
            detection("negative", 0.8, Some([-300.0, -300.0, -10.0, -10.0])),
            detection("inverted", 0.8, Some([300.0, 300.0, 250.0, 250.0])),
            detection("nan", 0.8, Some([f32::NAN, 0.0, 10.0, 10.0])),
            detection("infinite", 0.8, Some([0.0, 0.0, f32::INFINITY, 10.0])),
            detection("point", 0.8, Some([10.0, 10.0, 10.0, 10.0])),
        ];
        let decoded = decode(&annotate(W, H, &raw, &detections).unwrap());
        // The visible part of the first box: its right and bottom edges.
        assert!(diff(&decoded, &raw, 99, 40) > 40);
        assert!(diff(&decoded, &raw, 50, 59) > 40);
        // The second box is clamped to the frame's right and bottom edges.
        assert!(diff(&decoded, &raw, 639, 440) > 40);
        assert_eq!(clamp_box([2000.0, 2000.0, 2100.0, 2100.0], W, H), None);
        assert_eq!(clamp_box([f32::NAN, 0.0, 1.0, 1.0], W, H), None);
        assert_eq!(
            clamp_box([300.0, 300.0, 250.0, 250.0], W, H),
            Some(Rect {
                x0: 250,
                y0: 250,
                x1: 300,
                y1: 300
            })
        );
        // A box over the whole frame and more, a huge score, tiny frames.
        let huge = detection("huge", 1e9, Some([-1e30, -1e30, 1e30, 1e30]));
        let decoded = decode(&annotate(W, H, &raw, std::slice::from_ref(&huge)).unwrap());
        assert!(diff(&decoded, &raw, 320, 478) > 40 && diff(&decoded, &raw, 1, 240) > 40);
        assert!(tag_text(&huge).ends_with(" 100%"));
        let all: Vec<Detection> = detections.iter().cloned().chain([huge]).collect();
        annotate(1, 1, &[0, 0, 0], &all).unwrap();
        annotate(3, 2, &[9; 18], &all).unwrap();
    }

    #[test]
    fn zero_detections_still_encode_the_frame() {
        let raw = raw_frame(W, H);
        let decoded = decode(&annotate(W, H, &raw, &[]).unwrap());
        for (x, y) in [(0, 0), (320, 240), (639, 479)] {
            assert!(diff(&decoded, &raw, x, y) < 12);
        }
    }

    #[test]
    fn labels_with_odd_characters_are_drawn() {
        let raw = raw_frame(W, H);
        let labels = [
            String::new(),
            "naïve café".into(),
            "日本語".into(),
            "emoji 🚀".into(),
            "tab\tnew\nline\0nul".into(),
            "{{ value }} <b>&amp;</b>".into(),
            "\u{202E}right-to-left".into(),
            "x".repeat(500),
        ];
        let detections: Vec<Detection> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                detection(
                    l,
                    0.42,
                    Some([20.0 + 75.0 * i as f32, 100.0, 80.0 + 75.0 * i as f32, 200.0]),
                )
            })
            .collect();
        let decoded = decode(&annotate(W, H, &raw, &detections).unwrap());
        for (i, label) in labels.iter().enumerate() {
            let x = 20 + 75 * i as u32;
            assert!(diff(&decoded, &raw, x + 2, 90) > 40, "tag of {label:?}");
        }
        assert!(tag_text(&detection(&"x".repeat(500), 0.5, None)).ends_with("x… 50%"));
    }

    #[test]
    fn detections_without_a_box_are_listed_in_the_corner() {
        let raw = raw_frame(W, H);
        let detections: Vec<Detection> = (0..8)
            .map(|i| detection(&format!("class{i}"), 0.1, None))
            .collect();
        let decoded = decode(&annotate(W, H, &raw, &detections).unwrap());
        let line = {
            let font = font().as_scaled(Style::for_frame(W, H).scale);
            let pad = Style::for_frame(W, H).padding;
            (font.ascent() - font.descent()).ceil() as u32 + 2 * pad
        };
        for n in 0..MAX_CORNER_TAGS as u32 {
            assert!(diff(&decoded, &raw, 1, n * line + 1) > 40, "corner tag {n}");
        }
        let below = MAX_CORNER_TAGS as u32 * line + 8;
        assert!(diff(&decoded, &raw, 1, below) < 25, "only {MAX_CORNER_TAGS} tags");
    }

    #[test]
    fn label_colours_are_stable_and_text_is_readable() {
        assert_eq!(label_color("person"), label_color("person"));
        let distinct: std::collections::BTreeSet<[u8; 3]> =
            ["person", "car", "dog", "cat", "bicycle", "truck"]
                .iter()
                .map(|l| label_color(l))
                .collect();
        assert!(distinct.len() >= 4, "labels spread over the palette");
        assert_eq!(text_color([255, 225, 25]), [0, 0, 0]);
        assert_eq!(text_color([0, 130, 200]), [255, 255, 255]);
    }

    #[test]
    fn a_buffer_that_does_not_match_the_size_is_an_error() {
        let err = annotate(4, 4, &[0; 47], &[]).unwrap_err();
        assert_eq!(err.to_string(), "a 4x4 RGB8 frame needs 48 bytes, got 47");
        assert!(matches!(
            annotate(0, 4, &[], &[]),
            Err(AnnotateError::Dimensions { .. })
        ));
        assert!(matches!(
            annotate(70_000, 1, &[], &[]),
            Err(AnnotateError::Dimensions { .. })
        ));
    }

    /// A synthetic street scene: sky, a wall with a door, a lawn, a figure and a car.
    fn scene(width: u32, height: u32) -> Vec<u8> {
        let (w, h) = (width as f32, height as f32);
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f32 / w, y as f32 / h);
                let figure = ((fx - 0.27) / 0.045).powi(2) + ((fy - 0.36) / 0.06).powi(2) < 1.0
                    || ((0.22..0.32).contains(&fx) && (0.42..0.86).contains(&fy));
                let car = ((0.52..0.9).contains(&fx) && (0.6..0.8).contains(&fy))
                    || ((0.58..0.82).contains(&fx) && (0.5..0.6).contains(&fy));
                let wheel = [0.6, 0.82]
                    .iter()
                    .any(|cx| ((fx - cx) / 0.035).powi(2) + ((fy - 0.8) / 0.06).powi(2) < 1.0);
                let pixel = if wheel {
                    [30, 30, 34]
                } else if car {
                    [150, 40, 45]
                } else if figure {
                    [60, 70, 110]
                } else if fy < 0.35 {
                    [(120.0 + 80.0 * fy) as u8, (170.0 + 60.0 * fy) as u8, 230]
                } else if fy < 0.7 && (0.08..0.45).contains(&fx) {
                    if (0.36..0.43).contains(&fx) && fy > 0.45 {
                        [110, 75, 50]
                    } else {
                        [200, 190, 170]
                    }
                } else if fy < 0.7 {
                    [185, 180, 165]
                } else {
                    [(70.0 + 40.0 * fy) as u8, (120.0 + 30.0 * fy) as u8, 60]
                };
                rgb.extend_from_slice(&pixel);
            }
        }
        rgb
    }

    /// Writes the status page fixture's camera snapshots (`tests/fixtures/web/cameras/`):
    /// `cargo test --lib write_fixture_snapshots -- --ignored`.
    #[test]
    #[ignore = "writes the status page fixture snapshots"]
    fn write_fixture_snapshots() {
        let (w, h) = (960, 540);
        let raw = scene(w, h);
        let cameras: [(&str, Vec<Detection>); 2] = [
            (
                "front door",
                vec![
                    detection("person", 0.91, Some([200.0, 155.0, 315.0, 470.0])),
                    detection("car", 0.87, Some([490.0, 262.0, 870.0, 470.0])),
                    detection("door", 0.48, Some([340.0, 238.0, 415.0, 378.0])),
                ],
            ),
            (
                "yard",
                vec![detection("person", 0.62, Some([195.0, 150.0, 320.0, 475.0]))],
            ),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/web/cameras");
        for (name, detections) in cameras {
            let jpeg = annotate(w, h, &raw, &detections).unwrap();
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("snapshot.jpg"), jpeg).unwrap();
        }
    }

    /// Not a benchmark: prints the time for a 1280x720 frame with 10 boxes (see the report).
    #[test]
    fn timing_1280x720_with_10_boxes() {
        let (w, h) = (1280, 720);
        let raw = raw_frame(w, h);
        let detections: Vec<Detection> = (0..10)
            .map(|i| {
                let x = 40.0 + 120.0 * i as f32;
                detection(
                    ["person", "car", "dog"][i % 3],
                    0.5 + i as f32 / 40.0,
                    Some([x, 150.0, x + 100.0, 500.0]),
                )
            })
            .collect();
        annotate(w, h, &raw, &detections).unwrap();
        let runs = 10;
        let mut draw_ms = Vec::new();
        let mut total_ms = Vec::new();
        let mut size = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let mut image = frame(w, h, &raw).unwrap();
            draw(&mut image, &detections);
            draw_ms.push(start.elapsed().as_secs_f64() * 1e3);
            size = encode_jpeg(&image).unwrap().len();
            total_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        draw_ms.sort_by(f64::total_cmp);
        total_ms.sort_by(f64::total_cmp);
        println!(
            "annotate 1280x720, 10 boxes: median {:.2} ms (copy + draw {:.2} ms), JPEG {size} bytes",
            total_ms[runs / 2],
            draw_ms[runs / 2]
        );
    }
}
