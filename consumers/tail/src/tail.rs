//! The core of tapbus-tail, without sockets: one bus message in, one line (or nothing)
//! out. The event is parsed with the borrowing view of `tapbus-event`, matched against
//! the filters and written as the one-line text form or as the JSON it arrived as.

use std::io::Write;

use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig, ConsumerInputSpec};
use tapbus_event::{EventView, Filter, ViewError};

const PROGRAM: &str = "tapbus-tail";

/// What the command line sets over the file and the environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags<'a> {
    pub config: Option<&'a std::path::Path>,
    pub input: Option<&'a str>,
    pub filters: &'a [String],
    pub count: Option<u64>,
    pub json: bool,
    /// `--format`: text, json or yaml (`--json` is `--format json`).
    pub format: Option<&'a str>,
}

/// The configuration file (`--config`, then `TAPBUS_*`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    pub input: ConsumerInputConfig,
    /// Filter expression applied to every event (with any --filter).
    pub filter: Option<String>,
}

/// Loads the file and the environment, applies the flags and validates.
pub fn settings(flags: &Flags<'_>) -> Result<(ConsumerInputSpec, Tail), ConfigError> {
    let mut cfg: TailConfig = tapbus_config::load(flags.config, TailConfig::default())?;
    if let Some(url) = flags.input {
        cfg.input.set_url(url);
    }
    tapbus_consumer::require_url("input", &cfg.input.connect.url)?;
    let spec = cfg.input.validate("input", PROGRAM)?;
    let mut filters = Vec::new();
    for (key, expr) in cfg
        .filter
        .iter()
        .map(|f| ("filter", f))
        .chain(flags.filters.iter().map(|f| ("--filter", f)))
    {
        filters.push(Filter::parse(expr).map_err(|e| ConfigError::Invalid {
            key: key.into(),
            msg: format!("{expr:?}: {e}"),
        })?);
    }
    if flags.count == Some(0) {
        return Err(ConfigError::Invalid {
            key: "--count".into(),
            msg: "must be at least 1".into(),
        });
    }
    let format = match (flags.format, flags.json) {
        (None, false) => Format::Text,
        (None | Some("json"), true) | (Some("json"), false) => Format::Json,
        (Some("text"), false) => Format::Text,
        (Some("yaml"), false) => Format::Yaml,
        (Some(f), true) => {
            return Err(ConfigError::Invalid {
                key: "--json".into(),
                msg: format!("is --format json, and --format {f} is given too"),
            });
        }
        (Some(f), false) => {
            return Err(ConfigError::Invalid {
                key: "--format".into(),
                msg: format!("{f:?}: use text, json or yaml"),
            });
        }
    };
    Ok((spec, Tail::new(filters, format)))
}

/// What became of one message.
#[derive(Debug, PartialEq)]
pub enum Handled {
    /// Written to the output.
    Printed,
    /// A valid event that did not match the filters.
    Filtered,
    /// Not a tapbus event (bad JSON or wrong shape): skipped.
    Bad(String),
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One readable line per event (`tapbus_event::write_line`).
    Text,
    /// The event's JSON exactly as it came off the bus.
    Json,
    /// One YAML document per message (`---` first), keys in the JSON's order, for a
    /// person reading events one by one (like `dnstap -y`).
    Yaml,
}

/// Filters and format; reused scratch space.
#[derive(Debug)]
pub struct Tail {
    filters: Vec<Filter>,
    format: Format,
    line: String,
}

impl Tail {
    /// Every filter must match (each `--filter` is itself an AND of terms).
    pub fn new(filters: Vec<Filter>, format: Format) -> Tail {
        Tail {
            filters,
            format,
            line: String::with_capacity(256),
        }
    }

    /// `filter A; filter B, text` for `--check`.
    pub fn describe(&self) -> String {
        let filters: Vec<String> = self.filters.iter().map(|f| format!("filter {f}")).collect();
        let format = match self.format {
            Format::Text => "text",
            Format::Json => "json",
            Format::Yaml => "yaml",
        };
        if filters.is_empty() {
            format!("no filter, {format}")
        } else {
            format!("{}, {format}", filters.join("; "))
        }
    }

