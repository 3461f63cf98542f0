//! [`Filter`]: the filter expressions of `tapbus-tail --filter` and of a broker output's
//! `filter` key.
//!
//! ```text
//! expression = term { " " term }          all terms must match (AND); empty matches all
//! term       = FIELD OP VALUE
//! OP         = "=" | "!=" | "~" | "!~"     (~ and !~ only for qname)
//! VALUE      = item { "," item }          any item matches (OR); for ~ one regex
//! ```
//!
//! | field | values |
//! | --- | --- |
//! | `identity` | the dnstap identity (ASCII case-insensitive) |
//! | `operation` | `CLIENT_QUERY`, `client_response`, ..., `UNKNOWN(n)` or the number |
//! | `qname` | a name (case-insensitive, trailing dot ignored); `*.example.com` or `.example.com`: example.com and every name below it; with `~`: a regex (case-insensitive, on the name without trailing dot) |
//! | `qtype` | `A`, `aaaa`, `TYPE65534`, or the number |
//! | `rcode` | `NOERROR`, `nxdomain`, `RCODE12`, or the number |
//! | `client` | `network.query-ip`: an address or a CIDR (`10.0.0.0/8`, `::1/128`) |
//! | `server` | `network.response-ip`: the same |
//! | `protocol` | `UDP`, `TCP`, `DOT`, `DOH`, `DNSCryptUDP`, `DNSCryptTCP`, `DOQ` |
//! | `family` | `INET`, `INET6` |
//!
//! An event without the field (no qname, no address, ...) never matches `=` or `~` and
//! always matches `!=` and `!~`. Values cannot contain spaces; only the regex may contain
//! commas.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::{Regex, RegexBuilder};

use crate::names;
use crate::view::{EventView, Family, Operation, Protocol};

/// A filter expression that does not parse: which term, and what is allowed there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad filter term `{term}`: {reason}")]
pub struct FilterError {
    /// The offending term as written.
    pub term: String,
    /// What is wrong and what would be allowed.
    pub reason: String,
}

const FIELDS: &str = "identity, operation, qname, qtype, rcode, client, server, protocol, family";

/// A parsed filter expression (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
struct Term {
    field: Field,
    negate: bool,
    test: Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Identity,
    Operation,
    Qname,
    Qtype,
    Rcode,
    Client,
    Server,
    Protocol,
    Family,
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s.to_ascii_lowercase().as_str() {
            "identity" => Field::Identity,
            "operation" => Field::Operation,
            "qname" => Field::Qname,
            "qtype" => Field::Qtype,
            "rcode" => Field::Rcode,
            "client" => Field::Client,
            "server" => Field::Server,
            "protocol" => Field::Protocol,
            "family" => Field::Family,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Field::Identity => "identity",
            Field::Operation => "operation",
            Field::Qname => "qname",
            Field::Qtype => "qtype",
            Field::Rcode => "rcode",
            Field::Client => "client",
            Field::Server => "server",
            Field::Protocol => "protocol",
            Field::Family => "family",
        }
    }
}

#[derive(Debug, Clone)]
enum Test {
    /// identity, qtype, rcode: ASCII case-insensitive equality with any item.
    Text(Vec<String>),
    Operation(Vec<Operation>),
    Protocol(Vec<Protocol>),
    Family(Vec<Family>),
    /// qname `=` / `!=`.
    Names(Vec<NamePattern>),
    /// qname `~` / `!~`.
    Regex(Regex),
    /// client, server.
    Nets(Vec<IpNet>),
}

impl PartialEq for Test {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Test::Text(a), Test::Text(b)) => a == b,
            (Test::Operation(a), Test::Operation(b)) => a == b,
            (Test::Protocol(a), Test::Protocol(b)) => a == b,
            (Test::Family(a), Test::Family(b)) => a == b,
            (Test::Names(a), Test::Names(b)) => a == b,
            (Test::Regex(a), Test::Regex(b)) => a.as_str() == b.as_str(),
            (Test::Nets(a), Test::Nets(b)) => a == b,
            _ => false,
        }
    }
}

/// A qname item, lowercase, without the trailing dot (root is `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    /// The name and everything below it (`""`: the root, so every name).
    Below(String),
}

