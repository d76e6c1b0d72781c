//! The behaviour behind each CLI subcommand; `main.rs` only parses arguments and dispatches
//! here, so tests reach every command through the library.

pub mod bench;
pub mod bench_grpc;
pub mod bench_http;
pub mod bench_mqtt;
pub mod check;
pub mod infer;
pub mod inspect;
pub mod run;
