//! rdata in presentation format, straight from the wire into the JSON string.
//!
//! Each known type is printed as in a zone file (RFC 1035 and the type's RFC; names in rdata
//! are fully qualified, with the trailing dot). The layout follows what BIND and miekg/dns
//! print: RRSIG times as `YYYYMMDDHHmmSS`, algorithms as numbers, hashes and digests in upper
//! case hex, keys and signatures in base64, NSEC3 hashes in base32hex, SVCB parameter values
//! quoted. Anything else, and any rdata that does not parse exactly to its RDLENGTH, is
//! written in the RFC 3597 generic form `\# len hex`, so no record is ever lost or garbled.
//!
//! Nothing here allocates: every value is written into the caller's buffer, already escaped
//! for JSON (the caller writes the surrounding quotes).

use super::dns::{read_name, type_mnemonic};
use super::json;

/// Any decoding failure: the caller falls back to the generic form.
#[derive(Debug)]
struct Bad;

type R<T = ()> = Result<T, Bad>;

/// A cursor over one record's rdata (`msg[pos..end]`); names may point anywhere in `msg`.
struct Rd<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Rd<'a> {
    fn bytes(&mut self, n: usize) -> R<&'a [u8]> {
        let stop = self.pos.checked_add(n).ok_or(Bad)?;
        if stop > self.end {
            return Err(Bad);
        }
        let b = &self.msg[self.pos..stop];
        self.pos = stop;
        Ok(b)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        let b = &self.msg[self.pos..self.end];
        self.pos = self.end;
        b
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    /// A domain name, fully qualified (`a.example.`, root `.`).
    fn name(&mut self, out: &mut Vec<u8>) -> R {
        // The name's own bytes must lie inside the rdata; a compression pointer may lead
        // anywhere in the message.
        let next = read_name(self.msg, self.pos, out, true).map_err(|_| Bad)?;
        if next > self.end {
            return Err(Bad);
        }
        self.pos = next;
        Ok(())
    }

    /// A length-prefixed character-string, quoted and escaped.
    fn char_string(&mut self, out: &mut Vec<u8>) -> R {
        let n = usize::from(self.u8()?);
        let s = self.bytes(n)?;
        quoted(out, s);
        Ok(())
    }
}

/// `"text"` with presentation escapes (`\"`, `\\`, `\DDD` outside printable ASCII), written
/// JSON-escaped.
fn quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(b"\\\"");
    text(out, s, false);
    out.extend_from_slice(b"\\\"");
}

/// The escaped body of a character-string; with `comma`, `,` is escaped too (SVCB lists).
fn text(out: &mut Vec<u8>, s: &[u8], comma: bool) {
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\\\\\""),
            b'\\' => out.extend_from_slice(b"\\\\\\\\"),
            b',' if comma => out.extend_from_slice(b"\\\\,"),
            0x20..=0x7e => out.push(c),
            _ => decimal_escape(out, c),
        }
    }
}

/// `\DDD`, JSON-escaped.
fn decimal_escape(out: &mut Vec<u8>, c: u8) {
    out.extend_from_slice(b"\\\\");
    out.push(b'0' + c / 100);
    out.push(b'0' + (c / 10) % 10);
    out.push(b'0' + c % 10);
}

fn sp(out: &mut Vec<u8>) {
    out.push(b' ');
}

/// Appends `b` encoded with `enc` (data-encoding) to `out`, in place: no intermediate
/// `String`.
fn encode_into(enc: &data_encoding::Encoding, out: &mut Vec<u8>, b: &[u8]) {
    let start = out.len();
    out.resize(start + enc.encode_len(b.len()), 0);
    enc.encode_mut(b, &mut out[start..]);
}

pub(super) fn hex_lower(out: &mut Vec<u8>, b: &[u8]) {
    encode_into(&data_encoding::HEXLOWER, out, b);
}

fn hex_upper(out: &mut Vec<u8>, b: &[u8]) {
    encode_into(&data_encoding::HEXUPPER, out, b);
}

/// Standard base64 with padding (RFC 4648 section 4); `/` and `+` need no JSON escaping.
fn base64(out: &mut Vec<u8>, b: &[u8]) {
    encode_into(&data_encoding::BASE64, out, b);
}

