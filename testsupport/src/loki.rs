//! A Grafana Loki push receiver for the tests: the far end of the arrow
//! `tapbus-loki -> batch -> Loki push API`. There is no Loki package on the test machines,
//! so this module stands in for Loki's distributor and ingester: it decodes the real push
//! bodies, enforces Loki's write-path rules with Loki's defaults, answers with Loki's status
//! codes and Loki's error texts, stores what Loki would store, and lets a test inspect it
//! and inject faults.
//!
//! # What it serves
//! `POST /loki/api/v1/push` (and the old alias `/api/prom/push`) on a free loopback port,
//! from its own tokio runtime on a background thread, so sync and async tests can use it.
//!
//! * `Content-Type: application/json`: `{"streams":[{"stream":{..},"values":[["<ns>",
//!   "<line>", {<structured metadata>}?]]}]}`; the timestamp must be a string of
//!   nanoseconds (a JSON number is a 400, as in Loki).
//! * anything else (`application/x-protobuf` or no type): a snappy **block** holding a
//!   `logproto.PushRequest` ([`PushRequest`], prost types written here independently of
//!   tapbus-loki's, so the tests are an oracle). The `labels` field is LogQL/PromQL selector
//!   text and is parsed properly ([`parse_selector`]: quoted values with Go escapes, single
//!   quotes and backticks, trailing comma, empty values dropped as Loki does).
//! * `Content-Encoding`: none, `snappy` (ignored, as Loki does), `gzip` or `deflate` (for
//!   either body); anything else is a 400 `Content-Encoding "x" not supported`.
//! * `X-Scope-OrgID` is the tenant when [`Limits::auth_enabled`]; without it the answer is
//!   401 `no org id`. With auth off every push goes to the tenant `fake` (as Loki).
//!
//! # Rules, in Loki's order, and the reasons counted ([`Stats::refused`])
//! Distributor (per stream, then per entry; these errors are collected for the request):
//! `invalid_labels` (selector does not parse, a label name is not `[a-zA-Z_][a-zA-Z0-9_]*`,
//! or starts with `__`), `missing_labels` (no label left), `max_label_names_per_series`
//! (> 15; `service_name` not counted), `label_name_too_long` (> 1024 B),
//! `label_value_too_long` (> 2048 B), `duplicate_label_names`,
//! `greater_than_max_sample_age` (older than now - 7 d), `too_far_in_future` (newer than
//! now + 10 min), `line_too_long` (> 256 KiB), `disallowed_structured_metadata`,
//! `structured_metadata_too_large` (names + values > 64 KiB), `structured_metadata_too_many`
//! (> 128). Then the per-tenant rate limit over the valid entries' bytes (line + metadata;
//! token bucket, 4 MiB/s, burst 6 MiB): when exceeded the **whole request** is refused,
//! 429 `rate_limited`, nothing stored. Then the ingester, per stream: an entry equal (time
//! and line) to the stream's last entry is skipped, an entry older than the stream's newest
//! minus `max_chunk_age / 2` (1 h) is refused (`too_far_behind`), and an entry identical to
//! a stored one (tenant, labels, time, line) is not stored again: both skips are counted in
//! [`Stats::deduplicated`], not as refusals, and the answer stays 204 (as Loki).
//!
//! # Answers (bodies end with a newline, as Go's `http.Error` writes them)
//! * 204, empty body: everything stored (or de-duplicated).
//! * 400 from the ingester (at least one stream had `too_far_behind` entries; the last such
//!   stream of the request is reported, and the distributor's errors of that request are
//!   not, exactly as Loki's distributor returns the ingester's error instead):
//!   ```text
//!   entry with timestamp 2024-05-01 10:00:00.5 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2024-05-01T10:00:00Z, oldest acceptable timestamp is: 2024-05-01T11:00:00Z',
//!   ... (at most 10 such lines, max_returned_errors)
//!   user 'fake', total ignored: 12 out of 40 for stream: {job="tapbus", kind="event"}
//!   ```
//! * 400 from the distributor: the request's validation errors grouped by text
//!   (Loki's `util.GroupedErrors`): `; `-separated, each prefixed with `N errors like: `
//!   when there is more than one distinct text or the text occurred more than once (a lone
//!   error has no prefix). The texts (`{ls}` is the stream's labels as Prometheus prints
//!   them, `{a="b", c="d"}`; `{raw}` is the selector as sent; times are RFC 3339 UTC):
//!
//!   | reason | text |
//!   |---|---|
//!   | greater_than_max_sample_age | `entry for stream '{ls}' has timestamp too old: {t}, oldest acceptable timestamp is: {t}` |
//!   | too_far_in_future | `entry for stream '{ls}' has timestamp too new: {t}` |
//!   | line_too_long | `Max entry size '{max}' bytes exceeded for stream '{ls}' while adding an entry with length '{len}' bytes` |
//!   | invalid_labels | `Error parsing labels '{raw}' with error: {why}` |
//!   | missing_labels | `error at least one label pair is required per stream` |
//!   | max_label_names_per_series | `entry for stream '{raw}' has {n} label names; limit {max}` |
//!   | label_name_too_long | `stream '{raw}' has label name too long: '{name}'` |
//!   | label_value_too_long | `stream '{raw}' has label value too long: '{value}'` |
//!   | duplicate_label_names | `stream '{raw}' has duplicate label name: '{name}'` |
//!   | disallowed_structured_metadata | `stream '{ls}' includes structured metadata, but this feature is disallowed. ...` |
//!   | structured_metadata_too_large | `stream '{ls}' has structured metadata too large: '{n}' bytes, limit: '{max}' bytes. ...` |
//!   | structured_metadata_too_many | `stream '{ls}' has too many structured metadata labels: '{n}', limit: '{max}'. ...` |
//!
//!   An entry-level text names one entry; a label-level text stands for every entry of its
//!   stream (a writer counts that stream's entries of its own batch). Valid entries of the
//!   request were stored: a 400 is a partial success and must not be retried.
//! * 429 `Ingestion rate limit exceeded for user {tenant} (limit: {n} bytes/sec) while
//!   attempting to ingest '{lines}' lines totaling '{bytes}' bytes, reduce log volume or
//!   contact your Loki administrator to see if the limit can be increased`, with
//!   `Retry-After` only when [`Limits::rate_limit_retry_after`] is set (Loki sends none).
//! * 401 `no org id`; 413 for a body over [`Limits::max_body_bytes`]; 422 `error at least
//!   one valid stream is required for ingestion` for a request without streams; 400 for a
//!   body that does not decode; 500 when [`Limits::max_stored_entries`] would be exceeded
//!   (the store is bounded; nothing of that request is stored).
//!
//! # Faults and inspection
//! [`LokiReceiver::down`] closes the listener and every connection (connection refused),
//! [`LokiReceiver::up`] listens again on the same port with everything stored kept;
//! [`LokiReceiver::fail_next`], [`LokiReceiver::fail_for`], [`LokiReceiver::clear_faults`]
//! answer the next requests (or for a while) with a given status (a 429 with an optional
//! `Retry-After`); [`LokiReceiver::set_latency`] delays every answer. [`LokiReceiver::entries`],
//! [`LokiReceiver::stats`] and [`LokiReceiver::requests`] show what was stored, counted and
//! seen (the request headers).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

