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
    if cfg.input.connect.url.is_empty() {
        return Err(ConfigError::Invalid {
            key: "input.url".into(),
            msg: "missing: give --input URL or an [input] table with a url".into(),
        });
    }
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
    let format = if flags.json {
        Format::Json
    } else {
        Format::Text
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
        };
        if filters.is_empty() {
            format!("no filter, {format}")
        } else {
            format!("{}, {format}", filters.join("; "))
        }
    }

    /// Handles one message; `out` gets at most one line. An error from `out` is returned
    /// as is (the caller decides: a closed pipe ends the program quietly).
    pub fn handle(&mut self, payload: &[u8], out: &mut impl Write) -> std::io::Result<Handled> {
        let view = match EventView::parse(payload) {
            Ok(v) => v,
            Err(e) => return Ok(Handled::Bad(describe(&e))),
        };
        if !self.filters.iter().all(|f| f.matches(&view)) {
            return Ok(Handled::Filtered);
        }
        match self.format {
            Format::Json => {
                out.write_all(payload)?;
                out.write_all(b"\n")?;
            }
            Format::Text => {
                self.line.clear();
                tapbus_event::write_line(&view, &mut self.line);
                self.line.push('\n');
                out.write_all(self.line.as_bytes())?;
            }
        }
        Ok(Handled::Printed)
    }
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
