//! Per-frame image pre-processing: a 1280x720 JPEG to a 320x320 letterboxed NCHW FP32 tensor
//! (decode, resize, pad, normalise), and its two halves: decoding alone, and everything after
//! decoding (`from_rgb` of the decoded frame). `scripts/bench-preprocess` runs the same work in
//! OpenCV-Python on the same JPEG and prints the ratio.
//!
//! `cargo bench --profile dev --bench preprocess`. ONNXDTEST_PREPROCESS_JPEG names the JPEG
//! (scripts/bench-preprocess passes its frame); without it a synthetic frame is encoded here.

use criterion::{criterion_group, criterion_main, Criterion};
use image::{ImageFormat, RgbImage};
use onnxd::pipeline::preprocess::ImageInput;
use onnxd::pipeline::preprocess::Preprocessor;

fn frame() -> Vec<u8> {
    if let Some(path) = std::env::var_os("ONNXDTEST_PREPROCESS_JPEG") {
        return std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()));
    }
    let image = RgbImage::from_fn(1280, 720, |x, y| {
        image::Rgb([(x / 5) as u8, (y / 3) as u8, ((x ^ y) & 0xff) as u8])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&image)
        .unwrap();
    jpeg
}

fn preprocess(c: &mut Criterion) {
    let jpeg = frame();
    let input: ImageInput = toml::from_str(
        "width = 320\nheight = 320\nresize = \"letterbox\"\nlayout = \"nchw\"\ndtype = \"FP32\"",
    )
    .unwrap();
    let preprocessor = Preprocessor::new(&input).unwrap();
    let rgb = image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg)
        .unwrap()
        .into_rgb8();
    assert_eq!(rgb.dimensions(), (1280, 720), "the benchmark frame is 1280x720");
    c.bench_function("preprocess_jpeg_1280x720_letterbox_320_nchw_f32", |b| {
        b.iter(|| preprocessor.from_encoded(&jpeg).unwrap())
    });
    c.bench_function("decode_jpeg_1280x720", |b| {
        b.iter(|| {
            image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg)
                .unwrap()
                .into_rgb8()
        })
    });
    c.bench_function("preprocess_rgb_1280x720_letterbox_320_nchw_f32", |b| {
        b.iter(|| preprocessor.from_rgb(1280, 720, rgb.as_raw()).unwrap())
    });
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
