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
//! | `country` | `geo.country`, the client's ISO 3166-1 alpha-2 code (`FR`, `de`; ASCII case-insensitive); needs the broker's `[enrich.geoip]` |
//! | `asn` | `geo.asn`, the client's autonomous system number (`3215`, `AS3215`) |
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

const FIELDS: &str =
    "identity, operation, qname, qtype, rcode, client, server, protocol, family, country, asn";

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
    Country,
    Asn,
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
            "country" => Field::Country,
            "asn" => Field::Asn,
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
            Field::Country => "country",
            Field::Asn => "asn",
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
    /// asn.
    Asns(Vec<u32>),
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
            (Test::Asns(a), Test::Asns(b)) => a == b,
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

    /// The terms of both: an event must match `self` and `other`.
    #[must_use]
    pub fn and(mut self, other: Filter) -> Filter {
        self.terms.extend(other.terms);
        self
    }

    /// `identity=ID` for one identity taken as it is (spaces and commas included), as
    /// `tapbus-top` builds it from the identities it has seen.
    pub fn identity_is(id: &str) -> Filter {
        Filter::term(Field::Identity, Test::Text(vec![id.to_owned()]))
    }

    /// `operation=OP`.
    pub fn operation_is(op: Operation) -> Filter {
        Filter::term(Field::Operation, Test::Operation(vec![op]))
    }

    /// `qname~TEXT` with TEXT taken literally: the qname contains it, in any case. Blank
    /// text gives the empty filter; text too long for the regex size limit is an error.
    pub fn qname_contains(text: &str) -> Result<Filter, FilterError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Filter::default());
        }
        let re = RegexBuilder::new(&regex::escape(text))
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| FilterError {
                term: format!("qname~{text}"),
                reason: format!("bad regex: {e}"),
            })?;
        Ok(Filter::term(Field::Qname, Test::Regex(re)))
    }

    fn term(field: Field, test: Test) -> Filter {
        Filter {
            terms: vec![Term {
                field,
                negate: false,
                test,
            }],
        }
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
            Test::Asns(v) => list(f, v),
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
            Field::Country => Test::Text(each(&items, |s| {
                if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Ok(s.to_ascii_uppercase())
                } else {
                    Err(err(format!(
                        "`{s}` is not a country code; use ISO 3166-1 alpha-2 codes (FR, DE, US)"
                    )))
                }
            })?),
            Field::Asn => Test::Asns(each(&items, |s| {
                let n = s
                    .strip_prefix("AS")
                    .or_else(|| s.strip_prefix("as"))
                    .unwrap_or(s);
                n.parse::<u32>().map_err(|_| {
                    err(format!(
                        "`{s}` is not an AS number; use a number (3215) or AS3215"
                    ))
                })
            })?),
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
                    Field::Country => ev.client_country()?,
                    _ => ev.rcode()?,
                };
                items.iter().any(|i| i.eq_ignore_ascii_case(v))
            }
            Test::Operation(items) => items.contains(&ev.operation()),
            Test::Asns(items) => items.contains(&ev.client_asn()?),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An event with the given qname (`None`: null), client and server.
    fn event(qname: Option<&str>, client: &str, server: &str) -> String {
        let q = qname.map_or("null".to_owned(), |q| format!("{q:?}"));
        let ip = |s: &str| {
            if s.is_empty() {
                "null".to_owned()
            } else {
                format!("{s:?}")
            }
        };
        format!(
            r#"{{"network":{{"family":"INET","protocol":"UDP","query-ip":{},"query-port":1,"response-ip":{},"response-port":53}},"dns":{{"length":50,"rcode":"NXDOMAIN","qname":{q},"qtype":"AAAA"}},"edns":null,"dnstap":{{"operation":"CLIENT_RESPONSE","identity":"Unbound-1"}}}}"#,
            ip(client),
            ip(server)
        )
    }

    fn m(filter: &str, json: &str) -> bool {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        let v = EventView::parse(json.as_bytes()).expect("event");
        f.matches(&v)
    }

    fn std_event() -> String {
        event(Some("www.Example.com"), "10.1.2.3", "2001:db8::53")
    }

    #[test]
    fn built_terms_match_like_parsed_ones() {
        let e = std_event();
        let v = EventView::parse(e.as_bytes()).expect("event");
        let q = |t: &str| Filter::qname_contains(t).expect("literal");
        assert!(q("EXAMPLE").matches(&v));
        assert!(q("w.ex").matches(&v));
        // Taken literally: `.` is no wildcard and `(` no group.
        assert!(!q("www-example").matches(&v));
        assert!(!q("www(").matches(&v));
        assert!(q("  ").is_empty());
        assert!(Filter::identity_is("unbound-1").matches(&v));
        assert!(!Filter::identity_is("unbound").matches(&v));
        // An identity with a comma is one identity, not a list.
        assert!(!Filter::identity_is("x,Unbound-1").matches(&v));
        let both = Filter::operation_is(Operation::ClientResponse).and(q("example"));
        assert!(both.matches(&v));
        assert_eq!(both.to_string(), "operation=CLIENT_RESPONSE qname~example");
        assert_eq!(both, Filter::parse(&both.to_string()).expect("round trip"));
        assert!(
            !Filter::operation_is(Operation::ClientQuery)
                .and(q("example"))
                .matches(&v)
        );
    }

    #[test]
    fn country_and_asn() {
        let plain = std_event();
        let geo = plain.strip_suffix('}').expect("object").to_owned()
            + r#","geo":{"country":"FR","asn":3215,"as-org":"Orange"},"schema-version":2}"#;
        let null = plain.strip_suffix('}').expect("object").to_owned() + r#","geo":null}"#;
        assert!(m("country=FR", &geo));
        assert!(m("country=de,fr", &geo));
        assert!(!m("country=DE", &geo));
        assert!(m("country!=DE", &geo));
        assert!(m("asn=3215", &geo) && m("asn=AS1,AS3215", &geo));
        assert!(!m("asn=3216", &geo) && m("asn!=3216", &geo));
        // Without geo (GeoIP off, a private client): never `=`, always `!=`.
        for e in [&plain, &null] {
            assert!(!m("country=FR", e) && m("country!=FR", e));
            assert!(!m("asn=3215", e) && m("asn!=3215", e));
        }
        let f = Filter::parse("country=fr,DE asn=as3215").expect("parses");
        assert_eq!(f.to_string(), "country=FR,DE asn=3215");
        assert_eq!(f, Filter::parse(&f.to_string()).expect("round trip"));
        for bad in [
            "country=FRA",
            "country=F1",
            "asn=x",
            "asn=-1",
            "asn=4294967296",
            "country~F",
        ] {
            assert!(Filter::parse(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn empty_matches_everything() {
        assert!(m("", &std_event()));
        assert!(m("   ", &std_event()));
        assert!(Filter::parse("").expect("empty").is_empty());
        assert_eq!(Filter::parse("").expect("empty").to_string(), "");
    }

    #[test]
    fn enum_fields() {
        let e = std_event();
        assert!(m("operation=CLIENT_RESPONSE", &e));
        assert!(m("operation=client_response", &e));
        assert!(m("operation=6", &e));
        assert!(!m("operation=CLIENT_QUERY", &e));
        assert!(m("operation!=CLIENT_QUERY", &e));
        assert!(m("operation=client_query,client_response", &e));
        assert!(!m("operation!=client_query,client_response", &e));
        assert!(m("protocol=udp", &e));
        assert!(!m("protocol=tcp,dot", &e));
        assert!(m("protocol!=TCP", &e));
        assert!(m("family=inet", &e));
        assert!(!m("family=INET6", &e));
        // Absent protocol: `=` never matches, `!=` always does.
        let none = r#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}}"#;
        assert!(!m("protocol=UDP", none));
        assert!(m("protocol!=UDP", none));
        assert!(!m("family=INET", none));
        assert!(m("family!=INET", none));
    }

    #[test]
    fn text_fields() {
        let e = std_event();
        assert!(m("identity=Unbound-1", &e));
        assert!(m("identity=unbound-1", &e));
        assert!(!m("identity=unbound", &e));
        assert!(m("identity=bind,unbound-1", &e));
        assert!(m("identity!=bind", &e));
        assert!(m("qtype=AAAA", &e));
        assert!(m("qtype=aaaa", &e));
        assert!(m("qtype=28", &e));
        assert!(m("qtype=TYPE28", &e));
        assert!(!m("qtype=A", &e));
        assert!(m("qtype=A,AAAA", &e));
        assert!(m("rcode=NXDOMAIN", &e));
        assert!(m("rcode=nxdomain", &e));
        assert!(m("rcode=3", &e));
        assert!(!m("rcode=NOERROR", &e));
        assert!(m("rcode!=NOERROR,SERVFAIL", &e));
        assert!(!m("rcode!=NOERROR,NXDOMAIN", &e));
        let none = r#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}}"#;
        for f in ["identity", "qtype", "rcode", "qname", "client", "server"] {
            let v = if f == "client" || f == "server" {
                "10.0.0.1"
            } else if f == "qtype" {
                "A"
            } else if f == "rcode" {
                "NOERROR"
            } else {
                "x"
            };
            assert!(!m(&format!("{f}={v}"), none), "{f}");
            assert!(m(&format!("{f}!={v}"), none), "{f}");
        }
        assert!(!m("qname~.", none));
        assert!(m("qname!~.", none));
    }

    #[test]
    fn qname_exact_and_below() {
        let e = |q: &str| event(Some(q), "10.0.0.1", "");
        assert!(m("qname=www.example.com", &e("www.Example.com")));
        assert!(m("qname=WWW.EXAMPLE.COM.", &e("www.example.com")));
        assert!(!m("qname=example.com", &e("www.example.com")));
        for pat in [
            "*.example.com",
            ".example.com",
            "*.Example.COM.",
            ".example.com.",
        ] {
            assert!(m(&format!("qname={pat}"), &e("example.com")), "{pat}");
            assert!(m(&format!("qname={pat}"), &e("www.example.com")), "{pat}");
            assert!(m(&format!("qname={pat}"), &e("a.b.EXAMPLE.com")), "{pat}");
            // Label boundary.
            assert!(!m(&format!("qname={pat}"), &e("badexample.com")), "{pat}");
            assert!(!m(&format!("qname={pat}"), &e("example.com.evil")), "{pat}");
            assert!(!m(&format!("qname={pat}"), &e("com")), "{pat}");
            // An escaped dot is inside a label, not a boundary.
            assert!(
                !m(&format!("qname={pat}"), &e(r"bad\.example.com")),
                "{pat}"
            );
            assert!(m(&format!("qname={pat}"), &e(r"a\\.example.com")), "{pat}");
            assert!(!m(&format!("qname!={pat}"), &e("www.example.com")), "{pat}");
            assert!(m(&format!("qname!={pat}"), &e("badexample.com")), "{pat}");
        }
        assert!(m("qname=.", &e(".")));
        assert!(!m("qname=.", &e("com")));
        assert!(m("qname=*.", &e("com")));
        assert!(m("qname=foo.org,*.example.com", &e("x.example.com")));
        assert!(m("qname=foo.org,*.example.com", &e("foo.org")));
        assert!(!m("qname=foo.org,*.example.com", &e("bar.org")));
    }

    #[test]
    fn qname_regex() {
        let e = |q: &str| event(Some(q), "10.0.0.1", "");
        assert!(m("qname~^www\\.", &e("WWW.example.com")));
        assert!(m("qname~EXAMPLE", &e("www.example.com")));
        assert!(!m("qname~^example", &e("www.example.com")));
        assert!(m("qname!~^example", &e("www.example.com")));
        // Commas belong to the regex.
        assert!(m("qname~^w{1,3}\\.", &e("www.example.com")));
        assert!(!m("qname~^w{4,5}\\.", &e("www.example.com")));
    }

    #[test]
    fn addresses_and_networks() {
        let v4 = event(Some("a"), "10.1.2.3", "192.0.2.53");
        let v6 = event(Some("a"), "2001:db8::1", "::1");
        assert!(m("client=10.1.2.3", &v4));
        assert!(!m("client=10.1.2.4", &v4));
        assert!(m("client=10.0.0.0/8", &v4));
        assert!(m("client=10.1.2.3/32", &v4));
        assert!(!m("client=11.0.0.0/8", &v4));
        assert!(m("client=11.0.0.0/8,10.1.0.0/16", &v4));
        assert!(m("client!=11.0.0.0/8", &v4));
        assert!(!m("client=::/0", &v4));
        assert!(m("client=0.0.0.0/0", &v4));
        assert!(m("client=::ffff:10.1.2.3", &v4));
        assert!(m("client=::ffff:10.0.0.0/104", &v4));
        assert!(m("server=192.0.2.0/24", &v4));
        assert!(!m("server=192.0.3.0/24", &v4));
        assert!(m("client=2001:db8::/32", &v6));
        assert!(m("client=2001:db8::1", &v6));
        assert!(!m("client=2001:db9::/32", &v6));
        assert!(!m("client=10.0.0.0/8", &v6));
        assert!(m("server=::1/128", &v6));
        assert!(m("server=::1", &v6));
        assert!(!m("server=::2", &v6));
        let none = event(Some("a"), "", "");
        assert!(!m("client=0.0.0.0/0,::/0", &none));
        assert!(m("client!=0.0.0.0/0,::/0", &none));
    }

    #[test]
    fn terms_are_anded() {
        let e = std_event();
        assert!(m(
            "operation=CLIENT_RESPONSE qname=*.example.com client=10.0.0.0/8",
            &e
        ));
        assert!(!m(
            "operation=CLIENT_RESPONSE qname=*.example.com client=11.0.0.0/8",
            &e
        ));
        assert!(!m("operation=CLIENT_QUERY qname=*.example.com", &e));
        assert!(m("rcode!=NOERROR rcode!=SERVFAIL", &e));
    }

    #[test]
    fn canonical_display_parses_back() {
        let cases = [
            ("operation=client_response", "operation=CLIENT_RESPONSE"),
            ("QNAME=WWW.Example.COM.", "qname=www.example.com"),
            (
                "qname=.example.com,*.Example.org",
                "qname=*.example.com,*.example.org",
            ),
            ("qtype=aaaa,28,type65534", "qtype=AAAA,AAAA,TYPE65534"),
            ("rcode!=nxdomain,rcode12", "rcode!=NXDOMAIN,RCODE12"),
            ("client=10.1.2.3/8,::1/128", "client=10.0.0.0/8,::1"),
            ("server!=192.0.2.1", "server!=192.0.2.1"),
            (
                "protocol=dnscrypttcp family=inet6",
                "protocol=DNSCryptTCP family=INET6",
            ),
            ("qname~^WWW\\.", "qname~^WWW\\."),
            (
                "identity=Unbound-1   qname!~x",
                "identity=Unbound-1 qname!~x",
            ),
            ("operation=UNKNOWN(99)", "operation=UNKNOWN(99)"),
        ];
        for (input, canon) in cases {
            let f = Filter::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(f.to_string(), canon, "{input}");
            let again = Filter::parse(canon).unwrap_or_else(|e| panic!("{canon}: {e}"));
            assert_eq!(again, f, "{input}");
        }
    }

    #[test]
    fn errors_name_the_term_and_what_is_allowed() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "qname=a foo=bar",
                "foo=bar",
                "fields are identity, operation",
            ),
            ("=x", "=x", "expected FIELD OP VALUE"),
            ("qname", "qname", "expected an operator"),
            ("qname>x", "qname>x", "`=` or `!=`"),
            ("qname=", "qname=", "no value"),
            ("rcode=NOERROR,", "rcode=NOERROR,", "empty item"),
            (
                "operation=CLIENT",
                "operation=CLIENT",
                "CLIENT_QUERY, CLIENT_RESPONSE",
            ),
            ("protocol=SCTP", "protocol=SCTP", "UDP, TCP, DOT"),
            ("family=ipx", "family=ipx", "INET, INET6"),
            ("rcode=NXDOMIAN", "rcode=NXDOMIAN", "NOERROR, FORMERR"),
            ("qtype=AAA", "qtype=AAA", "TYPEnnn"),
            (
                "client=10.0.0.0/33",
                "client=10.0.0.0/33",
                "not an address or CIDR",
            ),
            (
                "server=example.com",
                "server=example.com",
                "not an address or CIDR",
            ),
            ("rcode~NO", "rcode~NO", "only allowed for qname"),
            ("qname~(", "qname~(", "bad regex"),
        ];
        for (expr, term, hint) in cases {
            let e = Filter::parse(expr).expect_err(expr);
            assert_eq!(&e.term, term, "{expr}");
            let msg = e.to_string();
            assert!(msg.contains(term) && msg.contains(hint), "{expr}: {msg}");
        }
    }
}
