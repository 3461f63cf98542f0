//! The DNS wire message -> the event's `dns` and `edns` blocks.
//!
//! A single pass over the wire bytes writes JSON straight into the output buffer: the header
//! and question, every answer/authority/additional record (owner name, type, class, TTL and
//! rdata text) and the EDNS OPT pseudo-record. Names are written in presentation format by
//! our own reader (decimal `\DDD` escapes, compression pointers followed with a jump limit);
//! rdata is printed by [`super::rdata`]. Record boundaries come from RDLENGTH, so one record
//! whose rdata does not parse is printed in RFC 3597 generic form and never drops the
//! message. A message
//! that is cut short or structurally broken still yields everything read before the damage,
//! with `malformed-packet: true`.

use std::net::IpAddr;

use super::json;
use super::rdata;
use super::view::{AddrMap, QnameMode};

/// What the rest of the broker needs from the DNS message (for subjects and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsSummary {
    /// QTYPE of the first question.
    pub qtype: Option<u16>,
    /// Response code including the EDNS extended bits.
    pub rcode: Option<u16>,
    /// The wire message could not be fully parsed.
    pub malformed: bool,
}

/// Why a wire message stopped parsing early (shown to nobody but tests: the event carries
/// `malformed-packet: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WireError {
    Truncated,
    BadLabel,
    PointerLoop,
    NameTooLong,
}

const MAX_NAME_WIRE: usize = 255;
const MAX_JUMPS: usize = 64;

/// Reads the name at `pos`, appending its presentation form (JSON-escaped, without quotes)
/// to `out`: without the trailing dot (root is `.`), or fully qualified with it when `fqdn`.
/// Returns the offset just after the name as it appears at `pos` (after the first pointer,
/// if any). On error, `out` is left unchanged.
pub(super) fn read_name(
    msg: &[u8],
    pos: usize,
    out: &mut Vec<u8>,
    fqdn: bool,
) -> Result<usize, WireError> {
    let mark = out.len();
    let r = read_name_inner(msg, pos, out, fqdn);
    if r.is_err() {
        out.truncate(mark);
    }
    r
}

