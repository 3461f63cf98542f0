//! The reducer over every event of the repository's captures (as the broker publishes
//! them, `tapbus_proto::event::encode`), checked against counts made independently from
//! the same JSON with `serde_json::Value`, and every record against `record.schema.json`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;
use tapbus_event::EventView;
use tapbus_reduce::{ReduceConfig, Reducer, Stats, record::SCHEMA};

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("schema compiles")
    })
}

fn assert_valid(v: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(v)
        .map(|e| format!("{} at {}: {e}", e.schema_path, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{v}\n{}", errors.join("\n"));
}

/// Runs the reducer over `events`, advancing every `every` events; returns the records
/// as parsed JSON (each validated) and the counters.
fn reduce(config: ReduceConfig, events: &[Vec<u8>], every: usize) -> (Vec<Value>, Stats) {
    let mut r = Reducer::new(config.validate().expect("valid"));
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        r.push(&EventView::parse(e).expect("encoder output parses"));
        if i % every == 0 {
            r.advance(&mut out);
        }
    }
    r.close_all(&mut out);
    let stats = r.stats();
    assert_eq!(stats.open_groups, 0);
    assert_eq!(stats.open_windows, 0);
    assert_eq!(stats.records, out.len() as u64);
    let json = out
        .iter()
        .map(|rec| {
            let v: Value = serde_json::from_slice(&rec.to_json()).expect("record JSON");
            assert_valid(&v);
            assert_eq!(v["id"], rec.id.as_str());
            assert_eq!(rec.subject, format!("tapbus.reduced.{}", rec.reduction));
            v
        })
        .collect();
    (json, stats)
}

type ClientKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Independent counts: CLIENT_RESPONSE events with a timestamp, per (identity, qname)
/// and per (identity, client, qname, qtype, rcode); plus their bytes.
struct Expected {
    qname: BTreeMap<(Option<String>, Option<String>), u64>,
    client: BTreeMap<ClientKey, u64>,
    bytes: u64,
    responses: u64,
    no_timestamp: u64,
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn expected(events: &[Vec<u8>]) -> Expected {
    let mut e = Expected {
        qname: BTreeMap::new(),
        client: BTreeMap::new(),
        bytes: 0,
        responses: 0,
        no_timestamp: 0,
    };
    for raw in events {
        let v: Value = serde_json::from_slice(raw).expect("event JSON");
        if v["dnstap"]["operation"] != "CLIENT_RESPONSE" {
            continue;
        }
        if v["dnstap"]["timestamp"].is_null() {
            e.no_timestamp += 1;
            continue;
        }
        e.responses += 1;
        let identity = s(&v["dnstap"]["identity"]);
        let qname = v["dns"]["qname"].as_str().map(|q| q.to_ascii_lowercase());
        *e.qname
            .entry((identity.clone(), qname.clone()))
            .or_default() += 1;
        let k = (
            identity,
            s(&v["network"]["query-ip"]),
            qname,
            s(&v["dns"]["qtype"]),
            s(&v["dns"]["rcode"]),
        );
        *e.client.entry(k).or_default() += 1;
        e.bytes += v["dns"]["length"].as_u64().unwrap_or(0);
    }
    e
}

#[test]
fn sums_match_independent_counts_and_records_validate() {
    let mut total_records = 0;
    for name in tapbus_testsupport::testdata::captures() {
        let evs = tapbus_testsupport::testdata::events(&name);
        assert!(!evs.is_empty(), "{name}: no events");
        let want = expected(&evs);
        let (records, stats) = reduce(ReduceConfig::default(), &evs, 64);
        assert_eq!(stats.events, evs.len() as u64, "{name}");
        assert_eq!(stats.rejected_future, 0, "{name}");
        assert_eq!(stats.overflow + stats.rejected_full, 0, "{name}");
        assert_eq!(stats.no_timestamp, want.no_timestamp, "{name}");
        assert_eq!(stats.grouped, 2 * want.responses, "{name}");

        let mut qname: BTreeMap<(Option<String>, Option<String>), u64> = BTreeMap::new();
        let mut client: BTreeMap<ClientKey, u64> = BTreeMap::new();
        let (mut qname_bytes, mut client_bytes) = (0, 0);
        for r in &records {
            let count = r["count"].as_u64().expect("count");
            let identity = s(&r["identity"]);
            let k = &r["key"];
            match r["reduction"].as_str() {
                Some("qname") => {
                    assert_eq!(k.as_object().map(|m| m.len()), Some(1));
                    *qname.entry((identity, s(&k["qname"]))).or_default() += count;
                    qname_bytes += r["bytes"].as_u64().expect("bytes");
                }
                Some("client") => {
                    assert_eq!(k.as_object().map(|m| m.len()), Some(4));
                    let key = (
                        identity,
                        s(&k["query-ip"]),
                        s(&k["qname"]),
                        s(&k["qtype"]),
                        s(&k["rcode"]),
                    );
                    *client.entry(key).or_default() += count;
                    client_bytes += r["bytes"].as_u64().expect("bytes");
                }
                other => panic!("{name}: unexpected reduction {other:?}"),
            }
        }
        assert_eq!(qname, want.qname, "{name}: qname sums");
        assert_eq!(client, want.client, "{name}: client sums");
        assert_eq!(qname_bytes, want.bytes, "{name}");
        assert_eq!(client_bytes, want.bytes, "{name}");

        // Ids are unique within a run, and the same in a run advanced differently.
        let ids: std::collections::BTreeSet<&str> =
            records.iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids.len(), records.len(), "{name}: duplicate ids");
        let (again, _) = reduce(ReduceConfig::default(), &evs, 1);
        assert!(
            again == records,
            "{name}: records depend on when advance runs"
        );
        total_records += records.len();
        eprintln!(
            "{name}: {} events, {} responses, {} records, {} late",
            evs.len(),
            want.responses,
            records.len(),
            stats.late
        );
    }
    assert!(total_records > 0);
}

#[test]
fn small_bounds_still_account_for_every_event() {
    let name = "bind-resolver.fstrm";
    let evs = tapbus_testsupport::testdata::events(name);
    let want = expected(&evs);
    let config = ReduceConfig {
        max_groups: 20,
        window: std::time::Duration::from_secs(1),
        lateness: std::time::Duration::from_secs(0),
        ..ReduceConfig::default()
    };
    let (records, stats) = reduce(config, &evs, 16);
    assert!(stats.overflow > 0, "the bound was reached");
    assert_eq!(stats.rejected_full, 0);
    for reduction in ["qname", "client"] {
        let sum: u64 = records
            .iter()
            .filter(|r| r["reduction"] == reduction)
            .map(|r| r["count"].as_u64().expect("count"))
            .sum();
        assert_eq!(sum, want.responses, "{reduction}");
    }
    assert!(records.iter().any(|r| r["overflow"] == true));
}

#[test]
fn schema_refuses_what_is_not_a_record() {
    let good = serde_json::json!({
        "id": "qname.0.00000000000000000000000000000000", "reduction": "qname",
        "window-start": "1970-01-01T00:00:00.000000000Z", "window-start-ns": 0,
        "window-end": "1970-01-01T00:00:10.000000000Z", "window-end-ns": 10000000000u64,
        "identity": null, "key": {"qname": null}, "count": 1, "first-ns": 1, "last-ns": 1,
        "bytes": 0, "late": false, "overflow": false
    });
    assert_valid(&good);
    for (field, bad) in [
        ("count", serde_json::json!(0)),
        ("key", serde_json::json!({"port": 53})),
        ("window-start", serde_json::json!("yesterday")),
        ("late", serde_json::json!("no")),
        ("id", serde_json::json!("x")),
    ] {
        let mut v = good.clone();
        v[field] = bad;
        assert!(!validator().is_valid(&v), "{field} accepted");
    }
    let mut v = good.clone();
    v.as_object_mut().map(|m| m.remove("bytes"));
    assert!(!validator().is_valid(&v));
}

#[test]
fn out_of_order_captures_give_late_records_and_the_same_sums() {
    for name in ["unbound.fstrm", "kresd.fstrm"] {
        let mut evs = tapbus_testsupport::testdata::events(name);
        let want = expected(&evs);
        // A deterministic shuffle (xorshift Fisher-Yates), and the reverse order.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in (1..evs.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            evs.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut reversed = evs.clone();
        reversed.reverse();
        for (order, evs) in [("shuffled", &evs), ("reversed", &reversed)] {
            let config = ReduceConfig {
                window: std::time::Duration::from_secs(1),
                lateness: std::time::Duration::from_millis(200),
                ..ReduceConfig::default()
            };
            let (records, stats) = reduce(config, evs, 8);
            assert!(stats.late > 0, "{name} {order}: nothing was late");
            assert!(records.iter().any(|r| r["late"] == true));
            let mut qname: BTreeMap<(Option<String>, Option<String>), u64> = BTreeMap::new();
            for r in records.iter().filter(|r| r["reduction"] == "qname") {
                let count = r["count"].as_u64().expect("count");
                *qname
                    .entry((s(&r["identity"]), s(&r["key"]["qname"])))
                    .or_default() += count;
            }
            assert_eq!(qname, want.qname, "{name} {order}");
            let ids: std::collections::BTreeSet<&str> =
                records.iter().filter_map(|r| r["id"].as_str()).collect();
            assert_eq!(ids.len(), records.len(), "{name} {order}: duplicate ids");
        }
    }
}
