//! Runs the ONNX backend node test suite (`onnx/backend/test/data/node/*`, shipped in the
//! `onnx` wheel) through an onnxd engine and classifies every case, so engine coverage is a
//! measured number. A case is a directory with `model.onnx` and `test_data_set_*/` folders of
//! `input_K.pb` / `output_K.pb` tensors; it passes when every data set's outputs match within
//! `rtol` 1e-3 / `atol` 1e-4. Cases whose values are not KServe tensors (sequences, optionals,
//! FP8, INT4, FP4, ...) are counted as not expressible; panics are caught and counted as
//! crashes (the goal is none).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::{select, EngineChoice, EngineOptions};
use crate::model::ModelFile;
use crate::tensor::proto::decode_tensor_proto;
use crate::tensor::{Tensor, TensorError};

/// Relative tolerance of a passing output.
pub const RTOL: f64 = 1e-3;
/// Absolute tolerance of a passing output.
pub const ATOL: f64 = 1e-4;

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Outputs matched.
    Passed,
    /// Inputs or outputs are not KServe tensors.
    NotExpressible(String),
    /// The engine refused the model with an error.
    LoadFailed(String),
    /// The model loaded but a run returned an error.
    RunFailed(String),
    /// Outputs differ from the expected ones.
    WrongResult(String),
    /// A panic escaped.
    Crashed(String),
}

/// Counts over a set of cases.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Cases run.
    pub cases: usize,
    /// Cases with only KServe-typed values.
    pub expressible: usize,
    /// Expressible cases the engine loaded.
    pub loaded: usize,
    /// Cases that passed.
    pub passed: usize,
    /// Load errors (clean).
    pub load_failed: usize,
    /// Run errors (clean).
    pub run_failed: usize,
    /// Wrong outputs.
    pub wrong_result: usize,
    /// Panics.
    pub crashed: usize,
}

impl Summary {
    /// Adds one outcome.
    pub fn add(&mut self, outcome: &Outcome) {
        self.cases += 1;
        if matches!(outcome, Outcome::NotExpressible(_)) {
            return;
        }
        self.expressible += 1;
        match outcome {
            Outcome::Passed => {
                self.loaded += 1;
                self.passed += 1;
            }
            Outcome::LoadFailed(_) => self.load_failed += 1,
            Outcome::RunFailed(_) => {
                self.loaded += 1;
                self.run_failed += 1;
            }
            Outcome::WrongResult(_) => {
                self.loaded += 1;
                self.wrong_result += 1;
            }
            Outcome::Crashed(_) => self.crashed += 1,
            Outcome::NotExpressible(_) => unreachable!(),
        }
    }
}

/// The case directories under `root`, sorted.
pub fn cases(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Runs one case in one engine.
pub fn run_case(dir: &Path, engine: EngineChoice, ort_library: Option<&Path>) -> Outcome {
    let options = EngineOptions {
        choice: engine,
        ort_library: ort_library.map(Path::to_path_buf),
        intra_threads: 1,
        ..EngineOptions::default()
    };
    std::panic::catch_unwind(|| run_case_inner(dir, &options)).unwrap_or_else(|p| {
        let message = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::Crashed(message)
    })
}

fn run_case_inner(dir: &Path, options: &EngineOptions) -> Outcome {
    let model = match ModelFile::open(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return Outcome::LoadFailed(e.to_string()),
    };
    if let Err(e) = model.info.check_expressible() {
        return Outcome::NotExpressible(e.to_string());
    }
    let data_sets = match read_data_sets(dir) {
        Ok(sets) => sets,
        Err(TensorError::Unsupported(e)) => return Outcome::NotExpressible(e),
        Err(e) => return Outcome::NotExpressible(format!("test data: {e}")),
    };
    let policy = crate::engine::batch::BatchPolicy::unbatched(select::QUEUE_PER_INSTANCE);
    let loaded = match select::load("case", &model, options, policy) {
        Ok(l) => l,
        Err(e) => return Outcome::LoadFailed(e.to_string()),
    };
    let input_names: Vec<String> = model.info.inputs.iter().map(|s| s.name.clone()).collect();
    let output_names: Vec<String> = model.info.outputs.iter().map(|s| s.name.clone()).collect();
    for (inputs, expected) in data_sets {
        if inputs.len() > input_names.len() || expected.len() != output_names.len() {
            return Outcome::NotExpressible("test data does not match the graph's inputs/outputs".into());
        }
        let named = input_names.iter().cloned().zip(inputs).collect();
        let outputs = match loaded.infer_blocking(named, None).and_then(|r| r.outputs) {
            Ok(o) => o,
            Err(e) => return Outcome::RunFailed(e.to_string()),
        };
        for ((name, got), want) in outputs.iter().zip(&expected) {
            if let Err(why) = compare(got, want) {
                return Outcome::WrongResult(format!("output '{name}': {why}"));
            }
        }
    }
    Outcome::Passed
}

type DataSet = (Vec<Tensor>, Vec<Tensor>);

fn read_data_sets(dir: &Path) -> Result<Vec<DataSet>, TensorError> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TensorError::Malformed(e.to_string()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    sets.iter()
        .map(|set| Ok((read_numbered(set, "input")?, read_numbered(set, "output")?)))
        .collect()
}

fn read_numbered(set: &Path, prefix: &str) -> Result<Vec<Tensor>, TensorError> {
    let mut tensors = Vec::new();
    loop {
        let path = set.join(format!("{prefix}_{}.pb", tensors.len()));
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(tensors);
        };
        tensors.push(decode_tensor_proto(&bytes)?);
    }
}

/// Compares an output with the expected tensor at the suite's tolerances.
pub fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    crate::tensor::approx_eq(got, want, RTOL, ATOL)
}
