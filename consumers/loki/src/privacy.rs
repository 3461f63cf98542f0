//! tapbus-loki's own privacy view: bus message --(pseudonymise)--> Loki line, for a Loki
//! fed from a clear subject.
//!
//! The message's JSON is copied byte for byte except the client address fields, which go
//! through the configured transform (`[privacy]`, the same modes as a broker output's):
//! an event's `network.query-ip` and `network.response-ip`, its EDNS Client Subnet
//! prefixes (`edns.options[]` with `code` 8), a policy value that matched on the client
//! (`dnstap.policy-match` `CLIENT_IP`), and a reduced record's `key.query-ip`. The labels
//! and structured metadata are then read from the rewritten line, so nothing clear
//! reaches Loki. A message that cannot be rewritten (not JSON, nested too deep) is
//! refused as a bad message rather than sent in clear.

use std::net::IpAddr;

use tapbus_privacy::Pseudonymizer;

/// Deeper than any event or record (4 levels); a bound for bus input.
const MAX_DEPTH: usize = 32;

/// Why a message cannot be rewritten.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot pseudonymise the message: {0}")]
pub struct RewriteError(&'static str);

/// Where the rewriter is, for the fields it transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Top,
    Network,
    Edns,
    Options,
    Option,
    Dnstap,
    Key,
    /// Anything else: copied.
    Other,
}

/// What a string value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Addr,
    Subnet,
    PolicyValue,
    PolicyMatch,
    Plain,
}

struct Rewriter<'a> {
    b: &'a [u8],
    i: usize,
    out: &'a mut Vec<u8>,
    p: &'a Pseudonymizer,
    /// `dnstap.policy-match` was CLIENT_IP.
    client_policy: bool,
}

/// Rewrites `json` into `out` (appended) with the client addresses transformed.
pub fn rewrite(json: &[u8], p: &Pseudonymizer, out: &mut Vec<u8>) -> Result<(), RewriteError> {
    let start = out.len();
    let mut r = Rewriter {
        b: json,
        i: 0,
        out,
        p,
        client_policy: false,
    };
    let res = r.ws().and_then(|_| r.value(At::Top, Field::Plain, 0));
    let res = res.and_then(|_| {
        r.ws()?;
        if r.i == r.b.len() {
            Ok(())
        } else {
            Err(RewriteError("trailing bytes after the JSON value"))
        }
    });
    if res.is_err() {
        r.out.truncate(start);
    }
    res
}

