//! Every real capture through the aggregate: `sum by (operation|identity|protocol|family)`
//! of `dnstap_messages_total`, and `sum by (rcode)` of its `*_RESPONSE` series, equal the
//! independent decoder's counts in `X.summary.json`, read back both from the text
//! exposition (with the small parser below) and from the batch, which validates against
//! `batch.schema.json`.

use std::collections::BTreeMap;

use serde_json::Value;
use tapbus_aggregate::{AggregateSpec, Aggregator, Batch, batch};
use tapbus_event::EventView;
use tapbus_testsupport::testdata;

/// One sample of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser of the text exposition format: `name{k="v",...} value`, with the label
/// escapes `\\`, `\"`, `\n`; checks that every sample's family has HELP and TYPE first.
fn parse_text(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').expect("TYPE name type");
            assert!(matches!(t, "counter" | "gauge" | "histogram"), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let brace = line.find('{').expect("labels");
        let name = &line[..brace];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name}: no TYPE before it");
        let mut labels = BTreeMap::new();
        let mut chars = line[brace + 1..].chars();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut val = String::new();
            loop {
                match chars.next().expect("unterminated value") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => val.push('\\'),
                        Some('"') => val.push('"'),
                        Some('n') => val.push('\n'),
                        c => panic!("bad escape {c:?} in {line}"),
                    },
                    c => val.push(c),
                }
            }
            assert!(labels.insert(key, val).is_none(), "duplicate label: {line}");
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                c => panic!("{c:?} in {line}"),
            }
        }
        let rest: String = chars.collect();
        let value: f64 = rest
            .strip_prefix(' ')
            .expect("space before value")
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// `sum by (label) (dnstap_messages_total{filter})`.
fn sum_by<'a>(
    samples: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>, f64)>,
    label: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (name, labels, v) in samples {
        if name != "dnstap_messages_total" || !keep(labels) {
            continue;
        }
        assert_eq!(v.fract(), 0.0);
        *m.entry(labels[label].clone()).or_insert(0) += v as u64;
    }
    m
}

