//! One MQTT request in, one reply out (SPEC §6). A request is a KServe V2 JSON body, or the
//! binary framing (JSON header + raw tensors, the header length in the MQTT 5 user property
//! `Inference-Header-Content-Length`), or an image. The reply goes to the MQTT 5 response topic
//! with the correlation data, else to the `reply_to` of the JSON (MQTT 3.1.1 clients), else
//! to `P/models/<m>/result`; it echoes the request `id`. Every failure is a reply
//! `{"id", "error"}` naming the problem — never silence — and is counted by reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Semaphore};

use super::outbox::Entry;
use super::stats::MqttStats;
use super::topics::Topics;
use crate::http::binary::{encode_json_reply, run_encoded, RequestError, HEADER_LENGTH};
use crate::pipeline::preprocess::is_image;
use crate::serving::image::{Image, ImageRequest};
use crate::serving::{InferResponse, Router, ServeError};

/// An incoming request, taken from its MQTT message.
#[derive(Debug)]
pub struct Request {
    /// Topic it arrived on.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// MQTT 5 response topic.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data.
    pub correlation_data: Option<Bytes>,
    /// `Inference-Header-Content-Length` user property, as sent.
    pub header_length: Option<String>,
    /// Seconds left of the MQTT 5 message expiry when it arrived.
    pub expiry_secs: Option<u32>,
    /// When it arrived.
    pub arrived: Instant,
}

impl Request {
    /// The request carried by an MQTT publish.
    pub fn from_publish(publish: &Publish) -> Request {
        let properties = publish.properties.as_ref();
        Request {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload.clone(),
            response_topic: properties.and_then(|p| p.response_topic.clone()),
            correlation_data: properties.and_then(|p| p.correlation_data.clone()),
            header_length: properties.and_then(|p| {
                p.user_properties
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(HEADER_LENGTH))
                    .map(|(_, v)| v.clone())
            }),
            expiry_secs: properties.and_then(|p| p.message_expiry_interval),
            arrived: Instant::now(),
        }
    }
}

/// The fields of a JSON request an MQTT reply needs before the request is decoded.
#[derive(Debug, Default, Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    reply_to: Option<String>,
}

/// Turns requests into replies through the router.
pub struct Handler {
    /// The serving core.
    pub router: Arc<Router>,
    /// Topic layout.
    pub topics: Topics,
    /// This daemon's node id (named in each response, so pool clients see who answered).
    pub node_id: String,
    /// Largest accepted payload.
    pub max_payload_bytes: usize,
    /// Counters.
    pub stats: Arc<MqttStats>,
    /// Requests running at once. The broker holds the rest (it sends at most the receive
    /// maximum unacknowledged), so MQTT requests wait here instead of overflowing a model's
    /// queue and failing as `overloaded`.
    pub running: Semaphore,
    /// Requests taken and not yet handed to the publisher; a drain waits for zero.
    in_flight: watch::Sender<usize>,
    /// Cleared when the daemon stops taking requests.
    accepting: AtomicBool,
}

impl Handler {
    /// A handler taking requests, with none in flight.
    pub fn new(
        router: Arc<Router>,
        topics: Topics,
        node_id: String,
        max_payload_bytes: usize,
        stats: Arc<MqttStats>,
    ) -> Handler {
        Handler {
            router,
            topics,
            node_id,
            max_payload_bytes,
            stats,
            running: Semaphore::new(RUNNING),
            in_flight: watch::Sender::new(0),
            accepting: AtomicBool::new(true),
        }
    }

    /// Takes a request unless the daemon is stopping; the request counts as in flight until
    /// the returned guard drops.
    pub fn take(self: &Arc<Self>) -> Option<Taken> {
        if !self.accepting.load(Ordering::Acquire) {
            return None;
        }
        self.in_flight.send_modify(|n| *n += 1);
        Some(Taken(self.clone()))
    }

    /// Stops taking requests (those arriving later stay unacknowledged, so the broker
    /// delivers them again to the next session) and waits at most `wait` for those in flight;
    /// returns how many did not finish.
    pub async fn drain(&self, wait: Duration) -> usize {
        self.accepting.store(false, Ordering::Release);
        let mut count = self.in_flight.subscribe();
        let _ = tokio::time::timeout(wait, count.wait_for(|n| *n == 0)).await;
        let left = *count.borrow();
        left
    }
}

/// A request in flight (see [`Handler::take`]).
pub struct Taken(Arc<Handler>);

