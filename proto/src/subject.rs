//! Subject and topic naming: where on the bus an event is published.
//!
//! A template such as `dnstap.{identity}.{operation}` is parsed once at start-up and
//! rendered per event from its [`Summary`]. Values taken from the data are made into one
//! safe token for the bus: for NATS `.`, `*`, `>` and whitespace become `_`; for MQTT `/`,
//! `+`, `#` become `_`; for both, control characters become `_`, a leading `$` (reserved)
//! becomes `_` and an empty value becomes `unknown`.
//!
//! Placeholders: `{identity}`, `{operation}` (lower case, `client_response`), `{qtype}`
//! (`A`, `AAAA`, `TYPE65534`), `{rcode}` (`NOERROR`), `{protocol}` (`UDP`, `DOT`, ...).

use crate::event::{Summary, dns, operation_name, protocol_name};

/// Which bus's naming rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// NATS subjects and Redis channels: tokens separated by `.`.
    Nats,
    /// MQTT topics: levels separated by `/`.
    Mqtt,
}

impl Flavor {
    fn separator(self) -> char {
        match self {
            Flavor::Nats => '.',
            Flavor::Mqtt => '/',
        }
    }
    fn is_unsafe(self, c: char) -> bool {
        c.is_whitespace()
            || c.is_control()
            || match self {
                Flavor::Nats => matches!(c, '.' | '*' | '>'),
                Flavor::Mqtt => matches!(c, '/' | '+' | '#'),
            }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Identity,
    Operation,
    Qtype,
    Rcode,
    Protocol,
}

/// A parsed subject/topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    flavor: Flavor,
}

/// A template that can never produce a valid subject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template is empty")]
    Empty,
    #[error("unknown placeholder {{{0}}} (use identity, operation, qtype, rcode, protocol)")]
    UnknownPlaceholder(String),
    #[error("unclosed '{{' in template")]
    Unclosed,
    #[error("template has an empty token (two separators in a row, or one at an end)")]
    EmptyToken,
    #[error("template contains the wildcard or forbidden character {0:?}")]
    Forbidden(char),
}

impl std::fmt::Display for Template {
    /// The template as written (`dnstap.{identity}.{operation}`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            f.write_str(match p {
                Part::Lit(l) => l.as_str(),
                Part::Identity => "{identity}",
                Part::Operation => "{operation}",
                Part::Qtype => "{qtype}",
                Part::Rcode => "{rcode}",
                Part::Protocol => "{protocol}",
            })?;
        }
        Ok(())
    }
}

impl Template {
    /// The default NATS subject template.
    pub const DEFAULT_NATS: &'static str = "dnstap.{identity}.{operation}";
    /// The default MQTT topic template.
    pub const DEFAULT_MQTT: &'static str = "dnstap/{identity}/{operation}";

