//! Frames become events here: one dnstap data frame (bytes) -> one JSON event (bytes).
//!
//! [`encode`] is a pure function: it decodes the dnstap protobuf with prost (sharing the
//! frame's buffer), walks the DNS wire message once ([`dns`]) and writes the JSON event
//! straight into the caller's buffer. The layout follows DNS-collector's JSON (blocks
//! `network`, `dns`, `edns`, `dnstap`, kebab-case keys) with the documented differences:
//! ports and the latency are numbers, absent values are `null` (never `"-"`), lists are
//! arrays of objects, and `dnstap.timestamp` carries epoch nanoseconds beside the RFC 3339
//! text. The JSON Schema of the event is `proto/event.schema.json` ([`SCHEMA`]).
//!
//! The event is the bus contract: every subscriber depends on it, so the schema is checked
//! against every event the tests produce.

pub mod dns;
pub mod json;
mod rdata;
pub mod view;

use std::net::IpAddr;

pub use view::{AddrMap, DropFields, Enrich, GeoWriter, QnameMode, RegisteredFn, View};

use bytes::Bytes;
use prost::Message as _;

use crate::dnstap::{self, Dnstap, Message};

/// The JSON Schema (draft 2020-12) every event conforms to.
pub const SCHEMA: &str = include_str!("../../event.schema.json");

/// A dnstap frame that cannot become an event. The Frame Streams stream itself is intact:
/// the frame is skipped and counted, the connection goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum EventError {
    #[error("data frame is not a dnstap protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("dnstap frame has no type (a required field)")]
    MissingType,
    #[error("dnstap frame has unsupported type {0} (only MESSAGE=1 is defined)")]
    UnsupportedType(i32),
    #[error("dnstap frame of type MESSAGE carries no message")]
    MissingMessage,
    #[error("dnstap message has no type (a required field)")]
    MissingMessageType,
}

impl EventError {
    /// A short stable label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::Protobuf(_) => "bad_protobuf",
            EventError::MissingType => "missing_type",
            EventError::UnsupportedType(_) => "unsupported_type",
            EventError::MissingMessage => "missing_message",
            EventError::MissingMessageType => "missing_message_type",
        }
    }
}

/// What the fan-out needs to route and count an event without re-reading the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Summary {
    /// Raw dnstap identity (empty if absent).
    pub identity: Bytes,
    /// Raw `Message.type` (known values are 1..=14).
    pub operation: i32,
    /// Raw `Message.socket_protocol`, if present.
    pub protocol: Option<i32>,
    /// QTYPE of the first question of the decoded DNS message.
    pub qtype: Option<u16>,
    /// RCODE (with EDNS extended bits) of the decoded DNS message.
    pub rcode: Option<u16>,
    /// The DNS wire message was present but did not fully parse.
    pub malformed_dns: bool,
}

/// dnstap `Message.type` name, `None` for values the schema does not define.
pub fn operation_name(t: i32) -> Option<&'static str> {
    dnstap::message::Type::try_from(t)
        .ok()
        .map(|t| t.as_str_name())
}

/// Socket protocol name (`UDP`, `TCP`, `DOT`, `DOH`, `DNSCryptUDP`, `DNSCryptTCP`, `DOQ`).
pub fn protocol_name(p: i32) -> Option<&'static str> {
    dnstap::SocketProtocol::try_from(p)
        .ok()
        .map(|p| p.as_str_name())
}

/// Writes a known name, or `UNKNOWN(n)` for a value outside the schema: unknown enum values
/// are carried through, never mapped to the first variant.
fn write_enum(out: &mut Vec<u8>, name: Option<&str>, raw: i32) {
    match name {
        Some(n) => json::name(out, n),
        None => {
            out.extend_from_slice(b"\"UNKNOWN(");
            json::uint(out, raw);
            out.extend_from_slice(b")\"");
        }
    }
}

fn write_opt_enum(out: &mut Vec<u8>, raw: Option<i32>, name: fn(i32) -> Option<&'static str>) {
    match raw {
        Some(r) => write_enum(out, name(r), r),
        None => out.extend_from_slice(b"null"),
    }
}

