//! What one event becomes for one output: the enrichment every view shares (GeoIP and ASN
//! of the client, the registered domain of the qname) and the privacy view itself
//! (pseudonymised addresses, a shortened qname, dropped fields).
//!
//! This is the "encode once per view" step of the flow (broker: session -> encode(enrich,
//! view) -> fanout): the frame is decoded once, enrichment is looked up once on the clear
//! addresses, and the JSON is written once per distinct view ([`super::encode_views`]).
//!
//! The address transform and the GeoIP writer come in through two narrow traits
//! ([`AddrMap`], [`GeoWriter`]), so decoding stays pure and knows nothing of keys or
//! database files (`tapbus-privacy` and `tapbus-enrich` implement them).

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

/// A client address transform (truncate, keyed hash, Crypto-PAn).
pub trait AddrMap: Send + Sync + Debug {
    /// The address as this view shows it.
    fn addr(&self, ip: IpAddr) -> IpAddr;
    /// An address prefix of `len` bits (an EDNS Client Subnet): the transformed prefix,
    /// host bits zero.
    fn prefix(&self, ip: IpAddr, len: u8) -> IpAddr;
}

/// GeoIP and ASN for an address.
pub trait GeoWriter: Send + Sync + Debug {
    /// Appends a JSON object (`{"country":"FR",...}`) and returns true, or appends nothing
    /// and returns false when nothing is known of `ip` (or it is not looked up).
    fn write_geo(&self, ip: IpAddr, out: &mut Vec<u8>) -> bool;
}

/// The registered domain and public suffix of a presentation-form name, each `None` when
/// unknown (`www.example.co.uk` -> `example.co.uk`, `co.uk`).
pub type RegisteredFn = fn(&str) -> (Option<&str>, Option<&str>);

/// The registered domain and public suffix of a name in presentation form, from the
/// public suffix list (`tapbus_enrich::domain_parts`: `www.example.co.uk` ->
/// (`example.co.uk`, `co.uk`); a bare suffix `co.uk` -> (None, `co.uk`); the root, empty
/// labels and names with escapes -> (None, None)).
pub fn registered_domain(name: &str) -> (Option<&str>, Option<&str>) {
    match tapbus_enrich::domain_parts(name) {
        Some(p) => (p.registered, Some(p.tld)),
        None => (None, None),
    }
}

/// GeoIP and ASN from MaxMind DB files.
impl GeoWriter for tapbus_enrich::GeoIp {
    fn write_geo(&self, ip: IpAddr, out: &mut Vec<u8>) -> bool {
        // The `null` of nothing known is the encoder's to write.
        let mark = out.len();
        if tapbus_enrich::GeoIp::write_geo(self, ip, out) {
            true
        } else {
            out.truncate(mark);
            false
        }
    }
}

/// The enrichment every view of an event shares, looked up once on the clear event.
#[derive(Debug, Clone, Default)]
pub struct Enrich {
    /// GeoIP/ASN of the client (`query-ip`): the top-level `geo` object.
    pub geo: Option<Arc<dyn GeoWriter>>,
    /// Also look up the response address: `geo-response`.
    pub geo_response: bool,
    /// `dns.qname-registered` and `dns.qname-tld`.
    pub registered: Option<RegisteredFn>,
}

/// What a view does to `dns.qname`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QnameMode {
    /// The full name.
    #[default]
    Keep,
    /// Only the registered domain (`www.example.co.uk` -> `example.co.uk`; a name with
    /// no registered domain is kept). The resource records, which repeat the full name,
    /// are left out (the section counts stay).
    RegisteredDomain,
}

/// One privacy view. The default view is the clear event.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Applied to `query-ip`, `response-ip`, the EDNS Client Subnet address and a policy
    /// CLIENT_IP value; `None` keeps them.
    pub addr: Option<Arc<dyn AddrMap>>,
    pub qname: QnameMode,
    /// Fields left out of the JSON (`dns.resource-records`, `dnstap.extra`, `edns`, ...).
    pub drop: DropFields,
}

impl View {
    /// Shows the event as encoded (nothing transformed, nothing dropped).
    pub fn is_clear(&self) -> bool {
        self.addr.is_none() && self.qname == QnameMode::Keep && self.drop.is_empty()
    }

    /// The address as this view shows it.
    pub(super) fn addr(&self, ip: IpAddr) -> IpAddr {
        match &self.addr {
            Some(m) => m.addr(ip),
            None => ip,
        }
    }
}

/// Event fields to leave out, as paths: a block (`edns`, `geo`) or a key of a block
/// (`dns.resource-records`, `dnstap.extra`). The blocks consumers need (`network`, `dns`,
/// `dnstap`) can lose keys but not go whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropFields {
    /// (block, key); key `None` drops the whole block.
    paths: Vec<(String, Option<String>)>,
}

