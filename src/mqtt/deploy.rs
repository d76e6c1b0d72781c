//! Model delivery's MQTT commands (SPEC §6): a deploy manifest on `P/models/<m>/deploy` or
//! the fleet's `F/models/<m>/deploy`, and `…/models/<m>/rollback` (payload ignored). Each is
//! handed to [`Delivery`] in a task of its own and acknowledged once delivery has taken it —
//! a manifest is acknowledged after it was journalled (a crash before that leaves it with the
//! broker) or refused (reported on `P/models/<m>/rollout`; redelivering a bad manifest would
//! not make it good). Retained deploy manifests count (retained rollbacks are ignored): a retained fleet manifest reaches daemons that
//! connect later, and delivery ignores one that repeats the last finished deploy.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;

use super::session::WeakWire;
use super::topics::Topics;
use crate::delivery::Delivery;

/// Whether a message is a delivery command; if so it is handled (in its own task).
pub fn handle(
    delivery: Option<&Arc<Delivery>>,
    topics: &Topics,
    acks: &WeakWire,
    publish: &Publish,
    epoch: u64,
) -> bool {
    let topic = String::from_utf8_lossy(&publish.topic);
    let Some((model, command)) = topics.parse_command(&topic) else {
        return false;
    };
    let Some(delivery) = delivery.cloned() else {
        return false;
    };
    let (model, command) = (model.to_string(), command.to_string());
    let (acks, publish) = (acks.clone(), publish.clone());
    let acknowledge = publish.qos == QoS::AtLeastOnce;
    if command == "rollback" && publish.retain {
        // A retained rollback would roll back again on every reconnect.
        tracing::warn!(model, "retained rollback command ignored");
        if acknowledge {
            acks.ack(epoch, publish.pkid);
        }
        return true;
    }
    tokio::spawn(async move {
        let redelivered = publish.retain || publish.dup;
        let outcome = match command.as_str() {
            "deploy" => delivery
                .deploy(&model, &publish.payload, redelivered)
                .await
                .map(drop),
            _ => delivery.rollback(&model).await.map(drop),
        };
        if let Err(e) = outcome {
            tracing::warn!(model, command, error = %e, "MQTT delivery command refused");
        }
        if acknowledge {
            acks.ack(epoch, publish.pkid);
        }
    });
    true
}
