//! Aggregating the events of the bulk capture (`bulk-100k.fstrm`, 100,002 events: one
//! identity, CLIENT_QUERY + CLIENT_RESPONSE, 9,270 distinct qnames).
//!
//! Measured 2026-12-02 on this 2-core machine, two runs (load 2.5 and 4.3 from other
//! builds, so the spread is wide; the range is over both runs' medians), `cargo bench -p
//! tapbus-aggregate --bench aggregate -- --warm-up-time 1 --measurement-time 3`, 20,000
//! events per iteration, series already present (steady state):
//!
//! | what | per event | events/s (one core) |
//! | --- | --- | --- |
//! | `push`, top-N off (the 3 `dnstap_*` families) | 57-90 ns | 11-17 M |
//! | `push`, defaults (top-N on: 10 ranks of 100 monitored qnames and clients) | 160-250 ns | 4.0-6.2 M |
//! | `push`, CoreDNS profile + top-N | 280 ns | 3.6 M |
//! | `EventView::parse` + `push` (defaults) | 1.07-1.36 us | 0.74-0.93 M |
//!
//! Aggregation is far inside the 1 M events/s per core budget; the JSON parse (~0.8 us,
//! `event/benches/view.rs`) is most of a consumer's cost. Top-N is the dearest part here:
//! the bulk capture has 9,270 distinct qnames for 100 slots, so most queries evict.
//!
//! Exports of the state after all 100,002 events (second run):
//!
//! | state | samples | text | `write_exposition` | `batch` + `to_json` | `write_batch_json` |
//! | --- | --- | --- | --- | --- | --- |
//! | defaults | 91 | 12 KB | 15 us | 80 us | 18 us |
//! | CoreDNS profile | 141 | 19 KB | 19 us | 116 us | 28 us |
//! | CoreDNS profile, events spread over 1000 identities | 117,606 | 12.4 MB | 19 ms | 141 ms | 18 ms |
//!
//! `batch()` builds a label map of `String`s per series; the binary should publish with
//! `write_batch_json` (same content, ~8x cheaper).

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_aggregate::{AggregateSpec, Aggregator};
use tapbus_event::EventView;

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Vec<u8>> {
    tapbus_testsupport::testdata::events("bulk-100k.fstrm")
}

/// Events per measured iteration (the first of the capture).
const N: usize = 20_000;

fn spec(coredns: bool, top: bool) -> AggregateSpec {
    let mut s = AggregateSpec::with_instance("bench");
    s.coredns = coredns;
    if !top {
        s.top_n = 0;
    }
    s
}

fn bench(c: &mut Criterion) {
    let all = events();
    let views: Vec<EventView<'_>> = all
        .iter()
        .map(|e| EventView::parse(e).expect("parses"))
        .collect();
    let some = &views[..N];

    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for (name, coredns, top) in [
        ("push (no top-N)", false, false),
        ("push (defaults: top-N on)", false, true),
        ("push+coredns+top-N", true, true),
    ] {
        // Series exist already (the steady state): the aggregator is warmed once.
        let mut agg = Aggregator::new(spec(coredns, top));
        some.iter().for_each(|v| agg.push(v));
        g.bench_function(name, |b| {
            b.iter(|| {
                for v in some {
                    agg.push(black_box(v));
                }
            })
        });
    }
    let mut agg = Aggregator::new(spec(false, true));
    g.bench_function("parse+push", |b| {
        b.iter(|| {
            for e in &all[..N] {
                let v = EventView::parse(black_box(e)).expect("parses");
                agg.push(&v);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("export");
    g.sample_size(10);
    // The bulk capture as is (one identity), and spread over 1000 identities.
    let spread: Vec<EventView<'_>> = views
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut v = v.clone();
            v.dnstap.identity = Some(Cow::Owned(format!("ns{}", i % 1000)));
            v
        })
        .collect();
    for (p, coredns, evs) in [
        ("", false, &views),
        ("+coredns", true, &views),
        ("+coredns, 1000 identities", true, &spread),
    ] {
        let mut agg = Aggregator::new(spec(coredns, true));
        evs.iter().for_each(|v| agg.push(v));
        let text = agg.exposition();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        eprintln!(
            "exposition{p}: {} bytes of text, {samples} samples",
            text.len()
        );
        let mut out = String::with_capacity(text.len());
        g.bench_function(format!("exposition{p}"), |b| {
            b.iter(|| {
                out.clear();
                agg.write_exposition(&mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("batch+json{p}"), |b| {
            b.iter(|| black_box(agg.batch(1, 1).to_json().len()))
        });
        let mut json = Vec::with_capacity(2 * text.len());
        g.bench_function(format!("write_batch_json{p}"), |b| {
            b.iter(|| {
                json.clear();
                agg.write_batch_json(1, 1, &mut json);
                black_box(json.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
