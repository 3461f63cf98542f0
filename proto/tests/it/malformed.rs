//! The hand-built broken inputs of `malformed/` (see MANIFEST.md): frames whose DNS bytes or
//! dnstap protobuf are damaged must never panic; what can become an event does, flagged.

use serde_json::Value;
use tapbus_proto::event::EventError;

use super::{Encoded, encode_file, testdata};

fn malformed(name: &str) -> Vec<Encoded> {
    let (events, stream) = encode_file(&testdata(&format!("malformed/{name}")));
    assert_eq!(stream, Ok(()), "{name}: the stream itself is well formed");
    events
}

fn ok(e: &Encoded) -> &Value {
    match e {
        Ok((v, _)) => v,
        Err(err) => panic!("expected an event, got {err:?}"),
    }
}

/// `dns.malformed-packet` of every event, checked against the summary's flag.
fn malformed_flags(events: &[Encoded]) -> Vec<bool> {
    events
        .iter()
        .map(|e| {
            let (v, s) = e.as_ref().expect("an event");
            let flag = v["dns"]["malformed-packet"]
                .as_bool()
                .expect("malformed-packet is a boolean");
            assert_eq!(flag, s.malformed_dns, "summary and event agree");
            flag
        })
        .collect()
}

#[test]
fn bad_dns_wire() {
    // valid query; 7-byte query; response cut inside the answer RR; 64 bytes of garbage;
    // QDCOUNT=5 with one question; empty query_message; valid response.
    let events = malformed("bad-dns-wire.fstrm");
    assert_eq!(events.len(), 7);
    assert_eq!(
        malformed_flags(&events),
        [false, true, true, true, true, true, false]
    );
    // What was read before the damage is still shown.
    let cut = ok(&events[2]);
    assert_eq!(cut["dns"]["qname"], "www.test");
    assert_eq!(cut["dns"]["ancount"], 1);
    assert_eq!(cut["dns"]["resource-records"]["an"], Value::Array(vec![]));
    assert_eq!(ok(&events[4])["dns"]["qname"], "www.test");
    // Too short for a header: no header fields, but the length.
    assert_eq!(ok(&events[1])["dns"]["length"], 7);
    assert_eq!(ok(&events[1])["dns"]["id"], Value::Null);
    assert_eq!(ok(&events[5])["dns"]["length"], 0);
    let last = ok(&events[6]);
    assert_eq!(
        last["dns"]["resource-records"]["an"][0]["rdata"],
        "127.0.0.10"
    );
}

#[test]
fn compression_loop() {
    // question name pointing at itself; two names pointing at each other; a forward pointer
    // to a valid name later in the message; a valid query.
    let events = malformed("compression-loop.fstrm");
    assert_eq!(events.len(), 4);
    // A forward pointer is legal (RFC 1035 only says "a prior occurrence" for the encoder;
    // decoders such as miekg/dns, which golang-dnstap uses, follow it too).
    assert_eq!(malformed_flags(&events), [true, true, false, false]);
    assert_eq!(ok(&events[0])["dns"]["qname"], Value::Null);
    assert_eq!(ok(&events[2])["dns"]["qname"], "www.test");
}

#[test]
fn dnstap_semantic_oddities() {
    let events = malformed("dnstap-semantic-oddities.fstrm");
    assert_eq!(events.len(), 6);
    assert_eq!(
        events[0].as_ref().err(),
        Some(&EventError::MissingMessageType)
    );
    assert_eq!(events[1].as_ref().err(), Some(&EventError::MissingType));
    assert_eq!(
        events[2].as_ref().err(),
        Some(&EventError::UnsupportedType(99))
    );
    let short_addr = ok(&events[3]);
    assert_eq!(short_addr["network"]["family"], "INET6");
    assert_eq!(short_addr["network"]["query-ip"], Value::Null);
    assert_eq!(short_addr["network"]["response-ip"], "127.53.0.20");
    let unknown = ok(&events[4]);
    assert_eq!(unknown["dnstap"]["operation"], "UNKNOWN(99)");
    assert_eq!(unknown["network"]["protocol"], "UNKNOWN(42)");
    let (_, s) = events[4].as_ref().expect("event");
    assert_eq!((s.operation, s.protocol), (99, Some(42)));
    let valid = ok(&events[5]);
    assert_eq!(valid["dnstap"]["operation"], "CLIENT_QUERY");
    assert_eq!(valid["dns"]["qname"], "www.test");
    assert_eq!(valid["dns"]["malformed-packet"], false);
    assert_eq!(
        events
            .iter()
            .filter_map(|e| e.as_ref().err().map(EventError::reason))
            .collect::<Vec<_>>(),
        ["missing_message_type", "missing_type", "unsupported_type"]
    );
}