/// Decodes one dnstap data frame and appends its JSON event to `out`, as the broker
/// publishes it by default (enriched with [`STANDARD`], no privacy view).
///
/// `peer` names the connection the frame came from (written as `dnstap.peer-name`).
/// On error nothing is appended.
pub fn encode(frame: Bytes, peer: &str, out: &mut Vec<u8>) -> Result<Summary, EventError> {
    let tap = Dnstap::decode(frame)?;
    match tap.r#type {
        None => return Err(EventError::MissingType),
        Some(1) => {}
        Some(t) => return Err(EventError::UnsupportedType(t)),
    }
    let msg = tap.message.as_ref().ok_or(EventError::MissingMessage)?;
    let op = msg.r#type.ok_or(EventError::MissingMessageType)?;
    let ctx = Ctx {
        enrich: Some(&STANDARD),
        geo: None,
        geo_response: None,
    };
    Ok(write_event(
        &tap,
        msg,
        op,
        peer,
        &ctx,
        &View::default(),
        out,
    ))
}

/// The enrichment the broker applies unless configured otherwise: the registered domain
/// and public suffix of every qname (no GeoIP: that needs database files).
pub static STANDARD: Enrich = Enrich {
    geo: None,
    geo_response: false,
    registered: Some(view::registered_domain),
};

/// The schema version an enriched event carries (`schema-version`); events without it
/// are version 1 (the same fields, less the enrichment).
pub const SCHEMA_VERSION: u32 = 2;

/// Scratch space [`encode_views`] keeps between events (no allocation per event).
#[derive(Debug, Default)]
pub struct Scratch {
    geo: Vec<u8>,
    geo_response: Vec<u8>,
    json: Vec<u8>,
}

/// Decodes one dnstap data frame once and writes its JSON event once per view:
/// `outs[i]` gets the event as `views[i]` shows it, enriched by `enrich` (looked up once,
/// on the clear addresses). `outs` has at least `views.len()` buffers; on error nothing
/// is appended to any.
pub fn encode_views(
    frame: Bytes,
    peer: &str,
    enrich: &Enrich,
    views: &[View],
    scratch: &mut Scratch,
    outs: &mut [Vec<u8>],
) -> Result<Summary, EventError> {
    let tap = Dnstap::decode(frame)?;
    match tap.r#type {
        None => return Err(EventError::MissingType),
        Some(1) => {}
        Some(t) => return Err(EventError::UnsupportedType(t)),
    }
    let msg = tap.message.as_ref().ok_or(EventError::MissingMessage)?;
    let op = msg.r#type.ok_or(EventError::MissingMessageType)?;
    let mut ctx = Ctx {
        enrich: Some(enrich),
        geo: None,
        geo_response: None,
    };
    if let Some(g) = &enrich.geo {
        scratch.geo.clear();
        scratch.geo_response.clear();
        if let Some(ip) = addr_of(msg.query_address.as_deref())
            && g.write_geo(ip, &mut scratch.geo)
        {
            ctx.geo = Some(&scratch.geo);
        }
        if enrich.geo_response
            && let Some(ip) = addr_of(msg.response_address.as_deref())
            && g.write_geo(ip, &mut scratch.geo_response)
        {
            ctx.geo_response = Some(&scratch.geo_response);
        }
    }
    let mut summary = None;
    for (view, out) in views.iter().zip(outs.iter_mut()) {
        if view.drop.is_empty() {
            summary = Some(write_event(&tap, msg, op, peer, &ctx, view, out));
        } else {
            scratch.json.clear();
            summary = Some(write_event(
                &tap,
                msg,
                op,
                peer,
                &ctx,
                view,
                &mut scratch.json,
            ));
            view.drop.apply(&scratch.json, out);
        }
    }
    match summary {
        Some(s) => Ok(s),
        // No view: the summary alone.
        None => {
            scratch.json.clear();
            Ok(write_event(
                &tap,
                msg,
                op,
                peer,
                &ctx,
                &View::default(),
                &mut scratch.json,
            ))
        }
    }
}

/// What every view of one event shares.
#[derive(Debug, Default)]
struct Ctx<'a> {
    enrich: Option<&'a Enrich>,
    /// The `geo` object of the client, when known.
    geo: Option<&'a [u8]>,
    geo_response: Option<&'a [u8]>,
}