/// base32hex without padding, upper case (RFC 4648 section 7, as NSEC3 uses it and as BIND
/// and miekg/dns print it).
fn base32hex(out: &mut Vec<u8>, b: &[u8]) {
    encode_into(&data_encoding::BASE32HEX_NOPAD, out, b);
}

fn type_text(out: &mut Vec<u8>, t: u16) {
    match type_mnemonic(t) {
        Some(n) => out.extend_from_slice(n.as_bytes()),
        None => {
            out.extend_from_slice(b"TYPE");
            json::uint(out, t);
        }
    }
}

/// The NSEC/NSEC3/CSYNC type bitmap (RFC 4034 section 4.1.2): ` A NS SOA ...`.
fn type_bitmap(out: &mut Vec<u8>, mut b: &[u8]) -> R {
    while !b.is_empty() {
        let [window, len, rest @ ..] = b else {
            return Err(Bad);
        };
        let len = usize::from(*len);
        if len == 0 || len > 32 || rest.len() < len {
            return Err(Bad);
        }
        for (i, &byte) in rest[..len].iter().enumerate() {
            for bit in 0..8u16 {
                if byte & (0x80 >> bit) != 0 {
                    sp(out);
                    let t = (u16::from(*window) << 8) | ((i as u16) << 3) | bit;
                    type_text(out, t);
                }
            }
        }
        b = &rest[len..];
    }
    Ok(())
}

/// `YYYYMMDDHHmmSS` (RFC 4034 section 3.2) for RRSIG times, read as seconds since 1970.
fn sig_time(out: &mut Vec<u8>, t: u32) {
    let secs = u64::from(t);
    let (y, m, d) = json::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    json::pad(out, y, 4);
    json::pad(out, u64::from(m), 2);
    json::pad(out, u64::from(d), 2);
    json::pad(out, rem / 3600, 2);
    json::pad(out, (rem % 3600) / 60, 2);
    json::pad(out, rem % 60, 2);
}

fn ipv6(out: &mut Vec<u8>, b: &[u8]) -> R {
    json::ipv6_bare(out, b.try_into().map_err(|_| Bad)?);
    Ok(())
}

/// Writes the presentation form of one record's rdata (`msg[start..start + len]`) into a JSON
/// string that the caller has opened. Returns `false` (having written nothing) when the type
/// is not one we print or the rdata does not parse exactly; the caller then writes the
/// generic form.
fn known(out: &mut Vec<u8>, msg: &[u8], rtype: u16, start: usize, len: usize) -> bool {
    let mut rd = Rd {
        msg,
        pos: start,
        end: start + len,
    };
    let mark = out.len();
    let r = format(out, &mut rd, rtype);
    if r.is_ok() && rd.at_end() {
        return true;
    }
    out.truncate(mark);
    false
}

/// Appends the record's rdata as a JSON string: presentation format for the known types, the
/// RFC 3597 generic form for the others; `""` for empty rdata.
pub(super) fn write_rdata(out: &mut Vec<u8>, msg: &[u8], rtype: u16, start: usize, len: usize) {
    out.push(b'"');
    if len > 0 && !known(out, msg, rtype, start, len) {
        out.extend_from_slice(b"\\\\# ");
        json::uint(out, len);
        sp(out);
        hex_lower(out, &msg[start..start + len]);
    }
    out.push(b'"');
}

