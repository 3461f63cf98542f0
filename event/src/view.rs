//! [`EventView`]: a typed view of one JSON event that borrows its strings from the input.
//!
//! Only the fields consumers read are parsed; everything else (`resource-records`, EDNS
//! options, the policy block, `extra`, `peer-name`, ...) is skipped without allocating.
//! Strings are [`Cow`]s: borrowed from the input unless the JSON text has an escape in
//! them (`\"`, `\\`, `\u....`), which the encoder only writes for odd identities and
//! names with special characters.
//!
//! Absent values are `null` in the event and `None` here. A missing key inside a block is
//! read as `null` too (so older and newer producers can be read), except
//! `dnstap.operation`, which every event has; the blocks `network`, `dns` and `dnstap`
//! themselves are required.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// The input is not a tapbus event: not JSON, truncated, or a field of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The JSON parser's complaint (with line and column where it knows them).
    #[error("not a tapbus event: {0}")]
    Json(String),
}

impl ViewError {
    fn json(e: impl fmt::Display) -> Self {
        ViewError::Json(e.to_string())
    }
}

macro_rules! dnstap_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value outside the dnstap schema, shown by the encoder as `UNKNOWN(n)`.
            Unknown(u32),
        }

        impl $name {
            /// Every known value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name used in the event (and in filters), `UNKNOWN(n)` for others.
            pub fn as_str(&self) -> Cow<'static, str> {
                match self {
                    $($name::$variant => Cow::Borrowed($text),)*
                    $name::Unknown(n) => Cow::Owned(format!("UNKNOWN({n})")),
                }
            }

            /// The number in the dnstap protobuf schema.
            pub fn code(&self) -> u32 {
                match self {
                    $($name::$variant => $code,)*
                    $name::Unknown(n) => *n,
                }
            }

            /// The value for a dnstap number (`Unknown` outside the schema).
            pub fn from_code(code: u32) -> Self {
                match code {
                    $($code => $name::$variant,)*
                    n => $name::Unknown(n),
                }
            }

            /// The value for a name as the event writes it (exact case, fast path).
            pub(crate) fn from_exact(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => parse_unknown(s).map(Self::from_code),
                }
            }

            /// The value for a name, ASCII case-insensitive (`client_query` works), or
            /// `UNKNOWN(n)` / a bare number for values outside the schema.
            pub fn from_name(s: &str) -> Option<Self> {
                if let Some(v) = Self::from_exact(s) {
                    return Some(v);
                }
                $(if s.eq_ignore_ascii_case($text) { return Some($name::$variant); })*
                if let Ok(n) = s.parse::<u32>() {
                    return Some(Self::from_code(n));
                }
                let upper = s.to_ascii_uppercase();
                parse_unknown(&upper).map(Self::from_code)
            }

            /// The known names, comma-separated (for error messages).
            pub fn names() -> String {
                [$($text,)*].join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a dnstap ", $what, " name or UNKNOWN(n)"))
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        $name::from_exact(s).ok_or_else(|| {
                            E::invalid_value(de::Unexpected::Str(s), &self)
                        })
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.as_str())
            }
        }
    };
}

/// `UNKNOWN(n)` -> `n`.
fn parse_unknown(s: &str) -> Option<u32> {
    s.strip_prefix("UNKNOWN(")?.strip_suffix(')')?.parse().ok()
}

