//! Small, allocation-free JSON writing helpers for the event encoder.
//!
//! The encoder writes straight into one output `Vec<u8>`: no intermediate `String`s,
//! no `serde_json::Value`. Everything here appends valid JSON fragments.

use std::fmt;

/// Appends bytes that need no escaping (mnemonics, digits).
#[inline]
pub fn raw(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
}

/// Appends `s` as a JSON string literal (with quotes), escaping as RFC 8259 requires.
pub fn str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(out, s.as_bytes());
    out.push(b'"');
}

/// Appends a string known to need no escaping (a mnemonic) with its quotes.
#[inline]
pub fn name(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Appends raw bytes as a JSON string, replacing invalid UTF-8 with U+FFFD.
pub fn lossy(out: &mut Vec<u8>, b: &[u8]) {
    // ASCII (identities, versions: nearly always) is valid UTF-8 and checked much faster.
    if b.is_ascii() {
        out.push(b'"');
        escape_into(out, b);
        out.push(b'"');
        return;
    }
    match std::str::from_utf8(b) {
        Ok(s) => str(out, s),
        Err(_) => str(out, &String::from_utf8_lossy(b)),
    }
}

/// Appends `Some(s)` as a string, `None` as `null`.
pub fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Bytes that JSON strings cannot hold as they are: `"`, `\\`, control characters (and DEL,
/// escaped for the benefit of terminals).
const fn escape_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
}

static NEEDS_ESCAPE: [bool; 256] = escape_table();

#[inline]
fn needs_escape(c: u8) -> bool {
    NEEDS_ESCAPE[usize::from(c)]
}

/// Escapes bytes that are already valid UTF-8 (the caller guarantees it).
fn escape_into(out: &mut Vec<u8>, b: &[u8]) {
    // Fast path: nothing to escape.
    if !b.iter().any(|&c| needs_escape(c)) {
        out.extend_from_slice(b);
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if !needs_escape(c) {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// A `fmt::Write` that JSON-escapes what is written into it (without the quotes), so any
/// `Display` value can be written into a JSON string with no temporary `String`.
pub struct Escaper<'a>(pub &'a mut Vec<u8>);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s.as_bytes());
        Ok(())
    }
}

