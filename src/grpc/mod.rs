//! The KServe V2 / Triton gRPC API (`inference.GRPCInferenceService`): the wire contract,
//! generated at build time from `proto/` ([`proto`]).

pub mod proto;
