//! [`write_line`]: the one-line text form of `tapbus-tail`, after `dnstap -q` and
//! dnstap_receiver:
//!
//! ```text
//! 2026-11-22T02:41:38.535458Z unbound-resolver CLIENT_RESPONSE NOERROR 127.53.0.20:38169 UDP 89b example.com. A
//! ```
//!
//! time (UTC, microseconds), identity, operation, rcode (`-` for queries), client
//! address:port (IPv6 in brackets), protocol, DNS message size, qname (with the trailing
//! dot), qtype. Every absent field is `-`.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::view::EventView;

/// Appends the line for `view` to `out` (without a newline).
pub fn write_line(view: &EventView<'_>, out: &mut String) {
    match view.dnstap.timestamp_rfc3339ns.as_deref() {
        Some(t) => push_time(out, t),
        None => out.push('-'),
    }
    out.push(' ');
    push_text(out, view.identity());
    out.push(' ');
    out.push_str(&view.operation().as_str());
    out.push(' ');
    push_text(out, view.rcode().filter(|_| !view.is_query()));
    out.push(' ');
    match (view.client_ip(), view.network.query_port) {
        (Some(IpAddr::V6(ip)), Some(port)) => {
            let _ = write!(out, "[{ip}]:{port}");
        }
        (Some(ip), Some(port)) => {
            let _ = write!(out, "{ip}:{port}");
        }
        (Some(ip), None) => {
            let _ = write!(out, "{ip}");
        }
        (None, _) => out.push('-'),
    }
    out.push(' ');
    match view.protocol() {
        Some(p) => out.push_str(&p.as_str()),
        None => out.push('-'),
    }
    out.push(' ');
    match view.size() {
        Some(n) => {
            let _ = write!(out, "{n}b");
        }
        None => out.push('-'),
    }
    out.push(' ');
    match view.qname() {
        Some("") => out.push('-'),
        Some(q) => {
            push_spaceless(out, q);
            if !q.ends_with('.') || q.ends_with("\\.") {
                out.push('.');
            }
        }
        None => out.push('-'),
    }
    out.push(' ');
    push_text(out, view.qtype());
}

/// RFC 3339 with nanoseconds cut to microseconds (`...38.535458000Z` -> `...38.535458Z`);
/// any other layout is shown as it is.
fn push_time(out: &mut String, t: &str) {
    let b = t.as_bytes();
    let n = b.len();
    let nine = n >= 11
        && b[n - 1] == b'Z'
        && b[n - 11] == b'.'
        && b[n - 10..n - 1].iter().all(u8::is_ascii_digit);
    match t.get(..n.saturating_sub(4)).filter(|_| nine) {
        Some(head) => {
            out.push_str(head);
            out.push('Z');
        }
        None => push_spaceless(out, t),
    }
}

/// A text field, `-` when absent or empty.
fn push_text(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) if !s.is_empty() => push_spaceless(out, s),
        _ => out.push('-'),
    }
}

/// Keeps the line splittable on spaces: whitespace and control characters inside a value
/// (an odd identity) are shown as `_`.
fn push_spaceless(out: &mut String, s: &str) {
    if s.bytes().all(|b| b > b' ' && b != 0x7f) {
        out.push_str(s);
    } else {
        out.extend(s.chars().map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> String {
        let v = EventView::parse(json.as_bytes()).expect("event");
        let mut s = String::new();
        write_line(&v, &mut s);
        s
    }

    #[test]
    fn fields_and_absent_fields() {
        assert_eq!(
            line(
                r#"{"network":{"protocol":"TCP","query-ip":"2001:db8::1","query-port":5353},"dns":{"length":40,"qname":"example.com","qtype":"AAAA","rcode":"NOERROR"},"dnstap":{"operation":"CLIENT_QUERY","identity":"a b","timestamp-rfc3339ns":"2026-11-22T02:41:38.535458123Z"}}"#
            ),
            "2026-11-22T02:41:38.535458Z a_b CLIENT_QUERY - [2001:db8::1]:5353 TCP 40b example.com. AAAA"
        );
        assert_eq!(
            line(r#"{"network":{},"dns":{"qname":"."},"dnstap":{"operation":"AUTH_RESPONSE"}}"#),
            "- - AUTH_RESPONSE - - - - . -"
        );
        assert_eq!(
            line(
                r#"{"network":{"query-ip":"10.0.0.1"},"dns":{"rcode":"NXDOMAIN"},"dnstap":{"operation":"UNKNOWN(40)","timestamp-rfc3339ns":"odd"}}"#
            ),
            "odd - UNKNOWN(40) NXDOMAIN 10.0.0.1 - - - -"
        );
    }
}