fn summary_counts(name: &str, key: &str) -> BTreeMap<String, u64> {
    let p = testdata::path(&format!("{name}.summary.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("summary")).expect("json");
    v["counts"][key]
        .as_object()
        .unwrap_or_else(|| panic!("{name}: counts.{key}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().expect("count")))
        .collect()
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(batch::SCHEMA).expect("schema JSON");
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

fn check(name: &str, what: &str, samples: &[(&str, &BTreeMap<String, String>, f64)]) {
    let it = || samples.iter().map(|(n, l, v)| (*n, *l, *v));
    let all = |_: &BTreeMap<String, String>| true;
    let responses = |l: &BTreeMap<String, String>| l["operation"].ends_with("_RESPONSE");
    for (label, key, keep) in [
        ("operation", "per_type", &all as &dyn Fn(&_) -> bool),
        ("identity", "per_identity", &all),
        ("protocol", "per_socket_protocol", &all),
        ("family", "per_socket_family", &all),
        ("rcode", "per_rcode", &responses),
    ] {
        assert_eq!(
            sum_by(it(), label, keep),
            summary_counts(name, key),
            "{name} ({what}): sum by ({label})"
        );
    }
    let total: u64 = sum_by(it(), "instance", all).values().sum();
    assert_eq!(
        total as usize,
        testdata::expected_count(name),
        "{name} ({what}): total"
    );
    assert!(samples.iter().all(|(_, l, _)| l["instance"] == "it"));
}

#[test]
fn captures_match_their_summaries() {
    let v = validator();
    let captures = testdata::captures();
    assert!(captures.len() >= 8, "{captures:?}");
    for name in captures {
        let mut spec = AggregateSpec::with_instance("it");
        spec.coredns = true;
        // Above the distinct names of every small capture: their top-N is exact.
        spec.top_capacity = 1000;
        let mut agg = Aggregator::new(spec);
        let evs = testdata::events(&name);
        for e in &evs {
            let view = EventView::parse(e).unwrap_or_else(|e| panic!("{name}: {e}"));
            agg.push(&view);
        }
        assert_eq!(agg.events(), evs.len() as u64);
        assert_eq!(agg.identity_overflow(), 0);
        assert!(agg.series_dropped().all(|(_, n)| n == 0));

        let text = agg.exposition();
        let parsed = parse_text(&text);
        let from_text: Vec<_> = parsed
            .iter()
            .map(|s| (s.name.as_str(), &s.labels, s.value))
            .collect();
        check(&name, "text", &from_text);

        let b = agg.batch(1_795_315_298_535, 3);
        let json = b.to_json();
        let doc: Value = serde_json::from_slice(&json).expect("batch JSON");
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .take(5)
            .map(|e| format!("{} at {}: {e}", e.schema_path, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let b: Batch = serde_json::from_slice(&json).expect("reads back");
        let mut direct = Vec::new();
        agg.write_batch_json(1_795_315_298_535, 3, &mut direct);
        let doc: Value = serde_json::from_slice(&direct).expect("direct batch JSON");
        assert!(v.is_valid(&doc), "{name}: write_batch_json is valid");
        let d: Batch = serde_json::from_slice(&direct).expect("reads back");
        assert_eq!(d, b, "{name}: write_batch_json == batch");
        assert_eq!(b.message_id(), "tapbus-metrics:it:3");
        let from_batch: Vec<_> = b
            .series
            .iter()
            .map(|s| (s.name.as_str(), &s.labels, s.value))
            .collect();
        check(&name, "batch", &from_batch);
        assert_eq!(
            parsed.len(),
            b.series.len(),
            "{name}: same samples both ways"
        );

        // CoreDNS profile: requests + responses = all query and response events.
        let cd: f64 = b
            .series
            .iter()
            .filter(|s| {
                s.name == "coredns_dns_requests_total" || s.name == "coredns_dns_responses_total"
            })
            .map(|s| s.value)
            .sum();
        assert_eq!(
            cd as usize,
            testdata::expected_count(&name),
            "{name}: coredns"
        );

        // Geo families: every query counted once per family, all under `unknown` (the
        // captures' clients are loopback: `geo` is absent).
        let mut queries: BTreeMap<String, u64> = BTreeMap::new();
        for e in &evs {
            let v = EventView::parse(e).expect("parses");
            if v.is_query() {
                let id = v.identity().unwrap_or("none").to_owned();
                *queries.entry(id).or_default() += 1;
            }
        }
        for (family, key) in [
            ("dnstap_client_country_total", "country"),
            ("dnstap_client_asn_total", "asn"),
        ] {
            let sum = |label: &str| {
                let mut m: BTreeMap<String, u64> = BTreeMap::new();
                for s in parsed.iter().filter(|s| s.name == family) {
                    *m.entry(s.labels[label].clone()).or_default() += s.value as u64;
                }
                m
            };
            let (by_id, by_key) = (sum("identity"), sum(key));
            let n: u64 = queries.values().sum();
            let unknown = BTreeMap::from([("other".to_owned(), 0), ("unknown".to_owned(), n)]);
            assert_eq!(by_key, unknown, "{name}: {family} by {key}");
            queries.retain(|_, v| *v > 0);
            assert_eq!(by_id, queries, "{name}: {family} by identity");
        }

        check_top(&name, &evs, &parsed, 1000);
    }
}

/// The top qnames per identity against exact counts: equal when the capture has no more
/// distinct query names than the summary's capacity (space-saving is exact then), else
/// every reported count is an upper bound of the true one.
fn check_top(name: &str, evs: &[Vec<u8>], parsed: &[Sample], capacity: usize) {
    let top_n = AggregateSpec::with_instance("it").top_n;
    let mut exact: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for e in evs {
        let v = EventView::parse(e).expect("parses");
        if let (true, Some(q)) = (v.is_query(), v.qname()) {
            let id = v.identity().unwrap_or("none").to_owned();
            *exact
                .entry(id)
                .or_default()
                .entry(q.to_owned())
                .or_insert(0) += 1;
        }
    }
    for (id, names) in &exact {
        let ranks: BTreeMap<u64, f64> = parsed
            .iter()
            .filter(|s| s.name == "dnstap_top_qname_count" && s.labels["identity"] == *id)
            .map(|s| (s.labels["rank"].parse().expect("rank"), s.value))
            .collect();
        assert_eq!(ranks.len(), top_n, "{name} {id}: every rank");
        let info: BTreeMap<u64, &str> = parsed
            .iter()
            .filter(|s| s.name == "dnstap_top_qname_info" && s.labels["identity"] == *id)
            .map(|s| {
                (
                    s.labels["rank"].parse().expect("rank"),
                    s.labels["qname"].as_str(),
                )
            })
            .collect();
        let mut want: Vec<u64> = names.values().copied().collect();
        want.sort_unstable_by(|a, b| b.cmp(a));
        want.resize(top_n, 0);
        let got: Vec<u64> = ranks.values().map(|v| *v as u64).collect();
        if names.len() <= capacity {
            assert_eq!(got, want, "{name} {id}: exact below capacity");
            for (r, q) in &info {
                assert_eq!(names[*q], got[(*r - 1) as usize], "{name} {id}: {q}");
            }
        } else {
            for (r, q) in &info {
                let real = names.get(*q).copied().unwrap_or(0);
                assert!(got[(*r - 1) as usize] >= real, "{name} {id}: {q}");
            }
        }
        eprintln!("{name} {id}: {} qnames, top {:?}", names.len(), &got[..3]);
    }
}