/// An integer in decimal (itoa).
///
/// itoa replaced a hand-written digit-pair writer here. `event_encode` over bulk-100k
/// (`cargo bench -p tapbus-proto --bench decode`, instructions counted with callgrind and
/// `TAPBUS_BENCH_ONCE=encode` minus `=load`): 6,402 instructions per message before, 6,236
/// with itoa (-2.6 %); wall time 44.8 ms vs 44.4 ms per 100k messages (means of three
/// interleaved runs on a shared 2-core VM, within noise).
pub fn uint<I: itoa::Integer>(out: &mut Vec<u8>, v: I) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub fn opt_uint<I: itoa::Integer>(out: &mut Vec<u8>, v: Option<I>) {
    match v {
        Some(v) => uint(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// "00" .. "99", for the fixed-layout timestamp in [`rfc3339_ns`].
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

pub fn bool(out: &mut Vec<u8>, v: bool) {
    // Two constant-length copies rather than one of a run-time length.
    if v {
        out.extend_from_slice(b"true");
    } else {
        out.extend_from_slice(b"false");
    }
}

/// A finite float; non-finite values become `null` (JSON has no NaN).
pub fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let mut b = ryu::Buffer::new();
        out.extend_from_slice(b.format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `"key":` (key must not need escaping).
#[inline]
pub fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Writes an IPv4 address in dotted-quad form without going through `fmt`.
pub fn ipv4(out: &mut Vec<u8>, a: [u8; 4]) {
    out.push(b'"');
    ipv4_bare(out, a);
    out.push(b'"');
}

/// The dotted quad without quotes.
pub fn ipv4_bare(out: &mut Vec<u8>, a: [u8; 4]) {
    // At most 15 bytes, made in a buffer and appended at once.
    let mut buf = [0u8; 16];
    let mut n = 0;
    for (i, &o) in a.iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    let len = out.len();
    out.extend_from_slice(&buf);
    out.truncate(len + n);
}

/// An IPv6 address as Rust's `Display` writes it (RFC 5952: lower-case hex without leading
/// zeros, the first longest run of two or more zero groups as `::`, IPv4-mapped addresses
/// as `::ffff:a.b.c.d`), without going through `fmt`.
pub fn ipv6_bare(out: &mut Vec<u8>, a: [u8; 16]) {
    if let [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b0, b1, b2, b3] = a {
        out.extend_from_slice(b"::ffff:");
        ipv4_bare(out, [b0, b1, b2, b3]);
        return;
    }
    let mut seg = [0u16; 8];
    for (i, s) in seg.iter_mut().enumerate() {
        *s = u16::from_be_bytes([a[2 * i], a[2 * i + 1]]);
    }
    // The first longest run of zero groups.
    let (mut best_start, mut best_len, mut cur_start, mut cur_len) = (0, 0, 0, 0);
    for (i, &s) in seg.iter().enumerate() {
        if s == 0 {
            if cur_len == 0 {
                cur_start = i;
            }
            cur_len += 1;
            if cur_len > best_len {
                best_start = cur_start;
                best_len = cur_len;
            }
        } else {
            cur_len = 0;
        }
    }
    fn groups(out: &mut Vec<u8>, seg: &[u16]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, &s) in seg.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            let mut started = false;
            for shift in [12u16, 8, 4, 0] {
                let d = (s >> shift) & 0xF;
                if d != 0 || started || shift == 0 {
                    out.push(HEX[usize::from(d)]);
                    started = true;
                }
            }
        }
    }
    if best_len > 1 {
        groups(out, &seg[..best_start]);
        out.extend_from_slice(b"::");
        groups(out, &seg[best_start + best_len..]);
    } else {
        groups(out, &seg);
    }
}

/// Appends `"YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ"` for a Unix time (UTC, nanosecond precision).
pub fn rfc3339_ns(out: &mut Vec<u8>, secs: u64, nanos: u32) {
    let days = secs / 86_400;
    let rem = (secs % 86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let nanos = nanos.min(999_999_999);
    if y > 9999 {
        // Far future: years of more than four digits, the slow way.
        out.push(b'"');
        pad(out, y, 4);
        out.push(b'-');
        pad(out, u64::from(m), 2);
        out.push(b'-');
        pad(out, u64::from(d), 2);
        out.push(b'T');
        pad(out, u64::from(rem / 3600), 2);
        out.push(b':');
        pad(out, u64::from((rem % 3600) / 60), 2);
        out.push(b':');
        pad(out, u64::from(rem % 60), 2);
        out.push(b'.');
        pad(out, u64::from(nanos), 9);
        out.extend_from_slice(b"Z\"");
        return;
    }
    // Fixed layout: fill a 32-byte template and append it at once. This stays hand-written
    // (itoa has no zero padding): writing the fields with `pad` as above costs 6,711
    // instructions per message in `event_encode` against 6,236 with the template (-7 %,
    // callgrind, see `uint`).
    let mut b = *b"\"0000-00-00T00:00:00.000000000Z\"";
    let two = |b: &mut [u8; 32], at: usize, v: u32| {
        let r = (v as usize % 100) * 2;
        b[at] = PAIRS[r];
        b[at + 1] = PAIRS[r + 1];
    };
    let y = y as u32;
    two(&mut b, 1, y / 100);
    two(&mut b, 3, y % 100);
    two(&mut b, 6, m);
    two(&mut b, 9, d);
    two(&mut b, 12, rem / 3600);
    two(&mut b, 15, (rem % 3600) / 60);
    two(&mut b, 18, rem % 60);
    b[21] = b'0' + (nanos / 100_000_000) as u8;
    let n = nanos % 100_000_000;
    two(&mut b, 22, n / 1_000_000);
    two(&mut b, 24, (n / 10_000) % 100);
    two(&mut b, 26, (n / 100) % 100);
    two(&mut b, 28, n % 100);
    out.extend_from_slice(&b);
}

/// `v` in decimal with at least `width` digits, zero-padded (RRSIG times, LOC, far-future
/// timestamps): itoa's digits after the zeros.
pub(crate) fn pad(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let d = b.format(v).as_bytes();
    out.resize(out.len() + width.saturating_sub(d.len()), b'0');
    out.extend_from_slice(d);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn escapes_like_serde_json() {
        for input in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n\t\r",
            "\u{1}\u{1f}\u{7f}",
            "é✓",
        ] {
            let ours = s(|o| str(o, input));
            let back: String = serde_json::from_str(&ours).expect("valid json");
            assert_eq!(back, input);
        }
        assert_eq!(s(|o| lossy(o, b"a\xffb")), "\"a\u{fffd}b\"");
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            s(|o| rfc3339_ns(o, 0, 0)),
            "\"1970-01-01T00:00:00.000000000Z\""
        );
        // 2026-11-22T02:41:38.535458Z (from the unbound capture's golang output)
        assert_eq!(
            s(|o| rfc3339_ns(o, 1_795_315_298, 535_458_000)),
            "\"2026-11-22T02:41:38.535458000Z\""
        );
        assert_eq!(
            s(|o| rfc3339_ns(o, 951_782_400, 1)),
            "\"2000-02-29T00:00:00.000000001Z\""
        );
        // far future and the maximum never panic
        let _ = s(|o| rfc3339_ns(o, u64::MAX / 2, u32::MAX));
    }

    #[test]
    fn numbers_like_itoa() {
        let mut vals: Vec<u64> = vec![0, 1, 9, 10, 99, 100, 999, 1000, 65535, u64::MAX];
        let mut x = 1u64;
        for _ in 0..19 {
            vals.extend([x - 1, x, x + 1]);
            x *= 10;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            vals.push(seed >> (seed % 64));
        }
        for v in vals {
            assert_eq!(s(|o| uint(o, v)), v.to_string());
            assert_eq!(s(|o| pad(o, v, 9)), format!("{v:09}"));
        }
        assert_eq!(s(|o| uint(o, -5i32)), "-5");
        assert_eq!(s(|o| uint(o, 7u8)), "7");
    }

    #[test]
    fn addresses_like_std() {
        let mut cases: Vec<[u8; 16]> = vec![[0; 16]];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000u32 {
            let mut a = [0u8; 16];
            for b in a.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // mostly zero groups, to exercise the `::` choice
                *b = if seed.is_multiple_of(3) {
                    seed as u8
                } else {
                    0
                };
            }
            if i % 5 == 0 {
                a[..10].fill(0);
                a[10] = 0xff;
                a[11] = 0xff;
            }
            if i % 7 == 0 {
                a[..12].fill(0);
            }
            cases.push(a);
        }
        for a in cases {
            let v6 = std::net::Ipv6Addr::from(a);
            assert_eq!(s(|o| ipv6_bare(o, a)), v6.to_string(), "{a:?}");
            let v4 = [a[12], a[13], a[14], a[15]];
            assert_eq!(
                s(|o| ipv4_bare(o, v4)),
                std::net::Ipv4Addr::from(v4).to_string()
            );
        }
    }

    #[test]
    fn numbers_and_addresses() {
        assert_eq!(s(|o| ipv4(o, [127, 0, 0, 1])), "\"127.0.0.1\"");
        assert_eq!(s(|o| float(o, f64::NAN)), "null");
        assert_eq!(s(|o| float(o, 0.25)), "0.25");
    }
}
