//! The warm-up inference of a new version: which inputs it runs on, and what its failure means.
//!
//! Inputs are chosen in this order:
//!
//! 1. `[validate.warmup]` of the sidecar: a request file, or per input a shape and fill value or
//!    a `.npy` file (**explicit**);
//! 2. the `[input]` image pre-processing: a grey image through the version's own pipeline, i.e.
//!    exactly what camera frames and image payloads will be (**image**);
//! 3. well-known metadata: Ultralytics exports name their image size in `imgsz`
//!    (**metadata**);
//! 4. a guess: every symbolic dimension is [`GUESS_BATCH`] on axis 0 and [`GUESS_OTHER`]
//!    elsewhere, floats in [-1, 1), integers small and non-negative (**guessed**).
//!
//! A failure on explicit or image inputs refuses the version: they are what the model will
//! really be fed. A failure on metadata or guessed inputs does not — dynamic exports routinely
//! need inputs no guess gets right (a minimum audio length, a sequence-length input that must
//! not exceed the sequence) — the version serves, its state says the warm-up was skipped and
//! why, and the first real request pays the engine's lazy initialisation.

use std::path::Path;

use crate::model::ModelInfo;
use crate::serving::image::ImagePipeline;
use crate::tensor::kserve::InferRequestBody;
use crate::tensor::npy::read_npy;
use crate::tensor::Tensor;
use crate::tensor::Tensors;

use super::sidecar::Warmup;

/// A guessed symbolic batch dimension (axis 0).
pub const GUESS_BATCH: usize = 1;
/// A guessed symbolic dimension anywhere else: divisible by the strides of common CNNs (up
/// to 64) and long enough for most sequence ops.
pub const GUESS_OTHER: usize = 64;

/// Where warm-up inputs came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `[validate.warmup]`.
    Explicit,
    /// The `[input]` image pipeline.
    Image,
    /// Model metadata (the key named).
    Metadata(&'static str),
    /// Symbolic dimensions guessed.
    Guessed,
}

impl Origin {
    /// Whether a failed warm-up on these inputs refuses the version.
    pub fn refuses(&self) -> bool {
        matches!(self, Origin::Explicit | Origin::Image)
    }

    /// How the state reports it.
    pub fn describe(&self) -> String {
        match self {
            Origin::Explicit => "explicit inputs ([validate.warmup])".into(),
            Origin::Image => "a grey image through [input]".into(),
            Origin::Metadata(key) => format!("inputs sized by the model's '{key}' metadata"),
            Origin::Guessed => format!(
                "guessed inputs (symbolic dimensions: {GUESS_BATCH} on axis 0, {GUESS_OTHER} elsewhere)"
            ),
        }
    }
}

/// Warm-up inputs and where they came from.
#[derive(Debug)]
pub struct WarmupInputs {
    /// Named tensors.
    pub inputs: Tensors,
    /// Their origin.
    pub origin: Origin,
}

/// Chooses the warm-up inputs of a version (see the module documentation). An error means an
/// explicit warm-up that cannot be read, which refuses the version.
pub fn choose(
    info: &ModelInfo,
    explicit: Option<&Warmup>,
    image: Option<&ImagePipeline>,
    dir: &Path,
) -> Result<WarmupInputs, String> {
    if let Some(warmup) = explicit {
        return Ok(WarmupInputs {
            inputs: explicit_inputs(info, warmup, dir)?,
            origin: Origin::Explicit,
        });
    }
    if let Some(pipeline) = image {
        let (width, height) = pipeline.pre.size();
        let grey = vec![114u8; width as usize * height as usize * 3];
        let prepared = pipeline
            .pre
            .from_rgb(width, height, &grey)
            .map_err(|e| e.to_string())?;
        return Ok(WarmupInputs {
            inputs: vec![(pipeline.input.clone(), prepared.tensor)],
            origin: Origin::Image,
        });
    }
    if let Some(size) = ultralytics_imgsz(info) {
        if let Ok(inputs) = info.synthetic_inputs(|spec, axis| image_dim(spec.dims.len(), axis, size)) {
            return Ok(WarmupInputs {
                inputs,
                origin: Origin::Metadata("imgsz"),
            });
        }
    }
    let inputs = info
        .synthetic_inputs(|_, axis| Some(if axis == 0 { GUESS_BATCH } else { GUESS_OTHER }))
        .map_err(|e| e.to_string())?;
    Ok(WarmupInputs {
        inputs,
        origin: Origin::Guessed,
    })
}

