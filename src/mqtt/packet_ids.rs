//! Packet identifiers of the QoS 1 messages onnxd publishes. onnxd chooses them itself (the
//! publisher thread allocates one before a message is handed to the connection), so a PUBACK
//! is matched to its message by id alone — whatever order the broker acknowledges in, and
//! whatever the MQTT library does inside.
//!
//! Ids cycle through `FIRST..=u16::MAX`, skipping those still in use, so an id comes back only
//! after every other one was used: a late or unknown PUBACK is unlikely to meet a reused id,
//! and an id whose PUBACK is overdue stays reserved until the connection ends (see
//! [`PacketIds::quarantine`]) so it never meets one. Id [`SUBSCRIBE_ID`] is reserved for
//! SUBSCRIBE (one in flight at a time, see [`super::subscriptions`]), never a publish.

use std::collections::HashSet;

/// The packet id of every SUBSCRIBE (one in flight at a time).
pub const SUBSCRIBE_ID: u16 = 1;
/// The first id given to a publish.
const FIRST: u16 = SUBSCRIBE_ID + 1;

/// The ids in use on the current connection.
#[derive(Debug)]
pub struct PacketIds {
    next: u16,
    in_use: HashSet<u16>,
    quarantined: HashSet<u16>,
}

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds {
            next: FIRST,
            in_use: HashSet::new(),
            quarantined: HashSet::new(),
        }
    }
}

impl PacketIds {
    /// A free id, now in use; `None` when every id is taken.
    pub fn allocate(&mut self) -> Option<u16> {
        let span = usize::from(u16::MAX - FIRST) + 1;
        if self.in_use.len() + self.quarantined.len() >= span {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { FIRST } else { id + 1 };
            if !self.in_use.contains(&id) && !self.quarantined.contains(&id) {
                self.in_use.insert(id);
                return Some(id);
            }
        }
    }

    /// The message with `id` was acknowledged (or given up on at a disconnect): the id is free.
    /// Returns whether it was in use (a quarantined id is freed too, and counts as not).
    pub fn release(&mut self, id: u16) -> bool {
        self.quarantined.remove(&id);
        self.in_use.remove(&id)
    }

    /// The message with `id` was given up on while the connection lives (its PUBACK is
    /// overdue): the broker may still acknowledge it, so the id is not reused on this
    /// connection.
    pub fn quarantine(&mut self, id: u16) {
        if self.in_use.remove(&id) {
            self.quarantined.insert(id);
        }
    }

    /// Ids the broker may still hold on this connection (in use or quarantined).
    pub fn outstanding(&self) -> usize {
        self.in_use.len() + self.quarantined.len()
    }

    /// The connection ended: nothing it carried can be acknowledged any more.
    pub fn reset(&mut self) {
        self.in_use.clear();
        self.quarantined.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cycle_skip_those_in_use_and_never_hand_out_the_subscribe_id() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), Some(3));
        assert!(ids.release(2));
        // Not 2 again at once: ids cycle.
        assert_eq!(ids.allocate(), Some(4));
        ids.next = u16::MAX;
        assert_eq!(ids.allocate(), Some(u16::MAX));
        // Wraps past 1 (SUBSCRIBE) and 3 (still in use).
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), Some(5));
        assert!(!ids.release(77));
    }

    #[test]
    fn a_quarantined_id_is_not_reused_until_the_connection_ends() {
        let mut ids = PacketIds::default();
        let id = ids.allocate().unwrap();
        ids.quarantine(id);
        assert_eq!(ids.outstanding(), 1);
        ids.next = id;
        assert_ne!(ids.allocate(), Some(id));
        ids.reset();
        ids.next = id;
        assert_eq!(ids.allocate(), Some(id));
    }

    #[test]
    fn allocation_fails_only_when_every_id_is_taken() {
        let mut ids = PacketIds::default();
        let all: Vec<u16> = std::iter::from_fn(|| ids.allocate()).collect();
        assert_eq!(all.len(), usize::from(u16::MAX) - 1);
        assert_eq!(ids.allocate(), None);
        ids.release(all[100]);
        assert_eq!(ids.allocate(), Some(all[100]));
    }
}