// ---------------------------------------------------------------------------------------
// logproto (pkg/push/push.proto), written from the proto text, independent of tapbus-loki.

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
    #[prost(string, tag = "2")]
    pub format: String,
}

/// `logproto.StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// LogQL selector text, e.g. `{job="tapbus", kind="event"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<prost_types::Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
    #[prost(message, repeated, tag = "4")]
    pub parsed: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A protobuf push body: the request encoded and snappy block-compressed.
pub fn encode_protobuf(req: &PushRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

/// An entry of a [`PushRequest`] from nanoseconds, a line and structured metadata.
pub fn entry(ts_ns: i64, line: &str, sm: &[(&str, &str)]) -> EntryAdapter {
    EntryAdapter {
        timestamp: Some(prost_types::Timestamp {
            seconds: ts_ns.div_euclid(1_000_000_000),
            nanos: ts_ns.rem_euclid(1_000_000_000) as i32,
        }),
        line: line.to_string(),
        structured_metadata: sm
            .iter()
            .map(|(n, v)| LabelPairAdapter {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        parsed: vec![],
    }
}

// ---------------------------------------------------------------------------------------
// Limits, records, stats.

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
    /// How many [`RequestRecord`]s are kept (the oldest go first).
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
    /// The [`RequestRecord::seq`] of the request that stored it.
    pub request: u64,
}

/// One request seen (bounded by [`Limits::max_recorded_requests`]).
#[derive(Clone, Debug, Default)]
pub struct RequestRecord {
    /// 1, 2, ... in arrival order.
    pub seq: u64,
    pub path: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub org_id: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub retry_after_sent: Option<u64>,
    /// Body bytes as received (compressed).
    pub body_bytes: usize,
    /// Entries the body held (0 when it did not decode or a fault answered).
    pub entries: usize,
    pub status: u16,
    /// The answer's body.
    pub response: String,
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
// The selector parser (what Loki's syntax.ParseLabels accepts, via PromQL's ParseMetric).

/// Why a selector did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// 1-based column (bytes) of the problem.
    pub col: usize,
    pub what: String,
}

impl std::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1:{}: parse error: {}", self.col, self.what)
    }
}

