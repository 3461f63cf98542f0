//! The arrow bus (`dnstap.>` events, `tapbus.reduced.>` records) --> Loki push API as a
//! runtime [`Stage`] and [`Sink`]. Each message becomes one line of a batch grouped by
//! stream ([`crate::labels`], [`crate::batch`]) until `batch_max_bytes` or `batch_wait`;
//! the runtime keeps one push in flight while the next batch fills (so each stream's lines
//! reach Loki in order) and acks a batch's messages once Loki answered: 2xx, 400 (Loki
//! stored the valid entries; the refused ones are counted by Loki's reason and never sent
//! again) and other 4xx (dropped, counted as `http_<status>`). 429, 5xx and no answer are
//! retried with the same body (the shared policy, `Retry-After` honoured), with
//! in-progress acks meanwhile.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tapbus_consumer::metrics::ByReason;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tapbus_consumer::sink::http;
use tapbus_consumer::{Attempt, Flush, Flushed, Msg, Sink, Stage, Verdict};
use tokio::time::Instant;

use crate::batch::{Batch, Sealed};
use crate::labels::Labeler;
use crate::push::{Encoder, Encoding};
use crate::response::{self, Outcome, StreamInfo};

/// `timestamp`: which time a line gets in Loki.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stamp {
    /// The event's dnstap time (a re-push after a crash is a copy Loki drops).
    Event,
    /// The time tapbus-loki read it.
    Received,
}

/// A sealed batch and its number (the sink encodes each batch once).
#[derive(Debug)]
pub struct LokiBatch {
    pub n: u64,
    pub sealed: Sealed<()>,
}

/// The loki stage.
#[derive(Debug)]
pub struct LokiStage {
    labeler: Labeler,
    stamp: Stamp,
    max_bytes: usize,
    wait: Duration,
    batch: Batch<()>,
    ready: VecDeque<LokiBatch>,
    /// The number of the batch filling now (its messages hold this token).
    n: u64,
    selector: String,
    metrics: LokiMetrics,
    /// The time of the last push (what `due` answers when a batch must go at once).
    last: Instant,
    /// Client addresses transformed before anything is read from the line.
    privacy: Option<tapbus_privacy::Pseudonymizer>,
    rewritten: Vec<u8>,
}

impl LokiStage {
    pub fn new(
        labeler: Labeler,
        stamp: Stamp,
        max_bytes: usize,
        wait: Duration,
        metrics: LokiMetrics,
    ) -> Self {
        LokiStage {
            labeler,
            stamp,
            max_bytes,
            wait,
            batch: Batch::new(),
            ready: VecDeque::new(),
            n: 0,
            selector: String::with_capacity(256),
            metrics,
            last: Instant::now(),
            privacy: None,
            rewritten: Vec::new(),
        }
    }

    /// Lines show client addresses through `p` (`[privacy]`).
    pub fn with_privacy(mut self, p: Option<tapbus_privacy::Pseudonymizer>) -> Self {
        self.privacy = p;
        self
    }

