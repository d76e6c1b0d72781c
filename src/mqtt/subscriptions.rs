//! The SUBSCRIBEs of one connection: on CONNACK the request filters and the listened topics
//! together, later a topic a listener adds while connected (see [`super::listen`]). Every
//! SUBSCRIBE carries packet id [`SUBSCRIBE_ID`] (never a publish's), so one is in flight at a
//! time: filters asked for meanwhile wait and go out together once its SUBACK came. A SUBACK's
//! reason codes are matched to the filters of the SUBSCRIBE in flight, so a refusal is
//! reported by name.

use rumqttc::v5::mqttbytes::v5::{Filter, SubAck, Subscribe, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;

use super::packet_ids::SUBSCRIBE_ID;

/// The connection's SUBSCRIBE in flight and the filters waiting for it.
#[derive(Debug, Default)]
pub struct Subscriptions {
    in_flight: Option<Vec<String>>,
    waiting: Vec<String>,
}

/// What a SUBACK answered.
#[derive(Debug, PartialEq)]
pub struct Answered {
    /// The filters the broker refused, with its reason.
    pub refused: Vec<(String, SubscribeReasonCode)>,
    /// The next SUBSCRIBE to send (filters asked for while this one was in flight).
    pub next: Option<Subscribe>,
}

impl Subscriptions {
    /// A new connection: nothing asked on the last one is awaited or sent any more.
    pub fn reset(&mut self) {
        *self = Subscriptions::default();
    }

    /// Asks for `filters` at QoS 1: the SUBSCRIBE to send now, or `None` while another is in
    /// flight (they go out with the next one).
    pub fn subscribe(&mut self, filters: impl IntoIterator<Item = String>) -> Option<Subscribe> {
        self.waiting.extend(filters);
        match self.in_flight {
            Some(_) => None,
            None => self.next(),
        }
    }

    /// A SUBACK from the broker; `None` when no SUBSCRIBE with its id is in flight.
    pub fn acknowledged(&mut self, ack: &SubAck) -> Option<Answered> {
        if ack.pkid != SUBSCRIBE_ID {
            return None;
        }
        let filters = self.in_flight.take()?;
        let refused = filters
            .into_iter()
            .zip(&ack.return_codes)
            .filter(|(_, code)| !matches!(code, SubscribeReasonCode::Success(_)))
            .map(|(filter, code)| (filter, *code))
            .collect();
        Some(Answered {
            refused,
            next: self.next(),
        })
    }

    /// The SUBSCRIBE that was to carry the filters in flight could not be written: they are
    /// given up on this connection (the next one subscribes everything again).
    pub fn unsent(&mut self) {
        self.in_flight = None;
    }

    /// The waiting filters as the SUBSCRIBE in flight; `None` when none wait.
    fn next(&mut self) -> Option<Subscribe> {
        if self.waiting.is_empty() {
            return None;
        }
        let filters = std::mem::take(&mut self.waiting);
        let packet = filters.iter().map(|f| Filter::new(f, QoS::AtLeastOnce));
        let mut subscribe = Subscribe::new_many(packet, None);
        subscribe.pkid = SUBSCRIBE_ID;
        self.in_flight = Some(filters);
        Some(subscribe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(subscribe: &Subscribe) -> Vec<&str> {
        subscribe.filters.iter().map(|f| f.path.as_str()).collect()
    }

    fn suback(pkid: u16, codes: Vec<SubscribeReasonCode>) -> SubAck {
        SubAck {
            pkid,
            return_codes: codes,
            properties: None,
        }
    }

    #[test]
    fn one_subscribe_in_flight_the_rest_waits_for_its_suback() {
        let mut subscriptions = Subscriptions::default();
        let first = subscriptions
            .subscribe(["a/+/infer".to_string(), "ha/status".to_string()])
            .expect("nothing in flight: sent at once");
        assert_eq!(first.pkid, SUBSCRIBE_ID);
        assert_eq!(first.filters[0].qos, QoS::AtLeastOnce);
        assert_eq!(filters(&first), ["a/+/infer", "ha/status"]);
        assert_eq!(subscriptions.subscribe(["b".to_string()]), None);
        assert_eq!(subscriptions.subscribe(["c".to_string()]), None);
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        let answered = subscriptions
            .acknowledged(&suback(
                SUBSCRIBE_ID,
                vec![ok, SubscribeReasonCode::NotAuthorized],
            ))
            .expect("in flight");
        assert_eq!(
            answered.refused,
            [("ha/status".to_string(), SubscribeReasonCode::NotAuthorized)]
        );
        let next = answered.next.expect("b and c waited");
        assert_eq!(filters(&next), ["b", "c"]);
        let last = subscriptions.acknowledged(&suback(SUBSCRIBE_ID, vec![ok, ok]));
        assert_eq!(
            last,
            Some(Answered {
                refused: Vec::new(),
                next: None
            })
        );
        // Nothing in flight any more: the next filter goes out at once.
        assert!(subscriptions.subscribe(["d".to_string()]).is_some());
    }

    #[test]
    fn a_suback_nobody_waits_for_is_refused_and_a_new_connection_starts_afresh() {
        let mut subscriptions = Subscriptions::default();
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        assert_eq!(subscriptions.acknowledged(&suback(SUBSCRIBE_ID, vec![ok])), None);
        subscriptions.subscribe(["a".to_string()]).expect("sent");
        assert_eq!(subscriptions.acknowledged(&suback(7, vec![ok])), None);
        assert_eq!(subscriptions.subscribe(["b".to_string()]), None);
        subscriptions.reset();
        let fresh = subscriptions
            .subscribe(["c".to_string()])
            .expect("reset: nothing in flight");
        assert_eq!(filters(&fresh), ["c"]);
        subscriptions.unsent();
        assert!(subscriptions.subscribe(["d".to_string()]).is_some());
    }
}