/// Parses LogQL stream-selector text `{name="value", ...}` into (name, value) pairs in the
/// order written. Values: double-quoted with Go escapes, single-quoted, or backtick raw.
/// Only `=` is accepted (a push names a stream, it does not match one). A trailing comma
/// is allowed. Label names must be `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>, SelectorError> {
    let b = s.as_bytes();
    let mut i = 0;
    let err = |i: usize, what: &str| SelectorError {
        col: i + 1,
        what: what.to_string(),
    };
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if i >= b.len() || b[i] != b'{' {
        return Err(err(i, "unexpected input, expected \"{\""));
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            return Err(err(i, "unexpected end of input inside braces"));
        }
        if b[i] == b'}' {
            i += 1;
            break;
        }
        // label name
        let start = i;
        if !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
            return Err(err(
                i,
                &format!(
                    "unexpected character inside braces: {:?}",
                    s[i..].chars().next().unwrap_or(' ')
                ),
            ));
        }
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &s[start..i];
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(err(
                i,
                "unexpected character in label matching, expected \"=\"",
            ));
        }
        i += 1;
        if i < b.len() && (b[i] == b'~' || b[i] == b'=') {
            return Err(err(
                i,
                "unexpected operator in label matching, expected \"=\"",
            ));
        }
        skip_ws(&mut i);
        let (value, next) = parse_quoted(s, i)?;
        i = next;
        out.push((name.to_string(), value));
        skip_ws(&mut i);
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'}' {
            i += 1;
            break;
        }
        return Err(err(
            i,
            "unexpected character in label set, expected \",\" or \"}\"",
        ));
    }
    skip_ws(&mut i);
    if i != b.len() {
        return Err(err(i, "unexpected input after the label set"));
    }
    Ok(out)
}

/// A quoted string at `s[i..]`: its value and the index after it.
fn parse_quoted(s: &str, i: usize) -> Result<(String, usize), SelectorError> {
    let b = s.as_bytes();
    let err = |i: usize, what: &str| SelectorError {
        col: i + 1,
        what: what.to_string(),
    };
    let Some(&q) = b.get(i) else {
        return Err(err(
            i,
            "unexpected end of input, expected string label value",
        ));
    };
    if q == b'`' {
        let rest = &s[i + 1..];
        let Some(end) = rest.find('`') else {
            return Err(err(i, "unterminated raw string"));
        };
        return Ok((rest[..end].to_string(), i + 1 + end + 1));
    }
    if q != b'"' && q != b'\'' {
        return Err(err(i, "unexpected character, expected string label value"));
    }
    let mut out = String::new();
    let mut chars = s[i + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let at = i + 1 + off;
        if c as u32 == q as u32 {
            return Ok((out, at + 1));
        }
        if c == '\n' {
            return Err(err(at, "unterminated quoted string"));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else {
            return Err(err(at, "unterminated quoted string"));
        };
        let hex = |n: usize, chars: &mut std::str::CharIndices<'_>| -> Option<u32> {
            let mut v = 0u32;
            for _ in 0..n {
                let (_, h) = chars.next()?;
                v = v * 16 + h.to_digit(16)?;
            }
            Some(v)
        };
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            '"' if q == b'"' => out.push('"'),
            '\'' if q == b'\'' => out.push('\''),
            'x' => {
                let v = hex(2, &mut chars).ok_or_else(|| err(at, "invalid escape sequence"))?;
                // A byte escape: only ASCII keeps the value UTF-8.
                let c = char::from_u32(v)
                    .filter(|c| c.is_ascii())
                    .ok_or_else(|| err(at, "invalid UTF-8 in escape sequence"))?;
                out.push(c);
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let v = hex(n, &mut chars).ok_or_else(|| err(at, "invalid escape sequence"))?;
                out.push(char::from_u32(v).ok_or_else(|| err(at, "invalid Unicode code point"))?);
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let d = chars
                        .next()
                        .and_then(|(_, d)| d.to_digit(8))
                        .ok_or_else(|| err(at, "invalid escape sequence"))?;
                    v = v * 8 + d;
                }
                let c = char::from_u32(v)
                    .filter(|c| c.is_ascii())
                    .ok_or_else(|| err(at, "invalid UTF-8 in escape sequence"))?;
                out.push(c);
            }
            _ => return Err(err(at, "unknown escape sequence")),
        }
    }
    Err(err(i, "unterminated quoted string"))
}

