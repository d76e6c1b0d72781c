//! The ONNX Runtime engine's stand-in in builds without the `ort` feature (tract-only builds,
//! e.g. armv7): the same entry points as the real module, each answering that ONNX Runtime is
//! not part of this binary, so `engine = "auto"` falls back to tract and `engine = "ort"`
//! fails with a reason instead of a missing library search.

use std::path::{Path, PathBuf};

use super::{EngineError, EngineOptions, LoadedSessions, ModelFile};

/// Never built: there is no ONNX Runtime in this binary.
pub struct OrtRuntime {
    /// Path of the loaded `libonnxruntime.so`.
    pub library: PathBuf,
}

fn absent() -> EngineError {
    EngineError::Library(
        "this onnxd was built without ONNX Runtime (cargo feature `ort`); only tract is available".into(),
    )
}

/// Always the "not built in" error.
pub fn runtime(_explicit: Option<&Path>) -> Result<&'static OrtRuntime, EngineError> {
    Err(absent())
}

/// Never: ONNX Runtime is not built in.
pub fn loaded_library() -> Option<&'static Path> {
    None
}

/// No providers: ONNX Runtime is not built in.
pub fn compiled_providers() -> Vec<&'static str> {
    Vec::new()
}

/// Always the "not built in" error.
pub fn load(_model: &ModelFile, _options: &EngineOptions) -> Result<LoadedSessions, EngineError> {
    Err(absent())
}