impl NamePattern {
    fn parse(item: &str) -> NamePattern {
        let lower = item.to_ascii_lowercase();
        let suffix = lower
            .strip_prefix("*.")
            .or_else(|| lower.strip_prefix('.').filter(|_| lower != "."));
        match suffix {
            Some(s) => NamePattern::Below(trim_dot(s).trim_end_matches('.').to_owned()),
            None => NamePattern::Exact(trim_dot(&lower).to_owned()),
        }
    }

    fn matches(&self, qname: &str) -> bool {
        let q = trim_dot(qname);
        match self {
            NamePattern::Exact(n) => q.eq_ignore_ascii_case(n),
            NamePattern::Below(s) if s.is_empty() => true,
            NamePattern::Below(s) => {
                if q.len() < s.len() {
                    return false;
                }
                let cut = q.len() - s.len();
                let (head, tail) = q.as_bytes().split_at(cut);
                if !tail.eq_ignore_ascii_case(s.as_bytes()) {
                    return false;
                }
                match head.split_last() {
                    None => true,
                    // The dot must be a label separator, not an escaped `\.` inside a label.
                    Some((b'.', rest)) => {
                        rest.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
                    }
                    Some(_) => false,
                }
            }
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Below(s) => write!(f, "*.{s}"),
        }
    }
}

/// `example.com.` -> `example.com`; the root `.` stays.
fn trim_dot(s: &str) -> &str {
    match s.strip_suffix('.') {
        Some(t) if !t.is_empty() && !t.ends_with('\\') => t,
        _ => s,
    }
}

impl Filter {
    /// Parses an expression; an empty (or all-blank) one matches every event.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let terms = expr
            .split_ascii_whitespace()
            .map(Term::parse)
            .collect::<Result<_, _>>()?;
        Ok(Filter { terms })
    }

    /// Every term matches the event.
    pub fn matches(&self, ev: &EventView<'_>) -> bool {
        self.terms.iter().all(|t| t.matches(ev))
    }

    /// No terms: matches everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Filter, FilterError> {
        Filter::parse(s)
    }
}

