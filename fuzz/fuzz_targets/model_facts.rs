//! A model file dropped into the repository, up to the engine: the `ModelProto` decoded and
//! checked (`ModelFile::from_bytes`: signature, opsets, declared sizes, external data), the
//! expressibility and tract pre-checks, and the guessed warm-up inputs a load would build.
//! Input: the `model.onnx` bytes (also written to the scratch directory, so external-data
//! references resolve against a real folder). Seeds: every `.onnx` fixture and the example
//! model (`make_seeds`).

use onnxd::model::ModelFile;
use onnxd::repository::warmup;

fn main() {
    let dir = onnxd_fuzz::scratch("model_facts");
    let path = dir.join("model.onnx");
    afl::fuzz!(|data: &[u8]| {
        std::fs::write(&path, data).expect("scratch write");
        let Ok(file) = ModelFile::from_bytes(&path, data) else {
            return;
        };
        let info = &file.info;
        let _ = info.check_expressible();
        let _ = onnxd::engine::tract::precheck(&file);
        let _ = info.batchable();
        let _ = info.inputs.iter().map(|s| s.describe()).count();
        let _ = warmup::choose(info, None, None, &dir);
    });
}