/// An address from its dnstap bytes (4 or 16; IPv4-mapped IPv6 as IPv4).
fn addr_of(a: Option<&[u8]>) -> Option<IpAddr> {
    match a? {
        &[a, b, c, d] => Some(IpAddr::from([a, b, c, d])),
        b if b.len() == 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            let v6 = std::net::Ipv6Addr::from(o);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

fn write_event(
    tap: &Dnstap,
    msg: &Message,
    op: i32,
    peer: &str,
    ctx: &Ctx<'_>,
    view: &View,
    out: &mut Vec<u8>,
) -> Summary {
    // Responses are described by their response message, queries by their query message;
    // either falls back to the other when only that one was sent.
    let is_response = op > 0 && op % 2 == 0;
    let (first, second) = if is_response {
        (&msg.response_message, &msg.query_message)
    } else {
        (&msg.query_message, &msg.response_message)
    };
    let wire = first.as_ref().or(second.as_ref());

    out.extend_from_slice(b"{\"network\":{\"family\":");
    let family = msg.socket_family.or_else(|| {
        match msg
            .query_address
            .as_ref()
            .or(msg.response_address.as_ref())
            .map(|a| a.len())
        {
            Some(4) => Some(1),
            Some(16) => Some(2),
            _ => None,
        }
    });
    write_opt_enum(out, family, |f| {
        dnstap::SocketFamily::try_from(f)
            .ok()
            .map(|f| f.as_str_name())
    });
    out.extend_from_slice(b",\"protocol\":");
    write_opt_enum(out, msg.socket_protocol, protocol_name);
    out.extend_from_slice(b",\"query-ip\":");
    write_view_addr(out, msg.query_address.as_deref(), view);
    out.extend_from_slice(b",\"query-port\":");
    json::opt_uint(out, msg.query_port);
    out.extend_from_slice(b",\"response-ip\":");
    write_view_addr(out, msg.response_address.as_deref(), view);
    out.extend_from_slice(b",\"response-port\":");
    json::opt_uint(out, msg.response_port);
    out.extend_from_slice(b",\"http-protocol\":");
    write_opt_enum(out, msg.http_protocol, |h| {
        dnstap::HttpProtocol::try_from(h)
            .ok()
            .map(|h| h.as_str_name())
    });
    out.extend_from_slice(b"},");

    let dns = dns::write_dns_with(
        out,
        wire.map(|b| &b[..]),
        dns::DnsOpts {
            addr: view.addr.as_deref(),
            registered: ctx.enrich.and_then(|e| e.registered),
            qname: view.qname,
        },
    );

    out.extend_from_slice(b",\"dnstap\":{\"operation\":");
    write_enum(out, operation_name(op), op);
    out.extend_from_slice(b",\"identity\":");
    write_opt_bytes(out, tap.identity.as_deref());
    out.extend_from_slice(b",\"version\":");
    write_opt_bytes(out, tap.version.as_deref());
    out.extend_from_slice(b",\"extra\":");
    write_opt_bytes(out, tap.extra.as_deref());

    let qt = msg
        .query_time_sec
        .map(|s| (s, msg.query_time_nsec.unwrap_or(0)));
    let rt = msg
        .response_time_sec
        .map(|s| (s, msg.response_time_nsec.unwrap_or(0)));
    let ts = if is_response { rt.or(qt) } else { qt.or(rt) };
    out.extend_from_slice(b",\"timestamp-rfc3339ns\":");
    match ts {
        Some((s, n)) => json::rfc3339_ns(out, s, n),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"timestamp\":");
    json::opt_uint(out, ts.and_then(|(s, n)| to_ns(s, n)));
    out.extend_from_slice(b",\"latency\":");
    match (
        qt.and_then(|(s, n)| to_ns(s, n)),
        rt.and_then(|(s, n)| to_ns(s, n)),
    ) {
        (Some(q), Some(r)) if r >= q => json::float(out, (r - q) as f64 / 1e9),
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"query-zone\":");
    match msg.query_zone.as_deref() {
        Some(z) => dns::write_wire_name(out, z),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"peer-name\":");
    json::str(out, peer);
    write_policy(out, msg.policy.as_ref(), view);
    out.push(b'}');
    if let Some(e) = ctx.enrich {
        if e.geo.is_some() {
            out.extend_from_slice(b",\"geo\":");
            match ctx.geo {
                Some(g) => out.extend_from_slice(g),
                None => out.extend_from_slice(b"null"),
            }
            if e.geo_response {
                out.extend_from_slice(b",\"geo-response\":");
                match ctx.geo_response {
                    Some(g) => out.extend_from_slice(g),
                    None => out.extend_from_slice(b"null"),
                }
            }
        }
        out.extend_from_slice(b",\"schema-version\":");
        json::uint(out, SCHEMA_VERSION);
    }
    out.push(b'}');

    Summary {
        identity: tap.identity.clone().unwrap_or_default(),
        operation: op,
        protocol: msg.socket_protocol,
        qtype: dns.qtype,
        rcode: dns.rcode,
        malformed_dns: dns.malformed,
    }
}

fn to_ns(s: u64, n: u32) -> Option<u64> {
    s.checked_mul(1_000_000_000)?.checked_add(u64::from(n))
}

fn write_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => json::lossy(out, b),
        None => out.extend_from_slice(b"null"),
    }
}

