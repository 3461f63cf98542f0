//! [`Record`]: what reduce publishes, the right-hand arrow
//! reduce --records--> `tapbus.reduced.<reduction>`.
//!
//! One record per (reduction, window, identity, key), or per (reduction, window,
//! identity) for an overflow record, and separately for late events (see
//! [`crate::reducer`]). The JSON layout is `consumers/reduce/record.schema.json`
//! ([`SCHEMA`]), kebab-case keys like the events:
//!
//! ```json
//! {"id":"qname.1795315290000000000.5f0c...","reduction":"qname",
//!  "window-start":"2026-11-22T02:41:30.000000000Z","window-start-ns":1795315290000000000,
//!  "window-end":"2026-11-22T02:41:40.000000000Z","window-end-ns":1795315300000000000,
//!  "identity":"ns1","key":{"qname":"example.com"},"count":3,
//!  "first-ns":1795315290100000000,"last-ns":1795315299000000000,"bytes":267,
//!  "late":false,"overflow":false}
//! ```
//!
//! `key` has every configured key field by name; a field the events lacked, and every
//! field of an overflow record, is `null`. `bytes` sums `dns.length` (missing counts 0).

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use serde::ser::SerializeMap;
use tapbus_event::{Operation, Protocol};

use crate::config::KeyField;

/// The record JSON Schema (draft 2020-12).
pub const SCHEMA: &str = include_str!("../record.schema.json");

/// One key field's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyValue {
    /// `query-ip` / `response-ip`.
    Ip(IpAddr),
    /// `qname` (lowercased), `qtype`, `rcode`.
    Str(String),
    /// `operation`.
    Operation(Operation),
    /// `protocol`.
    Protocol(Protocol),
}

impl Serialize for KeyValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeyValue::Ip(ip) => s.collect_str(ip),
            KeyValue::Str(v) => s.serialize_str(v),
            KeyValue::Operation(o) => s.serialize_str(&o.as_str()),
            KeyValue::Protocol(p) => s.serialize_str(&p.as_str()),
        }
    }
}

/// The key fields of a record, in configured order (`None`: the event had no value, or
/// this is an overflow record). Serialized as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Key(pub Vec<(KeyField, Option<KeyValue>)>);

impl Key {
    /// The value of one field (`None` if absent or not a key of this reduction).
    pub fn get(&self, field: KeyField) -> Option<&KeyValue> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, v)| v.as_ref())
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (f, v) in &self.0 {
            m.serialize_entry(f.name(), v)?;
        }
        m.end()
    }
}

/// One reduced record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    /// Deterministic message id (also the JetStream `Nats-Msg-Id`): the reduction, the
    /// window start in ns and the hex xxh3-128 of (reduction, window start, late flag and
    /// the close it was late for, overflow flag, identity, key, count, first, last,
    /// bytes). The same events give the same id, so a re-sent record is dropped by a
    /// JetStream stream; a record rebuilt from other events gets another id, never
    /// dropped as a copy.
    pub id: String,
    /// The reduction's name.
    pub reduction: String,
    /// Window start, RFC 3339 with nanoseconds, UTC.
    pub window_start: String,
    /// Window start, ns since the epoch (a multiple of the window).
    pub window_start_ns: u64,
    /// Window end (exclusive), RFC 3339.
    pub window_end: String,
    /// Window end (exclusive), ns.
    pub window_end_ns: u64,
    /// `dnstap.identity` of the events (`null` if they had none).
    pub identity: Option<String>,
    /// The key fields by name.
    pub key: Key,
    /// Events in the group.
    pub count: u64,
    /// Earliest event time in the group, ns.
    pub first_ns: u64,
    /// Latest event time in the group, ns.
    pub last_ns: u64,
    /// Sum of `dns.length` (missing counted as 0).
    pub bytes: u64,
    /// The events arrived after their window had closed; this record adds to the one(s)
    /// already published for the window.
    pub late: bool,
    /// The group bound was reached: this record holds the events of every group that
    /// did not fit, for this reduction, window and identity; key fields are `null`.
    pub overflow: bool,
    /// Where to publish: `tapbus.reduced.<reduction>` (not part of the JSON).
    #[serde(skip)]
    pub subject: String,
}

impl Record {
    /// Appends the JSON form (one object, no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // A Record holds strings, integers and booleans and its map keys are strings:
        // serializing it cannot fail.
        let mut ser = serde_json::Serializer::new(out);
        if let Err(e) = self.serialize(&mut ser) {
            unreachable!("a Record always serializes: {e}");
        }
    }

    /// The JSON form as a new buffer.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(320);
        self.write_json(&mut v);
        v
    }
}

/// `ns` since the epoch as RFC 3339 with nanoseconds, UTC, like the events'
/// `timestamp-rfc3339ns` (`2026-11-22T02:41:38.535458000Z`). Every u64 fits (year 2554).
pub fn rfc3339_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let days = secs / 86_400;
    let sod = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    let mut s = String::with_capacity(30);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(1_795_315_298_535_458_000),
            "2026-11-22T02:41:38.535458000Z"
        );
        assert_eq!(
            rfc3339_ns(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339_ns(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }
}