dnstap_enum!(
    /// `dnstap.operation`: the dnstap `Message.type`.
    Operation, "message type", {
        /// An authoritative server received a query.
        AuthQuery = 1 => "AUTH_QUERY",
        /// An authoritative server sent a response.
        AuthResponse = 2 => "AUTH_RESPONSE",
        /// A resolver sent a query upstream.
        ResolverQuery = 3 => "RESOLVER_QUERY",
        /// A resolver received the upstream response.
        ResolverResponse = 4 => "RESOLVER_RESPONSE",
        /// A server received a query from a client.
        ClientQuery = 5 => "CLIENT_QUERY",
        /// A server sent a response to a client.
        ClientResponse = 6 => "CLIENT_RESPONSE",
        /// A server forwarded a query upstream.
        ForwarderQuery = 7 => "FORWARDER_QUERY",
        /// A server received the forwarder's response.
        ForwarderResponse = 8 => "FORWARDER_RESPONSE",
        /// A stub resolver sent a query.
        StubQuery = 9 => "STUB_QUERY",
        /// A stub resolver received a response.
        StubResponse = 10 => "STUB_RESPONSE",
        /// A tool sent a query.
        ToolQuery = 11 => "TOOL_QUERY",
        /// A tool received a response.
        ToolResponse = 12 => "TOOL_RESPONSE",
        /// An authoritative server received an UPDATE.
        UpdateQuery = 13 => "UPDATE_QUERY",
        /// An authoritative server answered an UPDATE.
        UpdateResponse = 14 => "UPDATE_RESPONSE",
    }
);

impl Operation {
    /// `*_RESPONSE` (dnstap numbers responses evenly; the encoder does the same for
    /// unknown values when it picks the timestamp).
    pub fn is_response(&self) -> bool {
        let c = self.code();
        c > 0 && c.is_multiple_of(2)
    }

    /// `*_QUERY`.
    pub fn is_query(&self) -> bool {
        self.code() % 2 == 1
    }
}

dnstap_enum!(
    /// `network.protocol`: the dnstap `SocketProtocol`.
    Protocol, "socket protocol", {
        /// DNS over UDP.
        Udp = 1 => "UDP",
        /// DNS over TCP.
        Tcp = 2 => "TCP",
        /// DNS over TLS.
        Dot = 3 => "DOT",
        /// DNS over HTTPS.
        Doh = 4 => "DOH",
        /// DNSCrypt over UDP.
        DnsCryptUdp = 5 => "DNSCryptUDP",
        /// DNSCrypt over TCP.
        DnsCryptTcp = 6 => "DNSCryptTCP",
        /// DNS over QUIC.
        Doq = 7 => "DOQ",
    }
);

dnstap_enum!(
    /// `network.family`: the dnstap `SocketFamily`.
    Family, "socket family", {
        /// IPv4.
        Inet = 1 => "INET",
        /// IPv6.
        Inet6 = 2 => "INET6",
    }
);

/// The whole event: the four blocks of `proto/event.schema.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventView<'a> {
    /// `network`: addresses, ports, family, protocol.
    pub network: Network,
    /// `dns`: the header and first question of the DNS message.
    #[serde(borrow)]
    pub dns: Dns<'a>,
    /// `edns`: the OPT pseudo-record, `None` when the message has none.
    #[serde(default)]
    pub edns: Option<Edns>,
    /// `dnstap`: operation, identity, times.
    #[serde(borrow)]
    pub dnstap: Dnstap<'a>,
    /// `geo`: the client's (`query-ip`) country, city and AS (schema version 2, when the
    /// broker has `[enrich.geoip]`). `None` when the event has none or it is `null`
    /// (nothing known, an address that is not global, GeoIP off). `geo-response` and
    /// `schema-version` are skipped.
    #[serde(borrow, default)]
    pub geo: Option<Geo<'a>>,
}

/// `geo`: what the broker's MaxMind databases know about an address. A field the
/// databases do not know is absent in the event and `None` here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Geo<'a> {
    /// ISO 3166-1 alpha-2 country code (`FR`).
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub country: Option<Cow<'a, str>>,
    /// City name (English).
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub city: Option<Cow<'a, str>>,
    /// Autonomous system number.
    #[serde(default)]
    pub asn: Option<u32>,
    /// The AS's organisation.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub as_org: Option<Cow<'a, str>>,
}

impl Geo<'_> {
    /// A copy that owns its strings.
    pub fn into_owned(self) -> Geo<'static> {
        let own = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        Geo {
            country: own(self.country),
            city: own(self.city),
            asn: self.asn,
            as_org: own(self.as_org),
        }
    }
}

