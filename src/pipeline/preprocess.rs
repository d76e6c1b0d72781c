//! Image pre-processing: an encoded image (JPEG, PNG, BMP, WebP) or a raw RGB8 camera frame
//! becomes the model's input tensor as the sidecar's `[input]` section describes it
//! ([`ImageInput`]). The settings are parsed and checked once per model version into a
//! [`Preprocessor`]; per frame it decodes, resizes, converts colour and normalises, and
//! returns the tensor with the [`Transform`] that maps model-input coordinates back to the
//! original image (for boxes found by a detector).
//!
//! Steps, in order:
//!
//! 1. Decode with the `image` crate (zune-jpeg for JPEG) to RGB8. Alpha is dropped, no ICC
//!    profile or EXIF orientation is applied (as Pillow's `Image.open(...).convert("RGB")`).
//!    A JPEG cut before its end-of-image marker is refused as truncated, as Pillow does
//!    (zune-jpeg alone would fill the missing part with grey).
//! 2. Resize with `fast_image_resize`, `ResizeAlg::Convolution(FilterType::Bilinear)`: the
//!    bilinear filter widened by the scale factor when downscaling, i.e. Pillow's
//!    `Image.resize(size, BILINEAR)` (an antialiasing convolution, unlike OpenCV's
//!    `INTER_LINEAR`). `resize` decides the geometry, target `W x H`, source `w x h`:
//!    - `stretch`: the whole image to `W x H`.
//!    - `letterbox`: `r = min(W/w, H/h)`, the image to `floor(w*r + 0.5) x floor(h*r + 0.5)`
//!      (at least 1, at most `W x H`), placed at `((W-nw)/2, (H-nh)/2)` (floored); the rest is
//!      `pad` in every channel (before normalisation), as YOLO's letterbox.
//!    - `center_crop`: `s = max(W/w, H/h)`, the image scaled to `rw x rh =
//!      floor(w*s + 0.5) x floor(h*s + 0.5)`, then its centre `W x H` from
//!      `((rw-W)/2, (rh-H)/2)` (floored). Only the kept part is computed: the crop is a source
//!      box with fractional edges, which gives the same filter taps as resize-then-crop.
//! 3. Colour: `rgb`, `bgr`, or `gray` (ITU-R 601 luma of the resized RGB, Pillow's `L`
//!    conversion: `(19595 R + 38470 G + 7471 B + 32768) >> 16`).
//! 4. Normalise and lay out in one pass over the output: channel `c` of the tensor gets
//!    `(pixel * scale - mean[c]) / std[c]` for `FP32` and `FP16`, where `c` counts the tensor's
//!    channels in `color` order (for `bgr`, `mean[0]` is blue's). `mean`/`std` may be empty
//!    (0 and 1), one value for every channel, or one per channel. `UINT8` carries the pixels
//!    as they are; `mean`/`std` are refused with it and `scale` is not applied. Per dtype and
//!    channel the 256 possible results are tabulated once, so the pass is a table lookup per
//!    element, written as `[1, C, H, W]` (`nchw`) or `[1, H, W, C]` (`nhwc`).
//!
//! Agreement with the Python references (`tests/preprocess.rs`, fixtures made by
//! `tests/fixtures/make_preprocess_fixtures.py`): on PNG images the `UINT8` tensors of every
//! resize mode, layout and colour are within one 8-bit level of Pillow + NumPy, with 0–24 %
//! of the elements one level off (both round the two convolution passes to 8 bits, in a
//! different order); `FP32`/`FP16` within one level times `scale / std[c]`. JPEG decoding
//! differs from Pillow's libjpeg-turbo (IDCT, chroma upsampling): on the fixture 640x360
//! photo-like JPEG (quality 90) mean |Δ| is 0.33 and max |Δ| 4 levels with 4:2:0 chroma,
//! 0.016 and 3 with 4:4:4; the test's bounds are mean ≤ 0.6 and max ≤ 6.

use std::fmt;
use std::iter;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use serde::Deserialize;

use super::decode::{decode, DecodeError};
use crate::tensor::{DType, Tensor};