/// Go's `strconv.Quote` (what Prometheus uses to print label values), for the texts.
pub fn go_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels as Prometheus prints them: `{a="b", c="d"}` (sorted input expected).
pub fn labels_string(ls: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (n, v)) in ls.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(n);
        out.push('=');
        out.push_str(&go_quote(v));
    }
    out.push('}');
    out
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

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The pure core: decoded streams in, (status, body) out, state updated.

/// A decoded stream of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InStream {
    /// Selector text as sent (protobuf) or rendered from the JSON map.
    pub labels: String,
    pub entries: Vec<InEntry>,
}

/// A decoded entry of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InEntry {
    pub ts_ns: i64,
    pub line: String,
    pub structured_metadata: Vec<(String, String)>,
}

/// Why a body did not decode (a 400, or 413 for `TooLarge`).
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge(usize),
    Bad(String),
}

/// Decodes a push body by content type and encoding (Loki's `ParseRequest`).
pub fn decode_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    max: usize,
) -> Result<Vec<InStream>, DecodeError> {
    let inflated;
    let body = match content_encoding.map(str::trim).unwrap_or("") {
        "" | "snappy" => body,
        "gzip" => {
            inflated = read_bounded(flate2::read::GzDecoder::new(body), max)?;
            &inflated[..]
        }
        "deflate" => {
            inflated = read_bounded(flate2::read::DeflateDecoder::new(body), max)?;
            &inflated[..]
        }
        other => {
            return Err(DecodeError::Bad(format!(
                "Content-Encoding {other:?} not supported"
            )));
        }
    };
    let ct = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if ct == "application/json" {
        decode_json(body)
    } else {
        decode_protobuf(body, max)
    }
}

fn read_bounded(r: impl Read, max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Bad(format!("decompress: {e}")))?;
    if out.len() > max {
        return Err(DecodeError::TooLarge(max));
    }
    Ok(out)
}

