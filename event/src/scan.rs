//! The reader behind [`EventView::parse`]: JSON bytes become a view (bus --JSON--> view).
//!
//! A small hand-written JSON reader that knows the event's shape: it reads the fields the
//! view has and skips every other value. It exists for speed (`benches/view.rs`: 0.6 µs
//! per 877-byte bulk event on this machine, 10.9 k instructions, where the serde derive
//! costs 1.0-1.4 µs with sonic-rs or serde_json, 25 k instructions), and is checked
//! against the serde derive ([`EventView::parse_serde_json`]) on every event of the test
//! captures and on damaged copies of them. Any key order is read; the encoder's order is
//! the fast one.
//!
//! What it checks:
//! * The whole event is UTF-8 (checked once, with simdutf8; serde_json does not check
//!   the strings it skips, so here the reader is the stricter of the two).
//! * Every value it reads, strictly as JSON and serde would: string escapes (including
//!   surrogate pairs), no raw control characters, number grammar, integer ranges,
//!   `null` only where the field is optional. A key given twice: the last one counts
//!   (serde would refuse it; the encoder never writes one).
//! * Every value it skips (`resource-records`, EDNS options, `extra`, the policy block,
//!   unknown keys): strings are terminated, brackets balance and match, literals and
//!   numbers are well formed, no raw control characters inside strings. Inside a skipped
//!   array or object the separators (`,` `:`) are not checked, nor are the escape letters
//!   inside skipped strings.
//!   A consumer never sees those bytes, and a damaged message is still caught wherever
//!   the damage breaks the structure or touches a field that is read.
//! * Nothing but whitespace after the event.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::ViewError;
use crate::view::{Dns, Dnstap, Edns, EventView, Family, Flags, Geo, Network, Operation, Protocol};

type R<T> = Result<T, ViewError>;

/// Nesting deeper than this inside a skipped value is refused (a bound, not a limit real
/// events come near: theirs is 4).
const MAX_DEPTH: u32 = 128;

/// Parses one event.
pub(crate) fn event(json: &[u8]) -> R<EventView<'_>> {
    // The whole event is checked as UTF-8 once (simdutf8: a few hundred instructions for
    // an 830-byte event, where a `from_utf8` per string read cost ~1,100); strings are
    // then slices of `text` at quote positions, always char boundaries.
    let text = match simdutf8::basic::from_utf8(json) {
        Ok(text) => text,
        Err(_) => return Err(not_utf8(json)),
    };
    let mut r = Reader::new(text);
    let mut network = None;
    let mut dns = None;
    let mut edns = None;
    let mut dnstap = None;
    let mut geo = None;
    let mut obj = r.object()?;
    while let Some(f) = obj.next_field(&mut r, TOP, Top::Other)? {
        match f {
            Top::Network => network = Some(r.network()?),
            Top::Dns => dns = Some(r.dns()?),
            Top::Edns => edns = r.opt(Reader::edns)?,
            Top::Dnstap => dnstap = Some(r.dnstap()?),
            Top::Geo => geo = r.opt(Reader::geo)?,
            Top::GeoResponse | Top::SchemaVersion | Top::Other => r.skip()?,
        }
    }
    r.ws();
    if r.i != json.len() {
        return Err(r.err("trailing characters after the event"));
    }
    Ok(EventView {
        network: network.ok_or_else(|| missing("network"))?,
        dns: dns.ok_or_else(|| missing("dns"))?,
        edns,
        dnstap: dnstap.ok_or_else(|| missing("dnstap"))?,
        geo,
    })
}

#[cold]
fn not_utf8(json: &[u8]) -> ViewError {
    let at = match std::str::from_utf8(json) {
        Err(e) => e.valid_up_to(),
        Ok(_) => 0,
    };
    ViewError::Json(format!("invalid UTF-8 at byte {at}"))
}

fn missing(field: &str) -> ViewError {
    ViewError::Json(format!("missing field `{field}`"))
}