fn format(out: &mut Vec<u8>, rd: &mut Rd<'_>, rtype: u16) -> R {
    match rtype {
        // A
        1 => json::ipv4_bare(out, rd.bytes(4)?.try_into().map_err(|_| Bad)?),
        // AAAA
        28 => ipv6(out, rd.bytes(16)?)?,
        // NS MD MF CNAME MB MG MR PTR DNAME
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => rd.name(out)?,
        // MINFO RP TALINK: two names
        14 | 17 | 58 => {
            rd.name(out)?;
            sp(out);
            rd.name(out)?;
        }
        // MX AFSDB RT KX LP: preference and a name
        15 | 18 | 21 | 36 | 107 => {
            json::uint(out, rd.u16()?);
            sp(out);
            rd.name(out)?;
        }
        // SOA
        6 => {
            rd.name(out)?;
            sp(out);
            rd.name(out)?;
            for _ in 0..5 {
                sp(out);
                json::uint(out, rd.u32()?);
            }
        }
        // TXT SPF AVC RESINFO NINFO: one or more character-strings
        16 | 99 | 258 | 261 | 56 => {
            rd.char_string(out)?;
            while !rd.at_end() {
                sp(out);
                rd.char_string(out)?;
            }
        }
        // HINFO
        13 => {
            rd.char_string(out)?;
            sp(out);
            rd.char_string(out)?;
        }
        // SRV
        33 => {
            for _ in 0..3 {
                json::uint(out, rd.u16()?);
                sp(out);
            }
            rd.name(out)?;
        }
        // NAPTR
        35 => {
            json::uint(out, rd.u16()?);
            sp(out);
            json::uint(out, rd.u16()?);
            for _ in 0..3 {
                sp(out);
                rd.char_string(out)?;
            }
            sp(out);
            rd.name(out)?;
        }
        // URI: priority weight "target" (the target is the rest, not length-prefixed)
        256 => {
            json::uint(out, rd.u16()?);
            sp(out);
            json::uint(out, rd.u16()?);
            sp(out);
            quoted(out, rd.rest());
        }
        // CAA: flags tag "value"
        257 => {
            json::uint(out, rd.u8()?);
            sp(out);
            let n = usize::from(rd.u8()?);
            let tag = rd.bytes(n)?;
            if tag.is_empty() || !tag.iter().all(u8::is_ascii_alphanumeric) {
                return Err(Bad);
            }
            out.extend_from_slice(tag);
            sp(out);
            quoted(out, rd.rest());
        }
        // SSHFP
        44 => {
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            hex_upper(out, rd.rest());
        }
        // TLSA SMIMEA
        52 | 53 => {
            for _ in 0..3 {
                json::uint(out, rd.u8()?);
                sp(out);
            }
            hex_upper(out, rd.rest());
        }
        // DS CDS TA DLV
        43 | 59 | 32768 | 32769 => {
            json::uint(out, rd.u16()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            hex_upper(out, rd.rest());
        }
        // DNSKEY CDNSKEY KEY
        48 | 60 | 25 => {
            json::uint(out, rd.u16()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            base64(out, rd.rest());
        }
        // RRSIG SIG
        46 | 24 => {
            type_text(out, rd.u16()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u32()?);
            sp(out);
            sig_time(out, rd.u32()?);
            sp(out);
            sig_time(out, rd.u32()?);
            sp(out);
            json::uint(out, rd.u16()?);
            sp(out);
            rd.name(out)?;
            sp(out);
            base64(out, rd.rest());
        }
        // NSEC
        47 => {
            rd.name(out)?;
            type_bitmap(out, rd.rest())?;
        }
        // NSEC3, NSEC3PARAM
        50 | 51 => {
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u16()?);
            sp(out);
            let n = usize::from(rd.u8()?);
            match rd.bytes(n)? {
                [] => out.push(b'-'),
                salt => hex_upper(out, salt),
            }
            if rtype == 50 {
                sp(out);
                let n = usize::from(rd.u8()?);
                base32hex(out, rd.bytes(n)?);
                type_bitmap(out, rd.rest())?;
            }
        }
        // CSYNC: serial flags bitmap
        62 => {
            json::uint(out, rd.u32()?);
            sp(out);
            json::uint(out, rd.u16()?);
            type_bitmap(out, rd.rest())?;
        }
        // ZONEMD: serial scheme algorithm digest
        63 => {
            json::uint(out, rd.u32()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            json::uint(out, rd.u8()?);
            sp(out);
            hex_upper(out, rd.rest());
        }
        // DHCID OPENPGPKEY
        49 | 61 => base64(out, rd.rest()),
        // SVCB HTTPS
        64 | 65 => svcb(out, rd)?,
        // LOC
        29 => loc(out, rd)?,
        // EUI48 EUI64
        108 | 109 => {
            let b = rd.bytes(if rtype == 108 { 6 } else { 8 })?;
            for (i, c) in b.iter().enumerate() {
                if i > 0 {
                    out.push(b'-');
                }
                hex_lower(out, &[*c]);
            }
        }
        // NID L64: preference and a 64-bit locator as four hex groups
        104 | 106 => {
            json::uint(out, rd.u16()?);
            sp(out);
            let b = rd.bytes(8)?;
            for (i, pair) in b.chunks(2).enumerate() {
                if i > 0 {
                    out.push(b':');
                }
                hex_lower(out, pair);
            }
        }
        // L32: preference and an IPv4 locator
        105 => {
            json::uint(out, rd.u16()?);
            sp(out);
            json::ipv4_bare(out, rd.bytes(4)?.try_into().map_err(|_| Bad)?);
        }
        _ => return Err(Bad),
    }
    Ok(())
}

fn svc_key(out: &mut Vec<u8>, k: u16) {
    let name: &[u8] = match k {
        0 => b"mandatory",
        1 => b"alpn",
        2 => b"no-default-alpn",
        3 => b"port",
        4 => b"ipv4hint",
        5 => b"ech",
        6 => b"ipv6hint",
        7 => b"dohpath",
        8 => b"ohttp",
        _ => {
            out.extend_from_slice(b"key");
            json::uint(out, k);
            return;
        }
    };
    out.extend_from_slice(name);
}

/// SVCB/HTTPS (RFC 9460): `priority target key="value" ...`; keys without a value (
/// `no-default-alpn`, `ohttp`) are written bare.
fn svcb(out: &mut Vec<u8>, rd: &mut Rd<'_>) -> R {
    json::uint(out, rd.u16()?);
    sp(out);
    rd.name(out)?;
    while !rd.at_end() {
        let key = rd.u16()?;
        let n = usize::from(rd.u16()?);
        let v = rd.bytes(n)?;
        sp(out);
        svc_key(out, key);
        if v.is_empty() && matches!(key, 2 | 8) {
            continue;
        }
        out.extend_from_slice(b"=\\\"");
        match key {
            0 => {
                if v.is_empty() || v.len() % 2 != 0 {
                    return Err(Bad);
                }
                for (i, k) in v.chunks_exact(2).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    svc_key(out, u16::from_be_bytes([k[0], k[1]]));
                }
            }
            1 => {
                let mut p = v;
                let mut first = true;
                while let [n, rest @ ..] = p {
                    let n = usize::from(*n);
                    if n == 0 || rest.len() < n {
                        return Err(Bad);
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    text(out, &rest[..n], true);
                    p = &rest[n..];
                }
                if first {
                    return Err(Bad);
                }
            }
            3 => {
                let [a, b] = v else { return Err(Bad) };
                json::uint(out, u16::from_be_bytes([*a, *b]));
            }
            4 => {
                if v.is_empty() || v.len() % 4 != 0 {
                    return Err(Bad);
                }
                for (i, a) in v.chunks_exact(4).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json::ipv4_bare(out, [a[0], a[1], a[2], a[3]]);
                }
            }
            5 => base64(out, v),
            6 => {
                if v.is_empty() || v.len() % 16 != 0 {
                    return Err(Bad);
                }
                for (i, a) in v.chunks_exact(16).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    ipv6(out, a)?;
                }
            }
            2 | 8 => return Err(Bad),
            _ => text(out, v, false),
        }
        out.extend_from_slice(b"\\\"");
    }
    Ok(())
}

