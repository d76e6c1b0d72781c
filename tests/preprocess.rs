//! Image pre-processing against Python references: `make_preprocess_fixtures.py` writes PNG
//! and JPEG images with the tensors Pillow + NumPy make of them; every element of onnxd's
//! tensor must be within one 8-bit level (before normalisation) of the reference, and
//! JPEG decoding within the bounds documented in `src/pipeline/preprocess.rs`.

mod common;

use std::path::Path;

use onnxd::pipeline::preprocess::ImageInput;
use onnxd::pipeline::preprocess::Preprocessor;
use onnxd::tensor::npy::read_npy;
use onnxd::tensor::DType;

/// JPEG decoding (zune-jpeg) against Pillow (libjpeg-turbo): mean and max |Δ| in 8-bit levels.
const JPEG_MEAN_BOUND: f64 = 0.6;
const JPEG_MAX_BOUND: f64 = 6.0;

/// Runs the fixture script into a temporary directory and returns it with the manifest.
fn fixtures() -> (tempfile::TempDir, serde_json::Value) {
    common::python_fixtures("make_preprocess_fixtures.py", "Pillow and NumPy")
}

fn reference(dir: &Path, name: &serde_json::Value) -> (Vec<usize>, DType, Vec<f64>) {
    let tensor = read_npy(std::fs::File::open(dir.join(name.as_str().unwrap())).unwrap()).unwrap();
    (
        tensor.shape().to_vec(),
        tensor.dtype(),
        tensor.to_f64_vec().unwrap(),
    )
}

#[test]
fn matches_pillow_and_numpy_within_one_level() {
    let (dir, manifest) = fixtures();
    let cases = manifest["cases"].as_array().unwrap();
    let mut modes = std::collections::BTreeSet::new();
    for case in cases {
        let input: ImageInput = serde_json::from_value(case["input"].clone()).unwrap();
        let label = format!("{} {}", case["image"], case["input"]);
        let bytes = std::fs::read(dir.path().join(case["image"].as_str().unwrap())).unwrap();
        let prepared = Preprocessor::new(&input).unwrap().from_encoded(&bytes).unwrap();
        let (shape, dtype, want) = reference(dir.path(), &case["reference"]);
        assert_eq!(
            (prepared.tensor.shape(), prepared.tensor.dtype()),
            (&shape[..], dtype),
            "{label}"
        );
        let got = prepared.tensor.to_f64_vec().unwrap();
        // One 8-bit level of channel c after normalisation: scale / std[c] (1 for UINT8).
        let channels = if input.color == "gray" { 1 } else { 3 };
        let level = |i: usize| {
            if dtype == DType::U8 {
                return 1.0;
            }
            let c = if input.layout == "nchw" {
                i / (shape[2] * shape[3])
            } else {
                i % channels
            };
            let std = input.std.get(c).or(input.std.first()).unwrap_or(&1.0);
            input.scale / std.abs()
        };
        let float_slack = if dtype == DType::F16 { 4e-3 } else { 1e-6 };
        let (mut worst, mut off) = (0.0f64, 0);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let levels = (g - w).abs() / level(i);
            assert!(
                (g - w).abs() <= level(i) * (1.0 + float_slack) + float_slack,
                "{label}: element {i} is {g}, Python {w}"
            );
            worst = worst.max(levels);
            off += usize::from(levels > 0.5);
        }
        let share = 100.0 * off as f64 / got.len() as f64;
        println!("{label}: max |Δ| {worst:.3} levels, {share:.1}% of elements off by one");
        modes.insert((input.resize, input.layout));
    }
    assert_eq!(modes.len(), 6, "every resize mode in both layouts: {modes:?}");
}

#[test]
fn jpeg_decoding_agrees_with_pillow() {
    let (dir, manifest) = fixtures();
    for jpeg in manifest["jpegs"].as_array().unwrap() {
        let bytes = std::fs::read(dir.path().join(jpeg["image"].as_str().unwrap())).unwrap();
        let (shape, _, want) = reference(dir.path(), &jpeg["reference"]);
        // Same size, UINT8, NHWC, RGB: the tensor is the decoded image itself.
        let input: ImageInput = serde_json::from_value(serde_json::json!({
            "width": shape[1], "height": shape[0], "dtype": "UINT8", "layout": "nhwc"
        }))
        .unwrap();
        let got = Preprocessor::new(&input)
            .unwrap()
            .from_encoded(&bytes)
            .unwrap()
            .tensor
            .to_f64_vec()
            .unwrap();
        assert_eq!(got.len(), want.len());
        let deltas: Vec<f64> = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).collect();
        let mean = deltas.iter().sum::<f64>() / deltas.len() as f64;
        let max = deltas.iter().copied().fold(0.0, f64::max);
        println!("{}: mean |Δ| {mean:.4}, max |Δ| {max}", jpeg["image"]);
        assert!(
            mean <= JPEG_MEAN_BOUND && max <= JPEG_MAX_BOUND,
            "{}: mean |Δ| {mean}, max |Δ| {max}",
            jpeg["image"]
        );
    }
}
