//! `onnxd infer MODEL.onnx -i INPUT...`: one inference, the KServe V2 response on stdout.
//!
//! An INPUT is a V2 request JSON file (its inputs, requested outputs and id), `NAME=FILE.npy`,
//! or `FILE.npy` for a model with a single input.

use std::path::Path;

use serde_json::{json, Value};

use crate::engine::{select, EngineError, EngineOptions, Tensors};
use crate::tensor::kserve::{InferRequestBody, InferResponseBody, OutputTensor};
use crate::tensor::npy::read_npy;

/// A failed `infer`: which part was wrong.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// An input file could not be read or parsed.
    #[error("{file}: {message}")]
    Input {
        /// Input argument.
        file: String,
        /// What was wrong.
        message: String,
    },
    /// The model could not be loaded or run.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Inputs gathered from the command line.
#[derive(Default)]
pub struct InferInputs {
    /// Named tensors.
    pub tensors: Tensors,
    /// Outputs requested by a JSON request, if any.
    pub outputs: Option<Vec<String>>,
    /// Request id from a JSON request.
    pub id: Option<String>,
}

/// Parses the `-i` arguments; `single_input` names the model's input when it has only one.
pub fn read_inputs(args: &[String], single_input: Option<&str>) -> Result<InferInputs, InferError> {
    let mut inputs = InferInputs::default();
    for arg in args {
        let fail = |message: String| InferError::Input {
            file: arg.clone(),
            message,
        };
        let (name, file) = match arg.split_once('=') {
            Some((name, file)) => (Some(name.to_string()), file),
            None => (None, arg.as_str()),
        };
        let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read: {e}")))?;
        if file.ends_with(".json") {
            if name.is_some() {
                return Err(fail(
                    "NAME=FILE applies to .npy files; a .json request names its own inputs".into(),
                ));
            }
            let body: InferRequestBody =
                serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a KServe V2 request: {e}")))?;
            inputs.tensors.extend(body.tensors().map_err(fail)?);
            if let Some(outputs) = body.outputs {
                inputs.outputs = Some(outputs.into_iter().map(|o| o.name).collect());
            }
            inputs.id = body.id.or(inputs.id);
        } else if file.ends_with(".npy") {
            let name = name
                .or_else(|| single_input.map(str::to_string))
                .ok_or_else(|| fail("the model has several inputs: write NAME=FILE.npy".into()))?;
            let tensor = read_npy(&bytes[..]).map_err(|e| fail(e.to_string()))?;
            inputs.tensors.push((name, tensor));
        } else {
            return Err(fail(
                "expected a KServe V2 request (.json) or NAME=FILE.npy; image inputs need a model directory with [input]".into(),
            ));
        }
    }
    Ok(inputs)
}

/// Loads the model, runs the inputs and returns the V2 response JSON.
pub fn infer(model_path: &Path, input_args: &[String], options: &EngineOptions) -> Result<Value, InferError> {
    let name = model_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let model = select::load_path(&name, model_path, options)?;
    let single = (model.info.inputs.len() == 1).then(|| model.info.inputs[0].name.as_str());
    let inputs = read_inputs(input_args, single)?;
    let result = model.infer_blocking(inputs.tensors, inputs.outputs.as_deref())?;
    let outputs = result.outputs?;
    let response = InferResponseBody {
        model_name: name,
        model_version: Some("1".into()),
        id: inputs.id,
        parameters: Some(
            json!({
                "engine": model.engine.to_string(),
                "provider": model.provider,
                "inference_us": result.compute_time.as_micros() as u64,
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        ),
        outputs: outputs
            .iter()
            .map(|(name, t)| OutputTensor::from_tensor(name, t))
            .collect(),
    };
    Ok(serde_json::to_value(response).expect("response serialises"))
}
