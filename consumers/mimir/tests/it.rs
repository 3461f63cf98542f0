//! The metrics path end to end against real servers: broker -> JetStream -> tapbus-aggregate
//! -> NATS (`tapbus.metrics.>`) -> tapbus-mimir -> a real Prometheus (remote-write
//! receiver). The query API's `sum by (operation)`, `(identity)`, `(protocol)` and, over
//! responses, `(rcode)` of `dnstap_messages_total` equal the capture's summary counts,
//! exactly; through a 30 s Prometheus outage and with two aggregates on one durable too.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{by_label, replay, start_aggregate, start_mimir};
use serde_json::Value;
use tapbus_testsupport::prom;
use tapbus_testsupport::servers::{Nats, Prometheus};
use tapbus_testsupport::{free_port, testdata, wait_until};

/// A summary count (`per_type`, `per_rcode`, ...) summed over every capture.
fn summary_key(key: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for name in testdata::captures() {
        let p = testdata::path(&format!("{name}.summary.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(p).expect("summary")).expect("json");
        for (k, n) in v["counts"][key].as_object().expect("summary key") {
            *out.entry(k.clone()).or_insert(0) += n.as_u64().expect("count");
        }
    }
    out
}

/// `sum by (operation)` from a Prometheus query answer.
fn by_operation(answer: &str) -> BTreeMap<String, u64> {
    by_label(answer, "operation")
}

#[test]
fn every_capture_counts_arrive_in_prometheus_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let prom = Prometheus::start();

    let (mut mimir, mport) = start_mimir(&nats, &prom);

    // Every capture of the test data, one replay each.
    for name in testdata::captures() {
        replay(nats.url(), &name);
    }

    let input = format!(
        "{}/DNSTAP?durable=aggregate",
        nats.url().replace("nats://", "jetstream://")
    );
    let mut agg = start_aggregate(&nats, &input, "e2e", &[]);
    let want = summary_key("per_type");
    wait_until(
        "Prometheus has the capture's counts",
        Duration::from_secs(90),
        || {
            prom.query("sum by (operation) (dnstap_messages_total)")
                .map(|a| by_operation(&a))
                == Some(want.clone())
        },
    );
    // The other sums of the issue, against the summary's independent counts.
    for (promql, label, key) in [
        (
            "sum by (identity) (dnstap_messages_total)",
            "identity",
            "per_identity",
        ),
        (
            "sum by (protocol) (dnstap_messages_total)",
            "protocol",
            "per_socket_protocol",
        ),
        (
            "sum by (rcode) (dnstap_messages_total{operation=~\".*_RESPONSE\"})",
            "rcode",
            "per_rcode",
        ),
    ] {
        let got = by_label(&prom.query(promql).expect("query"), label);
        assert_eq!(got, summary_key(key), "{promql}");
    }
    // Every series carries the instance.
    let answer = prom
        .query("count(dnstap_messages_total{instance=\"e2e\"}) == count(dnstap_messages_total)")
        .expect("query");
    assert!(answer.contains("\"result\":[{"), "{answer}");
    assert_nothing_dropped(mport);
    assert!(agg.terminate().success());
    assert!(mimir.terminate().success());
}

/// tapbus-mimir on `mport` answers its /metrics and dropped nothing.
fn assert_nothing_dropped(mport: u16) {
    let m = prom::scrape(&format!("127.0.0.1:{mport}"));
    assert!(!m.is_empty(), "no mimir metrics");
    let dropped = prom::sum(&m, "tapbus_mimir_dropped_total", &[]);
    assert_eq!(dropped, 0.0, "{}", m.text);
}

/// Sums of the per-type counts of several captures.
fn summaries(names: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for name in names {
        let p = testdata::path(&format!("{name}.summary.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(p).expect("summary")).expect("json");
        for (k, n) in v["counts"]["per_type"].as_object().expect("per_type") {
            *out.entry(k.clone()).or_insert(0) += n.as_u64().expect("count");
        }
    }
    out
}

/// Prometheus stopped for 30 s while events keep coming: mimir retries (nothing dropped)
/// and once Prometheus is back the counts are exact again.
#[test]
fn prometheus_down_for_30s_then_exact_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let data = dir.path().join("tsdb");
    let port = free_port();
    let prom = Prometheus::start_on(port, &data);
    let (mut mimir, mport) = start_mimir(&nats, &prom);
    // The broker makes the stream; aggregate binds to it.
    replay(nats.url(), "unbound.fstrm");
    let input = format!(
        "{}/DNSTAP?durable=aggregate",
        nats.url().replace("nats://", "jetstream://")
    );
    let mut agg = start_aggregate(&nats, &input, "outage", &[]);
    let counts = |p: &Prometheus| {
        p.query("sum by (operation) (dnstap_messages_total)")
            .map(|a| by_operation(&a))
    };
    let first = summaries(&["unbound.fstrm"]);
    wait_until(
        "the first capture in Prometheus",
        Duration::from_secs(60),
        || counts(&prom) == Some(first.clone()),
    );
    prom.terminate();
    replay(nats.url(), "kresd.fstrm");
    std::thread::sleep(Duration::from_secs(30));
    let m = prom::scrape(&format!("127.0.0.1:{mport}"));
    let retries = prom::value(&m, "tapbus_mimir_retries_total", &[]).expect("retries");
    assert!(retries > 0.0, "{}", m.text);
    let prom = Prometheus::start_on(port, &data);
    let both = summaries(&["unbound.fstrm", "kresd.fstrm"]);
    wait_until(
        "both captures in Prometheus",
        Duration::from_secs(90),
        || counts(&prom) == Some(both.clone()),
    );
    assert_nothing_dropped(mport);
    assert!(agg.terminate().success());
    assert!(mimir.terminate().success());
}

/// Two copies of aggregate on one JetStream durable share the events: every event is
/// counted once, so the sum over both instances equals the summary.
#[test]
fn two_aggregates_on_one_durable_count_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let prom = Prometheus::start();
    let (mut mimir, _) = start_mimir(&nats, &prom);
    replay(nats.url(), "bulk-100k.fstrm");
    let input = format!(
        "{}/DNSTAP?durable=shared",
        nats.url().replace("nats://", "jetstream://")
    );
    let start = |instance: &str| {
        start_aggregate(&nats, &input, instance, &[("TAPBUS_AGGREGATE__TOP_N", "0")])
    };
    let (mut a, mut b) = (start("a"), start("b"));
    let want = summaries(&["bulk-100k.fstrm"]);
    wait_until(
        "the capture's counts over both instances",
        Duration::from_secs(120),
        || {
            prom.query("sum by (operation) (dnstap_messages_total)")
                .map(|a| by_operation(&a))
                == Some(want.clone())
        },
    );
    // Both took a share.
    for instance in ["a", "b"] {
        let answer = prom
            .query(&format!(
                "sum(dnstap_messages_total{{instance=\"{instance}\"}}) > 0"
            ))
            .expect("query");
        assert!(answer.contains("\"result\":[{"), "{instance}: {answer}");
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    assert!(mimir.terminate().success());
}
