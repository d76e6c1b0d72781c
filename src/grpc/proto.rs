//! The wire contract of the KServe V2 / Triton gRPC API: the prost messages, the tonic
//! server trait (`grpc_inference_service_server::GrpcInferenceService`) and the client
//! (`grpc_inference_service_client`, for `onnxd bench --grpc` and tests) that `build.rs`
//! generates from the protobuf package `inference` in `proto/` (`grpc_service.proto`,
//! `model_config.proto`). Names and field numbers are the protocol's, so unmodified
//! tritonclient and perf_analyzer talk to it; `proto/README.md` says where each message comes
//! from. Nothing here is written by hand.

tonic::include_proto!("inference");
