//! Requests that carry an image instead of tensors (SPEC §4 `[input]`): an encoded image from
//! MQTT, HTTP or a file, or a raw RGB frame from a camera. [`ImagePipeline`] is a version's
//! `[input]` pre-processing checked against its input; the [`super::Router`] runs it on a
//! blocking thread (decoding and resizing take milliseconds) for the version it picked.

use bytes::Bytes;
use serde_json::Value;

use crate::model::{TensorSpec, ValueKind};
use crate::pipeline::preprocess::{ImageInput, Prepared, PreprocessError, Preprocessor};
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

    /// The model input made from `image`.
    pub fn prepare(&self, image: &Image) -> Result<Prepared, PreprocessError> {
        match image {
            Image::Encoded(bytes) => self.pre.from_encoded(bytes),
            Image::Rgb {
                width,
                height,
                pixels,
            } => self.pre.from_rgb(*width, *height, pixels),
        }
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
    pub id: Option<Value>,
    /// The image.
    pub image: Image,
    /// Not run after this instant.
    pub deadline: Option<std::time::Instant>,
}