/// `network` (only `http-protocol` is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Network {
    /// INET or INET6.
    #[serde(default)]
    pub family: Option<Family>,
    /// UDP, TCP, DOT, ...
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The initiator's address (the client for CLIENT_*).
    #[serde(default)]
    pub query_ip: Option<IpAddr>,
    /// The initiator's port.
    #[serde(default)]
    pub query_port: Option<u32>,
    /// The responder's address (the server for CLIENT_*).
    #[serde(default)]
    pub response_ip: Option<IpAddr>,
    /// The responder's port.
    #[serde(default)]
    pub response_port: Option<u32>,
}

/// `dns` (`resource-records` is skipped).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Dns<'a> {
    /// Size of the DNS wire message in bytes.
    #[serde(default)]
    pub length: Option<u32>,
    /// Message id.
    #[serde(default)]
    pub id: Option<u16>,
    /// OPCODE (0 = QUERY, 4 = NOTIFY, 5 = UPDATE, ...).
    #[serde(default)]
    pub opcode: Option<u8>,
    /// NOERROR, NXDOMAIN, ... (with the EDNS extended bits), RCODEnnn when unassigned.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub rcode: Option<Cow<'a, str>>,
    /// First question's name, presentation format without the trailing dot (root is `.`).
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub qname: Option<Cow<'a, str>>,
    /// A, AAAA, ... or TYPEnnn.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub qtype: Option<Cow<'a, str>>,
    /// IN, CH, ... or CLASSnnn.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub qclass: Option<Cow<'a, str>>,
    /// Header flag bits.
    #[serde(default)]
    pub flags: Option<Flags>,
    /// Header counts.
    #[serde(default)]
    pub qdcount: Option<u16>,
    /// Header counts.
    #[serde(default)]
    pub ancount: Option<u16>,
    /// Header counts.
    #[serde(default)]
    pub nscount: Option<u16>,
    /// Header counts (including the OPT record).
    #[serde(default)]
    pub arcount: Option<u16>,
    /// The DNS bytes were present but did not fully parse.
    #[serde(default)]
    pub malformed_packet: bool,
}

/// `dns.flags`: the header's flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
pub struct Flags {
    /// Response.
    pub qr: bool,
    /// Authoritative answer.
    pub aa: bool,
    /// Truncated.
    pub tc: bool,
    /// Recursion desired.
    pub rd: bool,
    /// Recursion available.
    pub ra: bool,
    /// The reserved Z bit.
    pub z: bool,
    /// Authentic data.
    pub ad: bool,
    /// Checking disabled.
    pub cd: bool,
}

impl Flags {
    /// The flags as they sit in the header's second 16-bit word (OPCODE and RCODE zero):
    /// QR 0x8000, AA 0x0400, TC 0x0200, RD 0x0100, RA 0x0080, Z 0x0040, AD 0x0020,
    /// CD 0x0010.
    pub fn bits(&self) -> u16 {
        let b = |on: bool, bit: u16| if on { bit } else { 0 };
        b(self.qr, 0x8000)
            | b(self.aa, 0x0400)
            | b(self.tc, 0x0200)
            | b(self.rd, 0x0100)
            | b(self.ra, 0x0080)
            | b(self.z, 0x0040)
            | b(self.ad, 0x0020)
            | b(self.cd, 0x0010)
    }
}

/// `edns` (the options are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Edns {
    /// Advertised UDP payload size.
    #[serde(default)]
    pub udp_size: u16,
    /// Upper 8 bits of the extended RCODE.
    #[serde(default)]
    pub rcode: u8,
    /// EDNS version.
    #[serde(default)]
    pub version: u8,
    /// The DO bit (`dnssec-ok` is written as 0 or 1).
    #[serde(default, deserialize_with = "zero_one")]
    pub dnssec_ok: bool,
}

