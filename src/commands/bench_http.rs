//! `onnxd bench --http`'s client: one kept-alive HTTP/1.1 connection per client thread (Nagle
//! off), the request body (Triton's binary tensor extension) built once and shared, and only
//! the reply's JSON header parsed — so the figures measure the server, not the load generator.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::tensor::Tensors;

/// The binary-framed request body for `inputs`, and its JSON header's length.
pub fn binary_request(inputs: &Tensors) -> (Bytes, usize) {
    let wires: Vec<Vec<u8>> = inputs.iter().map(|(_, t)| t.to_wire()).collect();
    let header = serde_json::json!({
        "inputs": inputs.iter().zip(&wires).map(|((name, t), wire)| serde_json::json!({
            "name": name,
            "shape": t.shape(),
            "datatype": t.dtype().kserve_name(),
            "parameters": { "binary_data_size": wire.len() },
        })).collect::<Vec<_>>(),
        "parameters": { "binary_data_output": true },
    });
    let mut body = serde_json::to_vec(&header).expect("header serialises");
    let length = body.len();
    for wire in wires {
        body.extend_from_slice(&wire);
    }
    (Bytes::from(body), length)
}

/// What the client reads of a reply's JSON header.
#[derive(Deserialize)]
struct ReplyHeader {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    parameters: Option<ReplyParameters>,
}

#[derive(Deserialize)]
struct ReplyParameters {
    #[serde(default)]
    inference_us: Option<u64>,
}

/// One client's connection to `address`, posting to `model`'s infer endpoint.
pub struct HttpClient {
    runtime: tokio::runtime::Runtime,
    address: String,
    path: String,
    connection: Option<SendRequest<Full<Bytes>>>,
    body: Option<(Bytes, usize)>,
}

impl HttpClient {
    /// A client that connects on its first request.
    pub fn new(address: &str, model: &str) -> HttpClient {
        HttpClient {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime"),
            address: address.to_string(),
            path: format!("/v2/models/{model}/infer"),
            connection: None,
            body: None,
        }
    }

    /// Sends `inputs` (the same on every call of a client, so the body is built once);
    /// returns the server's reported compute time.
    pub fn call(&mut self, inputs: &Tensors) -> Result<Duration, String> {
        let (body, header_length) = self.body.get_or_insert_with(|| binary_request(inputs)).clone();
        let result = self.runtime.block_on(send(
            &mut self.connection,
            &self.address,
            &self.path,
            body,
            header_length,
        ));
        if result.is_err() {
            self.connection = None; // reconnect on the next call
        }
        result
    }
}

async fn connect(address: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    address: &str,
    path: &str,
    body: Bytes,
    header_length: usize,
) -> Result<Duration, String> {
    if connection.is_none() {
        *connection = Some(connect(address).await?);
    }
    let sender = connection.as_mut().expect("connected above");
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, address)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header("inference-header-content-length", header_length)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let ok = response.status().is_success();
    let json_length: Option<usize> = response
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = &bytes[..json_length.unwrap_or(bytes.len()).min(bytes.len())];
    let header: ReplyHeader = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    match (ok, header.error) {
        (true, _) => Ok(Duration::from_micros(
            header.parameters.and_then(|p| p.inference_us).unwrap_or(0),
        )),
        (false, error) => Err(error.unwrap_or_else(|| "HTTP error".into())),
    }
}