/// The inputs `[validate.warmup]` names.
fn explicit_inputs(info: &ModelInfo, warmup: &Warmup, dir: &Path) -> Result<Tensors, String> {
    let read = |file: &Path| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| format!("validate.warmup: cannot read {}: {e}", path.display()))
    };
    if let Some(request) = &warmup.request {
        let body: InferRequestBody = serde_json::from_slice(&read(request)?)
            .map_err(|e| format!("validate.warmup.request {}: {e}", request.display()))?;
        return body
            .tensors()
            .map_err(|e| format!("validate.warmup.request: {e}"));
    }
    warmup
        .inputs
        .iter()
        .map(|(name, input)| {
            let tensor = match (&input.file, &input.shape) {
                (Some(file), _) => read_npy(&read(file)?[..]).map_err(|e| e.to_string()),
                (None, Some(shape)) => {
                    let dtype = info
                        .inputs
                        .iter()
                        .find(|s| &s.name == name)
                        .and_then(|s| s.dtype())
                        .ok_or_else(|| format!("the model has no tensor input '{name}'"))?;
                    Tensor::filled(dtype, shape.clone(), input.value.unwrap_or(0.0))
                        .map_err(|e| e.to_string())
                }
                (None, None) => Err("expected `shape` or `file`".into()),
            }
            .map_err(|e| format!("validate.warmup.inputs.{name}: {e}"))?;
            Ok((name.clone(), tensor))
        })
        .collect()
}

/// `[height, width]` from Ultralytics' `imgsz` metadata (`"[320, 320]"` or `"640"`).
fn ultralytics_imgsz(info: &ModelInfo) -> Option<[usize; 2]> {
    let text = info.metadata.get("imgsz")?;
    let sizes: Vec<usize> = text
        .trim_matches(|c| c == '[' || c == ']' || c == '(' || c == ')')
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    match sizes[..] {
        [side] => Some([side, side]),
        [height, width] => Some([height, width]),
        _ => None,
    }
}

/// A symbolic dimension of an image input sized `[height, width]`: batch 1, the last two axes
/// of a rank-4 NCHW input or axes 1 and 2 of an NHWC one (whichever pair is symbolic).
fn image_dim(rank: usize, axis: usize, [height, width]: [usize; 2]) -> Option<usize> {
    match (rank, axis) {
        (_, 0) => Some(1),
        (4, 2) => Some(height),
        (4, 3) => Some(width),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TensorSpec, ValueKind};
    use crate::tensor::{DType, Dim};

    fn info(dims: Vec<Dim>, metadata: &[(&str, &str)]) -> ModelInfo {
        ModelInfo {
            inputs: vec![TensorSpec {
                name: "images".into(),
                kind: ValueKind::Tensor(DType::F32),
                dims,
                rank_known: true,
            }],
            outputs: Vec::new(),
            opsets: Default::default(),
            ir_version: 8,
            producer: String::new(),
            graph_name: String::new(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sha256: String::new(),
            file_size: 0,
            footprint: Default::default(),
        }
    }

    fn sym(name: &str) -> Dim {
        Dim::Symbolic(Some(name.into()))
    }

    #[test]
    fn ultralytics_imgsz_sizes_the_image_axes() {
        let dims = vec![sym("batch"), Dim::Fixed(3), sym("height"), sym("width")];
        let chosen = choose(
            &info(dims, &[("imgsz", "[320, 256]")]),
            None,
            None,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(chosen.origin, Origin::Metadata("imgsz"));
        assert_eq!(chosen.inputs[0].1.shape(), &[1, 3, 320, 256]);
        assert!(!chosen.origin.refuses());
    }

    #[test]
    fn without_hints_symbolic_dimensions_are_guessed() {
        let dims = vec![sym("batch"), sym("samples")];
        let chosen = choose(&info(dims, &[]), None, None, Path::new(".")).unwrap();
        assert_eq!(chosen.origin, Origin::Guessed);
        assert_eq!(chosen.inputs[0].1.shape(), &[GUESS_BATCH, GUESS_OTHER]);
        assert!(!chosen.origin.refuses());
    }

    #[test]
    fn explicit_inputs_are_filled_and_refuse_on_failure() {
        let mut warmup = Warmup::default();
        warmup.inputs.insert(
            "images".into(),
            super::super::sidecar::WarmupInput {
                shape: Some(vec![1, 2]),
                value: Some(0.5),
                file: None,
            },
        );
        let chosen = choose(
            &info(vec![sym("b"), sym("n")], &[]),
            Some(&warmup),
            None,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(chosen.origin, Origin::Explicit);
        assert!(chosen.origin.refuses());
        assert_eq!(chosen.inputs[0].1.to_f64_vec().unwrap(), vec![0.5, 0.5]);
        let missing = Warmup {
            request: Some("nope.json".into()),
            ..Warmup::default()
        };
        let err = choose(
            &info(vec![], &[]),
            Some(&missing),
            None,
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(err.contains("validate.warmup: cannot read"), "{err}");
    }
}
