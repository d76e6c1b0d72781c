//! `onnxd bench --grpc`'s client: the load of `onnxd bench` sent over gRPC (KServe V2 / Triton
//! `GRPCInferenceService`) to a running onnxd or Triton. One HTTP/2 connection per client
//! thread (Nagle off), the `ModelInferRequest` (raw input contents) encoded and framed once and
//! shared, and only what the report needs read back — so the figures measure the server, not
//! the load generator. Unary: one `ModelInfer` call at a time. Streaming: one
//! `ModelStreamInfer` stream per client, one request in flight on it (as
//! `perf_analyzer -i grpc --streaming` does per concurrent context).
//!
//! The calls go out on `h2` directly rather than through tonic's generated client: hyper's
//! HTTP/2 client sends a request's HEADERS, its DATA and the end of the stream in three writes
//! (the body is piped by a task of its own), so every request costs the server three wake-ups
//! and the client three system calls (`strace -c`: 3 `writev` per request against HTTP/1's 1,
//! and ≈ 30 µs more per round trip on the 2-vCPU box) — the bench would measure tonic's client,
//! not the server. Here HEADERS and the one DATA frame are queued together and leave in one
//! write, as gRPC C++ (perf_analyzer, tritonclient) sends them. The gRPC framing is the
//! protocol's 5-byte prefix (no compression) around the prost-encoded message.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use prost::Message;

use crate::grpc::proto::infer_parameter::ParameterChoice;
use crate::grpc::proto::model_infer_request::InferInputTensor;
use crate::grpc::proto::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use crate::tensor::Tensors;

/// The HTTP/2 flow-control windows the client offers (stream, connection): large enough that
/// a reply of the mid-size models never waits for a window update.
const WINDOWS: (u32, u32) = (2 << 20, 4 << 20);

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
        raw_input_contents: inputs.iter().map(|(_, t)| t.to_wire().into()).collect(),
        ..Default::default()
    }
}

/// `message` as gRPC sends it: an uncompressed flag, its length (big-endian u32), its bytes.
fn frame(message: &impl Message) -> Bytes {
    let length = message.encoded_len();
    let mut framed = BytesMut::with_capacity(5 + length);
    framed.put_u8(0);
    framed.put_u32(length as u32);
    message.encode(&mut framed).expect("capacity reserved");
    framed.freeze()
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

/// One client thread's gRPC connection to `address`, sending to `model`.
pub struct GrpcClient {
    runtime: tokio::runtime::Runtime,
    address: String,
    model: String,
    streaming: bool,
    connection: Option<SendRequest<Bytes>>,
    stream: Option<OpenStream>,
    frame: Option<Bytes>,
}

impl GrpcClient {
    /// A client that connects (and opens its stream, with `streaming`) on its first request.
    pub fn new(address: &str, model: &str, streaming: bool) -> GrpcClient {
        GrpcClient {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime"),
            address: address.to_string(),
            model: model.to_string(),
            streaming,
            connection: None,
            stream: None,
            frame: None,
        }
    }

    /// Sends `inputs` (the same on every call of a client, so the request is encoded once);
    /// returns the server's reported compute time. After a failure the next call reconnects.
    pub fn call(&mut self, inputs: &Tensors) -> Result<Duration, String> {
        let model = &self.model;
        let frame = self
            .frame
            .get_or_insert_with(|| frame(&request(model, inputs)))
            .clone();
        let result = self.runtime.block_on(async {
            if self.connection.is_none() {
                self.connection = Some(connect(&self.address).await?);
            }
            let connection = self.connection.as_mut().expect("connected above");
            if !self.streaming {
                return unary(connection, &self.address, frame).await;
            }
            if self.stream.is_none() {
                self.stream = Some(OpenStream::open(connection, &self.address).await?);
            }
            self.stream
                .as_mut()
                .expect("opened above")
                .round_trip(frame)
                .await
        });
        if result.is_err() {
            (self.connection, self.stream) = (None, None);
        }
        result
    }
}

async fn connect(address: &str) -> Result<SendRequest<Bytes>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot connect to gRPC {address}: {e}");
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| fail(&e))?;
    tcp.set_nodelay(true).map_err(|e| fail(&e))?;
    let (connection, driver) = h2::client::Builder::new()
        .initial_window_size(WINDOWS.0)
        .initial_connection_window_size(WINDOWS.1)
        .handshake(tcp)
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(driver);
    Ok(connection)
}

