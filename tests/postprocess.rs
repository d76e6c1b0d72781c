//! Post-processing against NumPy references: `make_postprocess_fixtures.py` writes YOLOv8,
//! YOLOv5 (FP16), SSD and classifier outputs with the detections its independent NumPy
//! implementation of the same rules makes of them; onnxd's must be the same set (label, score
//! within 1e-4, box corners within 0.01 px), best first, and the classify top-k in the same
//! order.

mod common;

use onnxd::pipeline::postprocess::OutputProcessing;
use onnxd::pipeline::postprocess::{Detection, Kind, Postprocessor};
use onnxd::pipeline::preprocess::ImageInput;
use onnxd::pipeline::preprocess::{Preprocessor, Transform};
use onnxd::tensor::npy::read_npy;
use onnxd::tensor::Tensor;
use serde_json::{json, Value};

const SCORE_TOLERANCE: f64 = 1e-4;
const BOX_TOLERANCE: f64 = 0.01;

/// Runs the fixture script into a temporary directory and returns it with the manifest.
fn fixtures() -> (tempfile::TempDir, serde_json::Value) {
    common::python_fixtures("make_postprocess_fixtures.py", "NumPy")
}

/// The pre-processing transform of the case: a black frame of the original size through a
/// real `Preprocessor` of the model's input size.
fn transform(case: &Value) -> Option<Transform> {
    let t = case["transform"].as_object()?;
    let size = &case["input_size"];
    let input: ImageInput = serde_json::from_value(json!({
        "width": size[0], "height": size[1], "resize": t["resize"]
    }))
    .unwrap();
    let (w, h) = (
        t["original"][0].as_u64().unwrap() as u32,
        t["original"][1].as_u64().unwrap() as u32,
    );
    let frame = vec![0; w as usize * h as usize * 3];
    Some(
        Preprocessor::new(&input)
            .unwrap()
            .from_rgb(w, h, &frame)
            .unwrap()
            .transform,
    )
}

/// The largest score and box deviations of `got` from `want`, where every expected detection
/// has its own match (same label, score and box within the tolerances).
fn compare(name: &str, got: &[Detection], want: &[Value]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{name}: {got:?}");
    let (mut worst_score, mut worst_box) = (0.0f64, 0.0f64);
    let mut used = vec![false; got.len()];
    for w in want {
        let score = w["score"].as_f64().unwrap();
        let wanted_box: Option<Vec<f64>> = w.get("box").map(|b| {
            b.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        });
        let deviation = |g: &Detection| {
            let box_deviation = match (&g.bbox, &wanted_box) {
                (Some(gb), Some(wb)) => gb
                    .iter()
                    .zip(wb)
                    .map(|(a, b)| (f64::from(*a) - b).abs())
                    .fold(0.0, f64::max),
                (None, None) => 0.0,
                _ => f64::INFINITY,
            };
            ((f64::from(g.score) - score).abs(), box_deviation)
        };
        let found = (0..got.len()).find(|&i| {
            let (s, b) = deviation(&got[i]);
            !used[i] && got[i].label == w["label"] && s <= SCORE_TOLERANCE && b <= BOX_TOLERANCE
        });
        let Some(i) = found else {
            panic!("{name}: no detection matches {w}; got {got:?}");
        };
        used[i] = true;
        let (s, b) = deviation(&got[i]);
        worst_score = worst_score.max(s);
        worst_box = worst_box.max(b);
    }
    assert!(
        got.windows(2).all(|p| p[0].score >= p[1].score),
        "{name}: not best first"
    );
    (worst_score, worst_box)
}

#[test]
fn matches_the_numpy_reference() {
    let (dir, manifest) = fixtures();
    let mut kinds = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let settings: OutputProcessing = serde_json::from_value(case["output"].clone()).unwrap();
        let labels: Option<Vec<String>> = serde_json::from_value(case["labels"].clone()).unwrap();
        let input_size: Option<(u32, u32)> = serde_json::from_value(case["input_size"].clone()).unwrap();
        let post = Postprocessor::new(&settings, labels, input_size).unwrap();
        let outputs: Vec<(String, Tensor)> = case["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let file = std::fs::File::open(dir.path().join(o["file"].as_str().unwrap())).unwrap();
                (o["name"].as_str().unwrap().to_string(), read_npy(file).unwrap())
            })
            .collect();
        let got = post.apply(&outputs, transform(case).as_ref()).unwrap();
        let want = case["expected"].as_array().unwrap();
        let (score, bbox) = compare(name, &got, want);
        if post.kind() == Kind::Classify {
            let order: Vec<&str> = got.iter().map(|d| d.label.as_str()).collect();
            let expected: Vec<&str> = want.iter().map(|w| w["label"].as_str().unwrap()).collect();
            assert_eq!(order, expected, "{name}: top-k order");
        }
        println!(
            "{name}: {} detections match, max |Δscore| {score:.2e}, max |Δbox| {bbox:.2e} px",
            got.len()
        );
        kinds.push(post.kind());
    }
    for kind in [Kind::Classify, Kind::Yolo, Kind::Ssd] {
        assert!(kinds.contains(&kind), "no {kind} case");
    }
}
