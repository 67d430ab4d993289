//! Which of our publishes the broker acknowledged.
//!
//! rumqttc assigns packet ids inside its event loop, so we learn them only
//! from `Outgoing::Publish(pkid)` events. Requests reach the event loop in the
//! order we hand them to the client, so the n-th new pkid belongs to the n-th
//! submitted publish; a pkid we already track is a retransmission after a
//! reconnect. `PubAck(pkid)` then names exactly one message.
//!
//! This holds because the caller keeps at most `inflight` publishes
//! outstanding (so rumqttc never has to reuse a pkid that is still in flight)
//! and only submits while connected (so after a connection error everything
//! submitted but not yet sent sits in rumqttc's pending queue, in order).

use std::collections::{HashMap, VecDeque};

/// What an `Outgoing::Publish` event meant.
#[derive(Debug, PartialEq)]
pub enum Outgoing<'a, T> {
    /// First transmission of this item (now waiting for its PUBACK).
    Sent(&'a mut T),
    /// A QoS 0 item went out; nothing more will come for it.
    SentQos0(T),
    /// Retransmission of an item already waiting for its PUBACK.
    Retransmitted,
    /// Nothing of ours was waiting: a bookkeeping bug, worth a warning.
    Unknown,
}

#[derive(Debug)]
pub struct AckTracker<T> {
    next_order: u64,
    /// Handed to the client, not yet written to the network.
    submitted: VecDeque<(u64, T)>,
    /// Written, waiting for a PUBACK, by pkid.
    inflight: HashMap<u16, (u64, T)>,
    /// Got a pkid that was still in use; rumqttc sends it after that pkid's
    /// ack, even on a later connection.
    collided: Option<Collided<T>>,
}

/// A publish rumqttc holds back because its pkid was still in flight
/// (`Outgoing::AwaitAck`).
#[derive(Debug)]
struct Collided<T> {
    pkid: u16,
    order: u64,
    item: T,
    /// The pkid's holder was acknowledged: rumqttc sends this one next under
    /// that pkid. Until then an `Outgoing::Publish(pkid)` is the holder's
    /// retransmission, or, after a lost session, a new publish that got the
    /// pkid while rumqttc still holds this one back.
    due: bool,
}

impl<T> Default for AckTracker<T> {
    fn default() -> Self {
        Self {
            next_order: 0,
            submitted: VecDeque::new(),
            inflight: HashMap::new(),
            collided: None,
        }
    }
}

