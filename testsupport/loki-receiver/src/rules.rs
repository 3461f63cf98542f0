//! Loki's acceptance rules over decoded pushes ([`Core`]): the distributor's label and entry
//! validation, the per-tenant rate and stream limits, the ingester's ordering window and
//! de-duplication, with Loki's status codes and texts; and the limits, stored entries and
//! counters a test inspects.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::selector::{go_quote, labels_string, parse_selector};
use crate::wire::{InEntry, InStream};

/// Loki's limits (defaults are Loki 3.x's defaults) and the receiver's own bounds.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `auth_enabled`: require `X-Scope-OrgID` (401 without); off: tenant `fake`.
    pub auth_enabled: bool,
    pub max_label_names_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    /// `max_line_size` in bytes (0: no limit).
    pub max_line_size: usize,
    pub reject_old_samples: bool,
    pub reject_old_samples_max_age: Duration,
    pub creation_grace_period: Duration,
    /// The out-of-order window is half of this (`too_far_behind`).
    pub max_chunk_age: Duration,
    pub allow_structured_metadata: bool,
    pub max_structured_metadata_size: usize,
    pub max_structured_metadata_entries_count: usize,
    /// Per-tenant ingestion rate (bytes/s) and burst (bytes); 429 `rate_limited`.
    pub ingestion_rate_bytes: f64,
    pub ingestion_burst_bytes: f64,
    /// `Retry-After` seconds on a rate-limit 429 (Loki sends none).
    pub rate_limit_retry_after: Option<u64>,
    /// Active streams per tenant (`max_global_streams_per_user`): 429 `stream_limit`.
    pub max_streams_per_user: usize,
    /// At most this many "entry ... ignored" lines in an ingester 400.
    pub max_returned_errors: usize,
    /// The receiver's store bound: a request that would exceed it gets a 500.
    pub max_stored_entries: usize,
    /// Body bound (compressed and decompressed): 413 above it.
    pub max_body_bytes: usize,
    /// How many [`RequestRecord`](crate::RequestRecord)s are kept (the oldest go first).
    pub max_recorded_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            auth_enabled: false,
            max_label_names_per_series: 15,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_line_size: 256 * 1024,
            reject_old_samples: true,
            reject_old_samples_max_age: Duration::from_secs(7 * 24 * 3600),
            creation_grace_period: Duration::from_secs(600),
            max_chunk_age: Duration::from_secs(7200),
            allow_structured_metadata: true,
            max_structured_metadata_size: 64 * 1024,
            max_structured_metadata_entries_count: 128,
            ingestion_rate_bytes: 4.0 * 1024.0 * 1024.0,
            ingestion_burst_bytes: 6.0 * 1024.0 * 1024.0,
            rate_limit_retry_after: None,
            max_streams_per_user: 5000,
            max_returned_errors: 10,
            max_stored_entries: 5_000_000,
            max_body_bytes: 100 << 20,
            max_recorded_requests: 100_000,
        }
    }
}

impl Limits {
    /// Loki's defaults except that entries of any age are accepted (captures are old).
    pub fn accept_any_age() -> Limits {
        Limits {
            reject_old_samples: false,
            ..Limits::default()
        }
    }
}

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub tenant: String,
    /// The stream's labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// Unix nanoseconds.
    pub ts_ns: i64,
    pub line: String,
    /// Structured metadata in the order sent.
    pub structured_metadata: Vec<(String, String)>,
    /// The [`RequestRecord::seq`](crate::RequestRecord::seq) of the request that stored it.
    pub request: u64,
}

/// Counters over the receiver's life (kept through down/up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests by the status answered (faults included).
    pub requests: BTreeMap<u16, u64>,
    /// Entries in bodies that decoded (faulted requests not included).
    pub entries_received: u64,
    /// Entries stored.
    pub entries_accepted: u64,
    /// Entries refused, by Loki's reason name.
    pub refused: BTreeMap<String, u64>,
    /// Entries not stored because identical to a stored one (or the stream's last).
    pub deduplicated: u64,
    /// Body bytes received (as sent, compressed).
    pub body_bytes: u64,
    /// Line bytes stored.
    pub line_bytes_accepted: u64,
    /// Streams (tenant, labels) that exist.
    pub streams: usize,
}