/// The first byte at or after `from` that ends or interrupts a string's plain run: `"`,
/// `\\` or a control character (< 0x20). Eight bytes at a time (SWAR): strings in an event
/// are short and many, so this beats both a byte loop and `memchr`'s per-call setup
/// (`benches/view.rs`).
#[inline]
fn special(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        // A byte is zero in `x` where it equals the byte searched for; the lowest flagged
        // byte is exact (false flags only appear above a true one, through the borrow).
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let hits = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|n| i + n)
}

/// Eight bytes as a word (`s` has at least eight).
#[inline(always)]
fn word(s: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[..8]);
    u64::from_ne_bytes(w)
}

/// Whether `b[i..]` starts with `lit`: inline word compares instead of a `memcmp` call
/// (keys and literals are 4 to 24 bytes; the call was 8% of a parse under callgrind).
#[inline(always)]
fn has_at(b: &[u8], i: usize, lit: &[u8]) -> bool {
    let Some(s) = b.get(i..).and_then(|s| s.get(..lit.len())) else {
        return false;
    };
    let n = lit.len();
    if n < 8 {
        return s == lit;
    }
    let mut j = 0;
    while j + 8 <= n {
        if word(&s[j..]) != word(&lit[j..]) {
            return false;
        }
        j += 8;
    }
    // The tail: the last eight bytes (overlapping what was compared).
    j == n || word(&s[n - 8..]) == word(&lit[n - 8..])
}

struct Reader<'a> {
    /// The event, checked as UTF-8 ...
    s: &'a str,
    /// ... and as bytes, for scanning.
    b: &'a [u8],
    i: usize,
}

/// A string as it was found: a plain run between its quotes (the common case), or the
/// bytes of one with escapes, decoded.
enum RawString {
    Plain(usize, usize),
    Escaped(Vec<u8>),
}

/// Declares the keys of one block in the order the encoder writes them: an enum with a
/// variant per key (plus `Other`) and a table of the keys as they appear, `"key":`.
macro_rules! keys {
    ($table:ident: $ty:ident { $($v:ident = $k:literal,)* }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum $ty {
            $($v,)*
            /// A key the encoder does not write (another producer's): skipped.
            Other,
        }
        const $table: &[(&[u8], $ty)] = &[$((concat!("\"", $k, "\":").as_bytes(), $ty::$v),)*];
    };
}

keys!(TOP: Top {
    Network = "network",
    Dns = "dns",
    Edns = "edns",
    Dnstap = "dnstap",
    Geo = "geo",
    GeoResponse = "geo-response",
    SchemaVersion = "schema-version",
});

keys!(GEO: G {
    Country = "country",
    City = "city",
    Asn = "asn",
    AsOrg = "as-org",
});

keys!(NETWORK: Net {
    Family = "family",
    Protocol = "protocol",
    QueryIp = "query-ip",
    QueryPort = "query-port",
    ResponseIp = "response-ip",
    ResponsePort = "response-port",
    HttpProtocol = "http-protocol",
});

keys!(DNS: D {
    Length = "length",
    Id = "id",
    Opcode = "opcode",
    Flags = "flags",
    Qdcount = "qdcount",
    Ancount = "ancount",
    Nscount = "nscount",
    Arcount = "arcount",
    Qname = "qname",
    Qtype = "qtype",
    Qclass = "qclass",
    ResourceRecords = "resource-records",
    Rcode = "rcode",
    MalformedPacket = "malformed-packet",
});

keys!(FLAGS: F {
    Qr = "qr",
    Aa = "aa",
    Tc = "tc",
    Rd = "rd",
    Ra = "ra",
    Z = "z",
    Ad = "ad",
    Cd = "cd",
});

keys!(EDNS: E {
    UdpSize = "udp-size",
    Rcode = "rcode",
    Version = "version",
    DnssecOk = "dnssec-ok",
    Options = "options",
});

keys!(DNSTAP: T {
    Operation = "operation",
    Identity = "identity",
    Version = "version",
    Extra = "extra",
    TimestampRfc3339ns = "timestamp-rfc3339ns",
    Timestamp = "timestamp",
    Latency = "latency",
    QueryZone = "query-zone",
    PeerName = "peer-name",
});