impl<T> AckTracker<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Items handed to the client and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.submitted.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    /// Call right after the client accepted the publish request.
    pub fn submit(&mut self, item: T) {
        self.submitted.push_back((self.next_order, item));
        self.next_order += 1;
    }

    /// `Event::Outgoing(Outgoing::Publish(pkid))`.
    pub fn on_outgoing_publish(&mut self, pkid: u16) -> Outgoing<'_, T> {
        if pkid == 0 {
            return match self.submitted.pop_front() {
                Some((_, item)) => Outgoing::SentQos0(item),
                None => Outgoing::Unknown,
            };
        }
        // A pkid still waiting for its ack is going out again: a
        // retransmission after a reconnect (checked first: a publish held
        // back on that pkid is not due before the ack).
        if self.inflight.contains_key(&pkid) {
            return Outgoing::Retransmitted;
        }
        if matches!(&self.collided, Some(c) if c.pkid == pkid && c.due) {
            if let Some(c) = self.collided.take() {
                let entry = self.inflight.entry(pkid).insert_entry((c.order, c.item));
                return Outgoing::Sent(&mut entry.into_mut().1);
            }
        }
        match self.submitted.pop_front() {
            Some(entry) => {
                let slot = self.inflight.entry(pkid).insert_entry(entry);
                Outgoing::Sent(&mut slot.into_mut().1)
            }
            None => Outgoing::Unknown,
        }
    }

    /// `Event::Outgoing(Outgoing::AwaitAck(pkid))`: the next submitted publish
    /// got `pkid` but waits until the broker acknowledges the previous holder.
    pub fn on_await_ack(&mut self, pkid: u16) {
        if let Some((order, item)) = self.submitted.pop_front() {
            self.collided = Some(Collided {
                pkid,
                order,
                item,
                due: false,
            });
        }
    }

    /// `Event::Incoming(Packet::PubAck(ack))`: the acknowledged item.
    pub fn on_puback(&mut self, pkid: u16) -> Option<T> {
        let acked = self.inflight.remove(&pkid).map(|(_, item)| item);
        if acked.is_some() {
            if let Some(collided) = self.collided.as_mut().filter(|c| c.pkid == pkid) {
                collided.due = true;
            }
        }
        acked
    }

    /// The broker had no session for us, and rumqttc dropped its queue of
    /// unacknowledged publishes: everything outstanding is returned, oldest
    /// first, to be published again. Not a publish rumqttc holds back on a
    /// pkid collision: rumqttc keeps that one (`MqttState::clean` leaves
    /// it) and sends it after the next ack of its pkid, on this session.
    pub fn session_lost(&mut self) -> Vec<T> {
        let mut all: Vec<(u64, T)> = self.submitted.drain(..).collect();
        all.extend(self.inflight.drain().map(|(_, entry)| entry));
        if let Some(collided) = self.collided.as_mut() {
            // Its pkid's holder is gone with the session; a new publish
            // takes the pkid first.
            collided.due = false;
        }
        all.sort_by_key(|(order, _)| *order);
        all.into_iter().map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(tracker: &mut AckTracker<&'static str>, pkid: u16) -> &'static str {
        match tracker.on_outgoing_publish(pkid) {
            Outgoing::Sent(item) => item,
            other => panic!("expected a first send, got {other:?}"),
        }
    }

    #[test]
    fn pkids_are_matched_in_submission_order() {
        let mut t = AckTracker::new();
        t.submit("a");
        t.submit("b");
        t.submit("c");
        assert_eq!(t.outstanding(), 3);
        assert_eq!(sent(&mut t, 1), "a");
        assert_eq!(sent(&mut t, 2), "b");
        assert_eq!(t.on_puback(2), Some("b"));
        assert_eq!(sent(&mut t, 3), "c");
        assert_eq!(t.on_puback(1), Some("a"));
        assert_eq!(t.on_puback(1), None, "a second ack names nothing");
        assert_eq!(t.on_puback(3), Some("c"));
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.on_outgoing_publish(4), Outgoing::Unknown);
    }

    #[test]
    fn pkids_are_reused_after_their_ack() {
        let mut t = AckTracker::new();
        t.submit("a");
        assert_eq!(sent(&mut t, 1), "a");
        assert_eq!(t.on_puback(1), Some("a"));
        t.submit("b");
        assert_eq!(sent(&mut t, 1), "b");
        assert_eq!(t.on_puback(1), Some("b"));
    }

    #[test]
    fn retransmissions_after_reconnect_keep_their_item() {
        let mut t = AckTracker::new();
        for item in ["a", "b", "c"] {
            t.submit(item);
        }
        assert_eq!(sent(&mut t, 1), "a");
        assert_eq!(sent(&mut t, 2), "b");
        // Connection drops; session present: rumqttc resends 1 and 2 with
        // their pkids, then the still unsent "c" gets a new one.
        assert_eq!(t.on_outgoing_publish(1), Outgoing::Retransmitted);
        assert_eq!(t.on_outgoing_publish(2), Outgoing::Retransmitted);
        assert_eq!(sent(&mut t, 3), "c");
        assert_eq!(t.on_puback(2), Some("b"));
        assert_eq!(t.on_puback(1), Some("a"));
        assert_eq!(t.on_puback(3), Some("c"));
    }

    #[test]
    fn qos0_items_leave_when_written() {
        let mut t = AckTracker::new();
        t.submit("q0");
        t.submit("q1");
        assert_eq!(t.on_outgoing_publish(0), Outgoing::SentQos0("q0"));
        assert_eq!(sent(&mut t, 1), "q1");
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn collision_waits_for_the_previous_holder() {
        let mut t = AckTracker::new();
        t.submit("a");
        t.submit("b");
        assert_eq!(sent(&mut t, 1), "a");
        t.on_await_ack(1);
        assert_eq!(t.outstanding(), 2);
        assert_eq!(t.on_puback(1), Some("a"));
        assert_eq!(sent(&mut t, 1), "b");
        assert_eq!(t.on_puback(1), Some("b"));
    }

    #[test]
    fn lost_session_returns_everything_in_order() {
        let mut t = AckTracker::new();
        for item in ["a", "b", "c", "d"] {
            t.submit(item);
        }
        assert_eq!(sent(&mut t, 1), "a");
        assert_eq!(sent(&mut t, 2), "b");
        assert_eq!(t.session_lost(), vec!["a", "b", "c", "d"]);
        assert_eq!(t.outstanding(), 0);
        // Fresh start afterwards.
        t.submit("e");
        assert_eq!(sent(&mut t, 7), "e");
    }

    /// rumqttc resends a pkid's holder after a reconnect while a publish
    /// collided on that pkid waits: the resend is the holder's, and its ack
    /// is the holder's (the tracker took the resend for the held-back
    /// publish, then every later ack for the publish before it: a publish
    /// counted acknowledged before it was).
    #[test]
    fn a_collision_waits_for_its_holder_across_a_reconnect() {
        let mut t = AckTracker::new();
        t.submit("a");
        t.submit("b");
        assert_eq!(sent(&mut t, 1), "a");
        t.on_await_ack(1);
        // Reconnected, session present: "a" goes out again under 1.
        assert_eq!(t.on_outgoing_publish(1), Outgoing::Retransmitted);
        assert_eq!(t.on_puback(1), Some("a"));
        assert_eq!(sent(&mut t, 1), "b");
        assert_eq!(t.on_puback(1), Some("b"));
        assert_eq!(t.outstanding(), 0);
    }

    /// After a lost session rumqttc keeps a held-back publish and sends it
    /// after the next ack of its pkid; a new publish takes that pkid first.
    #[test]
    fn a_collision_outlives_a_lost_session() {
        let mut t = AckTracker::new();
        for item in ["a", "b", "c"] {
            t.submit(item);
        }
        assert_eq!(sent(&mut t, 1), "a");
        t.on_await_ack(1);
        assert_eq!(t.session_lost(), vec!["a", "c"]);
        assert_eq!(t.outstanding(), 1, "\"b\" is still rumqttc's");
        // The simulator publishes "a" and "c" again; "a" gets pkid 1.
        t.submit("a");
        t.submit("c");
        assert_eq!(sent(&mut t, 1), "a");
        assert_eq!(t.on_puback(1), Some("a"));
        assert_eq!(sent(&mut t, 1), "b");
        assert_eq!(sent(&mut t, 2), "c");
        assert_eq!(t.on_puback(1), Some("b"));
        assert_eq!(t.on_puback(2), Some("c"));
        assert_eq!(t.outstanding(), 0);
    }
}
