//! A model's sidecar (`model.toml`) as the repository reads it: parsed and validated, then
//! what a load builds from it before any engine — the version policy, the batching policy,
//! the `[input]` pipeline against a one-input image signature, the `[output]`
//! post-processor and the warm-up inputs. Input: the file. Seeds: the example model's
//! `model.toml` and the sidecars of the tests (`make_seeds`).

use onnxd::engine::EngineOptions;
use onnxd::model::{ModelInfo, TensorSpec, ValueKind};
use onnxd::pipeline::postprocess::Postprocessor;
use onnxd::repository::loader::{batch_policy, BatchOverrides};
use onnxd::repository::sidecar::Sidecar;
use onnxd::repository::warmup;
use onnxd::serving::image::ImagePipeline;
use onnxd::tensor::{DType, Dim};

/// An image model whose batch, height and width are symbolic (as dynamic exports are): the
/// sidecar's `[input]` sizes are then the only bound.
fn image_signature() -> ModelInfo {
    let symbolic = |name: &str| Dim::Symbolic(Some(name.into()));
    ModelInfo {
        inputs: vec![TensorSpec {
            name: "images".into(),
            kind: ValueKind::Tensor(DType::F32),
            dims: vec![symbolic("N"), Dim::Fixed(3), symbolic("H"), symbolic("W")],
            rank_known: true,
        }],
        outputs: vec![TensorSpec {
            name: "scores".into(),
            kind: ValueKind::Tensor(DType::F32),
            dims: vec![symbolic("N"), Dim::Fixed(10)],
            rank_known: true,
        }],
        ..ModelInfo::default()
    }
}

fn main() {
    let dir = onnxd_fuzz::scratch("model_toml");
    let info = image_signature();
    afl::fuzz!(|data: &[u8]| {
        std::fs::write(dir.join("model.toml"), data).expect("scratch write");
        let Ok(sidecar) = Sidecar::load(&dir) else {
            return;
        };
        let policy = sidecar.policy().expect("validated");
        let _ = policy.select(&[1, 2, 3, 7]);
        let _ = batch_policy(
            &sidecar,
            &BatchOverrides::default(),
            &info,
            &EngineOptions::default(),
        );
        let image = sidecar
            .input
            .as_ref()
            .and_then(|input| ImagePipeline::new(&info.inputs, input).ok());
        if let Some(output) = &sidecar.output {
            let size = image.as_ref().map(|i| i.pre.size());
            let _ = Postprocessor::new(output, Some(vec!["a".into(), "b".into()]), size);
        }
        let explicit = sidecar.validate.as_ref().and_then(|v| v.warmup.as_ref());
        let _ = warmup::choose(&info, explicit, image.as_ref(), &dir);
    });
}
