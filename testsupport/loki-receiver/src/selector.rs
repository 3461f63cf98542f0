//! Stream selectors: the parser (what Loki's `syntax.ParseLabels` accepts, via PromQL's
//! `ParseMetric`) and the label texts as Prometheus prints them.

/// Why a selector did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// 1-based column (bytes) of the problem.
    pub col: usize,
    pub what: String,
}

impl std::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1:{}: parse error: {}", self.col, self.what)
    }
}

/// Parses LogQL stream-selector text `{name="value", ...}` into (name, value) pairs in the
/// order written. Values: double-quoted with Go escapes, single-quoted, or backtick raw.
/// Only `=` is accepted (a push names a stream, it does not match one). A trailing comma
/// is allowed. Label names must be `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>, SelectorError> {
    let b = s.as_bytes();
    let mut i = 0;
    let err = |i: usize, what: &str| SelectorError {
        col: i + 1,
        what: what.to_string(),
    };
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if i >= b.len() || b[i] != b'{' {
        return Err(err(i, "unexpected input, expected \"{\""));
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            return Err(err(i, "unexpected end of input inside braces"));
        }
        if b[i] == b'}' {
            i += 1;
            break;
        }
        // label name
        let start = i;
        if !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
            return Err(err(
                i,
                &format!(
                    "unexpected character inside braces: {:?}",
                    s[i..].chars().next().unwrap_or(' ')
                ),
            ));
        }
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &s[start..i];
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(err(
                i,
                "unexpected character in label matching, expected \"=\"",
            ));
        }
        i += 1;
        if i < b.len() && (b[i] == b'~' || b[i] == b'=') {
            return Err(err(
                i,
                "unexpected operator in label matching, expected \"=\"",
            ));
        }
        skip_ws(&mut i);
        let (value, next) = parse_quoted(s, i)?;
        i = next;
        out.push((name.to_string(), value));
        skip_ws(&mut i);
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'}' {
            i += 1;
            break;
        }
        return Err(err(
            i,
            "unexpected character in label set, expected \",\" or \"}\"",
        ));
    }
    skip_ws(&mut i);
    if i != b.len() {
        return Err(err(i, "unexpected input after the label set"));
    }
    Ok(out)
}

/// A quoted string at `s[i..]`: its value and the index after it.
fn parse_quoted(s: &str, i: usize) -> Result<(String, usize), SelectorError> {
    let b = s.as_bytes();
    let err = |i: usize, what: &str| SelectorError {
        col: i + 1,
        what: what.to_string(),
    };
    let Some(&q) = b.get(i) else {
        return Err(err(
            i,
            "unexpected end of input, expected string label value",
        ));
    };
    if q == b'`' {
        let rest = &s[i + 1..];
        let Some(end) = rest.find('`') else {
            return Err(err(i, "unterminated raw string"));
        };
        return Ok((rest[..end].to_string(), i + 1 + end + 1));
    }
    if q != b'"' && q != b'\'' {
        return Err(err(i, "unexpected character, expected string label value"));
    }
    let mut out = String::new();
    let mut chars = s[i + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let at = i + 1 + off;
        if c as u32 == q as u32 {
            return Ok((out, at + 1));
        }
        if c == '\n' {
            return Err(err(at, "unterminated quoted string"));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else {
            return Err(err(at, "unterminated quoted string"));
        };
        let hex = |n: usize, chars: &mut std::str::CharIndices<'_>| -> Option<u32> {
            let mut v = 0u32;
            for _ in 0..n {
                let (_, h) = chars.next()?;
                v = v * 16 + h.to_digit(16)?;
            }
            Some(v)
        };
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            '"' if q == b'"' => out.push('"'),
            '\'' if q == b'\'' => out.push('\''),
            'x' => {
                let v = hex(2, &mut chars).ok_or_else(|| err(at, "invalid escape sequence"))?;
                // A byte escape: only ASCII keeps the value UTF-8.
                let c = char::from_u32(v)
                    .filter(|c| c.is_ascii())
                    .ok_or_else(|| err(at, "invalid UTF-8 in escape sequence"))?;
                out.push(c);
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let v = hex(n, &mut chars).ok_or_else(|| err(at, "invalid escape sequence"))?;
                out.push(char::from_u32(v).ok_or_else(|| err(at, "invalid Unicode code point"))?);
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let d = chars
                        .next()
                        .and_then(|(_, d)| d.to_digit(8))
                        .ok_or_else(|| err(at, "invalid escape sequence"))?;
                    v = v * 8 + d;
                }
                let c = char::from_u32(v)
                    .filter(|c| c.is_ascii())
                    .ok_or_else(|| err(at, "invalid UTF-8 in escape sequence"))?;
                out.push(c);
            }
            _ => return Err(err(at, "unknown escape sequence")),
        }
    }
    Err(err(i, "unterminated quoted string"))
}

/// Go's `strconv.Quote` (what Prometheus uses to print label values), for the texts.
pub fn go_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels as Prometheus prints them: `{a="b", c="d"}` (sorted input expected).
pub fn labels_string(ls: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (n, v)) in ls.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(n);
        out.push('=');
        out.push_str(&go_quote(v));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_with_escapes_and_refuse_garbage() {
        assert_eq!(
            parse_selector(r#"{job="tapbus", q="a\"b\\c\n", s='x', r=`y\z`,}"#).unwrap(),
            vec![
                ("job".into(), "tapbus".into()),
                ("q".into(), "a\"b\\c\n".into()),
                ("s".into(), "x".into()),
                ("r".into(), "y\\z".into()),
            ]
        );
        assert_eq!(
            parse_selector(r#" { a = "\u00e9\x41\101" } "#).unwrap(),
            vec![("a".into(), "éAA".into())]
        );
        for bad in [
            "",
            "job=\"x\"",
            "{job=\"x\"",
            "{job=x}",
            "{job=~\"x\"}",
            "{job!=\"x\"}",
            "{1job=\"x\"}",
            "{jo-b=\"x\"}",
            "{job=\"x\" a=\"y\"}",
            "{job=\"x\\q\"}",
            "{job=\"x\"} trailing",
            "{job=\"unterminated}",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_selector("{}").unwrap(), vec![]);
    }

    #[test]
    fn go_texts() {
        assert_eq!(go_quote("a\"b\\\n\u{1}"), r#""a\"b\\\n\x01""#);
        assert_eq!(
            labels_string(&[("a".into(), "x".into()), ("b".into(), "y z".into())]),
            r#"{a="x", b="y z"}"#
        );
    }
}