/// LOC (RFC 1876): `52 22 23.000 N 04 53 32.000 E -2m 1m 10000m 10m`.
fn loc(out: &mut Vec<u8>, rd: &mut Rd<'_>) -> R {
    if rd.u8()? != 0 {
        return Err(Bad);
    }
    let size = rd.u8()?;
    let horiz = rd.u8()?;
    let vert = rd.u8()?;
    let lat = rd.u32()?;
    let lon = rd.u32()?;
    let alt = rd.u32()?;
    coord(out, lat, b'N', b'S');
    sp(out);
    coord(out, lon, b'E', b'W');
    sp(out);
    // Altitude in centimetres above 100,000 m below the reference.
    let cm = i64::from(alt) - 10_000_000;
    if cm < 0 {
        out.push(b'-');
    }
    let a = cm.unsigned_abs();
    json::uint(out, a / 100);
    if a % 100 != 0 {
        out.push(b'.');
        json::pad(out, a % 100, 2);
    }
    out.extend_from_slice(b"m ");
    for (i, v) in [size, horiz, vert].into_iter().enumerate() {
        if i > 0 {
            sp(out);
        }
        precision(out, v)?;
        out.push(b'm');
    }
    Ok(())
}

/// A latitude or longitude: thousandths of an arc second offset by 2^31.
fn coord(out: &mut Vec<u8>, v: u32, pos: u8, neg: u8) {
    const EQUATOR: u32 = 1 << 31;
    let (ms, hemi) = if v >= EQUATOR {
        (v - EQUATOR, pos)
    } else {
        (EQUATOR - v, neg)
    };
    let deg = ms / 3_600_000;
    let min = (ms % 3_600_000) / 60_000;
    let sec = ms % 60_000;
    json::pad(out, u64::from(deg), 2);
    sp(out);
    json::pad(out, u64::from(min), 2);
    sp(out);
    json::uint(out, sec / 1000);
    out.push(b'.');
    json::pad(out, u64::from(sec % 1000), 3);
    sp(out);
    out.push(hemi);
}