    /// Handles one message: a dnstap event, a reduced record (`tapbus.reduced.*`) or a
    /// metric batch (`tapbus.metrics.*`). `out` gets one line (a batch in text: a header
    /// line and one line per series). Filters are about events: with a filter, records
    /// and batches are filtered out. An error from `out` is returned as is (the caller
    /// decides: a closed pipe ends the program quietly).
    pub fn handle(&mut self, payload: &[u8], out: &mut impl Write) -> std::io::Result<Handled> {
        let view = match EventView::parse(payload) {
            Ok(v) => v,
            Err(e) => return self.other(payload, &describe(&e), out),
        };
        if !self.filters.iter().all(|f| f.matches(&view)) {
            return Ok(Handled::Filtered);
        }
        match self.format {
            Format::Json => {
                out.write_all(payload)?;
                out.write_all(b"\n")?;
            }
            Format::Yaml => return yaml(payload, out),
            Format::Text => {
                self.line.clear();
                tapbus_event::write_line(&view, &mut self.line);
                self.line.push('\n');
                out.write_all(self.line.as_bytes())?;
            }
        }
        Ok(Handled::Printed)
    }

    /// A message that is no event: a record or a batch is printed, anything else is bad
    /// (`why` says what the event parser found).
    fn other(
        &mut self,
        payload: &[u8],
        why: &str,
        out: &mut impl Write,
    ) -> std::io::Result<Handled> {
        let Some(kind) = Other::of(payload) else {
            return Ok(Handled::Bad(why.to_owned()));
        };
        if !self.filters.is_empty() {
            return Ok(Handled::Filtered);
        }
        match self.format {
            Format::Json => {
                out.write_all(payload)?;
                out.write_all(b"\n")?;
            }
            Format::Yaml => return yaml(payload, out),
            Format::Text => {
                self.line.clear();
                kind.write_text(&mut self.line);
                out.write_all(self.line.as_bytes())?;
            }
        }
        Ok(Handled::Printed)
    }
}

/// One YAML document for a JSON message, keys in their order. Every string is written
/// double-quoted (JSON's escapes are YAML's), so no YAML 1.1 reader takes a timestamp,
/// `yes` or `on` for anything but the string it is.
fn yaml(payload: &[u8], out: &mut impl Write) -> std::io::Result<Handled> {
    let value: serde_norway::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Ok(Handled::Bad(format!("not JSON: {e}"))),
    };
    let mut text = String::from("---\n");
    write_yaml(&value, 0, &mut text);
    out.write_all(text.as_bytes())?;
    Ok(Handled::Printed)
}

/// Block-style YAML of a JSON value at `indent` (a mapping's or sequence's items each on
/// their own line; scalars and empty collections inline).
fn write_yaml(v: &serde_norway::Value, indent: usize, out: &mut String) {
    use serde_norway::Value as Y;
    let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
    match v {
        Y::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                pad(out, indent);
                key(k, out);
                out.push(':');
                child(v, indent, out);
            }
        }
        Y::Sequence(s) if !s.is_empty() => {
            for v in s {
                pad(out, indent);
                out.push('-');
                child(v, indent, out);
            }
        }
        other => {
            pad(out, indent);
            scalar(other, out);
            out.push('\n');
        }
    }
}

/// After `key:` or `-`: a scalar on the same line, a collection on the next lines.
fn child(v: &serde_norway::Value, indent: usize, out: &mut String) {
    use serde_norway::Value as Y;
    match v {
        Y::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            write_yaml(v, indent + 2, out);
        }
        Y::Sequence(s) if !s.is_empty() => {
            out.push('\n');
            write_yaml(v, indent + 2, out);
        }
        other => {
            out.push(' ');
            scalar(other, out);
            out.push('\n');
        }
    }
}

