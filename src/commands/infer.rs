//! `onnxd infer MODEL -i INPUT...`: one request through the serving core — the same loading
//! checks, decoding, pre- and post-processing as the daemon — with the KServe V2 response
//! (and the post-processed `result`) on stdout.
//!
//! MODEL is a `.onnx` file or a model directory (its sidecar, labels and versions apply). An
//! INPUT is a V2 request JSON file, an image (JPEG, PNG, BMP, WebP: for a model directory with
//! `[input]`), `NAME=FILE.npy`, or `FILE.npy` for a model with a single input.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::codec::{self, Encoding, Payload};
use crate::pipeline::decode::is_image;
use crate::repository::loader::LoadSettings;
use crate::repository::serve_one;
use crate::serving::{InferRequest, InferResponse, PayloadRequest, Router, ServeError};
use crate::tensor::kserve::InferRequestBody;
use crate::tensor::npy::read_npy;
use crate::tensor::Tensors;

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
    /// The model could not be loaded.
    #[error("{0}")]
    Load(String),
    /// The serving core refused or failed the request.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A model loaded as the daemon would, serving in this process.
pub struct Served {
    /// Its name (the file's stem or the directory's name).
    pub name: String,
    /// The serving core holding it.
    pub router: Arc<Router>,
}

impl Served {
    /// Loads `path` with every check a reload makes.
    pub fn load(path: &Path, settings: &LoadSettings) -> Result<Served, InferError> {
        let (name, router) = serve_one(path, settings).map_err(InferError::Load)?;
        Ok(Served { name, router })
    }

    /// The name of the model's only input, if it has exactly one.
    pub fn single_input(&self) -> Option<String> {
        let version = self.router.handle(&self.name)?.pick(None).ok()?;
        match &version.model.info.inputs[..] {
            [only] => Some(only.name.clone()),
            _ => None,
        }
    }

    /// How the serving version batches.
    pub fn policy(&self) -> Option<crate::engine::batch::BatchPolicy> {
        let version = self.router.handle(&self.name)?.pick(None).ok()?;
        Some(version.model.policy().clone())
    }

    /// Every input of the model with symbolic dimensions 1 (what `bench` sends by default).
    pub fn unit_inputs(&self) -> Result<Tensors, InferError> {
        let version = self
            .router
            .get(&self.name)
            .and_then(|h| h.pick(None))
            .map_err(InferError::Serve)?;
        version
            .model
            .info
            .unit_inputs()
            .map_err(|e| InferError::Load(e.to_string()))
    }
}

/// Inputs gathered from the command line: tensors (from `.npy` files and JSON requests).
#[derive(Default)]
pub struct InferInputs {
    /// Named tensors.
    pub tensors: Tensors,
    /// Outputs requested by a JSON request, if any.
    pub outputs: Option<Vec<String>>,
    /// Request id from a JSON request.
    pub id: Option<Value>,
}

/// Parses `-i` arguments made of tensors; `single_input` names the model's input when it has
/// only one.
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
                "expected a KServe V2 request (.json) or NAME=FILE.npy (or an image, for a model directory with [input])"
                    .into(),
            ));
        }
    }
    Ok(inputs)
}

/// Loads the model, runs the inputs and returns the V2 response JSON.
pub fn infer(model_path: &Path, input_args: &[String], settings: &LoadSettings) -> Result<Value, InferError> {
    let served = Served::load(model_path, settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let response = runtime.block_on(run(&served, input_args))?;
    let (body, _) = codec::encode(&response.reply(), &Encoding::json(), Map::new());
    Ok(serde_json::from_slice(&body).expect("the encoder writes JSON"))
}

/// One JSON request or image goes through the codec as a payload, as over HTTP or MQTT;
/// `.npy` files (with or without a JSON request) go in as tensors.
async fn run(served: &Served, args: &[String]) -> Result<InferResponse, InferError> {
    if let [arg] = args {
        let bytes = std::fs::read(arg).unwrap_or_default();
        if !arg.contains('=') && (arg.ends_with(".json") || is_image(&bytes)) {
            let payload = Payload::parse(Bytes::from(bytes), None).map_err(|e| InferError::Input {
                file: arg.clone(),
                message: format!("not a KServe V2 request or an image: {e}"),
            })?;
            let request = PayloadRequest {
                model: served.name.clone(),
                version: None,
                payload: Ok(payload),
                arrived: std::time::Instant::now(),
                deadline: None,
            };
            return Ok(served.router.infer_payload(request).await?);
        }
    }
    let inputs = read_inputs(args, served.single_input().as_deref())?;
    let request = InferRequest {
        model: served.name.clone(),
        id: inputs.id,
        inputs: inputs.tensors,
        outputs: inputs.outputs,
        ..Default::default()
    };
    Ok(served.router.infer(request).await?)
}