/// The state of one object being read: whether the next key needs a comma first, and
/// which key of the block's table is expected next.
struct Obj {
    first: bool,
    next: usize,
}

impl Obj {
    /// The next key as its table's variant (`other` when the table does not have it), its
    /// `:` consumed; `None` after the closing `}`. The key the encoder writes next is
    /// checked first with one comparison; any other order falls back to reading the key
    /// and looking it up.
    #[inline]
    fn next_field<F: Copy>(
        &mut self,
        r: &mut Reader<'_>,
        table: &[(&[u8], F)],
        other: F,
    ) -> R<Option<F>> {
        match r.peek() {
            Some(b'}') => {
                r.i += 1;
                return Ok(None);
            }
            Some(b',') if !self.first => r.i += 1,
            _ if self.first => {}
            _ => return Err(r.err("expected `,` or `}`")),
        }
        self.first = false;
        if let Some(&(key, f)) = table.get(self.next)
            && has_at(r.b, r.i, key)
        {
            r.i += key.len();
            self.next += 1;
            return Ok(Some(f));
        }
        let raw = r.raw_string()?;
        let key = r.bytes(raw);
        r.eat(b':', "expected `:`")?;
        match table
            .iter()
            .position(|(k, _)| k.get(1..k.len() - 2) == Some(&key[..]))
        {
            Some(j) => {
                self.next = j + 1;
                Ok(Some(table[j].1))
            }
            None => Ok(Some(other)),
        }
    }
}

impl<'a> Reader<'a> {
    fn new(s: &'a str) -> Self {
        Reader {
            s,
            b: s.as_bytes(),
            i: 0,
        }
    }

