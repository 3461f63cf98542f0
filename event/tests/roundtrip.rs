//! Every event the proto encoder produces for the repository's captures, read with
//! [`EventView`] and compared with the same bytes read as a `serde_json::Value`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;
use tapbus_event::{EventView, Filter, Operation, ViewError, write_line};

fn opt_str<'v>(v: &'v Value, block: &str, key: &str) -> Option<&'v str> {
    let x = &v[block][key];
    assert!(x.is_string() || x.is_null(), "{block}.{key}: {x}");
    x.as_str()
}

fn opt_u64(v: &Value, block: &str, key: &str) -> Option<u64> {
    let x = &v[block][key];
    assert!(x.is_u64() || x.is_null(), "{block}.{key}: {x}");
    x.as_u64()
}

/// Field-by-field comparison of the view with the generic parse.
fn compare(view: &EventView<'_>, v: &Value) {
    let op = opt_str(v, "dnstap", "operation").expect("operation");
    assert_eq!(view.operation().as_str(), op);
    assert_eq!(
        view.is_response(),
        op.ends_with("_RESPONSE") || {
            // UNKNOWN(n): dnstap numbers responses evenly.
            matches!(view.operation(), Operation::Unknown(n) if n % 2 == 0 && n > 0)
        }
    );
    assert_eq!(view.identity(), opt_str(v, "dnstap", "identity"));
    assert_eq!(
        view.dnstap.version.as_deref(),
        opt_str(v, "dnstap", "version")
    );
    assert_eq!(view.timestamp_ns(), opt_u64(v, "dnstap", "timestamp"));
    assert_eq!(
        view.dnstap.timestamp_rfc3339ns.as_deref(),
        opt_str(v, "dnstap", "timestamp-rfc3339ns")
    );
    assert_eq!(view.latency(), v["dnstap"]["latency"].as_f64());
    assert_eq!(
        view.dnstap.query_zone.as_deref(),
        opt_str(v, "dnstap", "query-zone")
    );

    let ip = |key: &str| opt_str(v, "network", key).map(|s| s.parse::<IpAddr>().expect("ip"));
    assert_eq!(view.client_ip(), ip("query-ip"));
    assert_eq!(view.server_ip(), ip("response-ip"));
    assert_eq!(
        view.network.query_port.map(u64::from),
        opt_u64(v, "network", "query-port")
    );
    assert_eq!(
        view.network.response_port.map(u64::from),
        opt_u64(v, "network", "response-port")
    );
    assert_eq!(
        view.protocol().map(|p| p.as_str().into_owned()).as_deref(),
        opt_str(v, "network", "protocol")
    );
    assert_eq!(
        view.family().map(|p| p.as_str().into_owned()).as_deref(),
        opt_str(v, "network", "family")
    );

    assert_eq!(view.size().map(u64::from), opt_u64(v, "dns", "length"));
    assert_eq!(view.dns.id.map(u64::from), opt_u64(v, "dns", "id"));
    assert_eq!(view.dns.opcode.map(u64::from), opt_u64(v, "dns", "opcode"));
    assert_eq!(view.rcode(), opt_str(v, "dns", "rcode"));
    assert_eq!(view.qname(), opt_str(v, "dns", "qname"));
    assert_eq!(view.qtype(), opt_str(v, "dns", "qtype"));
    assert_eq!(view.dns.qclass.as_deref(), opt_str(v, "dns", "qclass"));
    for (got, key) in [
        (view.dns.qdcount, "qdcount"),
        (view.dns.ancount, "ancount"),
        (view.dns.nscount, "nscount"),
        (view.dns.arcount, "arcount"),
    ] {
        assert_eq!(got.map(u64::from), opt_u64(v, "dns", key), "{key}");
    }
    assert_eq!(
        Some(view.dns.malformed_packet),
        v["dns"]["malformed-packet"].as_bool()
    );
    match (&view.dns.flags, &v["dns"]["flags"]) {
        (None, Value::Null) => {}
        (Some(f), j) => {
            let bit = |k: &str| j[k].as_bool().unwrap_or_else(|| panic!("flag {k}: {j}"));
            assert_eq!(
                [f.qr, f.aa, f.tc, f.rd, f.ra, f.z, f.ad, f.cd],
                ["qr", "aa", "tc", "rd", "ra", "z", "ad", "cd"].map(bit)
            );
        }
        (None, j) => panic!("flags missing from the view: {j}"),
    }
    match (&view.edns, &v["edns"]) {
        (None, Value::Null) => {}
        (Some(e), j) => {
            assert_eq!(Some(u64::from(e.udp_size)), j["udp-size"].as_u64());
            assert_eq!(Some(u64::from(e.rcode)), j["rcode"].as_u64());
            assert_eq!(Some(u64::from(e.version)), j["version"].as_u64());
            assert_eq!(Some(u64::from(e.dnssec_ok)), j["dnssec-ok"].as_u64());
        }
        (None, j) => panic!("edns missing from the view: {j}"),
    }
    match (&view.geo, &v["geo"]) {
        (None, Value::Null) => {}
        (Some(g), j) => {
            assert!(j.is_object(), "geo: {j}");
            assert_eq!(g.country.as_deref(), j["country"].as_str());
            assert_eq!(g.city.as_deref(), j["city"].as_str());
            assert_eq!(g.asn.map(u64::from), j["asn"].as_u64());
            assert_eq!(g.as_org.as_deref(), j["as-org"].as_str());
            assert_eq!(view.client_country(), j["country"].as_str());
            assert_eq!(view.client_asn().map(u64::from), j["asn"].as_u64());
        }
        (None, j) => panic!("geo missing from the view: {j}"),
    }
}

