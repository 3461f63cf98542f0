//! Ordered acks: the consumer acks in any order, the acks go out in arrival order.
//!
//! MQTT requires a client to send its PUBACKs in the order the PUBLISHes arrived (MQTT
//! 3.1.1 section 4.6, MQTT 5 section 4.6), and rumqttc leaves that to the application
//! (rumqtt #846). This is the pure state machine for it: each arrival gets the next
//! sequence number; [`OrderedAcks::ack`] marks one done and returns the items of the
//! contiguous done prefix, in order, to be sent now. A message dropped without an ack is
//! [`abandoned`](OrderedAcks::abandon): it no longer holds back the ones after it and is
//! never acked (the server keeps it in flight and redelivers it after a reconnect with a
//! persistent session). [`OrderedAcks::reset`] forgets everything (the connection is gone,
//! its packet ids mean nothing any more); sequence numbers keep counting, so an ack of a
//! message from before the reset is recognised as [`AckOutcome::Stale`].
//!
//! Bounded: at most `capacity` messages are held between arrival and release.

use std::collections::VecDeque;

#[derive(Debug)]
enum Slot<T> {
    Waiting(T),
    Done(T),
    Abandoned,
}

/// What [`OrderedAcks::ack`] or [`OrderedAcks::abandon`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome<T> {
    /// Marked; these (possibly none) are released, in arrival order.
    Released(Vec<T>),
    /// The sequence number is older than the last reset, or was released already.
    Stale,
    /// The sequence number was never handed out, or was acked or abandoned already.
    Unknown,
}

/// Arrivals in order, each waiting for its ack; see the module doc.
#[derive(Debug)]
pub struct OrderedAcks<T> {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot<T>>,
    capacity: usize,
}