impl Rewriter<'_> {
    fn ws(&mut self) -> Result<(), RewriteError> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.out.push(c);
            self.i += 1;
        }
        Ok(())
    }

    fn peek(&self) -> Result<u8, RewriteError> {
        self.b
            .get(self.i)
            .copied()
            .ok_or(RewriteError("truncated JSON"))
    }

    fn expect(&mut self, c: u8) -> Result<(), RewriteError> {
        if self.peek()? != c {
            return Err(RewriteError("malformed JSON"));
        }
        self.out.push(c);
        self.i += 1;
        Ok(())
    }

    /// The span of a string's raw bytes (without the quotes) starting at the quote; `i`
    /// moves past it.
    fn raw_string(&mut self) -> Result<(usize, usize), RewriteError> {
        let start = self.i + 1;
        let mut j = start;
        loop {
            match self.b.get(j) {
                None => return Err(RewriteError("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => j += 2,
                Some(_) => j += 1,
            }
        }
        self.i = j + 1;
        Ok((start, j))
    }

    fn value(&mut self, at: At, field: Field, depth: usize) -> Result<(), RewriteError> {
        if depth > MAX_DEPTH {
            return Err(RewriteError("nested too deep"));
        }
        match self.peek()? {
            b'{' => self.object(at, depth),
            b'[' => {
                self.expect(b'[')?;
                self.ws()?;
                if self.peek()? == b']' {
                    return self.expect(b']');
                }
                let inner = if at == At::Options {
                    At::Option
                } else {
                    At::Other
                };
                loop {
                    self.ws()?;
                    self.value(inner, Field::Plain, depth + 1)?;
                    self.ws()?;
                    match self.peek()? {
                        b',' => self.expect(b',')?,
                        b']' => return self.expect(b']'),
                        _ => return Err(RewriteError("malformed array")),
                    }
                }
            }
            b'"' => {
                let (s, e) = self.raw_string()?;
                let b = self.b;
                let raw = &b[s..e];
                let text = std::str::from_utf8(raw).map_err(|_| RewriteError("not UTF-8"))?;
                let new = match field {
                    Field::Addr => Some(self.addr(text)),
                    Field::PolicyValue if self.client_policy => Some(self.addr(text)),
                    Field::Subnet => Some(self.subnet(text)),
                    Field::PolicyMatch => {
                        self.client_policy = text == "CLIENT_IP";
                        None
                    }
                    _ => None,
                };
                match new {
                    Some(Some(s)) => {
                        self.out.push(b'"');
                        self.out.extend_from_slice(s.as_bytes());
                        self.out.push(b'"');
                    }
                    // Not an address: it cannot be transformed, so it is not shown.
                    Some(None) => self.out.extend_from_slice(b"null"),
                    None => {
                        self.out.push(b'"');
                        self.out.extend_from_slice(raw);
                        self.out.push(b'"');
                    }
                }
                Ok(())
            }
            _ => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return Err(RewriteError("malformed value"));
                }
                self.out.extend_from_slice(&self.b[start..self.i]);
                Ok(())
            }
        }
    }

    fn object(&mut self, at: At, depth: usize) -> Result<(), RewriteError> {
        self.expect(b'{')?;
        self.ws()?;
        if self.peek()? == b'}' {
            return self.expect(b'}');
        }
        // An option object is an ECS subnet once its `code` is 8 (the encoder writes
        // `code` first); its `data` is read after it.
        let mut ecs = false;
        loop {
            self.ws()?;
            if self.peek()? != b'"' {
                return Err(RewriteError("malformed object key"));
            }
            let key_start = self.i;
            let (ks, ke) = self.raw_string()?;
            let b = self.b;
            let key = &b[ks..ke];
            self.out.extend_from_slice(&b[key_start..self.i]);
            self.ws()?;
            self.expect(b':')?;
            self.ws()?;
            let (child, field) = match (at, key) {
                (At::Top, b"network") => (At::Network, Field::Plain),
                (At::Top, b"edns") => (At::Edns, Field::Plain),
                (At::Top, b"dnstap") => (At::Dnstap, Field::Plain),
                (At::Top, b"key") => (At::Key, Field::Plain),
                (At::Network, b"query-ip" | b"response-ip") => (At::Other, Field::Addr),
                (At::Key, b"query-ip" | b"response-ip") => (At::Other, Field::Addr),
                (At::Edns, b"options") => (At::Options, Field::Plain),
                (At::Option, b"data") if ecs => (At::Other, Field::Subnet),
                (At::Dnstap, b"policy-match") => (At::Other, Field::PolicyMatch),
                (At::Dnstap, b"policy-value") => (At::Other, Field::PolicyValue),
                _ => (At::Other, Field::Plain),
            };
            if at == At::Option && key == b"code" {
                ecs = self.b.get(self.i..self.i + 1) == Some(b"8")
                    && !self.b.get(self.i + 1).is_some_and(|c| c.is_ascii_digit());
            }
            self.value(child, field, depth + 1)?;
            self.ws()?;
            match self.peek()? {
                b',' => self.expect(b',')?,
                b'}' => return self.expect(b'}'),
                _ => return Err(RewriteError("malformed object")),
            }
        }
    }

    fn addr(&self, text: &str) -> Option<String> {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| self.p.addr(ip).to_string())
    }

    /// `192.0.2.0/24` -> the transformed prefix, same length.
    fn subnet(&self, text: &str) -> Option<String> {
        let (a, len) = text.split_once('/')?;
        let ip = a.parse::<IpAddr>().ok()?;
        let len = len.parse::<u8>().ok()?;
        Some(format!("{}/{len}", self.p.prefix(ip, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truncating() -> Pseudonymizer {
        Pseudonymizer::new(&tapbus_privacy::Settings {
            client_ip: tapbus_privacy::Mode::Truncate,
            truncate_v4: 16,
            ..Default::default()
        })
        .expect("pseudonymizer")
    }

    fn rw(json: &str) -> Result<String, RewriteError> {
        let mut out = Vec::new();
        rewrite(json.as_bytes(), &truncating(), &mut out)?;
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn every_client_field_and_nothing_else() {
        let ev = r#"{"network":{"family":"INET","query-ip":"192.0.2.77","query-port":5,"response-ip":"198.51.100.9"},"dns":{"qname":"192.0.2.77.example","resource-records":{"an":[{"rdata":"192.0.2.77"}]}},"edns":{"udp-size":1232,"options":[{"code":8,"name":"CSUBNET","data":"203.0.113.0/24","family":1},{"code":10,"name":"COOKIE","data":"abcd"}]},"dnstap":{"policy-match":"CLIENT_IP","policy-value":"192.0.2.77","extra":"x\"y"}}"#;
        let want = r#"{"network":{"family":"INET","query-ip":"192.0.0.0","query-port":5,"response-ip":"198.51.0.0"},"dns":{"qname":"192.0.2.77.example","resource-records":{"an":[{"rdata":"192.0.2.77"}]}},"edns":{"udp-size":1232,"options":[{"code":8,"name":"CSUBNET","data":"203.0.0.0/24","family":1},{"code":10,"name":"COOKIE","data":"abcd"}]},"dnstap":{"policy-match":"CLIENT_IP","policy-value":"192.0.0.0","extra":"x\"y"}}"#;
        assert_eq!(rw(ev).expect("rewrites"), want);
        let rec =
            r#"{"reduction":"client","key":{"query-ip":"2001:db8:1:2::5","qname":"a"},"count":3}"#;
        assert_eq!(
            rw(rec).expect("rewrites"),
            r#"{"reduction":"client","key":{"query-ip":"2001:db8:1::","qname":"a"},"count":3}"#
        );
    }

    #[test]
    fn a_policy_value_of_another_match_and_nulls_are_kept() {
        let ev = r#"{"network":{"query-ip":null},"dnstap":{"policy-match":"RESPONSE_IP","policy-value":"192.0.2.1"}}"#;
        assert_eq!(rw(ev).expect("rewrites"), ev);
        // A value that is no address is not shown.
        assert_eq!(
            rw(r#"{"network":{"query-ip":"nope"}}"#).expect("rewrites"),
            r#"{"network":{"query-ip":null}}"#
        );
    }

    #[test]
    fn damaged_input_is_refused_and_never_a_panic() {
        let ev = r#"{"network":{"query-ip":"192.0.2.77"},"edns":{"options":[{"code":8,"data":"203.0.113.0/24"}]}}"#;
        for cut in 0..ev.len() {
            assert!(rw(&ev[..cut]).is_err(), "{cut}");
        }
        assert!(rw(&"[".repeat(100)).is_err());
        assert!(rw(r#"{"a":1} x"#).is_err());
    }
}
