//! Fan-out: every event goes to every output, each through its own bounded queue.
//!
//! `send` never waits: a full queue drops the event for that output only and counts it
//! (`tapbus_dropped_total{reason="queue_full"}`), so one slow or dead bus never slows the
//! others or the socket reads (DESIGN rule 3 and 4).
//!
//! An output with a `filter` gets only the events that match it; the others are counted
//! in `tapbus_filtered_total{output}` and never queued, so for every output
//! `published + dropped + filtered == events`. The event is parsed (the subscribers' view,
//! `tapbus_event::EventView`) once per event, and only when some output has a filter;
//! nothing is allocated for it.

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
    /// The privacy view this output publishes: 0 the event as offered, `k` the `k`-th
    /// of the other views handed to [`Fanout::send`].
    view: usize,
    /// A raw dnstap output: it takes the original frame ([`Event::raw`]); the others never
    /// hold it.
    raw: bool,
}

/// One output's queue, as [`Fanout::new`] takes it.
#[derive(Debug, Clone)]
pub struct OutputQueue {
    pub capacity: usize,
    pub metrics: PublishMetrics,
    pub filter: Option<tapbus_event::Filter>,
    pub view: usize,
    /// A raw dnstap output (`dnstap+file`, `dnstap+tcp`, `dnstap+unix`).
    pub raw: bool,
}

/// The sending side of every output queue. Cheap to clone (one per connection).
#[derive(Debug, Clone)]
pub struct Fanout {
    outputs: Arc<[OutputTx]>,
    /// Some output has a filter: events are parsed before they are offered.
    filtered: bool,
    /// Some output is raw: the session attaches the original frame to each event.
    wants_raw: bool,
    /// Some output publishes the JSON or has a filter: the session encodes the event. When
    /// every output is raw and none filters, the JSON is never built (frames pass through).
    wants_json: bool,
    /// Events offered to the outputs (each to every output): for every output, offered ==
    /// published + dropped + what its queue and its in-flight set hold.
    offered: Arc<AtomicU64>,
}

/// The receiving side handed to one egress task.
pub type EventRx = tapbus_bus::publish::Queue;

impl Fanout {
    /// Creates one queue per output; returns the fan-out and the receivers, in order.
    pub fn new(outputs: Vec<OutputQueue>) -> (Fanout, Vec<EventRx>) {
        let mut txs = Vec::with_capacity(outputs.len());
        let mut rxs = Vec::with_capacity(outputs.len());
        for o in outputs {
            let (tx, rx) = mpsc::channel(o.capacity);
            o.metrics.capacity.set(o.capacity as i64);
            txs.push(OutputTx {
                tx,
                metrics: o.metrics,
                filter: o.filter,
                view: o.view,
                raw: o.raw,
            });
            rxs.push(rx);
        }
        let filtered = txs.iter().any(|o| o.filter.is_some());
        let wants_raw = txs.iter().any(|o| o.raw);
        let wants_json = filtered || txs.iter().any(|o| !o.raw);
        (
            Fanout {
                outputs: txs.into(),
                filtered,
                wants_raw,
                wants_json,
                offered: Arc::new(AtomicU64::new(0)),
            },
            rxs,
        )
    }

    /// Whether events need the original frame ([`Event::raw`]): some output is raw.
    pub fn wants_raw(&self) -> bool {
        self.wants_raw
    }

    /// Whether events need their JSON: some output publishes it or filters on it.
    pub fn wants_json(&self) -> bool {
        self.wants_json
    }

    /// The event as output `o` publishes it: the offered one, or one of the other views;
    /// without the frame unless the output is raw.
    fn for_output(o: &OutputTx, ev: &Event, views: &[bytes::Bytes]) -> Event {
        let mut e = ev.clone();
        raw_for(o, &mut e);
        if o.view > 0
            && let Some(p) = views.get(o.view - 1)
        {
            e.payload = p.clone();
        }
        e
    }