/// A key plain when it is a plain word no YAML reader reads as anything else
/// (`query-ip`), else quoted.
fn key(k: &serde_norway::Value, out: &mut String) {
    if let serde_norway::Value::String(s) = k
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !matches!(
            s.as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        )
    {
        out.push_str(s);
    } else {
        scalar(k, out);
    }
}

fn scalar(v: &serde_norway::Value, out: &mut String) {
    use serde_norway::Value as Y;
    match v {
        Y::Null => out.push_str("null"),
        Y::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Y::Number(n) => out.push_str(&n.to_string()),
        Y::String(s) => out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())),
        Y::Mapping(m) if m.is_empty() => out.push_str("{}"),
        Y::Sequence(s) if s.is_empty() => out.push_str("[]"),
        // Not from JSON (tags, non-empty collections as keys): as JSON, a YAML flow form.
        other => out.push_str(&serde_json::to_string(other).unwrap_or_else(|_| "null".into())),
    }
}

/// The other tapbus messages on the bus.
enum Other {
    /// tapbus-reduce's record (consumers/reduce/record.schema.json).
    Record(serde_json::Map<String, serde_json::Value>),
    /// tapbus-aggregate's batch (consumers/aggregate/batch.schema.json).
    Batch(serde_json::Map<String, serde_json::Value>),
}

impl Other {
    fn of(payload: &[u8]) -> Option<Other> {
        let serde_json::Value::Object(m) = serde_json::from_slice(payload).ok()? else {
            return None;
        };
        let has = |k: &[&str]| k.iter().all(|k| m.contains_key(*k));
        if has(&["reduction", "window-start", "key", "count"]) {
            Some(Other::Record(m))
        } else if has(&["instance", "seq", "timestamp_ms", "series"]) && m["series"].is_array() {
            Some(Other::Batch(m))
        } else {
            None
        }
    }

