//! A second independent oracle for the DNS part of every event: hickory-proto's full
//! `Message` parser.
//!
//! The hot path walks the wire message itself (one pass, names and rdata written straight
//! into the JSON buffer: see `event/dns.rs`), which is what makes decode + encode fit in
//! about a microsecond. Here, every DNS message of every capture is also parsed by
//! hickory-proto, and the two must agree on the header (id, opcode, every flag, the counts),
//! the rcode including the EDNS extended bits, the first question, every answer and
//! authority record's owner, type, class and TTL, and the EDNS UDP size, version, DO bit
//! and number of options. Where hickory refuses a message, ours must have flagged it
//! `malformed-packet` (or the difference is listed and explained below).

use std::collections::BTreeMap;

use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use prost::Message as _;
use serde_json::Value;
use tapbus_proto::dnstap::Dnstap;

use crate::data_frames;

/// Every real capture at the top of the test data directory.
fn capture_files() -> Vec<std::path::PathBuf> {
    tapbus_testsupport::testdata::captures()
        .iter()
        .map(|n| tapbus_testsupport::testdata::path(n))
        .collect()
}

fn encode(frame: Bytes) -> Option<Value> {
    let mut out = Vec::new();
    tapbus_proto::event::encode(frame, "hickory", &mut out).ok()?;
    serde_json::from_slice(&out).ok()
}

/// The wire message the event describes (same rule as `event::encode`).
fn wire_of(frame: &Bytes) -> Option<Bytes> {
    let tap = Dnstap::decode(frame.clone()).ok()?;
    let m = tap.message?;
    let op = m.r#type?;
    let (first, second) = if op > 0 && op % 2 == 0 {
        (m.response_message, m.query_message)
    } else {
        (m.query_message, m.response_message)
    };
    first.or(second)
}

/// A plain LDH name (no escapes needed), so presentation forms are comparable.
fn plain(name: &str) -> bool {
    name.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
}

fn name_text(n: &hickory_proto::rr::Name) -> String {
    let s = n.to_ascii();
    if s == "." {
        s
    } else {
        s.trim_end_matches('.').to_string()
    }
}

fn type_matches(ours: &Value, t: RecordType) -> bool {
    match t {
        // hickory has no mnemonic for some IANA types; ours does (or prints TYPEnnn).
        RecordType::Unknown(_) => ours.is_string(),
        t => ours.as_str() == Some(&t.to_string()),
    }
}

fn compare(ev: &Value, msg: &Message, diffs: &mut BTreeMap<&'static str, usize>) {
    let d = &ev["dns"];
    let mut diff = |k: &'static str, same: bool| {
        if !same {
            *diffs.entry(k).or_default() += 1;
        }
    };
    let md = &msg.metadata;
    diff("id", d["id"] == md.id);
    diff("opcode", d["opcode"] == u8::from(md.op_code));
    let f = &d["flags"];
    diff(
        "qr",
        f["qr"] == (md.message_type == hickory_proto::op::MessageType::Response),
    );
    diff("aa", f["aa"] == md.authoritative);
    diff("tc", f["tc"] == md.truncation);
    diff("rd", f["rd"] == md.recursion_desired);
    diff("ra", f["ra"] == md.recursion_available);
    diff("ad", f["ad"] == md.authentic_data);
    diff("cd", f["cd"] == md.checking_disabled);
    let rcode = u16::from(md.response_code);
    let ours_rcode = d["rcode"].as_str().unwrap_or("");
    let theirs = tapbus_proto::event::dns::rcode_name(rcode);
    diff("rcode", theirs.is_none_or(|t| t == ours_rcode));
    diff("qdcount", d["qdcount"] == msg.queries.len());
    diff("ancount", d["ancount"] == msg.answers.len());
    diff("nscount", d["nscount"] == msg.authorities.len());
    if let Some(q) = msg.queries.first() {
        let qn = name_text(&q.name);
        if plain(&qn) {
            diff("qname", d["qname"] == qn.as_str());
        }
        diff("qtype", type_matches(&d["qtype"], q.query_type));
    }
    let rr = &d["resource-records"];
    for (section, records) in [("an", &msg.answers), ("ns", &msg.authorities)] {
        let ours = rr[section].as_array().map(Vec::as_slice).unwrap_or(&[]);
        diff("section length", ours.len() == records.len());
        for (o, r) in ours.iter().zip(records.iter()) {
            let n = name_text(&r.name);
            if plain(&n) {
                diff("record name", o["name"] == n.as_str());
            }
            diff(
                "record type",
                type_matches(&o["rdatatype"], r.record_type()),
            );
            diff("record ttl", o["ttl"] == r.ttl);
            diff(
                "record class",
                o["class"] == r.dns_class.to_string().as_str(),
            );
        }
    }
    match (&ev["edns"], &msg.edns) {
        (Value::Null, None) => {}
        (e, Some(h)) if e.is_object() => {
            // hickory raises a UDP size below 512 to 512 (RFC 6891); ours prints the wire value.
            let size = e["udp-size"].as_u64().unwrap_or(0).max(512);
            diff("edns udp-size", size == u64::from(h.max_payload()));
            diff("edns version", e["version"] == h.version());
            diff("edns do", e["dnssec-ok"] == u8::from(h.flags().dnssec_ok));
            let n = e["options"].as_array().map_or(0, Vec::len);
            diff("edns options", n == h.options().as_ref().len());
        }
        _ => diff("edns presence", false),
    }
}

#[test]
fn every_dns_message_agrees_with_hickory() {
    let mut compared = 0usize;
    let mut diffs: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut hickory_refused = Vec::new();
    for path in capture_files() {
        let (frames, _) = data_frames(&path);
        for (i, frame) in frames.iter().enumerate() {
            let Some(wire) = wire_of(frame) else { continue };
            let Some(ev) = encode(frame.clone()) else {
                continue;
            };
            match Message::from_vec(&wire) {
                Ok(msg) => {
                    assert_eq!(
                        ev["dns"]["malformed-packet"],
                        false,
                        "{}#{i}: hickory parses it but we flagged it malformed",
                        path.display()
                    );
                    compare(&ev, &msg, &mut diffs);
                    compared += 1;
                }
                Err(e) => hickory_refused.push(format!(
                    "{}#{i}: {e} (ours: malformed-packet={})",
                    path.file_name()
                        .map(|f| f.to_string_lossy())
                        .unwrap_or_default(),
                    ev["dns"]["malformed-packet"]
                )),
            }
        }
    }
    assert!(compared > 100_000, "compared {compared} messages");
    assert!(
        diffs.is_empty(),
        "fields that disagree with hickory-proto (count): {diffs:?}"
    );
    // Real captures from real servers: hickory parses every one of them.
    assert!(
        hickory_refused.is_empty(),
        "hickory-proto refused {} messages:\n{}",
        hickory_refused.len(),
        hickory_refused.join("\n")
    );
}
