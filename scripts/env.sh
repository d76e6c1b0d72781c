# (Variables are ONNXDTEST_*, not ONNXD_*: every ONNXD_* variable is a config override.)
# Shared environment of scripts/test, scripts/run and the benchmark scripts (sourced).
# The cargo target directory lives outside the clone so builds are reused between clones/CI.
ONNXDTEST_CACHE="${ONNXDTEST_CACHE:-$PWD/.cache}"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if mkdir -p /var/cache/onnxd-target 2>/dev/null && [ -w /var/cache/onnxd-target ]; then
    CARGO_TARGET_DIR=/var/cache/onnxd-target
  else
    CARGO_TARGET_DIR="$PWD/target"
  fi
fi
export CARGO_TARGET_DIR ONNXDTEST_CACHE
export ORT_DYLIB_PATH="$ONNXDTEST_CACHE/ort/libonnxruntime.so.1.31.1"
export ONNXDTEST_ORT_1_17="$ONNXDTEST_CACHE/ort-1.17/libonnxruntime.so.1.17.3"
export ONNXDTEST_PYTHON="$ONNXDTEST_CACHE/venv/bin/python"
export ONNXDTEST_FIXTURES="$ONNXDTEST_CACHE/fixtures"
# Tools the test set-up extracts (promtool).
export PATH="$ONNXDTEST_CACHE/bin:$PATH"
# The ONNX node tests ship with the onnx wheel of the test venv (absent when only the
# daemon's set-up ran).
export ONNXDTEST_NODE_TESTS
if [ -x "$ONNXDTEST_PYTHON" ]; then
  ONNXDTEST_NODE_TESTS="$("$ONNXDTEST_PYTHON" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/node"))' 2>/dev/null || true)"
fi