    /// `RECORD 2026-11-22T02:41:30.000000000Z client ns1 qname=example.com query-ip=10.0.0.1 count=3 bytes=180 late`
    /// (key fields by name)
    /// or `BATCH agg-1 seq=7 2026-...Z 412 series` and then `  name{label="v",...} value`.
    fn write_text(&self, line: &mut String) {
        use std::fmt::Write as _;
        let text = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        };
        match self {
            Other::Record(m) => {
                let _ = write!(
                    line,
                    "RECORD {} {} {}",
                    text(m.get("window-start")),
                    text(m.get("reduction")),
                    text(m.get("identity"))
                );
                if let Some(serde_json::Value::Object(key)) = m.get("key") {
                    for (k, v) in key {
                        let _ = write!(line, " {k}={}", text(Some(v)));
                    }
                }
                let _ = write!(
                    line,
                    " count={} bytes={}",
                    text(m.get("count")),
                    text(m.get("bytes"))
                );
                for flag in ["late", "overflow"] {
                    if m.get(flag) == Some(&serde_json::Value::Bool(true)) {
                        let _ = write!(line, " {flag}");
                    }
                }
                line.push('\n');
            }
            Other::Batch(m) => {
                let series = m["series"].as_array().map_or(&[][..], Vec::as_slice);
                let ts = m
                    .get("timestamp_ms")
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map_or("-".into(), rfc3339_ms);
                let _ = writeln!(
                    line,
                    "BATCH {} seq={} {ts} {} series",
                    text(m.get("instance")),
                    text(m.get("seq")),
                    series.len()
                );
                for s in series {
                    let _ = write!(line, "  {}", text(s.get("name")));
                    if let Some(serde_json::Value::Object(labels)) = s.get("labels") {
                        line.push('{');
                        for (i, (k, v)) in labels.iter().enumerate() {
                            if i > 0 {
                                line.push(',');
                            }
                            let _ =
                                write!(line, "{k}={}", serde_json::Value::String(text(Some(v))));
                        }
                        line.push('}');
                    }
                    let _ = writeln!(line, " {}", text(s.get("value")));
                }
            }
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC), as the events write their times.
fn rfc3339_ms(ms: u64) -> String {
    let mut out = Vec::with_capacity(32);
    let nanos = u32::try_from(ms % 1000).unwrap_or(0) * 1_000_000;
    tapbus_proto::event::json::rfc3339_ns(&mut out, ms / 1000, nanos);
    String::from_utf8_lossy(&out).trim_matches('"').to_owned()
}

fn describe(e: &ViewError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"{"network":{"family":"INET","protocol":"UDP","query-ip":"127.0.0.1","query-port":5353,"response-ip":"127.0.0.2","response-port":53,"http-protocol":null},"dns":{"length":60,"id":1,"opcode":0,"rcode":"NXDOMAIN","qname":"nope.example.com","qtype":"A","qclass":"IN","flags":{"qr":true,"aa":false,"tc":false,"rd":true,"ra":true,"z":false,"ad":false,"cd":false},"qdcount":1,"ancount":0,"nscount":0,"arcount":0,"resource-records":{"an":[],"ns":[],"ar":[]},"malformed-packet":false},"edns":null,"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns1","version":null,"extra":null,"timestamp-rfc3339ns":"2026-11-22T02:41:38.535458Z","timestamp":1795315298535458000,"latency":0.001,"query-zone":null,"peer-name":"","policy-type":null,"policy-action":null,"policy-match":null,"policy-rule":null,"policy-value":null}}"#;

    fn run(tail: &mut Tail, payload: &[u8]) -> (Handled, String) {
        let mut out = Vec::new();
        let h = tail.handle(payload, &mut out).expect("write to a Vec");
        (h, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn json_is_passed_through_byte_for_byte() {
        let mut t = Tail::new(vec![], Format::Json);
        let (h, out) = run(&mut t, RESPONSE.as_bytes());
        assert_eq!(h, Handled::Printed);
        assert_eq!(out, format!("{RESPONSE}\n"));
    }

    #[test]
    fn text_is_one_line_with_the_fields_an_operator_reads() {
        let mut t = Tail::new(vec![], Format::Text);
        let (h, out) = run(&mut t, RESPONSE.as_bytes());
        assert_eq!(h, Handled::Printed);
        assert_eq!(out.lines().count(), 1);
        for want in [
            "2026-11-22T02:41:38.535458Z",
            "ns1",
            "CLIENT_RESPONSE",
            "NXDOMAIN",
            "127.0.0.1:5353",
            "UDP",
            "nope.example.com",
            " A",
        ] {
            assert!(out.contains(want), "{want:?} missing in {out:?}");
        }
    }

    #[test]
    fn filters_all_have_to_match() {
        let f = |s: &str| Filter::parse(s).expect("filter");
        let mut t = Tail::new(
            vec![f("operation=CLIENT_RESPONSE"), f("qname=*.example.com")],
            Format::Json,
        );
        assert_eq!(run(&mut t, RESPONSE.as_bytes()).0, Handled::Printed);
        let mut t = Tail::new(
            vec![f("operation=CLIENT_RESPONSE"), f("rcode=NOERROR")],
            Format::Json,
        );
        let (h, out) = run(&mut t, RESPONSE.as_bytes());
        assert_eq!(h, Handled::Filtered);
        assert!(out.is_empty());
    }

    #[test]
    fn bad_messages_are_reported_not_printed() {
        let mut t = Tail::new(vec![], Format::Json);
        for bad in [&b"not json"[..], b"{}", b"{\"dnstap\":1}", b""] {
            let (h, out) = run(&mut t, bad);
            assert!(matches!(h, Handled::Bad(_)), "{bad:?}: {h:?}");
            assert!(out.is_empty());
        }
    }

    const RECORD: &str = r#"{"id":"client.1795315290000000000.0123456789abcdef0123456789abcdef","reduction":"client","window-start":"2026-11-22T02:41:30.000000000Z","window-start-ns":1795315290000000000,"window-end":"2026-11-22T02:41:40.000000000Z","window-end-ns":1795315300000000000,"identity":"ns1","key":{"query-ip":"10.0.0.1","qname":"example.com","rcode":null},"count":3,"first-ns":1795315290000000001,"last-ns":1795315299000000000,"bytes":180,"late":true,"overflow":false}"#;
    const BATCH: &str = r#"{"instance":"agg-1","seq":7,"timestamp_ms":1795315298535,"series":[{"name":"dnstap_messages_total","labels":{"instance":"agg-1","identity":"ns1"},"value":42.0},{"name":"dnstap_up","labels":{"instance":"agg-1"},"value":1.0}]}"#;

    #[test]
    fn yaml_documents_hold_every_field_in_order() {
        let mut t = Tail::new(Vec::new(), Format::Yaml);
        let mut out = Vec::new();
        assert_eq!(
            t.handle(RESPONSE.as_bytes(), &mut out).expect("write"),
            Handled::Printed
        );
        assert_eq!(
            t.handle(RESPONSE.as_bytes(), &mut out).expect("write"),
            Handled::Printed
        );
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("---\nnetwork:\n"), "{text}");
        let want: serde_json::Value = serde_json::from_str(RESPONSE).expect("json");
        let docs: Vec<serde_json::Value> = text
            .split("---\n")
            .filter(|d| !d.is_empty())
            .map(|d| serde_norway::from_str(d).expect("YAML parses"))
            .collect();
        assert_eq!(docs, vec![want.clone(), want]);
        // The JSON's order, not sorted: network, dns, edns, dnstap.
        let keys: Vec<&str> = text
            .lines()
            .skip(1)
            .take_while(|l| *l != "---")
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert_eq!(keys, ["network", "dns", "edns", "dnstap"]);
    }

    #[test]
    fn records_and_batches_are_printed_too() {
        let mut t = Tail::new(vec![], Format::Text);
        let (h, out) = run(&mut t, RECORD.as_bytes());
        assert_eq!(h, Handled::Printed);
        assert_eq!(
            out,
            "RECORD 2026-11-22T02:41:30.000000000Z client ns1 qname=example.com query-ip=10.0.0.1 rcode=- count=3 bytes=180 late\n"
        );
        let (h, out) = run(&mut t, BATCH.as_bytes());
        assert_eq!(h, Handled::Printed);
        assert_eq!(
            out,
            "BATCH agg-1 seq=7 2026-11-22T02:41:38.535000000Z 2 series\n  dnstap_messages_total{identity=\"ns1\",instance=\"agg-1\"} 42.0\n  dnstap_up{instance=\"agg-1\"} 1.0\n"
        );
        let mut j = Tail::new(vec![], Format::Json);
        for m in [RECORD, BATCH] {
            let (h, out) = run(&mut j, m.as_bytes());
            assert_eq!(h, Handled::Printed);
            assert_eq!(out, format!("{m}\n"), "passed through byte for byte");
        }
        // Filters are about events: records and batches do not match them.
        let mut f = Tail::new(
            vec![Filter::parse("rcode=NXDOMAIN").expect("filter")],
            Format::Json,
        );
        assert_eq!(
            run(&mut f, RECORD.as_bytes()),
            (Handled::Filtered, String::new())
        );
        assert_eq!(
            run(&mut f, BATCH.as_bytes()),
            (Handled::Filtered, String::new())
        );
        // Other JSON stays bad, with the event parser's reason.
        let (h, _) = run(&mut t, br#"{"reduction":"x"}"#);
        assert!(matches!(h, Handled::Bad(_)), "{h:?}");
        let (h, _) = run(
            &mut t,
            br#"{"instance":"a","seq":1,"timestamp_ms":1,"series":{}}"#,
        );
        assert!(matches!(h, Handled::Bad(_)), "{h:?}");
    }

    /// Every key the configuration file accepts is documented: in docs/tail.md, `[input]` in
    /// docs/bus-urls.md.
    #[test]
    fn every_config_key_is_documented() {
        let mut cfg = TailConfig::default();
        cfg.input.subscribe = Some(
            serde_json::from_value(serde_json::json!({"mode": "jetstream"})).expect("subscribe"),
        );
        let v = serde_json::to_value(&cfg).expect("serialise");
        tapbus_testsupport::docs::assert_documented(&v, "tail.md", &[("input", "bus-urls.md")]);
    }
}
