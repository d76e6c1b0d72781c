//! The ceiling of an MQTT request/response daemon behind one broker (recorded in BENCHMARKS.md
//! through `scripts/bench-mqtt`): a responder that does, per request, the packet work onnxd
//! does — take the QoS 1 request, publish a QoS 1 reply to its response topic with its
//! correlation data, acknowledge the request once the broker has acknowledged the reply — and
//! nothing else: no decoding, no model, no outbox; the reply is the request's own payload. One
//! task on one thread, one connection (onnxd's packet link, Nagle off), what it writes in answer
//! to a batch of packets read goes out in one write. What it reaches with `onnxd bench --mqtt`
//! is the most any daemon could reach through that broker on that machine.
//!
//!   cargo run --release --example mqtt_ceiling -- HOST:PORT REQUEST_TOPIC

use std::collections::HashMap;

use anyhow::{bail, Context};
use onnxd::mqtt::packet_ids::{PacketIds, SUBSCRIBE_ID};
use onnxd::mqtt::wire::{self, Link, Settings};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAck, Publish, PublishProperties, Subscribe};
use rumqttc::v5::mqttbytes::QoS;

const MAX_PACKET: u32 = 64 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, broker, topic] = &args[..] else {
        bail!("usage: mqtt_ceiling HOST:PORT REQUEST_TOPIC")
    };
    let (host, port) = broker.rsplit_once(':').context("broker: HOST:PORT")?;
    let port = port.parse().context("broker port")?;
    let client_id = format!("onnxd-ceiling-{}", std::process::id());
    // Keep alive 0: the loop never pings.
    let settings = Settings::plain(host.to_string(), port, client_id, 0, MAX_PACKET);
    let (mut link, _) = wire::connect(&settings).await?;
    let mut subscribe = Subscribe::new(Filter::new(topic.clone(), QoS::AtLeastOnce), None);
    subscribe.pkid = SUBSCRIBE_ID;
    link.send(Packet::Subscribe(subscribe))?;
    link.flush().await?;
    eprintln!("mqtt_ceiling: answering {topic} on {broker}");
    let mut responder = Responder {
        ids: PacketIds::default(),
        pending: HashMap::new(),
    };
    loop {
        for packet in link.read_ready().await? {
            responder.handle(&mut link, packet)?;
        }
        link.flush().await?;
    }
}

/// Replies in flight: the reply's packet id → the request's (none at QoS 0), acknowledged when
/// the reply is.
struct Responder {
    ids: PacketIds,
    pending: HashMap<u16, Option<u16>>,
}

impl Responder {
    fn handle(&mut self, link: &mut Link, packet: Packet) -> anyhow::Result<()> {
        match packet {
            Packet::Publish(request) => {
                let ack = (request.qos != QoS::AtMostOnce).then_some(request.pkid);
                let properties = request.properties.unwrap_or_default();
                let Some(reply_to) = properties.response_topic else {
                    if let Some(pkid) = ack {
                        link.send(Packet::PubAck(PubAck::new(pkid, None)))?;
                    }
                    return Ok(());
                };
                let reply_properties = PublishProperties {
                    correlation_data: properties.correlation_data,
                    ..PublishProperties::default()
                };
                let mut reply = Publish::new(
                    reply_to,
                    QoS::AtLeastOnce,
                    request.payload,
                    Some(reply_properties),
                );
                reply.pkid = self.ids.allocate().context("no free packet id")?;
                self.pending.insert(reply.pkid, ack);
                link.send(Packet::Publish(reply))?;
            }
            Packet::PubAck(ack) => {
                if let Some(request) = self.pending.remove(&ack.pkid) {
                    self.ids.release(ack.pkid);
                    if let Some(pkid) = request {
                        link.send(Packet::PubAck(PubAck::new(pkid, None)))?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
