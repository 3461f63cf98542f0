//! Fan-out: every event goes to every output, each through its own bounded queue.
//!
//! `send` never waits: a full queue drops the event for that output only and counts it
//! (`tapbus_dropped_total{reason="queue_full"}`), so one slow or dead bus never slows the
//! others or the socket reads (DESIGN rule 3 and 4).
//!
//! An output with a `filter` gets only the events that match it; the others are counted
//! in `tapbus_filtered_total{output}` and never queued, so for every output
//! `published + dropped + filtered == events`. The event is parsed (the subscribers' view,
//! `tapbus_event::EventView`) once per event, and only when some output has a filter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tapbus_bus::metrics::PublishMetrics;
use tokio::sync::mpsc;

/// One encoded event: the JSON bytes (shared by every output) and what routing needs.
pub use tapbus_bus::publish::Message as Event;

#[derive(Debug)]
struct OutputTx {
    tx: mpsc::Sender<Event>,
    metrics: PublishMetrics,
    filter: Option<tapbus_event::Filter>,
}

/// The sending side of every output queue. Cheap to clone (one per connection).
#[derive(Debug, Clone)]
pub struct Fanout {
    outputs: Arc<[OutputTx]>,
    /// Some output has a filter: events are parsed before they are offered.
    filtered: bool,
    /// Events offered to the outputs (each to every output): for every output, offered ==
    /// published + dropped + what its queue and its in-flight set hold.
    offered: Arc<AtomicU64>,
}

/// The receiving side handed to one egress task.
pub type EventRx = tapbus_bus::publish::Queue;

impl Fanout {
    /// Creates one queue per output; returns the fan-out and the receivers, in order.
    pub fn new(
        outputs: Vec<(usize, PublishMetrics, Option<tapbus_event::Filter>)>,
    ) -> (Fanout, Vec<EventRx>) {
        let mut txs = Vec::with_capacity(outputs.len());
        let mut rxs = Vec::with_capacity(outputs.len());
        for (cap, metrics, filter) in outputs {
            let (tx, rx) = mpsc::channel(cap);
            metrics.capacity.set(cap as i64);
            txs.push(OutputTx {
                tx,
                metrics,
                filter,
            });
            rxs.push(rx);
        }
        let filtered = txs.iter().any(|o| o.filter.is_some());
        (
            Fanout {
                outputs: txs.into(),
                filtered,
                offered: Arc::new(AtomicU64::new(0)),
            },
            rxs,
        )
    }

    /// Offers the event to every output without waiting.
    pub fn send(&self, ev: Event) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let keep = self.wanted(&ev);
        let n = self.outputs.len();
        let mut ev = Some(ev);
        for (i, o) in self.outputs.iter().enumerate() {
            if keep.as_ref().is_some_and(|k| !k[i]) {
                o.metrics.filtered.inc();
                continue;
            }
            let e = if i + 1 == n { ev.take() } else { ev.clone() };
            let Some(e) = e else { return };
            match o.tx.try_send(e) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    o.metrics.dropped_full.inc();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    o.metrics.dropped_shutdown.inc();
                }
            }
        }
    }

    /// Offers the event to every output, waiting for room. Only for inputs that have no
    /// sender to stall (files): a replay publishes everything instead of dropping.
    pub async fn send_wait(&self, ev: Event) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let keep = self.wanted(&ev);
        for (i, o) in self.outputs.iter().enumerate() {
            if keep.as_ref().is_some_and(|k| !k[i]) {
                o.metrics.filtered.inc();
                continue;
            }
            if o.tx.send(ev.clone()).await.is_err() {
                o.metrics.dropped_shutdown.inc();
            }
        }
    }

    /// Which outputs want the event: `None` for all (no output has a filter: nothing is
    /// parsed or allocated). An event the view cannot parse (the encoder's own output, so
    /// never expected) matches no filter.
    fn wanted(&self, ev: &Event) -> Option<Vec<bool>> {
        if !self.filtered {
            return None;
        }
        let view = tapbus_event::EventView::parse(&ev.payload).ok();
        self.outputs
            .iter()
            .map(|o| match (&o.filter, &view) {
                (None, _) => true,
                (Some(f), Some(v)) => f.matches(v),
                (Some(_), None) => false,
            })
            .collect::<Vec<bool>>()
            .into()
    }

    /// The count of events offered, shared (it outlives the fan-out).
    pub fn offered(&self) -> Arc<AtomicU64> {
        self.offered.clone()
    }

    /// Updates the queue-depth gauges (called before `/metrics` is rendered).
    pub fn refresh_gauges(&self) {
        for o in self.outputs.iter() {
            let depth = o.tx.max_capacity() - o.tx.capacity();
            o.metrics.depth.set(depth as i64);
        }
    }
}