    /// Offers the event to every output without waiting; `views` are the other privacy
    /// views of the same event (the filters read `ev`, the clear one).
    pub fn send_views(&self, ev: Event, views: &[bytes::Bytes]) {
        if views.is_empty() {
            return self.send(ev);
        }
        self.offered.fetch_add(1, Ordering::Relaxed);
        let view = self.filtered.then(|| view(&ev.payload));
        for o in self.outputs.iter() {
            if !wants(o, view.as_ref()) {
                o.metrics.filtered.inc();
                continue;
            }
            match o.tx.try_send(Self::for_output(o, &ev, views)) {
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

    /// Offers the event to every output without waiting.
    pub fn send(&self, ev: Event) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        // The view borrows a handle on the payload (a reference count), not the event.
        let payload = self.filtered.then(|| ev.payload.clone());
        let view = payload.as_deref().map(view);
        let n = self.outputs.len();
        let mut ev = Some(ev);
        for (i, o) in self.outputs.iter().enumerate() {
            if !wants(o, view.as_ref()) {
                o.metrics.filtered.inc();
                continue;
            }
            let e = if i + 1 == n { ev.take() } else { ev.clone() };
            let Some(mut e) = e else { return };
            raw_for(o, &mut e);
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
    pub async fn send_wait(&self, ev: Event, views: &[bytes::Bytes]) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let view = self.filtered.then(|| view(&ev.payload));
        for o in self.outputs.iter() {
            if !wants(o, view.as_ref()) {
                o.metrics.filtered.inc();
                continue;
            }
            if o.tx.send(Self::for_output(o, &ev, views)).await.is_err() {
                o.metrics.dropped_shutdown.inc();
            }
        }
    }

    /// The count of events offered, shared (it outlives the fan-out).
    pub fn offered(&self) -> Arc<AtomicU64> {
        self.offered.clone()
    }

    /// The queue-depth gauges, for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            outputs: self
                .outputs
                .iter()
                .map(|o| (o.tx.downgrade(), o.metrics.clone()))
                .collect(),
        }
    }
}

/// What `/metrics` needs of the queues: their depth. It holds weak senders, so it never
/// keeps a queue open: the queues close (and the outputs drain and end) when the last
/// input's [`Fanout`] is gone, also while the endpoint runs (it held a `Fanout` once, and
/// a broker reading only files waited out its whole `drain_timeout` before exiting).
#[derive(Debug, Clone)]
pub struct Gauges {
    outputs: Arc<[(mpsc::WeakSender<Event>, PublishMetrics)]>,
}

impl Gauges {
    /// Updates the queue-depth gauges (called before `/metrics` is rendered); a closed
    /// queue has depth 0.
    pub fn refresh(&self) {
        for (tx, metrics) in self.outputs.iter() {
            let depth = tx
                .upgrade()
                .map_or(0, |tx| tx.max_capacity() - tx.capacity());
            metrics.depth.set(depth as i64);
        }
    }
}

/// The frame as output `o` holds it: none for a JSON output; for a raw output with a
/// filter, a copy. The frame is a slice of its connection's 256 KiB read buffer and keeps
/// all of it alive: an unfiltered raw output queues consecutive frames, which share their
/// buffers, but a selective filter could leave each queued frame pinning a buffer of its
/// own (16,384 × 256 KiB), so those few frames are copied out instead.
fn raw_for(o: &OutputTx, e: &mut Event) {
    if !o.raw {
        e.raw = None;
    } else if o.filter.is_some()
        && let Some(r) = &e.raw
    {
        e.raw = Some(bytes::Bytes::copy_from_slice(r));
    }
}

/// The subscribers' view of an event, for the filters. An event the view cannot parse
/// (the encoder's own output, so never expected) matches no filter.
fn view(payload: &[u8]) -> Option<tapbus_event::EventView<'_>> {
    tapbus_event::EventView::parse(payload).ok()
}