fn decode_protobuf(body: &[u8], max: usize) -> Result<Vec<InStream>, DecodeError> {
    let len =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::Bad(format!("snappy: {e}")))?;
    if len > max {
        return Err(DecodeError::TooLarge(max));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Bad(format!("snappy: {e}")))?;
    let req: PushRequest =
        prost::Message::decode(&raw[..]).map_err(|e| DecodeError::Bad(format!("proto: {e}")))?;
    Ok(req
        .streams
        .into_iter()
        .map(|s| InStream {
            labels: s.labels,
            entries: s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = e
                        .timestamp
                        .map(|t| {
                            (t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
                                .clamp(i64::MIN as i128, i64::MAX as i128)
                                as i64
                        })
                        .unwrap_or(0);
                    InEntry {
                        ts_ns: ts,
                        line: e.line,
                        structured_metadata: e
                            .structured_metadata
                            .into_iter()
                            .map(|p| (p.name, p.value))
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect())
}

fn decode_json(body: &[u8]) -> Result<Vec<InStream>, DecodeError> {
    use serde_json::Value;
    let bad = |m: &str| DecodeError::Bad(m.to_string());
    let v: Value = serde_json::from_slice(body).map_err(|e| DecodeError::Bad(e.to_string()))?;
    let streams = v
        .get("streams")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("streams: expected an array"))?;
    let mut out = Vec::with_capacity(streams.len());
    for s in streams {
        let map = s
            .get("stream")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("stream: expected an object of labels"))?;
        let mut ls: Vec<(String, String)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| bad("stream: label values must be strings"))?;
            ls.push((k.clone(), v.to_string()));
        }
        ls.sort();
        // Loki renders the map as Prometheus labels and parses that text again.
        let labels = labels_string(&ls);
        let values = s
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("values: expected an array"))?;
        let mut entries = Vec::with_capacity(values.len());
        for e in values {
            let a = e
                .as_array()
                .filter(|a| a.len() == 2 || a.len() == 3)
                .ok_or_else(|| bad("values: each value must be [ts, line] or [ts, line, {}]"))?;
            let ts = a[0]
                .as_str()
                .ok_or_else(|| bad("values: the timestamp must be a string of nanoseconds"))?;
            let ts_ns: i64 = ts
                .parse()
                .map_err(|_| bad("values: the timestamp must be a string of nanoseconds"))?;
            let line = a[1]
                .as_str()
                .ok_or_else(|| bad("values: the line must be a string"))?
                .to_string();
            let mut sm = Vec::new();
            if let Some(m) = a.get(2) {
                let m = m
                    .as_object()
                    .ok_or_else(|| bad("values: structured metadata must be an object"))?;
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad("values: structured metadata values must be strings"))?;
                    sm.push((k.clone(), v.to_string()));
                }
            }
            entries.push(InEntry {
                ts_ns,
                line,
                structured_metadata: sm,
            });
        }
        out.push(InStream { labels, entries });
    }
    Ok(out)
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
    fn new(status: u16, body: String) -> Answer {
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

// ---------------------------------------------------------------------------------------
// The HTTP shell.

#[derive(Clone, Debug)]
struct Fault {
    status: u16,
    retry_after: Option<u64>,
    remaining: Option<u64>,
    until: Option<Instant>,
}

struct Shared {
    core: Mutex<Core>,
    faults: Mutex<VecDeque<Fault>>,
    latency: Mutex<Option<Duration>>,
    requests: Mutex<(u64, VecDeque<RequestRecord>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running receiver (see the module docs). Stopped, with its runtime thread, on drop.
pub struct LokiReceiver {
    port: u16,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LokiReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LokiReceiver")
            .field("port", &self.port)
            .finish()
    }
}

impl LokiReceiver {
    /// Starts with Loki's default limits on a free loopback port.
    pub fn start() -> LokiReceiver {
        LokiReceiver::start_with(Limits::default())
    }

    /// Starts with `limits` on a free loopback port.
    pub fn start_with(limits: Limits) -> LokiReceiver {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loki-receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                let _ = htx.send(rt.handle().clone());
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("receiver thread");
        let handle = hrx.recv().expect("receiver runtime handle");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(limits)),
            faults: Mutex::new(VecDeque::new()),
            latency: Mutex::new(None),
            requests: Mutex::new((0, VecDeque::new())),
        });
        let r = LokiReceiver {
            port,
            shared,
            handle,
            accept: Mutex::new(None),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        r.serve(listener);
        r
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let _g = self.handle.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let shared = self.shared.clone();
        let task = self.handle.spawn(accept_loop(listener, shared));
        *lock(&self.accept) = Some(task);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The push URL, `http://127.0.0.1:PORT/loki/api/v1/push`.
    pub fn push_url(&self) -> String {
        format!("http://127.0.0.1:{}/loki/api/v1/push", self.port)
    }

    /// Closes the listener and every open connection: connections are refused until
    /// [`LokiReceiver::up`]. What is stored stays.
    pub fn down(&self) {
        let Some(task) = lock(&self.accept).take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            task.abort();
            let _ = task.await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }

    /// Listens again on the same port (after [`LokiReceiver::down`]).
    pub fn up(&self) {
        if lock(&self.accept).is_some() {
            return;
        }
        let t0 = Instant::now();
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "receiver: rebind 127.0.0.1:{}: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.serve(listener);
    }

    /// True while listening.
    pub fn is_up(&self) -> bool {
        lock(&self.accept).is_some()
    }

    /// Answers the next `n` requests with `status` (nothing stored), after the faults
    /// already queued. A 429 carries `Retry-After: retry_after` when given.
    pub fn fail_next(&self, n: u64, status: u16, retry_after: Option<u64>) {
        lock(&self.shared.faults).push_back(Fault {
            status,
            retry_after,
            remaining: Some(n),
            until: None,
        });
    }

    /// Answers every request with `status` for `d` from now (after the faults queued).
    pub fn fail_for(&self, d: Duration, status: u16, retry_after: Option<u64>) {
        lock(&self.shared.faults).push_back(Fault {
            status,
            retry_after,
            remaining: None,
            until: Some(Instant::now() + d),
        });
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Delays every answer by `d` (None: no delay).
    pub fn set_latency(&self, d: Option<Duration>) {
        *lock(&self.shared.latency) = d;
    }

    /// Replaces the limits (what is stored stays).
    pub fn set_limits(&self, limits: Limits) {
        lock(&self.shared.core).limits = limits;
    }

    /// Every stored entry, in the order stored.
    pub fn entries(&self) -> Vec<StoredEntry> {
        lock(&self.shared.core).entries()
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        lock(&self.shared.core).len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared.core).stats()
    }

    /// The requests seen (the last [`Limits::max_recorded_requests`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).1.iter().cloned().collect()
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    // Dropping this future (down) drops the set, which aborts every connection.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((sock, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = sock.set_nodelay(true);
        let sh = shared.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(sh.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let mut rec = RequestRecord {
        path: path.clone(),
        content_type: header(&req, "content-type"),
        content_encoding: header(&req, "content-encoding"),
        org_id: header(&req, "x-scope-orgid"),
        authorization: header(&req, "authorization"),
        user_agent: header(&req, "user-agent"),
        ..RequestRecord::default()
    };
    let push_path = path == "/loki/api/v1/push" || path == "/api/prom/push";
    let answer = if !push_path || req.method() != hyper::Method::POST {
        let max = lock(&shared.core).limits.max_body_bytes;
        let _ = Limited::new(req.into_body(), max).collect().await;
        Answer::new(404, "404 page not found".into())
    } else {
        let max = lock(&shared.core).limits.max_body_bytes;
        match Limited::new(req.into_body(), max).collect().await {
            Err(_) => Answer::new(
                413,
                format!("request body too large: more than {max} bytes"),
            ),
            Ok(body) => {
                let body = body.to_bytes();
                rec.body_bytes = body.len();
                answer_push(&shared, &mut rec, &body)
            }
        }
    };
    let latency = *lock(&shared.latency);
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    rec.status = answer.status;
    rec.retry_after_sent = answer.retry_after;
    rec.response = answer.body.clone();
    let mut b = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if !answer.body.is_empty() {
        b = b
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-content-type-options", "nosniff");
    }
    if let Some(s) = answer.retry_after {
        b = b.header("retry-after", s.to_string());
    }
    {
        let mut core = lock(&shared.core);
        core.stats.body_bytes += rec.body_bytes as u64;
        *core.stats.requests.entry(answer.status).or_insert(0) += 1;
    }
    {
        let mut r = lock(&shared.requests);
        let max = lock(&shared.core).limits.max_recorded_requests;
        r.1.push_back(rec);
        while r.1.len() > max {
            r.1.pop_front();
        }
    }
    let resp = b
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}

/// A fault that answers now, if any (consuming one count).
fn take_fault(shared: &Shared) -> Option<Fault> {
    let mut q = lock(&shared.faults);
    let now = Instant::now();
    while let Some(f) = q.front_mut() {
        if let Some(n) = f.remaining.as_mut() {
            if *n == 0 {
                q.pop_front();
                continue;
            }
            *n -= 1;
            return Some(f.clone());
        }
        if f.until.is_some_and(|u| now < u) {
            return Some(f.clone());
        }
        q.pop_front();
    }
    None
}

fn answer_push(shared: &Shared, rec: &mut RequestRecord, body: &[u8]) -> Answer {
    let seq = {
        let mut r = lock(&shared.requests);
        r.0 += 1;
        r.0
    };
    rec.seq = seq;
    if let Some(f) = take_fault(shared) {
        let text = match f.status {
            429 => "Ingestion rate limit exceeded (injected by the test receiver)".to_string(),
            s => format!("injected failure: status {s}"),
        };
        let mut a = Answer::new(f.status, text);
        a.retry_after = f.retry_after;
        return a;
    }
    let (auth, max) = {
        let c = lock(&shared.core);
        (c.limits.auth_enabled, c.limits.max_body_bytes)
    };
    let tenant = if auth {
        match rec.org_id.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => return Answer::new(401, "no org id".into()),
        }
    } else {
        "fake".to_string()
    };
    let streams = match decode_body(
        rec.content_type.as_deref(),
        rec.content_encoding.as_deref(),
        body,
        max,
    ) {
        Ok(s) => s,
        Err(DecodeError::TooLarge(max)) => {
            return Answer::new(
                413,
                format!("request body too large: more than {max} bytes"),
            );
        }
        Err(DecodeError::Bad(e)) => return Answer::new(400, e),
    };
    rec.entries = streams.iter().map(|s| s.entries.len()).sum();
    lock(&shared.core).push(&tenant, streams, now_ns(), seq)
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP client for the receiver's own tests.

/// The answer of [`post`].
#[derive(Clone, Debug)]
pub struct PostAnswer {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl PostAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP/1.1 POST of `body` to `addr` (`host:port`) `path` with `headers`,
/// `Connection: close`. An error when the connection fails (e.g. refused).
pub fn post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<PostAnswer> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = h.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(PostAnswer {
        status,
        headers,
        body: b.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_with_escapes_and_refuse_garbage() {
        assert_eq!(
            parse_selector(r#"{job="tapbus", q="a\"b\\c\n", s='x', r=`y\z`,}"#).unwrap(),
            vec![
                ("job".into(), "tapbus".into()),
                ("q".into(), "a\"b\\c\n".into()),
                ("s".into(), "x".into()),
                ("r".into(), "y\\z".into()),
            ]
        );
        assert_eq!(
            parse_selector(r#" { a = "\u00e9\x41\101" } "#).unwrap(),
            vec![("a".into(), "éAA".into())]
        );
        for bad in [
            "",
            "job=\"x\"",
            "{job=\"x\"",
            "{job=x}",
            "{job=~\"x\"}",
            "{job!=\"x\"}",
            "{1job=\"x\"}",
            "{jo-b=\"x\"}",
            "{job=\"x\" a=\"y\"}",
            "{job=\"x\\q\"}",
            "{job=\"x\"} trailing",
            "{job=\"unterminated}",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_selector("{}").unwrap(), vec![]);
    }

    #[test]
    fn go_texts() {
        assert_eq!(go_quote("a\"b\\\n\u{1}"), r#""a\"b\\\n\x01""#);
        assert_eq!(
            labels_string(&[("a".into(), "x".into()), ("b".into(), "y z".into())]),
            r#"{a="x", b="y z"}"#
        );
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

    #[test]
    fn bodies_decode_protobuf_json_and_gzip() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: "{job=\"t\"}".into(),
                entries: vec![entry(NOW + 5, "line", &[("k", "v")])],
                hash: 0,
            }],
            format: String::new(),
        };
        let pb = encode_protobuf(&req);
        let s = decode_body(Some("application/x-protobuf"), None, &pb, 1 << 20).unwrap();
        assert_eq!(s[0].labels, "{job=\"t\"}");
        assert_eq!(s[0].entries[0].ts_ns, NOW + 5);
        assert_eq!(
            s[0].entries[0].structured_metadata,
            vec![("k".into(), "v".into())]
        );
        // No content type: protobuf; "snappy" encoding tolerated.
        assert!(decode_body(None, Some("snappy"), &pb, 1 << 20).is_ok());
        // Framed snappy or plain protobuf is not a block.
        assert!(matches!(
            decode_body(None, None, &prost::Message::encode_to_vec(&req), 1 << 20),
            Err(DecodeError::Bad(_))
        ));
        let json = format!(
            r#"{{"streams":[{{"stream":{{"job":"t","b":"x y"}},"values":[["{}","l1"],["{}","l2",{{"qname":"a."}}]]}}]}}"#,
            NOW,
            NOW + 1
        );
        let s = decode_body(
            Some("application/json; charset=utf-8"),
            None,
            json.as_bytes(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(s[0].labels, "{b=\"x y\", job=\"t\"}");
        assert_eq!(
            s[0].entries[1].structured_metadata,
            vec![("qname".into(), "a.".into())]
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            decode_body(Some("application/json"), Some("gzip"), &gz, 1 << 20).unwrap()[0]
                .entries
                .len(),
            2
        );
        // A number timestamp is refused.
        let bad = r#"{"streams":[{"stream":{"job":"t"},"values":[[1,"l"]]}]}"#;
        assert!(
            matches!(decode_body(Some("application/json"), None, bad.as_bytes(), 1 << 20), Err(DecodeError::Bad(m)) if m.contains("string of nanoseconds"))
        );
        assert!(
            matches!(decode_body(Some("application/json"), Some("br"), b"{}", 1 << 20), Err(DecodeError::Bad(m)) if m == "Content-Encoding \"br\" not supported")
        );
        assert_eq!(
            decode_body(Some("application/json"), Some("gzip"), &gz, 10),
            Err(DecodeError::TooLarge(10))
        );
    }
}
