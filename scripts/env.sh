# Shared environment of scripts/test, scripts/run and the benchmark scripts (sourced).
# The cargo target directory lives outside the clone so builds are reused between clones/CI.
ONNXD_CACHE="${ONNXD_CACHE:-$PWD/.cache}"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if mkdir -p /var/cache/onnxd-target 2>/dev/null && [ -w /var/cache/onnxd-target ]; then
    CARGO_TARGET_DIR=/var/cache/onnxd-target
  else
    CARGO_TARGET_DIR="$PWD/target"
  fi
fi
export CARGO_TARGET_DIR ONNXD_CACHE
export ORT_DYLIB_PATH="$ONNXD_CACHE/ort/libonnxruntime.so.1.31.1"
export ONNXD_PYTHON="$ONNXD_CACHE/venv/bin/python"
export ONNXD_FIXTURES="$ONNXD_CACHE/fixtures"
export ONNXD_ONNX_NODE_TESTS
ONNXD_ONNX_NODE_TESTS="$("$ONNXD_PYTHON" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/node"))')"
