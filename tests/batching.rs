//! Dynamic batching with real engines (ONNX Runtime and tract): batched answers equal the
//! same requests run alone, requests of other shapes wait for their own batch, a bad request
//! fails alone, requests carrying their own batch share one, queue size and timeout are
//! enforced, a hot swap under batched load fails nothing, and GPUs that are not there are
//! refused by name.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use onnxd::config::ReloadMode;
use onnxd::engine::EngineOptions;
use onnxd::repository::loader::LoadSettings;
use onnxd::repository::serve_one;
use onnxd::serving::{InferRequest, InferResponse, Router, ServeError};
use onnxd::tensor::Tensor;

fn settings(engine: &str) -> LoadSettings {
    LoadSettings {
        engine: EngineOptions {
            ort_library: Some(common::ort_library()),
            intra_threads: 1,
            ..EngineOptions::default()
        },
        require_signatures: false,
        trusted_keys: Vec::new(),
        force_engine: Some(onnxd::choice::parse(engine).unwrap()),
        batching: Default::default(),
    }
}

/// Serves `model` (bytes) as a model directory with `sidecar`.
fn serve(dir: &Path, model: &[u8], sidecar: &str, engine: &str) -> Arc<Router> {
    let path = dir.join("m");
    std::fs::create_dir_all(path.join("1")).unwrap();
    std::fs::write(path.join("1/model.onnx"), model).unwrap();
    std::fs::write(path.join("model.toml"), sidecar).unwrap();
    serve_one(&path, &settings(engine))
        .unwrap_or_else(|e| panic!("{e}"))
        .1
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn request(inputs: Vec<(&str, Tensor)>) -> InferRequest {
    InferRequest {
        model: "m".into(),
        inputs: inputs.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
        ..Default::default()
    }
}

/// Sends every request at once; answers in request order.
fn burst(router: &Arc<Router>, requests: Vec<InferRequest>) -> Vec<Result<InferResponse, ServeError>> {
    runtime().block_on(async {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|r| {
                let router = router.clone();
                tokio::spawn(async move { router.infer(r).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    })
}

fn digit_images(n: usize) -> Vec<Tensor> {
    (0..n)
        .map(|i| {
            let pixels: Vec<f32> = (0..64).map(|p| ((p * 7 + i * 13) % 17) as f32 / 16.0).collect();
            Tensor::from_values(vec![1, 1, 8, 8], &pixels).unwrap()
        })
        .collect()
}

#[test]
fn batched_answers_equal_answers_alone_in_both_engines() {
    let digits = std::fs::read(common::models().join("digits/model.onnx")).unwrap();
    let cnn = std::fs::read(common::fixture("cnn.onnx")).unwrap();
    // ONNX Runtime: bitwise for the MLP. tract computes one row with a matrix-vector kernel
    // and a batch with a matrix-matrix kernel, which sum in another order: equal within 1e-6.
    for (engine, digits_rtol) in [("ort", 0.0), ("tract", 1e-6)] {
        for (name, model, input, images, rtol) in [
            ("digits", &digits, "image", digit_images(12), digits_rtol),
            ("cnn", &cnn, "x", cnn_images(6), 1e-5),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let batched = serve(
                dir.path(),
                model,
                "max_batch_size = 8\n[batching]\nmax_queue_delay_us = 20000\n",
                engine,
            );
            let requests = images.iter().map(|t| request(vec![(input, t.clone())])).collect();
            let answers: Vec<InferResponse> = burst(&batched, requests)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert!(
                answers.iter().any(|a| a.execution.batch_size > 1),
                "{name} in {engine}: nothing was batched"
            );
            let alone_dir = tempfile::tempdir().unwrap();
            let alone = serve(alone_dir.path(), model, "max_batch_size = 0\n", engine);
            for (image, answer) in images.iter().zip(&answers) {
                let single = runtime()
                    .block_on(alone.infer(request(vec![(input, image.clone())])))
                    .unwrap();
                let (got, want) = (&answer.outputs[0].1, &single.outputs[0].1);
                onnxd::tensor::approx_eq(got, want, rtol, 0.0).unwrap_or_else(|e| {
                    panic!("{name} in {engine} (batch {}): {e}", answer.execution.batch_size)
                });
            }
        }
    }
}

fn cnn_images(n: usize) -> Vec<Tensor> {
    (0..n)
        .map(|i| {
            let pixels: Vec<f32> = (0..3 * 96 * 96)
                .map(|p| ((p * 31 + i * 7) % 255) as f32 / 255.0)
                .collect();
            Tensor::from_values(vec![1, 3, 96, 96], &pixels).unwrap()
        })
        .collect()
}

fn rows(rows: usize, width: usize, value: f32) -> Tensor {
    Tensor::from_values(vec![rows, width], &vec![value; rows * width]).unwrap()
}

#[test]
fn mixed_shapes_bad_requests_and_own_batches_in_one_burst() {
    for engine in ["ort", "tract"] {
        let dir = tempfile::tempdir().unwrap();
        let sidecar = "max_batch_size = 8\n[batching]\nmax_queue_delay_us = 20000\n";
        let router = serve(dir.path(), &common::widths_model(100.0), sidecar, engine);
        // Widths 3 and 5 cannot share a batch; one request carries a batch of 3; one has the
        // wrong dtype and one a batch over the maximum: they fail alone.
        let mut requests: Vec<InferRequest> = (0..5)
            .map(|i| request(vec![("x", rows(1, 3, i as f32))]))
            .collect();
        requests.push(request(vec![("x", rows(3, 3, 50.0))]));
        requests.extend((0..3).map(|i| request(vec![("x", rows(1, 5, i as f32))])));
        requests.push(request(vec![(
            "x",
            Tensor::from_values(vec![1, 3], &[1i32, 2, 3]).unwrap(),
        )]));
        requests.push(request(vec![("x", rows(9, 3, 0.0))]));
        let answers = burst(&router, requests);
        for (i, answer) in answers.iter().enumerate().take(9) {
            let answer = answer
                .as_ref()
                .unwrap_or_else(|e| panic!("{engine} request {i}: {e}"));
            let (shape, values) = (
                answer.outputs[0].1.shape(),
                answer.outputs[0].1.to_f64_vec().unwrap(),
            );
            let (want_rows, want_width, value) = match i {
                0..=4 => (1, 3, i as f64),
                5 => (3, 3, 50.0),
                _ => (1, 5, (i - 6) as f64),
            };
            assert_eq!(shape, &[want_rows, want_width], "{engine} request {i}");
            assert!(
                values.iter().all(|v| *v == value + 100.0),
                "{engine} request {i}: {values:?}"
            );
        }
        assert!(answers
            .iter()
            .take(9)
            .any(|a| a.as_ref().unwrap().execution.batch_size > 1));
        let dtype = answers[9].as_ref().unwrap_err().to_string();
        assert!(dtype.contains("is INT32 but the model expects FP32"), "{dtype}");
        let over = answers[10].as_ref().unwrap_err().to_string();
        assert!(
            over.contains("batch of 9 exceeds the model's max_batch_size of 8"),
            "{over}"
        );
    }
}

#[test]
fn a_full_queue_is_overloaded_and_a_queued_request_past_the_timeout_expires() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = "max_batch_size = 8\n[batching]\nmax_queue_delay_us = 300000\nmax_queue_size = 2\n";
    let router = serve(dir.path(), &common::widths_model(1.0), sidecar, "ort");
    let answers = burst(
        &router,
        (0..4).map(|_| request(vec![("x", rows(1, 3, 0.0))])).collect(),
    );
    let overloaded = answers
        .iter()
        .filter(|a| matches!(a, Err(ServeError::Overloaded(_))))
        .count();
    assert_eq!(overloaded, 2, "{answers:?}");
    let dir = tempfile::tempdir().unwrap();
    let sidecar = "max_batch_size = 8\n[batching]\nmax_queue_delay_us = 50000\ndefault_timeout_us = 1000\n";
    let router = serve(dir.path(), &common::widths_model(1.0), sidecar, "ort");
    let answer = runtime().block_on(router.infer(request(vec![("x", rows(1, 3, 0.0))])));
    assert!(matches!(answer, Err(ServeError::Expired)), "{answer:?}");
}

#[test]
fn gpus_that_are_not_there_fail_the_load_naming_gpus() {
    for engine in ["ort", "tract"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::create_dir_all(path.join("1")).unwrap();
        std::fs::write(path.join("1/model.onnx"), common::widths_model(1.0)).unwrap();
        std::fs::write(path.join("model.toml"), "gpus = [0, 1]\n").unwrap();
        let err = serve_one(&path, &settings(engine)).err().unwrap();
        assert!(err.contains("gpus = [0, 1]"), "{engine}: {err}");
    }
}

#[test]
fn a_model_that_cannot_batch_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    std::fs::create_dir_all(path.join("1")).unwrap();
    std::fs::copy(common::fixture("dtype_FP32.onnx"), path.join("1/model.onnx")).unwrap();
    std::fs::write(path.join("model.toml"), "max_batch_size = 8\n").unwrap();
    let err = serve_one(&path, &settings("ort")).err().unwrap();
    assert!(
        err.contains("max_batch_size = 8") && err.contains("cannot batch"),
        "{err}"
    );
    // Without the key it serves unbatched.
    std::fs::remove_file(path.join("model.toml")).unwrap();
    let router = serve_one(&path, &settings("ort")).unwrap().1;
    let version = router.handle("m").unwrap().pick(None).unwrap();
    assert_eq!(version.model.policy().max_batch_size, 0);
}

#[test]
fn a_hot_swap_under_batched_load_fails_nothing_and_never_mixes_versions() {
    use onnxd::repository::watch::{RepositoryThread, Timing};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(model.join("1/model.onnx"), common::value_model(1.0, 0)).unwrap();
    std::fs::write(
        model.join("model.toml"),
        "max_batch_size = 16\n[batching]\nmax_queue_delay_us = 2000\n",
    )
    .unwrap();
    let router = Arc::new(Router::default());
    let mut repo =
        onnxd::repository::Repository::new(dir.path(), settings("ort"), ReloadMode::Beside, router.clone());
    repo.sync_all();
    let timing = Timing {
        settle: Duration::from_millis(20),
        poll: None,
    };
    let _thread = RepositoryThread::start(repo, dir.path(), true, timing).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (router, stop) = (router.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut batched, mut failures) = (0, 0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let requests = (0..8).map(|_| request(vec![("x", rows(1, 1, 0.0))])).collect();
                for answer in burst(&router, requests) {
                    match answer {
                        // y = x + version: a batch run on another version shows here.
                        Ok(a) if a.outputs[0].1.to_f64_vec().unwrap() == [a.version as f64] => {
                            ok += 1;
                            batched += usize::from(a.execution.batch_size > 1);
                        }
                        Ok(a) => failures.push(format!("version {} answered {:?}", a.version, a.outputs)),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
            (ok, batched, failures)
        })
    };
    for version in 2..=15u64 {
        let staging = model.join(format!("{version}.tmp"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("model.onnx"), common::value_model(version as f32, 0)).unwrap();
        std::fs::rename(&staging, model.join(version.to_string())).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while router.handle("m").unwrap().state().version != Some(version) {
            assert!(
                std::time::Instant::now() < until,
                "version {version} never served"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, batched, failures) = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(ok > 100 && batched > 0, "{ok} answered, {batched} in batches");
}
