//! Bounded label values: every label of every metric comes from a fixed table or from a
//! bounded [`Interner`], so the number of series is bounded whatever the events say.
//!
//! Placeholders (never empty strings, which Prometheus treats as an absent label):
//!
//! * [`NONE`] (`"none"`): the value is absent from the event (`null`).
//! * [`OTHER`] (`"other"`): a value outside the table (an unlisted qtype, `RCODE12`, an
//!   `UNKNOWN(n)` operation, protocol or family), or an identity / zone beyond its bound.
//!
//! A real identity or zone spelled `none` or `other` shares the placeholder's series.

use rustc_hash::FxHashMap;
use tapbus_event::names::RCODES;
use tapbus_event::{Family, Operation, Protocol};

/// The label value of an absent field.
pub const NONE: &str = "none";
/// The label value of a field outside its table or beyond its bound.
pub const OTHER: &str = "other";

/// The `qtype` / `type` label values kept as themselves (CoreDNS's monitored types plus
/// SVCB, CAA and NAPTR); every other type is [`OTHER`], an absent question [`NONE`].
pub const QTYPES: &[&str] = &[
    "A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS", "SVCB", "DS", "DNSKEY",
    "RRSIG", "NSEC", "NSEC3", "CAA", "NAPTR", "IXFR", "AXFR", "ANY",
];

/// Index of [`OTHER`] in the qtype label space (values: `QTYPES`, then other, then none).
pub(crate) const QTYPE_OTHER: u8 = QTYPES.len() as u8;
pub(crate) const QTYPE_NONE: u8 = QTYPE_OTHER + 1;

/// `qtype` label index of an event's `dns.qtype`.
pub(crate) fn qtype(s: Option<&str>) -> u8 {
    match s {
        None => QTYPE_NONE,
        Some(s) => QTYPES
            .iter()
            .position(|t| t.len() == s.len() && *t == s)
            .map_or(QTYPE_OTHER, |i| i as u8),
    }
}

pub(crate) fn qtype_name(i: u8) -> &'static str {
    label(QTYPES, i)
}

/// `rcode` label index: the named RCODEs of [`tapbus_event::names::RCODES`] (NOERROR,
/// FORMERR, ..., BADVERS, ..., BADCOOKIE), then other (`RCODEnnn`), then none.
pub(crate) const RCODE_OTHER: u8 = RCODES.len() as u8;
pub(crate) const RCODE_NONE: u8 = RCODE_OTHER + 1;

pub(crate) fn rcode(s: Option<&str>) -> u8 {
    match s {
        None => RCODE_NONE,
        Some(s) => RCODES
            .iter()
            .position(|(_, n)| n.len() == s.len() && *n == s)
            .map_or(RCODE_OTHER, |i| i as u8),
    }
}

pub(crate) fn rcode_name(i: u8) -> &'static str {
    match RCODES.get(usize::from(i)) {
        Some((_, n)) => n,
        None if i == RCODE_OTHER => OTHER,
        None => NONE,
    }
}

/// `operation` label: the 14 dnstap message types by name, `other` for `UNKNOWN(n)`.
const OPERATIONS: &[&str] = &[
    "AUTH_QUERY",
    "AUTH_RESPONSE",
    "RESOLVER_QUERY",
    "RESOLVER_RESPONSE",
    "CLIENT_QUERY",
    "CLIENT_RESPONSE",
    "FORWARDER_QUERY",
    "FORWARDER_RESPONSE",
    "STUB_QUERY",
    "STUB_RESPONSE",
    "TOOL_QUERY",
    "TOOL_RESPONSE",
    "UPDATE_QUERY",
    "UPDATE_RESPONSE",
];

pub(crate) fn operation(op: Operation) -> u8 {
    match op {
        Operation::Unknown(_) => OPERATIONS.len() as u8,
        known => (known.code() - 1) as u8,
    }
}

pub(crate) fn operation_name(i: u8) -> &'static str {
    OPERATIONS.get(usize::from(i)).copied().unwrap_or(OTHER)
}

/// `protocol` label: UDP, TCP, DOT, DOH, DNSCryptUDP, DNSCryptTCP, DOQ, other, none.
const PROTOCOLS: &[&str] = &[
    "UDP",
    "TCP",
    "DOT",
    "DOH",
    "DNSCryptUDP",
    "DNSCryptTCP",
    "DOQ",
];

pub(crate) fn protocol(p: Option<Protocol>) -> u8 {
    match p {
        None => PROTOCOLS.len() as u8 + 1,
        Some(Protocol::Unknown(_)) => PROTOCOLS.len() as u8,
        Some(known) => (known.code() - 1) as u8,
    }
}

