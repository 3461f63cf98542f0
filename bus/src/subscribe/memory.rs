//! An in-memory bus for testing consumers without sockets: [`Delivery`]s made by hand
//! whose acks and in-progress reports are written to a shared [`AckLog`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Ack, AckError, Delivery};

/// What happened to the deliveries of one in-memory bus.
#[derive(Debug, Clone, Default)]
pub struct AckLog(Arc<Mutex<Vec<AckEvent>>>);

/// One ack or in-progress report, by the delivery's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEvent {
    Ack(u64),
    InProgress(u64),
}

impl AckLog {
    /// Every event so far.
    pub fn events(&self) -> Vec<AckEvent> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The tags acked so far, in order.
    pub fn acked(&self) -> Vec<u64> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                AckEvent::Ack(t) => Some(t),
                AckEvent::InProgress(_) => None,
            })
            .collect()
    }

    /// How many in-progress reports `tag` got.
    pub fn in_progress(&self, tag: u64) -> usize {
        self.events()
            .into_iter()
            .filter(|e| *e == AckEvent::InProgress(tag))
            .count()
    }

    /// A delivery on `subject` tagged `tag` (its acks are logged under it), with the
    /// JetStream-like stream sequence `seq` and delivery count `delivered`.
    pub fn delivery(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        tag: u64,
        seq: Option<u64>,
        delivered: u64,
    ) -> Delivery {
        let mut d = Delivery::new(
            subject.to_string(),
            payload.into(),
            delivered,
            seq.map(|s| s.to_string()),
            Ack::Memory(MemoryAck {
                log: self.clone(),
                tag,
            }),
        );
        d.seq = seq;
        d
    }

    fn push(&self, e: AckEvent) -> Result<(), AckError> {
        self.0
            .lock()
            .map(|mut v| v.push(e))
            .map_err(|_| AckError::Stale)
    }
}

#[derive(Debug)]
pub(super) struct MemoryAck {
    log: AckLog,
    tag: u64,
}

impl MemoryAck {
    pub(super) fn ack(self) -> Result<(), AckError> {
        self.log.push(AckEvent::Ack(self.tag))
    }

    pub(super) fn in_progress(&self) -> Result<(), AckError> {
        self.log.push(AckEvent::InProgress(self.tag))
    }
}
