//! Shared helpers of the integration tests: where the fixtures, the ONNX Runtime library and
//! the ONNX node tests are. A missing dependency fails the test with the way to get it —
//! never a silent skip.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

fn required(var: &str) -> PathBuf {
    let value = std::env::var_os(var)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests through ./scripts/test"));
    let path = PathBuf::from(value);
    assert!(
        path.exists(),
        "{var}={} does not exist: run ./scripts/test (it installs it)",
        path.display()
    );
    path
}

/// Directory of the generated fixtures.
pub fn fixtures() -> PathBuf {
    required("ONNXDTEST_FIXTURES")
}

/// A fixture file.
pub fn fixture(name: &str) -> PathBuf {
    let path = fixtures().join(name);
    assert!(
        path.exists(),
        "fixture {} missing: run ./scripts/test",
        path.display()
    );
    path
}

/// The ONNX Runtime library the tests use.
pub fn ort_library() -> PathBuf {
    required("ORT_DYLIB_PATH")
}

/// The ONNX backend node tests of the onnx wheel.
pub fn node_tests() -> PathBuf {
    required("ONNXDTEST_NODE_TESTS")
}

/// The example models folder.
pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}