pub(crate) fn protocol_name(i: u8) -> &'static str {
    label(PROTOCOLS, i)
}

/// CoreDNS's `proto` label: `udp` for UDP, DNSCrypt over UDP and DoQ (QUIC runs on UDP),
/// `tcp` for TCP, DoT, DoH and DNSCrypt over TCP; other, none.
pub(crate) fn coredns_proto(protocol_index: u8) -> u8 {
    match protocol_index {
        0 | 4 | 6 => 0,
        1..=3 | 5 => 1,
        7 => 2,
        _ => 3,
    }
}

pub(crate) fn coredns_proto_name(i: u8) -> &'static str {
    label(&["udp", "tcp"], i)
}

/// `family` label: INET, INET6, other, none.
const FAMILIES: &[&str] = &["INET", "INET6"];

pub(crate) fn family(f: Option<Family>) -> u8 {
    match f {
        None => 3,
        Some(Family::Inet) => 0,
        Some(Family::Inet6) => 1,
        Some(Family::Unknown(_)) => 2,
    }
}

pub(crate) fn family_name(i: u8) -> &'static str {
    label(FAMILIES, i)
}

/// CoreDNS's `family` label: `1` (IPv4), `2` (IPv6), other, none.
pub(crate) fn coredns_family_name(i: u8) -> &'static str {
    label(&["1", "2"], i)
}