#[test]
fn not_protobuf_data_frame() {
    let events = malformed("not-protobuf-data-frame.fstrm");
    assert_eq!(events.len(), 5);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Ok(_) => "event",
            Err(EventError::Protobuf(_)) => "protobuf",
            Err(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["event", "protobuf", "event", "protobuf", "event"]);
}

/// Every malformed input: the reader keeps what it can, the encoder never panics, and every
/// event it makes is schema-valid (checked by `encode_file`). Counts of data frames that
/// reach the encoder, and of events, per file.
#[test]
fn every_malformed_input_is_survived() {
    let expected: &[(&str, usize, usize, bool)] = &[
        // (file, data frames, events, stream ends cleanly)
        ("bad-dns-wire.fstrm", 7, 7, true),
        ("compression-loop.fstrm", 4, 4, true),
        ("control-field-overrun.fstrm", 0, 0, false),
        ("control-frame-too-long.fstrm", 0, 0, false),
        ("dnstap-semantic-oddities.fstrm", 6, 3, true),
        ("empty.fstrm", 0, 0, true),
        ("frame-length-exceeds-file.fstrm", 6, 6, false),
        ("frame-length-huge.fstrm", 1, 1, false),
        ("no-start.fstrm", 0, 0, false),
        ("not-protobuf-data-frame.fstrm", 5, 3, true),
        ("start-no-content-type.fstrm", 6, 6, true),
        ("start-only.fstrm", 0, 0, true),
        ("start-stop-only.fstrm", 0, 0, true),
        ("truncated-control-frame.fstrm", 0, 0, false),
        ("truncated-mid-frame.fstrm", 6, 6, false),
        ("truncated-mid-length.fstrm", 6, 6, false),
        ("two-streams-concatenated.fstrm", 8, 8, true),
        ("unknown-control-type.fstrm", 4, 4, true),
        ("wrong-content-type.fstrm", 0, 0, false),
        ("zero-length-data-frame.fstrm", 2, 2, false),
    ];
    let mut seen: Vec<String> = std::fs::read_dir(testdata("malformed"))
        .expect("malformed dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".fstrm"))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        expected.iter().map(|e| e.0.to_string()).collect::<Vec<_>>(),
        "every malformed input is listed"
    );
    let mut report = Vec::new();
    for &(name, frames, n_events, clean) in expected {
        let (events, stream) = encode_file(&testdata(&format!("malformed/{name}")));
        let got = (
            events.len(),
            events.iter().filter(|e| e.is_ok()).count(),
            stream.is_ok(),
        );
        if got != (frames, n_events, clean) {
            report.push(format!(
                "{name}: got (frames, events, clean) {got:?}, expected {:?} ({stream:?})",
                (frames, n_events, clean)
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// A deterministic cousin of the `event_encode` fuzz target that runs in CI: frames from the
/// captures, cut short and with bytes flipped, must give either an error (writing nothing)
/// or a schema-valid event.
#[test]
fn mutated_frames_never_break_the_event() {
    let mut seed = 0x853c_49e6_748f_ea9bu64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut inputs, mut events, mut invalid) = (0usize, 0usize, Vec::new());
    for name in [
        "unbound.fstrm",
        "bind-auth.fstrm",
        "kresd.fstrm",
        "dnsdist.fstrm",
    ] {
        let (frames, _) = super::data_frames(&testdata(name));
        for frame in frames.iter().step_by(frames.len() / 50) {
            let mut variants: Vec<Vec<u8>> = (1..frame.len())
                .step_by(11)
                .map(|n| frame[..n].to_vec())
                .collect();
            for _ in 0..20 {
                let mut m = frame.to_vec();
                for _ in 0..1 + rand() % 4 {
                    let i = (rand() as usize) % m.len();
                    m[i] ^= 1 << (rand() % 8);
                }
                variants.push(m);
            }
            for v in variants {
                inputs += 1;
                let mut out = Vec::new();
                match tapbus_proto::event::encode(bytes::Bytes::from(v), "mutant", &mut out) {
                    Ok(_) => {
                        events += 1;
                        let ev: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                            panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out))
                        });
                        let errs = super::schema_errors(&ev);
                        if !errs.is_empty() && invalid.len() < 5 {
                            invalid.push(format!("{errs:?}: {ev}"));
                        }
                    }
                    Err(_) => assert!(out.is_empty()),
                }
            }
        }
    }
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));
    assert!(
        inputs > 5000 && events > 1000,
        "{inputs} inputs, {events} events"
    );
}
