//! Generates the gRPC service and messages of `proto/` (the KServe V2 / Triton inference
//! protocol) at build time. `protox`, a protobuf compiler in Rust, parses the files, so no
//! `protoc` is needed or downloaded; `tonic-prost-build` turns the descriptors into prost
//! messages, the tonic server and the client (`onnxd bench --grpc`, tests) in
//! `$OUT_DIR/inference.rs`, which `src/grpc/proto.rs` includes.

use std::error::Error;

/// The protocol's files, relative to the include directory `proto/`.
const PROTOS: [&str; 2] = ["grpc_service.proto", "model_config.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])
        .map_err(|e| format!("cannot compile the protocol definitions in proto/: {e:?}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Tensor buffers as `bytes::Bytes`: a request's raw inputs are slices of the received
        // message (no copy), and a reply's raw outputs move the engine's buffers in.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;
    Ok(())
}
