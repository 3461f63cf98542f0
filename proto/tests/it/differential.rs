//! Differential test: our events against golang-dnstap (+ miekg/dns) for every capture.
//!
//! For each capture `X.fstrm` at the top of the test data directory, the data frames are
//! encoded with `event::encode` and compared, message for message and in order, with
//! `X.expected.jsonl(.gz)`. Every compared field counts its mismatches; the test fails with a
//! per-field report and the first few mismatches of each field.
//!
//! Representational differences between the two decoders are normalized here, each with the
//! reason next to it; everything else must be equal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::golden::{self, GoldDns, GoldText};
use super::{Encoded, encode_file, expected_lines, summary_json, testdata};

const EXAMPLES_PER_FIELD: usize = 4;

#[derive(Default)]
struct Report {
    /// field -> (compared, mismatched)
    counts: BTreeMap<&'static str, (usize, usize)>,
    examples: BTreeMap<&'static str, Vec<String>>,
}

impl Report {
    fn check(
        &mut self,
        field: &'static str,
        i: usize,
        ours: impl std::fmt::Debug,
        theirs: impl std::fmt::Debug,
        equal: bool,
    ) {
        let c = self.counts.entry(field).or_default();
        c.0 += 1;
        if !equal {
            c.1 += 1;
            let ex = self.examples.entry(field).or_default();
            if ex.len() < EXAMPLES_PER_FIELD {
                ex.push(format!("message {i}: ours {ours:?} golang {theirs:?}"));
            }
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        field: &'static str,
        i: usize,
        ours: T,
        theirs: T,
    ) {
        let equal = ours == theirs;
        self.check(field, i, ours, theirs, equal);
    }

    fn mismatches(&self) -> usize {
        self.counts.values().map(|c| c.1).sum()
    }

    fn render(&self, file: &str) -> String {
        let mut s = format!("{file}: {} mismatches\n", self.mismatches());
        for (field, (n, bad)) in &self.counts {
            let _ = writeln!(s, "  {field:<16} {bad:>6} of {n:>7} differ");
            for e in self.examples.get(field).into_iter().flatten() {
                let _ = writeln!(s, "      {e}");
            }
        }
        s
    }
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Go's `time.RFC3339Nano` drops trailing zeros of the fraction (and the dot); ours always has
/// nine digits. Bring ours to Go's form.
fn go_rfc3339(ours: &str) -> String {
    match ours.split_once('.') {
        Some((head, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{digits}Z")
            }
        }
        None => ours.to_string(),
    }
}

/// The header flags that are set, in the order miekg prints them.
fn flags_of(v: &Value) -> Vec<String> {
    ["qr", "aa", "tc", "rd", "ra", "z", "ad", "cd"]
        .iter()
        .filter(|k| v[**k] == true)
        .map(|k| k.to_string())
        .collect()
}

/// miekg option line names -> EDNS option codes.
fn option_code(name: &str) -> Option<u64> {
    Some(match name {
        "LLQ" => 1,
        "UL" => 2,
        "NSID" => 3,
        "DAU" => 5,
        "DHU" => 6,
        "N3U" => 7,
        "SUBNET" => 8,
        "EXPIRE" => 9,
        "COOKIE" => 10,
        "KEEPALIVE" => 11,
        "PADDING" => 12,
        "EDE" => 15,
        _ => return None,
    })
}

/// Our option rendered the way miekg prints its value, for the options the captures hold.
fn our_option_text(o: &Value) -> Option<String> {
    let data = o["data"].as_str().unwrap_or_default();
    Some(match o["code"].as_u64()? {
        // miekg: address/source/scope, IPv6 in brackets.
        8 => {
            let (addr, src) = data.split_once('/')?;
            let addr = if addr.contains(':') {
                format!("[{addr}]")
            } else {
                addr.to_string()
            };
            format!("{addr}/{src}/{}", o["scope-prefix"].as_u64()?)
        }
        // miekg: `code (name): (text)`.
        15 => format!(
            "{} ({}): ({})",
            o["info-code"].as_u64()?,
            o["info"].as_str()?,
            o["extra-text"].as_str()?
        ),
        // miekg prints NSID as hex followed by the bytes as text; we print a printable NSID
        // as text and any other as hex. Bring ours to hex (see the hex case in the caller).
        3 => hex_of(data.as_bytes()),
        _ => data.to_string(),
    })
}

/// miekg prints options in the local/experimental range (65001-65534) as
/// `; LOCAL OPT: 65001:0xdeadbeef`: (code, hex data).
fn local_option<'a>(name: &str, value: &'a str) -> Option<(u64, &'a str)> {
    if name != "LOCAL OPT" {
        return None;
    }
    let (code, data) = value.split_once(':')?;
    Some((code.parse().ok()?, data.strip_prefix("0x").unwrap_or(data)))
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

fn miekg_option_value(name: &str, value: &str) -> String {
    if let Some((_, data)) = local_option(name, value) {
        return data.to_string();
    }
    match name {
        // `; NSID: 62696e64  (b)(i)(n)(d)`: keep the hex part.
        "NSID" => value
            .split("  ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        _ => value.to_string(),
    }
}

/// Record classes. miekg writes some classes as `CLASSn` where we use the mnemonic: all
/// records of types it does not know (RFC 3597 form, `unknown.test. 300 CLASS1 TYPE65280`)
/// and class ANY in UPDATE prerequisites (`CLASS255`). Compare the numbers.
fn class_eq(ours: &str, theirs: &str) -> bool {
    fn num(c: &str) -> Option<u16> {
        match c {
            "IN" => Some(1),
            "CH" => Some(3),
            "HS" => Some(4),
            "NONE" => Some(254),
            "ANY" => Some(255),
            c => c.strip_prefix("CLASS").and_then(|n| n.parse().ok()),
        }
    }
    ours == theirs || (num(ours).is_some() && num(ours) == num(theirs))
}

/// rdata text. Both decoders print RFC presentation format with the same conventions (names
/// fully qualified, RRSIG times as YYYYMMDDHHmmSS, algorithms as numbers, SVCB values
/// quoted, RFC 3597 `\# len hex` for unknown types). One difference: miekg keeps TLSA and
/// SMIMEA certificate data in lower case hex where we (like BIND) print upper case; hex is
/// case-insensitive.
fn rdata_eq(rtype: &str, ours: &str, theirs: &str) -> bool {
    match rtype {
        "TLSA" | "SMIMEA" => ours.eq_ignore_ascii_case(theirs),
        _ => ours == theirs,
    }
}

/// Compares the `dns` and `edns` blocks with miekg's view of the same message.
fn compare_dns(r: &mut Report, i: usize, ev: &Value, g: &GoldDns) {
    let dns = &ev["dns"];
    r.eq(
        "malformed",
        i,
        dns["malformed-packet"].as_bool(),
        Some(false),
    );
    r.eq("id", i, dns["id"].as_u64(), Some(u64::from(g.id)));
    r.eq(
        "opcode",
        i,
        dns["opcode"].as_u64(),
        golden::opcode_number(&g.opcode),
    );
    r.eq(
        "rcode",
        i,
        dns["rcode"].as_str(),
        Some(golden::normalize_rcode(&g.status)),
    );
    r.eq("flags", i, flags_of(&dns["flags"]), g.flags.clone());

    // Question.
    match &g.question {
        Some((name, class, qtype)) => {
            let ours = dns["qname"].as_str().unwrap_or("<null>");
            r.check(
                "qname",
                i,
                ours,
                name,
                golden::name_labels(ours) == golden::name_labels(name) && dns["qname"].is_string(),
            );
            r.eq("qtype", i, dns["qtype"].as_str(), Some(qtype.as_str()));
            r.eq("qclass", i, dns["qclass"].as_str(), Some(class.as_str()));
        }
        None => {
            r.eq("qname", i, opt_str(&dns["qname"]), None);
            r.eq("qtype", i, opt_str(&dns["qtype"]), None);
        }
    }

    // Counts: miekg prints the number of records it parsed, so for a well-formed message the
    // header counts, miekg's counts and our record lists all agree. ADDITIONAL includes OPT,
    // which we show in `edns` rather than in `ar`.
    let rr = &dns["resource-records"];
    let len = |s: &str| rr[s].as_array().map_or(0, Vec::len) as u64;
    let has_opt = u64::from(!ev["edns"].is_null());
    r.eq(
        "qdcount",
        i,
        dns["qdcount"].as_u64(),
        Some(u64::from(g.counts[0])),
    );
    r.eq(
        "ancount",
        i,
        dns["ancount"].as_u64(),
        Some(u64::from(g.counts[1])),
    );
    r.eq("answers", i, len("an"), u64::from(g.counts[1]));
    r.eq(
        "nscount",
        i,
        dns["nscount"].as_u64(),
        Some(u64::from(g.counts[2])),
    );
    r.eq("authorities", i, len("ns"), u64::from(g.counts[2]));
    r.eq(
        "arcount",
        i,
        dns["arcount"].as_u64(),
        Some(u64::from(g.counts[3])),
    );
    r.eq(
        "additionals",
        i,
        len("ar") + has_opt,
        u64::from(g.counts[3]),
    );

    // Records: owner, TTL, class and type of every record, in order.
    for (si, sec) in ["an", "ns", "ar"].iter().enumerate() {
        let ours = rr[*sec].as_array().cloned().unwrap_or_default();
        for (j, (o, t)) in ours.iter().zip(&g.sections[si]).enumerate() {
            let on = o["name"].as_str().unwrap_or_default();
            let equal = golden::name_labels(on) == golden::name_labels(&t.name)
                && o["ttl"].as_u64() == Some(u64::from(t.ttl))
                && class_eq(o["class"].as_str().unwrap_or_default(), &t.class)
                && o["rdatatype"].as_str() == Some(t.rtype.as_str());
            let od = o["rdata"].as_str().unwrap_or_default();
            r.check(
                "rdata",
                i,
                format!("{sec}[{j}] {} {od}", t.rtype),
                &t.rdata,
                rdata_eq(&t.rtype, od, &t.rdata),
            );
            r.check(
                "rr-header",
                i,
                format!(
                    "{sec}[{j}] {on} {} {} {}",
                    o["ttl"], o["class"], o["rdatatype"]
                ),
                format!("{} {} {} {}", t.name, t.ttl, t.class, t.rtype),
                equal,
            );
        }
    }

    // EDNS.
    let edns = &ev["edns"];
    match &g.edns {
        None => r.eq("edns", i, edns.is_null(), true),
        Some(ge) => {
            r.eq("edns", i, edns.is_object(), true);
            if !edns.is_object() {
                return;
            }
            r.eq(
                "edns-version",
                i,
                edns["version"].as_u64(),
                Some(u64::from(ge.version)),
            );
            r.eq(
                "edns-do",
                i,
                edns["dnssec-ok"].as_u64(),
                Some(u64::from(ge.dnssec_ok)),
            );
            r.eq(
                "edns-udp-size",
                i,
                edns["udp-size"].as_u64(),
                Some(u64::from(ge.udp_size)),
            );
            let ours: Vec<Value> = edns["options"].as_array().cloned().unwrap_or_default();
            let our_codes: Vec<Option<u64>> = ours.iter().map(|o| o["code"].as_u64()).collect();
            let their_codes: Vec<Option<u64>> = ge
                .options
                .iter()
                .map(|(n, v)| option_code(n).or_else(|| local_option(n, v).map(|(c, _)| c)))
                .collect();
            r.eq("edns-options", i, our_codes.clone(), their_codes.clone());
            if our_codes == their_codes {
                for (o, (name, value)) in ours.iter().zip(&ge.options) {
                    let field = match name.as_str() {
                        "SUBNET" => "edns-ecs",
                        "EDE" => "edns-ede",
                        _ => "edns-option-data",
                    };
                    let theirs = miekg_option_value(name, value);
                    let mine = our_option_text(o).unwrap_or_default();
                    // A non-printable NSID is already hex in our event.
                    let equal = mine == theirs
                        || (name == "NSID" && o["data"].as_str() == Some(theirs.as_str()));
                    r.check(field, i, mine, theirs, equal);
                }
            }
        }
    }
}

/// The golang view of one message against our event.
fn compare_message(r: &mut Report, i: usize, ours: &Encoded, gold: &Value) {
    let (ev, _summary) = match ours {
        Ok(ok) => ok,
        Err(e) => {
            r.check("encode", i, e, "an event", false);
            return;
        }
    };
    r.check("encode", i, "ok", "ok", true);
    let gm = &gold["message"];
    let net = &ev["network"];
    let tap = &ev["dnstap"];

    r.eq(
        "identity",
        i,
        opt_str(&tap["identity"]),
        opt_str(&gold["identity"]),
    );
    r.eq(
        "version",
        i,
        opt_str(&tap["version"]),
        opt_str(&gold["version"]),
    );
    let op = gm["type"].as_str().unwrap_or_default();
    r.eq("operation", i, tap["operation"].as_str(), Some(op));
    r.eq(
        "family",
        i,
        opt_str(&net["family"]),
        opt_str(&gm["socket_family"]),
    );
    r.eq(
        "protocol",
        i,
        opt_str(&net["protocol"]),
        opt_str(&gm["socket_protocol"]),
    );
    r.eq(
        "query-ip",
        i,
        opt_str(&net["query-ip"]),
        opt_str(&gm["query_address"]),
    );
    r.eq(
        "response-ip",
        i,
        opt_str(&net["response-ip"]),
        opt_str(&gm["response_address"]),
    );
    // golang-dnstap's JSON leaves out a port of 0 (`omitempty`): BIND and unbound log
    // query_port = 0 for some TCP messages (field_presence in summary.json shows the field is
    // there). An absent golang port therefore matches our 0 (or our null).
    let port = |v: &Value| v.as_u64().filter(|p| *p != 0);
    r.eq(
        "query-port",
        i,
        port(&net["query-port"]),
        gm["query_port"].as_u64(),
    );
    r.eq(
        "response-port",
        i,
        port(&net["response-port"]),
        gm["response_port"].as_u64(),
    );

    // Query zone: wire name in both; miekg-style trailing dot and escaping differ.
    let oz = tap["query-zone"].as_str();
    let gz = gm["query_zone"].as_str();
    let zone_eq = match (oz, gz) {
        (Some(a), Some(b)) => golden::name_labels(a) == golden::name_labels(b),
        (None, None) => true,
        _ => false,
    };
    r.check("query-zone", i, oz, gz, zone_eq);

    // Which message describes the event: responses by their response message, queries by
    // their query message, each falling back to the other (as `event::encode` does).
    let is_response = op.ends_with("_RESPONSE");
    let (first, second) = if is_response {
        ("response_message", "response_time")
    } else {
        ("query_message", "query_time")
    };
    let (other, other_time) = if is_response {
        ("query_message", "query_time")
    } else {
        ("response_message", "response_time")
    };
    let text = gm[first].as_str().or(gm[other].as_str());

    // Timestamp: the same choice, response time for responses, query time for queries.
    let gt = gm[second].as_str().or(gm[other_time].as_str());
    let ot = tap["timestamp-rfc3339ns"].as_str().map(go_rfc3339);
    r.eq("timestamp", i, ot.as_deref(), gt);

    match text {
        None => r.eq("dns-absent", i, ev["dns"]["length"].is_null(), true),
        Some(t) => match golden::parse_dns_text(t) {
            Err(e) => r.check("golden-parse", i, "-", format!("{e}: {t:?}"), false),
            Ok(GoldText::Failed(why)) => {
                // miekg could not unpack the message: ours must say malformed too.
                r.check(
                    "malformed",
                    i,
                    ev["dns"]["malformed-packet"].clone(),
                    format!("parse failed: {why}"),
                    ev["dns"]["malformed-packet"] == true,
                );
            }
            Ok(GoldText::Msg(g)) => compare_dns(r, i, ev, &g),
        },
    }
}

fn differential(name: &str) {
    let path = testdata(name);
    let (events, stream) = encode_file(&path);
    assert_eq!(stream, Ok(()), "{name}: the Frame Streams reader failed");
    let expected = expected_lines(&path);
    let total = summary_json(&path)["counts"]["total_messages"].as_u64();
    assert_eq!(
        Some(events.len() as u64),
        total,
        "{name}: events vs summary.json total"
    );
    assert_eq!(
        events.len(),
        expected.len(),
        "{name}: events vs expected lines"
    );
    compare_all(name, &events, &expected);
}

fn compare_all(name: &str, events: &[Encoded], expected: &[Value]) {
    let mut r = Report::default();
    for (i, (ours, gold)) in events.iter().zip(expected).enumerate() {
        compare_message(&mut r, i, ours, gold);
    }
    if std::env::var_os("TAPBUS_DIFF_VERBOSE").is_some() {
        eprintln!("{}", r.render(name));
    }
    assert_eq!(r.mismatches(), 0, "\n{}", r.render(name));
}

/// The malformed inputs: golang-dnstap stops at the first frame it cannot read (a broken
/// stream or a data frame that is not a dnstap protobuf) while we go on, so the messages it
/// did print must be our first events, field for field. Where it printed every message
/// (bad-dns-wire, compression-loop) that is all of them; DNS messages miekg could not unpack
/// (`parse failed`) must be `malformed-packet` in our events.
#[test]
fn malformed_inputs_agree_as_far_as_golang_got() {
    let dir = testdata("malformed");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("malformed directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".fstrm"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "malformed inputs: {names:?}");
    for name in names {
        let path = dir.join(&name);
        let (events, _stream) = encode_file(&path);
        let expected = expected_lines(&path);
        let golang = summary_json(&path)["decoders"]["golang-dnstap"]["messages"].as_u64();
        assert_eq!(
            golang,
            Some(expected.len() as u64),
            "{name}: summary vs expected lines"
        );
        assert!(
            events.len() >= expected.len(),
            "{name}: {} events, golang printed {}",
            events.len(),
            expected.len()
        );
        compare_all(&name, &events[..expected.len()], &expected);
    }
}

#[test]
fn malformed_dns_matches_golang_in_full() {
    for name in [
        "malformed/bad-dns-wire.fstrm",
        "malformed/compression-loop.fstrm",
    ] {
        differential(name);
    }
}

/// Every capture at the top level has a test below; this one makes sure none is forgotten.
#[test]
fn every_capture_is_covered() {
    let found = tapbus_testsupport::testdata::captures();
    assert_eq!(
        found,
        [
            "bind-auth.fstrm",
            "bind-resolver.fstrm",
            "bulk-100k.fstrm",
            "dnsdist-tcp.fstrm",
            "dnsdist.fstrm",
            "kresd.fstrm",
            "unbound-tcp.fstrm",
            "unbound.fstrm",
        ]
    );
}

#[test]
fn bind_auth() {
    differential("bind-auth.fstrm");
}

#[test]
fn bind_resolver() {
    differential("bind-resolver.fstrm");
}

#[test]
fn bulk_100k() {
    differential("bulk-100k.fstrm");
}

#[test]
fn dnsdist() {
    differential("dnsdist.fstrm");
}

#[test]
fn dnsdist_tcp() {
    differential("dnsdist-tcp.fstrm");
}

#[test]
fn kresd() {
    differential("kresd.fstrm");
}

#[test]
fn unbound() {
    differential("unbound.fstrm");
}

#[test]
fn unbound_tcp() {
    differential("unbound-tcp.fstrm");
}
