//! The registered domain and the public suffix ("TLD") of a qname, from the public suffix
//! list compiled into the `psl` crate. The broker's encoder writes them as
//! `dns.qname-registered` and `dns.qname-tld`.
//!
//! # Semantics of the JSON fields
//!
//! * `dns.qname-tld`: the qname's public suffix by the PSL algorithm (ICANN and private
//!   sections both count: `co.uk`, `com`, `github.io`), without the trailing dot. A TLD the
//!   list does not know gets the PSL's implicit `*` rule: the last label is the suffix
//!   (`foo.invalidtld` -> `invalidtld`). `null` when the qname cannot be split (below).
//! * `dns.qname-registered`: the public suffix plus one label (`www.example.co.uk` ->
//!   `example.co.uk`; `foo.invalidtld` -> `foo.invalidtld` by the `*` rule). `null` when
//!   the qname is itself a public suffix (`co.uk`, `com`) or cannot be split.
//!
//! Both are slices of the qname as given, so they keep its case (`WWW.Example.COM` ->
//! `Example.COM`, `COM`); matching is ASCII case-insensitive. Use
//! [`crate::json::write_str_ascii_lower`] to write them lowercased.
//!
//! # Names that cannot be split (both fields `null`)
//!
//! * the root `.` and the empty string;
//! * a name with a backslash: the encoder's presentation form escapes a dot inside a
//!   label as `\.` and other bytes as `\DDD`; such a name's labels cannot be told apart
//!   without unescaping, and it is not a hostname anyone registers, so it is left out;
//! * a name with an empty label (`a..com`, `.com`, `com..`) or longer than 254 bytes (253 plus the
//!   trailing dot: longer is not a valid presentation-form name).
//!
//! Reverse names split like any other: `1.0.0.127.in-addr.arpa` -> `127.in-addr.arpa`,
//! `in-addr.arpa` (the list has `in-addr.arpa`).
//!
//! Non-ASCII bytes (a UTF-8 IDN in Unicode form) are passed to `psl`, whose list has the
//! Unicode and the punycode forms.

/// The qname's registered domain (may be absent) and public suffix, as slices of the
/// qname (trailing dot removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainParts<'a> {
    /// The public suffix plus one label; `None` when the name is itself a public suffix.
    pub registered: Option<&'a str>,
    /// The public suffix (`dns.qname-tld`).
    pub tld: &'a str,
}

/// Longest presentation-form name accepted, trailing dot included.
const MAX_NAME: usize = 254;

/// Splits `qname` (presentation form, trailing dot optional) into its registered domain
/// and public suffix; `None` when it cannot be split (see the module docs).
pub fn domain_parts(qname: &str) -> Option<DomainParts<'_>> {
    if qname.len() > MAX_NAME {
        return None;
    }
    let name = qname.strip_suffix('.').unwrap_or(qname);
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.contains(&b'\\')
        || bytes[0] == b'.'
        || bytes[bytes.len() - 1] == b'.'
        || bytes.windows(2).any(|w| w == b"..")
    {
        return None;
    }
    // psl matches lowercase; fold a copy only when there is something to fold. Folding
    // ASCII keeps every byte offset, so psl's answer maps back onto `name`.
    let mut buf = [0u8; MAX_NAME];
    let folded: &[u8] = if bytes.iter().any(u8::is_ascii_uppercase) {
        let b = buf.get_mut(..bytes.len())?;
        b.copy_from_slice(bytes);
        b.make_ascii_lowercase();
        b
    } else {
        bytes
    };
    let suffix_len = psl::suffix(folded)?.as_bytes().len();
    if suffix_len == 0 || suffix_len > bytes.len() {
        return None;
    }
    let suffix_start = bytes.len() - suffix_len;
    // psl's suffix is a whole-label suffix of the name; check rather than trust it, so
    // that the slicing below stays on label (and so char) boundaries.
    if suffix_start > 0 && bytes[suffix_start - 1] != b'.' {
        return None;
    }
    let tld = name.get(suffix_start..)?;
    if suffix_start == 0 {
        return Some(DomainParts {
            registered: None,
            tld,
        });
    }
    // The label before the suffix: back from the dot before the suffix to the previous dot.
    let label_end = suffix_start - 1;
    let label_start = bytes[..label_end]
        .iter()
        .rposition(|&c| c == b'.')
        .map_or(0, |dot| dot + 1);
    if label_start == label_end {
        return None;
    }
    Some(DomainParts {
        registered: name.get(label_start..),
        tld,
    })
}

/// `(registered domain, public suffix)` of `qname`; `None` when the name cannot be split
/// or is itself a public suffix (use [`domain_parts`] to get the suffix then).
pub fn registered_domain(qname: &str) -> Option<(&str, &str)> {
    let p = domain_parts(qname)?;
    Some((p.registered?, p.tld))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic() {
        assert_eq!(
            registered_domain("www.example.co.uk"),
            Some(("example.co.uk", "co.uk"))
        );
        assert_eq!(
            registered_domain("example.com."),
            Some(("example.com", "com"))
        );
    }
}
