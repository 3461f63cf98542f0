//! The arrows bus --metric batches--> mimir --remote write--> Mimir/Prometheus as a
//! runtime [`Stage`] and [`Sink`]: each batch message becomes one remote-write request
//! (encoded at once, so a message that is not a batch is refused before anything is
//! sent), held until the receiver answered; requests go in bus order, one at a time, so
//! each series' samples arrive in time order. 2xx: written; 429, 5xx and no answer: sent
//! again (the runtime's retry policy, in-progress acks meanwhile); any other status:
//! dropped for good and counted by reason (Mimir's `err-mimir-*` id or `http_<status>`).

use std::collections::VecDeque;
use std::time::Duration;
use tapbus_consumer::metrics::ByReason;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tapbus_consumer::sink::http;
use tapbus_consumer::{Attempt, Flush, Flushed, Msg, Sink, Stage, Verdict};
use tokio::time::Instant;

use crate::write;

/// One remote-write request: the snappy body and its sample count.
#[derive(Debug, Clone)]
pub struct Request {
    pub body: bytes::Bytes,
    pub samples: usize,
}

/// The mimir stage: one request per batch message, in order.
#[derive(Debug, Default)]
pub struct MimirStage {
    queue: VecDeque<(u64, Request)>,
    next: u64,
    now: Option<Instant>,
}

impl Stage for MimirStage {
    type Batch = Request;

    fn push(&mut self, msg: Msg<'_>, now: Instant) -> Verdict {
        match write::parse(msg.payload).and_then(|b| write::encode(&b)) {
            Ok((body, samples)) => {
                let t = self.next;
                self.next += 1;
                self.queue.push_back((
                    t,
                    Request {
                        body: body.into(),
                        samples,
                    },
                ));
                self.now = Some(now);
                Verdict::Hold(t)
            }
            Err(e) => Verdict::Bad(if msg.subject.starts_with("dnstap") {
                format!(
                    "a dnstap event on {}, not a metric batch: tapbus-mimir reads tapbus.metrics.> (what tapbus-aggregate --output publishes)",
                    msg.subject
                )
            } else {
                format!("not a metric batch on {}: {e}", msg.subject)
            }),
        }
    }

    fn due(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            None
        } else {
            self.now
        }
    }

    fn flush(&mut self, _now: Instant, _why: Flush) -> Option<Flushed<Request>> {
        let (t, batch) = self.queue.pop_front()?;
        Some(Flushed {
            batch,
            covers: t + 1,
        })
    }
}

/// The `outcome` of a remote-write request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// `tapbus_mimir_*`.
#[derive(Debug, Clone)]
pub struct MimirMetrics {
    samples: Counter,
    requests: Family<Outcome, Counter>,
    retries: Counter,
    dropped: ByReason,
}

impl Default for MimirMetrics {
    fn default() -> Self {
        let requests = Family::default();
        // Every outcome exported at 0 from the start.
        for outcome in ["written", "retried", "refused"] {
            let _ = requests.get_or_create(&Outcome { outcome });
        }
        MimirMetrics {
            samples: Counter::default(),
            requests,
            retries: Counter::default(),
            dropped: ByReason::new(KNOWN),
        }
    }
}

/// Refusal reasons exported at 0 from the start.
const KNOWN: &[&str] = &["http_400", "http_401", "http_403", "http_404", "http_413"];

impl MimirMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tapbus_mimir_samples",
            "samples in requests the receiver took (2xx)",
            self.samples.clone(),
        );
        r.register(
            "tapbus_mimir_requests",
            "remote-write requests sent, by outcome: written (2xx), retried (429, 5xx or no answer), refused (any other status: the batch is dropped)",
            self.requests.clone(),
        );
        r.register(
            "tapbus_mimir_retries",
            "requests sent again after 429, 5xx or no answer",
            self.retries.clone(),
        );
        self.dropped.register(
            r,
            "tapbus_mimir_dropped",
            "batches the receiver refused for good, by Mimir's err-mimir-* id or http_<status>",
        );
    }

    fn drop_batch(&self, reason: &str) {
        self.dropped.inc_by(reason, 1);
    }
}

/// POSTs each request to the remote-write endpoint.
#[derive(Debug)]
pub struct MimirSink {
    http: reqwest::Client,
    to: http::Target,
    metrics: MimirMetrics,
}

impl MimirSink {
    pub fn new(
        to: http::Target,
        timeout: Duration,
        metrics: MimirMetrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("tapbus-mimir/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(MimirSink { http, to, metrics })
    }
}

impl Sink<Request> for MimirSink {
    async fn send(&mut self, r: &Request) -> Attempt {
        let req = self
            .to
            .post(&self.http)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(r.body.clone());
        let m = &self.metrics;
        let (_, a) = http::push(req, |status, body| {
            if (200..300).contains(&status) {
                return Attempt::Done;
            }
            let reason = write::refusal_reason(status, body);
            m.drop_batch(&reason);
            tracing::warn!(status, %reason, "remote write refused a batch; dropped: {}", body.trim());
            Attempt::Dropped { reason }
        })
        .await;
        let outcome = match &a {
            Attempt::Done => {
                m.samples.inc_by(r.samples as u64);
                "written"
            }
            Attempt::Retry { .. } => {
                m.retries.inc();
                "retried"
            }
            Attempt::Dropped { .. } => "refused",
        };
        m.requests.get_or_create(&Outcome { outcome }).inc();
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_batch_in_order_and_events_are_named() {
        let mut s = MimirStage::default();
        let now = Instant::now();
        let b = |seq: u64| {
            bytes::Bytes::from(format!(
                r#"{{"instance":"a","seq":{seq},"timestamp_ms":1000,"series":[{{"name":"up","value":1}}]}}"#
            ))
        };
        let (p1, p2) = (b(1), b(2));
        let m = |p| Msg {
            subject: "tapbus.metrics.a",
            payload: p,
            input: 0,
        };
        assert_eq!(s.push(m(&p1), now), Verdict::Hold(0));
        assert_eq!(s.push(m(&p2), now), Verdict::Hold(1));
        let ev = bytes::Bytes::from_static(br#"{"dnstap":{}}"#);
        let bad = s.push(
            Msg {
                subject: "dnstap.ns1",
                payload: &ev,
                input: 0,
            },
            now,
        );
        assert!(
            matches!(&bad, Verdict::Bad(w) if w.contains("tapbus.metrics.>")),
            "{bad:?}"
        );
        assert_eq!(s.due(), Some(now));
        let f = s.flush(now, Flush::Due).expect("first");
        assert_eq!((f.covers, f.batch.samples), (1, 1));
        assert_eq!(s.flush(now, Flush::Due).expect("second").covers, 2);
        assert!(s.flush(now, Flush::All).is_none());
        assert_eq!(s.due(), None);
    }

    #[test]
    fn refusal_reasons_are_bounded_and_known_ones_start_at_zero() {
        let m = MimirMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        assert!(
            text.contains("tapbus_mimir_dropped_total{reason=\"http_400\"} 0"),
            "{text}"
        );
        assert!(text.contains("tapbus_mimir_retries_total 0"), "{text}");
        for i in 0..100 {
            m.drop_batch(&format!("err-mimir-{i}"));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        assert!(
            text.contains("tapbus_mimir_dropped_total{reason=\"other\"} 36"),
            "{text}"
        );
    }
}