/// `[input]` of a model's sidecar: how an image becomes the model's input tensor (the
/// sidecar embeds this type; its checks are [`Preprocessor::new`]'s).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// Target width.
    pub width: u32,
    /// Target height.
    pub height: u32,
    /// `stretch`, `letterbox` or `center_crop`.
    #[serde(default = "default_resize")]
    pub resize: String,
    /// `rgb`, `bgr` or `gray`.
    #[serde(default = "default_color")]
    pub color: String,
    /// `nchw` or `nhwc`.
    #[serde(default = "default_layout")]
    pub layout: String,
    /// Tensor datatype (KServe name).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Multiplier applied to 0–255 pixel values.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Per-channel mean subtracted after scaling.
    #[serde(default)]
    pub mean: Vec<f64>,
    /// Per-channel std dividing after the mean.
    #[serde(default)]
    pub std: Vec<f64>,
    /// Letterbox fill, 0–255.
    #[serde(default = "default_pad")]
    pub pad: u8,
}

fn default_resize() -> String {
    "stretch".into()
}
fn default_color() -> String {
    "rgb".into()
}
fn default_layout() -> String {
    "nchw".into()
}
fn default_dtype() -> String {
    "FP32".into()
}
fn default_scale() -> f64 {
    1.0 / 255.0
}
fn default_pad() -> u8 {
    114
}

/// Why pre-processing could not produce a tensor; each message says what was wrong and what
/// was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    /// An `[input]` setting is invalid or cannot be produced by the pre-processor.
    #[error("input.{key}: {message}")]
    Settings {
        /// The sidecar key under `[input]`.
        key: &'static str,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The payload is not a decodable image in an accepted format.
    #[error(transparent)]
    Image(#[from] DecodeError),
    /// The image has no pixels.
    #[error("image is {width}x{height} pixels (expected a width and height of at least 1)")]
    Empty {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
    /// A raw RGB frame whose buffer does not match its size.
    #[error("RGB frame of {width}x{height} has {got} bytes (expected {expected}: width x height x 3, RGB8 row-major)")]
    RgbLength {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        expected: u128,
    },
    /// The resizer or tensor refused sizes computed here: a bug in onnxd, not in the input.
    #[error("internal pre-processing error: {0}")]
    Internal(String),
}

fn settings(key: &'static str, message: String) -> PreprocessError {
    PreprocessError::Settings { key, message }
}

fn internal(error: impl fmt::Display) -> PreprocessError {
    PreprocessError::Internal(error.to_string())
}

/// How the image is fitted into the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resize {
    Stretch,
    Letterbox,
    CenterCrop,
}

/// Channels of the tensor, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Color {
    Rgb,
    Bgr,
    Gray,
}

/// Tensor layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Nchw,
    Nhwc,
}

/// For each pixel value 0–255, an output element's little-endian bytes.
type Lut<const N: usize> = [[u8; N]; 256];

/// One table per tensor channel (gray uses the first), per output dtype.
#[derive(Clone)]
enum Tables {
    U8(Box<[Lut<1>; 3]>),
    F16(Box<[Lut<2>; 3]>),
    F32(Box<[Lut<4>; 3]>),
}

fn tables<const N: usize>(
    scale: f64,
    mean: [f64; 3],
    std: [f64; 3],
    encode: fn(f64) -> [u8; N],
) -> Box<[Lut<N>; 3]> {
    Box::new(std::array::from_fn(|c| {
        std::array::from_fn(|pixel| encode((pixel as f64 * scale - mean[c]) / std[c]))
    }))
}

/// The `[input]` settings of one model version, parsed and checked, with the normalisation
/// tabulated. Cheap to share (`&self` per frame, no interior state).
#[derive(Clone)]
pub struct Preprocessor {
    width: u32,
    height: u32,
    resize: Resize,
    color: Color,
    layout: Layout,
    pad: u8,
    tables: Tables,
}

/// A model input made from an image.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// `[1, C, H, W]` (`nchw`) or `[1, H, W, C]` (`nhwc`) of the configured dtype.
    pub tensor: Tensor,
    /// Maps the tensor's pixel coordinates back to the original image.
    pub transform: Transform,
}

/// Maps model-input pixel coordinates to the original image's: undoes the letterbox offset
/// and scale, the centre crop's offset, or the stretch. Coordinates are continuous (0 is
/// the left edge of the first pixel, `W` the right edge of the last), so box corners map
/// directly. Results are not clamped: a point in the letterbox padding maps outside the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    scale_x: f64,
    scale_y: f64,
    shift_x: f64,
    shift_y: f64,
    width: u32,
    height: u32,
}