/// `table[i]`, then [`OTHER`] at `table.len()`, then [`NONE`].
fn label(table: &[&'static str], i: u8) -> &'static str {
    let i = usize::from(i);
    match table.get(i) {
        Some(s) => s,
        None if i == table.len() => OTHER,
        None => NONE,
    }
}

/// A zone as CoreDNS shows it: with the trailing dot (the event has none; root is `.`).
pub(crate) fn dotted(zone: &str) -> Box<str> {
    if zone.ends_with('.') {
        zone.into()
    } else {
        format!("{zone}.").into()
    }
}

/// Strings (identities, zones) to small indices, at most `max` distinct ones besides the
/// two placeholders: index [`Interner::OTHER`] is `other` (where every value beyond the
/// bound goes, counted in [`Interner::overflow`]), index [`Interner::NONE`] is `none`.
/// A lookup of a known value hashes the borrowed `&str` and allocates nothing.
#[derive(Debug, Clone)]
pub struct Interner {
    map: FxHashMap<Box<str>, u32>,
    /// Shown form, by index.
    names: Vec<Box<str>>,
    /// The value as looked up, by index.
    raw: Vec<Box<str>>,
    /// The index found last: a stream usually repeats one identity, and comparing with it
    /// is cheaper than hashing.
    last: u32,
    max: usize,
    overflow: u64,
}

impl Interner {
    /// The index of [`OTHER`].
    pub const OTHER: u32 = 0;
    /// The index of [`NONE`].
    pub const NONE: u32 = 1;

    /// An interner that keeps at most `max` values besides the placeholders.
    pub fn new(max: usize) -> Self {
        let mut i = Interner {
            map: FxHashMap::default(),
            names: Vec::new(),
            raw: Vec::new(),
            last: Self::NONE,
            max,
            overflow: 0,
        };
        for p in [OTHER, NONE] {
            i.map.insert(p.into(), i.names.len() as u32);
            i.names.push(p.into());
            i.raw.push(p.into());
        }
        i
    }

    /// The index of `s` (`None` and `""`: [`Interner::NONE`]); a new value past the bound is
    /// [`Interner::OTHER`] and counted.
    #[inline]
    pub fn get(&mut self, s: Option<&str>) -> u32 {
        self.get_shown(s, |s| s.into())
    }

    /// The same, and a new value is shown (by [`Interner::name`]) as `show(s)`.
    #[inline]
    pub fn get_shown(&mut self, s: Option<&str>, show: impl FnOnce(&str) -> Box<str>) -> u32 {
        let Some(s) = s.filter(|s| !s.is_empty()) else {
            return Self::NONE;
        };
        if self.raw.get(self.last as usize).is_some_and(|r| **r == *s) {
            return self.last;
        }
        if let Some(&i) = self.map.get(s) {
            self.last = i;
            return i;
        }
        if self.names.len() - 2 >= self.max {
            self.overflow += 1;
            return Self::OTHER;
        }
        let i = self.names.len() as u32;
        self.map.insert(s.into(), i);
        self.names.push(show(s));
        self.raw.push(s.into());
        self.last = i;
        i
    }

    /// The value of index `i` (`other` for an index it never gave out).
    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or(OTHER, |s| s)
    }

    /// Distinct values kept (placeholders not counted).
    pub fn len(&self) -> usize {
        self.names.len() - 2
    }

    /// Nothing kept yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups of new values refused because the bound was reached.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip() {
        for (i, t) in QTYPES.iter().enumerate() {
            assert_eq!(qtype_name(qtype(Some(t))), *t);
            assert_eq!(usize::from(qtype(Some(t))), i);
        }
        assert_eq!(qtype_name(qtype(Some("TYPE65280"))), OTHER);
        assert_eq!(qtype_name(qtype(Some("LOC"))), OTHER);
        assert_eq!(
            qtype_name(qtype(Some("a"))),
            OTHER,
            "the encoder writes upper case"
        );
        assert_eq!(qtype_name(qtype(None)), NONE);
        for (_, r) in RCODES {
            assert_eq!(rcode_name(rcode(Some(r))), *r);
        }
        assert_eq!(rcode_name(rcode(Some("RCODE12"))), OTHER);
        assert_eq!(rcode_name(rcode(None)), NONE);
        for op in Operation::ALL {
            assert_eq!(operation_name(operation(*op)), op.as_str());
        }
        assert_eq!(operation_name(operation(Operation::Unknown(99))), OTHER);
        for p in Protocol::ALL {
            assert_eq!(protocol_name(protocol(Some(*p))), p.as_str());
        }
        assert_eq!(protocol_name(protocol(Some(Protocol::Unknown(9)))), OTHER);
        assert_eq!(protocol_name(protocol(None)), NONE);
        for f in Family::ALL {
            assert_eq!(family_name(family(Some(*f))), f.as_str());
        }
        assert_eq!(family_name(family(None)), NONE);
        assert_eq!(family_name(family(Some(Family::Unknown(7)))), OTHER);
    }

    #[test]
    fn coredns_proto_and_family() {
        let name = |p| coredns_proto_name(coredns_proto(protocol(p)));
        assert_eq!(name(Some(Protocol::Udp)), "udp");
        assert_eq!(name(Some(Protocol::Doq)), "udp");
        assert_eq!(name(Some(Protocol::DnsCryptUdp)), "udp");
        assert_eq!(name(Some(Protocol::Tcp)), "tcp");
        assert_eq!(name(Some(Protocol::Dot)), "tcp");
        assert_eq!(name(Some(Protocol::Doh)), "tcp");
        assert_eq!(name(Some(Protocol::DnsCryptTcp)), "tcp");
        assert_eq!(name(Some(Protocol::Unknown(40))), OTHER);
        assert_eq!(name(None), NONE);
        assert_eq!(coredns_family_name(family(Some(Family::Inet))), "1");
        assert_eq!(coredns_family_name(family(Some(Family::Inet6))), "2");
        assert_eq!(coredns_family_name(family(None)), NONE);
    }

    #[test]
    fn interner_bounds_and_folds() {
        let mut i = Interner::new(2);
        let a = i.get(Some("a"));
        let b = i.get(Some("b"));
        assert_eq!((i.name(a), i.name(b)), ("a", "b"));
        assert_eq!(i.get(Some("a")), a);
        assert_eq!(i.get(Some("c")), Interner::OTHER);
        assert_eq!(i.get(Some("d")), Interner::OTHER);
        assert_eq!(i.overflow(), 2);
        assert_eq!(i.len(), 2);
        assert_eq!(i.get(None), Interner::NONE);
        assert_eq!(i.get(Some("")), Interner::NONE, "no empty label values");
        assert_eq!(
            i.get(Some("none")),
            Interner::NONE,
            "shares the placeholder"
        );
        assert_eq!(i.get(Some("other")), Interner::OTHER);
        assert_eq!(i.overflow(), 2, "placeholders are not overflow");
        assert_eq!(i.name(Interner::NONE), NONE);
        assert_eq!(i.name(999), OTHER);
        // The last-value shortcut gives the same answers.
        for v in ["a", "a", "b", "a", "zz", "b", "b"] {
            let want = match v {
                "a" => a,
                "b" => b,
                _ => Interner::OTHER,
            };
            assert_eq!(i.get(Some(v)), want, "{v}");
        }
        let mut z = Interner::new(3);
        let root = z.get_shown(Some("."), dotted);
        let org = z.get_shown(Some("example.org"), dotted);
        assert_eq!(z.get_shown(Some("example.org"), dotted), org);
        assert_eq!((z.name(root), z.name(org)), (".", "example.org."));
    }
}