    /// The bytes of a key or a skipped string's run.
    #[inline]
    fn bytes(&self, raw: RawString) -> Cow<'a, [u8]> {
        match raw {
            RawString::Plain(a, z) => Cow::Borrowed(self.b.get(a..z).unwrap_or_default()),
            RawString::Escaped(v) => Cow::Owned(v),
        }
    }

    fn err(&self, what: &str) -> ViewError {
        if self.i >= self.b.len() {
            ViewError::Json(format!("{what}: the event ends at byte {}", self.b.len()))
        } else {
            ViewError::Json(format!("{what} at byte {}", self.i))
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8, what: &str) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn object(&mut self) -> R<Obj> {
        self.eat(b'{', "expected an object")?;
        Ok(Obj {
            first: true,
            next: 0,
        })
    }

    /// `null` -> `None`, anything else is read by `f`.
    #[inline]
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> R<T>) -> R<Option<T>> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    fn literal(&mut self, lit: &[u8]) -> R<()> {
        if has_at(self.b, self.i, lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn bool(&mut self) -> R<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(self.err("expected a boolean")),
        }
    }

    /// A string; borrowed unless it has escapes.
    #[inline]
    fn string(&mut self) -> R<Cow<'a, str>> {
        let at = self.i;
        let bad = |r: &mut Self| {
            r.i = at;
            r.err("string is not UTF-8")
        };
        match self.raw_string()? {
            // Between two quotes of a UTF-8 text: char boundaries, so `get` never fails.
            RawString::Plain(a, z) => match self.s.get(a..z) {
                Some(s) => Ok(Cow::Borrowed(s)),
                None => Err(bad(self)),
            },
            RawString::Escaped(v) => String::from_utf8(v).map(Cow::Owned).map_err(|_| bad(self)),
        }
    }

    /// A string as found: where its plain run is, or its bytes with escapes decoded
    /// (UTF-8: the event was checked and `\u` escapes give only scalar values; the caller
    /// still checks, so no unchecked conversion depends on it).
    #[inline]
    fn raw_string(&mut self) -> R<RawString> {
        self.eat(b'"', "expected a string")?;
        let b = self.b;
        let start = self.i;
        let Some(i) = special(b, start) else {
            self.i = b.len();
            return Err(self.err("unterminated string"));
        };
        match b[i] {
            b'"' => {
                self.i = i + 1;
                Ok(RawString::Plain(start, i))
            }
            b'\\' => {
                self.i = i;
                self.escaped(b[start..i].to_vec()).map(RawString::Escaped)
            }
            _ => {
                self.i = i;
                Err(self.err("control character in a string"))
            }
        }
    }

    /// The rest of a string from its first backslash; `out` holds what came before.
    #[cold]
    fn escaped(&mut self, mut out: Vec<u8>) -> R<Vec<u8>> {
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let ch = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.err("invalid escape"));
                        }
                    }
                }
                c if c < 0x20 => {
                    self.i -= 1;
                    return Err(self.err("control character in a string"));
                }
                c => out.push(c),
            }
        }
        Ok(out)
    }

    /// After `\u`: four hex digits, and a second `\uXXXX` for a surrogate pair.
    fn unicode_escape(&mut self) -> R<char> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if !self.b[self.i..].starts_with(b"\\u") {
                    return Err(self.err("lone leading surrogate in \\u escape"));
                }
                self.i += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.err("invalid trailing surrogate in \\u escape"));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.err("lone trailing surrogate in \\u escape")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))
    }

    fn hex4(&mut self) -> R<u32> {
        let Some(h) = self.b.get(self.i..self.i + 4) else {
            return Err(self.err("truncated \\u escape"));
        };
        let mut v = 0u32;
        for &c in h {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v * 16 + u32::from(d);
        }
        self.i += 4;
        Ok(v)
    }

    /// The bytes of a JSON number, checked against the grammar
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; `true` if it is an integer.
    fn number(&mut self) -> R<(&'a [u8], bool)> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > s
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    self.i = i;
                    return Err(self.err("leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => {
                self.i = i;
                return Err(self.err("expected a number"));
            }
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            i += 1;
            integer = false;
            if !digits(&mut i) {
                self.i = i;
                return Err(self.err("invalid number"));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            integer = false;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                self.i = i;
                return Err(self.err("invalid number"));
            }
        }
        self.i = i;
        Ok((&b[start..i], integer))
    }

    /// An unsigned integer that fits `T`. The common case, up to 19 digits ended by a
    /// byte that cannot continue a number, is read in one pass; anything else goes through
    /// the full grammar.
    #[inline]
    fn uint<T: TryFrom<u64>>(&mut self) -> R<T> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let mut v = 0u64;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v * 10 + u64::from(d);
            i += 1;
            if i - start == 19 {
                break;
            }
        }
        // Nineteen digits always fit a u64 (< 10^19 < 2^64); a twentieth goes the slow way.
        let n = i - start;
        let plain = n > 0
            && (n == 1 || b[start] != b'0')
            && !matches!(b.get(i), Some(b'.' | b'e' | b'E' | b'0'..=b'9'));
        if plain && let Ok(v) = T::try_from(v) {
            self.i = i;
            return Ok(v);
        }
        self.uint_slow()
    }

    #[cold]
    fn uint_slow<T: TryFrom<u64>>(&mut self) -> R<T> {
        let at = self.i;
        let (digits, integer) = self.number()?;
        let fail = |r: &mut Self, what| {
            r.i = at;
            Err(r.err(what))
        };
        if !integer || digits.first() == Some(&b'-') {
            return fail(self, "expected an unsigned integer");
        }
        let mut v = 0u64;
        for &d in digits {
            match v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
            {
                Some(n) => v = n,
                None => return fail(self, "integer out of range"),
            }
        }
        match T::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => fail(self, "integer out of range"),
        }
    }

    fn f64(&mut self) -> R<f64> {
        let at = self.i;
        let (digits, _) = self.number()?;
        // The grammar was checked; std parses it correctly rounded.
        let text = std::str::from_utf8(digits).map_err(|_| self.err("invalid number"))?;
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => {
                self.i = at;
                Err(self.err("number out of range"))
            }
        }
    }

    fn ip(&mut self) -> R<IpAddr> {
        let at = self.i;
        let s = self.string()?;
        s.parse().map_err(|_| {
            self.i = at;
            self.err("invalid IP address")
        })
    }

    fn name<T>(&mut self, from: fn(&str) -> Option<T>, what: &str) -> R<T> {
        let at = self.i;
        let s = self.string()?;
        from(&s).ok_or_else(|| {
            self.i = at;
            self.err(what)
        })
    }

    fn ostr(&mut self) -> R<Option<Cow<'a, str>>> {
        self.opt(Self::string)
    }

    /// Skips one value of any kind.
    fn skip(&mut self) -> R<()> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.skip_string_body()
            }
            Some(b'{' | b'[') => self.skip_container(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => Err(self.err("expected a value")),
        }
    }

    /// After the opening quote of a skipped string: to just past its closing quote.
    #[inline]
    fn skip_string_body(&mut self) -> R<()> {
        loop {
            let Some(i) = special(self.b, self.i) else {
                self.i = self.b.len();
                return Err(self.err("unterminated string"));
            };
            match self.b[i] {
                b'"' => {
                    self.i = i + 1;
                    return Ok(());
                }
                // A backslash: the next byte is escaped, whatever it is.
                b'\\' => self.i = i + 2,
                _ => {
                    self.i = i;
                    return Err(self.err("control character in a string"));
                }
            }
        }
    }

    /// A skipped array or object: strings are skipped whole, brackets must balance and
    /// match (a bit per level: 1 = object).
    fn skip_container(&mut self) -> R<()> {
        let mut kinds: u128 = 0;
        let mut depth = 0u32;
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.err("unterminated array or object"));
            };
            self.i += 1;
            match c {
                b'"' => self.skip_string_body()?,
                b'{' | b'[' => {
                    if depth == MAX_DEPTH {
                        return Err(self.err("nested too deep"));
                    }
                    kinds = (kinds << 1) | u128::from(c == b'{');
                    depth += 1;
                }
                b'}' | b']' => {
                    if depth == 0 || (kinds & 1 == 1) != (c == b'}') {
                        self.i -= 1;
                        return Err(self.err("mismatched bracket"));
                    }
                    kinds >>= 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }

    fn network(&mut self) -> R<Network> {
        let mut n = Network::default();
        let mut obj = self.object()?;
        while let Some(f) = obj.next_field(self, NETWORK, Net::Other)? {
            match f {
                Net::Family => {
                    n.family = self.opt(|r| r.name(Family::from_exact, "unknown family"))?
                }
                Net::Protocol => {
                    n.protocol = self.opt(|r| r.name(Protocol::from_exact, "unknown protocol"))?
                }
                Net::QueryIp => n.query_ip = self.opt(Self::ip)?,
                Net::QueryPort => n.query_port = self.opt(Self::uint)?,
                Net::ResponseIp => n.response_ip = self.opt(Self::ip)?,
                Net::ResponsePort => n.response_port = self.opt(Self::uint)?,
                Net::HttpProtocol | Net::Other => self.skip()?,
            }
        }
        Ok(n)
    }

    fn dns(&mut self) -> R<Dns<'a>> {
        let mut d = Dns::default();
        let mut obj = self.object()?;
        while let Some(f) = obj.next_field(self, DNS, D::Other)? {
            match f {
                D::Length => d.length = self.opt(Self::uint)?,
                D::Id => d.id = self.opt(Self::uint)?,
                D::Opcode => d.opcode = self.opt(Self::uint)?,
                D::Rcode => d.rcode = self.ostr()?,
                D::Qname => d.qname = self.ostr()?,
                D::Qtype => d.qtype = self.ostr()?,
                D::Qclass => d.qclass = self.ostr()?,
                D::Flags => d.flags = self.opt(Self::flags)?,
                D::Qdcount => d.qdcount = self.opt(Self::uint)?,
                D::Ancount => d.ancount = self.opt(Self::uint)?,
                D::Nscount => d.nscount = self.opt(Self::uint)?,
                D::Arcount => d.arcount = self.opt(Self::uint)?,
                D::MalformedPacket => d.malformed_packet = self.bool()?,
                D::ResourceRecords | D::Other => self.skip()?,
            }
        }
        Ok(d)
    }

    /// `dns.flags`: all eight bits are required.
    fn flags(&mut self) -> R<Flags> {
        let mut flags = Flags::default();
        let mut seen = 0u8;
        let mut obj = self.object()?;
        while let Some(f) = obj.next_field(self, FLAGS, F::Other)? {
            let (slot, bit) = match f {
                F::Qr => (&mut flags.qr, 1),
                F::Aa => (&mut flags.aa, 2),
                F::Tc => (&mut flags.tc, 4),
                F::Rd => (&mut flags.rd, 8),
                F::Ra => (&mut flags.ra, 16),
                F::Z => (&mut flags.z, 32),
                F::Ad => (&mut flags.ad, 64),
                F::Cd => (&mut flags.cd, 128),
                F::Other => {
                    self.skip()?;
                    continue;
                }
            };
            *slot = self.bool()?;
            seen |= bit;
        }
        if seen != 0xff {
            return Err(ViewError::Json("dns.flags: missing a flag".into()));
        }
        Ok(flags)
    }

    fn edns(&mut self) -> R<Edns> {
        let mut e = Edns::default();
        let mut obj = self.object()?;
        while let Some(f) = obj.next_field(self, EDNS, E::Other)? {
            match f {
                E::UdpSize => e.udp_size = self.uint()?,
                E::Rcode => e.rcode = self.uint()?,
                E::Version => e.version = self.uint()?,
                E::DnssecOk => {
                    e.dnssec_ok = match self.peek() {
                        Some(b't' | b'f') => self.bool()?,
                        _ => match self.uint::<u8>()? {
                            0 => false,
                            1 => true,
                            _ => return Err(self.err("dnssec-ok: expected 0 or 1")),
                        },
                    }
                }
                E::Options | E::Other => self.skip()?,
            }
        }
        Ok(e)
    }

    /// `geo` (an object; `null` is handled by the caller). Absent keys stay `None`.
    fn geo(&mut self) -> R<Geo<'a>> {
        let mut g = Geo::default();
        let mut obj = self.object()?;
        while let Some(f) = obj.next_field(self, GEO, G::Other)? {
            match f {
                G::Country => g.country = self.ostr()?,
                G::City => g.city = self.ostr()?,
                G::Asn => g.asn = self.opt(Self::uint)?,
                G::AsOrg => g.as_org = self.ostr()?,
                G::Other => self.skip()?,
            }
        }
        Ok(g)
    }

    fn dnstap(&mut self) -> R<Dnstap<'a>> {
        let mut operation = None;
        let mut d = Dnstap {
            operation: Operation::Unknown(0),
            identity: None,
            version: None,
            timestamp_rfc3339ns: None,
            timestamp: None,
            latency: None,
            query_zone: None,
        };
        let mut obj = self.object()?;
        while let Some(f) = obj.next_field(self, DNSTAP, T::Other)? {
            match f {
                T::Operation => {
                    operation = Some(self.name(Operation::from_exact, "unknown operation")?)
                }
                T::Identity => d.identity = self.ostr()?,
                T::Version => d.version = self.ostr()?,
                T::TimestampRfc3339ns => d.timestamp_rfc3339ns = self.ostr()?,
                T::Timestamp => d.timestamp = self.opt(Self::uint)?,
                T::Latency => d.latency = self.opt(Self::f64)?,
                T::QueryZone => d.query_zone = self.ostr()?,
                T::Extra | T::PeerName | T::Other => self.skip()?,
            }
        }
        d.operation = operation.ok_or_else(|| missing("dnstap.operation"))?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: &str) -> R<Cow<'_, str>> {
        Reader::new(json).string()
    }

    #[test]
    fn strings() {
        assert!(matches!(s(r#""abc""#), Ok(Cow::Borrowed("abc"))));
        assert_eq!(s(r#""a\"b\\c\/\n\t""#).as_deref(), Ok("a\"b\\c/\n\t"));
        assert_eq!(s(r#""\u00e9\ud83d\ude00""#).as_deref(), Ok("é😀"));
        for bad in [
            r#""abc"#,
            r#""a\"#,
            r#""\x""#,
            r#""\u12""#,
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            "\"a\u{1}b\"",
            "\"a\\n\u{1}\"",
            "abc",
        ] {
            assert!(s(bad).is_err(), "accepted {bad}");
        }
        // Anywhere in the event, even where nothing is read.
        let bad = event(b"{\"extra\":\"a\xffb\",\"network\":{}}");
        assert_eq!(bad, Err(ViewError::Json("invalid UTF-8 at byte 11".into())));
    }

    fn n<T: TryFrom<u64>>(json: &str) -> R<T> {
        Reader::new(json).uint()
    }

    #[test]
    fn numbers() {
        assert_eq!(n::<u64>("0"), Ok(0));
        assert_eq!(n::<u64>("18446744073709551615"), Ok(u64::MAX));
        assert!(n::<u64>("18446744073709551616").is_err());
        assert_eq!(n::<u16>("65535"), Ok(65535));
        assert!(n::<u16>("65536").is_err());
        // Nineteen digits (a nanosecond timestamp) on the fast path, twenty on the slow one.
        assert_eq!(
            n::<u64>("1795315298535458000,"),
            Ok(1_795_315_298_535_458_000)
        );
        assert_eq!(
            n::<u64>("9999999999999999999}"),
            Ok(9_999_999_999_999_999_999)
        );
        assert_eq!(
            n::<u64>("10000000000000000000"),
            Ok(10_000_000_000_000_000_000)
        );
        let mut r = Reader::new("1795315298535458000 ,");
        assert_eq!(r.uint::<u64>(), Ok(1_795_315_298_535_458_000));
        assert_eq!(r.i, 19, "stops after the digits");
        for bad in [
            "-1",
            "1.0",
            "1e2",
            "01",
            "00",
            "",
            "-",
            "x",
            "1795315298535458000.5",
            "1795315298535458000e1",
        ] {
            assert!(n::<u64>(bad).is_err(), "accepted {bad}");
        }
        let f = |json: &str| Reader::new(json).f64();
        assert_eq!(f("0.0005"), Ok(0.0005));
        assert_eq!(f("-1.5e-3"), Ok(-0.0015));
        assert_eq!(f("3"), Ok(3.0));
        for bad in ["1.", ".5", "+1", "1e", "1e+", "1e999", "--1"] {
            assert!(f(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn has_at_is_starts_with() {
        let b = b"\"timestamp-rfc3339ns\":\"x\",\"qr\":true";
        for lit in [
            &b"\"timestamp-rfc3339ns\":"[..],
            b"\"timestamp-rfc3339ns\";",
            b"\"timestamp\":",
            b"\"qr\":",
            b"true",
            b"",
            b"\"timestamp-rfc3339ns\":\"x\",\"qr\":true!",
        ] {
            for i in 0..=b.len() + 1 {
                let want = b.get(i..).is_some_and(|s| s.starts_with(lit));
                assert_eq!(
                    has_at(b, i, lit),
                    want,
                    "{i} {:?}",
                    String::from_utf8_lossy(lit)
                );
            }
        }
    }

    fn skip(json: &str) -> R<usize> {
        let mut r = Reader::new(json);
        r.skip().map(|()| r.i)
    }

    #[test]
    fn skipping() {
        assert_eq!(skip(r#"{"a":[1,{"b":"]}\"x"}],"c":null} tail"#), Ok(32));
        assert_eq!(skip(r#""x\\" tail"#), Ok(5));
        assert_eq!(skip("-1.5e3,"), Ok(6));
        assert_eq!(skip("true,"), Ok(4));
        for bad in [
            "{",
            "[}",
            "{]",
            "[[]",
            r#"{"a":"}"#,
            "nul",
            "tru",
            "-",
            "]",
            "",
        ] {
            assert!(skip(bad).is_err(), "accepted {bad}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(skip(&deep).is_err());
        let ok = "[".repeat(128) + &"]".repeat(128);
        assert_eq!(skip(&ok), Ok(256));
    }
}
