//! The arrow bus --events--> reduce --records--> `tapbus.reduced.<reduction>` as a runtime
//! [`Stage`]: each event is placed in its windows at once and held until the records of
//! the close that settles it ([`crate::Placed::settles_with`]) were confirmed by the bus;
//! events no reduction wants, or without a timestamp, are acked at once. Closes go out in
//! order, each one retried (same record ids: a JetStream stream drops the copies) before
//! anything newer. When the input has been idle for `idle_flush`, and at `max_pending` or
//! stop, every open window is closed (`close_all`; events for it that come later make
//! late records, so sums stay exact).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tapbus_consumer::sink::Record as BusRecord;
use tapbus_consumer::{Flush, Flushed, Msg, Stage, Verdict};
use tapbus_event::EventView;
use tokio::time::Instant;

use crate::{Record, Reducer, Stats};

/// The reduce stage.
#[derive(Debug)]
pub struct ReduceStage {
    reducer: Reducer,
    /// Closes made and not yet handed to the sink, oldest first.
    ready: VecDeque<(Vec<Record>, u64)>,
    idle_flush: Duration,
    last_event: Instant,
    idle_closed: bool,
    /// MQTT topics are `/`-separated.
    slashes: bool,
    stats: Arc<Mutex<Stats>>,
}

impl ReduceStage {
    pub fn new(reducer: Reducer, idle_flush: Duration, slashes: bool, now: Instant) -> Self {
        let stats = Arc::new(Mutex::new(reducer.stats()));
        ReduceStage {
            reducer,
            ready: VecDeque::new(),
            idle_flush,
            last_event: now,
            idle_closed: true,
            slashes,
            stats,
        }
    }

    /// The reducer's counters for `/metrics` (`tapbus_reduce_*`), refreshed after each
    /// run of messages.
    pub fn collector(&self) -> ReduceMetrics {
        ReduceMetrics(self.stats.clone())
    }

    fn batch(&self, records: Vec<Record>, covers: u64) -> Flushed<Vec<BusRecord>> {
        let batch = records
            .iter()
            .map(|r| BusRecord {
                subject: if self.slashes {
                    r.subject.replace('.', "/").into()
                } else {
                    r.subject.as_str().into()
                },
                payload: Bytes::from(r.to_json()),
                id: Some(r.id.as_str().into()),
            })
            .collect();
        Flushed { batch, covers }
    }
}

impl Stage for ReduceStage {
    type Batch = Vec<BusRecord>;

    fn push(&mut self, msg: Msg<'_>, now: Instant) -> Verdict {
        let v = match EventView::parse(msg.payload) {
            Ok(v) => v,
            Err(e) => {
                return Verdict::Bad(format!("not a tapbus event on {}: {e}", msg.subject));
            }
        };
        self.last_event = now;
        self.idle_closed = false;
        let verdict = match self.reducer.push(&v).settles_with() {
            None => Verdict::Ack,
            Some(b) => Verdict::Hold(b),
        };
        let mut records = Vec::new();
        if let Some(boundary) = self.reducer.advance(&mut records) {
            self.ready.push_back((records, boundary));
        }
        verdict
    }

    fn due(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            Some(self.last_event)
        } else if !self.idle_closed {
            Some(self.last_event + self.idle_flush)
        } else {
            None
        }
    }

    fn flush(&mut self, now: Instant, why: Flush) -> Option<Flushed<Vec<BusRecord>>> {
        if let Some((records, boundary)) = self.ready.pop_front() {
            return Some(self.batch(records, boundary));
        }
        // Only when an event came since the last close_all (which always answers a
        // boundary once any event was placed).
        let idle = now >= self.last_event + self.idle_flush;
        if !self.idle_closed && (why == Flush::All || idle) {
            self.idle_closed = true;
            let mut records = Vec::new();
            if let Some(boundary) = self.reducer.close_all(&mut records) {
                return Some(self.batch(records, boundary));
            }
        }
        None
    }

    fn sync_metrics(&mut self) {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.reducer.stats();
    }
}

/// `tapbus_reduce_*`, from the stage's last snapshot of [`Stats`].
#[derive(Debug)]
pub struct ReduceMetrics(Arc<Mutex<Stats>>);

impl Collector for ReduceMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let counters: [(&str, &str, u64); 11] = [
            ("tapbus_reduce_events", "events pushed", st.events),
            (
                "tapbus_reduce_filtered",
                "events no reduction wanted",
                st.filtered,
            ),
            (
                "tapbus_reduce_grouped",
                "(event, reduction) placements into a keyed group",
                st.grouped,
            ),
            (
                "tapbus_reduce_late",
                "events that came after their window closed (late records)",
                st.late,
            ),
            (
                "tapbus_reduce_overflow",
                "(event, reduction) placements into an overflow group (max_groups reached)",
                st.overflow,
            ),
            (
                "tapbus_reduce_rejected_full",
                "(event, reduction) placements refused: group and overflow bounds full",
                st.rejected_full,
            ),
            (
                "tapbus_reduce_rejected_full_events",
                "events refused for every reduction they matched",
                st.rejected_full_events,
            ),
            (
                "tapbus_reduce_no_timestamp",
                "events without a timestamp (acked, not reduced)",
                st.no_timestamp,
            ),
            (
                "tapbus_reduce_rejected_future",
                "events too far ahead of the watermark",
                st.rejected_future,
            ),
            (
                "tapbus_reduce_jumps",
                "times the watermark followed a sustained jump of event time",
                st.jumps,
            ),
            ("tapbus_reduce_records", "records emitted", st.records),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        let gauges: [(&str, &str, u64); 2] = [
            (
                "tapbus_reduce_open_groups",
                "groups held now (keyed and overflow)",
                st.open_groups,
            ),
            (
                "tapbus_reduce_open_windows",
                "windows held now (on-time and pending late ones)",
                st.open_windows,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
    }
}