impl Transform {
    /// The original-image point of model-input point `(x, y)`.
    pub fn to_original(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (f64::from(x) * self.scale_x + self.shift_x) as f32,
            (f64::from(y) * self.scale_y + self.shift_y) as f32,
        )
    }

    /// Width of the original image in pixels.
    pub fn original_width(&self) -> u32 {
        self.width
    }

    /// Height of the original image in pixels.
    pub fn original_height(&self) -> u32 {
        self.height
    }
}

/// Where one image goes: the source box resized to `width x height` pixels placed at `(x, y)`
/// of the tensor.
struct Placement {
    width: u32,
    height: u32,
    x: u32,
    y: u32,
    /// Source box: left, top, width, height in source pixels.
    source: [f64; 4],
}

/// The resized pixels and where they start in the tensor.
struct Content<'a> {
    pixels: &'a [[u8; 3]],
    x: usize,
    y: usize,
    width: usize,
    height: usize,
}

impl Content<'_> {
    /// The resized pixels of tensor row `y`, if it has any.
    fn row(&self, y: usize) -> Option<&[[u8; 3]]> {
        let row = y.checked_sub(self.y).filter(|&row| row < self.height)?;
        self.pixels.get(row * self.width..(row + 1) * self.width)
    }
}

/// Rounds half up, as the Python reference does (`floor(v + 0.5)`).
fn round_half_up(v: f64) -> u32 {
    (v + 0.5).floor() as u32
}

/// ITU-R 601 luma, as Pillow's RGB to `L`.
fn luma(p: &[u8; 3]) -> usize {
    ((19595 * u32::from(p[0]) + 38470 * u32::from(p[1]) + 7471 * u32::from(p[2]) + 0x8000) >> 16) as usize
}

/// Appends a `width x height` image of elements row by row: `pixel` of the resized pixel
/// where there is one, `pad` elsewhere. Every extend is of known length, so the loop has no
/// per-element capacity or bounds checks.
fn append<E: Copy>(
    out: &mut Vec<E>,
    (width, height): (usize, usize),
    content: &Content<'_>,
    pad: E,
    pixel: impl Fn(&[u8; 3]) -> E,
) {
    for y in 0..height {
        let Some(source) = content.row(y) else {
            out.extend(iter::repeat_n(pad, width));
            continue;
        };
        let left = content.x.min(width);
        let middle = source.len().min(width - left);
        out.extend(iter::repeat_n(pad, left));
        out.extend(source[..middle].iter().map(&pixel));
        out.extend(iter::repeat_n(pad, width - left - middle));
    }
}

/// One of `choices` by name, or the `[input]` key's error listing them.
fn choose<T: Copy>(key: &'static str, value: &str, choices: &[(&str, T)]) -> Result<T, PreprocessError> {
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            settings(key, format!("expected one of {names:?}, got \"{value}\""))
        })
}

/// `scale`, `mean` and `std` checked and tabulated for the output dtype.
fn normalisation(input: &ImageInput, channels: usize) -> Result<Tables, PreprocessError> {
    let per_channel = |key: &'static str, values: &[f64], default: f64| match values {
        [] => Ok([default; 3]),
        [v] => Ok([*v; 3]),
        [r, g, b] if channels == 3 => Ok([*r, *g, *b]),
        _ => Err(settings(
            key,
            format!(
                "expected 1 or {channels} values (one per channel of \"{}\"), got {}",
                input.color,
                values.len()
            ),
        )),
    };
    let mean = per_channel("mean", &input.mean, 0.0)?;
    let std = per_channel("std", &input.std, 1.0)?;
    if !input.scale.is_finite() || !mean.iter().all(|m| m.is_finite()) {
        return Err(settings("scale/mean", "expected finite numbers".into()));
    }
    if !std.iter().all(|s| s.is_finite() && *s != 0.0) {
        return Err(settings(
            "std",
            format!("expected finite non-zero numbers, got {:?}", input.std),
        ));
    }
    let dtype = DType::from_kserve_name(&input.dtype).map_err(|e| settings("dtype", e.to_string()))?;
    Ok(match dtype {
        DType::F32 => Tables::F32(tables(input.scale, mean, std, |v| (v as f32).to_le_bytes())),
        DType::F16 => Tables::F16(tables(input.scale, mean, std, |v| {
            half::f16::from_f64(v).to_le_bytes()
        })),
        DType::U8 if input.mean.is_empty() && input.std.is_empty() => {
            Tables::U8(tables(1.0, [0.0; 3], [1.0; 3], |v| [v as u8]))
        }
        DType::U8 => {
            return Err(settings(
                "mean/std",
                "UINT8 input carries raw 0-255 pixels: expected no mean/std (or dtype FP32/FP16)".into(),
            ))
        }
        other => {
            return Err(settings(
                "dtype",
                format!("image pre-processing produces FP32, FP16 or UINT8, got {other}"),
            ))
        }
    })
}

