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
//!
//! # Modules
//! * [`wire`]: the `logproto` messages and the body decoder ([`decode_body`]).
//! * [`selector`]: the stream-selector parser ([`parse_selector`]) and label texts.
//! * [`rules`]: Loki's acceptance rules ([`Core`]), [`Limits`], [`Stats`].
//! * [`server`]: the HTTP receiver ([`LokiReceiver`]) and a small client ([`post`]).

pub mod rules;
pub mod selector;
pub mod server;
pub mod wire;

pub use rules::{Answer, Core, Limits, Stats, StoredEntry, go_time_string, group_errors, rfc3339};
pub use selector::{SelectorError, go_quote, labels_string, parse_selector};
pub use server::{LokiReceiver, PostAnswer, RequestRecord, post};
pub use wire::{
    DecodeError, EntryAdapter, InEntry, InStream, LabelPairAdapter, PushRequest, StreamAdapter,
    decode_body, encode_protobuf, entry,
};
