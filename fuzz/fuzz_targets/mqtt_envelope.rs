//! The MQTT request path: a PUBLISH as the broker delivers it (topic, user properties,
//! response topic, correlation data, expiry, payload) through `Request::from_publish` and the
//! request handler (topic parsing, header length, payload classification, routing, the error
//! reply) to the entry it queues in the outbox. Input: a mode byte; odd: an MQTT 5 packet as
//! read from the socket (rumqttc's decoder first); even: the PUBLISH's fields (see
//! `publish`). Seeds: requests of the fixtures in both forms (`make_seeds`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use onnxd::mqtt::requests::{Handler, Request};
use onnxd::mqtt::stats::MqttStats;
use onnxd::mqtt::topics::Topics;
use onnxd::serving::Router;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use tokio_util::sync::CancellationToken;

/// The fields form: topic (chunk), user property count and each key and value (chunks),
/// flags (1: response topic, 2: correlation data, 4: expiry), response topic and correlation
/// data (chunks), expiry (u32), then the payload.
fn publish(mut input: onnxd_fuzz::Input<'_>) -> Publish {
    let topic = Bytes::copy_from_slice(input.chunk());
    let count = input.u8() % 8;
    let user_properties = (0..count).map(|_| (input.text(), input.text())).collect();
    let flags = input.u8();
    let response_topic = input.text();
    let correlation = Bytes::copy_from_slice(input.chunk());
    let expiry = input.u32();
    let properties = PublishProperties {
        user_properties,
        response_topic: (flags & 1 != 0).then_some(response_topic),
        correlation_data: (flags & 2 != 0).then_some(correlation),
        message_expiry_interval: (flags & 4 != 0).then_some(expiry),
        ..PublishProperties::default()
    };
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        pkid: 1,
        payload: Bytes::copy_from_slice(input.rest()),
        properties: Some(properties),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let handler = Arc::new(Handler::new(
        Arc::new(Router::default()),
        Topics::new("onnxd", "fuzz", "onnxd"),
        "fuzz".into(),
        1 << 20,
        Arc::new(MqttStats::default()),
        CancellationToken::new(),
    ));
    afl::fuzz!(|data: &[u8]| {
        let mut input = onnxd_fuzz::Input::new(data);
        let publish = if input.u8() % 2 == 1 {
            let mut stream = BytesMut::from(input.rest());
            match Packet::read(&mut stream, Some(1 << 20)) {
                Ok(Packet::Publish(publish)) => publish,
                _ => return,
            }
        } else {
            publish(input)
        };
        let request = Request::from_publish(&publish);
        let correlation = request.correlation_data.clone();
        let _taken = handler.take().expect("not shutting down");
        let entry = runtime.block_on(handler.reply(request));
        assert!(
            !entry.topic.is_empty() && !entry.topic.contains(['+', '#', '\0']),
            "every reply goes to a topic MQTT can publish to: {:?}",
            entry.topic
        );
        assert_eq!(entry.correlation_data, correlation.map(|c| c.to_vec()));
        let reply: serde_json::Value =
            serde_json::from_slice(&entry.payload).expect("the error reply is JSON");
        assert!(
            reply.get("error").is_some(),
            "no model serves here: an error reply"
        );
    });
}
