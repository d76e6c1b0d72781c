# Sourced by the benchmark scripts (after scripts/env.sh, from the repository root): sets BIN
# to the onnxd binary to measure. $ONNXD_BIN when set (a release binary built before, e.g. of
# an earlier commit to compare), then unset (it is not a config key: a daemon would warn about
# it); else a release build of this tree.
if [ -n "${ONNXD_BIN:-}" ]; then
  BIN=$ONNXD_BIN
  unset ONNXD_BIN
else
  touch src/main.rs # the shared target dir may hold another checkout's binary
  cargo build --release --locked --bin onnxd
  BIN="$CARGO_TARGET_DIR/release/onnxd"
fi
