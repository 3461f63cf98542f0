//! Schema version 2 (the enrichment) is additions only: a consumer written for version 1
//! reads version 2 events unchanged.
//!
//! `compat-v1.jsonl` holds events as the broker wrote them before the enrichment (the
//! first 150 events of `unbound.fstrm` and 100 of `dnsdist.fstrm`, encoded by
//! `tapbus_proto::event::encode` at commit 2c25dd8, peer name `compat`), and
//! `compat-v1.schema.json` that version's schema. For each of them the event encoded
//! today from the same frame is compared:
//! * with the version 2 additions taken out it is the version 1 event, value for value;
//! * the version 1 event still passes the version 1 schema and today's event today's;
//! * the subscribers' reader (`EventView`, as a version 1 consumer uses it) sees the same
//!   view in both.

use tapbus_event::EventView;

/// The data frames of a capture that encode, in order (the encoder skips the others).
fn events_now(capture: &str, n: usize) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(tapbus_testsupport::testdata::path(capture)).expect("capture");
    let (frames, _) =
        tapbus_proto::fstrm::decode_all(&bytes, tapbus_proto::fstrm::DEFAULT_MAX_DATA_FRAME);
    frames
        .into_iter()
        .filter_map(|f| match f {
            tapbus_proto::fstrm::Frame::Data(b) => {
                let mut out = Vec::new();
                tapbus_proto::event::encode(b, "compat", &mut out).ok()?;
                Some(out)
            }
            _ => None,
        })
        .take(n)
        .collect()
}

fn validator(schema: &str) -> jsonschema::Validator {
    let v: serde_json::Value = serde_json::from_str(schema).expect("schema");
    jsonschema::validator_for(&v).expect("schema compiles")
}

/// A version 2 event less what version 2 added.
fn as_v1(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(top) = v.as_object_mut() {
        for k in ["schema-version", "geo", "geo-response"] {
            top.remove(k);
        }
        if let Some(dns) = top.get_mut("dns").and_then(|d| d.as_object_mut()) {
            dns.remove("qname-registered");
            dns.remove("qname-tld");
        }
    }
    v
}

#[test]
fn version_2_events_are_version_1_events_plus_additions() {
    let v1_lines: Vec<&str> = include_str!("compat-v1.jsonl").lines().collect();
    assert_eq!(v1_lines.len(), 250);
    let mut now = events_now("unbound.fstrm", 150);
    now.extend(events_now("dnsdist.fstrm", 100));
    assert_eq!(now.len(), v1_lines.len());
    let v1_schema = validator(include_str!("compat-v1.schema.json"));
    let v2_schema = validator(tapbus_proto::event::SCHEMA);
    let mut added = 0;
    for (i, (old, new)) in v1_lines.iter().zip(&now).enumerate() {
        let old_v: serde_json::Value = serde_json::from_str(old).expect("v1 event");
        let new_v: serde_json::Value = serde_json::from_slice(new).expect("v2 event");
        assert!(v1_schema.is_valid(&old_v), "v1 event {i} vs the v1 schema");
        assert!(v2_schema.is_valid(&new_v), "v2 event {i} vs today's schema");
        assert_eq!(new_v["schema-version"], 2, "event {i}");
        if new_v["dns"]["qname-registered"].is_string() {
            added += 1;
        }
        assert_eq!(
            as_v1(new_v),
            old_v,
            "event {i}: more than additions changed"
        );
        // What a version 1 consumer reads: the same view of both.
        let a = EventView::parse(old.as_bytes()).expect("v1 parses");
        let b = EventView::parse(new).expect("v2 parses");
        assert_eq!(
            format!("{a:?}"),
            format!("{b:?}"),
            "event {i}: the views differ"
        );
    }
    assert!(added > 150, "registered domains on {added} of 250 events");
}