impl<T> OrderedAcks<T> {
    /// Holds at most `capacity` (at least 1) messages between arrival and release.
    pub fn new(capacity: usize) -> Self {
        OrderedAcks {
            base: 1,
            slots: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Messages held (arrived and not yet released).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// Records an arrival; its sequence number, or the item back when full.
    pub fn arrive(&mut self, item: T) -> Result<u64, T> {
        if self.is_full() {
            return Err(item);
        }
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot::Waiting(item));
        Ok(seq)
    }

    /// Marks `seq` acked; returns what is released.
    pub fn ack(&mut self, seq: u64) -> AckOutcome<T> {
        self.mark(seq, true)
    }

    /// Marks `seq` as never to be acked (its delivery was dropped); returns what that
    /// releases.
    pub fn abandon(&mut self, seq: u64) -> AckOutcome<T> {
        self.mark(seq, false)
    }

    /// Forgets everything held; returns how many messages were held.
    pub fn reset(&mut self) -> usize {
        let n = self.slots.len();
        self.base += n as u64;
        self.slots.clear();
        n
    }

    fn mark(&mut self, seq: u64, done: bool) -> AckOutcome<T> {
        if seq < self.base {
            return AckOutcome::Stale;
        }
        let Ok(i) = usize::try_from(seq - self.base) else {
            return AckOutcome::Unknown;
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return AckOutcome::Unknown;
        };
        let old = std::mem::replace(slot, Slot::Abandoned);
        *slot = match old {
            Slot::Waiting(item) if done => Slot::Done(item),
            Slot::Waiting(_) => Slot::Abandoned,
            other => {
                *slot = other;
                return AckOutcome::Unknown;
            }
        };
        let mut out = Vec::new();
        while let Some(front) = self.slots.front() {
            if matches!(front, Slot::Waiting(_)) {
                break;
            }
            if let Some(Slot::Done(item)) = self.slots.pop_front() {
                out.push(item);
            }
            self.base += 1;
        }
        AckOutcome::Released(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(o: AckOutcome<&'static str>) -> Vec<&'static str> {
        match o {
            AckOutcome::Released(v) => v,
            other => panic!("expected Released, got {other:?}"),
        }
    }

    #[test]
    fn in_order_acks_release_one_by_one() {
        let mut a = OrderedAcks::new(8);
        let s1 = a.arrive("a").unwrap();
        let s2 = a.arrive("b").unwrap();
        assert_eq!((s1, s2), (1, 2));
        assert_eq!(released(a.ack(s1)), vec!["a"]);
        assert_eq!(released(a.ack(s2)), vec!["b"]);
        assert!(a.is_empty());
    }

    #[test]
    fn out_of_order_acks_wait_for_the_prefix() {
        let mut a = OrderedAcks::new(8);
        let s: Vec<u64> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|x| a.arrive(x).unwrap())
            .collect();
        assert_eq!(released(a.ack(s[2])), Vec::<&str>::new());
        assert_eq!(released(a.ack(s[1])), Vec::<&str>::new());
        assert_eq!(a.len(), 4);
        assert_eq!(released(a.ack(s[0])), vec!["a", "b", "c"]);
        assert_eq!(a.len(), 1);
        assert_eq!(released(a.ack(s[3])), vec!["d"]);
        assert!(a.is_empty());
    }

    #[test]
    fn reverse_order_releases_everything_at_the_end_in_arrival_order() {
        let mut a = OrderedAcks::new(100);
        let items: Vec<u64> = (0..50).map(|i| a.arrive(i).unwrap()).collect();
        for &s in items.iter().skip(1).rev() {
            match a.ack(s) {
                AckOutcome::Released(v) => assert!(v.is_empty()),
                o => panic!("{o:?}"),
            }
        }
        match a.ack(items[0]) {
            AckOutcome::Released(v) => assert_eq!(v, (0..50).collect::<Vec<_>>()),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn abandoned_ones_do_not_block_and_are_not_released() {
        let mut a = OrderedAcks::new(8);
        let s1 = a.arrive("a").unwrap();
        let s2 = a.arrive("b").unwrap();
        let s3 = a.arrive("c").unwrap();
        assert_eq!(released(a.ack(s3)), Vec::<&str>::new());
        assert_eq!(released(a.ack(s2)), Vec::<&str>::new());
        assert_eq!(released(a.abandon(s1)), vec!["b", "c"]);
        assert!(a.is_empty());
    }

    #[test]
    fn double_and_unknown_acks() {
        let mut a = OrderedAcks::new(8);
        let s1 = a.arrive("a").unwrap();
        let s2 = a.arrive("b").unwrap();
        assert_eq!(released(a.ack(s2)), Vec::<&str>::new());
        assert_eq!(a.ack(s2), AckOutcome::Unknown);
        assert_eq!(a.abandon(s2), AckOutcome::Unknown);
        assert_eq!(a.ack(99), AckOutcome::Unknown);
        assert_eq!(released(a.ack(s1)), vec!["a", "b"]);
        // Released already.
        assert_eq!(a.ack(s1), AckOutcome::Stale);
        assert_eq!(a.ack(s2), AckOutcome::Stale);
    }

    #[test]
    fn reset_makes_held_acks_stale_and_numbers_go_on() {
        let mut a = OrderedAcks::new(8);
        let s1 = a.arrive("a").unwrap();
        let s2 = a.arrive("b").unwrap();
        assert_eq!(released(a.ack(s2)), Vec::<&str>::new());
        assert_eq!(a.reset(), 2);
        assert!(a.is_empty());
        assert_eq!(a.ack(s1), AckOutcome::Stale);
        let s3 = a.arrive("c").unwrap();
        assert_eq!(s3, 3);
        assert_eq!(a.ack(s2), AckOutcome::Stale);
        assert_eq!(released(a.ack(s3)), vec!["c"]);
    }

    #[test]
    fn bounded() {
        let mut a = OrderedAcks::new(2);
        let s1 = a.arrive("a").unwrap();
        a.arrive("b").unwrap();
        assert!(a.is_full());
        assert_eq!(a.arrive("c"), Err("c"));
        assert_eq!(released(a.ack(s1)), vec!["a"]);
        assert!(!a.is_full());
        assert_eq!(a.arrive("c"), Ok(3));
    }
}