impl Stats {
    /// Requests answered with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.requests.get(&status).copied().unwrap_or(0)
    }
    /// Entries refused for `reason`.
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused.get(reason).copied().unwrap_or(0)
    }
    /// All requests.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

// ---------------------------------------------------------------------------------------
// Time texts as Go prints them.

/// `time.Time.Format(time.RFC3339)` in UTC: `2024-05-01T10:00:00Z` (whole seconds).
pub fn rfc3339(ts_ns: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(ts_ns as i128) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ts_ns.to_string(),
    }
}

/// `time.Time.String()` in UTC: `2024-05-01 10:00:00.5 +0000 UTC` (fraction without
/// trailing zeros, none when whole).
pub fn go_time_string(ts_ns: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(ts_ns as i128) {
        Ok(t) => {
            let mut s = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            let ns = t.nanosecond();
            if ns != 0 {
                let frac = format!("{ns:09}");
                s.push('.');
                s.push_str(frac.trim_end_matches('0'));
            }
            s.push_str(" +0000 UTC");
            s
        }
        Err(_) => ts_ns.to_string(),
    }
}

struct StreamState {
    tenant: String,
    labels: BTreeMap<String, String>,
    /// Highest timestamp accepted (None before the first).
    highest: Option<i64>,
    last: Option<(i64, u32)>,
    /// Stored entries by timestamp (indices into `Core::stored`).
    by_ts: HashMap<i64, Vec<u32>>,
}

struct Stored {
    stream: u32,
    ts_ns: i64,
    line: String,
    sm: Vec<(String, String)>,
    request: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The receiver's state: what Loki's distributor and ingester hold, for one process.
pub struct Core {
    pub limits: Limits,
    streams: Vec<StreamState>,
    stream_ids: HashMap<(String, String), u32>,
    streams_per_tenant: HashMap<String, usize>,
    stored: Vec<Stored>,
    buckets: HashMap<String, Bucket>,
    stats: Stats,
}

/// An answer of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<u64>,
}

impl Answer {
    /// An answer with `body` ended by a newline (as Go's `http.Error` writes it).
    pub fn new(status: u16, body: String) -> Answer {
        let body = if body.is_empty() || body.ends_with('\n') {
            body
        } else {
            body + "\n"
        };
        Answer {
            status,
            body,
            retry_after: None,
        }
    }
}

/// A stream that passed the distributor: sorted labels, their printed form, its entries.
type ValidStream = (Vec<(String, String)>, String, Vec<InEntry>);

