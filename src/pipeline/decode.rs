//! The one image decoder of onnxd: camera frames, image payloads over HTTP and MQTT, and image
//! files given to the CLI all decode here, so a JPEG that works from a camera works from
//! every source. JPEG, PNG, BMP and WebP are recognised by their magic bytes ([`is_image`])
//! and decoded with the `image` crate (zune-jpeg for JPEG) to RGB8: alpha dropped, no ICC
//! profile or EXIF orientation applied (as Pillow's `Image.open(...).convert("RGB")`).
//!
//! Two JPEG cases are handled before the decoder sees them:
//! - a JPEG cut before its end-of-image marker is refused as truncated, as Pillow does
//!   (zune-jpeg alone would fill the missing part with grey);
//! - a JPEG without Huffman tables (Motion-JPEG as UVC and some IP cameras send it) gets the
//!   `AVI1` marker that tells the decoder to use the standard tables.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

/// The encoded formats accepted, with their names in messages.
const FORMATS: [(ImageFormat, &str); 4] = [
    (ImageFormat::Jpeg, "JPEG"),
    (ImageFormat::Png, "PNG"),
    (ImageFormat::Bmp, "BMP"),
    (ImageFormat::WebP, "WebP"),
];

/// BMP info-header sizes (core, OS/2 v2 short and long, v1 to v5): `BM` alone is too weak a
/// signature to route a payload as an image.
const BMP_HEADER_SIZES: [u32; 8] = [12, 16, 40, 52, 56, 64, 108, 124];

/// Why bytes did not decode to an image; each message says what was found and expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not an image in one of the accepted formats.
    #[error("unsupported image format: {found} (expected JPEG, PNG, BMP or WebP)")]
    UnsupportedFormat {
        /// The format recognised, or the first bytes when none was.
        found: String,
    },
    /// The bytes have an accepted format's signature but cannot be decoded.
    #[error("cannot decode the {format} image: {reason} (expected a complete, valid {format} file)")]
    Decode {
        /// The format its signature names.
        format: &'static str,
        /// The decoder's message (corrupt, truncated, over the memory limit).
        reason: String,
    },
}

/// A decoded image.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB8 pixels, row-major, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// Whether it was a JPEG (cameras keep the original bytes of those for snapshots).
    pub jpeg: bool,
}

/// Whether `bytes` start like an accepted image (by magic bytes only); transports use it to
/// route image payloads.
pub fn is_image(bytes: &[u8]) -> bool {
    format_of(bytes).is_ok()
}

/// Decodes a JPEG, PNG, BMP or WebP image to RGB8.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let (format, name) = format_of(bytes)?;
    let fail = |reason: String| DecodeError::Decode { format: name, reason };
    let jpeg = format == ImageFormat::Jpeg;
    if jpeg && !jpeg_complete(bytes) {
        return Err(fail(
            "the data ends before its end-of-image marker (truncated)".into(),
        ));
    }
    let patched;
    let data = if jpeg && !has_huffman_tables(bytes) {
        patched = with_avi1_marker(bytes);
        &patched[..]
    } else {
        bytes
    };
    let image = ImageReader::with_format(Cursor::new(data), format)
        .decode()
        .map_err(|e| fail(e.to_string()))?
        .into_rgb8();
    Ok(Decoded {
        width: image.width(),
        height: image.height(),
        rgb: image.into_raw(),
        jpeg,
    })
}

/// The accepted format `bytes` is in, by magic bytes, with its name.
fn format_of(bytes: &[u8]) -> Result<(ImageFormat, &'static str), DecodeError> {
    let unsupported = |found: String| Err(DecodeError::UnsupportedFormat { found });
    let Ok(format) = image::guess_format(bytes) else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return unsupported(if head.is_empty() {
            "not an image (empty payload)".into()
        } else {
            format!(
                "not an image (unrecognised data starting with bytes {})",
                head.join(" ")
            )
        });
    };
    match FORMATS.iter().find(|(f, _)| *f == format) {
        Some(&(ImageFormat::Bmp, _)) if !plausible_bmp(bytes) => {
            unsupported("data starting with \"BM\" but no BMP header".into())
        }
        Some(&found) => Ok(found),
        None => unsupported(format!("{format:?}").to_uppercase()),
    }
}

