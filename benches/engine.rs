//! Micro-benchmarks of the per-request work onnxd adds around an engine: decoding a V2 JSON
//! tensor, encoding outputs back to JSON, the binary wire form, and a whole in-process
//! inference of the example model through the inference-thread pool.
//!
//! `cargo bench --profile dev --bench engine` (ORT_DYLIB_PATH set, as scripts/env.sh does).

use criterion::{criterion_group, criterion_main, Criterion};
use onnxd::engine::{select, EngineChoice, EngineOptions};
use onnxd::tensor::kserve::{tensor_from_json, tensor_to_json};
use onnxd::tensor::{DType, Tensor};

fn image_tensor() -> Tensor {
    let values: Vec<f32> = (0..3 * 224 * 224).map(|i| (i % 255) as f32 / 255.0).collect();
    Tensor::from_values(vec![1, 3, 224, 224], &values).unwrap()
}

fn conversions(c: &mut Criterion) {
    let tensor = image_tensor();
    let json = tensor_to_json(&tensor);
    c.bench_function("json_decode_fp32_1x3x224x224", |b| {
        b.iter(|| tensor_from_json(DType::F32, vec![1, 3, 224, 224], &json).unwrap())
    });
    c.bench_function("json_encode_fp32_1x3x224x224", |b| {
        b.iter(|| tensor_to_json(&tensor))
    });
    let wire = tensor.to_wire();
    c.bench_function("wire_decode_fp32_1x3x224x224", |b| {
        b.iter(|| Tensor::from_wire(DType::F32, vec![1, 3, 224, 224], &wire).unwrap())
    });
}

fn inference(c: &mut Criterion) {
    let model_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/model.onnx");
    for (name, choice) in [("ort", EngineChoice::Ort), ("tract", EngineChoice::Tract)] {
        let options = EngineOptions {
            choice,
            intra_threads: 1,
            ..EngineOptions::default()
        };
        let model = select::load_path("digits", &model_path, &options).expect("load the example model");
        let image = Tensor::from_values(vec![1, 1, 8, 8], &[0.5f32; 64]).unwrap();
        c.bench_function(&format!("digits_infer_{name}"), |b| {
            b.iter(|| {
                model
                    .infer_blocking(vec![("image".into(), image.clone())], None)
                    .unwrap()
            })
        });
    }
}

criterion_group!(benches, conversions, inference);
criterion_main!(benches);