/// An address from its byte length (4 or 16; IPv4-mapped IPv6 is shown as IPv4);
/// any other length is `null`.
fn write_addr(out: &mut Vec<u8>, a: Option<&[u8]>) {
    match a {
        Some(&[a, b, c, d]) => json::ipv4(out, [a, b, c, d]),
        Some(b) if b.len() == 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            match o {
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => {
                    json::ipv4(out, [a, b, c, d]);
                }
                _ => {
                    out.push(b'"');
                    json::ipv6_bare(out, o);
                    out.push(b'"');
                }
            }
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// An address as the view shows it (see [`write_addr`]).
fn write_view_addr(out: &mut Vec<u8>, a: Option<&[u8]>, view: &View) {
    match (&view.addr, addr_of(a)) {
        (Some(_), Some(ip)) => match view.addr(ip) {
            IpAddr::V4(v4) => json::ipv4(out, v4.octets()),
            IpAddr::V6(v6) => {
                out.push(b'"');
                json::ipv6_bare(out, v6.octets());
                out.push(b'"');
            }
        },
        _ => write_addr(out, a),
    }
}

fn write_policy(out: &mut Vec<u8>, p: Option<&dnstap::Policy>, view: &View) {
    out.extend_from_slice(b",\"policy-type\":");
    json::opt_str(out, p.and_then(|p| p.r#type.as_deref()));
    out.extend_from_slice(b",\"policy-action\":");
    write_opt_enum(out, p.and_then(|p| p.action), |a| {
        dnstap::policy::Action::try_from(a)
            .ok()
            .map(|a| a.as_str_name())
    });
    out.extend_from_slice(b",\"policy-match\":");
    write_opt_enum(out, p.and_then(|p| p.r#match), |m| {
        dnstap::policy::Match::try_from(m)
            .ok()
            .map(|m| m.as_str_name())
    });
    out.extend_from_slice(b",\"policy-rule\":");
    match p.and_then(|p| p.rule.as_deref()) {
        Some(r) => write_name_or_text(out, r),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"policy-value\":");
    match p.and_then(|p| p.value.as_deref().map(|v| (p.r#match, v))) {
        // CLIENT_IP, RESPONSE_IP, NS_IP carry addresses; QNAME, NS_NAME carry names.
        // A client's address goes through the view like `query-ip`.
        Some((Some(2), v)) if v.len() == 4 || v.len() == 16 => write_view_addr(out, Some(v), view),
        Some((Some(3 | 5), v)) if v.len() == 4 || v.len() == 16 => write_addr(out, Some(v)),
        Some((_, v)) => write_name_or_text(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A wire-format name in presentation form, or the bytes as text if they are not one.
fn write_name_or_text(out: &mut Vec<u8>, b: &[u8]) {
    let mark = out.len();
    dns::write_wire_name(out, b);
    if &out[mark..] == b"null" {
        out.truncate(mark);
        json::lossy(out, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tap: &Dnstap) -> Bytes {
        Bytes::from(tap.encode_to_vec())
    }

    fn event(tap: &Dnstap) -> (serde_json::Value, Summary) {
        let mut out = Vec::new();
        let s = encode(frame(tap), "test", &mut out).expect("encodes");
        (serde_json::from_slice(&out).expect("valid json"), s)
    }

    fn base() -> Dnstap {
        Dnstap {
            identity: Some(Bytes::from_static(b"ns1.example")),
            version: None,
            extra: None,
            r#type: Some(1),
            message: Some(Message {
                r#type: Some(6),
                socket_family: Some(2),
                socket_protocol: Some(3),
                query_address: Some(Bytes::from_static(&[
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7,
                ])),
                response_address: Some(Bytes::from_static(&[
                    0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                ])),
                query_port: Some(40000),
                response_port: Some(853),
                query_time_sec: Some(1_700_000_000),
                query_time_nsec: Some(500_000_000),
                response_time_sec: Some(1_700_000_001),
                response_time_nsec: Some(0),
                query_message: None,
                query_zone: Some(Bytes::from_static(b"\x07example\x00")),
                response_message: None,
                policy: Some(dnstap::Policy {
                    r#type: Some("RPZ".into()),
                    rule: Some(Bytes::from_static(b"\x03bad\x03rpz\x00")),
                    action: Some(1),
                    r#match: Some(2),
                    value: Some(Bytes::from_static(&[10, 0, 0, 1])),
                }),
                http_protocol: Some(2),
            }),
        }
    }

    #[test]
    fn dnstap_fields() {
        let (v, s) = event(&base());
        assert_eq!(v["network"]["family"], "INET6");
        assert_eq!(v["network"]["protocol"], "DOT");
        assert_eq!(v["network"]["query-ip"], "192.0.2.7");
        assert_eq!(v["network"]["response-ip"], "2001:db8::1");
        assert_eq!(v["network"]["query-port"], 40000);
        assert_eq!(v["network"]["http-protocol"], "HTTP2");
        assert_eq!(v["dnstap"]["operation"], "CLIENT_RESPONSE");
        assert_eq!(v["dnstap"]["identity"], "ns1.example");
        assert_eq!(v["dnstap"]["version"], serde_json::Value::Null);
        assert_eq!(v["dnstap"]["timestamp"], 1_700_000_001_000_000_000u64);
        assert_eq!(
            v["dnstap"]["timestamp-rfc3339ns"],
            "2023-11-14T22:13:21.000000000Z"
        );
        assert_eq!(v["dnstap"]["latency"], 0.5);
        assert_eq!(v["dnstap"]["query-zone"], "example");
        assert_eq!(v["dnstap"]["policy-type"], "RPZ");
        assert_eq!(v["dnstap"]["policy-action"], "NXDOMAIN");
        assert_eq!(v["dnstap"]["policy-match"], "CLIENT_IP");
        assert_eq!(v["dnstap"]["policy-rule"], "bad.rpz");
        assert_eq!(v["dnstap"]["policy-value"], "10.0.0.1");
        assert_eq!(v["dns"]["qname"], serde_json::Value::Null);
        assert_eq!(v["edns"], serde_json::Value::Null);
        assert_eq!(s.operation, 6);
        assert_eq!(s.protocol, Some(3));
    }

    /// Every address to a fixed one of its family; prefixes to the zero prefix.
    #[derive(Debug)]
    struct Fixed;
    impl AddrMap for Fixed {
        fn addr(&self, ip: IpAddr) -> IpAddr {
            match ip {
                IpAddr::V4(_) => IpAddr::from([10, 9, 9, 9]),
                IpAddr::V6(_) => "fd00::9".parse().expect("v6"),
            }
        }
        fn prefix(&self, ip: IpAddr, _len: u8) -> IpAddr {
            match ip {
                IpAddr::V4(_) => IpAddr::from([10, 9, 0, 0]),
                IpAddr::V6(_) => "fd00::".parse().expect("v6"),
            }
        }
    }

    #[derive(Debug)]
    struct Geo;
    impl GeoWriter for Geo {
        fn write_geo(&self, ip: IpAddr, out: &mut Vec<u8>) -> bool {
            if ip == IpAddr::from([192, 0, 2, 7]) {
                out.extend_from_slice(br#"{"country":"FR"}"#);
                true
            } else {
                false
            }
        }
    }

    fn last_two(name: &str) -> (Option<&str>, Option<&str>) {
        let mut it = name.rmatch_indices('.');
        let tld = it.next().map(|(i, _)| &name[i + 1..]);
        let reg = it.next().map(|(i, _)| &name[i + 1..]);
        (reg.or(tld.map(|_| name)), tld)
    }

    /// A query with an ECS option for 198.51.100.0/24 and a policy CLIENT_IP value.
    fn with_query() -> Dnstap {
        let mut t = base();
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        // OPT: root name, type 41, class 1232, ttl 0, rdata = ECS option.
        let ecs = [0u8, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100];
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, ecs.len() as u8]);
        q.extend_from_slice(&ecs);
        if let Some(m) = t.message.as_mut() {
            m.r#type = Some(5);
            m.query_message = Some(Bytes::from(q));
        }
        t
    }

    fn views_of(t: &Dnstap, views: &[View]) -> Vec<serde_json::Value> {
        let enrich = Enrich {
            geo: Some(std::sync::Arc::new(Geo)),
            geo_response: true,
            registered: Some(last_two),
        };
        let mut outs = vec![Vec::new(); views.len()];
        encode_views(
            frame(t),
            "p",
            &enrich,
            views,
            &mut Scratch::default(),
            &mut outs,
        )
        .expect("encodes");
        outs.iter()
            .map(|o| serde_json::from_slice(o).expect("json"))
            .collect()
    }

    #[test]
    fn views_transform_every_client_address_and_share_the_enrichment() {
        let t = with_query();
        let private = View {
            addr: Some(std::sync::Arc::new(Fixed)),
            qname: QnameMode::RegisteredDomain,
            drop: DropFields::parse(&["dnstap.extra"]).expect("paths"),
        };
        let v = views_of(&t, &[View::default(), private]);
        let (clear, private) = (&v[0], &v[1]);
        assert_eq!(clear["network"]["query-ip"], "192.0.2.7");
        assert_eq!(clear["edns"]["options"][0]["data"], "198.51.100.0/24");
        assert_eq!(clear["dnstap"]["policy-value"], "10.0.0.1");
        assert_eq!(clear["dns"]["qname"], "www.example.com");
        assert_eq!(clear["dns"]["qname-registered"], "example.com");
        assert_eq!(clear["dns"]["qname-tld"], "com");
        assert_eq!(clear["geo"]["country"], "FR");
        assert_eq!(clear["geo-response"], serde_json::Value::Null);
        assert_eq!(clear["schema-version"], SCHEMA_VERSION);
        assert!(clear["dnstap"].get("extra").is_some());

        assert_eq!(private["network"]["query-ip"], "10.9.9.9");
        assert_eq!(private["network"]["response-ip"], "fd00::9");
        assert_eq!(private["edns"]["options"][0]["data"], "10.9.0.0/24");
        assert_eq!(private["edns"]["options"][0]["source-prefix"], 24);
        assert_eq!(private["dnstap"]["policy-value"], "10.9.9.9");
        assert_eq!(private["dns"]["qname"], "example.com");
        assert_eq!(private["dns"]["qname-registered"], "example.com");
        assert_eq!(
            private["dns"]["resource-records"]["ar"],
            serde_json::json!([])
        );
        // Enrichment is looked up on the clear address, before the view.
        assert_eq!(private["geo"]["country"], "FR");
        assert!(private["dnstap"].get("extra").is_none());
        let text = serde_json::to_string(private).expect("text");
        for clear_addr in ["192.0.2.7", "198.51.100", "10.0.0.1", "2001:db8::1"] {
            assert!(!text.contains(clear_addr), "{clear_addr} in {text}");
        }
    }

    #[test]
    fn the_plain_encoder_is_the_standard_clear_view() {
        let t = with_query();
        let mut plain = Vec::new();
        encode(frame(&t), "p", &mut plain).expect("encodes");
        let mut outs = vec![Vec::new()];
        encode_views(
            frame(&t),
            "p",
            &STANDARD,
            &[View::default()],
            &mut Scratch::default(),
            &mut outs,
        )
        .expect("encodes");
        assert_eq!(plain, outs[0]);
    }

    #[test]
    fn unknown_enums_are_carried_through() {
        let mut t = base();
        if let Some(m) = t.message.as_mut() {
            m.r#type = Some(99);
            m.socket_protocol = Some(42);
            m.socket_family = Some(7);
            m.query_address = Some(Bytes::from_static(&[1, 2, 3]));
        }
        let (v, _) = event(&t);
        assert_eq!(v["dnstap"]["operation"], "UNKNOWN(99)");
        assert_eq!(v["network"]["protocol"], "UNKNOWN(42)");
        assert_eq!(v["network"]["family"], "UNKNOWN(7)");
        assert_eq!(v["network"]["query-ip"], serde_json::Value::Null);
    }

    #[test]
    fn required_fields_and_bad_bytes() {
        let mut out = Vec::new();
        let mut t = base();
        t.r#type = None;
        assert_eq!(
            encode(frame(&t), "p", &mut out),
            Err(EventError::MissingType)
        );
        t.r#type = Some(99);
        assert_eq!(
            encode(frame(&t), "p", &mut out),
            Err(EventError::UnsupportedType(99))
        );
        t.r#type = Some(1);
        t.message = None;
        assert_eq!(
            encode(frame(&t), "p", &mut out),
            Err(EventError::MissingMessage)
        );
        let mut t = base();
        if let Some(m) = t.message.as_mut() {
            m.r#type = None;
        }
        assert_eq!(
            encode(frame(&t), "p", &mut out),
            Err(EventError::MissingMessageType)
        );
        assert!(matches!(
            encode(Bytes::from_static(&[0x0f, 0xff]), "p", &mut out),
            Err(EventError::Protobuf(_))
        ));
        assert!(out.is_empty(), "nothing is written on error");
    }
}
