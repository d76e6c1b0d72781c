//! Image payloads and camera frames: the one decoder (JPEG, PNG, BMP, WebP by magic bytes)
//! and the `[input]` pre-processing into a tensor. Input: four settings bytes (width,
//! height, resize/colour/layout, datatype/normalisation), then the encoded image. Seeds:
//! small images in every format, with and without JPEG Huffman tables (`make_seeds`).

use onnxd::pipeline::decode::{decode, strip_huffman_tables};
use onnxd::pipeline::preprocess::{ImageInput, Preprocessor};

const RESIZE: [&str; 3] = ["stretch", "letterbox", "center_crop"];
const COLOR: [&str; 3] = ["rgb", "bgr", "gray"];
const LAYOUT: [&str; 2] = ["nchw", "nhwc"];
const DTYPE: [&str; 4] = ["FP32", "UINT8", "FP16", "INT8"];

fn settings(input: &mut onnxd_fuzz::Input<'_>) -> ImageInput {
    let (width, height) = (1 + u32::from(input.u8() % 64), 1 + u32::from(input.u8() % 64));
    let modes = input.u8() as usize;
    let numbers = input.u8() as usize;
    let normalised = numbers & 4 != 0;
    ImageInput {
        width,
        height,
        resize: RESIZE[modes % 3].into(),
        color: COLOR[modes / 3 % 3].into(),
        layout: LAYOUT[modes / 9 % 2].into(),
        dtype: DTYPE[numbers % 4].into(),
        scale: if numbers & 8 != 0 { 1.0 / 255.0 } else { 1.0 },
        mean: if normalised {
            vec![0.485, 0.456, 0.406]
        } else {
            Vec::new()
        },
        std: if normalised {
            vec![0.229, 0.224, 0.225]
        } else {
            Vec::new()
        },
        pad: 114,
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = onnxd_fuzz::Input::new(data);
        let settings = settings(&mut input);
        let encoded = input.rest();
        let Ok(pre) = Preprocessor::new(&settings) else {
            return;
        };
        if let Ok(image) = decode(encoded) {
            assert_eq!(
                image.rgb.len() as u64,
                u64::from(image.width) * u64::from(image.height) * 3
            );
            let prepared = pre
                .from_rgb(image.width, image.height, &image.rgb)
                .expect("a decoded image prepares");
            assert_eq!(prepared.tensor.shape(), &pre.shape()[..]);
        }
        let _ = pre.from_encoded(encoded);
        if image::guess_format(encoded).ok() == Some(image::ImageFormat::Jpeg) {
            let _ = decode(&strip_huffman_tables(encoded));
        }
    });
}