/// Why a `drop_fields` entry is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DropError {
    #[error(
        "{0:?} is not a field of the event (see proto/event.schema.json: a block such as \"edns\" or a key such as \"dns.resource-records\")"
    )]
    Unknown(String),
    #[error("{0:?} cannot be dropped whole: consumers need it (drop some of its keys instead)")]
    Required(String),
}

/// The blocks of the event and their keys, from the JSON Schema.
fn schema_fields() -> Vec<(String, Vec<String>)> {
    let schema: serde_json::Value = match serde_json::from_str(super::SCHEMA) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return out;
    };
    let defs = schema.get("$defs");
    for (block, def) in props {
        // A block is an object (inline, or through a `$ref`, or `oneOf`/`anyOf` with null).
        let mut keys = Vec::new();
        let mut stack = vec![def];
        while let Some(d) = stack.pop() {
            if let Some(p) = d.get("properties").and_then(|p| p.as_object()) {
                keys.extend(p.keys().cloned());
            }
            if let Some(r) = d.get("$ref").and_then(|r| r.as_str())
                && let Some(name) = r.strip_prefix("#/$defs/")
                && let Some(t) = defs.and_then(|d| d.get(name))
            {
                stack.push(t);
            }
            for alt in ["oneOf", "anyOf"] {
                if let Some(a) = d.get(alt).and_then(|a| a.as_array()) {
                    stack.extend(a.iter());
                }
            }
        }
        out.push((block.clone(), keys));
    }
    out
}

impl DropFields {
    /// Nothing dropped.
    pub const EMPTY: DropFields = DropFields { paths: Vec::new() };

    /// Checks each path against the event's schema.
    pub fn parse<S: AsRef<str>>(paths: &[S]) -> Result<DropFields, DropError> {
        let known = schema_fields();
        let mut out = Vec::new();
        for p in paths {
            let p = p.as_ref().trim();
            let (block, key) = match p.split_once('.') {
                Some((b, k)) => (b, Some(k)),
                None => (p, None),
            };
            let Some((_, keys)) = known.iter().find(|(b, _)| b == block) else {
                return Err(DropError::Unknown(p.to_string()));
            };
            match key {
                None if matches!(block, "network" | "dns" | "dnstap") => {
                    return Err(DropError::Required(p.to_string()));
                }
                Some(k) if !keys.iter().any(|x| x == k) => {
                    return Err(DropError::Unknown(p.to_string()));
                }
                _ => {}
            }
            out.push((block.to_string(), key.map(str::to_string)));
        }
        out.sort();
        out.dedup();
        Ok(DropFields { paths: out })
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The paths, as given.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.paths.iter().map(|(b, k)| match k {
            Some(k) => format!("{b}.{k}"),
            None => b.clone(),
        })
    }

    fn drops_block(&self, block: &[u8]) -> bool {
        self.paths
            .iter()
            .any(|(b, k)| k.is_none() && b.as_bytes() == block)
    }

    fn drops_key(&self, block: &[u8], key: &[u8]) -> bool {
        self.paths
            .iter()
            .any(|(b, k)| b.as_bytes() == block && k.as_ref().is_some_and(|k| k.as_bytes() == key))
    }

    fn touches(&self, block: &[u8]) -> bool {
        self.paths.iter().any(|(b, _)| b.as_bytes() == block)
    }

    /// Copies the encoder's compact JSON event `json` to `out` without the dropped fields.
    /// `json` is the encoder's own output (compact, well formed); should it not be, it is
    /// copied unchanged.
    pub fn apply(&self, json: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        if self.is_empty() || self.copy(json, out).is_none() {
            out.truncate(start);
            out.extend_from_slice(json);
        }
    }

    fn copy(&self, json: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let mut i = 0;
        if json.first() != Some(&b'{') {
            return None;
        }
        out.push(b'{');
        i += 1;
        let mut first = true;
        loop {
            match json.get(i)? {
                b'}' => {
                    out.push(b'}');
                    return (i + 1 == json.len()).then_some(());
                }
                b',' => i += 1,
                _ => {}
            }
            let (key, after_key) = key_at(json, i)?;
            let vend = value_end(json, after_key)?;
            if self.drops_block(key) {
                i = vend;
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            if self.touches(key) && json.get(after_key) == Some(&b'{') {
                out.extend_from_slice(&json[i..after_key]);
                self.copy_block(key, &json[after_key..vend], out)?;
            } else {
                out.extend_from_slice(&json[i..vend]);
            }
            i = vend;
        }
    }

    /// One block (`{...}`) without its dropped keys.
    fn copy_block(&self, block: &[u8], json: &[u8], out: &mut Vec<u8>) -> Option<()> {
        out.push(b'{');
        let mut i = 1;
        let mut first = true;
        loop {
            match json.get(i)? {
                b'}' => {
                    out.push(b'}');
                    return Some(());
                }
                b',' => i += 1,
                _ => {}
            }
            let (key, after_key) = key_at(json, i)?;
            let vend = value_end(json, after_key)?;
            if !self.drops_key(block, key) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(&json[i..vend]);
            }
            i = vend;
        }
    }
}

