//! One MQTT request in, one reply out (SPEC §6). A request is a KServe V2 JSON body, or the
//! binary framing (JSON header + raw tensors, the header length in the MQTT 5 user property
//! `Inference-Header-Content-Length`), or an image. The reply goes to the MQTT 5 response topic
//! with the correlation data, else to the `reply_to` of the JSON (MQTT 3.1.1 clients), else
//! to `P/models/<m>/result`; it echoes the request `id`. Every failure is a reply
//! `{"id", "error"}` naming the problem — never silence — and is counted by reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::{Map, Value};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::outbox::Entry;
use super::stats::MqttStats;
use super::topics::Topics;
use crate::codec::{self, Payload, HEADER_LENGTH};
use crate::serving::{PayloadRequest, Router};

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
    /// The daemon's shutdown signal: no request is taken once it is cancelled.
    shutdown: CancellationToken,
}

impl Handler {
    /// A handler taking requests, with none in flight.
    pub fn new(
        router: Arc<Router>,
        topics: Topics,
        node_id: String,
        max_payload_bytes: usize,
        stats: Arc<MqttStats>,
        shutdown: CancellationToken,
    ) -> Handler {
        Handler {
            router,
            topics,
            node_id,
            max_payload_bytes,
            stats,
            running: Semaphore::new(RUNNING),
            in_flight: watch::Sender::new(0),
            shutdown,
        }
    }

    /// Takes a request unless the daemon is stopping; the request counts as in flight until
    /// the returned guard drops.
    pub fn take(self: &Arc<Self>) -> Option<Taken> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        self.in_flight.send_modify(|n| *n += 1);
        Some(Taken(self.clone()))
    }

    /// Waits at most `wait` for the requests in flight (once the shutdown signal is
    /// cancelled, those arriving stay unacknowledged, so the broker delivers them again to the
    /// next session); returns how many did not finish.
    pub async fn drain(&self, wait: Duration) -> usize {
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
pub const RUNNING: usize = crate::serving::QUEUE_PER_INSTANCE / 2;

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

/// Whether a client-chosen reply topic can be published to: MQTT forbids an empty topic name,
/// wildcards and NUL in one, and more than 65 535 bytes. Publishing such a topic would make
/// the broker drop the connection, and the reply, kept in the outbox, would drop it again on
/// every reconnect; the reply goes to the model's result topic instead.
fn publishable(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

impl Handler {
    /// Runs a request and builds its reply.
    pub async fn reply(&self, request: Request) -> Entry {
        let target = self.topics.parse_request(&request.topic);
        let model = target.as_ref().map_or("", |t| t.model.as_str());
        let payload = match &request.header_length {
            None => Ok(None),
            Some(value) => codec::header_length(value).map(Some),
        }
        .and_then(|length| Payload::parse(request.payload.clone(), length));
        let destination = request
            .response_topic
            .clone()
            .filter(|t| publishable(t))
            .or_else(|| payload.as_ref().ok()?.reply_to().map(str::to_string))
            .filter(|t| publishable(t))
            .unwrap_or_else(|| self.topics.result(model));
        let id = payload.as_ref().ok().and_then(|p| p.id().cloned());
        let (body, content_type, user_properties) = match self.run(&request, payload, target).await {
            Ok(reply) => {
                self.stats.request("ok");
                reply
            }
            Err(failure) => self.failed(&request, failure, id.as_ref()),
        };
        Entry {
            created_ms: crate::clock::now_ms(),
            topic: destination,
            payload: body,
            retain: false,
            content_type: Some(content_type.into()),
            correlation_data: request.correlation_data.map(|c| c.to_vec()),
            user_properties,
        }
    }

    /// The error reply `{"id", "error"}`, counted by reason.
    fn failed(&self, request: &Request, failure: Failure, id: Option<&Value>) -> Reply {
        self.stats.request(failure.reason);
        tracing::debug!(topic = %request.topic, error = %failure.message, "MQTT request failed");
        (
            codec::response::error(&failure.message, id),
            "application/json",
            Vec::new(),
        )
    }

    async fn run(
        &self,
        request: &Request,
        payload: Result<Payload, codec::CodecError>,
        target: Option<super::topics::RequestTarget>,
    ) -> Result<Reply, Failure> {
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
        let encoding = payload.as_ref().map(Payload::encoding).unwrap_or_default();
        let response = self
            .router
            .infer_payload(PayloadRequest {
                model: target.model,
                version,
                payload,
                arrived: request.arrived,
                deadline,
            })
            .await
            .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        let mut extra = Map::new();
        extra.insert("node".into(), self.node_id.clone().into());
        Ok(match codec::encode(&response.reply(), &encoding, extra) {
            (body, Some(length)) => (
                body,
                "application/octet-stream",
                vec![(HEADER_LENGTH.to_string(), length.to_string())],
            ),
            (body, None) => (body, "application/json", Vec::new()),
        })
    }
}

/// A reply's payload, content type and user properties.
type Reply = (Vec<u8>, &'static str, Vec<(String, String)>);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(response_topic: Option<&str>, payload: &str) -> Request {
        Request {
            topic: "onnxd/n1/models/m/infer".into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            response_topic: response_topic.map(String::from),
            correlation_data: None,
            header_length: None,
            expiry_secs: None,
            arrived: Instant::now(),
        }
    }

    #[tokio::test]
    async fn reply_topics_that_cannot_be_published_are_not_used() {
        // Found by the `mqtt_envelope` fuzz target: an empty response topic became the
        // reply's topic (the broker drops a connection publishing there).
        let handler = Handler::new(
            Arc::new(Router::default()),
            Topics::new("onnxd", "n1", "onnxd"),
            "n1".into(),
            1 << 20,
            Arc::new(MqttStats::default()),
            CancellationToken::new(),
        );
        let long = "x".repeat(65_536);
        for bad in ["", "a/+/b", "a/#", "a\0b", long.as_str()] {
            let entry = handler.reply(request(Some(bad), "{}")).await;
            assert_eq!(entry.topic, "onnxd/n1/models/m/result", "response topic {bad:?}");
            let body = format!(r#"{{"reply_to": {}, "inputs": []}}"#, serde_json::json!(bad));
            let entry = handler.reply(request(None, &body)).await;
            assert_eq!(entry.topic, "onnxd/n1/models/m/result", "reply_to {bad:?}");
        }
        let entry = handler.reply(request(Some("replies/c7"), "{}")).await;
        assert_eq!(entry.topic, "replies/c7");
    }
}
