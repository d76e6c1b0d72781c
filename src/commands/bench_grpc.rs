//! `onnxd bench MODEL --grpc HOST:PORT [--streaming]`: the load of `onnxd bench` sent over
//! gRPC (KServe V2 / Triton `GRPCInferenceService`) to a running onnxd or Triton, with the
//! generated tonic client. Each client thread has its own connection and sends `ModelInfer`
//! with raw input contents, one request at a time; with `--streaming` it opens one
//! `ModelStreamInfer` stream instead and sends its requests down it, one in flight (as
//! `perf_analyzer -i grpc --streaming` does per concurrent context). Plans, reports and the
//! client threads are `bench`'s.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::bench::Call;
use crate::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::proto::infer_parameter::ParameterChoice;
use crate::grpc::proto::model_infer_request::InferInputTensor;
use crate::grpc::proto::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use crate::tensor::Tensors;

/// The largest message either way (as tritonclient: 2^31 - 1 bytes).
const MAX_MESSAGE: usize = i32::MAX as usize;

type Client = GrpcInferenceServiceClient<Channel>;

/// A `ModelInferRequest` of `inputs` for `model`, with raw input contents.
pub fn request(model: &str, inputs: &Tensors) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_string(),
        inputs: inputs
            .iter()
            .map(|(name, t)| InferInputTensor {
                name: name.clone(),
                datatype: t.dtype().kserve_name().to_string(),
                shape: t.shape().iter().map(|&d| d as i64).collect(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|(_, t)| t.to_wire()).collect(),
        ..Default::default()
    }
}

/// The server's compute time of a response (its `inference_us` parameter; zero when the
/// server does not say, as Triton).
fn compute_time(response: &ModelInferResponse) -> Duration {
    match response
        .parameters
        .get("inference_us")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        Some(ParameterChoice::Int64Param(us)) => Duration::from_micros((*us).max(0) as u64),
        Some(ParameterChoice::Uint64Param(us)) => Duration::from_micros(*us),
        _ => Duration::ZERO,
    }
}

async fn connect(address: &str) -> Result<Client, String> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| format!("gRPC address '{address}': {e}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to gRPC {address}: {e}"))?;
    Ok(GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// A client thread's way of sending a request over gRPC: unary `ModelInfer`, or one request
/// at a time down its own `ModelStreamInfer` stream. A client that cannot connect fails every
/// request with the reason.
pub fn call(address: &str, model: &str, streaming: bool) -> Call {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let client = runtime.block_on(connect(address));
    let model = model.to_string();
    match (client, streaming) {
        (Err(e), _) => Box::new(move |_: &Tensors| Err(e.clone())),
        (Ok(client), false) => unary(runtime, client, model),
        (Ok(client), true) => match runtime.block_on(Stream::open(client)) {
            Ok(stream) => stream.into_call(runtime, model),
            Err(e) => Box::new(move |_: &Tensors| Err(e.clone())),
        },
    }
}

fn unary(runtime: tokio::runtime::Runtime, mut client: Client, model: String) -> Call {
    Box::new(move |inputs: &Tensors| {
        let response = runtime
            .block_on(client.model_infer(request(&model, inputs)))
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        Ok(compute_time(response.get_ref()))
    })
}

/// One open `ModelStreamInfer` stream: requests go in through `requests`, replies come back
/// on `replies`.
struct Stream {
    requests: mpsc::Sender<ModelInferRequest>,
    replies: tonic::Streaming<ModelStreamInferResponse>,
}

impl Stream {
    async fn open(mut client: Client) -> Result<Stream, String> {
        let (requests, outbound) = mpsc::channel(1);
        let replies = client
            .model_stream_infer(ReceiverStream::new(outbound))
            .await
            .map_err(|status| format!("cannot open a stream: {:?}: {}", status.code(), status.message()))?
            .into_inner();
        Ok(Stream { requests, replies })
    }

    /// Sends one request and waits for its reply.
    async fn round_trip(&mut self, request: ModelInferRequest) -> Result<Duration, String> {
        let id = request.id.clone();
        self.requests
            .send(request)
            .await
            .map_err(|_| "the stream has closed".to_string())?;
        let reply = self
            .replies
            .message()
            .await
            .map_err(|status| format!("stream ended: {:?}: {}", status.code(), status.message()))?
            .ok_or("the server ended the stream")?;
        if !reply.error_message.is_empty() {
            return Err(reply.error_message);
        }
        let response = reply.infer_response.ok_or("a stream reply without a response")?;
        if response.id != id {
            return Err(format!(
                "reply for request '{}' while waiting for '{id}'",
                response.id
            ));
        }
        Ok(compute_time(&response))
    }

    fn into_call(mut self, runtime: tokio::runtime::Runtime, model: String) -> Call {
        let mut sent = 0u64;
        Box::new(move |inputs: &Tensors| {
            sent += 1;
            let mut message = request(&model, inputs);
            message.id = sent.to_string();
            runtime.block_on(self.round_trip(message))
        })
    }
}
