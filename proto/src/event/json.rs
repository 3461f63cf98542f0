//! Small, allocation-free JSON writing helpers for the event encoder.
//!
//! The encoder writes straight into one output `Vec<u8>`: no intermediate `String`s,
//! no `serde_json::Value`. Everything here appends valid JSON fragments.

use std::fmt;

/// Appends `s` as a JSON string literal (with quotes), escaping as RFC 8259 requires.
pub fn str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(out, s.as_bytes());
    out.push(b'"');
}

/// Appends raw bytes as a JSON string, replacing invalid UTF-8 with U+FFFD.
pub fn lossy(out: &mut Vec<u8>, b: &[u8]) {
    str(out, &String::from_utf8_lossy(b));
}

/// Appends `Some(s)` as a string, `None` as `null`.
pub fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Escapes bytes that are already valid UTF-8 (the caller guarantees it).
fn escape_into(out: &mut Vec<u8>, b: &[u8]) {
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => {
                out.extend_from_slice(&b[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
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

/// Appends a `Display` value as a JSON string; `null` if its `fmt` fails (nothing partial
/// is left behind).
pub fn display<D: fmt::Display>(out: &mut Vec<u8>, d: &D) {
    use fmt::Write;
    let mark = out.len();
    out.push(b'"');
    if write!(Escaper(out), "{d}").is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
}

pub fn uint<I: itoa::Integer>(out: &mut Vec<u8>, v: I) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

pub fn opt_uint<I: itoa::Integer>(out: &mut Vec<u8>, v: Option<I>) {
    match v {
        Some(v) => uint(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

pub fn bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
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
    for (i, o) in a.iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        uint(out, *o);
    }
}

/// Appends `"YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ"` for a Unix time (UTC, nanosecond precision).
pub fn rfc3339_ns(out: &mut Vec<u8>, secs: u64, nanos: u32) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    out.push(b'"');
    pad(out, y, 4);
    out.push(b'-');
    pad(out, m as u64, 2);
    out.push(b'-');
    pad(out, d as u64, 2);
    out.push(b'T');
    pad(out, rem / 3600, 2);
    out.push(b':');
    pad(out, (rem % 3600) / 60, 2);
    out.push(b':');
    pad(out, rem % 60, 2);
    out.push(b'.');
    pad(out, u64::from(nanos.min(999_999_999)), 9);
    out.extend_from_slice(b"Z\"");
}

pub(crate) fn pad(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    for _ in s.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(s.as_bytes());
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
    fn numbers_and_addresses() {
        assert_eq!(s(|o| ipv4(o, [127, 0, 0, 1])), "\"127.0.0.1\"");
        assert_eq!(s(|o| float(o, f64::NAN)), "null");
        assert_eq!(s(|o| float(o, 0.25)), "0.25");
        assert_eq!(s(|o| display(o, &"x\"y")), "\"x\\\"y\"");
    }
}
