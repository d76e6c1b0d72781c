//! Model delivery end to end (issue 18) with real parts: real sockets, the real ONNX Runtime,
//! real model files, the daemon in-process for HTTP uploads and shadow rollouts, and the
//! `onnxd` binary with a real mosquitto for MQTT deploys (downloads from a local HTTP server
//! that can drop or stall a connection), fleet deploys and `kill -9`.

#[path = "../common/mod.rs"]
mod common;
mod deploy;
mod fileserver;
#[path = "../mqtt/harness.rs"]
#[allow(dead_code)]
mod harness;
mod models;
mod server;
mod shadow;
mod upload;
