//! Image pipelines around a model: decoding encoded images, from any source ([`decode`]: the
//! one decoder of cameras, HTTP, MQTT and the CLI), turning frames into the model's input
//! tensor ([`preprocess`]), as the `[input]` section of a model's sidecar describes it, its
//! output tensors into classes or boxes in the image's pixels ([`postprocess`]), as the
//! `[output]` section does, and those boxes drawn on the frame as a JPEG snapshot
//! ([`annotate`]).
//! Everything here is built once per model version and then runs per frame without parsing
//! settings again.

pub mod annotate;
pub mod decode;
pub mod postprocess;
pub mod preprocess;
