//! Image pipelines around a model: turning camera frames and encoded images into the model's
//! input tensor ([`preprocess`]), as the `[input]` section of a model's sidecar describes it.
//! Everything here is built once per model version and then runs per frame without parsing
//! settings again.

pub mod preprocess;
