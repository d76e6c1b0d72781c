//! Memory across reloads, alone in its own test process so that no other test's allocations
//! show up in the RSS it measures.

mod common;

use std::sync::Arc;

use onnxd::config::ReloadMode;
use onnxd::engine::EngineOptions;
use onnxd::repository::loader::LoadSettings;
use onnxd::repository::Repository;
use onnxd::serving::{InferRequest, Router};
use onnxd::tensor::Tensor;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn memory_does_not_grow_across_one_hundred_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("m");
    std::fs::create_dir_all(model_dir.join("1")).unwrap();
    let router = Arc::new(Router::default());
    assert!(common::ort_library().exists());
    let settings = LoadSettings {
        engine: EngineOptions {
            intra_threads: 1,
            ..EngineOptions::default()
        },
        require_signatures: false,
        trusted_keys: Vec::new(),
        force_engine: None,
        batching: Default::default(),
    };
    let mut repo = Repository::new(dir.path(), settings, ReloadMode::Beside, router.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let five_mb = 5 << 20;
    let mut cycle = |i: u64| {
        std::fs::write(
            model_dir.join("1/model.onnx"),
            common::value_model(i as f32, five_mb),
        )
        .unwrap();
        let report = repo.sync_model("m");
        assert_eq!(report.loaded, vec![1], "{report:?}");
        let x = Tensor::from_values(vec![1, 1], &[0.0f32]).unwrap();
        let request = InferRequest {
            model: "m".into(),
            inputs: vec![("x".into(), x)],
            ..Default::default()
        };
        let response = runtime.block_on(router.infer(request)).unwrap();
        assert_eq!(response.outputs[0].1.to_f64_vec().unwrap(), vec![i as f64]);
    };
    for i in 0..10 {
        cycle(i);
    }
    let before = rss_bytes();
    for i in 10..110 {
        cycle(i);
    }
    let growth = rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS growth over 100 reloads of a 5 MB model: {} KiB",
        growth / 1024
    );
    assert!(growth < 20 << 20, "RSS grew by {} MiB", growth >> 20);
}
