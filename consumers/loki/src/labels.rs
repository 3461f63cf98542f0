//! Labels: the first half of the arrow bus message --> Loki stream. Which stream a line
//! goes to (its label set, written as the LogQL selector text Loki's push API takes),
//! which event fields become structured metadata, and the start-up checks of the
//! `[labels]` table.
//!
//! Raw events (subjects under `dnstap.`) get the static labels, `kind="event"` and the
//! configured event fields; reduced records (subjects under `tapbus.reduced.`) get the
//! static labels, `kind="reduced"`, `reduction` and `identity`. A field an event lacks
//! gives no label (never an empty value). The selector is written the way Loki (the
//! Prometheus label library) prints label sets: names sorted, `name="value"` pairs
//! joined by `", "`, values quoted with Go's escapes, so the stream names Loki quotes
//! in its error messages are the same text.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use tapbus_event::EventView;

/// Most label names per stream Loki accepts by default (`max_label_names_per_series`).
pub const MAX_LABEL_NAMES: usize = 15;
/// Longest label name Loki accepts by default.
pub const MAX_LABEL_NAME_LEN: usize = 1024;
/// Longest label value Loki accepts by default.
pub const MAX_LABEL_VALUE_LEN: usize = 2048;
/// Most structured metadata entries per line Loki accepts by default.
pub const MAX_METADATA: usize = 128;

/// An event field that can become a label or structured metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `dnstap.identity`.
    Identity,
    /// `dnstap.operation` (CLIENT_QUERY, ...).
    Operation,
    /// `network.protocol` (UDP, TCP, DOT, ...).
    Protocol,
    /// `network.family` (INET, INET6).
    Family,
    /// `dns.qtype`.
    Qtype,
    /// `dns.qclass`.
    Qclass,
    /// `dns.rcode`.
    Rcode,
    /// `dnstap.version` (the sender's version string).
    Version,
    /// `dnstap.query-zone`.
    QueryZone,
    /// `dns.qname` (metadata only: unbounded).
    Qname,
    /// `network.query-ip`, the client for CLIENT_* (metadata only).
    QueryAddress,
    /// `network.query-port` (metadata only).
    QueryPort,
    /// `network.response-ip`, the server for CLIENT_* (metadata only).
    ResponseAddress,
    /// `network.response-port` (metadata only).
    ResponsePort,
    /// `geo.country`, the client's country (the broker's `[enrich.geoip]`; metadata only:
    /// a label per country would multiply every stream).
    Country,
    /// `geo.asn`, the client's autonomous system number (metadata only).
    Asn,
}