/// A stand-in for the broker's MaxMind lookup: a geo object chosen in turn (the test
/// captures' clients are a handful of loopback addresses), with every shape the encoder
/// writes (all four fields, some left out, an escaped organisation, a multi-byte city)
/// and `null` for one lookup in four.
#[derive(Debug, Default)]
struct FakeGeo(std::sync::atomic::AtomicU32);

impl tapbus_proto::event::GeoWriter for FakeGeo {
    fn write_geo(&self, _ip: IpAddr, out: &mut Vec<u8>) -> bool {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Two lookups per event (geo and geo-response): the shape changes per event.
        let obj: &[u8] = match (n / 2) % 4 {
            0 => return false,
            1 => br#"{"country":"FR","city":"Paris","asn":3215,"as-org":"Orange"}"#,
            2 => br#"{"country":"DE","asn":4294967295}"#,
            _ => br#"{"city":"S\u00e3o \"Paulo\"","as-org":"A \\ B"}"#,
        };
        out.extend_from_slice(obj);
        true
    }
}

/// The capture's events as a broker with `[enrich.geoip]` (and `response = true`) writes
/// them: `geo`, `geo-response`, `schema-version` and the registered-domain keys.
fn enriched_events_in(path: &Path) -> Vec<Vec<u8>> {
    use tapbus_proto::event::view::registered_domain;
    use tapbus_proto::event::{Enrich, Scratch, View, encode_views};
    use tapbus_proto::fstrm;
    let bytes = std::fs::read(path).expect("capture");
    let (frames, _) = fstrm::decode_all(&bytes, fstrm::DEFAULT_MAX_DATA_FRAME);
    let enrich = Enrich {
        geo: Some(std::sync::Arc::new(FakeGeo::default())),
        geo_response: true,
        registered: Some(registered_domain),
    };
    let views = [View::default()];
    let mut scratch = Scratch::default();
    frames
        .into_iter()
        .filter_map(|f| {
            let fstrm::Frame::Data(frame) = f else {
                return None;
            };
            let mut outs = [Vec::new()];
            encode_views(frame, "p", &enrich, &views, &mut scratch, &mut outs).ok()?;
            let [out] = outs;
            Some(out)
        })
        .collect()
}