/// `dnstap` (`extra`, `peer-name` and the policy fields are skipped).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Dnstap<'a> {
    /// CLIENT_QUERY, CLIENT_RESPONSE, ...
    pub operation: Operation,
    /// The sender's identity.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub identity: Option<Cow<'a, str>>,
    /// The sender's version string.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub version: Option<Cow<'a, str>>,
    /// The event's time as RFC 3339 with nanoseconds (`2026-11-22T02:41:38.535458000Z`).
    #[serde(
        rename = "timestamp-rfc3339ns",
        borrow,
        default,
        deserialize_with = "opt_cow"
    )]
    pub timestamp_rfc3339ns: Option<Cow<'a, str>>,
    /// The same instant in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: Option<u64>,
    /// Response time - query time, in seconds.
    #[serde(default)]
    pub latency: Option<f64>,
    /// The zone the query was for (AUTH_*), without the trailing dot.
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub query_zone: Option<Cow<'a, str>>,
}

impl<'a> EventView<'a> {
    /// Parses one event. Never panics; any input that is not an event is a [`ViewError`].
    pub fn parse(json: &'a [u8]) -> Result<Self, ViewError> {
        crate::scan::event(json)
    }

    /// The same with the serde derive and serde_json (slower: see `benches/view.rs`),
    /// kept to cross-check the hand-written reader.
    pub fn parse_serde_json(json: &'a [u8]) -> Result<Self, ViewError> {
        serde_json::from_slice(json).map_err(ViewError::json)
    }

    /// The dnstap message type.
    pub fn operation(&self) -> Operation {
        self.dnstap.operation
    }

    /// `*_RESPONSE`.
    pub fn is_response(&self) -> bool {
        self.dnstap.operation.is_response()
    }

    /// `*_QUERY`.
    pub fn is_query(&self) -> bool {
        self.dnstap.operation.is_query()
    }

    /// `dnstap.identity`.
    pub fn identity(&self) -> Option<&str> {
        self.dnstap.identity.as_deref()
    }

    /// The client: `network.query-ip`.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.network.query_ip
    }

    /// The client's address and port (`None` unless both are present and the port fits).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        sock(self.network.query_ip, self.network.query_port)
    }

    /// The server: `network.response-ip`.
    pub fn server_ip(&self) -> Option<IpAddr> {
        self.network.response_ip
    }

    /// The server's address and port.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        sock(self.network.response_ip, self.network.response_port)
    }

    /// `network.protocol`.
    pub fn protocol(&self) -> Option<Protocol> {
        self.network.protocol
    }

    /// `network.family`.
    pub fn family(&self) -> Option<Family> {
        self.network.family
    }

    /// `dns.qname`: without the trailing dot, root is `.`.
    pub fn qname(&self) -> Option<&str> {
        self.dns.qname.as_deref()
    }

    /// `dns.qtype`.
    pub fn qtype(&self) -> Option<&str> {
        self.dns.qtype.as_deref()
    }

    /// `dns.rcode`.
    pub fn rcode(&self) -> Option<&str> {
        self.dns.rcode.as_deref()
    }

    /// `dns.length`: the DNS message size in bytes.
    pub fn size(&self) -> Option<u32> {
        self.dns.length
    }

    /// `dnstap.timestamp`: nanoseconds since the Unix epoch.
    pub fn timestamp_ns(&self) -> Option<u64> {
        self.dnstap.timestamp
    }

    /// `dnstap.latency` in seconds.
    pub fn latency(&self) -> Option<f64> {
        self.dnstap.latency
    }

    /// The DO bit, `false` without EDNS.
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// `geo.country`: the client's ISO 3166-1 alpha-2 country code.
    pub fn client_country(&self) -> Option<&str> {
        self.geo.as_ref()?.country.as_deref()
    }

    /// `geo.city`: the client's city.
    pub fn client_city(&self) -> Option<&str> {
        self.geo.as_ref()?.city.as_deref()
    }

    /// `geo.asn`: the client's autonomous system number.
    pub fn client_asn(&self) -> Option<u32> {
        self.geo.as_ref()?.asn
    }

    /// `geo.as-org`: the client's AS organisation.
    pub fn client_as_org(&self) -> Option<&str> {
        self.geo.as_ref()?.as_org.as_deref()
    }

    /// A copy that owns its strings, to keep beyond the input buffer.
    pub fn into_owned(self) -> EventView<'static> {
        let own = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        EventView {
            network: self.network,
            dns: Dns {
                length: self.dns.length,
                id: self.dns.id,
                opcode: self.dns.opcode,
                rcode: own(self.dns.rcode),
                qname: own(self.dns.qname),
                qtype: own(self.dns.qtype),
                qclass: own(self.dns.qclass),
                flags: self.dns.flags,
                qdcount: self.dns.qdcount,
                ancount: self.dns.ancount,
                nscount: self.dns.nscount,
                arcount: self.dns.arcount,
                malformed_packet: self.dns.malformed_packet,
            },
            edns: self.edns,
            dnstap: Dnstap {
                operation: self.dnstap.operation,
                identity: own(self.dnstap.identity),
                version: own(self.dnstap.version),
                timestamp_rfc3339ns: own(self.dnstap.timestamp_rfc3339ns),
                timestamp: self.dnstap.timestamp,
                latency: self.dnstap.latency,
                query_zone: own(self.dnstap.query_zone),
            },
            geo: self.geo.map(Geo::into_owned),
        }
    }
}

