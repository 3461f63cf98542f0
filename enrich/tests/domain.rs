//! registered_domain / domain_parts: the PSL split of a qname and its edge cases.

use tapbus_enrich::{DomainParts, domain_parts, json::write_str_ascii_lower, registered_domain};

fn parts(q: &str) -> Option<(Option<&str>, &str)> {
    domain_parts(q).map(|p| (p.registered, p.tld))
}

#[test]
fn registered_and_tld() {
    assert_eq!(
        registered_domain("www.example.co.uk"),
        Some(("example.co.uk", "co.uk"))
    );
    assert_eq!(
        registered_domain("example.com."),
        Some(("example.com", "com"))
    );
    assert_eq!(
        registered_domain("example.com"),
        Some(("example.com", "com"))
    );
    assert_eq!(
        registered_domain("a.b.c.example.org."),
        Some(("example.org", "org"))
    );
    // Private section of the list.
    assert_eq!(
        registered_domain("someone.github.io"),
        Some(("someone.github.io", "github.io"))
    );
}

#[test]
fn root_empty_and_unsplittable() {
    for q in [
        ".",
        "",
        "..",
        "a..com",
        ".com",
        "www..example.com.",
        "com..",
        "a\\.b.example.com",
        "\\032.example.com",
        "example.com\\.",
    ] {
        assert_eq!(domain_parts(q), None, "{q:?}");
        assert_eq!(registered_domain(q), None, "{q:?}");
    }
    let long = format!("{}.com", "a".repeat(260));
    assert_eq!(domain_parts(&long), None);
}

#[test]
fn a_public_suffix_itself_has_a_tld_only() {
    assert_eq!(parts("co.uk"), Some((None, "co.uk")));
    assert_eq!(parts("co.uk."), Some((None, "co.uk")));
    assert_eq!(parts("com"), Some((None, "com")));
    assert_eq!(parts("github.io"), Some((None, "github.io")));
    assert_eq!(registered_domain("co.uk"), None);
    assert_eq!(registered_domain("com."), None);
}

#[test]
fn case_is_matched_insensitively_and_kept() {
    assert_eq!(
        registered_domain("WWW.Example.CO.UK."),
        Some(("Example.CO.UK", "CO.UK"))
    );
    assert_eq!(
        registered_domain("wWw.ExAmPlE.cOm"),
        Some(("ExAmPlE.cOm", "cOm"))
    );
    assert_eq!(parts("CO.UK"), Some((None, "CO.UK")));
    let mut out = Vec::new();
    write_str_ascii_lower(&mut out, "Example.CO.UK");
    assert_eq!(out, b"\"example.co.uk\"");
}

#[test]
fn unknown_tld_follows_the_implicit_star_rule() {
    // The PSL algorithm's default rule "*": an unknown last label is the suffix.
    assert_eq!(
        registered_domain("foo.invalidtld"),
        Some(("foo.invalidtld", "invalidtld"))
    );
    assert_eq!(
        registered_domain("www.foo.invalidtld."),
        Some(("foo.invalidtld", "invalidtld"))
    );
    assert_eq!(parts("invalidtld"), Some((None, "invalidtld")));
    assert_eq!(parts("localhost."), Some((None, "localhost")));
    assert_eq!(
        registered_domain("1.0.0.127.in-addr.arpa."),
        Some(("127.in-addr.arpa", "in-addr.arpa"))
    );
}

#[test]
fn wildcard_and_exception_rules() {
    // *.ck with the exception !www.ck.
    assert_eq!(registered_domain("a.foo.ck"), Some(("a.foo.ck", "foo.ck")));
    assert_eq!(registered_domain("www.ck"), Some(("www.ck", "ck")));
    assert_eq!(parts("foo.ck"), Some((None, "foo.ck")));
}

/// xorshift64*: a fixed-seed generator for the fuzz loops.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn check_invariants(q: &str) {
    let Some(DomainParts { registered, tld }) = domain_parts(q) else {
        return;
    };
    let name = q.strip_suffix('.').unwrap_or(q);
    assert!(!tld.is_empty(), "{q:?}");
    assert!(name.ends_with(tld), "{q:?}: tld {tld:?}");
    assert!(
        name.len() == tld.len() || name.as_bytes()[name.len() - tld.len() - 1] == b'.',
        "{q:?}: tld {tld:?} not on a label boundary"
    );
    if let Some(r) = registered {
        assert!(name.ends_with(r), "{q:?}: {r:?}");
        let label = r.strip_suffix(tld).and_then(|l| l.strip_suffix('.'));
        assert!(
            label.is_some_and(|l| !l.is_empty() && !l.contains('.')),
            "{q:?}: registered {r:?} is not one label + {tld:?}"
        );
        assert_eq!(registered_domain(q), Some((r, tld)));
    }
}

#[test]
fn no_panic_on_random_names() {
    let mut rng = Rng(0x7a9b_05c0_ffee);
    const PIECES: &[&str] = &[
        "a", "B", "co", "uk", "com", "COM", "org", "ck", "www", "github", "io", "jp", "kyoto",
        "公司", "cn", "é", "xn--p1ai", ".", ".", ".", "\\", "\\.", "\\032", "-", "_", "*", "!",
        "0", "9", "\u{0}", "\u{7f}", " ", "\"",
    ];
    for _ in 0..100_000 {
        let mut q = String::new();
        for _ in 0..rng.below(12) {
            q.push_str(PIECES[rng.below(PIECES.len())]);
        }
        check_invariants(&q);
    }
    // Arbitrary bytes (as the lossy string a qname could become) and long names.
    for _ in 0..20_000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => b'.',
                1 => b'a' + (rng.below(26) as u8),
                _ => rng.next() as u8,
            })
            .collect();
        check_invariants(&String::from_utf8_lossy(&bytes));
    }
}