/// Starts a call of `rpc` on `connection`: its HEADERS are queued, to leave with the first
/// DATA frame.
async fn start(
    connection: &mut SendRequest<Bytes>,
    address: &str,
    rpc: &str,
) -> Result<(ResponseFuture, SendStream<Bytes>), String> {
    let request = http::Request::post(format!("http://{address}/inference.GRPCInferenceService/{rpc}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| format!("gRPC address '{address}': {e}"))?;
    *connection = connection.clone().ready().await.map_err(|e| e.to_string())?;
    connection.send_request(request, false).map_err(|e| e.to_string())
}

/// One unary `ModelInfer` call.
async fn unary(connection: &mut SendRequest<Bytes>, address: &str, frame: Bytes) -> Result<Duration, String> {
    let (response, mut send) = start(connection, address, "ModelInfer").await?;
    send.send_data(frame, true).map_err(|e| e.to_string())?;
    let (head, mut body) = response.await.map_err(|e| e.to_string())?.into_parts();
    let mut buffer = BytesMut::new();
    let message = next_message(&mut body, &mut buffer).await?;
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    if let Some(failure) = failure(trailers.as_ref().unwrap_or(&head.headers)) {
        return Err(failure);
    }
    let message = message.ok_or("an OK reply without a message")?;
    let response =
        ModelInferResponse::decode(message).map_err(|e| format!("cannot decode the response: {e}"))?;
    Ok(compute_time(&response))
}

/// The next gRPC message of `body` (`None` when the body ends first), `buffer` holding what
/// arrived beyond it.
async fn next_message(body: &mut RecvStream, buffer: &mut BytesMut) -> Result<Option<Bytes>, String> {
    loop {
        if buffer.len() >= 5 {
            let length = u32::from_be_bytes(buffer[1..5].try_into().expect("4 bytes")) as usize;
            if buffer.len() >= 5 + length {
                buffer.advance(5);
                return Ok(Some(buffer.split_to(length).freeze()));
            }
        }
        match body.data().await {
            Some(chunk) => {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
                buffer.extend_from_slice(&chunk);
            }
            None => return Ok(None),
        }
    }
}

/// The error of a `grpc-status` other than 0 in `headers`.
fn failure(headers: &http::HeaderMap) -> Option<String> {
    let status = tonic::Status::from_header_map(headers)?;
    (status.code() != tonic::Code::Ok).then(|| format!("{:?}: {}", status.code(), status.message()))
}

/// One open `ModelStreamInfer` stream: requests go down `send`, replies come back on the
/// response body (its headers are awaited with the first reply, as servers may send them
/// only then).
struct OpenStream {
    send: SendStream<Bytes>,
    response: Option<ResponseFuture>,
    body: Option<RecvStream>,
    buffer: BytesMut,
}

impl OpenStream {
    async fn open(connection: &mut SendRequest<Bytes>, address: &str) -> Result<OpenStream, String> {
        let (response, send) = start(connection, address, "ModelStreamInfer").await?;
        Ok(OpenStream {
            send,
            response: Some(response),
            body: None,
            buffer: BytesMut::new(),
        })
    }

    /// Sends one request and waits for its reply.
    async fn round_trip(&mut self, frame: Bytes) -> Result<Duration, String> {
        self.send.send_data(frame, false).map_err(|e| e.to_string())?;
        if let Some(response) = self.response.take() {
            let response = response.await.map_err(|e| e.to_string())?;
            if let Some(failure) = failure(response.headers()) {
                return Err(failure); // refused at once (a trailers-only reply)
            }
            self.body = Some(response.into_body());
        }
        let body = self.body.as_mut().expect("the response arrived above");
        let Some(message) = next_message(body, &mut self.buffer).await? else {
            let trailers = body.trailers().await.map_err(|e| e.to_string())?;
            let failure = trailers.as_ref().and_then(failure);
            return Err(failure.unwrap_or_else(|| "the server ended the stream".into()));
        };
        let reply =
            ModelStreamInferResponse::decode(message).map_err(|e| format!("cannot decode the reply: {e}"))?;
        if !reply.error_message.is_empty() {
            return Err(reply.error_message);
        }
        let response = reply.infer_response.ok_or("a stream reply without a response")?;
        Ok(compute_time(&response))
    }
}