/// Whether a JPEG's last scan is followed by its end-of-image marker (searching back from the
/// end; markers cannot occur inside entropy-coded data).
fn jpeg_complete(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .rev()
        .find_map(|marker| match marker {
            [0xFF, 0xD9] => Some(true),
            [0xFF, 0xDA] => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

fn plausible_bmp(bytes: &[u8]) -> bool {
    bytes.get(14..18).is_some_and(|size| {
        BMP_HEADER_SIZES.contains(&u32::from_le_bytes([size[0], size[1], size[2], size[3]]))
    })
}

/// Whether a JPEG defines a Huffman table (DHT) before its first scan. Malformed headers
/// answer `true`, leaving the complaint to the decoder.
fn has_huffman_tables(jpeg: &[u8]) -> bool {
    const DHT: u8 = 0xC4;
    const SOS: u8 = 0xDA;
    let mut at = 2; // after SOI
    while at + 4 <= jpeg.len() {
        if jpeg[at] != 0xFF {
            return true;
        }
        match jpeg[at + 1] {
            0xFF => at += 1, // fill byte
            DHT => return true,
            SOS => return false,
            0x01 | 0xD0..=0xD7 => at += 2, // markers without a length
            _ => at += 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]])),
        }
    }
    true
}

/// The JPEG with an `AVI1` APP0 segment after SOI: the Motion-JPEG convention (AVI/UVC) for
/// "Huffman tables omitted, use the standard ones", which zune-jpeg honours.
fn with_avi1_marker(jpeg: &[u8]) -> Vec<u8> {
    const AVI1_APP0: [u8; 9] = [0xFF, 0xE0, 0x00, 0x07, b'A', b'V', b'I', b'1', 0x00];
    let mut patched = Vec::with_capacity(jpeg.len() + AVI1_APP0.len());
    patched.extend_from_slice(&jpeg[..2]);
    patched.extend_from_slice(&AVI1_APP0);
    patched.extend_from_slice(&jpeg[2..]);
    patched
}

/// Test support: a JPEG without its Huffman tables (DHT segments), as Motion-JPEG cameras
/// send frames.
pub fn strip_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut at = 2;
    while at + 4 <= jpeg.len() {
        let marker = jpeg[at + 1];
        if marker == 0xDA {
            out.extend_from_slice(&jpeg[at..]);
            return out;
        }
        let end = (at + 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]))).min(jpeg.len());
        if marker != 0xC4 {
            out.extend_from_slice(&jpeg[at..end]);
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_jpeg_and_png() {
        let frame = decode(&jpeg(40, 24)).unwrap();
        assert_eq!(
            (frame.width, frame.height, frame.rgb.len(), frame.jpeg),
            (40, 24, 40 * 24 * 3, true)
        );
        let mut png = Cursor::new(Vec::new());
        image::RgbImage::new(3, 2)
            .write_to(&mut png, ImageFormat::Png)
            .unwrap();
        let frame = decode(&png.into_inner()).unwrap();
        assert_eq!((frame.width, frame.height, frame.jpeg), (3, 2, false));
    }

    #[test]
    fn motion_jpeg_without_huffman_tables_decodes_like_the_original() {
        let original = jpeg(48, 32);
        let stripped = strip_huffman_tables(&original);
        assert!(has_huffman_tables(&original));
        assert!(!has_huffman_tables(&stripped));
        assert!(image::load_from_memory(&stripped).is_err(), "needs no patch");
        let want = decode(&original).unwrap();
        let got = decode(&stripped).unwrap();
        assert_eq!(got.rgb, want.rgb);
    }

    #[test]
    fn corrupt_and_truncated_images_are_errors() {
        let full = jpeg(16, 16);
        let truncated = decode(&full[..full.len() / 2]).unwrap_err().to_string();
        assert!(truncated.contains("truncated"), "{truncated}");
        let mut garbage = full.clone();
        garbage[200..full.len() - 2].fill(0x55);
        assert!(decode(&garbage).is_err());
        assert!(decode(b"hello").unwrap_err().to_string().contains("not an image"));
    }
}