/// Whether the output takes the event: always without a filter (and then nothing was
/// parsed, `view` is `None`), else when the filter matches the parsed view.
fn wants(o: &OutputTx, view: Option<&Option<tapbus_event::EventView<'_>>>) -> bool {
    match (&o.filter, view) {
        (None, _) => true,
        (Some(f), Some(Some(v))) => f.matches(v),
        (Some(_), _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tapbus_proto::event::Summary;

    fn event(json: &str) -> Event {
        Event::event(
            Bytes::from(json.to_owned()),
            Summary {
                operation: 5,
                ..Summary::default()
            },
        )
    }

    fn op(operation: &str) -> Event {
        event(&format!(
            r#"{{"network":{{}},"dns":{{}},"dnstap":{{"operation":"{operation}"}}}}"#
        ))
    }

    fn output(cap: usize, filter: Option<&str>) -> OutputQueue {
        OutputQueue {
            capacity: cap,
            metrics: PublishMetrics::unregistered(),
            filter: filter.map(|f| tapbus_event::Filter::parse(f).expect("filter")),
            view: 0,
            raw: false,
        }
    }

    #[tokio::test]
    async fn each_output_gets_its_view_and_filters_read_the_clear_one() {
        let mut private = output(10, Some("operation=CLIENT_QUERY"));
        private.view = 1;
        let (f, mut rxs) = Fanout::new(vec![output(10, None), private]);
        let other = Bytes::from_static(b"private");
        f.send_views(op("CLIENT_QUERY"), std::slice::from_ref(&other));
        f.send_views(op("CLIENT_RESPONSE"), std::slice::from_ref(&other));
        f.send_wait(op("CLIENT_QUERY"), std::slice::from_ref(&other))
            .await;
        let clear: Vec<_> = std::iter::from_fn(|| rxs[0].try_recv().ok()).collect();
        let private: Vec<_> = std::iter::from_fn(|| rxs[1].try_recv().ok()).collect();
        assert_eq!(clear.len(), 3);
        assert!(clear.iter().all(|e| e.payload.starts_with(b"{")));
        assert_eq!(private.len(), 2);
        assert!(private.iter().all(|e| e.payload == other));
    }

    #[tokio::test]
    async fn only_raw_outputs_hold_the_frame_and_filtered_ones_copy_it() {
        let raw = |filter| OutputQueue {
            raw: true,
            ..output(10, filter)
        };
        // All raw, no filter: no JSON needed.
        let (f, _rxs) = Fanout::new(vec![raw(None), raw(None)]);
        assert!(f.wants_raw() && !f.wants_json());
        let (f, _rxs) = Fanout::new(vec![raw(Some("operation=CLIENT_QUERY"))]);
        assert!(f.wants_raw() && f.wants_json());
        let (f, mut rxs) = Fanout::new(vec![
            output(10, None),
            raw(None),
            raw(Some("operation=CLIENT_QUERY")),
        ]);
        assert!(f.wants_raw() && f.wants_json());
        let buffer = Bytes::from_static(b"..frame..");
        let frame = buffer.slice(2..7);
        for send in 0..3 {
            let mut ev = op("CLIENT_QUERY");
            ev.raw = Some(frame.clone());
            match send {
                0 => f.send(ev),
                1 => f.send_views(ev, &[Bytes::from_static(b"v")]),
                _ => f.send_wait(ev, &[]).await,
            }
        }
        for _ in 0..3 {
            let json = rxs[0].try_recv().expect("json output");
            assert_eq!(json.raw, None);
            let r = rxs[1].try_recv().expect("raw output");
            // The same bytes of the same buffer: no copy.
            assert_eq!(r.raw.as_ref().map(|b| b.as_ptr()), Some(frame.as_ptr()));
            let c = rxs[2].try_recv().expect("filtered raw output");
            assert_eq!(c.raw.as_deref(), Some(&b"frame"[..]));
            assert_ne!(c.raw.as_ref().map(|b| b.as_ptr()), Some(frame.as_ptr()));
        }
    }

    #[test]
    fn every_output_gets_every_event_until_its_queue_is_full() {
        let (f, mut rxs) = Fanout::new(vec![output(5, None), output(100, None)]);
        for _ in 0..20 {
            f.send(op("CLIENT_QUERY"));
        }
        let got: Vec<usize> = rxs
            .iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count())
            .collect();
        assert_eq!(got, [5, 20]);
        assert_eq!(f.outputs[0].metrics.dropped_full.get(), 15);
        assert_eq!(f.outputs[1].metrics.dropped_full.get(), 0);
        assert_eq!(f.offered().load(Ordering::Relaxed), 20);
        // The gauges: the first queue was full, both are empty now.
        f.gauges().refresh();
        assert_eq!(f.outputs[0].metrics.depth.get(), 0);
        assert_eq!(f.outputs[0].metrics.capacity.get(), 5);
    }

    #[test]
    fn the_gauges_show_depth_and_never_keep_a_queue_open() {
        let (f, mut rxs) = Fanout::new(vec![output(10, None)]);
        let gauges = f.gauges();
        let depth = f.outputs[0].metrics.depth.clone();
        for _ in 0..3 {
            f.send(op("CLIENT_QUERY"));
        }
        gauges.refresh();
        assert_eq!(depth.get(), 3);
        // The last fan-out handle gone: the output sees its queue end after what it
        // holds, although the gauges live on.
        drop(f);
        let mut n = 0;
        loop {
            match rxs[0].try_recv() {
                Ok(_) => n += 1,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => panic!("the queue is still open"),
            }
        }
        assert_eq!(n, 3);
        gauges.refresh();
        assert_eq!(depth.get(), 0);
    }

    #[test]
    fn a_closed_output_counts_shutdown_drops_and_the_others_go_on() {
        let (f, mut rxs) = Fanout::new(vec![output(10, None), output(10, None)]);
        drop(rxs.remove(0));
        f.send(op("CLIENT_QUERY"));
        assert_eq!(f.outputs[0].metrics.dropped_shutdown.get(), 1);
        assert!(rxs[0].try_recv().is_ok());
    }

    #[test]
    fn filters_count_what_they_leave_out() {
        let (f, mut rxs) = Fanout::new(vec![
            output(100, Some("operation=CLIENT_RESPONSE")),
            output(100, None),
            output(100, Some("operation=CLIENT_QUERY")),
        ]);
        for i in 0..10 {
            f.send(op(if i % 3 == 0 {
                "CLIENT_RESPONSE"
            } else {
                "CLIENT_QUERY"
            }));
        }
        // Not an event: no filter matches it, the unfiltered output still gets it.
        f.send(event("not json"));
        let got: Vec<usize> = rxs
            .iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count())
            .collect();
        assert_eq!(got, [4, 11, 6]);
        let filtered: Vec<u64> = f.outputs.iter().map(|o| o.metrics.filtered.get()).collect();
        assert_eq!(filtered, [7, 0, 5]);
        // published (here: queued) + dropped + filtered == offered, for every output.
        for (o, n) in f.outputs.iter().zip(got) {
            assert_eq!(
                n as u64 + o.metrics.dropped() + o.metrics.filtered.get(),
                11
            );
        }
    }

    #[tokio::test]
    async fn send_wait_waits_for_room_instead_of_dropping() {
        let (f, mut rxs) = Fanout::new(vec![
            output(2, None),
            output(2, Some("operation=CLIENT_RESPONSE")),
        ]);
        let mut rx = rxs.remove(0);
        let sender = {
            let f = f.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    f.send_wait(op("CLIENT_QUERY"), &[]).await;
                }
            })
        };
        let mut n = 0;
        while n < 50 {
            rx.recv().await.expect("event");
            n += 1;
        }
        sender.await.expect("sender");
        assert_eq!(f.outputs[0].metrics.dropped(), 0);
        assert_eq!(f.outputs[1].metrics.filtered.get(), 50);
        assert!(rxs[0].try_recv().is_err());
    }
}
