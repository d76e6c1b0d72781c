//! Requests already answered in this session, so one the broker delivers again with the DUP
//! flag (onnxd's PUBACK was lost with a connection, or never sent because the connection
//! dropped first) is acknowledged without being run and answered twice.
//!
//! A request is remembered by the packet id the broker gave it and a fingerprint of its topic,
//! payload, response topic and correlation data, from the moment its response is safe
//! (acknowledged by the broker or synced to the outbox). The broker resends with the same id;
//! a new message with that id (no DUP flag) replaces the entry, so there is at most one entry
//! per id and the memory is bounded by the id space. A CONNACK without a session forgets all.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use rumqttc::v5::mqttbytes::v5::Publish;

/// Answered requests by packet id.
#[derive(Debug, Default)]
pub struct Answered {
    by_id: Mutex<HashMap<u16, u64>>,
}

/// A request's fingerprint: what identifies it besides its packet id.
pub fn fingerprint(publish: &Publish) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    publish.topic.hash(&mut hasher);
    publish.payload.hash(&mut hasher);
    let properties = publish.properties.as_ref();
    properties.map(|p| &p.response_topic).hash(&mut hasher);
    properties.map(|p| &p.correlation_data).hash(&mut hasher);
    hasher.finish()
}

impl Answered {
    /// A request arrived: true when it is a redelivery (DUP) of one already answered, which
    /// is then only to be acknowledged.
    pub fn already_answered(&self, pkid: u16, dup: bool, fingerprint: u64) -> bool {
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let answered = dup && by_id.get(&pkid) == Some(&fingerprint);
        if !answered {
            // Another message now has this id: the entry (if any) is stale.
            by_id.remove(&pkid);
        }
        answered
    }

    /// The request with `pkid` and `fingerprint` has a safe response.
    pub fn record(&self, pkid: u16, fingerprint: u64) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pkid, fingerprint);
    }

    /// The broker kept no session: nothing will be redelivered.
    pub fn forget_all(&self) {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;

    fn request(payload: &str) -> Publish {
        Publish::new("p/models/m/infer", QoS::AtLeastOnce, payload.to_string(), None)
    }

    #[test]
    fn only_a_dup_of_the_same_answered_request_is_suppressed() {
        let answered = Answered::default();
        let a = fingerprint(&request("a"));
        let b = fingerprint(&request("b"));
        assert_ne!(a, b);
        assert!(!answered.already_answered(7, false, a));
        // Not answered yet: a DUP is run again.
        assert!(!answered.already_answered(7, true, a));
        answered.record(7, a);
        assert!(answered.already_answered(7, true, a));
        assert!(answered.already_answered(7, true, a));
        // Same id, other content: not the same request.
        assert!(!answered.already_answered(7, true, b));
        answered.record(7, a);
        // A new message (no DUP) with the id replaces the entry.
        assert!(!answered.already_answered(7, false, a));
        assert!(!answered.already_answered(7, true, a));
        answered.record(8, b);
        answered.forget_all();
        assert!(!answered.already_answered(8, true, b));
    }
}