impl Field {
    /// Every field, in documentation order.
    pub const ALL: &'static [Field] = &[
        Field::Identity,
        Field::Operation,
        Field::Protocol,
        Field::Family,
        Field::Qtype,
        Field::Qclass,
        Field::Rcode,
        Field::Version,
        Field::QueryZone,
        Field::Qname,
        Field::QueryAddress,
        Field::QueryPort,
        Field::ResponseAddress,
        Field::ResponsePort,
        Field::Country,
        Field::Asn,
    ];

    /// The name in the configuration, and as label or metadata name.
    pub fn name(self) -> &'static str {
        match self {
            Field::Identity => "identity",
            Field::Operation => "operation",
            Field::Protocol => "protocol",
            Field::Family => "family",
            Field::Qtype => "qtype",
            Field::Qclass => "qclass",
            Field::Rcode => "rcode",
            Field::Version => "version",
            Field::QueryZone => "query_zone",
            Field::Qname => "qname",
            Field::QueryAddress => "query_address",
            Field::QueryPort => "query_port",
            Field::ResponseAddress => "response_address",
            Field::ResponsePort => "response_port",
            Field::Country => "country",
            Field::Asn => "asn",
        }
    }

    /// Whether the field may be a label: names and addresses are unbounded and would
    /// make a stream per name or client (Loki's cardinality rules); the client's country
    /// and AS would multiply every stream by hundreds.
    pub fn label_allowed(self) -> bool {
        !matches!(
            self,
            Field::Qname
                | Field::QueryAddress
                | Field::QueryPort
                | Field::ResponseAddress
                | Field::ResponsePort
                | Field::Country
                | Field::Asn
        )
    }

    /// The field's value in `ev`; `None` when the event has none or it is empty.
    /// Borrowed for every field that may be a label (no allocation per line).
    pub fn value<'a>(self, ev: &'a EventView<'_>) -> Option<Cow<'a, str>> {
        let v: Cow<'a, str> = match self {
            Field::Identity => Cow::Borrowed(ev.identity()?),
            Field::Operation => ev.operation().as_str(),
            Field::Protocol => ev.protocol()?.as_str(),
            Field::Family => ev.family()?.as_str(),
            Field::Qtype => Cow::Borrowed(ev.qtype()?),
            Field::Qclass => Cow::Borrowed(ev.dns.qclass.as_deref()?),
            Field::Rcode => Cow::Borrowed(ev.rcode()?),
            Field::Version => Cow::Borrowed(ev.dnstap.version.as_deref()?),
            Field::QueryZone => Cow::Borrowed(ev.dnstap.query_zone.as_deref()?),
            Field::Qname => Cow::Borrowed(ev.qname()?),
            Field::QueryAddress => Cow::Owned(ev.network.query_ip?.to_string()),
            Field::QueryPort => Cow::Owned(ev.network.query_port?.to_string()),
            Field::ResponseAddress => Cow::Owned(ev.network.response_ip?.to_string()),
            Field::ResponsePort => Cow::Owned(ev.network.response_port?.to_string()),
            Field::Country => Cow::Borrowed(ev.client_country()?),
            Field::Asn => Cow::Owned(ev.client_asn()?.to_string()),
        };
        (!v.is_empty()).then_some(v)
    }
}

/// Structured metadata of one line: (name, value) pairs.
pub type Metadata = Vec<(&'static str, String)>;

/// The `[labels]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    /// Labels every stream carries (default `job = "tapbus"`).
    #[serde(rename = "static")]
    pub static_labels: BTreeMap<String, String>,
    /// Event fields that become labels of raw events (default identity, operation,
    /// protocol). qname and addresses are refused.
    pub fields: Vec<Field>,
    /// Event fields sent as structured metadata of each raw event's line (default none).
    pub structured_metadata: Vec<Field>,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        LabelsConfig {
            static_labels: BTreeMap::from([("job".to_string(), "tapbus".to_string())]),
            fields: vec![Field::Identity, Field::Operation, Field::Protocol],
            structured_metadata: Vec::new(),
        }
    }
}

/// A `[labels]` table that cannot work; `key` names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct LabelsError {
    pub key: String,
    pub msg: String,
}

fn err(key: impl Into<String>, msg: impl Into<String>) -> LabelsError {
    LabelsError {
        key: key.into(),
        msg: msg.into(),
    }
}

/// Whether `name` is a Loki label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// One slot of a label set, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// A fixed `name="value"` text, already escaped.
    Fixed(String),
    /// An event field: `name="` is fixed, the value comes from the event.
    Field(Field),
    /// A reduced record's `reduction`.
    Reduction,
    /// A reduced record's `identity`.
    RecordIdentity,
}

/// The validated `[labels]` table: builds the selector of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labeler {
    event: Vec<(String, Slot)>,
    record: Vec<(String, Slot)>,
    metadata: Vec<Field>,
}