impl Preprocessor {
    /// Parses and checks `[input]`: sizes, `resize`, `color`, `layout`, a dtype among
    /// `FP32`, `FP16` and `UINT8`, finite `scale`, `mean` and `std` with 0, 1 or one value
    /// per channel, no zero `std`.
    pub fn new(input: &ImageInput) -> Result<Preprocessor, PreprocessError> {
        let resize = choose(
            "resize",
            &input.resize,
            &[
                ("stretch", Resize::Stretch),
                ("letterbox", Resize::Letterbox),
                ("center_crop", Resize::CenterCrop),
            ],
        )?;
        let color = choose(
            "color",
            &input.color,
            &[("rgb", Color::Rgb), ("bgr", Color::Bgr), ("gray", Color::Gray)],
        )?;
        let layout = choose(
            "layout",
            &input.layout,
            &[("nchw", Layout::Nchw), ("nhwc", Layout::Nhwc)],
        )?;
        let channels: usize = if color == Color::Gray { 1 } else { 3 };
        let elements = (input.width as usize)
            .checked_mul(input.height as usize)
            .and_then(|n| n.checked_mul(channels * 4));
        if input.width == 0 || input.height == 0 || elements.is_none() {
            return Err(settings(
                "width/height",
                format!(
                    "expected positive sizes that fit in memory, got {}x{}",
                    input.width, input.height
                ),
            ));
        }
        let tables = normalisation(input, channels)?;
        Ok(Preprocessor {
            width: input.width,
            height: input.height,
            resize,
            color,
            layout,
            pad: input.pad,
            tables,
        })
    }

    /// The tensor dtype produced.
    pub fn dtype(&self) -> DType {
        match self.tables {
            Tables::U8(_) => DType::U8,
            Tables::F16(_) => DType::F16,
            Tables::F32(_) => DType::F32,
        }
    }

    /// The model-input width and height the image is resized to.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The tensor shape produced: `[1, C, H, W]` or `[1, H, W, C]`.
    pub fn shape(&self) -> [usize; 4] {
        let (w, h) = (self.width as usize, self.height as usize);
        let c = if self.color == Color::Gray { 1 } else { 3 };
        match self.layout {
            Layout::Nchw => [1, c, h, w],
            Layout::Nhwc => [1, h, w, c],
        }
    }

    /// Decodes a JPEG, PNG, BMP or WebP image (recognised by its magic bytes, see
    /// [`super::decode`]) and prepares it.
    pub fn from_encoded(&self, bytes: &[u8]) -> Result<Prepared, PreprocessError> {
        let image = decode(bytes)?;
        self.prepare(image.width, image.height, &image.rgb)
    }

    /// Prepares a raw RGB8 frame (row-major, 3 bytes per pixel, no row padding), as cameras
    /// deliver them.
    pub fn from_rgb(&self, width: u32, height: u32, rgb: &[u8]) -> Result<Prepared, PreprocessError> {
        let expected = u128::from(width) * u128::from(height) * 3;
        if width > 0 && height > 0 && rgb.len() as u128 != expected {
            return Err(PreprocessError::RgbLength {
                width,
                height,
                got: rgb.len(),
                expected,
            });
        }
        self.prepare(width, height, rgb)
    }