impl Taken {
    /// The handler that took the request.
    pub fn handler(&self) -> &Handler {
        &self.0
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

/// Default for [`Handler::running`]: half a model instance's queue.
pub const RUNNING: usize = crate::engine::select::QUEUE_PER_INSTANCE / 2;

/// Why a request got an error reply: a reason label for metrics and the message for the sender.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

impl Handler {
    /// Runs a request and builds its reply.
    pub async fn reply(&self, request: Request) -> Entry {
        let target = self.topics.parse_request(&request.topic);
        let model = target.as_ref().map_or("", |t| t.model.as_str());
        let header_length = match request
            .header_length
            .as_deref()
            .map(str::trim)
            .map(str::parse::<usize>)
        {
            None => Ok(None),
            Some(Ok(length)) => Ok(Some(length)),
            Some(Err(_)) => Err(Failure::new(
                "bad_input",
                format!("{HEADER_LENGTH} is not a number: {:?}", request.header_length),
            )),
        };
        let envelope = envelope(&request.payload, header_length.as_ref().ok().copied().flatten());
        let destination = request
            .response_topic
            .clone()
            .or_else(|| envelope.reply_to.clone())
            .unwrap_or_else(|| self.topics.result(model));
        let outcome = match header_length {
            Ok(length) => self.run(&request, length, target).await,
            Err(failure) => Err(failure),
        };
        let (payload, content_type, user_properties) = match outcome {
            Ok((payload, json_length)) => {
                self.stats.request("ok");
                match json_length {
                    Some(length) => (
                        payload,
                        "application/octet-stream",
                        vec![(HEADER_LENGTH.to_string(), length.to_string())],
                    ),
                    None => (payload, "application/json", Vec::new()),
                }
            }
            Err(failure) => {
                self.stats.request(failure.reason);
                tracing::debug!(topic = %request.topic, error = %failure.message, "MQTT request failed");
                let mut body = json!({ "error": failure.message });
                if let Some(id) = envelope.id {
                    body["id"] = id;
                }
                (body.to_string().into_bytes(), "application/json", Vec::new())
            }
        };
        Entry {
            created_ms: super::now_ms(),
            topic: destination,
            payload,
            retain: false,
            content_type: Some(content_type.into()),
            correlation_data: request.correlation_data.map(|c| c.to_vec()),
            user_properties,
        }
    }

    async fn run(
        &self,
        request: &Request,
        header_length: Option<usize>,
        target: Option<super::topics::RequestTarget>,
    ) -> Result<(Vec<u8>, Option<usize>), Failure> {
        let target = target.ok_or_else(|| {
            Failure::new("bad_topic", format!("'{}' is not a request topic", request.topic))
        })?;
        let version = target
            .version
            .map_err(|v| Failure::new("bad_input", format!("version '{v}' is not a number")))?;
        let size = request.payload.len();
        if size > self.max_payload_bytes {
            return Err(Failure::new(
                "too_large",
                format!(
                    "payload of {size} bytes is over the limit of {} bytes (mqtt.max_payload_bytes)",
                    self.max_payload_bytes
                ),
            ));
        }
        let _running = self.running.acquire().await.expect("semaphore never closed");
        let deadline = request
            .expiry_secs
            .map(|secs| request.arrived + Duration::from_secs(secs.into()));
        let serve_failure = |e: ServeError| Failure::new(e.reason(), e.to_string());
        if header_length.is_none() && is_image(&request.payload) {
            let image = self
                .router
                .infer_image(ImageRequest {
                    model: target.model,
                    version,
                    id: None,
                    image: Image::Encoded(request.payload.clone()),
                    deadline,
                })
                .await
                .map_err(serve_failure)?;
            return Ok((
                encode_json_reply(&image.response, self.extra(&image.response)),
                None,
            ));
        }
        let (decoded, response) = run_encoded(
            &self.router,
            &target.model,
            version,
            &request.payload,
            header_length,
            request.arrived,
            deadline,
        )
        .await
        .map_err(|e| match e {
            RequestError::BadInput(message) => Failure::new("bad_input", message),
            RequestError::Serve(e) => serve_failure(e),
        })?;
        Ok(decoded.encode_reply(&response, self.extra(&response)))
    }

    /// The fields SPEC §6 adds to MQTT responses, and the node that answered.
    fn extra(&self, response: &InferResponse) -> Map<String, Value> {
        let mut extra = Map::new();
        extra.insert("engine".into(), response.engine.to_string().into());
        extra.insert(
            "inference_us".into(),
            (response.compute_time.as_micros() as u64).into(),
        );
        extra.insert("node".into(), self.node_id.clone().into());
        extra
    }
}

/// The id and `reply_to` of a JSON request (or of a binary request's JSON header); empty when
/// the payload is not JSON.
fn envelope(payload: &[u8], header_length: Option<usize>) -> Envelope {
    let json = match header_length {
        Some(length) => payload.get(..length).unwrap_or_default(),
        None => payload,
    };
    serde_json::from_slice(json).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_come_from_json_bodies_and_binary_headers() {
        let json = br#"{"id": "a1", "reply_to": "r/1", "inputs": []}"#;
        let e = envelope(json, None);
        assert_eq!(e.id, Some(Value::from("a1")));
        assert_eq!(e.reply_to.as_deref(), Some("r/1"));
        let mut framed = br#"{"id": 7}"#.to_vec();
        framed.extend_from_slice(&[0, 1, 2, 3]);
        assert_eq!(envelope(&framed, Some(9)).id, Some(Value::from(7)));
        assert!(envelope(b"\xff\xd8\xff", None).id.is_none());
    }
}