/// At `"key":`: the key's bytes (as written, escapes and all) and the offset of its value.
fn key_at(json: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let end = string_end(json, i)?;
    if json.get(end) != Some(&b':') {
        return None;
    }
    Some((&json[i + 1..end - 1], end + 1))
}

/// The offset just past the string starting at `i` (a quote).
fn string_end(json: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match json.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// The offset just past the compact JSON value starting at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = string_end(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let n = json[i..]
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']'))?;
            Some(i + n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(paths: &[&str], json: &str) -> serde_json::Value {
        let d = DropFields::parse(paths).expect("valid paths");
        let mut out = Vec::new();
        d.apply(json.as_bytes(), &mut out);
        serde_json::from_slice(&out).expect("still JSON")
    }

    const EV: &str = r#"{"network":{"family":"INET","query-ip":"192.0.2.1","query-port":5},"dns":{"qname":"a\"}b","resource-records":{"an":[{"name":"x","rdata":"}]"}],"ns":[],"ar":[]},"rcode":"NOERROR"},"edns":{"udp-size":1232,"options":[]},"dnstap":{"operation":"CLIENT_QUERY","extra":null}}"#;

    #[test]
    fn blocks_and_keys_go_and_the_rest_stays_byte_for_byte() {
        let v = dropped(&["dns.resource-records", "edns", "dnstap.extra"], EV);
        let mut want: serde_json::Value = serde_json::from_str(EV).expect("json");
        let m = want.as_object_mut().expect("object");
        m.remove("edns");
        m["dns"]
            .as_object_mut()
            .expect("dns")
            .remove("resource-records");
        m["dnstap"].as_object_mut().expect("dnstap").remove("extra");
        assert_eq!(v, want);
        // Nothing dropped: the same bytes.
        let mut out = Vec::new();
        DropFields::default().apply(EV.as_bytes(), &mut out);
        assert_eq!(out, EV.as_bytes());
    }

    #[test]
    fn first_and_last_keys_of_a_block() {
        let v = dropped(&["network.family", "dns.rcode"], EV);
        assert!(v["network"].get("family").is_none());
        assert_eq!(v["network"]["query-ip"], "192.0.2.1");
        assert!(v["dns"].get("rcode").is_none());
        assert_eq!(v["dns"]["qname"], "a\"}b");
    }

    #[test]
    fn registered_domains() {
        assert_eq!(
            registered_domain("www.example.co.uk"),
            (Some("example.co.uk"), Some("co.uk"))
        );
        assert_eq!(
            registered_domain("WWW.Example.COM."),
            (Some("Example.COM"), Some("COM"))
        );
        assert_eq!(
            registered_domain("example.com"),
            (Some("example.com"), Some("com"))
        );
        assert_eq!(registered_domain("co.uk"), (None, Some("co.uk")));
        assert_eq!(registered_domain("."), (None, None));
        assert_eq!(registered_domain(""), (None, None));
        assert_eq!(
            registered_domain("host.lan"),
            (Some("host.lan"), Some("lan"))
        );
        for junk in ["..", "a..b", "\u{0}", "é.com", &"a.".repeat(200)] {
            let _ = registered_domain(junk);
        }
    }

    #[test]
    fn paths_are_checked_against_the_schema() {
        assert!(DropFields::parse(&["dns.resource-records", "edns", "dnstap.extra"]).is_ok());
        assert_eq!(
            DropFields::parse(&["dns.nope"]),
            Err(DropError::Unknown("dns.nope".into()))
        );
        assert_eq!(
            DropFields::parse(&["nope"]),
            Err(DropError::Unknown("nope".into()))
        );
        assert_eq!(
            DropFields::parse(&["dns"]),
            Err(DropError::Required("dns".into()))
        );
    }

    #[test]
    fn damaged_input_is_copied_unchanged_never_a_panic() {
        let d = DropFields::parse(&["edns", "dns.qname"]).expect("valid");
        for cut in 0..EV.len() {
            let mut out = Vec::new();
            d.apply(&EV.as_bytes()[..cut], &mut out);
            assert_eq!(out, &EV.as_bytes()[..cut]);
        }
    }
}
