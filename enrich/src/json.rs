//! JSON string writing for the enrichment fields: the same escaping rules as the broker's
//! encoder (`tapbus-proto`'s `event::json`: `"`, `\`, control characters and DEL escaped,
//! everything else copied), kept here because proto depends on this crate, not the
//! reverse. Appends straight into the encoder's `Vec<u8>`.

/// Bytes a JSON string cannot hold as they are: `"`, `\`, control characters, and DEL
/// (escaped for the benefit of terminals, as the encoder does).
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

/// Appends `s` as a JSON string literal, quotes included.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(out, s.as_bytes());
    out.push(b'"');
}

/// Appends `s` as a JSON string literal with ASCII letters lowercased (DNS names compare
/// case-insensitively; non-ASCII bytes are copied as they are).
pub fn write_str_ascii_lower(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|c| c.is_ascii_uppercase()) {
        write_str(out, s);
        return;
    }
    out.push(b'"');
    let start = out.len();
    escape_into(out, s.as_bytes());
    // Escapes only add ASCII punctuation, digits and lowercase letters ('u', 'n', ...) so
    // lowercasing after escaping changes only the copied letters.
    out[start..].make_ascii_lowercase();
    out.push(b'"');
}

/// Escapes `b` (valid UTF-8) without quotes.
fn escape_into(out: &mut Vec<u8>, b: &[u8]) {
    if !b.iter().any(|&c| NEEDS_ESCAPE[usize::from(c)]) {
        out.extend_from_slice(b);
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(c)] {
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

/// Appends an unsigned integer in decimal.
pub(crate) fn write_u32(out: &mut Vec<u8>, mut v: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        // v % 10 < 10: the cast cannot truncate.
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_the_encoder() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\u0001e\\u007f\xc3\xa9\"");
    }

    #[test]
    fn lowercases_but_not_escapes() {
        let mut out = Vec::new();
        write_str_ascii_lower(&mut out, "WWW.Ex\u{1f}AMPLE.com");
        assert_eq!(out, b"\"www.ex\\u001fample.com\"");
    }

    #[test]
    fn integers() {
        for v in [0u32, 7, 10, 3215, u32::MAX] {
            let mut out = Vec::new();
            write_u32(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }
}