enum LabelErr {
    Refuse(&'static str, String),
}

impl Core {
    pub fn new(limits: Limits) -> Core {
        Core {
            limits,
            streams: Vec::new(),
            stream_ids: HashMap::new(),
            streams_per_tenant: HashMap::new(),
            stored: Vec::new(),
            buckets: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.streams = self.streams.len();
        s
    }

    /// Every stored entry, in the order stored.
    pub fn entries(&self) -> Vec<StoredEntry> {
        self.stored
            .iter()
            .map(|e| {
                let s = &self.streams[e.stream as usize];
                StoredEntry {
                    tenant: s.tenant.clone(),
                    labels: s.labels.clone(),
                    ts_ns: e.ts_ns,
                    line: e.line.clone(),
                    structured_metadata: e.sm.clone(),
                    request: e.request,
                }
            })
            .collect()
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.stored.is_empty()
    }

    /// Counts one HTTP request answered with `status` whose body had `body_bytes` bytes.
    pub fn count_request(&mut self, status: u16, body_bytes: usize) {
        self.stats.body_bytes += body_bytes as u64;
        *self.stats.requests.entry(status).or_insert(0) += 1;
    }

    fn refuse(&mut self, reason: &str, n: u64) {
        *self.stats.refused.entry(reason.to_string()).or_insert(0) += n;
    }

    /// Parses and validates a stream's labels (distributor `parseStreamLabels` +
    /// `ValidateLabels`): sorted labels or the refusal.
    fn stream_labels(&self, raw: &str) -> Result<Vec<(String, String)>, LabelErr> {
        let l = &self.limits;
        let invalid = |why: String| {
            LabelErr::Refuse(
                "invalid_labels",
                format!("Error parsing labels '{raw}' with error: {why}"),
            )
        };
        let mut ls = parse_selector(raw).map_err(|e| invalid(e.to_string()))?;
        // Loki's label builder drops empty values.
        ls.retain(|(_, v)| !v.is_empty());
        ls.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((n, _)) = ls.iter().find(|(n, _)| n.starts_with("__")) {
            return Err(invalid(format!(
                "label name {} is reserved (names starting with __ are internal)",
                go_quote(n)
            )));
        }
        if ls.is_empty() {
            return Err(LabelErr::Refuse(
                "missing_labels",
                "error at least one label pair is required per stream".to_string(),
            ));
        }
        let mut count = ls.len();
        if ls.iter().any(|(n, _)| n == "service_name") {
            count -= 1;
        }
        if count > l.max_label_names_per_series {
            return Err(LabelErr::Refuse(
                "max_label_names_per_series",
                format!(
                    "entry for stream '{raw}' has {count} label names; limit {}",
                    l.max_label_names_per_series
                ),
            ));
        }
        let mut last = "";
        for (n, v) in &ls {
            if n.len() > l.max_label_name_length {
                return Err(LabelErr::Refuse(
                    "label_name_too_long",
                    format!("stream '{raw}' has label name too long: '{n}'"),
                ));
            } else if v.len() > l.max_label_value_length {
                return Err(LabelErr::Refuse(
                    "label_value_too_long",
                    format!("stream '{raw}' has label value too long: '{v}'"),
                ));
            } else if n == last {
                return Err(LabelErr::Refuse(
                    "duplicate_label_names",
                    format!("stream '{raw}' has duplicate label name: '{n}'"),
                ));
            }
            last = n;
        }
        Ok(ls)
    }

    /// The distributor's `ValidateEntry`: the refusal reason and text, if any.
    fn validate_entry(&self, ls: &str, e: &InEntry, now: i64) -> Option<(&'static str, String)> {
        let l = &self.limits;
        let oldest = now.saturating_sub(l.reject_old_samples_max_age.as_nanos() as i64);
        let newest = now.saturating_add(l.creation_grace_period.as_nanos() as i64);
        if l.reject_old_samples && e.ts_ns < oldest {
            return Some((
                "greater_than_max_sample_age",
                format!(
                    "entry for stream '{ls}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
                    rfc3339(e.ts_ns),
                    rfc3339(oldest)
                ),
            ));
        }
        if e.ts_ns > newest {
            return Some((
                "too_far_in_future",
                format!(
                    "entry for stream '{ls}' has timestamp too new: {}",
                    rfc3339(e.ts_ns)
                ),
            ));
        }
        if l.max_line_size != 0 && e.line.len() > l.max_line_size {
            return Some((
                "line_too_long",
                format!(
                    "Max entry size '{}' bytes exceeded for stream '{ls}' while adding an entry with length '{}' bytes",
                    l.max_line_size,
                    e.line.len()
                ),
            ));
        }
        let count = e.structured_metadata.len();
        if count > 0 {
            let size: usize = e
                .structured_metadata
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum();
            if !l.allow_structured_metadata {
                return Some((
                    "disallowed_structured_metadata",
                    format!(
                        "stream '{ls}' includes structured metadata, but this feature is disallowed. Please see `limits_config.allow_structured_metadata` or contact your Loki administrator to enable it."
                    ),
                ));
            }
            if l.max_structured_metadata_size != 0 && size > l.max_structured_metadata_size {
                return Some((
                    "structured_metadata_too_large",
                    format!(
                        "stream '{ls}' has structured metadata too large: '{size}' bytes, limit: '{}' bytes. Please see `limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it.",
                        l.max_structured_metadata_size
                    ),
                ));
            }
            if l.max_structured_metadata_entries_count != 0
                && count > l.max_structured_metadata_entries_count
            {
                return Some((
                    "structured_metadata_too_many",
                    format!(
                        "stream '{ls}' has too many structured metadata labels: '{count}', limit: '{}'. Please see `limits_config.max_structured_metadata_entries_count` or contact your Loki administrator to increase it.",
                        l.max_structured_metadata_entries_count
                    ),
                ));
            }
        }
        None
    }

    /// One push of `tenant` at `now` (unix ns), request number `seq`.
    pub fn push(&mut self, tenant: &str, streams: Vec<InStream>, now: i64, seq: u64) -> Answer {
        let received: usize = streams.iter().map(|s| s.entries.len()).sum();
        self.stats.entries_received += received as u64;
        if streams.is_empty() {
            return Answer::new(
                422,
                "error at least one valid stream is required for ingestion".into(),
            );
        }
        if self.stored.len() + received > self.limits.max_stored_entries {
            return Answer::new(
                500,
                format!(
                    "test receiver store full ({} entries, max_stored_entries)",
                    self.stored.len()
                ),
            );
        }
        // Distributor: labels, then entries.
        let mut errors: Vec<String> = Vec::new();
        let mut valid: Vec<ValidStream> = Vec::new();
        let (mut lines, mut bytes) = (0usize, 0usize);
        for s in streams {
            if s.entries.is_empty() {
                continue;
            }
            let ls = match self.stream_labels(&s.labels) {
                Ok(ls) => ls,
                Err(LabelErr::Refuse(reason, text)) => {
                    self.refuse(reason, s.entries.len() as u64);
                    errors.push(text);
                    continue;
                }
            };
            let printed = labels_string(&ls);
            let mut kept = Vec::with_capacity(s.entries.len());
            for e in s.entries {
                if let Some((reason, text)) = self.validate_entry(&printed, &e, now) {
                    self.refuse(reason, 1);
                    errors.push(text);
                    continue;
                }
                lines += 1;
                bytes += e.line.len()
                    + e.structured_metadata
                        .iter()
                        .map(|(n, v)| n.len() + v.len())
                        .sum::<usize>();
                kept.push(e);
            }
            if !kept.is_empty() {
                valid.push((ls, printed, kept));
            }
        }
        let grouped = group_errors(&errors);
        if valid.is_empty() {
            return if grouped.is_empty() {
                Answer::new(204, String::new())
            } else {
                Answer::new(400, grouped)
            };
        }
        // The tenant's rate limit, over the whole request.
        if !self.allow(tenant, bytes as f64) {
            self.refuse("rate_limited", lines as u64);
            let mut a = Answer::new(
                429,
                format!(
                    "Ingestion rate limit exceeded for user {tenant} (limit: {} bytes/sec) while attempting to ingest '{lines}' lines totaling '{bytes}' bytes, reduce log volume or contact your Loki administrator to see if the limit can be increased",
                    self.limits.ingestion_rate_bytes as u64
                ),
            );
            a.retry_after = self.limits.rate_limit_retry_after;
            return a;
        }
        // Ingester: per stream, the last error wins.
        let mut ingester_err: Option<Answer> = None;
        for (ls, printed, entries) in valid {
            let key = (tenant.to_string(), printed.clone());
            let id = match self.stream_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let n = self
                        .streams_per_tenant
                        .entry(tenant.to_string())
                        .or_insert(0);
                    if *n >= self.limits.max_streams_per_user {
                        let total = entries.len();
                        self.refuse("stream_limit", total as u64);
                        ingester_err = Some(Answer::new(
                            429,
                            format!(
                                "Maximum active stream limit exceeded when trying to create stream {printed}, reduce the number of active streams (reduce labels or reduce label values), or contact your Loki administrator to see if the limit can be increased, user: '{tenant}'"
                            ),
                        ));
                        continue;
                    }
                    *n += 1;
                    let id = self.streams.len() as u32;
                    self.streams.push(StreamState {
                        tenant: tenant.to_string(),
                        labels: ls.into_iter().collect(),
                        highest: None,
                        last: None,
                        by_ts: HashMap::new(),
                    });
                    self.stream_ids.insert(key, id);
                    id
                }
            };
            let total = entries.len();
            let mut failed: Vec<(i64, String)> = Vec::new();
            let window = (self.limits.max_chunk_age / 2).as_nanos() as i64;
            for e in entries {
                let st = &self.streams[id as usize];
                if let Some((lts, idx)) = st.last
                    && lts == e.ts_ns
                    && self.stored[idx as usize].line == e.line
                {
                    self.stats.deduplicated += 1;
                    continue;
                }
                if let Some(h) = st.highest {
                    let cutoff = h.saturating_sub(window);
                    if e.ts_ns < cutoff {
                        failed.push((
                            e.ts_ns,
                            format!(
                                "entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}",
                                rfc3339(e.ts_ns),
                                rfc3339(cutoff)
                            ),
                        ));
                        continue;
                    }
                }
                let dup = st.by_ts.get(&e.ts_ns).and_then(|v| {
                    v.iter()
                        .copied()
                        .find(|&i| self.stored[i as usize].line == e.line)
                });
                let idx = match dup {
                    Some(i) => {
                        self.stats.deduplicated += 1;
                        i
                    }
                    None => {
                        let idx = self.stored.len() as u32;
                        self.stats.entries_accepted += 1;
                        self.stats.line_bytes_accepted += e.line.len() as u64;
                        self.stored.push(Stored {
                            stream: id,
                            ts_ns: e.ts_ns,
                            line: e.line,
                            sm: e.structured_metadata,
                            request: seq,
                        });
                        self.streams[id as usize]
                            .by_ts
                            .entry(self.stored[idx as usize].ts_ns)
                            .or_default()
                            .push(idx);
                        idx
                    }
                };
                let ts = self.stored[idx as usize].ts_ns;
                let st = &mut self.streams[id as usize];
                st.last = Some((ts, idx));
                if st.highest.is_none_or(|h| h < ts) {
                    st.highest = Some(ts);
                }
            }
            if !failed.is_empty() {
                self.refuse("too_far_behind", failed.len() as u64);
                let mut body = String::new();
                for (ts, why) in failed.iter().take(self.limits.max_returned_errors.max(1)) {
                    body.push_str(&format!(
                        "entry with timestamp {} ignored, reason: '{why}',\n",
                        go_time_string(*ts)
                    ));
                }
                body.push_str(&format!(
                    "user '{tenant}', total ignored: {} out of {total} for stream: {printed}",
                    failed.len()
                ));
                ingester_err = Some(Answer::new(400, body));
            }
        }
        if let Some(a) = ingester_err {
            return a;
        }
        if grouped.is_empty() {
            Answer::new(204, String::new())
        } else {
            Answer::new(400, grouped)
        }
    }