impl fmt::Display for Filter {
    /// The canonical form: one space between terms, enum names in upper case, qnames in
    /// lower case without the trailing dot, networks truncated to their prefix. It parses
    /// back to an equal filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match (&self.test, self.negate) {
            (Test::Regex(_), false) => "~",
            (Test::Regex(_), true) => "!~",
            (_, false) => "=",
            (_, true) => "!=",
        };
        write!(f, "{}{op}", self.field.name())?;
        fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{x}")?;
            }
            Ok(())
        }
        match &self.test {
            Test::Text(v) => list(f, v),
            Test::Operation(v) => list(f, v),
            Test::Protocol(v) => list(f, v),
            Test::Family(v) => list(f, v),
            Test::Names(v) => list(f, v),
            Test::Regex(r) => f.write_str(r.as_str()),
            Test::Nets(v) => {
                for (i, n) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if n.prefix_len() == n.max_prefix_len() {
                        write!(f, "{}", n.addr())?;
                    } else {
                        write!(f, "{n}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl Term {
    fn parse(term: &str) -> Result<Term, FilterError> {
        let err = |reason: String| FilterError {
            term: term.to_owned(),
            reason,
        };
        let name_len = term
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(term.len());
        let (name, rest) = term.split_at(name_len);
        if name.is_empty() {
            return Err(err(format!(
                "expected FIELD OP VALUE, e.g. qname=example.com; fields are {FIELDS}"
            )));
        }
        let field = Field::parse(name)
            .ok_or_else(|| err(format!("unknown field `{name}`; fields are {FIELDS}")))?;
        let (op, value) = if let Some(v) = rest.strip_prefix("!=") {
            ("!=", v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            ("!~", v)
        } else if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else if let Some(v) = rest.strip_prefix('~') {
            ("~", v)
        } else {
            return Err(err(format!(
                "expected an operator after `{name}`: `=` or `!=` (and `~`, `!~` for qname)"
            )));
        };
        if value.is_empty() {
            return Err(err(format!("no value after `{name}{op}`")));
        }
        let negate = op.starts_with('!');
        if op.ends_with('~') {
            if field != Field::Qname {
                return Err(err(format!(
                    "`{op}` (regex) is only allowed for qname; use `=` or `!=` for {name}"
                )));
            }
            let re = RegexBuilder::new(value)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| err(format!("bad regex: {e}")))?;
            return Ok(Term {
                field,
                negate,
                test: Test::Regex(re),
            });
        }
        let mut items = Vec::new();
        for item in value.split(',') {
            if item.is_empty() {
                return Err(err("empty item in the comma-separated list".to_owned()));
            }
            items.push(item);
        }
        let test = match field {
            Field::Identity => Test::Text(items.iter().map(|s| (*s).to_owned()).collect()),
            Field::Qtype => Test::Text(each(&items, |s| {
                names::canonical(names::TYPES, "TYPE", s).ok_or_else(|| {
                    err(format!(
                        "unknown qtype `{s}`; use a type mnemonic (A, AAAA, MX, TXT, HTTPS, ...), TYPEnnn or a number"
                    ))
                })
            })?),
            Field::Rcode => Test::Text(each(&items, |s| {
                names::canonical(names::RCODES, "RCODE", s).ok_or_else(|| {
                    let all: Vec<&str> = names::RCODES.iter().map(|(_, n)| *n).collect();
                    err(format!(
                        "unknown rcode `{s}`; use one of {}, RCODEnnn or a number",
                        all.join(", ")
                    ))
                })
            })?),
            Field::Operation => Test::Operation(each(&items, |s| {
                Operation::from_name(s).ok_or_else(|| {
                    err(format!(
                        "unknown operation `{s}`; use one of {} (any case) or UNKNOWN(n)",
                        Operation::names()
                    ))
                })
            })?),
            Field::Protocol => Test::Protocol(each(&items, |s| {
                Protocol::from_name(s).ok_or_else(|| {
                    err(format!(
                        "unknown protocol `{s}`; use one of {} (any case)",
                        Protocol::names()
                    ))
                })
            })?),
            Field::Family => Test::Family(each(&items, |s| {
                Family::from_name(s).ok_or_else(|| {
                    err(format!(
                        "unknown family `{s}`; use one of {} (any case)",
                        Family::names()
                    ))
                })
            })?),
            Field::Qname => Test::Names(items.iter().map(|s| NamePattern::parse(s)).collect()),
            Field::Client | Field::Server => Test::Nets(each(&items, |s| {
                parse_net(s).ok_or_else(|| {
                    err(format!(
                        "`{s}` is not an address or CIDR network (e.g. 192.0.2.1, 10.0.0.0/8, 2001:db8::/32, ::1)"
                    ))
                })
            })?),
        };
        Ok(Term {
            field,
            negate,
            test,
        })
    }

    fn matches(&self, ev: &EventView<'_>) -> bool {
        match self.test(ev) {
            Some(hit) => hit != self.negate,
            None => self.negate,
        }
    }

    /// Whether any item matches; `None` when the event lacks the field.
    fn test(&self, ev: &EventView<'_>) -> Option<bool> {
        Some(match &self.test {
            Test::Text(items) => {
                let v = match self.field {
                    Field::Identity => ev.identity()?,
                    Field::Qtype => ev.qtype()?,
                    _ => ev.rcode()?,
                };
                items.iter().any(|i| i.eq_ignore_ascii_case(v))
            }
            Test::Operation(items) => items.contains(&ev.operation()),
            Test::Protocol(items) => items.contains(&ev.protocol()?),
            Test::Family(items) => items.contains(&ev.family()?),
            Test::Names(items) => {
                let q = ev.qname()?;
                items.iter().any(|p| p.matches(q))
            }
            Test::Regex(re) => re.is_match(ev.qname()?),
            Test::Nets(nets) => {
                let ip = match self.field {
                    Field::Client => ev.client_ip()?,
                    _ => ev.server_ip()?,
                };
                let ip = unmap(ip);
                nets.iter().any(|n| n.contains(&ip))
            }
        })
    }
}

fn each<T, E>(items: &[&str], f: impl Fn(&str) -> Result<T, E>) -> Result<Vec<T>, E> {
    items.iter().map(|s| f(s)).collect()
}

/// An address (a host network) or a CIDR network, truncated to its prefix; IPv4-mapped
/// IPv6 becomes IPv4, as the event shows it.
fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n.trunc(),
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    if let IpNet::V6(n) = net
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && n.prefix_len() >= 96
    {
        return ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
            .ok()
            .map(|n| IpNet::V4(n.trunc()));
    }
    Some(net)
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