    /// Parses and validates a template.
    pub fn parse(template: &str, flavor: Flavor) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        let sep = flavor.separator();
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or(TemplateError::Unclosed)?;
                parts.push(match &after[..end] {
                    "identity" => Part::Identity,
                    "operation" => Part::Operation,
                    "qtype" => Part::Qtype,
                    "rcode" => Part::Rcode,
                    "protocol" => Part::Protocol,
                    other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
                });
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let lit = &rest[..end];
                if let Some(c) = lit
                    .chars()
                    .find(|&c| c != sep && (flavor.is_unsafe(c) || c == '}'))
                {
                    return Err(TemplateError::Forbidden(c));
                }
                parts.push(Part::Lit(lit.to_string()));
                rest = &rest[end..];
            }
        }
        // Placeholders never render empty, so empty tokens can only come from literals.
        let shape: String = parts
            .iter()
            .map(|p| match p {
                Part::Lit(l) => l.as_str(),
                _ => "x",
            })
            .collect();
        if shape.split(sep).any(str::is_empty) {
            return Err(TemplateError::EmptyToken);
        }
        Ok(Template { parts, flavor })
    }

    /// The tokens every rendered subject has, separator by separator: `Some(text)` where
    /// the token is always that text, `None` where a placeholder makes it vary
    /// (`dnstap.{identity}.{operation}` -> `dnstap`, any, any).
    pub fn tokens(&self) -> Vec<Option<String>> {
        let sep = self.flavor.separator();
        let mut out = vec![Some(String::new())];
        for p in &self.parts {
            match p {
                Part::Lit(l) => {
                    let mut pieces = l.split(sep);
                    if let Some(first) = pieces.next()
                        && let Some(Some(t)) = out.last_mut()
                    {
                        t.push_str(first);
                    }
                    for piece in pieces {
                        out.push(Some(piece.to_string()));
                    }
                }
                _ => {
                    if let Some(t) = out.last_mut() {
                        *t = None;
                    }
                }
            }
        }
        out
    }

    /// The part of a summary this template reads (unused fields cleared): two summaries
    /// with the same key render the same subject, so it can key a cache.
    pub fn key(&self, s: &Summary) -> Summary {
        let uses = |p: Part| self.parts.contains(&p);
        Summary {
            identity: if uses(Part::Identity) {
                s.identity.clone()
            } else {
                bytes::Bytes::new()
            },
            operation: if uses(Part::Operation) {
                s.operation
            } else {
                0
            },
            protocol: s.protocol.filter(|_| uses(Part::Protocol)),
            qtype: s.qtype.filter(|_| uses(Part::Qtype)),
            rcode: s.rcode.filter(|_| uses(Part::Rcode)),
            malformed_dns: false,
        }
    }

    /// Renders the subject for one event into `out` (cleared first).
    pub fn render(&self, s: &Summary, out: &mut String) {
        out.clear();
        for p in &self.parts {
            let start = out.len();
            match p {
                Part::Lit(l) => {
                    out.push_str(l);
                    continue;
                }
                Part::Identity => out.push_str(&String::from_utf8_lossy(&s.identity)),
                Part::Operation => match operation_name(s.operation) {
                    Some(n) => out.extend(n.chars().map(|c| c.to_ascii_lowercase())),
                    None => {
                        out.push_str("unknown_");
                        out.push_str(itoa::Buffer::new().format(s.operation));
                    }
                },
                Part::Qtype => {
                    if let Some(t) = s.qtype {
                        dns::type_name(t, out);
                    }
                }
                Part::Rcode => {
                    if let Some(r) = s.rcode {
                        match dns::rcode_name(r) {
                            Some(n) => out.push_str(n),
                            None => {
                                out.push_str("RCODE");
                                out.push_str(itoa::Buffer::new().format(r));
                            }
                        }
                    }
                }
                Part::Protocol => {
                    if let Some(p) = s.protocol {
                        match protocol_name(p) {
                            Some(n) => out.push_str(n),
                            None => {
                                out.push_str("UNKNOWN_");
                                out.push_str(itoa::Buffer::new().format(p));
                            }
                        }
                    }
                }
            }
            self.sanitize_from(out, start);
        }
    }

    /// Makes `out[start..]` one safe token.
    fn sanitize_from(&self, out: &mut String, start: usize) {
        if out.len() == start {
            out.push_str("unknown");
            return;
        }
        let tok = &out[start..];
        let bad = |c: char| self.flavor.is_unsafe(c);
        if tok.starts_with('$') || tok.contains(bad) {
            let clean: String = tok
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if bad(c) || (i == 0 && c == '$') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            out.truncate(start);
            out.push_str(&clean);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn summary(identity: &'static [u8]) -> Summary {
        Summary {
            identity: Bytes::from_static(identity),
            operation: 6,
            protocol: Some(4),
            qtype: Some(28),
            rcode: Some(3),
            malformed_dns: false,
        }
    }

    fn render(t: &str, f: Flavor, s: &Summary) -> String {
        let mut out = String::new();
        Template::parse(t, f).expect("valid").render(s, &mut out);
        out
    }

    #[test]
    fn default_subjects() {
        let s = summary(b"ns1");
        assert_eq!(
            render(Template::DEFAULT_NATS, Flavor::Nats, &s),
            "dnstap.ns1.client_response"
        );
        assert_eq!(
            render(Template::DEFAULT_MQTT, Flavor::Mqtt, &s),
            "dnstap/ns1/client_response"
        );
        assert_eq!(
            render("x.{qtype}.{rcode}.{protocol}", Flavor::Nats, &s),
            "x.AAAA.NXDOMAIN.DOH"
        );
    }

    #[test]
    fn identities_become_one_token() {
        let t = Template::DEFAULT_NATS;
        assert_eq!(
            render(t, Flavor::Nats, &summary(b"ns1.example.com")),
            "dnstap.ns1_example_com.client_response"
        );
        assert_eq!(
            render(t, Flavor::Nats, &summary(b"a*b>c d\te")),
            "dnstap.a_b_c_d_e.client_response"
        );
        assert_eq!(
            render(t, Flavor::Nats, &summary(b"")),
            "dnstap.unknown.client_response"
        );
        assert_eq!(
            render(t, Flavor::Nats, &summary(b"$SYS")),
            "dnstap._SYS.client_response"
        );
        let m = Template::DEFAULT_MQTT;
        assert_eq!(
            render(m, Flavor::Mqtt, &summary(b"a/b+c#d.e")),
            "dnstap/a_b_c_d.e/client_response"
        );
        assert_eq!(
            render(m, Flavor::Mqtt, &summary(b"\xff")),
            "dnstap/\u{fffd}/client_response"
        );
    }

    #[test]
    fn unknown_values() {
        let mut s = summary(b"x");
        s.operation = 99;
        s.qtype = None;
        s.rcode = Some(4000);
        s.protocol = Some(42);
        assert_eq!(
            render("{operation}.{qtype}.{rcode}.{protocol}", Flavor::Nats, &s),
            "unknown_99.unknown.RCODE4000.UNKNOWN_42"
        );
    }

    #[test]
    fn keys_keep_only_what_the_template_uses() {
        let t = Template::parse(Template::DEFAULT_NATS, Flavor::Nats).expect("valid");
        let a = summary(b"ns1");
        let mut b = a.clone();
        b.qtype = Some(1);
        b.rcode = None;
        b.protocol = Some(1);
        assert_eq!(t.key(&a), t.key(&b));
        b.operation = 5;
        assert_ne!(t.key(&a), t.key(&b));
        let t = Template::parse("x.{rcode}", Flavor::Nats).expect("valid");
        let mut c = a.clone();
        c.rcode = None;
        assert_ne!(t.key(&a), t.key(&c));
        assert!(t.key(&a).identity.is_empty());
    }

    #[test]
    fn bad_templates() {
        use TemplateError::*;
        assert_eq!(Template::parse("", Flavor::Nats), Err(Empty));
        assert_eq!(
            Template::parse("a.{nope}", Flavor::Nats),
            Err(UnknownPlaceholder("nope".into()))
        );
        assert_eq!(Template::parse("a.{identity", Flavor::Nats), Err(Unclosed));
        assert_eq!(
            Template::parse("a..{identity}", Flavor::Nats),
            Err(EmptyToken)
        );
        assert_eq!(
            Template::parse("a.{identity}.", Flavor::Nats),
            Err(EmptyToken)
        );
        assert_eq!(
            Template::parse("a.*.{identity}", Flavor::Nats),
            Err(Forbidden('*'))
        );
        assert_eq!(Template::parse("a/#", Flavor::Mqtt), Err(Forbidden('#')));
        assert!(Template::parse("a.b/c.{identity}", Flavor::Nats).is_ok());
    }
}