    fn allow(&mut self, tenant: &str, n: f64) -> bool {
        let (rate, burst) = (
            self.limits.ingestion_rate_bytes,
            self.limits.ingestion_burst_bytes,
        );
        let now = Instant::now();
        let b = self.buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if n <= b.tokens {
            b.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Loki's `util.GroupedErrors` text (first-seen order instead of Go's map order).
pub fn group_errors(errors: &[String]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in errors {
        let c = counts.entry(e.as_str()).or_insert(0);
        if *c == 0 {
            order.push(e);
        }
        *c += 1;
    }
    let unique = order.len();
    let mut out = String::new();
    for (i, e) in order.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let n = counts.get(e).copied().unwrap_or(0);
        if unique > 1 || n > 1 {
            out.push_str(&format!("{n} errors like: "));
        }
        out.push_str(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_texts() {
        let t = 1_714_557_600_000_000_000; // 2024-05-01T10:00:00Z
        assert_eq!(rfc3339(t), "2024-05-01T10:00:00Z");
        assert_eq!(rfc3339(t + 999_999_999), "2024-05-01T10:00:00Z");
        assert_eq!(go_time_string(t), "2024-05-01 10:00:00 +0000 UTC");
        assert_eq!(
            go_time_string(t + 500_000_000),
            "2024-05-01 10:00:00.5 +0000 UTC"
        );
        assert_eq!(
            go_time_string(t + 1),
            "2024-05-01 10:00:00.000000001 +0000 UTC"
        );
    }

    #[test]
    fn grouped_errors_like_loki() {
        assert_eq!(group_errors(&["a".into()]), "a");
        assert_eq!(group_errors(&["a".into(), "a".into()]), "2 errors like: a");
        assert_eq!(
            group_errors(&["a".into(), "b".into(), "a".into()]),
            "2 errors like: a; 1 errors like: b"
        );
        assert_eq!(group_errors(&[]), "");
    }

    fn stream(labels: &str, entries: Vec<(i64, &str)>) -> InStream {
        InStream {
            labels: labels.into(),
            entries: entries
                .into_iter()
                .map(|(ts, l)| InEntry {
                    ts_ns: ts,
                    line: l.into(),
                    structured_metadata: vec![],
                })
                .collect(),
        }
    }

    const NOW: i64 = 1_714_557_600_000_000_000;
    const S: i64 = 1_000_000_000;

    #[test]
    fn core_stores_dedupes_and_refuses_out_of_window() {
        let mut c = Core::new(Limits::default());
        let a = c.push(
            "fake",
            vec![stream(
                "{job=\"t\"}",
                vec![(NOW, "a"), (NOW, "a"), (NOW - S, "b"), (NOW, "c")],
            )],
            NOW,
            1,
        );
        assert_eq!(a.status, 204, "{a:?}");
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats().deduplicated, 1);
        // The same again: all de-duplicated (not the last line for two of them).
        let a = c.push(
            "fake",
            vec![stream("{job=\"t\"}", vec![(NOW - S, "b"), (NOW, "a")])],
            NOW,
            2,
        );
        assert_eq!(a.status, 204, "{a:?}");
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats().deduplicated, 3);
        // Another tenant is another stream.
        let a = c.push(
            "other",
            vec![stream("{job=\"t\"}", vec![(NOW, "a")])],
            NOW,
            3,
        );
        assert_eq!(a.status, 204);
        assert_eq!(c.len(), 4);
        // Older than newest - 1 h: too_far_behind, with the ingester's text; the rest stored.
        let old = NOW - 3601 * S;
        let a = c.push(
            "fake",
            vec![stream("{job=\"t\"}", vec![(old, "x"), (NOW + S, "d")])],
            NOW,
            4,
        );
        assert_eq!(a.status, 400);
        assert_eq!(
            a.body,
            format!(
                "entry with timestamp {} ignored, reason: 'entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}',\nuser 'fake', total ignored: 1 out of 2 for stream: {{job=\"t\"}}\n",
                go_time_string(old),
                rfc3339(old),
                rfc3339(NOW - 3600 * S)
            )
        );
        assert_eq!(c.stats().refused("too_far_behind"), 1);
        assert_eq!(c.len(), 5);
        let e = c.entries();
        assert_eq!(e[4].line, "d");
        assert_eq!(e[4].request, 4);
        assert_eq!(e[3].tenant, "other");
    }

    #[test]
    fn core_distributor_rules_each_refused_with_its_reason() {
        let l = Limits {
            max_line_size: 10,
            ..Limits::default()
        };
        let many: String = format!(
            "{{{}}}",
            (0..16)
                .map(|i| format!("l{i}=\"v\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let long_name = format!("{{{}=\"v\"}}", "n".repeat(1025));
        let long_value = format!("{{a=\"{}\"}}", "v".repeat(2049));
        let cases: Vec<(InStream, &str, &str)> = vec![
            (
                stream("{job=x}", vec![(NOW, "l")]),
                "invalid_labels",
                "Error parsing labels '{job=x}' with error: 1:6: parse error",
            ),
            (
                stream("{__x=\"y\"}", vec![(NOW, "l")]),
                "invalid_labels",
                "Error parsing labels '{__x=\"y\"}' with error:",
            ),
            (
                stream("{}", vec![(NOW, "l")]),
                "missing_labels",
                "error at least one label pair is required per stream",
            ),
            (
                stream("{a=\"\"}", vec![(NOW, "l")]),
                "missing_labels",
                "error at least one label pair",
            ),
            (
                stream(&many, vec![(NOW, "l")]),
                "max_label_names_per_series",
                "has 16 label names; limit 15",
            ),
            (
                stream(&long_name, vec![(NOW, "l")]),
                "label_name_too_long",
                "has label name too long",
            ),
            (
                stream(&long_value, vec![(NOW, "l")]),
                "label_value_too_long",
                "has label value too long",
            ),
            (
                stream("{a=\"1\", a=\"2\"}", vec![(NOW, "l")]),
                "duplicate_label_names",
                "has duplicate label name: 'a'",
            ),
            (
                stream("{a=\"1\"}", vec![(NOW - 8 * 24 * 3600 * S, "l")]),
                "greater_than_max_sample_age",
                "entry for stream '{a=\"1\"}' has timestamp too old: 2024-04-23T10:00:00Z, oldest acceptable timestamp is: 2024-04-24T10:00:00Z",
            ),
            (
                stream("{a=\"1\"}", vec![(NOW + 601 * S, "l")]),
                "too_far_in_future",
                "entry for stream '{a=\"1\"}' has timestamp too new: 2024-05-01T10:10:01Z",
            ),
            (
                stream("{a=\"1\"}", vec![(NOW, "12345678901")]),
                "line_too_long",
                "Max entry size '10' bytes exceeded for stream '{a=\"1\"}' while adding an entry with length '11' bytes",
            ),
        ];
        for (s, reason, text) in cases {
            let mut c = Core::new(l.clone());
            let a = c.push(
                "fake",
                vec![s, stream("{ok=\"1\"}", vec![(NOW, "fine")])],
                NOW,
                1,
            );
            assert_eq!(a.status, 400, "{reason}: {a:?}");
            assert!(a.body.contains(text), "{reason}: {}", a.body);
            assert!(!a.body.contains("errors like"), "{reason}: {}", a.body);
            assert_eq!(c.stats().refused(reason), 1, "{reason}");
            // The valid stream was stored: a partial success.
            assert_eq!(c.len(), 1, "{reason}");
            assert_eq!(c.entries()[0].line, "fine");
        }
    }

    #[test]
    fn core_structured_metadata_limits() {
        let mk = |sm: Vec<(String, String)>| InStream {
            labels: "{a=\"1\"}".into(),
            entries: vec![InEntry {
                ts_ns: NOW,
                line: "l".into(),
                structured_metadata: sm,
            }],
        };
        let mut c = Core::new(Limits::default());
        let too_many = (0..129).map(|i| (format!("k{i}"), "v".into())).collect();
        let a = c.push("fake", vec![mk(too_many)], NOW, 1);
        assert_eq!(a.status, 400);
        assert!(
            a.body
                .contains("too many structured metadata labels: '129', limit: '128'"),
            "{}",
            a.body
        );
        let big = vec![("k".to_string(), "v".repeat(64 * 1024))];
        let a = c.push("fake", vec![mk(big)], NOW, 2);
        assert!(
            a.body
                .contains("structured metadata too large: '65537' bytes, limit: '65536'"),
            "{}",
            a.body
        );
        let ok = vec![("qname".to_string(), "example.com.".to_string())];
        assert_eq!(c.push("fake", vec![mk(ok.clone())], NOW, 3).status, 204);
        assert_eq!(c.entries()[0].structured_metadata, ok);
        c.limits.allow_structured_metadata = false;
        let a = c.push("fake", vec![mk(vec![("a".into(), "b".into())])], NOW + 1, 4);
        assert_eq!(a.status, 400);
        assert_eq!(c.stats().refused("disallowed_structured_metadata"), 1);
    }

    #[test]
    fn core_grouped_distributor_errors_count_every_entry() {
        let mut c = Core::new(Limits::default());
        let old = NOW - 8 * 24 * 3600 * S;
        let a = c.push(
            "fake",
            vec![stream(
                "{a=\"1\"}",
                vec![(old, "x"), (old, "y"), (NOW, "ok"), (NOW + 3600 * S, "z")],
            )],
            NOW,
            1,
        );
        assert_eq!(a.status, 400);
        assert!(
            a.body
                .starts_with("2 errors like: entry for stream '{a=\"1\"}' has timestamp too old"),
            "{}",
            a.body
        );
        assert!(
            a.body
                .contains("; 1 errors like: entry for stream '{a=\"1\"}' has timestamp too new"),
            "{}",
            a.body
        );
        assert_eq!(c.stats().refused("greater_than_max_sample_age"), 2);
        assert_eq!(c.stats().refused("too_far_in_future"), 1);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn core_rate_limit_refuses_the_whole_request() {
        let mut c = Core::new(Limits {
            ingestion_rate_bytes: 10.0,
            ingestion_burst_bytes: 20.0,
            rate_limit_retry_after: Some(3),
            ..Limits::default()
        });
        let a = c.push(
            "t1",
            vec![stream("{a=\"1\"}", vec![(NOW, "0123456789")])],
            NOW,
            1,
        );
        assert_eq!(a.status, 204);
        let a = c.push(
            "t1",
            vec![stream(
                "{a=\"1\"}",
                vec![(NOW + 1, "0123456789"), (NOW + 2, "0123456789")],
            )],
            NOW,
            2,
        );
        assert_eq!(a.status, 429, "{a:?}");
        assert_eq!(a.retry_after, Some(3));
        assert!(a.body.starts_with("Ingestion rate limit exceeded for user t1 (limit: 10 bytes/sec) while attempting to ingest '2' lines totaling '20' bytes"), "{}", a.body);
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().refused("rate_limited"), 2);
        // Another tenant has its own bucket.
        let a = c.push(
            "t2",
            vec![stream("{a=\"1\"}", vec![(NOW, "0123456789")])],
            NOW,
            3,
        );
        assert_eq!(a.status, 204);
    }

    #[test]
    fn core_stream_limit_and_store_bound() {
        let mut c = Core::new(Limits {
            max_streams_per_user: 1,
            max_stored_entries: 3,
            ..Limits::default()
        });
        assert_eq!(
            c.push("t", vec![stream("{a=\"1\"}", vec![(NOW, "x")])], NOW, 1)
                .status,
            204
        );
        let a = c.push("t", vec![stream("{a=\"2\"}", vec![(NOW, "x")])], NOW, 2);
        assert_eq!(a.status, 429);
        assert!(
            a.body.starts_with(
                "Maximum active stream limit exceeded when trying to create stream {a=\"2\"}"
            ),
            "{}",
            a.body
        );
        assert_eq!(c.stats().refused("stream_limit"), 1);
        let a = c.push(
            "t",
            vec![stream(
                "{a=\"1\"}",
                vec![(NOW + 1, "x"), (NOW + 2, "x"), (NOW + 3, "x")],
            )],
            NOW,
            3,
        );
        assert_eq!(a.status, 500);
        assert_eq!(c.len(), 1);
        assert_eq!(c.push("t", vec![], NOW, 4).status, 422);
    }
}
