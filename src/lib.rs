//! onnxd: a daemon that serves ONNX models on edge machines.
//!
//! Data flows from sources (MQTT, HTTP, cameras) as [`tensor::Tensor`]s into the serving core,
//! which routes each request to a model's inference threads ([`engine::pool`]); the engines
//! ([`engine::ort`], [`engine::tract`]) never see protocols. Module map:
//!
//! - [`tensor`]: KServe datatypes, tensors and their encodings (V2 JSON, raw bytes, `.npy`,
//!   ONNX `TensorProto`).
//! - [`engine`]: model files and signatures, ONNX Runtime and tract, engine selection,
//!   inference threads.
//! - [`cpus`]: CPU lists and pinning (`[engine] cpus`: the engine's cores kept for it).
//! - [`conformance`]: the ONNX backend node-test runner behind `examples/conformance.rs`.
//! - [`http`]: the KServe V2 / Triton-compatible HTTP API.
//! - [`repository`]: the model repository on disk, loading with checks, watching, hot reload.
//! - [`delivery`]: model delivery — HTTP uploads, MQTT deploys with resumable downloads,
//!   shadow rollouts with promotion or rollback, rollback on demand.
//! - [`mqtt`]: MQTT requests and responses with at-least-once delivery, status, the durable
//!   outbox.
//! - [`service`]: systemd notifications (ready, status, reloading, stopping, watchdog).
//! - [`heartbeat`]: the signs of progress of long-running parts that the watchdog reads.
//! - [`serving`]: requests and responses, the router, model handles (atomic swap), stats.
//! - [`pipeline`]: image pre-processing (decode, resize, normalise) into input tensors, and
//!   post-processing of outputs (classify top-k, YOLO/SSD boxes with NMS).
//! - [`camera`]: camera frame sources (HTTP MJPEG/snapshots, ffmpeg, GStreamer, files).
//! - [`config`]: the typed configuration file.
//! - [`telemetry`]: logging set-up.
//! - [`homeassistant`]: Home Assistant MQTT discovery configs (device-based).
//! - [`web`]: the status page's assets and handlers.
//! - [`node`]: what the node tells about itself (HA discovery and state topics, camera
//!   snapshots and views, rates, the status page's data), wired by the daemon.
//! - [`commands`]: the behaviour behind each CLI subcommand (`main.rs` only parses and
//!   dispatches).

pub mod backoff;
pub mod camera;
pub mod choice;
pub mod clock;
pub mod codec;
pub mod commands;
pub mod config;
pub mod conformance;
pub mod cpus;
pub mod daemon;
pub mod delivery;
pub mod engine;
pub mod grpc;
pub mod heartbeat;
pub mod homeassistant;
pub mod http;
pub mod model;
pub mod mqtt;
pub mod node;
pub mod pipeline;
pub mod repository;
pub mod service;
pub mod serving;
pub mod telemetry;
pub mod tensor;
pub mod web;
