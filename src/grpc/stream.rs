//! ModelStreamInfer: one task per stream reads requests and runs up to [`IN_FLIGHT`] of them at
//! once (each on its own task, so one stream uses every core); replies go back as they
//! complete, each carrying its request's id. A failed request answers only itself — a
//! `ModelStreamInferResponse` with `error_message` naming the request — and the stream stays
//! open. The stream ends when the client half-closes (after the last reply, status OK), when
//! an inbound message is broken or too large (that status), or on the daemon's shutdown: no
//! more requests are read, the ones taken are answered, then `UNAVAILABLE`.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::proto::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use super::service::infer;
use super::GrpcState;

/// Requests of one stream running at once; more wait in the stream (HTTP/2 flow control
/// holds them at the client). Half a model instance's queue, as MQTT's requests in flight, so
/// one busy stream does not overload a model by itself.
pub const IN_FLIGHT: usize = crate::serving::QUEUE_PER_INSTANCE / 2;

/// The replies of a stream, as tonic sends them.
pub type Replies = ReceiverStream<Result<ModelStreamInferResponse, Status>>;

/// Starts serving a stream; returns its replies.
pub fn start(state: Arc<GrpcState>, inbound: Streaming<ModelInferRequest>) -> Replies {
    let (replies, receiver) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(serve(state, inbound, replies));
    ReceiverStream::new(receiver)
}

async fn serve(
    state: Arc<GrpcState>,
    mut inbound: Streaming<ModelInferRequest>,
    replies: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
) {
    let mut running = JoinSet::new();
    let mut reading = true;
    let mut taken = 0u64;
    let mut end = None;
    let stopping = state.shutdown.clone().cancelled_owned();
    tokio::pin!(stopping);
    while reading || !running.is_empty() {
        tokio::select! {
            biased;
            Some(done) = running.join_next(), if !running.is_empty() => {
                let reply = done.unwrap_or_else(|e| failed(String::new(), &format!("the request stopped: {e}")));
                if replies.send(Ok(reply)).await.is_err() {
                    return; // the client went away; dropping `running` aborts the rest
                }
            }
            () = &mut stopping, if reading => {
                reading = false;
                end = Some(Status::unavailable(
                    "the server is shutting down: the requests taken were answered; later ones were not read",
                ));
            }
            message = inbound.message(), if reading && running.len() < IN_FLIGHT => match message {
                Ok(Some(request)) => {
                    taken += 1;
                    running.spawn(one(state.clone(), request, taken));
                }
                Ok(None) => reading = false,
                Err(status) => {
                    reading = false;
                    let status = state.inbound_error(status);
                    state.metrics.count("ModelStreamInfer", status.code());
                    end = Some(status);
                }
            },
        }
    }
    if let Some(status) = end {
        let _ = replies.send(Err(status)).await;
    }
}

/// Runs the `n`th request of a stream; an error becomes that request's error reply.
async fn one(state: Arc<GrpcState>, request: ModelInferRequest, n: u64) -> ModelStreamInferResponse {
    let id = request.id.clone();
    let (model_name, model_version) = (request.model_name.clone(), request.model_version.clone());
    let result = infer(&state, request, None).await;
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    state.metrics.count("ModelStreamInfer", code);
    match result {
        Ok(response) => ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(response),
        },
        Err(status) => {
            let which = match id.as_str() {
                "" => format!("request #{n} of the stream"),
                id => format!("request '{id}'"),
            };
            let mut reply = failed(id, &format!("{which}: {}", status.message()));
            if let Some(response) = reply.infer_response.as_mut() {
                response.model_name = model_name;
                response.model_version = model_version;
            }
            reply
        }
    }
}

/// An error reply: the message, and the request's id in `infer_response`.
fn failed(id: String, message: &str) -> ModelStreamInferResponse {
    ModelStreamInferResponse {
        error_message: message.to_string(),
        infer_response: Some(ModelInferResponse {
            id,
            ..Default::default()
        }),
    }
}