impl Labeler {
    /// Checks the table (label names, reserved names, cardinality, Loki's limits).
    pub fn new(cfg: &LabelsConfig) -> Result<Labeler, LabelsError> {
        for (name, value) in &cfg.static_labels {
            let key = format!("labels.static.{name}");
            if !valid_label_name(name) {
                return Err(err(
                    key,
                    "not a Loki label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
                ));
            }
            if name.len() > MAX_LABEL_NAME_LEN {
                return Err(err(key, format!("longer than {MAX_LABEL_NAME_LEN} bytes")));
            }
            if matches!(name.as_str(), "kind" | "reduction") {
                return Err(err(key, "reserved: tapbus-loki sets it on every stream"));
            }
            if name == "identity" || cfg.fields.iter().any(|f| f.name() == name) {
                return Err(err(key, "is also an event field label"));
            }
            if value.is_empty() {
                return Err(err(key, "empty value (Loki drops empty labels)"));
            }
            if value.len() > MAX_LABEL_VALUE_LEN {
                return Err(err(
                    key,
                    format!("value longer than {MAX_LABEL_VALUE_LEN} bytes"),
                ));
            }
        }
        for (i, f) in cfg.fields.iter().enumerate() {
            if !f.label_allowed() {
                return Err(err(
                    "labels.fields",
                    format!(
                        "{:?} cannot be a label: one stream per value is more than Loki holds (put it in labels.structured_metadata; labels may be {})",
                        f.name(),
                        Field::ALL
                            .iter()
                            .filter(|f| f.label_allowed())
                            .map(|f| f.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if cfg.fields[..i].contains(f) {
                return Err(err(
                    "labels.fields",
                    format!("{:?} is given twice", f.name()),
                ));
            }
        }
        let n = cfg.static_labels.len() + 1 + cfg.fields.len().max(2);
        if n > MAX_LABEL_NAMES {
            return Err(err(
                "labels.fields",
                format!(
                    "{n} labels per stream (static + kind + fields); Loki accepts {MAX_LABEL_NAMES}"
                ),
            ));
        }
        for (i, f) in cfg.structured_metadata.iter().enumerate() {
            if cfg.structured_metadata[..i].contains(f) {
                return Err(err(
                    "labels.structured_metadata",
                    format!("{:?} is given twice", f.name()),
                ));
            }
        }
        if cfg.structured_metadata.len() > MAX_METADATA {
            return Err(err(
                "labels.structured_metadata",
                format!("more than {MAX_METADATA} entries"),
            ));
        }
        let fixed = |name: &str, value: &str| {
            let mut s = String::new();
            write_pair(&mut s, name, value);
            Slot::Fixed(s)
        };
        let mut event: Vec<(String, Slot)> = cfg
            .static_labels
            .iter()
            .map(|(n, v)| (n.clone(), fixed(n, v)))
            .collect();
        let mut record = event.clone();
        event.push(("kind".into(), fixed("kind", "event")));
        event.extend(
            cfg.fields
                .iter()
                .map(|f| (f.name().to_string(), Slot::Field(*f))),
        );
        event.sort_by(|a, b| a.0.cmp(&b.0));
        record.push(("kind".into(), fixed("kind", "reduced")));
        record.push(("reduction".into(), Slot::Reduction));
        record.push(("identity".into(), Slot::RecordIdentity));
        record.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Labeler {
            event,
            record,
            metadata: cfg.structured_metadata.clone(),
        })
    }

    /// The structured metadata fields.
    pub fn metadata_fields(&self) -> &[Field] {
        &self.metadata
    }

    /// Writes the selector of a raw event into `out` (cleared first).
    pub fn event_selector(&self, ev: &EventView<'_>, out: &mut String) {
        out.clear();
        out.push('{');
        for (name, slot) in &self.event {
            match slot {
                Slot::Fixed(text) => {
                    sep(out);
                    out.push_str(text);
                }
                Slot::Field(f) => {
                    if let Some(v) = f.value(ev) {
                        sep(out);
                        write_pair(out, name, &v);
                    }
                }
                Slot::Reduction | Slot::RecordIdentity => {}
            }
        }
        out.push('}');
    }

    /// Writes the selector of a reduced record into `out` (cleared first).
    pub fn record_selector(&self, rec: &RecordView<'_>, out: &mut String) {
        out.clear();
        out.push('{');
        for (name, slot) in &self.record {
            let value = match slot {
                Slot::Fixed(text) => {
                    sep(out);
                    out.push_str(text);
                    continue;
                }
                Slot::Reduction => Some(rec.reduction.as_ref()),
                Slot::RecordIdentity => rec.identity.as_deref(),
                Slot::Field(_) => None,
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                sep(out);
                write_pair(out, name, v);
            }
        }
        out.push('}');
    }

    /// Reads one bus message: writes its stream's selector into `selector` and returns
    /// its event time (a record's window end) and structured metadata; `None` if it is
    /// neither an event nor a record. Subjects under `tapbus.reduced.` are read as records
    /// first, others as events first (a Redis stream key or MQTT topic may carry either).
    pub fn line(
        &self,
        subject: &str,
        payload: &[u8],
        selector: &mut String,
    ) -> Option<(Option<i64>, Metadata)> {
        let as_record = |selector: &mut String| {
            RecordView::parse(payload).map(|r| {
                self.record_selector(&r, selector);
                (i64::try_from(r.window_end_ns).ok(), Vec::new())
            })
        };
        let as_event = |selector: &mut String| {
            EventView::parse(payload).ok().map(|ev| {
                self.event_selector(&ev, selector);
                let ts = ev.timestamp_ns().and_then(|t| i64::try_from(t).ok());
                (ts, self.event_metadata(&ev))
            })
        };
        if is_record_subject(subject) {
            as_record(selector).or_else(|| as_event(selector))
        } else {
            as_event(selector).or_else(|| as_record(selector))
        }
    }

    /// The structured metadata of a raw event: (name, value) for each configured field
    /// the event has.
    pub fn event_metadata(&self, ev: &EventView<'_>) -> Vec<(&'static str, String)> {
        self.metadata
            .iter()
            .filter_map(|f| Some((f.name(), f.value(ev)?.into_owned())))
            .collect()
    }
}

fn sep(out: &mut String) {
    if out.len() > 1 {
        out.push_str(", ");
    }
}

/// Appends `name="value"` with the value quoted as Go's `strconv.Quote` does.
pub fn write_pair(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value);
    out.push('"');
}

/// Go `strconv.Quote` escaping of `v` (without the quotes): what LogQL and Loki's label
/// printer use.
pub fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Parses a selector as [`write_pair`] writes it (`{a="x", b="y"}`, Go escapes; spaces
/// around the commas are optional) into its pairs; `None` if it is not one.
pub fn parse_selector(s: &str) -> Option<Vec<(String, String)>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        if !valid_label_name(name) && name != "__name__" {
            return None;
        }
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => {
                    let (_, e) = chars.next()?;
                    match e {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'a' => value.push('\u{7}'),
                        'b' => value.push('\u{8}'),
                        'f' => value.push('\u{c}'),
                        'v' => value.push('\u{b}'),
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let mut code = 0u32;
                            for _ in 0..n {
                                let (_, h) = chars.next()?;
                                code = code * 16 + h.to_digit(16)?;
                            }
                            value.push(char::from_u32(code)?);
                        }
                        other => value.push(other),
                    }
                }
                c => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = after[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// What a reduced record (`consumers/reduce/record.schema.json`) gives the Loki writer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordView<'a> {
    /// The reduction's name.
    #[serde(borrow)]
    pub reduction: Cow<'a, str>,
    /// `dnstap.identity` of the events, if they had one.
    #[serde(borrow, default)]
    pub identity: Option<Cow<'a, str>>,
    /// Window end (exclusive), ns since the epoch: the line's timestamp.
    #[serde(rename = "window-end-ns")]
    pub window_end_ns: u64,
}

impl<'a> RecordView<'a> {
    /// Reads a record; `None` if the JSON is not one.
    pub fn parse(json: &'a [u8]) -> Option<RecordView<'a>> {
        serde_json::from_slice(json).ok()
    }
}

/// Whether a bus subject (or MQTT topic) carries reduced records.
pub fn is_record_subject(subject: &str) -> bool {
    subject.starts_with("tapbus.reduced.") || subject.starts_with("tapbus/reduced/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"network":{"family":"INET","protocol":"UDP","query-ip":"192.0.2.1","query-port":5353,"response-ip":"192.0.2.53","response-port":53},"dns":{"length":40,"id":1,"opcode":0,"rcode":"NOERROR","qname":"example.com","qtype":"A","qclass":"IN"},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns\"1","timestamp-rfc3339ns":"2026-11-22T02:41:38.535458000Z","timestamp":1795315298535458000}}"#;

    fn labeler(f: impl FnOnce(&mut LabelsConfig)) -> Result<Labeler, LabelsError> {
        let mut c = LabelsConfig::default();
        f(&mut c);
        Labeler::new(&c)
    }

    #[test]
    fn event_labels_are_sorted_escaped_and_skip_missing_fields() {
        let l = labeler(|_| {}).unwrap();
        let ev = EventView::parse(EVENT.as_bytes()).unwrap();
        let mut s = String::new();
        l.event_selector(&ev, &mut s);
        assert_eq!(
            s,
            r#"{identity="ns\"1", job="tapbus", kind="event", operation="CLIENT_RESPONSE", protocol="UDP"}"#
        );
        let no_proto = EVENT.replace(r#""protocol":"UDP","#, "");
        let ev = EventView::parse(no_proto.as_bytes()).unwrap();
        l.event_selector(&ev, &mut s);
        assert_eq!(
            s,
            r#"{identity="ns\"1", job="tapbus", kind="event", operation="CLIENT_RESPONSE"}"#
        );
        assert_eq!(
            parse_selector(&s).unwrap(),
            vec![
                ("identity".to_string(), "ns\"1".to_string()),
                ("job".into(), "tapbus".into()),
                ("kind".into(), "event".into()),
                ("operation".into(), "CLIENT_RESPONSE".into()),
            ]
        );
    }

    #[test]
    fn record_labels() {
        let l = labeler(|c| {
            c.static_labels.insert("env".into(), "prod".into());
        })
        .unwrap();
        let rec = RecordView::parse(br#"{"id":"x","reduction":"qname","identity":"ns1","window-end-ns":10,"key":{"qname":"a"},"count":1}"#).unwrap();
        let mut s = String::new();
        l.record_selector(&rec, &mut s);
        assert_eq!(
            s,
            r#"{env="prod", identity="ns1", job="tapbus", kind="reduced", reduction="qname"}"#
        );
        let rec =
            RecordView::parse(br#"{"reduction":"client","identity":null,"window-end-ns":10}"#)
                .unwrap();
        l.record_selector(&rec, &mut s);
        assert_eq!(
            s,
            r#"{env="prod", job="tapbus", kind="reduced", reduction="client"}"#
        );
        assert!(RecordView::parse(EVENT.as_bytes()).is_none());
    }

    #[test]
    fn metadata() {
        let l =
            labeler(|c| c.structured_metadata = vec![Field::Qname, Field::QueryAddress]).unwrap();
        let ev = EventView::parse(EVENT.as_bytes()).unwrap();
        assert_eq!(
            l.event_metadata(&ev),
            vec![
                ("qname", "example.com".to_string()),
                ("query_address", "192.0.2.1".to_string())
            ]
        );
    }

    #[test]
    fn geo_metadata_never_labels() {
        let l = labeler(|c| {
            c.structured_metadata = vec![Field::Country, Field::Asn, Field::Qname];
        })
        .unwrap();
        let geo = EVENT.strip_suffix('}').unwrap().to_owned()
            + r#","geo":{"country":"FR","city":"Paris","asn":3215,"as-org":"Orange"},"schema-version":2}"#;
        let ev = EventView::parse(geo.as_bytes()).unwrap();
        assert_eq!(
            l.event_metadata(&ev),
            vec![
                ("country", "FR".to_string()),
                ("asn", "3215".to_string()),
                ("qname", "example.com".to_string()),
            ]
        );
        // Without geo (GeoIP off, a private client): no entry.
        let plain = EventView::parse(EVENT.as_bytes()).unwrap();
        assert_eq!(
            l.event_metadata(&plain),
            vec![("qname", "example.com".to_string())]
        );
        for f in [Field::Country, Field::Asn] {
            let e = labeler(|c| c.fields.push(f)).unwrap_err();
            assert_eq!(e.key, "labels.fields", "{f:?}");
        }
    }

    #[test]
    fn escaping_round_trips() {
        for v in [
            "plain",
            "quote\"back\\slash",
            "nl\ntab\tcr\r",
            "\u{1}\u{7f}\u{85}",
            "ünïcödé ✓",
        ] {
            let mut s = String::from("{");
            write_pair(&mut s, "a", v);
            s.push('}');
            assert_eq!(
                parse_selector(&s),
                Some(vec![("a".into(), v.into())]),
                "{s}"
            );
        }
        let mut s = String::new();
        escape_into(&mut s, "a\"\\\n\u{1}");
        assert_eq!(s, r#"a\"\\\n\x01"#);
        assert_eq!(parse_selector("{}"), Some(vec![]));
        assert_eq!(parse_selector(r#"{a="x",b="y"}"#).map(|v| v.len()), Some(2));
        assert_eq!(parse_selector(r#"{a="x"#), None);
        assert_eq!(parse_selector(r#"{a="x" b="y"}"#), None);
        assert_eq!(parse_selector("nope"), None);
    }

    #[test]
    fn validation_names_the_key() {
        let e = labeler(|c| c.fields.push(Field::Qname)).unwrap_err();
        assert_eq!(e.key, "labels.fields");
        assert!(e.msg.contains("qname"), "{e}");
        let e = labeler(|c| c.fields = vec![Field::QueryAddress]).unwrap_err();
        assert_eq!(e.key, "labels.fields");
        let e = labeler(|c| c.fields.push(Field::Identity)).unwrap_err();
        assert!(e.msg.contains("twice"));
        let e = labeler(|c| {
            c.static_labels.insert("1x".into(), "v".into());
        })
        .unwrap_err();
        assert_eq!(e.key, "labels.static.1x");
        let e = labeler(|c| {
            c.static_labels.insert("__x".into(), "v".into());
        })
        .unwrap_err();
        assert_eq!(e.key, "labels.static.__x");
        let e = labeler(|c| {
            c.static_labels.insert("kind".into(), "v".into());
        })
        .unwrap_err();
        assert_eq!(e.key, "labels.static.kind");
        let e = labeler(|c| {
            c.static_labels.insert("env".into(), String::new());
        })
        .unwrap_err();
        assert_eq!(e.key, "labels.static.env");
        let e = labeler(|c| {
            for i in 0..13 {
                c.static_labels.insert(format!("l{i}"), "v".into());
            }
        })
        .unwrap_err();
        assert_eq!(e.key, "labels.fields");
        let e = labeler(|c| c.structured_metadata = vec![Field::Qname, Field::Qname]).unwrap_err();
        assert_eq!(e.key, "labels.structured_metadata");
        assert!(valid_label_name("_a1"));
        assert!(!valid_label_name(""));
        assert!(!valid_label_name("a-b"));
    }

    #[test]
    fn subjects() {
        assert!(is_record_subject("tapbus.reduced.qname"));
        assert!(!is_record_subject("dnstap.ns1.client_response"));
        assert!(!is_record_subject("tapbus.metrics.x"));
    }
}
