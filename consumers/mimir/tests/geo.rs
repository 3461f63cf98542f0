//! Geo metrics end to end against real servers: a broker with `[enrich.geoip]` (MaxMind DB
//! files the test writes) -> JetStream -> tapbus-aggregate -> NATS (`tapbus.metrics.>`)
//! -> tapbus-mimir -> a real Prometheus (remote-write receiver). Prometheus's
//! `sum by (country)` of `dnstap_client_country_total` and `sum by (asn)` of
//! `dnstap_client_asn_total` equal the capture's queries per country and per ASN, exactly
//! (responses not counted; private and unknown clients under `unknown`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    GEO_CLIENTS, by_label, durable_input, geo_capture, geo_dbs, replay_geo, start_aggregate,
    start_mimir,
};
use serde_json::Value;
use tapbus_testsupport::prom;
use tapbus_testsupport::servers::{Nats, Prometheus};
use tapbus_testsupport::wait_until;

#[test]
fn geo_counts_arrive_in_prometheus_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (city, asn) = geo_dbs(dir.path());
    let cap = dir.path().join("geo.fstrm");
    let want = geo_capture(&cap, 40);
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let prom = Prometheus::start();
    let (mut mimir, mport) = start_mimir(&nats, &prom);

    let events = replay_geo(nats.url(), &cap, &city, &asn);
    assert_eq!(events.len() as u64, want.frames);
    // The broker's events themselves agree with the table (an independent count).
    let mut from_events: BTreeMap<String, u64> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["dnstap"]["operation"] == "CLIENT_QUERY")
    {
        let c = e["geo"]["country"].as_str().unwrap_or("unknown");
        *from_events.entry(c.to_owned()).or_default() += 1;
    }
    assert_eq!(from_events, want.country);
    assert_eq!(want.country.len(), 5, "{want:?}");
    assert!(want.country["unknown"] > 0);

    // A bound below the number of ASNs would fold some; the default keeps them all.
    let mut agg = start_aggregate(&nats, &durable_input(&nats, "aggregate"), "geo", &[]);
    wait_until(
        "Prometheus has the per-country counts",
        Duration::from_secs(90),
        || {
            prom.query("sum by (country) (dnstap_client_country_total)")
                .map(|a| by_label(&a, "country"))
                .map(|mut m| {
                    m.retain(|_, v| *v > 0);
                    m
                })
                == Some(want.country.clone())
        },
    );
    let q = |promql: &str, label: &str| by_label(&prom.query(promql).expect("query"), label);
    let mut asns = q("sum by (asn) (dnstap_client_asn_total)", "asn");
    assert_eq!(asns.remove("other"), Some(0));
    assert_eq!(asns, want.asn);
    let mut ids = q(
        "sum by (identity) (dnstap_client_country_total)",
        "identity",
    );
    ids.retain(|_, v| *v > 0);
    assert_eq!(ids, want.identity);
    // The organisation rides on its ASN's series.
    for c in GEO_CLIENTS.iter().filter(|c| c.asn.is_some()) {
        let promql = format!(
            "sum by (as_org) (dnstap_client_asn_total{{asn=\"{}\"}})",
            c.asn.unwrap_or_default()
        );
        let orgs = q(&promql, "as_org");
        assert_eq!(
            orgs.keys().collect::<Vec<_>>(),
            [c.as_org.unwrap_or_default()],
            "{promql}"
        );
    }
    // `other` exists at 0 for every identity; nothing was folded.
    let other = q(
        "sum by (identity) (dnstap_client_country_total{country=\"other\"})",
        "identity",
    );
    assert_eq!(other.len(), 2, "{other:?}");
    assert!(other.values().all(|v| *v == 0), "{other:?}");
    let folded = q(
        "sum by (metric) (tapbus_aggregate_geo_folded_total)",
        "metric",
    );
    assert_eq!(folded.len(), 2, "{folded:?}");
    assert!(folded.values().all(|v| *v == 0), "{folded:?}");
    // The whole: every query, once.
    let total: u64 = want.country.values().sum();
    let sum = prom
        .query("sum(dnstap_client_country_total)")
        .expect("query");
    assert!(sum.contains(&format!("\"{total}\"")), "{sum} != {total}");

    let m = prom::scrape(&format!("127.0.0.1:{mport}"));
    assert_eq!(
        prom::sum(&m, "tapbus_mimir_dropped_total", &[]),
        0.0,
        "{}",
        m.text
    );
    assert!(agg.terminate().success());
    assert!(mimir.terminate().success());
}

/// Prometheus's `sum by (identity, country)`.
fn by_identity_country(answer: &str) -> BTreeMap<(String, String), u64> {
    let v: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
    v["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let id = r["metric"]["identity"].as_str()?.to_string();
                    let c = r["metric"]["country"].as_str()?.to_string();
                    let n: f64 = r["value"][1].as_str()?.parse().ok()?;
                    Some(((id, c), n as u64))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// With `geo_top_n = 2` the first two countries of each identity keep their series and
/// later ones count as `other`, still exactly: every (identity, country) series is what
/// the rule gives on the capture's order, and `tapbus_aggregate_geo_folded_total` is
/// what the `other` series hold.
#[test]
fn geo_bound_folds_new_countries_into_other_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (city, asn) = geo_dbs(dir.path());
    let cap = dir.path().join("geo.fstrm");
    let want = geo_capture(&cap, 10);
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let prom = Prometheus::start();
    let (mut mimir, _) = start_mimir(&nats, &prom);
    replay_geo(nats.url(), &cap, &city, &asn);
    let mut agg = start_aggregate(
        &nats,
        &durable_input(&nats, "aggregate"),
        "geo",
        &[("TAPBUS_AGGREGATE__GEO_TOP_N", "2")],
    );
    let expected = want.by_identity_country(2);
    let promql = "sum by (identity, country) (dnstap_client_country_total)";
    wait_until(
        "Prometheus has every query",
        Duration::from_secs(90),
        || prom.query(promql).map(|a| by_identity_country(&a)) == Some(expected.clone()),
    );
    // The bound did fold something, and the fold counter says how much.
    let other: u64 = expected
        .iter()
        .filter(|((_, c), _)| c == "other")
        .map(|(_, v)| v)
        .sum();
    assert!(other > 0, "{expected:?}");
    let q = |promql: &str, label: &str| by_label(&prom.query(promql).expect("query"), label);
    let folded = q(
        "sum by (metric) (tapbus_aggregate_geo_folded_total)",
        "metric",
    );
    assert_eq!(
        folded.get("dnstap_client_country_total"),
        Some(&other),
        "{folded:?}"
    );
    // Two kept, other and unknown per identity.
    let n = q(
        "count by (identity) (dnstap_client_country_total)",
        "identity",
    );
    assert!(n.len() == 2 && n.values().all(|v| *v == 4), "{n:?}");
    assert!(agg.terminate().success());
    assert!(mimir.terminate().success());
}