/// Counts of what the comparison went through, so that the test cannot pass on nothing.
#[derive(Default, Debug)]
struct Seen {
    events: usize,
    responses: usize,
    with_qname: usize,
    with_edns: usize,
    v6_client: usize,
    owned_qname: usize,
    malformed: usize,
    with_geo: usize,
    owned_geo: usize,
}

fn check_file(path: &Path, seen: &mut Seen) {
    let evs = tapbus_testsupport::testdata::events_in(path).collect::<Vec<_>>();
    check_events(path, &evs, seen);
}

fn check_events(path: &Path, evs: &[Vec<u8>], seen: &mut Seen) {
    let mut line = String::new();
    for (i, e) in evs.iter().enumerate() {
        let v: Value = serde_json::from_slice(e).expect("encoder writes JSON");
        let view = EventView::parse(e).unwrap_or_else(|err| {
            panic!(
                "{} event {i}: {err}\n{}",
                path.display(),
                String::from_utf8_lossy(e)
            )
        });
        compare(&view, &v);
        // The serde_json path reads the same.
        assert_eq!(EventView::parse_serde_json(e).as_ref(), Ok(&view));
        // Another producer's key order and whitespace (serde_json's map sorts the keys;
        // the reader's fast path expects the encoder's order) read the same, too.
        if i % 7 == 0 {
            let sorted = serde_json::to_vec(&v).expect("to_vec");
            assert_eq!(
                EventView::parse(&sorted).map(EventView::into_owned),
                Ok(view.clone().into_owned())
            );
            let pretty = serde_json::to_vec_pretty(&v).expect("to_vec_pretty");
            assert_eq!(
                EventView::parse(&pretty).map(EventView::into_owned),
                Ok(view.clone().into_owned())
            );
        }
        // Every event gets a line of exactly nine space-separated fields.
        line.clear();
        write_line(&view, &mut line);
        assert_eq!(line.split(' ').count(), 9, "{line}");
        assert!(Filter::parse("").expect("empty").matches(&view));
        seen.events += 1;
        seen.responses += usize::from(view.is_response());
        seen.with_qname += usize::from(view.qname().is_some());
        seen.with_edns += usize::from(view.edns.is_some());
        seen.v6_client += usize::from(view.client_ip().is_some_and(|ip| ip.is_ipv6()));
        seen.owned_qname += usize::from(matches!(view.dns.qname, Some(Cow::Owned(_))));
        seen.malformed += usize::from(view.dns.malformed_packet);
        seen.with_geo += usize::from(view.geo.is_some());
        seen.owned_geo += usize::from(
            view.geo
                .as_ref()
                .is_some_and(|g| matches!(g.city, Some(Cow::Owned(_)))),
        );
    }
}

#[test]
fn every_capture_event_reads_as_its_json() {
    let mut seen = Seen::default();
    let captures = tapbus_testsupport::testdata::captures();
    assert_eq!(captures.len(), 8, "{captures:?}");
    for name in &captures {
        let before = seen.events;
        check_file(&tapbus_testsupport::testdata::path(name), &mut seen);
        let n = seen.events - before;
        // Every message of the capture became an event and was compared.
        assert_eq!(
            n,
            tapbus_testsupport::testdata::expected_count(name),
            "{name}"
        );
    }
    eprintln!("{seen:?}");
    assert!(seen.events > 100_000, "{seen:?}");
    assert!(seen.responses > seen.events / 3, "{seen:?}");
    assert!(seen.with_qname > seen.events / 2, "{seen:?}");
    assert!(seen.with_edns > 0 && seen.v6_client > 0, "{seen:?}");
    // Names are borrowed from the input in the common case.
    assert!(seen.owned_qname * 1000 < seen.events, "{seen:?}");
    // The broker's events without GeoIP have no `geo`.
    assert_eq!(seen.with_geo, 0, "{seen:?}");
}

