//! Requests that carry an image instead of tensors (SPEC §4 `[input]`): an encoded image from
//! MQTT or HTTP, or a raw RGB frame from a camera. The version that runs it is chosen first;
//! its [`ImagePipeline`] turns the image into the model's input tensor — on a blocking thread,
//! since decoding and resizing take milliseconds — and the request then runs like any other,
//! its detections mapped back to the image's pixels.
//! Every source goes through this one path, so an image is processed identically wherever it
//! came from.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{InferRequest, InferResponse, LoadedVersion, Router, ServeError};
use crate::engine::model::{TensorSpec, ValueKind};
use crate::pipeline::preprocess::{Preprocessor, Transform};
use crate::repository::sidecar::ImageInput;
use crate::tensor::Dim;

/// The image pipeline of a model version: its `[input]` pre-processing and the input it feeds.
#[derive(Debug)]
pub struct ImagePipeline {
    /// The model input the image becomes.
    pub input: String,
    /// Decoding, resizing and normalising.
    pub pre: Preprocessor,
}

impl ImagePipeline {
    /// The pipeline for a model whose only input must take what `[input]` produces.
    pub fn new(inputs: &[TensorSpec], settings: &ImageInput) -> Result<ImagePipeline, String> {
        let pre = Preprocessor::new(settings).map_err(|e| e.to_string())?;
        let [input] = inputs else {
            return Err(format!(
                "[input] pre-processing needs a model with one input; this one has {}",
                inputs.len()
            ));
        };
        let produced = pre.shape();
        let fits = input.kind == ValueKind::Tensor(pre.dtype())
            && (!input.rank_known
                || (input.dims.len() == produced.len()
                    && input.dims.iter().zip(produced).all(|(dim, size)| match dim {
                        Dim::Fixed(n) => *n == size as u64,
                        Dim::Symbolic(_) => true,
                    })));
        if !fits {
            let dims: Vec<String> = input.dims.iter().map(ToString::to_string).collect();
            return Err(format!(
                "[input] produces {} {produced:?} but input '{}' is {} [{}]",
                pre.dtype(),
                input.name,
                input.kind,
                dims.join(", ")
            ));
        }
        Ok(ImagePipeline {
            input: input.name.clone(),
            pre,
        })
    }
}

/// The image a request carries.
#[derive(Debug)]
pub enum Image {
    /// JPEG, PNG, BMP or WebP bytes.
    Encoded(Bytes),
    /// A raw RGB8 frame.
    Rgb {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Row-major RGB bytes.
        pixels: Vec<u8>,
    },
}

/// A request with an image.
#[derive(Debug)]
pub struct ImageRequest {
    /// Model name.
    pub model: String,
    /// Version, or the highest ready one.
    pub version: Option<u64>,
    /// Caller's id, echoed.
    pub id: Option<String>,
    /// The image.
    pub image: Image,
    /// Not run after this instant.
    pub deadline: Option<Instant>,
}

/// The answer to an image request.
#[derive(Debug)]
pub struct ImageResponse {
    /// The model's outputs.
    pub response: InferResponse,
    /// How model-input pixels map back to the image.
    pub transform: Transform,
}

impl Router {
    /// Pre-processes an image as the chosen version's `[input]` says, then runs it.
    pub async fn infer_image(&self, request: ImageRequest) -> Result<ImageResponse, ServeError> {
        let handle = self.get(&request.model)?;
        let version: Arc<LoadedVersion> = self.pick(&handle, request.version, request.deadline).await?;
        let Some(pipeline) = version.image.as_ref() else {
            handle.stats.failure(Some(version.version), "unsupported");
            return Err(ServeError::NoImageInput(request.model));
        };
        let input = pipeline.input.clone();
        let prepare = version.clone();
        let image = request.image;
        let prepared = tokio::task::spawn_blocking(move || {
            let pre = &prepare.image.as_ref().expect("checked above").pre;
            match &image {
                Image::Encoded(bytes) => pre.from_encoded(bytes),
                Image::Rgb {
                    width,
                    height,
                    pixels,
                } => pre.from_rgb(*width, *height, pixels),
            }
        })
        .await
        .map_err(|e| ServeError::BadImage(format!("pre-processing stopped: {e}")))?
        .map_err(|e| {
            handle.stats.failure(Some(version.version), "bad_input");
            ServeError::BadImage(e.to_string())
        })?;
        let response = self
            .infer_from(
                InferRequest {
                    model: request.model,
                    version: Some(version.version),
                    id: request.id,
                    inputs: vec![(input, prepared.tensor)],
                    outputs: None,
                    deadline: request.deadline,
                },
                Some(&prepared.transform),
            )
            .await?;
        Ok(ImageResponse {
            response,
            transform: prepared.transform,
        })
    }
}