    /// Where a `width x height` image goes in the tensor.
    fn place(&self, width: u32, height: u32) -> Placement {
        let (w, h) = (f64::from(width), f64::from(height));
        let (tw, th) = (f64::from(self.width), f64::from(self.height));
        let whole = [0.0, 0.0, w, h];
        match self.resize {
            Resize::Stretch => Placement {
                width: self.width,
                height: self.height,
                x: 0,
                y: 0,
                source: whole,
            },
            Resize::Letterbox => {
                let r = (tw / w).min(th / h);
                let nw = round_half_up(w * r).clamp(1, self.width);
                let nh = round_half_up(h * r).clamp(1, self.height);
                Placement {
                    width: nw,
                    height: nh,
                    x: (self.width - nw) / 2,
                    y: (self.height - nh) / 2,
                    source: whole,
                }
            }
            Resize::CenterCrop => {
                let s = (tw / w).max(th / h);
                let rw = round_half_up(w * s).max(self.width);
                let rh = round_half_up(h * s).max(self.height);
                let (ox, oy) = (
                    f64::from((rw - self.width) / 2),
                    f64::from((rh - self.height) / 2),
                );
                let (rw, rh) = (f64::from(rw), f64::from(rh));
                let (left, top) = (ox * w / rw, oy * h / rh);
                Placement {
                    width: self.width,
                    height: self.height,
                    x: 0,
                    y: 0,
                    source: [left, top, (tw * w / rw).min(w - left), (th * h / rh).min(h - top)],
                }
            }
        }
    }

    fn prepare(&self, width: u32, height: u32, rgb: &[u8]) -> Result<Prepared, PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::Empty { width, height });
        }
        let place = self.place(width, height);
        let [left, top, box_width, box_height] = place.source;
        let source = ImageRef::new(width, height, rgb, PixelType::U8x3).map_err(internal)?;
        let mut resized = Image::new(place.width, place.height, PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(left, top, box_width, box_height);
        Resizer::new()
            .resize(&source, &mut resized, &options)
            .map_err(internal)?;
        let content = Content {
            pixels: bytemuck::try_cast_slice(resized.buffer()).map_err(internal)?,
            x: place.x as usize,
            y: place.y as usize,
            width: place.width as usize,
            height: place.height as usize,
        };
        let bytes = match &self.tables {
            Tables::U8(luts) => self.write(luts, &content),
            Tables::F16(luts) => self.write(luts, &content),
            Tables::F32(luts) => self.write(luts, &content),
        };
        let tensor = Tensor::from_raw(self.dtype(), self.shape().to_vec(), bytes).map_err(internal)?;
        let scale_x = box_width / f64::from(place.width);
        let scale_y = box_height / f64::from(place.height);
        let transform = Transform {
            scale_x,
            scale_y,
            shift_x: left - f64::from(place.x) * scale_x,
            shift_y: top - f64::from(place.y) * scale_y,
            width,
            height,
        };
        Ok(Prepared { tensor, transform })
    }

    /// The normalise + layout pass: the tensor's bytes for `content`, written in order.
    fn write<const N: usize>(&self, luts: &[Lut<N>; 3], content: &Content<'_>) -> Vec<u8> {
        let size = (self.width as usize, self.height as usize);
        let pad = usize::from(self.pad);
        let order = match self.color {
            Color::Bgr => [2, 1, 0],
            Color::Rgb | Color::Gray => [0, 1, 2],
        };
        match (self.color, self.layout) {
            (Color::Gray, _) => {
                let mut out = Vec::with_capacity(size.0 * size.1);
                append(&mut out, size, content, luts[0][pad], |p| luts[0][luma(p)]);
                out.into_flattened()
            }
            (_, Layout::Nhwc) => {
                let mut out = Vec::with_capacity(size.0 * size.1);
                let pad = [luts[0][pad], luts[1][pad], luts[2][pad]];
                append(&mut out, size, content, pad, |p| {
                    [
                        luts[0][usize::from(p[order[0]])],
                        luts[1][usize::from(p[order[1]])],
                        luts[2][usize::from(p[order[2]])],
                    ]
                });
                out.into_flattened().into_flattened()
            }
            (_, Layout::Nchw) => {
                let mut out = Vec::with_capacity(3 * size.0 * size.1);
                for (lut, channel) in luts.iter().zip(order) {
                    append(&mut out, size, content, lut[pad], |p| {
                        lut[usize::from(p[channel])]
                    });
                }
                out.into_flattened()
            }
        }
    }
}

