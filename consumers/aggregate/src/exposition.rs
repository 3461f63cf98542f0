//! The scrape arrow: aggregate --metrics--> `/metrics`. The whole state as Prometheus text
//! exposition format 0.0.4 (`Content-Type: text/plain; version=0.0.4`), written by hand:
//! `# HELP` and `# TYPE` per family, label values escaped (`\\`, `\"`, `\n`), histograms
//! as cumulative `_bucket{le=...}` (ending with `le="+Inf"`), `_sum` and `_count`.
//!
//! Every series carries `instance`; a Prometheus that scrapes `/metrics` without
//! `honor_labels: true` renames it `exported_instance`.

use std::fmt::Write;

use crate::metrics::{Aggregator, Kind, Le, Sink, Value};

/// The `Content-Type` of [`Aggregator::exposition`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Aggregator {
    /// The whole state as text exposition format, appended to `out`.
    pub fn write_exposition(&self, out: &mut String) {
        self.visit(&mut Text { out });
    }

    /// The whole state as text exposition format.
    pub fn exposition(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        self.write_exposition(&mut out);
        out
    }
}

struct Text<'a> {
    out: &'a mut String,
}

impl Sink for Text<'_> {
    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) {
        let t = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(t);
        self.out.push('\n');
    }

    fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], le: Le, value: Value) {
        let out = &mut *self.out;
        out.push_str(name);
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        match le {
            Le::No => {}
            Le::Inf => out.push_str(",le=\"+Inf\""),
            Le::Bound(b) => {
                out.push_str(",le=\"");
                write_float(out, b);
                out.push('"');
            }
        }
        out.push_str("} ");
        match value {
            Value::Int(n) => out.push_str(itoa::Buffer::new().format(n)),
            Value::Float(f) => write_float(out, f),
        }
        out.push('\n');
    }
}

/// A float as Prometheus reads it: shortest round-trip decimal, `+Inf`, `-Inf`, `NaN`.
pub(crate) fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // `Display` for f64 is the shortest representation that reads back the same.
        let _ = write!(out, "{f}");
    }
}

/// A label value: `\` -> `\\`, `"` -> `\"`, newline -> `\n`.
pub fn escape_label(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` -> `\\`, newline -> `\n`.
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        escape_label(&mut s, "a\\b\"c\nd");
        assert_eq!(s, r#"a\\b\"c\nd"#);
        let mut s = String::new();
        escape_label(&mut s, "plain.example");
        assert_eq!(s, "plain.example");
        let mut s = String::new();
        escape_help(&mut s, "x\\y\n\"z\"");
        assert_eq!(s, "x\\\\y\\n\"z\"");
    }

    #[test]
    fn floats() {
        let f = |v| {
            let mut s = String::new();
            write_float(&mut s, v);
            s
        };
        assert_eq!(f(0.00025), "0.00025");
        assert_eq!(f(8.192), "8.192");
        assert_eq!(f(64000.0), "64000");
        assert_eq!(f(0.0), "0");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NAN), "NaN");
    }
}