fn sock(ip: Option<IpAddr>, port: Option<u32>) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip?, u16::try_from(port?).ok()?))
}

/// `Option<Cow<str>>` that borrows: serde's own impl for `Option<Cow<'a, str>>` always
/// copies, even with `#[serde(borrow)]`.
fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct Inner;
    impl<'de> Visitor<'de> for Inner {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(s))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(s.to_owned()))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(s))
        }
    }
    struct Outer;
    impl<'de> Visitor<'de> for Outer {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Inner).map(Some)
        }
    }
    d.deserialize_option(Outer)
}

/// `dnssec-ok`: 0 or 1 (a boolean is accepted too).
fn zero_one<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("0 or 1")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"network":{"family":"INET","protocol":"UDP","query-ip":"127.0.0.1","query-port":38169,"response-ip":"::1","response-port":53,"http-protocol":null},"dns":{"length":89,"id":4660,"opcode":0,"flags":{"qr":true,"aa":false,"tc":false,"rd":true,"ra":true,"z":false,"ad":true,"cd":false},"qdcount":1,"ancount":1,"nscount":0,"arcount":1,"qname":"example.com","qtype":"A","qclass":"IN","rcode":"NOERROR","resource-records":{"an":[{"name":"example.com","rdatatype":"A","class":"IN","ttl":300,"rdata":"192.0.2.1"}],"ns":[],"ar":[]},"malformed-packet":false},"edns":{"udp-size":1232,"rcode":0,"version":0,"dnssec-ok":1,"options":[{"code":10,"name":"COOKIE","data":"00"}]},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns\"1","version":"v","extra":null,"timestamp-rfc3339ns":"2026-11-22T02:41:38.535458000Z","timestamp":1795315298535458000,"latency":0.0005,"query-zone":null,"peer-name":"x","policy-type":null,"policy-action":null,"policy-match":null,"policy-rule":null,"policy-value":null}}"#;

    #[test]
    fn parses_and_borrows() {
        let v = EventView::parse(EVENT.as_bytes()).expect("parses");
        assert_eq!(v.operation(), Operation::ClientResponse);
        assert!(v.is_response() && !v.is_query());
        assert_eq!(
            v.client_addr(),
            Some("127.0.0.1:38169".parse().expect("addr"))
        );
        assert_eq!(v.server_addr(), Some("[::1]:53".parse().expect("addr")));
        assert_eq!(v.family(), Some(Family::Inet));
        assert_eq!(v.protocol(), Some(Protocol::Udp));
        assert!(matches!(v.dns.qname, Some(Cow::Borrowed("example.com"))));
        assert!(matches!(v.dns.rcode, Some(Cow::Borrowed("NOERROR"))));
        // An escaped string is unescaped into an owned copy.
        assert!(matches!(&v.dnstap.identity, Some(Cow::Owned(s)) if s == "ns\"1"));
        assert_eq!(v.size(), Some(89));
        assert_eq!(v.dns.id, Some(4660));
        assert_eq!(v.timestamp_ns(), Some(1_795_315_298_535_458_000));
        assert_eq!(v.latency(), Some(0.0005));
        let f = v.dns.flags.expect("flags");
        assert_eq!(f.bits(), 0x8000 | 0x0100 | 0x0080 | 0x0020);
        assert_eq!(
            v.edns,
            Some(Edns {
                udp_size: 1232,
                rcode: 0,
                version: 0,
                dnssec_ok: true
            })
        );
        assert!(v.dnssec_ok());
        let owned = v.clone().into_owned();
        assert_eq!(owned, v);
    }

    #[test]
    fn enums() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(&op.as_str()), Some(*op));
            assert_eq!(
                Operation::from_name(&op.as_str().to_ascii_lowercase()),
                Some(*op)
            );
            assert_eq!(Operation::from_code(op.code()), *op);
            assert_eq!(op.is_response(), op.as_str().ends_with("_RESPONSE"));
            assert_eq!(op.is_query(), op.as_str().ends_with("_QUERY"));
        }
        assert_eq!(
            Operation::from_name("UNKNOWN(99)"),
            Some(Operation::Unknown(99))
        );
        assert_eq!(
            Operation::from_name("unknown(99)"),
            Some(Operation::Unknown(99))
        );
        assert_eq!(Operation::Unknown(99).as_str(), "UNKNOWN(99)");
        assert_eq!(Operation::from_name("CLIENT"), None);
        assert_eq!(
            Protocol::from_name("dnscryptudp"),
            Some(Protocol::DnsCryptUdp)
        );
        assert_eq!(Protocol::from_name("7"), Some(Protocol::Doq));
        assert_eq!(Family::from_name("inet6"), Some(Family::Inet6));
    }

    #[test]
    fn wrong_input_is_an_error() {
        let bad: &[&str] = &[
            "",
            "null",
            "[]",
            "{}",
            r#"{"network":{},"dns":{},"dnstap":{}}"#,
            r#"{"network":{},"dns":{},"dnstap":{"operation":"NOPE"}}"#,
            r#"{"network":{},"dns":{},"dnstap":{"operation":5}}"#,
            r#"{"network":{"query-ip":"999.1.1.1"},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}}"#,
            r#"{"network":{"query-port":"53"},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}}"#,
            r#"{"network":{},"dns":{"id":70000},"dnstap":{"operation":"CLIENT_QUERY"}}"#,
            r#"{"network":{},"dns":{"qname":1},"dnstap":{"operation":"CLIENT_QUERY"}}"#,
            r#"{"network":{},"dns":{"flags":{"qr":1}},"dnstap":{"operation":"CLIENT_QUERY"}}"#,
            r#"{"network":{},"dns":{},"edns":{"dnssec-ok":2},"dnstap":{"operation":"CLIENT_QUERY"}}"#,
            r#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}} x"#,
        ];
        for b in bad {
            assert!(EventView::parse(b.as_bytes()).is_err(), "accepted: {b}");
        }
        // Not UTF-8 inside a string that is read.
        let mut raw = br#"{"network":{},"dns":{"qname":"a"#.to_vec();
        raw.extend_from_slice(&[0xff, b'"']);
        raw.extend_from_slice(br#"},"dnstap":{"operation":"CLIENT_QUERY"}}"#);
        assert!(EventView::parse(&raw).is_err());
        // The minimum that is accepted: the three blocks and the operation.
        let min =
            EventView::parse(br#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}}"#)
                .expect("minimal event");
        assert_eq!(min.qname(), None);
        assert_eq!(min.edns, None);
    }

    #[test]
    fn every_prefix_is_an_error_not_a_panic() {
        for i in 0..EVENT.len() {
            assert!(
                EventView::parse(&EVENT.as_bytes()[..i]).is_err(),
                "prefix {i}"
            );
        }
    }
}