impl fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preprocessor")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("resize", &self.resize)
            .field("color", &self.color)
            .field("layout", &self.layout)
            .field("dtype", &self.dtype())
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::is_image;
    use image::ImageFormat;
    use std::io::Cursor;

    fn input(width: u32, height: u32, edit: impl FnOnce(&mut ImageInput)) -> ImageInput {
        let mut input: ImageInput = toml::from_str(&format!("width = {width}\nheight = {height}")).unwrap();
        edit(&mut input);
        input
    }

    fn values(prepared: &Prepared) -> Vec<f64> {
        prepared.tensor.to_f64_vec().unwrap()
    }

    /// A `width x height` RGB frame whose pixel `i` is `(i, 100 + i, 200 + i)` (wrapping).
    fn frame(width: u32, height: u32) -> Vec<u8> {
        (0..width * height)
            .flat_map(|i| [i as u8, (100 + i) as u8, (200 + i) as u8])
            .collect()
    }

    fn encode(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
        let image = image::RgbImage::from_raw(width, height, frame(width, height)).unwrap();
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn settings_are_checked_once_with_the_key_and_expectation() {
        let err = |edit: fn(&mut ImageInput)| Preprocessor::new(&input(8, 8, edit)).unwrap_err().to_string();
        assert!(err(|i| i.resize = "zoom".into()).starts_with("input.resize: expected one of"));
        assert!(err(|i| i.color = "rgba".into()).contains("\"rgba\""));
        assert!(err(|i| i.layout = "chw".into()).starts_with("input.layout"));
        assert!(err(|i| i.dtype = "INT8".into()).contains("FP32, FP16 or UINT8, got INT8"));
        assert!(err(|i| i.dtype = "FLOAT".into()).starts_with("input.dtype: unknown datatype"));
        assert!(err(|i| i.mean = vec![0.1, 0.2]).contains("expected 1 or 3 values"));
        assert!(err(|i| {
            i.color = "gray".into();
            i.std = vec![1.0, 1.0, 1.0];
        })
        .contains("expected 1 or 1 values"));
        assert!(err(|i| i.std = vec![0.0]).starts_with("input.std"));
        assert!(err(|i| i.scale = f64::NAN).starts_with("input.scale/mean"));
        assert!(err(|i| {
            i.dtype = "UINT8".into();
            i.mean = vec![0.5];
        })
        .contains("UINT8 input carries raw 0-255 pixels"));
        assert!(err(|i| i.width = 0).starts_with("input.width/height"));
        let ok = Preprocessor::new(&input(8, 4, |i| i.layout = "nhwc".into())).unwrap();
        assert_eq!((ok.shape(), ok.dtype()), ([1, 4, 8, 3], DType::F32));
    }

    #[test]
    fn normalisation_channel_order_and_layouts() {
        // 2x1 frame, same size: no resampling, so every value is exact.
        let rgb = [10u8, 20, 30, 40, 50, 60];
        let prepare = |edit: fn(&mut ImageInput)| {
            let p = Preprocessor::new(&input(2, 1, edit)).unwrap();
            values(&p.from_rgb(2, 1, &rgb).unwrap())
        };
        let nchw = prepare(|i| {
            i.mean = vec![1.0, 2.0, 3.0];
            i.std = vec![2.0, 4.0, 8.0];
            i.scale = 1.0;
        });
        assert_eq!(nchw, vec![4.5, 19.5, 4.5, 12.0, 3.375, 7.125]);
        let bgr_nhwc = prepare(|i| {
            i.color = "bgr".into();
            i.layout = "nhwc".into();
            i.dtype = "UINT8".into();
        });
        assert_eq!(bgr_nhwc, vec![30.0, 20.0, 10.0, 60.0, 50.0, 40.0]);
        let gray = prepare(|i| {
            i.color = "gray".into();
            i.dtype = "FP16".into();
            i.scale = 1.0;
        });
        assert_eq!(gray, vec![18.0, 48.0]); // Pillow's L of (10,20,30) and (40,50,60)
        let default_scale = prepare(|_| {});
        assert!(
            (default_scale[0] - 10.0 / 255.0).abs() < 1e-7,
            "{default_scale:?}"
        );
    }

    #[test]
    fn letterbox_pads_and_transforms_back() {
        let p = Preprocessor::new(&input(8, 8, |i| {
            i.resize = "letterbox".into();
            i.dtype = "UINT8".into();
            i.color = "gray".into();
            i.pad = 7;
        }))
        .unwrap();
        // 16x8 -> 8x4 centred at y = 2: rows 0, 1, 6, 7 are padding.
        let prepared = p.from_rgb(16, 8, &[200; 16 * 8 * 3]).unwrap();
        let v = values(&prepared);
        assert_eq!(prepared.tensor.shape(), &[1, 1, 8, 8]);
        assert!(v[..16].iter().chain(&v[48..]).all(|&x| x == 7.0), "{v:?}");
        assert!(v[16..48].iter().all(|&x| x == 200.0), "{v:?}");
        let t = prepared.transform;
        assert_eq!((t.original_width(), t.original_height()), (16, 8));
        assert_eq!(t.to_original(0.0, 2.0), (0.0, 0.0));
        assert_eq!(t.to_original(8.0, 6.0), (16.0, 8.0));
        assert_eq!(t.to_original(4.0, 0.0), (8.0, -4.0));
    }

    #[test]
    fn center_crop_and_stretch_transform_back() {
        let p = |resize: &str| {
            let input = input(10, 10, |i| i.resize = resize.into());
            Preprocessor::new(&input)
                .unwrap()
                .from_rgb(40, 20, &frame(40, 20))
                .unwrap()
        };
        // 40x20 scaled by 1/2 to 20x10, centre 10x10 from x = 5: source x 10..30.
        let crop = p("center_crop").transform;
        assert_eq!(crop.to_original(0.0, 0.0), (10.0, 0.0));
        assert_eq!(crop.to_original(10.0, 10.0), (30.0, 20.0));
        let stretch = p("stretch").transform;
        assert_eq!(stretch.to_original(5.0, 5.0), (20.0, 10.0));
    }

    #[test]
    fn extreme_aspect_ratios_keep_at_least_one_pixel() {
        for resize in ["stretch", "letterbox", "center_crop"] {
            let p = Preprocessor::new(&input(4, 4, |i| i.resize = resize.into())).unwrap();
            for (w, h) in [(1000, 1), (1, 1000), (1, 1)] {
                let prepared = p.from_rgb(w, h, &frame(w, h)).unwrap();
                assert_eq!(prepared.tensor.shape(), &[1, 3, 4, 4], "{resize} {w}x{h}");
            }
        }
    }

    #[test]
    fn formats_are_recognised_by_magic_bytes() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ] {
            let bytes = encode(5, 3, format);
            assert!(is_image(&bytes), "{format:?}");
            let p = Preprocessor::new(&input(5, 3, |_| {})).unwrap();
            let prepared = p.from_encoded(&bytes).unwrap();
            assert_eq!(prepared.transform.original_width(), 5, "{format:?}");
        }
        assert!(!is_image(b"{\"inputs\": []}"));
        assert!(!is_image(b""));
        assert!(!is_image(
            b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00"
        ));
        let p = Preprocessor::new(&input(4, 4, |_| {})).unwrap();
        let err = p.from_encoded(b"GIF89a\x04\x00\x04\x00").unwrap_err().to_string();
        assert_eq!(
            err,
            "unsupported image format: GIF (expected JPEG, PNG, BMP or WebP)"
        );
        let err = p.from_encoded(b"{\"x\": 1}").unwrap_err().to_string();
        assert!(
            err.contains("unrecognised data starting with bytes 7b 22 78 22"),
            "{err}"
        );
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let p = Preprocessor::new(&input(16, 16, |i| i.resize = "letterbox".into())).unwrap();
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ] {
            let good = encode(37, 23, format);
            for len in (0..good.len()).step_by(7) {
                let _ = p.from_encoded(&good[..len]);
            }
            let mut state = 0x2545_f491_u32;
            for _ in 0..200 {
                let mut bytes = good.clone();
                for _ in 0..4 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let at = state as usize % bytes.len();
                    bytes[at] = (state >> 24) as u8;
                }
                let _ = p.from_encoded(&bytes);
            }
        }
        let jpeg = encode(37, 23, ImageFormat::Jpeg);
        let err = p.from_encoded(&jpeg[..jpeg.len() - 10]).unwrap_err().to_string();
        assert!(err.contains("ends before its end-of-image marker"), "{err}");
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"\0\0trailing");
        p.from_encoded(&trailing).unwrap();
        let truncated = encode(37, 23, ImageFormat::Png);
        let err = p
            .from_encoded(&truncated[..truncated.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot decode the PNG image: "), "{err}");
        let err = p.from_rgb(4, 4, &[0; 47]).unwrap_err().to_string();
        assert_eq!(
            err,
            "RGB frame of 4x4 has 47 bytes (expected 48: width x height x 3, RGB8 row-major)"
        );
        let err = p.from_rgb(0, 4, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "image is 0x4 pixels (expected a width and height of at least 1)"
        );
    }
}