/// The same captures as a broker with `[enrich.geoip]` writes them (schema version 2):
/// `geo` is read field by field, by both readers alike, in the encoder's key order and in
/// any other; `geo-response` and `schema-version` are skipped.
#[test]
fn enriched_capture_events_read_their_geo() {
    let mut seen = Seen::default();
    for name in tapbus_testsupport::testdata::captures() {
        let path = tapbus_testsupport::testdata::path(&name);
        let evs = enriched_events_in(&path);
        assert_eq!(
            evs.len(),
            tapbus_testsupport::testdata::expected_count(&name),
            "{name}"
        );
        assert!(
            evs.iter()
                .all(|e| e.windows(17).any(|w| w == b"\"schema-version\":")),
            "{name}: not enriched"
        );
        check_events(&path, &evs, &mut seen);
    }
    eprintln!("{seen:?}");
    assert!(seen.events > 100_000, "{seen:?}");
    // Every shape of the fake lookup came up: objects and nulls, escaped strings.
    assert!(seen.with_geo > seen.events / 2, "{seen:?}");
    assert!(seen.with_geo < seen.events, "{seen:?}");
    assert!(seen.owned_geo > 0, "{seen:?}");
}

#[test]
fn geo_fields_and_wrong_geo_types() {
    let base =
        r#"{"network":{"query-ip":"81.2.69.1"},"dns":{},"dnstap":{"operation":"CLIENT_QUERY"}"#;
    let ok = |tail: &str| {
        let json = format!("{base}{tail}}}");
        let fast = EventView::parse(json.as_bytes()).map(EventView::into_owned);
        let slow = EventView::parse_serde_json(json.as_bytes()).map(EventView::into_owned);
        assert_eq!(fast, slow, "{json}");
        fast.unwrap_or_else(|e| panic!("{json}: {e}"))
    };
    let v = ok(
        r#","geo":{"country":"FR","city":"Paris","asn":3215,"as-org":"Orange"},"geo-response":{"country":"US"},"schema-version":2"#,
    );
    assert_eq!(v.client_country(), Some("FR"));
    assert_eq!(v.client_city(), Some("Paris"));
    assert_eq!(v.client_asn(), Some(3215));
    assert_eq!(v.client_as_org(), Some("Orange"));
    let v = ok(r#","geo":null,"schema-version":2"#);
    assert!(v.geo.is_none() && v.client_country().is_none() && v.client_asn().is_none());
    let v = ok(r#","schema-version":2,"geo":{"as-org":"X","asn":7,"future":[1,{"a":2}]}"#);
    assert_eq!(v.client_country(), None);
    assert_eq!(v.client_asn(), Some(7));
    let v = ok(r#","geo":{}"#);
    assert_eq!(v.geo, Some(Default::default()));
    for bad in [
        r#","geo":"FR""#,
        r#","geo":{"country":1}"#,
        r#","geo":{"asn":"3215"}"#,
        r#","geo":{"asn":-1}"#,
        r#","geo":{"asn":4294967296}"#,
        r#","geo":{"asn":1.5}"#,
        r#","geo":{"city":true}"#,
        r#","geo":{"country":"FR""#,
    ] {
        let json = format!("{base}{bad}}}");
        assert!(
            EventView::parse(json.as_bytes()).is_err(),
            "accepted {json}"
        );
        assert!(
            EventView::parse_serde_json(json.as_bytes()).is_err(),
            "serde accepted {json}"
        );
    }
    // The serde derive reads a struct from an array too (for every block); the reader
    // wants the object the encoder writes.
    let json = format!("{base},\"geo\":[]}}");
    assert!(
        EventView::parse(json.as_bytes()).is_err(),
        "accepted {json}"
    );
}

#[test]
fn malformed_capture_events_read_too() {
    let dir = tapbus_testsupport::testdata::dir().join("malformed");
    let mut seen = Seen::default();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("malformed dir") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|x| x == "fstrm") {
            check_file(&p, &mut seen);
            files += 1;
        }
    }
    assert!(files >= 20, "{files} malformed captures");
    assert!(seen.malformed >= 5, "{seen:?}");
}

/// Damaged events: every truncation, and single-byte substitutions, give an error or a
/// view, never a panic; a truncated event is always an error.
#[test]
fn damaged_events_are_errors_not_panics() {
    let path = tapbus_testsupport::testdata::path("malformed/bad-dns-wire.fstrm");
    let evs = tapbus_testsupport::testdata::events_in(&path).collect::<Vec<_>>();
    assert!(!evs.is_empty());
    let mut errors = 0usize;
    let mut agreed = 0usize;
    let mut lenient = 0usize;
    let mut stricter_utf8 = 0usize;
    for e in &evs {
        for cut in 0..e.len() {
            assert!(
                EventView::parse(&e[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        for at in (0..e.len()).step_by(3) {
            for b in [
                b'"', b'{', b']', b'\\', b'x', b'0', b'9', b',', b' ', 0xff, 0,
            ] {
                let mut m = e.clone();
                m[at] = b;
                let fast = EventView::parse(&m);
                errors += usize::from(fast.is_err());
                // What the serde derive accepts, the hand-written reader reads the same.
                // (It may accept more: damage to the separators inside a skipped value.)
                match EventView::parse_serde_json(&m) {
                    // The reader checks the whole event as UTF-8; serde_json does not
                    // check the strings it skips: stricter, never more lenient.
                    Ok(_) if b == 0xff && fast.is_err() => {
                        assert!(
                            matches!(&fast, Err(ViewError::Json(e)) if e.starts_with("invalid UTF-8 at byte")),
                            "byte {at}: {fast:?}"
                        );
                        stricter_utf8 += 1;
                    }
                    Ok(slow) => {
                        assert_eq!(fast.as_ref(), Ok(&slow), "byte {at} = {b}");
                        agreed += 1;
                    }
                    Err(_) if fast.is_ok() => {
                        // Never for a byte that breaks UTF-8: the whole event is checked.
                        assert_ne!(b, 0xff, "byte {at}: accepted invalid UTF-8");
                        lenient += 1;
                    }
                    Err(_) => {}
                }
            }
        }
    }
    eprintln!(
        "{errors} errors, {agreed} accepted by both, only by the reader: {lenient} (separators \
         or escapes inside skipped values); refused by the reader only: {stricter_utf8} (0xff in \
         a skipped string, which serde_json does not check)"
    );
    assert!(errors > 1000, "{errors}");
    assert!(agreed > 100, "{agreed}");
    // Leniency is confined to what the reader does not read (separators and escapes inside
    // skipped values): rare among random damage.
    assert!(lenient * 20 < errors, "{lenient} lenient, {errors} errors");
    assert!(stricter_utf8 > 0, "no 0xff landed in a skipped string");
    // Wrong types in fields the view reads.
    let good: Value = serde_json::from_slice(&evs[0]).expect("json");
    let mutations: [(&str, &str, Value); 8] = [
        ("network", "query-ip", Value::from(12)),
        ("network", "query-port", Value::from("53")),
        ("network", "protocol", Value::from("SCTP")),
        ("dns", "qname", Value::from(true)),
        ("dns", "length", Value::from(-1)),
        ("dns", "flags", Value::from("qr")),
        ("dnstap", "operation", Value::Null),
        ("dnstap", "timestamp", Value::from(1.5)),
    ];
    for (block, key, val) in mutations {
        let mut v = good.clone();
        v[block][key] = val.clone();
        let bytes = serde_json::to_vec(&v).expect("to_vec");
        assert!(
            EventView::parse(&bytes).is_err(),
            "{block}.{key} = {val} accepted"
        );
    }
}
