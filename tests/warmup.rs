//! Users' own dynamic exports load and serve (issue: the daemon refused models that
//! `onnxd infer` ran): a YOLO-style neck that fails on 1x1 images, an audio graph that needs a
//! minimum length, a GRU with a sequence-length input — each in both engines where the engine
//! runs it. A warm-up on guessed inputs that fails never refuses a model; an explicit one
//! (`[validate.warmup]`) does, and one that works is used.

mod common;

use std::path::Path;
use std::sync::Arc;

use onnxd::config::ReloadMode;
use onnxd::engine::EngineOptions;
use onnxd::repository::loader::LoadSettings;
use onnxd::repository::Repository;
use onnxd::serving::{InferRequest, ModelState, Router, State};
use onnxd::tensor::approx_eq;
use onnxd::tensor::kserve::{InferRequestBody, InferResponseBody};

/// Serves `fixture` as model `m` with `sidecar`; returns the router and the model's state.
fn serve(fixture: &str, sidecar: &str) -> (tempfile::TempDir, Arc<Router>, ModelState) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::copy(
        common::fixture(&format!("{fixture}.onnx")),
        model.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::write(model.join("model.toml"), sidecar).unwrap();
    let settings = LoadSettings {
        engine: EngineOptions {
            ort_library: Some(common::ort_library()),
            intra_threads: 1,
            ..EngineOptions::default()
        },
        require_signatures: false,
        trusted_keys: Vec::new(),
        force_engine: None,
        batching: Default::default(),
    };
    let router = Arc::new(Router::default());
    Repository::new(dir.path(), settings, ReloadMode::Beside, router.clone()).sync_all();
    let state = (*router.handle("m").unwrap().state()).clone();
    (dir, router, state)
}

/// Runs the fixture's reference request and compares with onnxruntime-Python's outputs.
fn answers_like_the_reference(router: &Router, fixture: &str) {
    let read = |suffix: &str| std::fs::read(common::fixture(&format!("{fixture}.{suffix}.json"))).unwrap();
    let request: InferRequestBody = serde_json::from_slice(&read("request")).unwrap();
    let mut expected: serde_json::Value = serde_json::from_slice(&read("expected")).unwrap();
    expected["model_name"] = "m".into();
    let expected: InferResponseBody = serde_json::from_value(expected).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime
        .block_on(router.infer(InferRequest {
            model: "m".into(),
            inputs: request.tensors().unwrap(),
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("{fixture}: {e}"));
    for ((name, got), want) in response.outputs.iter().zip(&expected.outputs) {
        approx_eq(got, &want.to_tensor().unwrap(), 1e-4, 1e-5)
            .unwrap_or_else(|e| panic!("{fixture} {name}: {e}"));
    }
}

#[test]
fn dynamic_exports_load_and_serve_in_both_engines() {
    // (fixture, engine, what the warm-up state must say). tract cannot analyse the strided
    // Concat with symbolic height and width ("Impossible to unify (H+1)/2 with 2*((H+3)/4)"),
    // nor a GRU with sequence_lens: ONNX Runtime runs those.
    let cases = [
        (
            "strided_concat",
            "ort",
            "ok on inputs sized by the model's 'imgsz' metadata",
        ),
        ("min_length", "ort", "skipped: guessed inputs"),
        ("min_length", "tract", "guessed inputs"),
        ("gru_seqlen", "ort", "skipped: guessed inputs"),
    ];
    for (fixture, engine, warmup) in cases {
        let (_dir, router, state) = serve(fixture, &format!("engine = \"{engine}\"\n"));
        assert_eq!(state.state, State::Ready, "{fixture} in {engine}: {state:?}");
        assert_eq!(
            state.engine.as_deref(),
            Some(if engine == "ort" { "onnxruntime" } else { "tract" })
        );
        let said = state.warmup.clone().unwrap_or_default();
        assert!(
            said.contains(warmup),
            "{fixture} in {engine}: warm-up said {said:?}"
        );
        answers_like_the_reference(&router, fixture);
    }
}

#[test]
fn the_old_warmup_on_unit_dimensions_fails_on_every_fixture() {
    // What the daemon did before: every symbolic dimension 1. If this stops failing, the
    // fixtures no longer test what they are for.
    for fixture in ["strided_concat", "min_length", "gru_seqlen"] {
        let path = common::fixture(&format!("{fixture}.onnx"));
        let options = EngineOptions {
            ort_library: Some(common::ort_library()),
            choice: onnxd::engine::EngineChoice::Ort,
            intra_threads: 1,
            ..EngineOptions::default()
        };
        let model = onnxd::engine::select::load_path(fixture, Path::new(&path), &options).unwrap();
        let inputs = model.info.unit_inputs().unwrap();
        let outcome = model.infer_blocking(inputs, None).and_then(|r| r.outputs);
        assert!(outcome.is_err(), "{fixture} ran on unit dimensions");
    }
}

#[test]
fn an_explicit_warmup_is_used_and_refuses_when_it_fails() {
    let good = "[validate.warmup.inputs.audio]\nshape = [1, 600]\nvalue = 0.25\n";
    let (_dir, router, state) = serve("min_length", good);
    assert_eq!(state.state, State::Ready, "{state:?}");
    assert_eq!(
        state.warmup.as_deref(),
        Some("ok on explicit inputs ([validate.warmup])")
    );
    answers_like_the_reference(&router, "min_length");

    let bad = "[validate.warmup.inputs.audio]\nshape = [1, 8]\n";
    let (_dir, _router, state) = serve("min_length", bad);
    assert_eq!(state.state, State::Unavailable, "{state:?}");
    let error = state.error.unwrap_or_default();
    assert!(error.contains("version 1: warmup: on explicit inputs"), "{error}");
}
