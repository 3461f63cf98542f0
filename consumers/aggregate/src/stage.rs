//! The arrow bus --events--> aggregate as a runtime [`Stage`]: each event is counted into
//! the [`Aggregator`] at once; with an output, it is held until the next metric batch that
//! counts it was confirmed by the bus (one batch every `interval`, or at `max_pending`);
//! without one, the scrape is the downstream and it is acked once counted.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tapbus_consumer::sink::Record;
use tapbus_consumer::{Flush, Flushed, Msg, Stage, Verdict};
use tapbus_event::EventView;
use tokio::time::Instant;

use crate::{Aggregator, batch};

/// Where metric batches go (none: scrape only).
#[derive(Debug, Clone)]
pub struct Batches {
    pub instance: String,
    pub interval: Duration,
}

/// The aggregate stage. The [`Aggregator`] is shared with the `/metrics` handler.
#[derive(Debug)]
pub struct AggregateStage {
    agg: Arc<Mutex<Aggregator>>,
    out: Option<Out>,
}

#[derive(Debug)]
struct Out {
    subject: Arc<str>,
    instance: String,
    interval: Duration,
    next: Instant,
    /// The token of events counted since the last batch; the next batch covers it.
    token: u64,
    unbatched: bool,
    /// The last batch sequence (never repeats across restarts: the clock, kept
    /// increasing).
    seq: u64,
}

impl AggregateStage {
    pub fn new(agg: Arc<Mutex<Aggregator>>, batches: Option<Batches>, now: Instant) -> Self {
        AggregateStage {
            agg,
            out: batches.map(|b| Out {
                subject: batch::subject(&b.instance).into(),
                instance: b.instance,
                interval: b.interval,
                next: now + b.interval,
                token: 0,
                unbatched: false,
                seq: 0,
            }),
        }
    }

    fn make_batch(&mut self, now: Instant, now_ms: i64) -> Option<Flushed<Vec<Record>>> {
        let out = self.out.as_mut()?;
        out.seq = (out.seq + 1).max(u64::try_from(now_ms).unwrap_or(0));
        let mut body = Vec::with_capacity(64 * 1024);
        self.agg
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_batch_json(now_ms, out.seq, &mut body);
        let rec = Record {
            subject: out.subject.clone(),
            payload: Bytes::from(body),
            id: Some(batch::message_id(&out.instance, out.seq).into()),
        };
        out.token += 1;
        out.unbatched = false;
        out.next = now + out.interval;
        Some(Flushed {
            batch: vec![rec],
            covers: out.token,
        })
    }
}

impl Stage for AggregateStage {
    type Batch = Vec<Record>;

    fn push(&mut self, msg: Msg<'_>, _now: Instant) -> Verdict {
        let v = match EventView::parse(msg.payload) {
            Ok(v) => v,
            Err(e) => return Verdict::Bad(not_an_event(msg.subject, &e)),
        };
        // A panic elsewhere while the lock was held leaves counters that are still
        // counters: go on with them rather than ack what was never counted.
        self.agg
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(&v);
        match self.out.as_mut() {
            None => Verdict::Ack,
            Some(o) => {
                o.unbatched = true;
                Verdict::Hold(o.token)
            }
        }
    }

    fn due(&self) -> Option<Instant> {
        self.out.as_ref().map(|o| o.next)
    }

    fn flush(&mut self, now: Instant, why: Flush) -> Option<Flushed<Vec<Record>>> {
        let out = self.out.as_ref()?;
        // Every interval a batch goes out (the state is cumulative: an idle one keeps the
        // series fresh downstream); at the bound or at stop only if something waits.
        if why == Flush::All && !out.unbatched {
            return None;
        }
        if why == Flush::Due && now < out.next {
            return None;
        }
        self.make_batch(now, tapbus_consumer::now_ms())
    }
}

/// Why a message is not read, naming what it looks like when it is another tapbus
/// message.
pub fn not_an_event(subject: &str, err: &dyn std::fmt::Display) -> String {
    if subject.starts_with("tapbus.metrics") || subject.starts_with("tapbus/metrics") {
        format!(
            "a metric batch on {subject}, not a dnstap event: read dnstap.> (tapbus-mimir reads tapbus.metrics.>)"
        )
    } else if subject.starts_with("tapbus.reduced") || subject.starts_with("tapbus/reduced") {
        format!("a reduced record on {subject}, not a dnstap event: read dnstap.>")
    } else {
        err.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AggregateConfig;

    fn stage(out: bool) -> AggregateStage {
        let spec = AggregateConfig {
            instance: "t".into(),
            ..AggregateConfig::default()
        }
        .validate("aggregate")
        .expect("defaults");
        AggregateStage::new(
            Arc::new(Mutex::new(Aggregator::new(spec))),
            out.then(|| Batches {
                instance: "t".into(),
                interval: Duration::from_secs(10),
            }),
            Instant::now(),
        )
    }

    const EVENT: &[u8] = br#"{"network":{"family":"INET","protocol":"UDP","query-ip":"192.0.2.1","query-port":5353,"response-ip":"192.0.2.53","response-port":53},"dns":{"length":40,"id":1,"opcode":0,"rcode":"NOERROR","qname":"example.com","qtype":"A","qclass":"IN"},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns1","timestamp-rfc3339ns":"2026-11-22T02:41:38.535458000Z","timestamp":1795315298535458000}}"#;

    fn msg<'a>(subject: &'a str, p: &'a Bytes) -> Msg<'a> {
        Msg {
            subject,
            payload: p,
            input: 0,
        }
    }

    #[test]
    fn without_an_output_counted_is_done() {
        let mut s = stage(false);
        let p = Bytes::from_static(EVENT);
        let v = s.push(msg("dnstap.ns1", &p), Instant::now());
        assert_eq!(v, Verdict::Ack);
        assert_eq!(s.due(), None);
        assert!(s.flush(Instant::now(), Flush::All).is_none());
    }

    #[test]
    fn with_an_output_events_wait_for_the_batch_that_counts_them() {
        let mut s = stage(true);
        let now = Instant::now();
        let p = Bytes::from_static(b"{}");
        let bad = s.push(msg("tapbus.metrics.x", &p), now);
        assert!(
            matches!(&bad, Verdict::Bad(w) if w.contains("metric batch")),
            "{bad:?}"
        );
        assert!(s.flush(now, Flush::All).is_none(), "nothing held");
        assert!(s.flush(now, Flush::Due).is_none(), "not due");
        let ev = Bytes::from_static(EVENT);
        let t0 = match s.push(msg("dnstap.x", &ev), now) {
            Verdict::Hold(t) => t,
            v => panic!("{v:?}"),
        };
        let f = s.flush(now, Flush::All).expect("a batch");
        assert!(f.covers > t0);
        assert_eq!(f.batch.len(), 1);
        assert!(f.batch[0].subject.starts_with("tapbus.metrics."));
        assert!(f.batch[0].id.is_some());
        let t1 = match s.push(msg("dnstap.x", &ev), now) {
            Verdict::Hold(t) => t,
            v => panic!("{v:?}"),
        };
        assert!(t1 >= f.covers, "a later event waits for the next batch");
        // Due every interval, even idle.
        let later = now + Duration::from_secs(10);
        assert_eq!(s.due(), Some(later));
        let g = s.flush(later, Flush::Due).expect("due");
        assert!(g.covers > t1);
        assert!(s.flush(later, Flush::All).is_none());
        let ids: Vec<_> = [&f, &g].iter().map(|x| x.batch[0].id.clone()).collect();
        assert_ne!(ids[0], ids[1], "each batch its own id");
    }
}