fn read_name_inner(
    msg: &[u8],
    mut pos: usize,
    out: &mut Vec<u8>,
    fqdn: bool,
) -> Result<usize, WireError> {
    let mut end: Option<usize> = None;
    let mut jumps = 0;
    let mut wire_len = 0usize;
    let mut first = true;
    loop {
        let len = *msg.get(pos).ok_or(WireError::Truncated)?;
        match len & 0xC0 {
            0x00 => {
                let len = usize::from(len);
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE {
                    return Err(WireError::NameTooLong);
                }
                if len == 0 {
                    if first || fqdn {
                        out.push(b'.');
                    }
                    return Ok(end.unwrap_or(pos + 1));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(WireError::Truncated)?;
                if !first {
                    out.push(b'.');
                }
                first = false;
                write_label(label, out);
                pos += 1 + len;
            }
            0xC0 => {
                let lo = *msg.get(pos + 1).ok_or(WireError::Truncated)?;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(WireError::PointerLoop);
                }
                pos = (usize::from(len & 0x3F) << 8) | usize::from(lo);
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// One label in presentation format, escaped as DNS text (RFC 1035 5.1) and then as JSON.
fn write_label(label: &[u8], out: &mut Vec<u8>) {
    for &c in label {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(c),
            // DNS-escaped specials: `\c`, where a `\` or `"` also needs JSON escaping.
            b'.' | b'(' | b')' | b';' | b'@' | b'$' => {
                out.extend_from_slice(b"\\\\");
                out.push(c);
            }
            b'\\' => out.extend_from_slice(b"\\\\\\\\"),
            b'"' => out.extend_from_slice(b"\\\\\\\""),
            0x21..=0x7e => out.push(c),
            _ => {
                out.extend_from_slice(b"\\\\");
                out.push(b'0' + c / 100);
                out.push(b'0' + (c / 10) % 10);
                out.push(b'0' + c % 10);
            }
        }
    }
}

/// Appends a wire-format name (a whole buffer, e.g. dnstap `query_zone`) as a JSON string,
/// or `null` if it does not parse.
pub fn write_wire_name(out: &mut Vec<u8>, wire: &[u8]) {
    out.push(b'"');
    if read_name(wire, 0, out, false).is_err() {
        out.pop();
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, WireError> {
    match msg.get(pos..pos + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(WireError::Truncated),
    }
}

fn u32_at(msg: &[u8], pos: usize) -> Result<u32, WireError> {
    match msg.get(pos..pos + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(WireError::Truncated),
    }
}

/// The EDNS OPT record, remembered while walking the additional section.
#[derive(Clone, Copy)]
struct Opt {
    udp_size: u16,
    ttl: u32,
    rdata_start: usize,
    rdata_end: usize,
}

/// What a view and the enrichment change in the `dns` and `edns` blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsOpts<'a> {
    /// Transforms the EDNS Client Subnet address.
    pub addr: Option<&'a dyn super::view::AddrMap>,
    /// Writes `qname-registered` and `qname-tld`.
    pub registered: Option<super::view::RegisteredFn>,
    pub qname: super::view::QnameMode,
}

/// Writes `"dns":{...},"edns":...` for the message (or for its absence) and returns the
/// summary used for subjects.
pub fn write_dns(out: &mut Vec<u8>, msg: Option<&[u8]>) -> DnsSummary {
    write_dns_with(out, msg, DnsOpts::default())
}

/// [`write_dns`] for one view, with the enrichment.
pub fn write_dns_with(out: &mut Vec<u8>, msg: Option<&[u8]>, opts: DnsOpts<'_>) -> DnsSummary {
    let reg_null: &[u8] = if opts.registered.is_some() {
        b",\"qname-registered\":null,\"qname-tld\":null"
    } else {
        b""
    };
    let Some(msg) = msg else {
        out.extend_from_slice(
            b"\"dns\":{\"length\":null,\"id\":null,\"opcode\":null,\"rcode\":null,\
\"qname\":null,\"qtype\":null,\"qclass\":null,\"flags\":null,\
\"qdcount\":null,\"ancount\":null,\"nscount\":null,\"arcount\":null",
        );
        out.extend_from_slice(reg_null);
        out.extend_from_slice(
            b",\"resource-records\":{\"an\":[],\"ns\":[],\"ar\":[]},\"malformed-packet\":false},\"edns\":null",
        );
        return DnsSummary::default();
    };
    let mut sum = DnsSummary::default();
    out.extend_from_slice(b"\"dns\":{\"length\":");
    json::uint(out, msg.len());
    let Some(h) = msg.get(..12) else {
        out.extend_from_slice(
            b",\"id\":null,\"opcode\":null,\"rcode\":null,\"qname\":null,\"qtype\":null,\
\"qclass\":null,\"flags\":null,\"qdcount\":null,\"ancount\":null,\"nscount\":null,\
\"arcount\":null",
        );
        out.extend_from_slice(reg_null);
        out.extend_from_slice(
            b",\"resource-records\":{\"an\":[],\"ns\":[],\"ar\":[]},\"malformed-packet\":true},\"edns\":null",
        );
        sum.malformed = true;
        return sum;
    };
    let id = u16::from_be_bytes([h[0], h[1]]);
    let (f1, f2) = (h[2], h[3]);
    let counts = [
        u16::from_be_bytes([h[4], h[5]]),
        u16::from_be_bytes([h[6], h[7]]),
        u16::from_be_bytes([h[8], h[9]]),
        u16::from_be_bytes([h[10], h[11]]),
    ];
    out.extend_from_slice(b",\"id\":");
    json::uint(out, id);
    out.extend_from_slice(b",\"opcode\":");
    json::uint(out, (f1 >> 3) & 0x0F);
    out.extend_from_slice(b",\"flags\":{\"qr\":");
    json::bool(out, f1 & 0x80 != 0);
    out.extend_from_slice(b",\"aa\":");
    json::bool(out, f1 & 0x04 != 0);
    out.extend_from_slice(b",\"tc\":");
    json::bool(out, f1 & 0x02 != 0);
    out.extend_from_slice(b",\"rd\":");
    json::bool(out, f1 & 0x01 != 0);
    out.extend_from_slice(b",\"ra\":");
    json::bool(out, f2 & 0x80 != 0);
    out.extend_from_slice(b",\"z\":");
    json::bool(out, f2 & 0x40 != 0);
    out.extend_from_slice(b",\"ad\":");
    json::bool(out, f2 & 0x20 != 0);
    out.extend_from_slice(b",\"cd\":");
    json::bool(out, f2 & 0x10 != 0);
    out.push(b'}');
    out.extend_from_slice(b",\"qdcount\":");
    json::uint(out, counts[0]);
    out.extend_from_slice(b",\"ancount\":");
    json::uint(out, counts[1]);
    out.extend_from_slice(b",\"nscount\":");
    json::uint(out, counts[2]);
    out.extend_from_slice(b",\"arcount\":");
    json::uint(out, counts[3]);

    // Question section: the first question is `qname`/`qtype`/`qclass`.
    let mut pos = 12;
    let mut malformed = false;
    out.extend_from_slice(b",\"qname\":");
    // Where the qname's text is in `out`, for the registered domain.
    let mut qname_at = None;
    if counts[0] == 0 {
        out.extend_from_slice(b"null,\"qtype\":null,\"qclass\":null");
    } else {
        let mark = out.len();
        out.push(b'"');
        match read_name(msg, pos, out, false)
            .and_then(|p| Ok((p, u16_at(msg, p)?, u16_at(msg, p + 2)?)))
        {
            Ok((p, qtype, qclass)) => {
                if opts.registered.is_some() || opts.qname != QnameMode::Keep {
                    qname_at = Some(registered_qname(out, mark + 1, opts));
                }
                out.extend_from_slice(b"\",\"qtype\":");
                write_type(out, qtype);
                out.extend_from_slice(b",\"qclass\":");
                write_class(out, qclass);
                sum.qtype = Some(qtype);
                pos = p + 4;
            }
            Err(_) => {
                // Remove the opening quote and any partial name.
                out.truncate(mark);
                out.extend_from_slice(b"null,\"qtype\":null,\"qclass\":null");
                malformed = true;
            }
        }
        // Further questions (rare, QDCOUNT > 1) are skipped over, not printed.
        let mut scratch = Vec::new();
        for _ in 1..counts[0] {
            if malformed {
                break;
            }
            scratch.clear();
            match read_name(msg, pos, &mut scratch, false) {
                Ok(p) if p + 4 <= msg.len() => pos = p + 4,
                _ => malformed = true,
            }
        }
    }

    if opts.registered.is_some() {
        match qname_at {
            Some(Reg {
                end,
                registered,
                tld,
            }) => {
                out.extend_from_slice(b",\"qname-registered\":");
                write_suffix(out, end, registered);
                out.extend_from_slice(b",\"qname-tld\":");
                write_suffix(out, end, tld);
            }
            None => out.extend_from_slice(reg_null),
        }
    }

    // Answer, authority and additional sections.
    let mut opt: Option<Opt> = None;
    let rr_mark = out.len();
    out.extend_from_slice(b",\"resource-records\":{");
    for si in 0..3 {
        out.extend_from_slice(match si {
            0 => b"\"an\":[",
            1 => b",\"ns\":[",
            _ => b",\"ar\":[",
        });
        let mut first = true;
        for _ in 0..counts[si + 1] {
            if malformed {
                break;
            }
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            match write_record(msg, pos, out) {
                Ok((next, RecordKind::Plain)) => {
                    pos = next;
                    first = false;
                }
                Ok((next, RecordKind::Opt(o))) => {
                    // The OPT pseudo-record goes to the `edns` block, not to `ar`.
                    out.truncate(mark);
                    if opt.is_none() {
                        opt = Some(o);
                    }
                    pos = next;
                }
                Err(_) => {
                    out.truncate(mark);
                    malformed = true;
                }
            }
        }
        out.push(b']');
    }
    out.push(b'}');
    if opts.qname == QnameMode::RegisteredDomain {
        // The records repeat the full name: a view that shortens it leaves them out.
        out.truncate(rr_mark);
        out.extend_from_slice(b",\"resource-records\":{\"an\":[],\"ns\":[],\"ar\":[]}");
    }
    if !malformed && pos < msg.len() {
        // Trailing bytes after the last record: the counts and the bytes disagree.
        malformed = true;
    }

    let ext = opt.map_or(0, |o| (o.ttl >> 24) as u16);
    let rcode = (ext << 4) | u16::from(f2 & 0x0F);
    sum.rcode = Some(rcode);
    out.extend_from_slice(b",\"rcode\":");
    write_rcode(out, rcode);
    out.extend_from_slice(b",\"malformed-packet\":");
    json::bool(out, malformed);
    out.push(b'}');
    sum.malformed = malformed;

    out.extend_from_slice(b",\"edns\":");
    match opt {
        None => out.extend_from_slice(b"null"),
        Some(o) => write_edns(out, msg, o, opts.addr),
    }
    sum
}

/// Where the registered domain and public suffix of the qname are in `out`: both are
/// suffixes of the qname's text, which ends at `end` (byte lengths; 0 for none).
struct Reg {
    end: usize,
    registered: usize,
    tld: usize,
}

/// The qname's text is `out[start..]` (JSON-escaped presentation form, no closing quote
/// yet): finds its registered domain and public suffix, and shortens the name in place
/// when the view asks for it. A name with JSON escapes in it is not looked up (so the
/// suffixes copied later need no escaping either).
fn registered_qname(out: &mut Vec<u8>, start: usize, opts: DnsOpts<'_>) -> Reg {
    let mut reg = Reg {
        end: out.len(),
        registered: 0,
        tld: 0,
    };
    let Some(text) = out.get(start..) else {
        return reg;
    };
    if text.contains(&b'\\') {
        return reg;
    }
    let Ok(name) = std::str::from_utf8(text) else {
        return reg;
    };
    let (registered, tld) = match opts.registered {
        Some(f) => f(name),
        None => (None, None),
    };
    // Both are suffixes of `name` (checked, so a lookup that answered anything else is
    // taken as no answer).
    let suffix_len = |s: Option<&str>| s.filter(|s| name.ends_with(*s)).map_or(0, str::len);
    reg.registered = suffix_len(registered);
    reg.tld = suffix_len(tld);
    if opts.qname == QnameMode::RegisteredDomain && reg.registered > 0 {
        let from = out.len() - reg.registered;
        out.copy_within(from.., start);
        out.truncate(start + reg.registered);
        reg.end = out.len();
    }
    reg
}

/// `null`, or the `len` bytes before `end` in `out`, as a JSON string.
fn write_suffix(out: &mut Vec<u8>, end: usize, len: usize) {
    if len == 0 {
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
    out.extend_from_within(end - len..end);
    out.push(b'"');
}

enum RecordKind {
    Plain,
    Opt(Opt),
}

/// Writes one record as a JSON object; returns the offset after it.
fn write_record(
    msg: &[u8],
    pos: usize,
    out: &mut Vec<u8>,
) -> Result<(usize, RecordKind), WireError> {
    out.extend_from_slice(b"{\"name\":\"");
    let p = read_name(msg, pos, out, false)?;
    let rtype = u16_at(msg, p)?;
    let class = u16_at(msg, p + 2)?;
    let ttl = u32_at(msg, p + 4)?;
    let rdlen = usize::from(u16_at(msg, p + 8)?);
    let rstart = p + 10;
    let rend = rstart + rdlen;
    if rend > msg.len() {
        return Err(WireError::Truncated);
    }
    if rtype == 41 {
        return Ok((
            rend,
            RecordKind::Opt(Opt {
                udp_size: class,
                ttl,
                rdata_start: rstart,
                rdata_end: rend,
            }),
        ));
    }
    out.extend_from_slice(b"\",\"rdatatype\":");
    write_type(out, rtype);
    out.extend_from_slice(b",\"class\":");
    write_class(out, class);
    out.extend_from_slice(b",\"ttl\":");
    json::uint(out, ttl);
    out.extend_from_slice(b",\"rdata\":");
    rdata::write_rdata(out, msg, rtype, rstart, rdlen);
    out.push(b'}');
    Ok((rend, RecordKind::Plain))
}

fn write_edns(out: &mut Vec<u8>, msg: &[u8], o: Opt, addr: Option<&dyn AddrMap>) {
    out.extend_from_slice(b"{\"udp-size\":");
    json::uint(out, o.udp_size);
    out.extend_from_slice(b",\"rcode\":");
    json::uint(out, o.ttl >> 24);
    out.extend_from_slice(b",\"version\":");
    json::uint(out, (o.ttl >> 16) & 0xFF);
    out.extend_from_slice(b",\"dnssec-ok\":");
    json::uint(out, (o.ttl >> 15) & 1);
    out.extend_from_slice(b",\"options\":[");
    let rdata = &msg[o.rdata_start..o.rdata_end];
    let mut p = 0;
    let mut first = true;
    while p + 4 <= rdata.len() {
        let code = u16::from_be_bytes([rdata[p], rdata[p + 1]]);
        let len = usize::from(u16::from_be_bytes([rdata[p + 2], rdata[p + 3]]));
        let Some(data) = rdata.get(p + 4..p + 4 + len) else {
            break;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        write_option(out, code, data, addr);
        p += 4 + len;
    }
    out.extend_from_slice(b"]}");
}

fn write_option(out: &mut Vec<u8>, code: u16, data: &[u8], addr: Option<&dyn AddrMap>) {
    out.extend_from_slice(b"{\"code\":");
    json::uint(out, code);
    out.extend_from_slice(b",\"name\":\"");
    json::raw(out, option_name(code).as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    match code {
        // NSID: text when printable, else hex.
        3 if !data.is_empty() && data.iter().all(|c| (0x20..0x7f).contains(c)) => {
            json::lossy(out, data);
        }
        8 => write_ecs(out, data, addr),
        15 => write_ede(out, data),
        _ => {
            out.push(b'"');
            rdata::hex_lower(out, data);
            out.push(b'"');
        }
    }
    out.push(b'}');
}

/// EDNS Client Subnet (RFC 7871): `"data":"192.0.2.0/24"` plus the structured fields.
fn write_ecs(out: &mut Vec<u8>, data: &[u8], map: Option<&dyn AddrMap>) {
    let parsed = match data {
        [f0, f1, src, scope, addr @ ..] => {
            let family = u16::from_be_bytes([*f0, *f1]);
            let width = match family {
                1 => 4,
                2 => 16,
                _ => 0,
            };
            (width > 0 && addr.len() <= width).then_some((family, *src, *scope, addr, width))
        }
        _ => None,
    };
    let Some((family, src, scope, addr, width)) = parsed else {
        if map.is_some() {
            // Not a well-formed subnet: it cannot be transformed, so it is not shown.
            out.extend_from_slice(b"null");
            return;
        }
        out.push(b'"');
        rdata::hex_lower(out, data);
        out.push(b'"');
        return;
    };
    let mut full = [0u8; 16];
    full[..addr.len()].copy_from_slice(addr);
    if let Some(m) = map {
        let ip = if width == 4 {
            IpAddr::from([full[0], full[1], full[2], full[3]])
        } else {
            IpAddr::from(full)
        };
        let len = src.min(if width == 4 { 32 } else { 128 });
        match m.prefix(ip, len) {
            IpAddr::V4(a) if width == 4 => full[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) if width == 16 => full = a.octets(),
            // A transform that changed the family: nothing of the original is shown.
            _ => full = [0; 16],
        }
    }
    out.push(b'"');
    if width == 4 {
        json::ipv4_bare(out, [full[0], full[1], full[2], full[3]]);
    } else {
        json::ipv6_bare(out, full);
    }
    out.push(b'/');
    json::uint(out, src);
    out.extend_from_slice(b"\",\"family\":");
    json::uint(out, family);
    out.extend_from_slice(b",\"source-prefix\":");
    json::uint(out, src);
    out.extend_from_slice(b",\"scope-prefix\":");
    json::uint(out, scope);
}

/// Extended DNS Errors (RFC 8914): `"data":"18 Prohibited: text"` plus structured fields.
fn write_ede(out: &mut Vec<u8>, data: &[u8]) {
    let [c0, c1, text @ ..] = data else {
        out.push(b'"');
        rdata::hex_lower(out, data);
        out.push(b'"');
        return;
    };
    let code = u16::from_be_bytes([*c0, *c1]);
    let text = String::from_utf8_lossy(text);
    let text = text.trim_end_matches('\0');
    let name = ede_name(code);
    out.push(b'"');
    json::uint(out, code);
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    if !text.is_empty() {
        use std::fmt::Write;
        let _ = write!(json::Escaper(out), ": {text}");
    }
    out.extend_from_slice(b"\",\"info-code\":");
    json::uint(out, code);
    out.extend_from_slice(b",\"info\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",\"extra-text\":");
    json::str(out, text);
}

/// Record type mnemonic (`A`, `AAAA`, ...), `TYPE123` (RFC 3597) when unknown.
pub fn write_type(out: &mut Vec<u8>, t: u16) {
    out.push(b'"');
    match type_mnemonic(t) {
        Some(s) => json::raw(out, s.as_bytes()),
        None => {
            out.extend_from_slice(b"TYPE");
            json::uint(out, t);
        }
    }
    out.push(b'"');
}

/// The IANA mnemonic of a resource record type (the "Resource Record (RR) TYPEs" registry;
/// 255 is written `ANY`), `None` for unassigned values.
pub fn type_mnemonic(t: u16) -> Option<&'static str> {
    Some(match t {
        1 => "A",
        2 => "NS",
        3 => "MD",
        4 => "MF",
        5 => "CNAME",
        6 => "SOA",
        7 => "MB",
        8 => "MG",
        9 => "MR",
        10 => "NULL",
        11 => "WKS",
        12 => "PTR",
        13 => "HINFO",
        14 => "MINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        18 => "AFSDB",
        19 => "X25",
        20 => "ISDN",
        21 => "RT",
        22 => "NSAP",
        23 => "NSAP-PTR",
        24 => "SIG",
        25 => "KEY",
        26 => "PX",
        27 => "GPOS",
        28 => "AAAA",
        29 => "LOC",
        30 => "NXT",
        31 => "EID",
        32 => "NIMLOC",
        33 => "SRV",
        34 => "ATMA",
        35 => "NAPTR",
        36 => "KX",
        37 => "CERT",
        38 => "A6",
        39 => "DNAME",
        40 => "SINK",
        41 => "OPT",
        42 => "APL",
        43 => "DS",
        44 => "SSHFP",
        45 => "IPSECKEY",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        49 => "DHCID",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        52 => "TLSA",
        53 => "SMIMEA",
        55 => "HIP",
        56 => "NINFO",
        57 => "RKEY",
        58 => "TALINK",
        59 => "CDS",
        60 => "CDNSKEY",
        61 => "OPENPGPKEY",
        62 => "CSYNC",
        63 => "ZONEMD",
        64 => "SVCB",
        65 => "HTTPS",
        66 => "DSYNC",
        67 => "HHIT",
        68 => "BRID",
        99 => "SPF",
        100 => "UINFO",
        101 => "UID",
        102 => "GID",
        103 => "UNSPEC",
        104 => "NID",
        105 => "L32",
        106 => "L64",
        107 => "LP",
        108 => "EUI48",
        109 => "EUI64",
        128 => "NXNAME",
        249 => "TKEY",
        250 => "TSIG",
        251 => "IXFR",
        252 => "AXFR",
        253 => "MAILB",
        254 => "MAILA",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        258 => "AVC",
        259 => "DOA",
        260 => "AMTRELAY",
        261 => "RESINFO",
        262 => "WALLET",
        263 => "CLA",
        264 => "IPN",
        32768 => "TA",
        32769 => "DLV",
        _ => return None,
    })
}

/// Class mnemonic, `CLASS123` when unknown.
pub fn write_class(out: &mut Vec<u8>, c: u16) {
    out.push(b'"');
    match c {
        1 => out.extend_from_slice(b"IN"),
        3 => out.extend_from_slice(b"CH"),
        4 => out.extend_from_slice(b"HS"),
        254 => out.extend_from_slice(b"NONE"),
        255 => out.extend_from_slice(b"ANY"),
        _ => {
            out.extend_from_slice(b"CLASS");
            json::uint(out, c);
        }
    }
    out.push(b'"');
}

/// RCODE mnemonic (RFC 6895 registry), `RCODE123` when unassigned.
pub fn rcode_name(rcode: u16) -> Option<&'static str> {
    Some(match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        _ => return None,
    })
}

fn write_rcode(out: &mut Vec<u8>, rcode: u16) {
    out.push(b'"');
    match rcode_name(rcode) {
        Some(n) => json::raw(out, n.as_bytes()),
        None => {
            out.extend_from_slice(b"RCODE");
            json::uint(out, rcode);
        }
    }
    out.push(b'"');
}

/// Appends the mnemonic for a record type to a `String` (used for subjects).
pub fn type_name(t: u16, s: &mut String) {
    match type_mnemonic(t) {
        Some(n) => s.push_str(n),
        None => {
            s.push_str("TYPE");
            s.push_str(itoa::Buffer::new().format(t));
        }
    }
}

fn option_name(code: u16) -> &'static str {
    match code {
        1 => "LLQ",
        2 => "UL",
        3 => "NSID",
        5 => "DAU",
        6 => "DHU",
        7 => "N3U",
        8 => "CSUBNET",
        9 => "EXPIRE",
        10 => "COOKIE",
        11 => "KEEPALIVE",
        12 => "PADDING",
        13 => "CHAIN",
        14 => "KEYTAG",
        15 => "ERRORS",
        16 => "CLIENTTAG",
        17 => "SERVERTAG",
        18 => "REPORTCHANNEL",
        19 => "ZONEVERSION",
        _ => "UNKNOWN",
    }
}

fn ede_name(code: u16) -> &'static str {
    match code {
        0 => "Other",
        1 => "Unsupported DNSKEY Algorithm",
        2 => "Unsupported DS Digest Type",
        3 => "Stale Answer",
        4 => "Forged Answer",
        5 => "DNSSEC Indeterminate",
        6 => "DNSSEC Bogus",
        7 => "Signature Expired",
        8 => "Signature Not Yet Valid",
        9 => "DNSKEY Missing",
        10 => "RRSIGs Missing",
        11 => "No Zone Key Bit Set",
        12 => "NSEC Missing",
        13 => "Cached Error",
        14 => "Not Ready",
        15 => "Blocked",
        16 => "Censored",
        17 => "Filtered",
        18 => "Prohibited",
        19 => "Stale NXDOMAIN Answer",
        20 => "Not Authoritative",
        21 => "Not Supported",
        22 => "No Reachable Authority",
        23 => "Network Error",
        24 => "Invalid Data",
        25 => "Signature Expired before Valid",
        26 => "Too Early",
        27 => "Unsupported NSEC3 Iterations Value",
        28 => "Unable to conform to policy",
        29 => "Synthesized",
        30 => "Invalid Query Type",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_json(msg: &[u8]) -> (serde_json::Value, DnsSummary) {
        let mut out = b"{".to_vec();
        let s = write_dns(&mut out, Some(msg));
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        (v, s)
    }

    /// A response for `www.example.` A with one answer (compressed owner) and an OPT with
    /// ECS, NSID, EDE and a cookie, extended rcode bits set.
    fn sample_response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
        m.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, 1]);
        let mut opts = Vec::new();
        opts.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100]);
        opts.extend_from_slice(&[0, 3, 0, 3]);
        opts.extend_from_slice(b"ns1");
        opts.extend_from_slice(&[0, 15, 0, 6, 0, 18]);
        opts.extend_from_slice(b"nope");
        opts.extend_from_slice(&[0, 10, 0, 2, 0xab, 0xcd]);
        // OPT: root, type 41, udp 1232, ttl: ext-rcode 1, version 0, DO set.
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 1, 0, 0x80, 0]);
        m.extend_from_slice(&(opts.len() as u16).to_be_bytes());
        m.extend_from_slice(&opts);
        m
    }

    #[test]
    fn full_response() {
        let (v, s) = dns_json(&sample_response());
        let d = &v["dns"];
        assert_eq!(d["id"], 0x1234);
        assert_eq!(d["qname"], "www.example");
        assert_eq!(d["qtype"], "A");
        assert_eq!(d["qclass"], "IN");
        assert_eq!(d["flags"]["qr"], true);
        assert_eq!(d["flags"]["rd"], true);
        assert_eq!(d["flags"]["ra"], true);
        assert_eq!(d["flags"]["aa"], false);
        // header rcode 0 + extended bits 1<<4 = 16 = BADVERS
        assert_eq!(d["rcode"], "BADVERS");
        assert_eq!(s.rcode, Some(16));
        assert_eq!(d["ancount"], 1);
        assert_eq!(d["resource-records"]["an"][0]["name"], "www.example");
        assert_eq!(d["resource-records"]["an"][0]["rdata"], "192.0.2.1");
        assert_eq!(d["resource-records"]["an"][0]["ttl"], 3600);
        assert_eq!(
            d["resource-records"]["ar"].as_array().map(Vec::len),
            Some(0)
        );
        assert_eq!(d["malformed-packet"], false);
        let e = &v["edns"];
        assert_eq!(e["udp-size"], 1232);
        assert_eq!(e["dnssec-ok"], 1);
        assert_eq!(e["options"][0]["name"], "CSUBNET");
        assert_eq!(e["options"][0]["data"], "198.51.100.0/24");
        assert_eq!(e["options"][1]["data"], "ns1");
        assert_eq!(e["options"][2]["info-code"], 18);
        assert_eq!(e["options"][2]["extra-text"], "nope");
        assert_eq!(e["options"][3]["data"], "abcd");
        assert!(!s.malformed);
    }

    #[test]
    fn every_truncation_is_handled() {
        let full = sample_response();
        for n in 0..full.len() {
            let (v, s) = dns_json(&full[..n]);
            assert_eq!(v["dns"]["malformed-packet"], true, "cut at {n}");
            assert!(s.malformed);
        }
    }

    #[test]
    fn names_are_escaped() {
        let mut out = Vec::new();
        write_wire_name(&mut out, b"\x04a.b\"\x02\x00\\\x00");
        let s: String = serde_json::from_slice(&out).expect("json");
        assert_eq!(s, "a\\.b\\\".\\000\\\\");
        out.clear();
        write_wire_name(&mut out, b"\x00");
        assert_eq!(out, b"\".\"");
        out.clear();
        write_wire_name(&mut out, b"\x05ab");
        assert_eq!(out, b"null");
    }

    #[test]
    fn pointer_loops_terminate() {
        // question name is a pointer to itself
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        let (v, s) = dns_json(&m);
        assert_eq!(v["dns"]["qname"], serde_json::Value::Null);
        assert!(s.malformed);
    }

    #[test]
    fn bad_rdata_is_generic_not_fatal() {
        // an A record with a 3-byte rdata, followed by a valid TXT record
        let mut m = vec![0, 1, 0x81, 0x80, 0, 0, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 3, 1, 2, 3]);
        m.extend_from_slice(&[0, 0, 16, 0, 1, 0, 0, 0, 1, 0, 3, 2, b'h', b'i']);
        let (v, s) = dns_json(&m);
        let an = &v["dns"]["resource-records"]["an"];
        assert_eq!(an[0]["rdata"], "\\# 3 010203");
        assert_eq!(an[1]["rdatatype"], "TXT");
        assert!(an[1]["rdata"].as_str().is_some_and(|t| t.contains("hi")));
        assert!(!s.malformed);
    }
}