    fn seal(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let sealed = self.batch.seal();
        self.ready.push_back(LokiBatch { n: self.n, sealed });
        self.n += 1;
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads one message: its stream (into `selector`), timestamp and metadata; `None` if it
/// is neither an event nor a record.
pub fn line_of(
    labeler: &Labeler,
    stamp: Stamp,
    subject: &str,
    payload: &[u8],
    selector: &mut String,
) -> Option<(i64, Vec<(&'static str, String)>)> {
    let (ts, meta) = labeler.line(subject, payload, selector)?;
    let ts = match stamp {
        Stamp::Event => ts.unwrap_or_else(now_ns),
        Stamp::Received => now_ns(),
    };
    Some((ts, meta))
}

impl Stage for LokiStage {
    type Batch = LokiBatch;

    fn push(&mut self, msg: Msg<'_>, now: Instant) -> Verdict {
        self.metrics.lines.inc();
        self.last = now;
        let payload = match &self.privacy {
            None => msg.payload.clone(),
            Some(p) => {
                self.rewritten.clear();
                if let Err(e) = crate::privacy::rewrite(msg.payload, p, &mut self.rewritten) {
                    self.metrics.dropped("bad_message", 1);
                    return Verdict::Bad(format!("{e} (on {})", msg.subject));
                }
                bytes::Bytes::copy_from_slice(&self.rewritten)
            }
        };
        let Some((ts, meta)) = line_of(
            &self.labeler,
            self.stamp,
            msg.subject,
            &payload,
            &mut self.selector,
        ) else {
            self.metrics.dropped("bad_message", 1);
            return Verdict::Bad(if msg.subject.starts_with("tapbus.metrics") {
                format!(
                    "a metric batch on {}, not an event or reduced record: read dnstap.> or tapbus.reduced.> (tapbus-mimir reads tapbus.metrics.>)",
                    msg.subject
                )
            } else {
                format!("not a tapbus event or reduced record on {}", msg.subject)
            });
        };
        if self.batch.would_overflow(payload.len(), self.max_bytes) {
            self.seal();
        }
        let selector = std::mem::take(&mut self.selector);
        self.batch
            .add(now.into_std(), &selector, ts, payload, meta, ());
        self.selector = selector;
        Verdict::Hold(self.n)
    }

    fn due(&self) -> Option<Instant> {
        if !self.ready.is_empty() || self.batch.line_bytes() >= self.max_bytes {
            return Some(self.last);
        }
        self.batch.deadline(self.wait).map(Instant::from_std)
    }

    fn flush(&mut self, now: Instant, why: Flush) -> Option<Flushed<LokiBatch>> {
        if self.ready.is_empty()
            && (why == Flush::All
                || self.batch.line_bytes() >= self.max_bytes
                || self.batch.due(now.into_std(), self.wait))
        {
            self.seal();
        }
        let b = self.ready.pop_front()?;
        let covers = b.n + 1;
        Some(Flushed { batch: b, covers })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

/// `tapbus_loki_*`, every known label value at 0 from the start.
#[derive(Debug, Clone)]
pub struct LokiMetrics {
    lines: Counter,
    pushed: Counter,
    requests: Family<Status, Counter>,
    retries: Counter,
    dropped: ByReason,
    batch_lines: Histogram,
    batch_bytes: Histogram,
    push_duration: Histogram,
}

/// Why lines are not stored: Loki's reasons (`response::refusals`) and ours.
pub const REASONS: &[&str] = &[
    "bad_message",
    "encode_error",
    "blocked_ingestion",
    "http_400",
    "unknown",
    "disallowed_structured_metadata",
    "duplicate_label_names",
    "greater_than_max_sample_age",
    "invalid_labels",
    "label_name_too_long",
    "label_value_too_long",
    "line_too_long",
    "missing_enforced_labels",
    "missing_labels",
    "structured_metadata_too_large",
    "structured_metadata_too_many",
    "too_far_in_future",
];

impl Default for LokiMetrics {
    fn default() -> Self {
        LokiMetrics {
            lines: Counter::default(),
            pushed: Counter::default(),
            requests: Family::default(),
            retries: Counter::default(),
            dropped: ByReason::new(REASONS),
            batch_lines: Histogram::new([
                1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0,
            ]),
            batch_bytes: Histogram::new([
                1024.0, 16384.0, 65536.0, 262144.0, 524288.0, 1048576.0, 2097152.0, 4194304.0,
                16777216.0, 67108864.0,
            ]),
            push_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        }
    }
}

impl LokiMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tapbus_loki_lines",
            "messages taken from the bus (each becomes a line, or is dropped as bad_message)",
            self.lines.clone(),
        );
        r.register(
            "tapbus_loki_pushed_lines",
            "lines in requests Loki answered 2xx or 400 for, minus the ones it refused",
            self.pushed.clone(),
        );
        r.register(
            "tapbus_loki_requests",
            "push requests by HTTP status (error: no answer)",
            self.requests.clone(),
        );
        r.register(
            "tapbus_loki_retries",
            "push requests sent again after 429, 5xx or no answer",
            self.retries.clone(),
        );
        self.dropped.register(
            r,
            "tapbus_loki_dropped_lines",
            "lines not stored, by Loki's reason, http_<status> or bad_message",
        );
        r.register(
            "tapbus_loki_batch_lines",
            "lines per push request",
            self.batch_lines.clone(),
        );
        r.register(
            "tapbus_loki_batch_bytes",
            "line bytes per push request",
            self.batch_bytes.clone(),
        );
        r.register(
            "tapbus_loki_push_duration_seconds",
            "time of one push request until Loki's answer",
            self.push_duration.clone(),
        );
        for status in ["204", "400", "429", "500", "error"] {
            let _ = self.requests.get_or_create(&Status {
                status: status.into(),
            });
        }
    }

    /// Counts `n` lines dropped for `reason`; past 64 other reasons, as `other`.
    pub fn dropped(&self, reason: &str, n: u64) {
        self.dropped.inc_by(reason, n);
    }
}

/// Encodes a batch once and POSTs it until Loki answered for good.
#[derive(Debug)]
pub struct LokiSink {
    http: reqwest::Client,
    to: http::Target,
    encoding: Encoding,
    encoder: Encoder,
    /// The body of the batch being tried (encoded once, sent again as is).
    body: Option<(u64, Bytes, Vec<StreamInfo>)>,
    metrics: LokiMetrics,
}

impl LokiSink {
    pub fn new(
        http: reqwest::Client,
        to: http::Target,
        encoding: Encoding,
        metrics: LokiMetrics,
    ) -> Self {
        LokiSink {
            http,
            to,
            encoding,
            encoder: Encoder::new(),
            body: None,
            metrics,
        }
    }
}

impl Sink<LokiBatch> for LokiSink {
    async fn send(&mut self, b: &LokiBatch) -> Attempt {
        let m = self.metrics.clone();
        let lines = b.sealed.lines as u64;
        if lines == 0 {
            return Attempt::Done;
        }
        if self.body.as_ref().is_none_or(|(n, _, _)| *n != b.n) {
            m.batch_lines.observe(lines as f64);
            m.batch_bytes.observe(b.sealed.line_bytes as f64);
            let infos: Vec<StreamInfo> = b
                .sealed
                .streams
                .iter()
                .map(|s| StreamInfo {
                    labels: s.labels.clone(),
                    entries: s.entries.len(),
                })
                .collect();
            match self.encoder.encode(self.encoding, &b.sealed.streams) {
                Ok(body) => self.body = Some((b.n, body, infos)),
                Err(e) => {
                    tracing::error!(lines, "{e}; batch dropped");
                    m.dropped("encode_error", lines);
                    return Attempt::Dropped {
                        reason: "encode_error".into(),
                    };
                }
            }
        }
        let Some((_, body, infos)) = self.body.as_ref() else {
            return Attempt::Done;
        };
        let req = self
            .to
            .post(&self.http)
            .header("Content-Type", self.encoding.content_type())
            .body(body.clone());
        let t0 = std::time::Instant::now();
        let (status, attempt) = http::push(req, |status, text| match response::outcome(status) {
            Outcome::Written if response::blocked(text) => {
                m.dropped("blocked_ingestion", lines);
                tracing::warn!(
                    status,
                    lines,
                    "Loki blocks ingestion; batch dropped: {}",
                    text.trim()
                );
                Attempt::Dropped {
                    reason: "blocked_ingestion".into(),
                }
            }
            Outcome::Written => {
                m.pushed.inc_by(lines);
                Attempt::Done
            }
            Outcome::Retry => Attempt::Retry {
                after: None,
                why: format!("HTTP {status}"),
            },
            Outcome::Partial => {
                let refused = match response::refusals(text, infos) {
                    Some(by_reason) => {
                        let mut left = lines;
                        for (reason, n) in by_reason {
                            let n = n.min(left);
                            left -= n;
                            m.dropped(reason, n);
                        }
                        lines - left
                    }
                    None => {
                        m.dropped("http_400", lines);
                        lines
                    }
                };
                m.pushed.inc_by(lines - refused);
                tracing::warn!(
                    lines,
                    refused,
                    "Loki refused entries (400, not retried): {}",
                    text.trim()
                );
                Attempt::Done
            }
            Outcome::Refused => {
                let reason = format!("http_{status}");
                m.dropped(&reason, lines);
                tracing::warn!(
                    status,
                    lines,
                    "Loki refused the batch; dropped: {}",
                    text.trim()
                );
                Attempt::Dropped { reason }
            }
        })
        .await;
        m.push_duration.observe(t0.elapsed().as_secs_f64());
        let label = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        m.requests.get_or_create(&Status { status: label }).inc();
        match &attempt {
            Attempt::Retry { .. } => {
                m.retries.inc();
            }
            Attempt::Done | Attempt::Dropped { .. } => self.body = None,
        }
        attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::LabelsConfig;

    const EVENT: &str = r#"{"network":{"family":"INET","protocol":"UDP","query-ip":"192.0.2.1","query-port":5353,"response-ip":"192.0.2.53","response-port":53},"dns":{"length":40,"id":1,"opcode":0,"rcode":"NOERROR","qname":"example.com","qtype":"A","qclass":"IN"},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns1","timestamp-rfc3339ns":"2026-11-22T02:41:38.535458000Z","timestamp":1795315298535458000}}"#;

    fn stage(max_bytes: usize) -> LokiStage {
        let l = Labeler::new(&LabelsConfig::default()).expect("labels");
        LokiStage::new(
            l,
            Stamp::Event,
            max_bytes,
            Duration::from_millis(200),
            LokiMetrics::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_due_batch_wait_after_its_first_line_and_holds_its_lines() {
        let mut s = stage(1 << 20);
        let p = Bytes::from_static(EVENT.as_bytes());
        let m = Msg {
            subject: "dnstap.ns1",
            payload: &p,
            input: 0,
        };
        let t0 = Instant::now();
        assert_eq!(s.push(m, t0), Verdict::Hold(0));
        assert_eq!(s.push(m, t0), Verdict::Hold(0));
        assert_eq!(s.due(), Some(t0 + Duration::from_millis(200)));
        assert!(s.flush(t0, Flush::Due).is_none());
        tokio::time::advance(Duration::from_millis(200)).await;
        let f = s
            .flush(Instant::now(), Flush::Due)
            .expect("due after batch_wait");
        assert_eq!((f.covers, f.batch.sealed.lines), (1, 2));
        assert_eq!(s.push(m, Instant::now()), Verdict::Hold(1));
        assert_eq!(s.due(), Some(Instant::now() + Duration::from_millis(200)));
        let f = s.flush(Instant::now(), Flush::All).expect("all");
        assert_eq!(f.covers, 2);
        assert!(s.flush(Instant::now(), Flush::All).is_none());
        assert_eq!(s.due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_sealed_and_the_next_line_starts_another() {
        let mut s = stage(EVENT.len() + 1);
        let p = Bytes::from_static(EVENT.as_bytes());
        let m = Msg {
            subject: "dnstap.ns1",
            payload: &p,
            input: 0,
        };
        let now = Instant::now();
        assert_eq!(s.push(m, now), Verdict::Hold(0));
        assert_eq!(s.push(m, now), Verdict::Hold(1));
        assert_eq!(s.due(), Some(now), "a sealed batch is due at once");
        assert_eq!(s.flush(now, Flush::Due).expect("first").covers, 1);
    }
}