/// Size/precision byte: mantissa (high nibble) x 10^exponent (low nibble) centimetres,
/// written in metres.
fn precision(out: &mut Vec<u8>, v: u8) -> R {
    let (m, e) = (v >> 4, v & 0x0F);
    if m > 9 || e > 9 {
        return Err(Bad);
    }
    match e {
        0 => {
            out.extend_from_slice(b"0.0");
            out.push(b'0' + m);
        }
        1 => {
            out.extend_from_slice(b"0.");
            out.push(b'0' + m);
            out.push(b'0');
        }
        _ => {
            out.push(b'0' + m);
            for _ in 2..e {
                out.push(b'0');
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rdata of type `t` placed after a 12-byte header (so names can point at offset 12).
    fn show(t: u16, rdata: &[u8]) -> String {
        let mut msg = vec![0u8; 12];
        msg.extend_from_slice(rdata);
        let mut out = Vec::new();
        write_rdata(&mut out, &msg, t, 12, rdata.len());
        serde_json::from_slice::<String>(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn common_types() {
        assert_eq!(show(1, &[192, 0, 2, 1]), "192.0.2.1");
        assert_eq!(show(1, &[192, 0, 2]), "\\# 3 c00002");
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        assert_eq!(show(28, &v6), "2001::1");
        assert_eq!(show(2, b"\x03ns1\x04test\x00"), "ns1.test.");
        assert_eq!(show(5, b"\x00"), ".");
        // the header is all zeros: a pointer to offset 0 is the root
        assert_eq!(show(15, b"\x00\x0a\x04mail\xc0\x00"), "10 mail.");
        assert_eq!(
            show(6, b"\x01a\x00\x01b\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x05"),
            "a. b. 1 2 3 4 5"
        );
        assert_eq!(
            show(33, b"\x00\x00\x00\x64\x01\x85\x04ldap\x00"),
            "0 100 389 ldap."
        );
        assert_eq!(show(17, b"\x01h\x00\x01r\x00"), "h. r.");
    }

    #[test]
    fn character_strings() {
        assert_eq!(show(16, b"\x05hello\x05world"), "\"hello\" \"world\"");
        assert_eq!(show(16, b"\x00"), "\"\"");
        assert_eq!(
            show(16, b"\x0bcaf\xc3\xa9 \"q\"\\\t"),
            "\"caf\\195\\169 \\\"q\\\"\\\\\\009\""
        );
        assert_eq!(show(13, b"\x06PC-x86\x05Linux"), "\"PC-x86\" \"Linux\"");
        // a character-string running past the rdata is not TXT
        assert_eq!(show(16, b"\x05hi"), "\\# 3 056869");
        assert_eq!(
            show(256, b"\x00\x0a\x00\x01http://x/"),
            "10 1 \"http://x/\""
        );
        assert_eq!(show(257, b"\x00\x05issueca.test"), "0 issue \"ca.test\"");
        assert_eq!(
            show(35, b"\x00\x64\x00\x0a\x01U\x07E2U+sip\x00\x00"),
            "100 10 \"U\" \"E2U+sip\" \"\" ."
        );
    }

    #[test]
    fn dnssec_types() {
        assert_eq!(show(43, b"\x95\x32\x0d\x02\xe9\x6c"), "38194 13 2 E96C");
        assert_eq!(
            show(48, b"\x01\x00\x03\x0d\xff\xfe\xfd\x00"),
            "256 3 13 //79AA=="
        );
        let mut rrsig = vec![0, 6, 13, 0, 0, 0, 0x0e, 0x10];
        rrsig.extend_from_slice(&1_826_847_683u32.to_be_bytes());
        rrsig.extend_from_slice(&1_795_311_683u32.to_be_bytes());
        rrsig.extend_from_slice(&[0x9d, 0x4c, 0, 1, 2, 3]);
        assert_eq!(
            show(46, &rrsig),
            "SOA 13 0 3600 20271122014123 20261122014123 40268 . AQID"
        );
        // NSEC: next name . and A NS SOA RRSIG NSEC DNSKEY; then type 1234 in window 4
        assert_eq!(
            show(47, b"\x00\x00\x07\x62\x00\x00\x00\x00\x03\x80\x04\x01\x20"),
            ". A NS SOA RRSIG NSEC DNSKEY TYPE1026"
        );
        assert_eq!(show(47, b"\x00\x00\x00"), "\\# 3 000000");
        assert_eq!(
            show(
                50,
                b"\x01\x00\x00\x00\x00\x05\x64\x46\x2e\x12\x0f\x00\x01\x40"
            ),
            "1 0 0 - CH32S4GF A"
        );
        assert_eq!(show(51, b"\x01\x00\x00\x0a\x02\xab\xcd"), "1 0 10 ABCD");
        assert_eq!(show(44, b"\x04\x02\x9d\x4a"), "4 2 9D4A");
        assert_eq!(show(52, b"\x03\x01\x01\x0c\x72"), "3 1 1 0C72");
    }

    #[test]
    fn base_encodings() {
        let mut out = Vec::new();
        for (input, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            out.clear();
            base64(&mut out, input);
            assert_eq!(out, b64.as_bytes());
        }
        for (input, b32) in [
            (&b""[..], ""),
            (b"f", "CO"),
            (b"fo", "CPNG"),
            (b"foo", "CPNMU"),
            (b"foob", "CPNMUOG"),
            (b"fooba", "CPNMUOJ1"),
            (b"foobar", "CPNMUOJ1E8"),
        ] {
            out.clear();
            base32hex(&mut out, input);
            assert_eq!(out, b32.as_bytes());
        }
        out.clear();
        hex_lower(&mut out, b"\x00\x0f\xab\xff");
        assert_eq!(out, b"000fabff");
        out.clear();
        hex_upper(&mut out, b"\x00\x0f\xab\xff");
        assert_eq!(out, b"000FABFF");
        // Appends after what the buffer holds.
        out.clear();
        out.extend_from_slice(b"x ");
        base64(&mut out, b"fo");
        hex_upper(&mut out, b"");
        base32hex(&mut out, b"f");
        hex_lower(&mut out, b"\x01");
        assert_eq!(out, b"x Zm8=CO01");
    }

    #[test]
    fn svcb_and_loc() {
        // 1 . alpn=h2,h3 ipv4hint=127.0.0.80 no-default-alpn port=8443
        let mut r = vec![0, 1, 0];
        r.extend_from_slice(&[0, 1, 0, 6, 2, b'h', b'2', 2, b'h', b'3']);
        r.extend_from_slice(&[0, 2, 0, 0]);
        r.extend_from_slice(&[0, 3, 0, 2, 0x20, 0xfb]);
        r.extend_from_slice(&[0, 4, 0, 4, 127, 0, 0, 80]);
        assert_eq!(
            show(65, &r),
            "1 . alpn=\"h2,h3\" no-default-alpn port=\"8443\" ipv4hint=\"127.0.0.80\""
        );
        // a bad port length makes the record generic
        let bad = [0, 1, 0, 0, 3, 0, 1, 5];
        assert!(show(64, &bad).starts_with("\\# 8 "));
        // 52 22 23.000 N 04 53 32.000 E -2m 1m 10000m 10m
        let mut l = vec![0, 0x12, 0x16, 0x13];
        l.extend_from_slice(&((1u32 << 31) + ((52 * 60 + 22) * 60 + 23) * 1000).to_be_bytes());
        l.extend_from_slice(&((1u32 << 31) + ((4 * 60 + 53) * 60 + 32) * 1000).to_be_bytes());
        l.extend_from_slice(&(10_000_000u32 - 200).to_be_bytes());
        assert_eq!(
            show(29, &l),
            "52 22 23.000 N 04 53 32.000 E -2m 1m 10000m 10m"
        );
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(show(65280, &[0xde, 0xad, 0xbe, 0xef]), "\\# 4 deadbeef");
        assert_eq!(show(10, &[1, 2]), "\\# 2 0102");
        assert_eq!(show(1, &[]), "");
    }
}
